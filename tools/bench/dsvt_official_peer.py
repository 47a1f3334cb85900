"""The DSVT input layer written the way the official code computes it, in vectorised plain torch: the peer of
``sparse3d-bench dsvt``.

Official code: ``github.com/Haiyang-W/DSVT`` (``DSVTInputLayer`` in ``dsvt_input_layer.py`` and
``get_window_coors`` / ``get_continous_inds`` in ``dsvt_utils.py``), OpenPCDet's port is the same. Per stage and
shift it

1. computes the raw window key of every voxel and its coords inside the window;
2. renumbers windows with ``torch.unique(return_inverse=True)`` and counts voxels per window;
3. gives every voxel an (arbitrary-order) index inside its window -- the CUDA op ``get_inner_win_inds`` there,
   its torch equivalent here (stable sort by window, position minus the window's first position);
4. per ordering (y-major "sorty", x-major "sortx") sorts ``window · M + in-window key`` (M = window volume) and
   scatters the in-window indices into that order, i.e. the voxel's rank inside its window;
5. fills a dense ``W · M`` buffer (-1 = empty) with voxel ids at ``window · M + rank`` and gathers it at the
   paper's Eq. 3 positions ``floor((j·τ + k) · n_w / (S_w · τ))`` (evaluated in float64 as the official code);
6. masks a slot when it repeats the voxel of the slot to its left (``torch.roll``);

and then evaluates every position-embedding MLP -- one per (stage, block, shift) -- on every voxel's centred
in-window coords. It shares the MLPs (and so the weights) of a :class:`~sparse3d.models.dsvt.input_layer.
DSVTInputLayer`, so the two can be compared output for output. Only the published ``"official"``
position-embedding indexing exists here (encoder i of every block gets shift i's embedding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from sparse3d.kernels.set_partition_types import (
    Int3,
    large_window,
    validate_set_size,
    validate_window_args,
    window_grid,
)

__all__ = [
    "OfficialInputLayer",
    "OfficialStage",
    "dense_buffer_set_partition",
    "inner_window_index",
    "official_window_coords",
    "set_voxel_mask",
]


class OfficialStage(NamedTuple):
    """One stage of :class:`OfficialInputLayer`, keyed like the official ``voxel_info`` dict."""

    set_voxel_inds: tuple[torch.Tensor, torch.Tensor]
    """Per shift: int64 (2, S, τ), [ordering (0 sorty, 1 sortx), set, slot] -> voxel id."""
    set_voxel_masks: tuple[torch.Tensor, torch.Tensor]
    """Per shift: bool (2, S, τ), True where a slot repeats the voxel to its left."""
    coors_in_win: tuple[torch.Tensor, torch.Tensor]
    """Per shift: int64 (N, 3) in-window (z, y, x)."""
    pos_embeds: list[tuple[torch.Tensor, torch.Tensor]]
    """Per block: the (N, C) embeddings of shift 0 and shift 1 (what encoder 0 and encoder 1 receive)."""
    coords: torch.Tensor
    """int32 (N, 4) (batch, z, y, x) of the stage."""
    pooled_of_voxel: torch.Tensor | None
    """int64 (N,): pooled voxel of each voxel before the next stage (None for the last stage)."""
    pool_slot: torch.Tensor | None
    """int64 (N,): slot inside the pooled voxel, x-major (None for the last stage)."""


def official_window_coords(coords: torch.Tensor, spatial_shape: Int3, window_shape: Int3,
                           shift: Int3) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw window key ``b·(nwx·nwy·nwz) + (x'//wx)·(nwy·nwz) + (y'//wy)·nwz + z'//wz`` and in-window (z, y, x).

    ``x' = x + sx`` etc.; the z shift is dropped when the grid is one window high, as ``get_window_coors`` does.
    """
    coords, shape, win, sh, _ = validate_window_args(coords, spatial_shape, window_shape, shift)
    wx, wy, wz = win
    nwx, nwy, nwz = window_grid(shape, win)
    c = coords.long()
    x = c[:, 3] + sh[0]
    y = c[:, 2] + sh[1]
    z = c[:, 1] + sh[2]
    batch_win_inds = c[:, 0] * (nwx * nwy * nwz) + (x // wx) * (nwy * nwz) + (y // wy) * nwz + z // wz
    coors_in_win = torch.stack([z % wz, y % wy, x % wx], dim=-1)
    return batch_win_inds, coors_in_win


def inner_window_index(contiguous_win_inds: torch.Tensor, num_windows: int) -> torch.Tensor:
    """Index of each voxel among the voxels of its window (0 .. n_w - 1): the torch form of the official CUDA
    ``get_inner_win_inds``, which hands out the same numbers in an arbitrary (atomic) order."""
    n = contiguous_win_inds.numel()
    order = torch.sort(contiguous_win_inds, stable=True).indices
    counts = torch.bincount(contiguous_win_inds, minlength=num_windows)
    first = torch.cumsum(counts, 0) - counts
    inner = torch.empty_like(contiguous_win_inds)
    inner[order] = torch.arange(n, device=contiguous_win_inds.device) - first[contiguous_win_inds[order]]
    return inner


def _continuous_inds(setnum_per_win: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(window of each set, index of the set inside its window), sets ordered by window then index."""
    num_windows = setnum_per_win.numel()
    set_win_inds = torch.repeat_interleave(torch.arange(num_windows, device=setnum_per_win.device), setnum_per_win)
    first = torch.cumsum(setnum_per_win, 0) - setnum_per_win
    set_inds_in_win = torch.arange(set_win_inds.numel(), device=setnum_per_win.device) - first[set_win_inds]
    return set_win_inds, set_inds_in_win


def dense_buffer_set_partition(batch_win_inds: torch.Tensor, coors_in_win: torch.Tensor, window_shape: Int3,
                               set_size: int) -> torch.Tensor:
    """Sets of one shift under both orderings, int64 (2, S, τ), through the dense ``W · M`` buffer."""
    tau = validate_set_size(set_size)
    wx, wy, wz = window_shape
    max_voxel = wx * wy * wz
    device = batch_win_inds.device
    if batch_win_inds.numel() == 0:
        return torch.zeros((2, 0, tau), dtype=torch.int64, device=device)
    contiguous_win_inds = torch.unique(batch_win_inds, return_inverse=True)[1]
    voxelnum_per_win = torch.bincount(contiguous_win_inds)
    win_num = voxelnum_per_win.shape[0]
    setnum_per_win = torch.ceil(voxelnum_per_win / tau).long()
    set_win_inds, set_inds_in_win = _continuous_inds(setnum_per_win)

    # paper Eq. 3, in float64 like the official code
    base = set_inds_in_win[:, None] * tau + torch.arange(tau, device=device)
    base = base * voxelnum_per_win[set_win_inds][:, None]
    base = base.double() / (setnum_per_win[set_win_inds] * tau)[:, None].double()
    select_idx = torch.floor(base).long() + set_win_inds[:, None] * max_voxel

    inner = inner_window_index(contiguous_win_inds, win_num)
    order1 = torch.sort(contiguous_win_inds * max_voxel + inner).indices
    cz, cy, cx = coors_in_win[:, 0], coors_in_win[:, 1], coors_in_win[:, 2]
    keys = (cy * (wx * wz) + cx * wz + cz, cx * (wy * wz) + cy * wz + cz)
    voxel_ids = torch.arange(batch_win_inds.numel(), dtype=torch.long, device=device)
    out = []
    for key in keys:
        order2 = torch.sort(contiguous_win_inds * max_voxel + key).indices
        ranked = torch.full_like(inner, -1)
        ranked.scatter_(0, order2, inner[order1])  # rank of each voxel inside its window under this key
        padding = torch.full((win_num * max_voxel,), -1, dtype=torch.long, device=device)
        padding[ranked + max_voxel * contiguous_win_inds] = voxel_ids
        out.append(padding[select_idx])
    return torch.stack(out, dim=0)


def set_voxel_mask(set_voxel_inds: torch.Tensor) -> torch.Tensor:
    """True where a slot holds the same voxel as the slot to its left (slot 0 never), as a key padding mask."""
    prefix = torch.roll(set_voxel_inds, shifts=1, dims=-1)
    prefix[..., 0] = -1
    return set_voxel_inds == prefix


def _pos_embed(coors_in_win: torch.Tensor, window: Int3, mlp: nn.Module, normalize_pos: bool) -> torch.Tensor:
    """The MLP evaluated on every voxel's centred in-window (x, y[, z]); the MLP's input width picks 2-D or 3-D."""
    wx, wy, wz = window
    x = coors_in_win[:, 2] - wx / 2
    y = coors_in_win[:, 1] - wy / 2
    z = coors_in_win[:, 0] - wz / 2
    if normalize_pos:
        x, y, z = x / wx * 2 * math.pi, y / wy * 2 * math.pi, z / wz * 2 * math.pi
    in_dim = next(m for m in mlp.modules() if isinstance(m, nn.Linear)).in_features
    location = torch.stack((x, y) if in_dim == 2 else (x, y, z), dim=-1).to(torch.float32)
    return mlp(location)


class OfficialInputLayer:
    """The official DSVT input layer over the configuration and MLPs of ``layer`` (a ``DSVTInputLayer``).

    Not an ``nn.Module``: it owns no parameters, it reads ``layer``'s at call time.
    """

    def __init__(self, layer: nn.Module) -> None:
        if getattr(layer, "pos_embed_indexing", "official") != "official":
            raise ValueError("the official input layer only has pos_embed_indexing='official'")
        self.layer = layer

    def _window(self, s: int, shift: int) -> tuple[Int3, Int3]:
        """(window shape, offset) of shift ``shift`` of stage ``s``."""
        window = tuple(self.layer.window_shape[s])
        if shift == 0:
            return window, (0, 0, 0)
        return large_window(window), tuple(self.layer.shift_offset[s])

    def stage_sets(self, coords: torch.Tensor, shape: Int3, s: int,
                   shift: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(set_voxel_inds, set_voxel_mask, coors_in_win) of one shift of stage ``s``."""
        window, offset = self._window(s, shift)
        batch_win_inds, coors_in_win = official_window_coords(coords, shape, window, offset)
        set_inds = dense_buffer_set_partition(batch_win_inds, coors_in_win, window, self.layer.set_info[s][0])
        return set_inds, set_voxel_mask(set_inds), coors_in_win

    def stage(self, s: int, coords: torch.Tensor, shape: Int3, last: bool) -> OfficialStage:
        """Sets, masks and embeddings of stage ``s`` for voxels ``coords`` on grid ``shape``."""
        layer = self.layer
        blocks = layer.set_info[s][1]
        windows = (self._window(s, 0)[0], self._window(s, 1)[0])
        inds, masks, in_win = zip(*(self.stage_sets(coords, shape, s, i) for i in range(2)))
        embeds = []
        for b in range(blocks):
            mlps = layer.posembed_layers[s][b]
            embeds.append(tuple(_pos_embed(in_win[i], windows[i], mlps[i], layer.normalize_pos) for i in range(2)))
        pooled = slot = None
        if not last:
            pooled, slot = self._pooling(coords, shape, tuple(layer.pooling_strides[s]))
        return OfficialStage((inds[0], inds[1]), (masks[0], masks[1]), (in_win[0], in_win[1]), embeds, coords,
                             pooled, slot)

    @staticmethod
    def _pooling(coords: torch.Tensor, shape: Sequence[int], stride: Int3) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled voxel (``unique`` of the pooled key) and x-major slot of every voxel."""
        sx, sy, sz = stride
        nx, ny, nz = (math.ceil(shape[i] / stride[i]) for i in range(3))
        c = coords.long()
        key = c[:, 0] * (nx * ny * nz) + (c[:, 3] // sx) * (ny * nz) + (c[:, 2] // sy) * nz + c[:, 1] // sz
        pooled = torch.unique(key, return_inverse=True)[1]
        slot = (c[:, 3] % sx) * (sy * sz) + (c[:, 2] % sy) * sz + c[:, 1] % sz
        return pooled, slot

    @staticmethod
    def _pooled_coords(coords: torch.Tensor, pooled: torch.Tensor, stride: Int3) -> torch.Tensor:
        """(batch, z // sz, y // sy, x // sx) of each pooled voxel, in pooled-voxel order."""
        sx, sy, sz = stride
        out = torch.empty((int(pooled.max()) + 1 if pooled.numel() else 0, 4), dtype=torch.int32,
                          device=coords.device)
        c = coords.long()
        new = torch.stack([c[:, 0], c[:, 1] // sz, c[:, 2] // sy, c[:, 3] // sx], 1).to(torch.int32)
        out[pooled] = new
        return out

    def __call__(self, coords: torch.Tensor) -> list[OfficialStage]:
        """Every stage's sets, masks and embeddings for voxels ``coords`` (N, 4) int32 on the stage-0 grid."""
        layer = self.layer
        shapes = layer.stage_shapes(layer.grid_size)
        stages = len(layer.set_info)
        out = []
        for s in range(stages):
            last = s == stages - 1
            stage = self.stage(s, coords, shapes[s], last)
            out.append(stage)
            if not last:
                coords = self._pooled_coords(coords, stage.pooled_of_voxel, tuple(layer.pooling_strides[s]))
        return out
