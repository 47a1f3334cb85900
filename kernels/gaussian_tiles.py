"""Tile intersection of projected Gaussians in Warp: (Gaussian, tile) pairs sorted per tile by depth.

The binning step of tile-based Gaussian splatting (3D Gaussian Splatting, Kerbl et al., SIGGRAPH 2023), with
the key layout of gsplat 1.5.3 (``IntersectTile.cu``; gsplat, Ye et al. 2024). Inputs are the outputs of
:mod:`sparse3d.kernels.gaussian_projection`, flattened over cameras as ``flat = camera * N + gaussian``.

* One (key, flat id) pair per (Gaussian, touched tile), the tiles being those its radius box overlaps;
  ``key = camera << (32 + tile_bits) | tile << 32 | bits(depth)`` where ``bits`` is the raw IEEE-754 pattern of
  the float32 depth (monotone for positive floats; a numeric cast would truncate and mis-order Gaussians with
  close depths).
* A stable ``torch.sort`` orders the pairs by (camera, tile, depth, Gaussian id), so each tile's list is one
  contiguous run; ``isect_offsets`` holds the start of every tile's run (an empty tile gets the start of the
  next non-empty one), which is what :mod:`sparse3d.kernels.gaussian_composite` walks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import warp as wp

from sparse3d.kernels.gaussian_projection import check_projected
from sparse3d.kernels.runtime import check_tensor, launch, to_wp, wp_device

wp.set_module_options({"enable_backward": False, "optimization_level": 3})


@wp.func
def _tile_rect(m: wp.vec2, r: wp.vec2i, tile_size: int, tiles_x: int, tiles_y: int) -> wp.vec4i:
    """Tiles touched by the radius box: (x0, y0, x1, y1), min inclusive, max exclusive, clamped to the grid."""
    ts = float(tile_size)
    cx = m[0] / ts
    cy = m[1] / ts
    rx = float(r[0]) / ts
    ry = float(r[1]) / ts
    x0 = wp.clamp(int(wp.floor(cx - rx)), 0, tiles_x)
    y0 = wp.clamp(int(wp.floor(cy - ry)), 0, tiles_y)
    x1 = wp.clamp(int(wp.ceil(cx + rx)), 0, tiles_x)
    y1 = wp.clamp(int(wp.ceil(cy + ry)), 0, tiles_y)
    return wp.vec4i(x0, y0, x1, y1)


@wp.kernel
def _count_tiles_kernel(
    offset: int,
    means2d: wp.array(dtype=wp.vec2),
    radii: wp.array(dtype=wp.vec2i),
    tile_size: int,
    tiles_x: int,
    tiles_y: int,
    counts: wp.array(dtype=wp.int32),
):
    i = wp.tid() + offset
    r = radii[i]
    if r[0] <= 0 or r[1] <= 0:
        counts[i] = 0
        return
    b = _tile_rect(means2d[i], r, tile_size, tiles_x, tiles_y)
    counts[i] = (b[2] - b[0]) * (b[3] - b[1])


@wp.kernel
def _write_isects_kernel(
    offset: int,
    means2d: wp.array(dtype=wp.vec2),
    radii: wp.array(dtype=wp.vec2i),
    depth_keys: wp.array(dtype=wp.int64),
    starts: wp.array(dtype=wp.int64),
    n_per_camera: int,
    tile_size: int,
    tiles_x: int,
    tiles_y: int,
    tile_bits: int,
    keys: wp.array(dtype=wp.int64),
    ids: wp.array(dtype=wp.int32),
):
    i = wp.tid() + offset
    r = radii[i]
    if r[0] <= 0 or r[1] <= 0:
        return
    b = _tile_rect(means2d[i], r, tile_size, tiles_x, tiles_y)
    cam_key = wp.int64(i // n_per_camera) << wp.int64(32 + tile_bits)
    dk = depth_keys[i]
    cur = starts[i]
    for ty in range(b[1], b[3]):
        for tx in range(b[0], b[2]):
            keys[cur] = cam_key | (wp.int64(ty * tiles_x + tx) << wp.int64(32)) | dk
            ids[cur] = i
            cur = cur + wp.int64(1)


@wp.func
def _global_tile(key: wp.int64, tile_bits: int, n_tiles: int) -> int:
    hi = key >> wp.int64(32)
    cam = int(hi >> wp.int64(tile_bits))
    tile = int(hi & ((wp.int64(1) << wp.int64(tile_bits)) - wp.int64(1)))
    return cam * n_tiles + tile


@wp.kernel
def _tile_offsets_kernel(
    offset: int,
    keys: wp.array(dtype=wp.int64),
    n_isects: int,
    tile_bits: int,
    n_tiles: int,
    total_tiles: int,
    offsets: wp.array(dtype=wp.int32),
):
    """offsets[t] = first sorted index of tile t (for an empty tile: that of the next non-empty one)."""
    i = wp.tid() + offset
    # Clamped so that malformed keys can never write outside ``offsets``.
    cur = wp.clamp(_global_tile(keys[i], tile_bits, n_tiles), -1, total_tiles - 1)
    prev = -1
    if i > 0:
        prev = wp.clamp(_global_tile(keys[i - 1], tile_bits, n_tiles), -1, total_tiles - 1)
    for t in range(prev + 1, cur + 1):
        offsets[t] = i
    if i == n_isects - 1:
        for t in range(cur + 1, total_tiles):
            offsets[t] = n_isects


# ------------------------------------------------------------------------------------------ torch API
class Intersections(NamedTuple):
    """Result of :func:`intersect_tiles`, named as gsplat's ``rasterization`` meta."""

    tiles_per_gauss: torch.Tensor  # (C, N) int32
    isect_ids: torch.Tensor  # (M,) int64, sorted
    flatten_ids: torch.Tensor  # (M,) int32, index into the flattened C * N
    isect_offsets: torch.Tensor  # (C, tiles_y, tiles_x) int32


def tile_bits_for(n_tiles: int) -> int:
    """floor(log2(n_tiles)) + 1 bits for the tile id in a key (gsplat's rule)."""
    return int(n_tiles).bit_length()


def intersect_tiles(
    means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor, tile_size: int, tiles_x: int, tiles_y: int
) -> Intersections:
    """(Gaussian, tile) pairs sorted by (camera, tile, depth, id), and each tile's start offset."""
    c_n, n = check_projected(means2d, radii=radii, depths=depths)
    check_tensor("radii", radii, torch.int32, ndim=3, last_dim=2)
    check_tensor("depths", depths, torch.float32, ndim=2)
    n_tiles = tiles_x * tiles_y
    tile_bits, cam_bits = tile_bits_for(n_tiles), int(c_n).bit_length()
    if tile_bits + cam_bits > 32:
        raise ValueError(f"{c_n} cameras x {n_tiles} tiles do not fit the 32 key bits above the depth")
    dev = means2d.device
    flat_m = means2d.reshape(-1, 2).contiguous()
    flat_r = radii.reshape(-1, 2).contiguous()
    counts = torch.empty(c_n * n, dtype=torch.int32, device=dev)
    wdev = wp_device(means2d)
    m_wp, r_wp = to_wp(flat_m, wp.vec2), to_wp(flat_r, wp.vec2i)
    launch(_count_tiles_kernel, c_n * n, [m_wp, r_wp, tile_size, tiles_x, tiles_y, to_wp(counts)], wdev)
    cum = torch.cumsum(counts, 0, dtype=torch.int64)
    n_isects = int(cum[-1]) if cum.numel() else 0
    if n_isects >= 2**31:
        raise ValueError(f"{n_isects} tile intersections exceed the int32 offset range; lower the resolution")
    starts = (cum - counts).contiguous()
    # Raw float32 bit pattern, zero-extended: monotone in the depth for positive floats.
    depth_keys = (depths.reshape(-1).contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF).contiguous()
    keys = torch.empty(n_isects, dtype=torch.int64, device=dev)
    ids = torch.empty(n_isects, dtype=torch.int32, device=dev)
    if n_isects:
        launch(
            _write_isects_kernel,
            c_n * n,
            [m_wp, r_wp, to_wp(depth_keys), to_wp(starts), n, tile_size, tiles_x, tiles_y, tile_bits,
             to_wp(keys), to_wp(ids)],
            wdev,
        )
    keys_sorted, perm = torch.sort(keys, stable=True)
    ids_sorted = ids[perm].contiguous()
    offsets = tile_offsets(keys_sorted, c_n, tiles_x, tiles_y)
    return Intersections(counts.reshape(c_n, n), keys_sorted, ids_sorted, offsets)


def tile_offsets(isect_ids: torch.Tensor, n_cameras: int, tiles_x: int, tiles_y: int) -> torch.Tensor:
    """(C, tiles_y, tiles_x) int32 start of each tile's run in the sorted intersection list."""
    check_tensor("isect_ids", isect_ids, torch.int64, ndim=1)
    n_tiles = tiles_x * tiles_y
    total = n_cameras * n_tiles
    offsets = torch.zeros(total, dtype=torch.int32, device=isect_ids.device)
    m = isect_ids.shape[0]
    if m:
        launch(
            _tile_offsets_kernel,
            m,
            [to_wp(isect_ids.contiguous()), m, tile_bits_for(n_tiles), n_tiles, total, to_wp(offsets)],
            wp_device(isect_ids),
        )
    return offsets.reshape(n_cameras, tiles_y, tiles_x)
