"""Dynamic voxel feature encoder (VFE): points -> one feature vector per non-empty voxel or pillar.

The encoder of DSVT (Wang et al., CVPR 2023) and of OpenPCDet's ``DynamicVoxelVFE`` / ``DynPillarVFE``: no
cap on points per voxel or on the voxel count. Each point is described by its raw features, its offset from
the mean of its voxel's points (``f_cluster``) and its offset from the voxel centre (``f_center``); a stack
of PFN layers (Linear without bias -> BatchNorm -> ReLU, then the per-voxel maximum gathered back to the
points and concatenated) ends with the per-voxel maximum of the last layer.

A pillar encoder is the same module with a voxel size spanning the whole z range (grid height 1). Grouping
runs on the Warp voxelisation kernel and the Warp segment reductions, whose max routes each gradient to a
single argmax (the ``torch_scatter`` semantics the published models were trained with).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from sparse3d.kernels.segment import segment_max, segment_mean
from sparse3d.kernels.voxelize import voxelize
from sparse3d.kernels.voxelize_types import grid_size_from_range

__all__ = ["DynamicVFE", "VoxelFeatures"]


class VoxelFeatures(NamedTuple):
    """Output of :class:`DynamicVFE`."""

    features: torch.Tensor
    """(M, C) float32 feature of every non-empty voxel."""
    coords: torch.Tensor
    """(M, 4) int32 (batch, z, y, x), sorted by (batch, x, y, z) as the voxelisation emits them."""
    grid_size: tuple[int, int, int]
    """(X, Y, Z) voxels covering the point range."""
    batch_size: int
    """Number of batch elements (some may have no voxel)."""


class _PFNLayer(nn.Module):
    """Linear (no bias) -> BatchNorm1d -> ReLU per point, then the per-voxel max (concatenated unless last)."""

    def __init__(self, in_channels: int, out_channels: int, last: bool) -> None:
        super().__init__()
        self.last = last
        width = out_channels if last else out_channels // 2
        self.linear = nn.Linear(in_channels, width, bias=False)
        self.norm = nn.BatchNorm1d(width, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor, voxel_of_point: torch.Tensor, num_voxels: int) -> torch.Tensor:
        x = torch.relu(self.norm(self.linear(x)))
        x_max, _ = segment_max(x, voxel_of_point, num_voxels)
        if self.last:
            return x_max
        return torch.cat([x, x_max[voxel_of_point]], dim=1)


class DynamicVFE(nn.Module):
    """Points (N, 3 + F) with their batch index -> :class:`VoxelFeatures`.

    Args:
        point_range: (xmin, ymin, zmin, xmax, ymax, zmax) in metres; points outside are dropped.
        voxel_size: (vx, vy, vz); a pillar encoder uses vz = zmax - zmin.
        in_channels: columns of a point used as raw features (x, y, z first, e.g. 4 with reflectance).
        filters: output width of each PFN layer; the last is the voxel feature width.
        use_absolute_xyz: keep x, y, z among the raw features (else only the extra columns).
        with_distance: append the point's distance to the sensor origin.
    """

    def __init__(self, point_range: Sequence[float], voxel_size: Sequence[float], in_channels: int = 4,
                 filters: Sequence[int] = (192, 192), use_absolute_xyz: bool = True,
                 with_distance: bool = False) -> None:
        super().__init__()
        if in_channels < 3:
            raise ValueError(f"in_channels must be >= 3 (x, y, z first), got {in_channels}")
        filters = [int(f) for f in filters]
        if not filters or any(f <= 0 for f in filters):
            raise ValueError(f"filters must be positive widths, got {filters}")
        if any(f % 2 for f in filters[:-1]):
            raise ValueError(f"every PFN width but the last must be even (half is concatenated), got {filters}")
        self.grid_size = grid_size_from_range(point_range, voxel_size)  # validates range and size
        self.point_range = [float(v) for v in point_range]
        self.voxel_size = [float(v) for v in voxel_size]
        self.in_channels = int(in_channels)
        self.use_absolute_xyz = bool(use_absolute_xyz)
        self.with_distance = bool(with_distance)
        width = (in_channels if use_absolute_xyz else in_channels - 3) + 6 + int(with_distance)
        widths = [width, *filters]
        self.pfn_layers = nn.ModuleList(
            _PFNLayer(widths[i], widths[i + 1], last=i == len(filters) - 1) for i in range(len(filters))
        )
        self.out_channels = filters[-1]
        self.register_buffer("range_min", torch.tensor(self.point_range[:3]), persistent=False)
        self.register_buffer("voxel", torch.tensor(self.voxel_size), persistent=False)

    def forward(self, points: torch.Tensor, batch_idx: torch.Tensor | None = None,
                batch_size: int | None = None) -> VoxelFeatures:
        if points.dim() != 2 or points.shape[1] < self.in_channels:
            raise ValueError(f"points must be (N, >= {self.in_channels}), got {tuple(points.shape)}")
        if batch_idx is None:
            batch_idx = torch.zeros(points.shape[0], dtype=torch.int32, device=points.device)
        if batch_size is None:
            batch_size = int(batch_idx.max()) + 1 if batch_idx.numel() else 1
        points = points[:, : self.in_channels].to(torch.float32)
        vox = voxelize(points[:, :3].contiguous(), self.voxel_size, self.point_range, batch_idx=batch_idx)
        keep = vox.point_to_voxel >= 0
        pts = points[keep]
        ids = vox.point_to_voxel[keep]
        num_voxels = int(vox.coords.shape[0])
        if num_voxels == 0:
            empty = points.new_zeros(0, self.out_channels)
            return VoxelFeatures(empty, vox.coords, self.grid_size, batch_size)
        xyz = pts[:, :3]
        f_cluster = xyz - segment_mean(xyz, ids, num_voxels)[ids]
        zyx = vox.coords[ids, 1:].to(torch.float32)
        centre = (zyx.flip(1) + 0.5) * self.voxel + self.range_min
        f_center = xyz - centre
        raw = pts if self.use_absolute_xyz else pts[:, 3:]
        parts = [raw, f_cluster, f_center]
        if self.with_distance:
            parts.append(xyz.norm(dim=1, keepdim=True))
        x = torch.cat(parts, dim=1)
        for layer in self.pfn_layers:
            x = layer(x, ids, num_voxels)
        return VoxelFeatures(x, vox.coords, self.grid_size, batch_size)
