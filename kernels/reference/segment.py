"""Plain-torch oracles for :mod:`sparse3d.kernels.segment` (scatter_reduce with explicit tie handling)."""

from __future__ import annotations

import torch


def segment_sum(values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    ids = segment_ids.to(torch.int64)
    keep = ids >= 0
    out = torch.zeros(num_segments, values.shape[1], dtype=values.dtype)
    return out.index_add(0, ids[keep], values[keep])


def segment_mean(values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    ids = segment_ids.to(torch.int64)
    counts = torch.bincount(ids[ids >= 0], minlength=num_segments).clamp(min=1).to(values.dtype)
    return segment_sum(values, segment_ids, num_segments) / counts[:, None]


def segment_max(
    values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max per segment and the smallest row index attaining it; the gradient is routed to that row only."""
    ids = segment_ids.to(torch.int64)
    keep = ids >= 0
    rows = torch.arange(values.shape[0])[keep]
    v, s = values[keep], ids[keep]
    c = values.shape[1]
    idx = s[:, None].expand(-1, c)
    mx = torch.full((num_segments, c), float("-inf"), dtype=values.dtype).scatter_reduce(
        0, idx, v.detach(), "amax", include_self=True
    )
    is_max = v.detach() == mx[s]
    big = values.shape[0]
    cand = torch.where(is_max, rows[:, None].expand(-1, c), torch.full_like(idx, big))
    arg = torch.full((num_segments, c), big, dtype=torch.int64).scatter_reduce(0, idx, cand, "amin")
    empty = arg == big
    arg = torch.where(empty, torch.full_like(arg, -1), arg)
    gathered = values[arg.clamp(min=0), torch.arange(c)[None, :].expand(num_segments, -1)]
    out = torch.where(empty, torch.zeros_like(gathered), gathered)
    return out, arg
