"""Plain-torch oracle for :func:`sparse3d.kernels.voxelize.voxelize` (``torch.unique`` over packed keys)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparse3d.kernels.voxelize_types import Voxelization, grid_size_from_range


def voxelize(
    points: torch.Tensor,
    voxel_size: Sequence[float],
    point_range: Sequence[float],
    batch_idx: torch.Tensor | None = None,
) -> Voxelization:
    grid = grid_size_from_range(point_range, voxel_size)
    n = points.shape[0]
    if batch_idx is None:
        batch_idx = torch.zeros(n, dtype=torch.int64)
    xyz = points[:, :3]
    finite = torch.isfinite(xyz).all(dim=1)
    lo = torch.tensor([float(v) for v in point_range[:3]], dtype=torch.float32)
    size = torch.tensor([float(v) for v in voxel_size], dtype=torch.float32)
    f = torch.floor((torch.where(finite[:, None], xyz, lo) - lo) / size)
    g = torch.tensor(grid, dtype=torch.float32)
    inside = finite & (f >= 0).all(dim=1) & (f < g).all(dim=1)
    idx = f.to(torch.int64)
    b = batch_idx.to(torch.int64)
    keys = ((b * grid[0] + idx[:, 0]) * grid[1] + idx[:, 1]) * grid[2] + idx[:, 2]
    uniq, inv = torch.unique(keys[inside], sorted=True, return_inverse=True)
    inverse = torch.full((n,), -1, dtype=torch.int64)
    inverse[inside] = inv
    iz = uniq % grid[2]
    iy = (uniq // grid[2]) % grid[1]
    ix = (uniq // (grid[2] * grid[1])) % grid[0]
    bb = uniq // (grid[2] * grid[1] * grid[0])
    coords = torch.stack([bb, iz, iy, ix], dim=1).to(torch.int32)
    counts = torch.bincount(inv, minlength=uniq.numel()).to(torch.int32)
    return Voxelization(
        coords, inverse, counts, int((~finite).sum()), int((finite & ~inside).sum()), grid
    )
