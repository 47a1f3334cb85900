"""DSVT input layer: per stage, the rotated sets of both window shifts, their position embeddings and the
z-pooling indices between stages.

DSVT (Wang et al., "DSVT: Dynamic Sparse Voxel Transformer with Rotated Sets", CVPR 2023). For every stage the
voxels are grouped into windows of two shapes (shift 0: ``window_shape``; shift 1: the large window (2wx, 2wy,
wz) moved by ``shift_offset``), each window is cut into sets of ``set_size`` voxels under two orderings (sorted
by y then x, and by x then y), see :mod:`sparse3d.kernels.set_partition`. A learned MLP per (stage, block,
shift) embeds the voxel's centred position inside its window.

``pos_embed_indexing``: the official code feeds encoder ``i`` of every block the embedding computed for shift
``i`` (not for the block's own shift; Haiyang-W/DSVT issue #50). ``"official"`` keeps that, and is needed to
load the published weights; ``"fixed"`` gives both encoders of a block its own shift's embedding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from sparse3d.kernels.set_partition import dsvt_stage_partitions
from sparse3d.kernels.set_partition_types import Int3, SetPartition

__all__ = ["DSVTInputLayer", "PoolingIndex", "PositionEmbedding", "StageInput", "pooling_index"]

POS_EMBED_INDEXING = ("official", "fixed")


class PoolingIndex(NamedTuple):
    """Where every voxel of a stage goes when z (or x, y) is pooled by ``stride`` before the next stage."""

    pooled_of_voxel: torch.Tensor
    """int64 (N,): pooled voxel of each voxel; pooled voxels are ordered by their key."""
    slot: torch.Tensor
    """int64 (N,): position inside the pooled voxel, ``(x % sx)·(sy·sz) + (y % sy)·sz + z % sz`` (x-major)."""
    coords: torch.Tensor
    """int32 (P, 4): (batch, z // sz, y // sy, x // sx) of each pooled voxel."""
    spatial_shape: Int3
    """(X, Y, Z) of the pooled grid, ``ceil(shape / stride)``."""
    volume: int
    """sx·sy·sz, the slots per pooled voxel."""


class PositionEmbedding(NamedTuple):
    """The embeddings of N voxels as U distinct rows and each voxel's row: a window has at most wx·wy·wz positions,
    so this avoids materialising (N, C) per encoder; set attention gathers ``table[row[inds]]`` directly."""

    table: torch.Tensor
    """(U, C) embedding of each distinct in-window position."""
    row: torch.Tensor
    """int64 (N,) row of ``table`` for each voxel."""

    def dense(self) -> torch.Tensor:
        """(N, C) embedding of every voxel."""
        return self.table[self.row]

    def at(self, inds: torch.Tensor) -> torch.Tensor:
        """Embeddings of the voxels ``inds`` (any shape) -> ``inds.shape + (C,)``."""
        return self.table[self.row[inds]]


class StageInput(NamedTuple):
    """What the backbone needs for one stage."""

    partitions: tuple[SetPartition, SetPartition]
    """Shift 0 and shift 1 partitions (each with both orderings)."""
    pos_embeds: list[tuple[PositionEmbedding, PositionEmbedding]]
    """Per block of the stage: the embeddings fed to encoder 0 and encoder 1."""
    spatial_shape: Int3
    """(X, Y, Z) of the stage's grid."""
    coords: torch.Tensor
    """int32 (N, 4) voxel coords of the stage."""
    pooling: PoolingIndex | None
    """How this stage's voxels pool into the next stage's (None for the last stage)."""


def pooling_index(coords: torch.Tensor, spatial_shape: Int3, stride: Int3) -> PoolingIndex:
    """Group voxels by ``stride`` (x, y, z): the pooled voxel of each voxel and its slot inside it."""
    sx, sy, sz = (int(s) for s in stride)
    if min(sx, sy, sz) < 1:
        raise ValueError(f"pooling stride must be positive, got {tuple(stride)}")
    nx, ny, nz = (math.ceil(spatial_shape[i] / (sx, sy, sz)[i]) for i in range(3))
    c = coords.to(torch.int64)
    b, z, y, x = c[:, 0], c[:, 1], c[:, 2], c[:, 3]
    key = b * (nx * ny * nz) + (x // sx) * (ny * nz) + (y // sy) * nz + z // sz
    unique_key, inverse = torch.unique(key, sorted=True, return_inverse=True)
    pb = unique_key // (nx * ny * nz)
    rest = unique_key % (nx * ny * nz)
    px, rest = rest // (ny * nz), rest % (ny * nz)
    py, pz = rest // nz, rest % nz
    pooled = torch.stack([pb, pz, py, px], dim=1).to(torch.int32)
    slot = (x % sx) * (sy * sz) + (y % sy) * sz + z % sz
    return PoolingIndex(inverse, slot, pooled, (nx, ny, nz), sx * sy * sz)


class _PositionEmbedding(nn.Module):
    """Linear(d_in -> C) -> BatchNorm1d -> ReLU -> Linear(C -> C), as the official ``PositionEmbeddingLearned``."""

    def __init__(self, in_dim: int, channels: int) -> None:
        super().__init__()
        self.position_embedding_head = nn.Sequential(
            nn.Linear(in_dim, channels), nn.BatchNorm1d(channels), nn.ReLU(inplace=True), nn.Linear(channels, channels)
        )

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        return self.position_embedding_head(xyz)

    def forward_distinct(self, positions: torch.Tensor, inverse: torch.Tensor,
                         counts: torch.Tensor) -> PositionEmbedding:
        """The embedding of N voxels given their U distinct positions (U, d), each voxel's row ``inverse`` (N,) and
        the rows' multiplicities ``counts`` (U,): the MLP runs on U rows instead of N.

        ``.dense()`` of the result equals ``forward(positions[inverse])`` in training too: BatchNorm's batch statistics over the N voxels
        are the count-weighted statistics of the U rows (biased variance to normalise, unbiased for the running
        estimate, as ``nn.BatchNorm1d`` does), and autograd differentiates through them the same way.
        """
        linear1, norm, relu, linear2 = self.position_embedding_head
        h = linear1(positions)
        n = int(inverse.shape[0])
        if norm.training and n > 1:
            w = counts.to(h.dtype)[:, None]
            mean = (w * h).sum(0) / n
            var = (w * (h - mean) ** 2).sum(0) / n
            if norm.track_running_stats and norm.running_mean is not None and norm.running_var is not None:
                with torch.no_grad():
                    norm.num_batches_tracked.add_(1)
                    m = norm.momentum if norm.momentum is not None else 1.0 / float(norm.num_batches_tracked)
                    norm.running_mean.mul_(1 - m).add_(m * mean.detach())
                    norm.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
            h = (h - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
        elif norm.training:
            h = norm(h[inverse])  # one voxel: let BatchNorm raise its own error, as the plain path would
            return PositionEmbedding(linear2(relu(h)), torch.arange(n, device=h.device))
        else:
            h = norm(h)
        return PositionEmbedding(linear2(relu(h)), inverse)


class DSVTInputLayer(nn.Module):
    """Builds :class:`StageInput` for every stage from the voxel coords of stage 0.

    Args:
        set_info: per stage ``(set_size τ, number of blocks)``.
        window_shape: per stage the shift-0 window (wx, wy, wz) in voxels.
        shift_offset: per stage the shift-1 offset (sx, sy, sz).
        channels: per stage the feature width C (the embedding width).
        grid_size: (X, Y, Z) of the stage-0 grid, derived from the VFE's range and voxel size (never typed).
        pooling_strides: strides (x, y, z) between consecutive stages (one fewer than stages).
        normalize_pos: scale the centred window coords by 2π / window size (off in the published configs).
        pos_embed_indexing: ``"official"`` or ``"fixed"`` (see the module docstring).
    """

    def __init__(self, set_info: Sequence[Sequence[int]], window_shape: Sequence[Sequence[int]],
                 shift_offset: Sequence[Sequence[int]], channels: Sequence[int], grid_size: Sequence[int],
                 pooling_strides: Sequence[Sequence[int]] = (), normalize_pos: bool = False,
                 pos_embed_indexing: str = "official") -> None:
        super().__init__()
        stages = len(set_info)
        if stages == 0:
            raise ValueError("set_info must list at least one stage as [set_size, num_blocks]")
        for name, value in (("window_shape", window_shape), ("shift_offset", shift_offset), ("channels", channels)):
            if len(value) != stages:
                raise ValueError(f"{name} must have one entry per stage ({stages}), got {len(value)}")
        if len(pooling_strides) != stages - 1:
            raise ValueError(f"pooling_strides must have {stages - 1} entries (between stages), got {len(pooling_strides)}")
        if pos_embed_indexing not in POS_EMBED_INDEXING:
            raise ValueError(f"pos_embed_indexing must be one of {POS_EMBED_INDEXING}, got {pos_embed_indexing!r}")
        self.set_info = [(int(t), int(n)) for t, n in set_info]
        if any(t < 1 or n < 1 for t, n in self.set_info):
            raise ValueError(f"set sizes and block counts must be positive, got {self.set_info}")
        self.window_shape = [tuple(int(v) for v in w) for w in window_shape]
        self.shift_offset = [tuple(int(v) for v in s) for s in shift_offset]
        self.channels = [int(c) for c in channels]
        self.pooling_strides = [tuple(int(v) for v in s) for s in pooling_strides]
        self.normalize_pos = bool(normalize_pos)
        self.pos_embed_indexing = pos_embed_indexing
        if len(grid_size) != 3 or min(int(v) for v in grid_size) < 1:
            raise ValueError(f"grid_size must be three positive voxel counts (X, Y, Z), got {list(grid_size)}")
        self.grid_size: Int3 = (int(grid_size[0]), int(grid_size[1]), int(grid_size[2]))
        self.shapes = self.stage_shapes(self.grid_size)
        # One MLP per (stage, block, shift), named like the official state dict; the input is (x, y, z) when
        # the stage's grid is more than one voxel high, else (x, y).
        self._in_dims = [3 if shape[2] > 1 else 2 for shape in self.shapes]
        self.posembed_layers = nn.ModuleList(
            nn.ModuleList(
                nn.ModuleList(_PositionEmbedding(self._in_dims[s], self.channels[s]) for _ in range(2))
                for _ in range(blocks)
            )
            for s, (_, blocks) in enumerate(self.set_info)
        )

    def stage_shapes(self, grid_size: Sequence[int]) -> list[Int3]:
        """(X, Y, Z) of every stage: stage 0 is the VFE grid, each pooling divides by its stride, rounded up."""
        shapes = [tuple(int(v) for v in grid_size)]
        for stride in self.pooling_strides:
            shapes.append(tuple(math.ceil(shapes[-1][i] / stride[i]) for i in range(3)))
        return shapes  # type: ignore[return-value]

    def _distinct_positions(self, partition: SetPartition, window: Int3,
                            dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Distinct centred in-window positions (U, dim) as (x, y[, z]) in voxels (radians when normalised), each
        voxel's row in them (N,) and the rows' counts (U,). A window holds at most wx·wy·wz positions, so the
        embedding MLPs run on far fewer rows than there are voxels."""
        zyx = partition.windows.coords_in_win.to(torch.int64)
        wx, wy, wz = window
        key = (zyx[:, 0] * wy + zyx[:, 1]) * wx + zyx[:, 2]
        unique, inverse, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
        x = (unique % wx).to(torch.float32) - wx / 2
        y = ((unique // wx) % wy).to(torch.float32) - wy / 2
        z = (unique // (wx * wy)).to(torch.float32) - wz / 2
        if self.normalize_pos:
            x, y, z = x / wx * 2 * math.pi, y / wy * 2 * math.pi, z / wz * 2 * math.pi
        return torch.stack([x, y, z], dim=1)[:, :dim], inverse, counts

    def stage(self, s: int, coords: torch.Tensor, shape: Int3, block_offset: int,
              pooling: PoolingIndex | None) -> StageInput:
        """The partitions and embeddings of stage ``s``; ``block_offset`` = blocks in earlier stages."""
        set_size, blocks = self.set_info[s]
        window = self.window_shape[s]
        partitions = dsvt_stage_partitions(coords, shape, window, self.shift_offset[s], set_size)
        windows = (partitions[0].windows.window_shape, partitions[1].windows.window_shape)
        dim = self._in_dims[s]
        positions = [self._distinct_positions(partitions[i], windows[i], dim) for i in range(2)]
        embeds: list[tuple[torch.Tensor, torch.Tensor]] = []
        for b in range(blocks):
            mlps = self.posembed_layers[s][b]
            if self.pos_embed_indexing == "official":
                embeds.append((mlps[0].forward_distinct(*positions[0]), mlps[1].forward_distinct(*positions[1])))
            else:
                shift = (block_offset + b) % 2
                pos = mlps[shift].forward_distinct(*positions[shift])
                embeds.append((pos, pos))
        return StageInput(partitions, embeds, shape, coords, pooling)

    def forward(self, coords: torch.Tensor) -> list[StageInput]:
        """Every stage's input for voxels ``coords`` (N, 4) int32 (batch, z, y, x) on the stage-0 grid."""
        shapes = self.shapes
        out: list[StageInput] = []
        block_offset = 0
        for s in range(len(self.set_info)):
            pooling = None
            if s < len(self.set_info) - 1:
                pooling = pooling_index(coords, shapes[s], self.pooling_strides[s])
            out.append(self.stage(s, coords, shapes[s], block_offset, pooling))
            block_offset += self.set_info[s][1]
            if pooling is not None:
                coords = pooling.coords
        return out
