"""Dynamic voxelisation of batched points: voxel coords, point -> voxel map and per-voxel counts.

"Dynamic" as in the dynamic VFEs of OpenPCDet (``DynamicVoxelVFE``, ``DynamicPillarVFE``) and DSVT: no cap on
points per voxel or on the voxel count. A Warp kernel computes one packed int64 key per point (dropping
non-finite and out-of-range points, counted separately), then
:func:`~sparse3d.kernels.hashmap.unique_keys_with_inverse` de-duplicates them (an occupancy bitmap of the grid
when it has few cells per point, else a sort). Output voxels are sorted by key
``b·(X·Y·Z) + ix·(Y·Z) + iy·Z + iz`` -- the order ``torch.unique`` gives in OpenPCDet's ``DynamicVoxelVFE`` --
and coords are emitted as (batch, z, y, x) int32. The result does not depend on thread scheduling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import warp as wp

from sparse3d.kernels.hashmap import decode_keys, pack_key, unique_keys_with_inverse
from sparse3d.kernels.runtime import (
    check_same_device,
    check_tensor,
    init,
    launch,
    to_wp,
    wp_device,
)
from sparse3d.kernels.voxelize_types import Voxelization, grid_size_from_range

_NONFINITE = wp.constant(-1)
_OUT_OF_RANGE = wp.constant(-2)


@wp.kernel
def _point_keys_kernel(
    offset: int,
    points: wp.array2d(dtype=wp.float32),
    batch: wp.array(dtype=wp.int32),
    lo: wp.vec3,
    size: wp.vec3,
    gx: wp.int64,
    gy: wp.int64,
    gz: wp.int64,
    keys: wp.array(dtype=wp.int64),
):
    i = wp.tid() + offset
    x = points[i, 0]
    y = points[i, 1]
    z = points[i, 2]
    if not (wp.isfinite(x) and wp.isfinite(y) and wp.isfinite(z)):
        keys[i] = wp.int64(_NONFINITE)
        return
    fx = wp.floor((x - lo[0]) / size[0])
    fy = wp.floor((y - lo[1]) / size[1])
    fz = wp.floor((z - lo[2]) / size[2])
    # Compare in float before the integer cast so huge coordinates cannot overflow.
    if fx < 0.0 or fy < 0.0 or fz < 0.0 or fx >= float(gx) or fy >= float(gy) or fz >= float(gz):
        keys[i] = wp.int64(_OUT_OF_RANGE)
        return
    ix = wp.int64(fx)
    iy = wp.int64(fy)
    iz = wp.int64(fz)
    b = wp.int64(batch[i])
    keys[i] = pack_key(b, iz, iy, ix, gx, gy, gz)


def validate_points(
    points: torch.Tensor, batch_idx: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Check dtypes/shapes; return contiguous points, int32 batch ids and the batch size."""
    check_tensor("points", points, torch.float32, ndim=2, min_last_dim=3)
    n = points.shape[0]
    if batch_idx is None:
        batch_idx = torch.zeros(n, dtype=torch.int32, device=points.device)
    check_tensor("batch_idx", batch_idx, (torch.int32, torch.int64), ndim=1)
    check_same_device(points=points, batch_idx=batch_idx)
    if batch_idx.shape[0] != n:
        raise ValueError(f"batch_idx has {batch_idx.shape[0]} entries but points has {n} rows")
    batch_size = 0
    if n:
        bmin, bmax = int(batch_idx.min()), int(batch_idx.max())
        if bmin < 0:
            raise ValueError(f"batch_idx must be >= 0, got {bmin}")
        if bmax >= 2**31:
            raise ValueError(f"batch_idx must be < 2^31, got {bmax}")
        batch_size = bmax + 1
    return points.contiguous(), batch_idx.to(torch.int32).contiguous(), batch_size


def voxelize(
    points: torch.Tensor,
    voxel_size: Sequence[float],
    point_range: Sequence[float],
    batch_idx: torch.Tensor | None = None,
) -> Voxelization:
    """Voxelise ``points`` (N, 3+C) float32 inside ``point_range`` with ``voxel_size`` (x, y, z).

    ``batch_idx`` (N,) gives each point's batch element (default: all 0). Points with a NaN/inf coordinate or
    outside the grid are dropped (``point_to_voxel`` -1) and counted. A voxel index is
    ``floor((p - range_min) / voxel_size)`` per axis; a point is kept iff every index lies in [0, grid).
    """
    grid = grid_size_from_range(point_range, voxel_size)
    points, batch_idx, batch_size = validate_points(points, batch_idx)
    n = points.shape[0]
    dev = points.device
    if batch_size * grid[0] * grid[1] * grid[2] >= 2**62:
        raise ValueError(f"grid {grid} x batch {batch_size} is too large for 64-bit voxel keys")
    if n == 0:
        return Voxelization(
            torch.empty(0, 4, dtype=torch.int32, device=dev),
            torch.empty(0, dtype=torch.int64, device=dev),
            torch.empty(0, dtype=torch.int32, device=dev),
            0,
            0,
            grid,
        )
    init()
    wdev = wp_device(points)
    keys = torch.empty(n, dtype=torch.int64, device=dev)
    lo = wp.vec3(*(float(v) for v in point_range[:3]))
    size = wp.vec3(*(float(v) for v in voxel_size))
    launch(
        _point_keys_kernel,
        n,
        [to_wp(points), to_wp(batch_idx), lo, size, grid[0], grid[1], grid[2], to_wp(keys)],
        wdev,
    )
    voxel_keys, inverse, counts = unique_keys_with_inverse(keys, batch_size * grid[0] * grid[1] * grid[2])
    coords = decode_keys(voxel_keys, grid)
    nonfinite = int((keys == _NONFINITE).sum())
    out_of_range = n - int(counts.sum()) - nonfinite  # every other dropped point is out of range
    return Voxelization(coords, inverse, counts, nonfinite, out_of_range, grid)
