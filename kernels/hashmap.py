"""GPU-style open-addressing hash table over int64 voxel keys (linear probing, slots claimed with CAS).

Why a hash table: sparse-conv kernel maps need "coordinate -> row" look-ups for millions of voxels; a dense
index volume of the whole grid does not fit at 1024^3 or Waymo-scale ranges. (De-duplication of keys, by
contrast, sorts or marks an occupancy bitmap: see :func:`unique_keys_with_inverse`.) The module also holds the one voxel-key packing
shared by voxelisation and kernel maps.

The table is split into ``parts`` independent sub-tables; a key's sub-table is chosen by high bits of its hash.
On CUDA there is one part and ``wp.atomic_cas`` makes concurrent inserts safe. On the CPU, Warp atomics are
plain code, so each CPU thread builds its own sub-table (see :func:`sparse3d.kernels.runtime.launch_partitioned`):
no two threads ever write the same slot, and the result does not depend on scheduling.

Keys are non-negative int64 (``-1`` marks an empty slot). For duplicate keys the stored value is the smallest
row index.
"""

from __future__ import annotations

import math

import torch
import warp as wp

from sparse3d.kernels.occupancy import occupancy_unique
from sparse3d.kernels.runtime import (
    check_tensor,
    init,
    launch,
    launch_partitioned,
    num_parts,
    to_wp,
    wp_device,
)

EMPTY = -1
_MAX_INDEX = 2**31 - 1


@wp.func
def pack_key(b: wp.int64, z: wp.int64, y: wp.int64, x: wp.int64, gx: wp.int64, gy: wp.int64, gz: wp.int64) -> wp.int64:
    """Voxel key b·(X·Y·Z) + x·(Y·Z) + y·Z + z: sorted keys give the (b, x, y, z) voxel order of OpenPCDet's
    ``DynamicVoxelVFE`` (``torch.unique`` over the same packed key)."""
    return ((b * gx + x) * gy + y) * gz + z


@wp.kernel
def _decode_keys_kernel(
    offset: int,
    keys: wp.array(dtype=wp.int64),
    gx: wp.int64,
    gy: wp.int64,
    gz: wp.int64,
    coords: wp.array2d(dtype=wp.int32),
):
    i = wp.tid() + offset
    k = keys[i]
    coords[i, 1] = wp.int32(k % gz)
    k = k / gz
    coords[i, 2] = wp.int32(k % gy)
    k = k / gy
    coords[i, 3] = wp.int32(k % gx)
    coords[i, 0] = wp.int32(k / gx)


@wp.kernel
def _coords_keys_kernel(
    offset: int,
    coords: wp.array2d(dtype=wp.int32),
    gx: wp.int64,
    gy: wp.int64,
    gz: wp.int64,
    keys: wp.array(dtype=wp.int64),
):
    i = wp.tid() + offset
    keys[i] = pack_key(
        wp.int64(coords[i, 0]), wp.int64(coords[i, 1]), wp.int64(coords[i, 2]), wp.int64(coords[i, 3]), gx, gy, gz
    )


def coords_to_keys(coords: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Packed int64 keys of (N, 4) int32 coords (batch, z, y, x) in a grid (X, Y, Z)."""
    keys = torch.empty(coords.shape[0], dtype=torch.int64, device=coords.device)
    launch(_coords_keys_kernel, coords.shape[0], [to_wp(coords), grid[0], grid[1], grid[2], to_wp(keys)], wp_device(coords))
    return keys


def decode_keys(keys: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(M, 4) int32 coords (batch, z, y, x) of packed voxel keys in a grid (X, Y, Z)."""
    coords = torch.empty(keys.shape[0], 4, dtype=torch.int32, device=keys.device)
    launch(_decode_keys_kernel, keys.shape[0], [to_wp(keys), grid[0], grid[1], grid[2], to_wp(coords)], wp_device(keys))
    return coords


@wp.func
def mix64(key: wp.int64) -> wp.uint64:
    """splitmix64 finaliser: spreads packed voxel keys (which differ in low bits) over all 64 bits."""
    h = wp.uint64(key)
    h = h ^ (h >> wp.uint64(33))
    h = h * wp.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> wp.uint64(33))
    h = h * wp.uint64(0xC4CEB9FE1A85EC53)
    h = h ^ (h >> wp.uint64(33))
    return h


@wp.func
def owner_part(h: wp.uint64, num_parts: int) -> int:
    """Sub-table of a hash; uses bits disjoint from the slot bits so sub-tables stay evenly loaded."""
    return int((h >> wp.uint64(40)) % wp.uint64(num_parts))


@wp.func
def table_find(
    table_keys: wp.array(dtype=wp.int64), key: wp.int64, cap_part: wp.int64, num_parts: int
) -> wp.int64:
    """Global slot of ``key`` or -1 when absent (an empty slot ends the probe sequence)."""
    if key < wp.int64(0):
        return wp.int64(-1)
    h = mix64(key)
    base = wp.int64(owner_part(h, num_parts)) * cap_part
    mask = cap_part - wp.int64(1)
    local = wp.int64(h & wp.uint64(mask))
    probes = wp.int64(0)
    while probes < cap_part:
        k = table_keys[base + local]
        if k == key:
            return base + local
        if k == wp.int64(-1):
            return wp.int64(-1)
        local = (local + wp.int64(1)) & mask
        probes += wp.int64(1)
    return wp.int64(-1)


@wp.func
def table_claim(
    table_keys: wp.array(dtype=wp.int64), key: wp.int64, base: wp.int64, mask: wp.int64, local0: wp.int64
) -> wp.vec2l:
    """Insert ``key`` into the sub-table at ``base``; returns (global slot or -1 if full, 1 if newly claimed)."""
    local = local0
    probes = wp.int64(0)
    while probes <= mask:
        old = wp.atomic_cas(table_keys, base + local, wp.int64(-1), key)
        if old == wp.int64(-1):
            return wp.vec2l(base + local, wp.int64(1))
        if old == key:
            return wp.vec2l(base + local, wp.int64(0))
        local = (local + wp.int64(1)) & mask
        probes += wp.int64(1)
    return wp.vec2l(wp.int64(-1), wp.int64(0))


@wp.kernel
def _insert_kernel(
    part: int,
    num_parts: int,
    keys: wp.array(dtype=wp.int64),
    table_keys: wp.array(dtype=wp.int64),
    table_vals: wp.array(dtype=wp.int32),
    cap_part: wp.int64,
    overflow: wp.array(dtype=wp.int32),
):
    i = wp.tid()
    k = keys[i]
    if k < wp.int64(0):
        return
    h = mix64(k)
    if owner_part(h, num_parts) != part:
        return
    mask = cap_part - wp.int64(1)
    r = table_claim(table_keys, k, wp.int64(part) * cap_part, mask, wp.int64(h & wp.uint64(mask)))
    if r[0] < wp.int64(0):
        overflow[0] = 1
        return
    wp.atomic_min(table_vals, r[0], wp.int32(i))


@wp.kernel
def _query_kernel(
    offset: int,
    keys: wp.array(dtype=wp.int64),
    table_keys: wp.array(dtype=wp.int64),
    table_vals: wp.array(dtype=wp.int32),
    cap_part: wp.int64,
    num_parts: int,
    out: wp.array(dtype=wp.int32),
):
    i = wp.tid() + offset
    slot = table_find(table_keys, keys[i], cap_part, num_parts)
    if slot < wp.int64(0):
        out[i] = -1
    else:
        out[i] = table_vals[slot]


def table_capacity(n: int) -> int:
    """Power of two >= 2n (load factor <= 0.5 keeps linear-probe chains short)."""
    cap = 16
    while cap < 2 * max(n, 1):
        cap *= 2
    if cap > 2**40:
        raise ValueError(f"hash table for {n} keys is too large")
    return cap


def _layout(n: int, parts: int) -> int:
    """Slots per sub-table: load <= 0.4 when keys spread evenly over ``parts`` (hashing makes that likely)."""
    return table_capacity(n) if parts == 1 else table_capacity(math.ceil(1.25 * n / parts))


class VoxelHashTable:
    """Open-addressing table mapping int64 keys (>= 0) to the first row index at which they occur.

    Build once from the keys of a voxel set, then :meth:`query` any keys (negative keys answer -1).
    """

    def __init__(self, keys: torch.Tensor) -> None:
        check_tensor("keys", keys, torch.int64, ndim=1)
        if keys.shape[0] > _MAX_INDEX:
            raise ValueError(f"keys has {keys.shape[0]} entries; at most {_MAX_INDEX} are supported")
        init()
        keys = keys.contiguous()
        self.device = keys.device
        self.num_keys = keys.shape[0]
        dev = wp_device(keys)
        parts = num_parts(dev, self.num_keys)
        while True:
            self.num_parts = parts
            self.cap_part = _layout(self.num_keys, parts)
            size = self.cap_part * parts
            self.table_keys = torch.full((size,), EMPTY, dtype=torch.int64, device=keys.device)
            self.table_vals = torch.full((size,), _MAX_INDEX, dtype=torch.int32, device=keys.device)
            overflow = torch.zeros(1, dtype=torch.int32, device=keys.device)
            launch_partitioned(
                _insert_kernel,
                self.num_keys,
                [to_wp(keys), to_wp(self.table_keys), to_wp(self.table_vals), self.cap_part, to_wp(overflow)],
                dev,
                parts=parts,
            )
            if parts == 1 or not int(overflow.item()):
                break
            parts = 1  # pathological key skew filled one sub-table: rebuild as a single table

    def query(self, keys: torch.Tensor) -> torch.Tensor:
        """Row index (int32) of each key, or -1 when the key is absent or negative."""
        check_tensor("keys", keys, torch.int64, ndim=1)
        if keys.device != self.device:
            raise ValueError(f"keys are on {keys.device} but the table lives on {self.device}")
        out = torch.empty(keys.shape[0], dtype=torch.int32, device=keys.device)
        launch(
            _query_kernel,
            keys.shape[0],
            [
                to_wp(keys),
                to_wp(self.table_keys),
                to_wp(self.table_vals),
                self.cap_part,
                self.num_parts,
                to_wp(out),
            ],
            wp_device(keys),
        )
        return out

    def kernel_args(self) -> list:
        """Arguments other kernels pass to :func:`table_find` (keys, cap_part, num_parts) + values."""
        return [to_wp(self.table_keys), to_wp(self.table_vals), self.cap_part, self.num_parts]


OCCUPANCY_CELLS_PER_KEY = 48
"""``unique_keys_with_inverse`` takes the occupancy-bitmap path on the CPU when the key range has at most this
many cells per key: the bitmap's cost grows with the range, a sort's with the number of keys (threshold chosen
by benchmark; per-cell and per-key costs in BENCHMARKS.md, kernels notes)."""
OCCUPANCY_MAX_CELLS = 2**31
"""Largest key range given an occupancy bitmap (256 MB per CPU thread)."""


def unique_keys_with_inverse(
    keys: torch.Tensor, key_range: int | None = None, method: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted unique non-negative keys, the index of each input's key in that list (-1 if negative), counts.

    Two implementations with identical results, independent of thread scheduling. ``"sort"``: ``torch.unique``
    (parallel on the CPU, CUB radix sort on CUDA). ``"occupancy"``: a bitmap over ``[0, key_range)``
    (:mod:`sparse3d.kernels.occupancy`), linear in the range and the keys. ``"auto"`` picks the bitmap on the
    CPU when ``key_range`` is given, at most :data:`OCCUPANCY_MAX_CELLS` and :data:`OCCUPANCY_CELLS_PER_KEY` per
    key; otherwise the sort (de-duplicating through :class:`VoxelHashTable` is not offered: it lost to the sort
    in benchmarks, see BENCHMARKS.md). Negative keys (codes for dropped points) are stripped.
    """
    check_tensor("keys", keys, torch.int64, ndim=1)
    if method not in ("auto", "sort", "occupancy"):
        raise ValueError(f"method must be 'auto', 'sort' or 'occupancy', got {method!r}")
    if method == "occupancy" and key_range is None:
        raise ValueError("the occupancy method needs key_range (keys must lie in [0, key_range))")
    if method == "occupancy" and key_range > OCCUPANCY_MAX_CELLS:
        raise ValueError(f"key_range {key_range} is too large for an occupancy bitmap (max {OCCUPANCY_MAX_CELLS})")
    if key_range is not None and keys.numel() and int(keys.max()) >= key_range:
        raise ValueError(f"keys reach {int(keys.max())}, outside key_range {key_range}")
    if method == "auto":
        bitmap = (
            key_range is not None
            and keys.device.type == "cpu"
            and key_range <= min(OCCUPANCY_MAX_CELLS, OCCUPANCY_CELLS_PER_KEY * keys.shape[0])
        )
        method = "occupancy" if bitmap else "sort"
    if method == "occupancy":
        return occupancy_unique(keys, int(key_range))  # type: ignore[arg-type]
    uniq, inv, cnt = torch.unique(keys, sorted=True, return_inverse=True, return_counts=True)
    num_negative = int(torch.searchsorted(uniq, torch.zeros(1, dtype=torch.int64, device=keys.device)))
    inverse = (inv - num_negative).clamp_(min=-1)
    return uniq[num_negative:], inverse, cnt[num_negative:].to(torch.int32)
