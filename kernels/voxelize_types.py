"""The voxelisation result type and grid rule shared by :mod:`sparse3d.kernels.voxelize` and its oracle.

Both the Warp :func:`~sparse3d.kernels.voxelize.voxelize` and :mod:`sparse3d.kernels.reference.voxelize`
return a :class:`Voxelization` over the grid :func:`grid_size_from_range` derives. This module imports only
torch, so that the oracle stays independent of the kernels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch


class Voxelization(NamedTuple):
    """Result of :func:`~sparse3d.kernels.voxelize.voxelize`."""

    coords: torch.Tensor
    """(M, 4) int32 voxel coords (batch, z, y, x), sorted by (batch, x, y, z)."""
    point_to_voxel: torch.Tensor
    """(N,) int64 voxel row of each point, -1 for dropped points."""
    counts: torch.Tensor
    """(M,) int32 number of points in each voxel."""
    num_nonfinite: int
    """Points dropped because a coordinate was NaN or infinite."""
    num_out_of_range: int
    """Finite points dropped because they fall outside the range."""
    grid_size: tuple[int, int, int]
    """Grid size (X, Y, Z) derived from the range and voxel size."""


def grid_size_from_range(point_range: Sequence[float], voxel_size: Sequence[float]) -> tuple[int, int, int]:
    """(X, Y, Z) voxels covering ``point_range`` = (xmin, ymin, zmin, xmax, ymax, zmax), rounded up.

    A 1e-6 relative tolerance keeps e.g. 75.2 / 0.1 at 752 voxels instead of 753 from float error.
    """
    if len(point_range) != 6:
        raise ValueError(f"point_range must be (xmin, ymin, zmin, xmax, ymax, zmax), got {list(point_range)}")
    if len(voxel_size) != 3:
        raise ValueError(f"voxel_size must have 3 entries (x, y, z), got {list(voxel_size)}")
    out = []
    for axis in range(3):
        lo, hi, vs = float(point_range[axis]), float(point_range[axis + 3]), float(voxel_size[axis])
        if not vs > 0:
            raise ValueError(f"voxel_size must be positive, got {list(voxel_size)}")
        if not hi > lo:
            raise ValueError(f"point_range max must exceed min on every axis, got {list(point_range)}")
        extent = (hi - lo) / vs
        out.append(max(1, math.ceil(extent - 1e-6 * max(1.0, extent))))
    return out[0], out[1], out[2]
