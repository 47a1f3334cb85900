"""Kernel maps for sparse convolution: which input voxel feeds which output voxel through which weight.

A map is a dense (M_out, K) int32 table ``nbr[o, k]`` = input row read by output ``o`` through kernel offset
``k`` (or -1), K = kz·ky·kx with offsets enumerated z-major like ``torch.nn.Conv3d`` weights (coords are
(batch, z, y, x)). Every map has a transpose (M_in, K) ``nbr_t[i, k]`` = the output that input ``i`` feeds
through offset ``k``: convolution backward then is the same gather as forward, with no scatter-add. Strided
maps build it with the map; a submanifold map builds it on first use (``nbr`` with its offset axis reversed),
so inference does not pay for it.

* submanifold: outputs = inputs; neighbours found in a dense index volume of the grid when it is small
  (at most :data:`DENSE_MAX_CELLS` cells and :data:`DENSE_CELLS_PER_VOXEL` per voxel: sorted voxels then probe
  cache-resident neighbouring planes), else by probing a :class:`VoxelHashTable`. Both give the same map.
* strided (``SparseConv3d``, as in spconv): each (input, offset) proposes the output ``(x + p - k·d) / s`` when
  divisible and inside the output grid; the unique proposals
  (:func:`~sparse3d.kernels.hashmap.unique_keys_with_inverse`, sorted by key) are the outputs, and the
  proposal->output inverse *is* the transposed map.
* inverse conv reuses a strided map with the roles swapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import warp as wp

from sparse3d.kernels.hashmap import (
    VoxelHashTable,
    coords_to_keys,
    decode_keys,
    pack_key,
    table_find,
    unique_keys_with_inverse,
)
from sparse3d.kernels.kernel_map_types import KernelMap, conv_output_grid, kernel_offsets, triple
from sparse3d.kernels.runtime import check_tensor, init, launch, to_wp, wp_device

wp.set_module_options({"enable_backward": False, "optimization_level": 3})

DENSE_MAX_CELLS = 2**25
"""Largest index volume (batch x grid cells, int32: 128 MB) a submanifold map allocates instead of a hash table."""
DENSE_CELLS_PER_VOXEL = 256
"""The volume is used only while it has at most this many cells per voxel: filling it costs time per cell,
hashing per voxel, so sparser grids hash (threshold chosen by benchmark; per-cell and per-voxel costs in
BENCHMARKS.md, kernels notes)."""
_ABSENT = wp.constant(2**31 - 1)


@wp.kernel
def _submanifold_kernel(
    offset: int,
    coords: wp.array2d(dtype=wp.int32),
    offsets: wp.array2d(dtype=wp.int32),
    center: wp.vec3i,
    dilation: wp.vec3i,
    gx: wp.int64,
    gy: wp.int64,
    gz: wp.int64,
    table_keys: wp.array(dtype=wp.int64),
    table_vals: wp.array(dtype=wp.int32),
    cap_part: wp.int64,
    num_parts: int,
    nbr: wp.array2d(dtype=wp.int32),
):
    """Probe the first half of the offsets of one voxel; the mirrored offset fills the neighbour's row.

    Voxel j is i's neighbour through offset k iff i is j's neighbour through K-1-k, so half the hash probes
    suffice. Each (row, offset) cell has exactly one writer, so rows written by other threads never clash.
    ``nbr`` must be pre-filled with -1.
    """
    row = wp.tid() + offset
    num_k = offsets.shape[0]
    mid = num_k / 2
    nbr[row, mid] = row
    b = wp.int64(coords[row, 0])
    for k in range(mid):
        z = wp.int64(coords[row, 1] + (offsets[k, 0] - center[0]) * dilation[0])
        y = wp.int64(coords[row, 2] + (offsets[k, 1] - center[1]) * dilation[1])
        x = wp.int64(coords[row, 3] + (offsets[k, 2] - center[2]) * dilation[2])
        if z >= wp.int64(0) and y >= wp.int64(0) and x >= wp.int64(0) and z < gz and y < gy and x < gx:
            slot = table_find(table_keys, pack_key(b, z, y, x, gx, gy, gz), cap_part, num_parts)
            if slot >= wp.int64(0):
                j = table_vals[slot]
                nbr[row, k] = j
                nbr[j, num_k - 1 - k] = row


@wp.kernel
def _dense_submanifold_kernel(
    offset: int,
    coords: wp.array2d(dtype=wp.int32),
    shifts: wp.array2d(dtype=wp.int32),
    reach: wp.vec3i,
    gx: int,
    gy: int,
    gz: int,
    volume: wp.array(dtype=wp.int32),
    nbr: wp.array2d(dtype=wp.int32),
):
    """Row ``row`` of the map from an index volume (cell -> row, ``_ABSENT`` if empty).

    ``shifts[k]`` = (dz, dy, dx, linear cell shift) of offset k and ``reach`` the largest |shift| per axis
    (z, y, x): voxels that far from every border skip the bounds tests. Every offset is probed (a probe is a
    cache hit for sorted voxels), so each thread writes only its own rows: no pre-fill, no scattered writes.
    """
    row = wp.tid() + offset
    num_k = shifts.shape[0]
    centre = num_k / 2
    z0 = coords[row, 1]
    y0 = coords[row, 2]
    x0 = coords[row, 3]
    base = ((coords[row, 0] * gx + x0) * gy + y0) * gz + z0
    inside = (
        z0 >= reach[0] and y0 >= reach[1] and x0 >= reach[2]
        and z0 < gz - reach[0] and y0 < gy - reach[1] and x0 < gx - reach[2]
    )
    for k in range(num_k):
        j = int(-1)  # noqa: UP018 -- a Warp variable, not a constant: reassigned below
        if k == centre:
            j = row  # the centre is the voxel itself, duplicates included (as on the hash path)
        else:
            ok = inside
            if not inside:
                z = z0 + shifts[k, 0]
                y = y0 + shifts[k, 1]
                x = x0 + shifts[k, 2]
                ok = z >= 0 and y >= 0 and x >= 0 and z < gz and y < gy and x < gx
            if ok:
                v = volume[base + shifts[k, 3]]
                if v != _ABSENT:
                    j = v
        nbr[row, k] = j


def _unrolled_dense_submanifold_kernel(kz: int, ky: int, kx: int) -> Any:
    """:func:`_dense_submanifold_kernel` for one kernel size, with the offset loops unrolled at compile time.

    The sizes are closure constants, so Warp unrolls the loops: every probe address is ``column + constant``
    and the z-neighbours of a column are adjacent cells (z is the volume's fastest axis), instead of the generic
    kernel's per-offset shift-table reads; same map. Built at import for :data:`UNROLLED_SIZES` only: a kernel
    created later would make Warp rebuild the whole module.
    """
    num_k = kz * ky * kx
    centre = num_k // 2
    hz, hy, hx = kz // 2, ky // 2, kx // 2

    @wp.kernel
    def _dense_submanifold_unrolled_kernel(
        offset: int,
        coords: wp.array2d(dtype=wp.int32),
        dilation: wp.vec3i,
        gx: int,
        gy: int,
        gz: int,
        volume: wp.array(dtype=wp.int32),
        nbr: wp.array2d(dtype=wp.int32),
    ):
        row = wp.tid() + offset
        z0 = coords[row, 1]
        y0 = coords[row, 2]
        x0 = coords[row, 3]
        base = ((coords[row, 0] * gx + x0) * gy + y0) * gz + z0
        rz = hz * dilation[0]
        ry = hy * dilation[1]
        rx = hx * dilation[2]
        inside = z0 >= rz and y0 >= ry and x0 >= rx and z0 < gz - rz and y0 < gy - ry and x0 < gx - rx
        for ix in range(kx):
            x = x0 + (ix - hx) * dilation[2]
            for iy in range(ky):
                y = y0 + (iy - hy) * dilation[1]
                column = base + ((ix - hx) * dilation[2] * gy + (iy - hy) * dilation[1]) * gz
                for iz in range(kz):
                    j = int(-1)  # noqa: UP018
                    z = z0 + (iz - hz) * dilation[0]
                    if inside or (z >= 0 and y >= 0 and x >= 0 and z < gz and y < gy and x < gx):
                        v = volume[column + (iz - hz) * dilation[0]]
                        if v != _ABSENT:
                            j = v
                    nbr[row, (iz * ky + iy) * kx + ix] = j
        nbr[row, centre] = row  # the voxel itself, duplicates included (as on the hash path)

    return _dense_submanifold_unrolled_kernel


UNROLLED_SIZES = ((3, 3, 3), (5, 5, 5))
"""Submanifold kernel sizes whose dense-volume map runs an unrolled kernel (the 3³ and 5³ of the usual nets)."""
_UNROLLED_DENSE_KERNELS = {size: _unrolled_dense_submanifold_kernel(*size) for size in UNROLLED_SIZES}


@wp.kernel
def _strided_proposals_kernel(
    offset: int,
    coords: wp.array2d(dtype=wp.int32),
    offsets: wp.array2d(dtype=wp.int32),
    stride: wp.vec3i,
    padding: wp.vec3i,
    dilation: wp.vec3i,
    ox: wp.int64,
    oy: wp.int64,
    oz: wp.int64,
    keys: wp.array(dtype=wp.int64),
):
    """Output key proposed by input ``row`` through offset ``k`` (-1 if none): y = (x + p - k·d) / s."""
    e = wp.tid() + offset
    num_k = offsets.shape[0]
    row = e / num_k
    k = e - row * num_k
    nz = coords[row, 1] + padding[0] - offsets[k, 0] * dilation[0]
    ny = coords[row, 2] + padding[1] - offsets[k, 1] * dilation[1]
    nx = coords[row, 3] + padding[2] - offsets[k, 2] * dilation[2]
    if nz < 0 or ny < 0 or nx < 0 or nz % stride[0] != 0 or ny % stride[1] != 0 or nx % stride[2] != 0:
        keys[e] = wp.int64(-1)
        return
    z = wp.int64(nz / stride[0])
    y = wp.int64(ny / stride[1])
    x = wp.int64(nx / stride[2])
    if z >= oz or y >= oy or x >= ox:
        keys[e] = wp.int64(-1)
        return
    keys[e] = pack_key(wp.int64(coords[row, 0]), z, y, x, ox, oy, oz)


@wp.kernel
def _transpose_kernel(
    offset: int,
    nbr: wp.array2d(dtype=wp.int32),
    nbr_t: wp.array2d(dtype=wp.int32),
):
    """nbr_t[nbr[o, k], k] = o. For a fixed (input, offset) there is at most one output, so writes never clash."""
    e = wp.tid() + offset
    num_k = nbr.shape[1]
    o = e / num_k
    k = e - o * num_k
    i = nbr[o, k]
    if i >= 0:
        nbr_t[i, k] = o


def validate_coords(coords: torch.Tensor, grid: Sequence[int], name: str = "coords") -> torch.Tensor:
    """(N, 4) int32 coords with batch >= 0 and every (z, y, x) inside the grid (X, Y, Z)."""
    check_tensor(name, coords, torch.int32, ndim=2, last_dim=4)
    if len(grid) != 3 or any(int(g) <= 0 for g in grid):
        raise ValueError(f"grid size must be 3 positive ints (X, Y, Z), got {list(grid)}")
    if coords.shape[0]:
        lo_t, hi_t = torch.aminmax(coords, dim=0)
        lo, hi = lo_t.tolist(), hi_t.tolist()
        limits = (None, grid[2], grid[1], grid[0])
        for axis, label in enumerate("bzyx"):
            if lo[axis] < 0 or (limits[axis] is not None and hi[axis] >= limits[axis]):
                raise ValueError(
                    f"{name} column {label} spans [{lo[axis]}, {hi[axis]}], outside the grid {list(grid)} (X, Y, Z)"
                )
    return coords.contiguous()


def transpose_map(nbr: torch.Tensor, num_inputs: int) -> torch.Tensor:
    """(num_inputs, K) transpose of an (M_out, K) kernel map."""
    nbr_t = torch.full((num_inputs, nbr.shape[1]), -1, dtype=torch.int32, device=nbr.device)
    launch(_transpose_kernel, nbr.numel(), [to_wp(nbr), to_wp(nbr_t)], wp_device(nbr))
    return nbr_t


def volume_cells(coords: torch.Tensor, grid: Sequence[int]) -> int:
    """Cells of the dense index volume over every batch element of ``coords`` (neighbours may lie past the
    last occupied key, so the volume spans whole grids)."""
    return (int(coords[:, 0].max()) + 1) * int(grid[0]) * int(grid[1]) * int(grid[2]) if coords.shape[0] else 0


def use_dense_index(coords: torch.Tensor, grid: Sequence[int]) -> bool:
    """Whether a submanifold map of these coords probes a dense index volume rather than a hash table."""
    if coords.shape[0] == 0:
        return False
    cells = volume_cells(coords, grid)
    return cells <= DENSE_MAX_CELLS and cells <= DENSE_CELLS_PER_VOXEL * coords.shape[0]


def submanifold_map(
    coords: torch.Tensor,
    grid: tuple[int, int, int],
    kernel_size: int | Sequence[int] = 3,
    dilation: int | Sequence[int] = 1,
    table: VoxelHashTable | None = None,
    index: str = "auto",
) -> KernelMap:
    """Kernel map of a submanifold convolution: outputs are the input sites (kernel sizes must be odd).

    ``index`` picks the neighbour look-up: ``"dense"`` (index volume), ``"hash"`` (``table`` or a new
    :class:`VoxelHashTable`) or ``"auto"`` (dense when :func:`use_dense_index` says so and no table is given).
    Both give identical maps; for duplicate coords the smallest row wins.
    """
    init()
    if index not in ("auto", "dense", "hash"):
        raise ValueError(f"index must be 'auto', 'dense' or 'hash', got {index!r}")
    coords = validate_coords(coords, grid)
    ks, dil = triple(kernel_size, "kernel_size"), triple(dilation, "dilation")
    if any(k % 2 == 0 or k < 1 for k in ks):
        raise ValueError(f"submanifold kernel_size must be odd, got {ks}")
    offsets = kernel_offsets(ks, coords.device)
    m, num_k = coords.shape[0], offsets.shape[0]
    centre = num_k // 2  # odd kernel: the middle offset maps every voxel onto itself
    dense = index == "dense" or (index == "auto" and table is None and use_dense_index(coords, grid))
    if m and dense:
        keys = coords_to_keys(coords, grid)
        volume = torch.full((volume_cells(coords, grid),), int(_ABSENT), dtype=torch.int32, device=coords.device)
        volume.scatter_reduce_(0, keys, torch.arange(m, dtype=torch.int32, device=coords.device), "amin")
        nbr = torch.empty((m, num_k), dtype=torch.int32, device=coords.device)
        unrolled = _UNROLLED_DENSE_KERNELS.get(ks)
        if unrolled is not None:
            launch(
                unrolled,
                m,
                [to_wp(coords), wp.vec3i(*dil), grid[0], grid[1], grid[2], to_wp(volume), to_wp(nbr)],
                wp_device(coords),
            )
        else:
            half = torch.tensor([k // 2 for k in ks], dtype=torch.int32, device=coords.device)
            step = (offsets - half) * torch.tensor(dil, dtype=torch.int32, device=coords.device)  # (dz, dy, dx)
            linear = step[:, 0] + grid[2] * (step[:, 1] + grid[1] * step[:, 2])
            shifts = torch.cat([step, linear[:, None]], 1).contiguous()
            reach = wp.vec3i(*[(k // 2) * d for k, d in zip(ks, dil)])
            launch(
                _dense_submanifold_kernel,
                m,
                [to_wp(coords), to_wp(shifts), reach, grid[0], grid[1], grid[2], to_wp(volume), to_wp(nbr)],
                wp_device(coords),
            )
        return KernelMap(coords, tuple(grid), nbr, identity=centre)  # type: ignore[arg-type]
    nbr = torch.full((m, num_k), -1, dtype=torch.int32, device=coords.device)
    if m:
        if table is None:
            table = VoxelHashTable(coords_to_keys(coords, grid))
        launch(
            _submanifold_kernel,
            m,
            [
                to_wp(coords),
                to_wp(offsets),
                wp.vec3i(ks[0] // 2, ks[1] // 2, ks[2] // 2),
                wp.vec3i(*dil),
                grid[0],
                grid[1],
                grid[2],
                *table.kernel_args(),
                to_wp(nbr),
            ],
            wp_device(coords),
        )
    return KernelMap(coords, tuple(grid), nbr, identity=centre)  # type: ignore[arg-type]


def strided_map(
    coords: torch.Tensor,
    grid: tuple[int, int, int],
    kernel_size: int | Sequence[int] = 2,
    stride: int | Sequence[int] = 2,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
) -> KernelMap:
    """Kernel map of a regular (strided) sparse convolution; outputs sorted by (batch, x, y, z)."""
    init()
    coords = validate_coords(coords, grid)
    ks, st = triple(kernel_size, "kernel_size"), triple(stride, "stride")
    pad, dil = triple(padding, "padding"), triple(dilation, "dilation")
    if any(v < 1 for v in ks + st + dil) or any(v < 0 for v in pad):
        raise ValueError(f"invalid conv geometry kernel={ks} stride={st} padding={pad} dilation={dil}")
    out_grid = conv_output_grid(grid, ks, st, pad, dil)
    offsets = kernel_offsets(ks, coords.device)
    m, num_k = coords.shape[0], offsets.shape[0]
    dev = wp_device(coords) if m else None
    proposals = torch.empty(m * num_k, dtype=torch.int64, device=coords.device)
    if m:
        launch(
            _strided_proposals_kernel,
            m * num_k,
            [
                to_wp(coords),
                to_wp(offsets),
                wp.vec3i(*st),
                wp.vec3i(*pad),
                wp.vec3i(*dil),
                out_grid[0],
                out_grid[1],
                out_grid[2],
                to_wp(proposals),
            ],
            dev,
        )
    batch_size = int(coords[:, 0].max()) + 1 if m else 1
    out_keys, inverse, _ = unique_keys_with_inverse(proposals, batch_size * out_grid[0] * out_grid[1] * out_grid[2])
    out_coords = decode_keys(out_keys, out_grid)
    nbr_t = inverse.to(torch.int32).reshape(m, num_k)
    nbr = transpose_map(nbr_t, out_coords.shape[0])
    return KernelMap(out_coords, out_grid, nbr, nbr_t)


def inverse_map(forward: KernelMap, in_coords: torch.Tensor, in_grid: tuple[int, int, int]) -> KernelMap:
    """Map of the inverse convolution of a strided conv: back to the strided conv's input sites."""
    return KernelMap(in_coords, tuple(in_grid), forward.nbr_t, forward.nbr)  # type: ignore[arg-type]
