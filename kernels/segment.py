"""Segment reductions (sum, mean, max with argmax routing) over rows grouped by segment id, with autograd.

Used to pool point features into voxels (VFE) and anywhere a scatter-reduce is needed. ``segment_ids`` may
contain -1 for rows that belong to no segment (e.g. points dropped by voxelisation). Max follows torch_scatter:
the whole gradient of a segment's maximum goes to ONE row -- the smallest row index among ties -- rather than
being split across ties as ``torch.scatter_reduce(..., "amax")`` does. Empty segments give 0 (argmax -1).

On the CPU each thread owns the segments with ``id % num_parts == part`` (Warp CPU atomics are not atomic);
on CUDA one launch with real atomics.
"""

from __future__ import annotations

import torch
import warp as wp

from sparse3d.kernels.runtime import (
    check_same_device,
    check_tensor,
    init,
    launch,
    launch_partitioned,
    to_wp,
    wp_device,
)


@wp.kernel
def _sum_kernel(
    part: int,
    num_parts: int,
    values: wp.array2d(dtype=wp.float32),
    ids: wp.array(dtype=wp.int64),
    out: wp.array2d(dtype=wp.float32),
    counts: wp.array(dtype=wp.float32),
):
    i = wp.tid()
    s = ids[i]
    if s < wp.int64(0) or int(s % wp.int64(num_parts)) != part:
        return
    for c in range(values.shape[1]):
        wp.atomic_add(out, wp.int32(s), c, values[i, c])
    wp.atomic_add(counts, wp.int32(s), 1.0)


@wp.kernel
def _max_kernel(
    part: int,
    num_parts: int,
    values: wp.array2d(dtype=wp.float32),
    ids: wp.array(dtype=wp.int64),
    out: wp.array2d(dtype=wp.float32),
):
    i = wp.tid()
    s = ids[i]
    if s < wp.int64(0) or int(s % wp.int64(num_parts)) != part:
        return
    for c in range(values.shape[1]):
        wp.atomic_max(out, wp.int32(s), c, values[i, c])


@wp.kernel
def _argmax_kernel(
    part: int,
    num_parts: int,
    values: wp.array2d(dtype=wp.float32),
    ids: wp.array(dtype=wp.int64),
    out: wp.array2d(dtype=wp.float32),
    arg: wp.array2d(dtype=wp.int64),
):
    """Second pass: among rows equal to the maximum keep the smallest index (deterministic tie rule)."""
    i = wp.tid()
    s = ids[i]
    if s < wp.int64(0) or int(s % wp.int64(num_parts)) != part:
        return
    for c in range(values.shape[1]):
        if values[i, c] == out[wp.int32(s), c]:
            wp.atomic_min(arg, wp.int32(s), c, wp.int64(i))


@wp.kernel
def _finish_max_kernel(
    offset: int,
    out: wp.array2d(dtype=wp.float32),
    arg: wp.array2d(dtype=wp.int64),
    num_rows: wp.int64,
):
    """Empty segments: value 0, argmax -1."""
    s = wp.tid() + offset
    for c in range(out.shape[1]):
        if arg[s, c] == num_rows:
            arg[s, c] = wp.int64(-1)
            out[s, c] = 0.0


@wp.kernel
def _gather_rows_kernel(
    offset: int,
    src: wp.array2d(dtype=wp.float32),
    ids: wp.array(dtype=wp.int64),
    scale: wp.array(dtype=wp.float32),
    use_scale: int,
    dst: wp.array2d(dtype=wp.float32),
):
    """dst[i] = src[ids[i]] (/ scale[ids[i]]), zero for ids < 0: backward of sum and mean."""
    i = wp.tid() + offset
    s = ids[i]
    for c in range(dst.shape[1]):
        if s < wp.int64(0):
            dst[i, c] = 0.0
        elif use_scale != 0:
            dst[i, c] = src[wp.int32(s), c] / wp.max(scale[wp.int32(s)], 1.0)
        else:
            dst[i, c] = src[wp.int32(s), c]


@wp.kernel
def _route_max_grad_kernel(
    offset: int,
    grad_out: wp.array2d(dtype=wp.float32),
    arg: wp.array2d(dtype=wp.int64),
    grad_in: wp.array2d(dtype=wp.float32),
):
    """grad_in[arg[s, c], c] = grad_out[s, c]; argmax rows are distinct per (s, c) column, so no conflicts."""
    s = wp.tid() + offset
    for c in range(grad_out.shape[1]):
        a = arg[s, c]
        if a >= wp.int64(0):
            grad_in[wp.int32(a), c] = grad_out[s, c]


def _validate(values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int) -> tuple[torch.Tensor, torch.Tensor]:
    check_tensor("values", values, torch.float32, ndim=2)
    check_tensor("segment_ids", segment_ids, (torch.int32, torch.int64), ndim=1)
    check_same_device(values=values, segment_ids=segment_ids)
    if segment_ids.shape[0] != values.shape[0]:
        raise ValueError(
            f"segment_ids has {segment_ids.shape[0]} entries but values has {values.shape[0]} rows"
        )
    if not isinstance(num_segments, int) or num_segments < 0:
        raise ValueError(f"num_segments must be a non-negative int, got {num_segments!r}")
    if segment_ids.numel():
        lo, hi = int(segment_ids.min()), int(segment_ids.max())
        if lo < -1 or hi >= num_segments:
            raise ValueError(f"segment_ids must lie in [-1, {num_segments}), got range [{lo}, {hi}]")
    return values.detach().contiguous(), segment_ids.to(torch.int64).contiguous()


def _sum_and_counts(values: torch.Tensor, ids: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.zeros(m, values.shape[1], dtype=torch.float32, device=values.device)
    counts = torch.zeros(m, dtype=torch.float32, device=values.device)
    launch_partitioned(
        _sum_kernel, values.shape[0], [to_wp(values), to_wp(ids), to_wp(out), to_wp(counts)], wp_device(values)
    )
    return out, counts


def _gather_back(grad_out: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor | None) -> torch.Tensor:
    grad_out = grad_out.contiguous().to(torch.float32)
    grad_in = torch.empty(ids.shape[0], grad_out.shape[1], dtype=torch.float32, device=grad_out.device)
    scale = counts if counts is not None else torch.ones(1, dtype=torch.float32, device=grad_out.device)
    launch(
        _gather_rows_kernel,
        ids.shape[0],
        [to_wp(grad_out), to_wp(ids), to_wp(scale), int(counts is not None), to_wp(grad_in)],
        wp_device(grad_out),
    )
    return grad_in


class _SegmentSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: torch.Tensor, ids: torch.Tensor, m: int, mean: bool) -> torch.Tensor:
        out, counts = _sum_and_counts(values, ids, m)
        if mean:
            out = out / counts.clamp(min=1.0)[:, None]
        ctx.save_for_backward(ids, counts)
        ctx.mean = mean
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        ids, counts = ctx.saved_tensors
        return _gather_back(grad_out, ids, counts if ctx.mean else None), None, None, None


class _SegmentMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: torch.Tensor, ids: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, c = values.shape
        dev = wp_device(values)
        out = torch.full((m, c), float("-inf"), dtype=torch.float32, device=values.device)
        arg = torch.full((m, c), n, dtype=torch.int64, device=values.device)
        launch_partitioned(_max_kernel, n, [to_wp(values), to_wp(ids), to_wp(out)], dev)
        launch_partitioned(_argmax_kernel, n, [to_wp(values), to_wp(ids), to_wp(out), to_wp(arg)], dev)
        launch(_finish_max_kernel, m, [to_wp(out), to_wp(arg), n], dev)
        ctx.save_for_backward(arg)
        ctx.num_rows = n
        ctx.mark_non_differentiable(arg)
        return out, arg

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, _grad_arg: torch.Tensor):
        (arg,) = ctx.saved_tensors
        grad_out = grad_out.contiguous().to(torch.float32)
        grad_in = torch.zeros(ctx.num_rows, grad_out.shape[1], dtype=torch.float32, device=grad_out.device)
        launch(_route_max_grad_kernel, arg.shape[0], [to_wp(grad_out), to_wp(arg), to_wp(grad_in)], wp_device(arg))
        return grad_in, None, None


def segment_sum(values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    """(M, C) sums of the (N, C) float32 ``values`` rows per segment; differentiable w.r.t. ``values``."""
    v, ids = _validate(values, segment_ids, num_segments)
    init()
    return _SegmentSum.apply(values if values.requires_grad else v, ids, num_segments, False)


def segment_mean(values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    """(M, C) means per segment (0 for empty segments); differentiable w.r.t. ``values``."""
    v, ids = _validate(values, segment_ids, num_segments)
    init()
    return _SegmentSum.apply(values if values.requires_grad else v, ids, num_segments, True)


def segment_max(
    values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, C) maxima and (M, C) int64 argmax rows (smallest index among ties; -1 for empty segments).

    The gradient of each maximum flows to its argmax row only (torch_scatter semantics).
    """
    v, ids = _validate(values, segment_ids, num_segments)
    init()
    return _SegmentMax.apply(values if values.requires_grad else v, ids, num_segments)


def segment_count(segment_ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Rows per segment (int64), ignoring ids of -1."""
    check_tensor("segment_ids", segment_ids, (torch.int32, torch.int64), ndim=1)
    valid = segment_ids >= 0
    return torch.bincount(segment_ids[valid].to(torch.int64), minlength=num_segments)
