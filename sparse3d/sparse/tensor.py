"""``SparseVoxelTensor``: the voxel set every sparse pipeline passes around.

Coords are int32 (N, 4) rows (batch, z, y, x) as in OpenPCDet/spconv; ``grid_size`` is (X, Y, Z), derived from
the point range and voxel size, never typed twice. Kernel maps built for one layer are cached under an
``indice_key`` so layers that share a voxel set (submanifold blocks, an inverse conv undoing a strided conv)
build them once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from sparse3d.kernels.segment import segment_max, segment_mean
from sparse3d.kernels.voxelize import voxelize
from sparse3d.kernels.voxelize_types import Voxelization


@dataclass
class SparseVoxelTensor:
    """Features on the active voxels of a batch of regular grids."""

    coords: torch.Tensor
    """(N, 4) int32 (batch, z, y, x)."""
    features: torch.Tensor
    """(N, C) float features, row-aligned with ``coords``."""
    grid_size: tuple[int, int, int]
    """Grid size (X, Y, Z) in voxels."""
    batch_size: int
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Metric voxel size (x, y, z) of this grid (grows with strided convs)."""
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Metric position (x, y, z) of the grid's minimum corner."""
    cache: dict[str, Any] = field(default_factory=dict, repr=False)
    """Kernel maps and hash tables keyed by ``indice_key``; shared by tensors derived from this one."""

    def __post_init__(self) -> None:
        if self.coords.dim() != 2 or self.coords.shape[1] != 4 or self.coords.dtype != torch.int32:
            raise ValueError(f"coords must be int32 (N, 4), got {self.coords.dtype} {tuple(self.coords.shape)}")
        if self.features.dim() != 2 or self.features.shape[0] != self.coords.shape[0]:
            raise ValueError(
                f"features must be (N, C) with N = {self.coords.shape[0]}, got {tuple(self.features.shape)}"
            )
        self.grid_size = tuple(int(v) for v in self.grid_size)  # type: ignore[assignment]

    @property
    def num_voxels(self) -> int:
        return self.coords.shape[0]

    @property
    def spatial_shape_zyx(self) -> list[int]:
        """Grid as [Z, Y, X], the order spconv and dense (B, C, Z, Y, X) tensors use."""
        return [self.grid_size[2], self.grid_size[1], self.grid_size[0]]

    def replace_features(self, features: torch.Tensor) -> SparseVoxelTensor:
        """Same voxels (and shared cache), new features."""
        return replace(self, features=features)

    def voxel_centers(self) -> torch.Tensor:
        """(N, 3) metric (x, y, z) centres of the voxels."""
        zyx = self.coords[:, 1:].to(torch.float32)
        xyz = zyx.flip(1) + 0.5
        size = torch.tensor(self.voxel_size, dtype=torch.float32, device=xyz.device)
        origin = torch.tensor(self.origin, dtype=torch.float32, device=xyz.device)
        return origin + xyz * size

    def dense(self) -> torch.Tensor:
        """(B, C, Z, Y, X) dense tensor (zeros at inactive voxels); for BEV heads and tests."""
        z, y, x = self.spatial_shape_zyx
        out = self.features.new_zeros(self.batch_size, self.features.shape[1], z, y, x)
        c = self.coords.long()
        out[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = self.features
        return out

    @classmethod
    def from_points(
        cls,
        points: torch.Tensor,
        voxel_size: Sequence[float],
        point_range: Sequence[float],
        batch_idx: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        reduce: str = "mean",
        batch_size: int | None = None,
    ) -> tuple[SparseVoxelTensor, Voxelization]:
        """Voxelise points and pool per-point ``features`` (default: the point columns) into voxels.

        Returns the tensor and the :class:`Voxelization` (for point -> voxel look-ups, e.g. per-point heads).
        """
        vox = voxelize(points, voxel_size, point_range, batch_idx)
        feats = points if features is None else features
        if reduce == "mean":
            pooled = segment_mean(feats, vox.point_to_voxel, vox.coords.shape[0])
        elif reduce == "max":
            pooled = segment_max(feats, vox.point_to_voxel, vox.coords.shape[0])[0]
        else:
            raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
        if batch_size is None:
            batch_size = int(batch_idx.max()) + 1 if batch_idx is not None and batch_idx.numel() else 1
        tensor = cls(
            coords=vox.coords,
            features=pooled,
            grid_size=vox.grid_size,
            batch_size=batch_size,
            voxel_size=tuple(float(v) for v in voxel_size),  # type: ignore[arg-type]
            origin=tuple(float(v) for v in point_range[:3]),  # type: ignore[arg-type]
        )
        return tensor, vox
