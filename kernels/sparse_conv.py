"""Sparse convolution as gather -> GEMM over a kernel map, with a hand-written backward.

Forward: ``out = gather(x, nbr) @ W.reshape(K·C_in, C_out)``. Backward w.r.t. ``x`` is the same gather on the
transposed map with the per-offset weights transposed (the scatter-add of gather-GEMM-scatter, done as a
gather, so it needs no atomics and is deterministic); backward w.r.t. ``W`` is ``gather(x, nbr)^T @ grad``.
Rows are processed in chunks so the gathered matrix stays under ~64 MB whatever the voxel count. Unlike
spconv's CPU build, this trains on the CPU; the same Warp gather runs on CUDA.
"""

from __future__ import annotations

import torch

from sparse3d.kernels.gather import gather_neighbors
from sparse3d.kernels.runtime import check_tensor

CHUNK_BYTES = 64 * 2**20


def _row_chunks(rows: int, width: int) -> range:
    step = max(1024, CHUNK_BYTES // max(1, 4 * width))
    return range(0, rows, step)


def _gather_gemm(src: torch.Tensor, nbr: torch.Tensor, weight2d: torch.Tensor) -> torch.Tensor:
    """Σ_k src[nbr[:, k]] @ W_k for all rows of ``nbr``, chunked."""
    m, num_k = nbr.shape
    out = torch.empty(m, weight2d.shape[1], dtype=torch.float32, device=src.device)
    width = num_k * src.shape[1]
    for start in _row_chunks(m, width):
        stop = min(m, start + _row_chunks(m, width).step)
        cols = gather_neighbors(src, nbr[start:stop])
        torch.mm(cols, weight2d, out=out[start:stop])
    return out


class SparseConvFunction(torch.autograd.Function):
    """features (M_in, C_in), weight (K, C_in, C_out), nbr (M_out, K), nbr_t (M_in, K) -> (M_out, C_out)."""

    @staticmethod
    def forward(ctx, features, weight, nbr, nbr_t):  # type: ignore[override]
        k, c_in, c_out = weight.shape
        feats = features.detach().contiguous()
        w = weight.detach().contiguous()
        out = _gather_gemm(feats, nbr, w.reshape(k * c_in, c_out))
        ctx.save_for_backward(feats, w, nbr, nbr_t)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        feats, w, nbr, nbr_t = ctx.saved_tensors
        k, c_in, c_out = w.shape
        grad_out = grad_out.contiguous().to(torch.float32)
        grad_feats = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_feats = _gather_gemm(grad_out, nbr_t, w.transpose(1, 2).reshape(k * c_out, c_in))
        if ctx.needs_input_grad[1]:
            gw = torch.zeros(k * c_in, c_out, dtype=torch.float32, device=feats.device)
            m = nbr.shape[0]
            width = k * c_in
            for start in _row_chunks(m, width):
                stop = min(m, start + _row_chunks(m, width).step)
                cols = gather_neighbors(feats, nbr[start:stop])
                gw.addmm_(cols.t(), grad_out[start:stop])
            grad_w = gw.reshape(k, c_in, c_out)
        return grad_feats, grad_w, None, None


def sparse_conv(features: torch.Tensor, weight: torch.Tensor, nbr: torch.Tensor, nbr_t: torch.Tensor) -> torch.Tensor:
    """Apply a sparse convolution given its kernel map (see :mod:`sparse3d.kernels.kernel_map`)."""
    check_tensor("features", features, torch.float32, ndim=2)
    check_tensor("weight", weight, torch.float32, ndim=3)
    check_tensor("nbr", nbr, torch.int32, ndim=2)
    check_tensor("nbr_t", nbr_t, torch.int32, ndim=2)
    k, c_in, _ = weight.shape
    if features.shape[1] != c_in:
        raise ValueError(f"features have {features.shape[1]} channels but the weight expects {c_in}")
    if nbr.shape[1] != k or nbr_t.shape[1] != k:
        raise ValueError(f"kernel maps have {nbr.shape[1]}/{nbr_t.shape[1]} offsets but the weight has {k}")
    if nbr_t.shape[0] != features.shape[0]:
        raise ValueError(f"transposed map has {nbr_t.shape[0]} rows but features have {features.shape[0]}")
    # Out-of-range map entries would make the gather kernel read outside the feature buffer.
    if nbr.numel() and int(nbr.max()) >= features.shape[0]:
        raise ValueError(f"nbr refers to row {int(nbr.max())} but features have {features.shape[0]} rows")
    if nbr_t.numel() and int(nbr_t.max()) >= nbr.shape[0]:
        raise ValueError(f"nbr_t refers to output {int(nbr_t.max())} but nbr has {nbr.shape[0]} rows")
    return SparseConvFunction.apply(features, weight, nbr, nbr_t)
