"""Row gather and scatter-add for sparse convolution (the memory-bound halves of gather-GEMM-scatter).

``gather_rows(src, idx)`` copies ``src[idx]``; ``scatter_add_rows(dst, idx, src)`` adds ``src`` rows into
``dst[idx]`` when ``idx`` has no repeats (true within one kernel offset), split over CPU cores;
``scatter_add_rows_any`` allows repeats (all offsets at once) by giving each CPU thread the rows it owns. ``gather_neighbors`` is the dense
(M, K·C) "im2col" view of a whole kernel map, kept for callers that want one GEMM.
"""

from __future__ import annotations

import torch
import warp as wp

from sparse3d.kernels.runtime import check_tensor, init, launch, launch_partitioned, to_wp, wp_device


@wp.kernel
def _gather_rows_kernel(
    offset: int,
    src: wp.array2d(dtype=wp.float32),
    idx: wp.array(dtype=wp.int32),
    dst: wp.array2d(dtype=wp.float32),
):
    r = wp.tid() + offset
    j = idx[r]
    for c in range(src.shape[1]):
        dst[r, c] = src[j, c]


@wp.kernel
def _scatter_add_rows_kernel(
    offset: int,
    src: wp.array2d(dtype=wp.float32),
    idx: wp.array(dtype=wp.int32),
    dst: wp.array2d(dtype=wp.float32),
):
    r = wp.tid() + offset
    j = idx[r]
    for c in range(src.shape[1]):
        dst[j, c] = dst[j, c] + src[r, c]


@wp.kernel
def _scatter_add_rows_owned_kernel(
    part: int,
    num_parts: int,
    src: wp.array2d(dtype=wp.float32),
    idx: wp.array(dtype=wp.int32),
    dst: wp.array2d(dtype=wp.float32),
):
    """Like the plain scatter, but rows may repeat: each CPU thread only adds into the rows it owns."""
    r = wp.tid()
    j = idx[r]
    if j % num_parts != part:
        return
    for c in range(src.shape[1]):
        wp.atomic_add(dst, j, c, src[r, c])


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


def gather_rows(src: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``src[idx]`` for (N, C) float32 ``src`` and int32 ``idx`` (all entries must be valid rows)."""
    out = torch.empty(idx.shape[0], src.shape[1], dtype=torch.float32, device=src.device)
    launch(_gather_rows_kernel, idx.shape[0], [to_wp(src), to_wp(idx), to_wp(out)], wp_device(src))
    return out


def scatter_add_rows(dst: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
    """``dst[idx] += src`` in place; ``idx`` must not repeat (true within one kernel offset)."""
    launch(_scatter_add_rows_kernel, idx.shape[0], [to_wp(src), to_wp(idx), to_wp(dst)], wp_device(dst))


def scatter_add_rows_any(dst: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.index_add_(0, idx, src)``: repeated rows allowed (row ownership on CPU, atomics on CUDA)."""
    launch_partitioned(
        _scatter_add_rows_owned_kernel, idx.shape[0], [to_wp(src), to_wp(idx), to_wp(dst)], wp_device(dst)
    )


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
