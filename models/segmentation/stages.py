"""Stages of the point-segmentation task: points -> voxels, and voxel features -> per-point logits.

Each stage is an ``nn.Module`` built from its own YAML node, so a config can swap one (another voxel size or
feature normalisation, another head) without touching the task.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sparse3d.sparse import SparseVoxelTensor, Voxelization


class PointVoxelizer(nn.Module):
    """Dynamic voxelisation of a point batch, with mean-pooled point features.

    Features are x, y, z normalised to [-1, 1] over ``point_range`` followed by the remaining
    ``in_channels - 3`` columns as given (e.g. reflectance). Points outside the range are dropped
    (``point_to_voxel == -1``).
    """

    def __init__(self, point_range: Sequence[float], voxel_size: Sequence[float], in_channels: int = 4) -> None:
        super().__init__()
        if in_channels < 3:
            raise ValueError(f"in_channels must be >= 3 (x, y, z first), got {in_channels}")
        if len(point_range) != 6 or len(voxel_size) != 3:
            raise ValueError(f"point_range needs 6 values and voxel_size 3, got {list(point_range)}, {list(voxel_size)}")
        self.point_range = [float(v) for v in point_range]
        self.voxel_size = [float(v) for v in voxel_size]
        if not all(math.isfinite(v) for v in self.point_range) or not all(
            self.point_range[i] < self.point_range[i + 3] for i in range(3)
        ):
            raise ValueError(f"point_range must be 6 finite values (xmin, ymin, zmin, xmax, ymax, zmax) with each "
                             f"min < max, got {list(point_range)}")
        if not all(math.isfinite(v) and v > 0 for v in self.voxel_size):
            raise ValueError(f"voxel_size must be 3 finite values > 0, got {list(voxel_size)}")
        self.in_channels = int(in_channels)
        lo = torch.tensor(self.point_range[:3])
        hi = torch.tensor(self.point_range[3:])
        self.register_buffer("xyz_center", (lo + hi) / 2, persistent=False)
        self.register_buffer("xyz_scale", (hi - lo) / 2, persistent=False)
        self.stats: dict[str, float] = {}

    def point_features(self, points: torch.Tensor) -> torch.Tensor:
        xyz = (points[:, :3] - self.xyz_center) / self.xyz_scale
        return torch.cat([xyz, points[:, 3 : self.in_channels]], dim=1)

    def forward(self, batch: dict[str, Any]) -> tuple[SparseVoxelTensor, Voxelization]:
        points = batch["points"]
        if points.dim() != 2 or points.shape[1] < self.in_channels:
            raise ValueError(f"points must be (N, >= {self.in_channels}), got {tuple(points.shape)}")
        x, vox = SparseVoxelTensor.from_points(
            points, self.voxel_size, self.point_range, batch_idx=batch.get("batch_idx"),
            features=self.point_features(points), batch_size=int(batch.get("batch_size", 1)),
        )
        self.stats = {"points": float(points.shape[0]), "voxels": float(x.num_voxels),
                      "dropped_points": float(vox.num_nonfinite + vox.num_out_of_range)}
        return x, vox


class PointClassifier(nn.Module):
    """A linear layer on voxel features, read back at every point through the point -> voxel map."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.linear = nn.Linear(in_channels, num_classes)

    def forward(self, voxels: SparseVoxelTensor, point_to_voxel: torch.Tensor) -> torch.Tensor:
        return self.linear(voxels.features)[point_to_voxel.clamp(min=0)]
