"""De-duplication of bounded voxel keys through an occupancy bitmap instead of a sort.

Voxel keys live in ``[0, key_range)`` with ``key_range`` = batch x grid cells. Setting each key's bit and
ranking the set bits costs time linear in the range and in the keys, where a sort grows with the keys alone, so
it pays off when the range has few cells per key (LiDAR voxelisation: 90M cells for 4M points, an 11 MB
bitmap). :func:`~sparse3d.kernels.hashmap.unique_keys_with_inverse` decides when to use it; the measurements
behind that rule are in BENCHMARKS.md (kernels notes). Results are identical to a sort-based unique and do not
depend on thread scheduling. The steps:

1. mark: set bit ``key`` of the bitmap. On CUDA with ``atomic_or`` into one bitmap; on the CPU (where Warp's
   atomics are plain code) each thread marks its slice of the keys in its own bitmap, and the bitmaps are
   OR-ed while the words' set bits are counted;
2. exclusive cumsum of those counts (torch);
3. emit: each word writes the keys of its set bits, ascending, from its prefix -- the output is sorted;
4. rank: a key's row is its word's prefix plus the set bits below it in the word.

Counts per voxel come from ``torch.bincount`` of the rows.
"""

from __future__ import annotations

import torch
import warp as wp

from sparse3d.kernels.runtime import init, launch, launch_partitioned, num_parts, to_wp, wp_device

wp.set_module_options({"enable_backward": False, "optimization_level": 3})

WORD_BITS = 64


@wp.func
def popcount(v: wp.uint64) -> int:
    """Set bits of a 64-bit word (SWAR; Warp has no popcount builtin)."""
    v = v - ((v >> wp.uint64(1)) & wp.uint64(0x5555555555555555))
    v = (v & wp.uint64(0x3333333333333333)) + ((v >> wp.uint64(2)) & wp.uint64(0x3333333333333333))
    v = (v + (v >> wp.uint64(4))) & wp.uint64(0x0F0F0F0F0F0F0F0F)
    return int((v * wp.uint64(0x0101010101010101)) >> wp.uint64(56))


@wp.kernel
def _mark_kernel(
    part: int, num_parts: int, keys: wp.array(dtype=wp.int64), bits: wp.array2d(dtype=wp.uint64)
):
    """Set bit ``key`` in bitmap ``part`` for the keys of slice ``part`` (of ``num_parts`` contiguous slices)."""
    chunk = (keys.shape[0] + num_parts - 1) / num_parts
    i = part * chunk + wp.tid()
    if i >= keys.shape[0] or wp.tid() >= chunk:
        return
    k = keys[i]
    if k >= wp.int64(0):
        wp.atomic_or(bits, part, int(k >> wp.int64(6)), wp.uint64(1) << wp.uint64(k & wp.int64(63)))


@wp.kernel
def _merge_counts_kernel(offset: int, bits: wp.array2d(dtype=wp.uint64), counts: wp.array(dtype=wp.int64)):
    """OR the per-thread bitmaps into bitmap 0 and count each word's set bits."""
    w = wp.tid() + offset
    v = bits[0, w]
    for p in range(1, bits.shape[0]):
        v = v | bits[p, w]
    bits[0, w] = v
    counts[w] = wp.int64(popcount(v))


@wp.kernel
def _emit_kernel(
    offset: int, bits: wp.array(dtype=wp.uint64), starts: wp.array(dtype=wp.int64), unique: wp.array(dtype=wp.int64)
):
    """Keys of word ``w``'s set bits, lowest first, at ``starts[w]``...; peels the lowest set bit each step."""
    w = wp.tid() + offset
    v = bits[w]
    r = starts[w]
    while v != wp.uint64(0):
        low = v & (~v + wp.uint64(1))
        unique[r] = wp.int64(w) * wp.int64(64) + wp.int64(popcount(low - wp.uint64(1)))
        r += wp.int64(1)
        v = v ^ low


@wp.kernel
def _rank_kernel(
    offset: int,
    keys: wp.array(dtype=wp.int64),
    bits: wp.array(dtype=wp.uint64),
    starts: wp.array(dtype=wp.int64),
    rows: wp.array(dtype=wp.int64),
):
    """Row of each key: its word's prefix plus the set bits below it in the word (-1 for negative keys)."""
    i = wp.tid() + offset
    k = keys[i]
    if k < wp.int64(0):
        rows[i] = wp.int64(-1)
        return
    w = int(k >> wp.int64(6))
    below = (wp.uint64(1) << wp.uint64(k & wp.int64(63))) - wp.uint64(1)
    rows[i] = starts[w] + wp.int64(popcount(bits[w] & below))


def occupancy_unique(keys: torch.Tensor, key_range: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted unique keys of ``keys`` (int64, each < ``key_range``; negative = dropped), the row of each key
    in that list (-1 for negative keys) and the counts: the contract of ``unique_keys_with_inverse``."""
    init()
    dev = wp_device(keys)
    n = keys.shape[0]
    num_words = max(1, -(-int(key_range) // WORD_BITS))
    parts = num_parts(dev, n)
    bits = torch.zeros(parts, num_words, dtype=torch.int64, device=keys.device)
    bits_wp = to_wp(bits, dtype=wp.uint64)
    if n:
        launch_partitioned(_mark_kernel, -(-n // parts), [to_wp(keys), bits_wp], dev, parts=parts)
    starts = torch.zeros(num_words + 1, dtype=torch.int64, device=keys.device)
    launch(_merge_counts_kernel, num_words, [bits_wp, to_wp(starts[1:])], dev)
    starts[1:].cumsum_(0)
    m = int(starts[-1])
    merged = to_wp(bits[0], dtype=wp.uint64)
    unique = torch.empty(m, dtype=torch.int64, device=keys.device)
    launch(_emit_kernel, num_words, [merged, to_wp(starts), to_wp(unique)], dev)
    rows = torch.empty(n, dtype=torch.int64, device=keys.device)
    launch(_rank_kernel, n, [to_wp(keys), merged, to_wp(starts), to_wp(rows)], dev)
    counts = torch.bincount(rows + 1, minlength=m + 1)[1:].to(torch.int32)
    return unique, rows, counts
