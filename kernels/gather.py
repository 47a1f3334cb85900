"""Neighbour gather ("im2col" on a kernel map): the memory-bound half of sparse convolution.

``gather_neighbors(x, nbr)`` lays the K neighbour rows of every output side by side, (M, K·C), zero where the
map says -1, so one dense GEMM with the (K·C, C_out) weight finishes the convolution. Rows write disjoint
memory, so the launch splits over CPU cores.
"""

from __future__ import annotations

import torch
import warp as wp

from sparse3d.kernels.runtime import check_tensor, init, launch, to_wp, wp_device


@wp.kernel
def _gather_kernel(
    offset: int,
    src: wp.array2d(dtype=wp.float32),
    nbr: wp.array2d(dtype=wp.int32),
    dst: wp.array2d(dtype=wp.float32),
):
    e = wp.tid() + offset
    num_k = nbr.shape[1]
    row = e / num_k
    k = e - row * num_k
    j = nbr[row, k]
    c_in = src.shape[1]
    base = k * c_in
    if j < 0:
        for c in range(c_in):
            dst[row, base + c] = 0.0
    else:
        for c in range(c_in):
            dst[row, base + c] = src[j, c]


def gather_neighbors(src: torch.Tensor, nbr: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(M, K·C) float32: row o holds ``src[nbr[o, k]]`` for k = 0..K-1 (zeros where ``nbr`` is -1)."""
    check_tensor("src", src, torch.float32, ndim=2)
    check_tensor("nbr", nbr, torch.int32, ndim=2)
    init()
    src, nbr = src.contiguous(), nbr.contiguous()
    m, num_k = nbr.shape
    if out is None:
        out = torch.empty(m, num_k * src.shape[1], dtype=torch.float32, device=src.device)
    launch(_gather_kernel, m * num_k, [to_wp(src), to_wp(nbr), to_wp(out)], wp_device(src))
    return out
