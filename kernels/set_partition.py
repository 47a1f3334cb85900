"""DSVT window partition and dynamic set partition as Warp kernels.

DSVT: Wang et al., "DSVT: Dynamic Sparse Voxel Transformer with Rotated Sets", CVPR 2023. The official code
(``github.com/Haiyang-W/DSVT``, ``DSVTInputLayer``) ranks voxels inside a window with an atomic per-window
counter and a dense ``W × window volume`` buffer. The rank is only "position inside the window under the
ordering's key", so here:

1. an element-parallel kernel computes, per voxel, the raw window key, the in-window coords and the two
   ordering keys packed below the window key (``window_key · volume + in-window key``);
2. a stable ``torch.sort`` of each packed key gives both per-window orders at once (windows ascending, voxels
   in ordering order inside a window, ties by voxel index); ``unique_consecutive`` gives windows and counts;
3. a second kernel, one thread per set, evaluates paper Eq. 3 for its τ slots and gathers the voxel index.

No dense buffer, no atomics, deterministic, and bit-identical to :mod:`sparse3d.kernels.reference.set_partition`.
Result types and argument validation are shared with it through :mod:`sparse3d.kernels.set_partition_types`.
"""

from __future__ import annotations

import torch
import warp as wp

from sparse3d.kernels.runtime import init, launch, to_wp, torch_stream, wp_device
from sparse3d.kernels.set_partition_types import (
    Int3,
    SetPartition,
    WindowPartition,
    large_window,
    validate_set_size,
    validate_window_args,
    window_grid,
)

__all__ = [
    "dsvt_stage_partitions",
    "dynamic_set_partition",
    "window_partition",
]


# ------------------------------------------------------------------------------------------------ kernels
@wp.kernel
def _window_keys_kernel(
    offset: int,
    coords: wp.array2d(dtype=wp.int32),
    wx: wp.int64,
    wy: wp.int64,
    wz: wp.int64,
    sx: wp.int64,
    sy: wp.int64,
    sz: wp.int64,
    nwy: wp.int64,
    nwz: wp.int64,
    nw_batch: wp.int64,
    raw_key: wp.array(dtype=wp.int64),
    coords_in_win: wp.array2d(dtype=wp.int32),
    key_sorty: wp.array(dtype=wp.int64),
    key_sortx: wp.array(dtype=wp.int64),
):
    """Per voxel: raw window key, in-window coords (z, y, x), and both ordering keys packed under the window.

    All operands are non-negative (validated on the host), so integer ``//`` and ``%`` are floor semantics.
    """
    i = wp.tid() + offset
    b = wp.int64(coords[i, 0])
    z = wp.int64(coords[i, 1]) + sz
    y = wp.int64(coords[i, 2]) + sy
    x = wp.int64(coords[i, 3]) + sx
    kx = x // wx
    ky = y // wy
    kz = z // wz
    lx = x - kx * wx
    ly = y - ky * wy
    lz = z - kz * wz
    key = b * nw_batch + kx * (nwy * nwz) + ky * nwz + kz
    raw_key[i] = key
    coords_in_win[i, 0] = wp.int32(lz)
    coords_in_win[i, 1] = wp.int32(ly)
    coords_in_win[i, 2] = wp.int32(lx)
    volume = wx * wy * wz
    key_sorty[i] = key * volume + ly * (wx * wz) + lx * wz + lz
    key_sortx[i] = key * volume + lx * (wy * wz) + ly * wz + lz


@wp.kernel
def _fill_sets_kernel(
    offset: int,
    set_window: wp.array(dtype=wp.int64),
    set_first: wp.array(dtype=wp.int64),
    win_start: wp.array(dtype=wp.int64),
    win_count: wp.array(dtype=wp.int64),
    order_sorty: wp.array(dtype=wp.int64),
    order_sortx: wp.array(dtype=wp.int64),
    set_size: int,
    set_voxel_inds: wp.array3d(dtype=wp.int64),
    set_voxel_mask: wp.array3d(dtype=wp.bool),
):
    """One thread per set: its τ ranks by Eq. 3, the voxel of each rank under both orderings, and repeats.

    ``set_first[w]`` is the global index of window w's first set, so ``j = s - set_first[w]``. With
    D = S_w·τ ≥ n_w the numerator (j·τ + k)·n_w grows by n_w ≤ D per slot, so the rank grows by 0 or 1: it is
    tracked as quotient and remainder, one division per set instead of one per slot (64-bit integer
    division is the costly operation). A slot repeats its left neighbour exactly when the rank did
    not grow (ranks map to voxels one-to-one).
    """
    s = wp.int64(wp.tid() + offset)
    tau = wp.int64(set_size)
    one = wp.int64(1)
    w = set_window[s]
    n = win_count[w]
    denom = ((n + tau - one) // tau) * tau
    numer = (s - set_first[w]) * tau * n
    rank = numer // denom
    rem = numer - rank * denom
    start = win_start[w]
    for slot in range(set_size):
        k = wp.int64(slot)
        dup = False
        if slot > 0:
            rem = rem + n
            if rem >= denom:
                rem = rem - denom
                rank = rank + one
            else:
                dup = True
        set_voxel_inds[0, s, k] = order_sorty[start + rank]
        set_voxel_inds[1, s, k] = order_sortx[start + rank]
        set_voxel_mask[0, s, k] = dup
        set_voxel_mask[1, s, k] = dup


# ------------------------------------------------------------------------------------------------ helpers


def _window_keys(
    coords: torch.Tensor, shape: Int3, win: Int3, shift: Int3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the per-voxel kernel; returns (raw_key, coords_in_win, packed sorty key, packed sortx key)."""
    n = coords.shape[0]
    dev = coords.device
    coords = coords.contiguous()
    raw_key = torch.empty(n, dtype=torch.int64, device=dev)
    coords_in_win = torch.empty((n, 3), dtype=torch.int32, device=dev)
    key_sorty = torch.empty(n, dtype=torch.int64, device=dev)
    key_sortx = torch.empty(n, dtype=torch.int64, device=dev)
    _, nwy, nwz = window_grid(shape, win)
    nw_batch = window_grid(shape, win)[0] * nwy * nwz
    launch(
        _window_keys_kernel,
        n,
        [
            to_wp(coords),
            win[0],
            win[1],
            win[2],
            shift[0],
            shift[1],
            shift[2],
            nwy,
            nwz,
            nw_batch,
            to_wp(raw_key),
            to_wp(coords_in_win),
            to_wp(key_sorty),
            to_wp(key_sortx),
        ],
        wp_device(coords),
    )
    return raw_key, coords_in_win, key_sorty, key_sortx


def _windows_from_sorted(
    raw_key: torch.Tensor, order: torch.Tensor, coords_in_win: torch.Tensor, win: Int3, shift: Int3
) -> WindowPartition:
    """Windows from an order that sorts voxels by raw window key: keys, counts, and per-voxel renumbering."""
    window_key, inverse, counts = torch.unique_consecutive(
        raw_key[order], return_inverse=True, return_counts=True
    )
    win_id = torch.empty_like(order)
    win_id[order] = inverse
    return WindowPartition(
        win_id=win_id,
        coords_in_win=coords_in_win,
        num_windows=int(window_key.numel()),
        window_key=window_key,
        voxels_per_window=counts,
        window_shape=win,
        shift=shift,
    )


def _empty_windows(device: torch.device, win: Int3, shift: Int3) -> WindowPartition:
    """The N = 0 result, built without launching anything."""
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    return WindowPartition(
        win_id=empty,
        coords_in_win=torch.zeros((0, 3), dtype=torch.int32, device=device),
        num_windows=0,
        window_key=empty.clone(),
        voxels_per_window=empty.clone(),
        window_shape=win,
        shift=shift,
    )


# ------------------------------------------------------------------------------------------------ public
def window_partition(
    coords: torch.Tensor, spatial_shape: Int3, window_shape: Int3, shift: Int3
) -> WindowPartition:
    """Assign each voxel to a window of ``window_shape`` after shifting the grid by ``shift``.

    Args:
        coords: int32 (N, 4) voxel coords (batch, z, y, x), any strides, cpu or cuda.
        spatial_shape: grid (X, Y, Z).
        window_shape: (wx, wy, wz), positive.
        shift: (sx, sy, sz), each in [0, window]; sz is forced to 0 when Z == wz (DSVT's 2-D windows).

    Returns:
        :class:`WindowPartition`; windows are renumbered in ascending raw-key order (batch-major, then x, y, z
        window index), which is the order the official ``torch.unique`` produces.
    """
    coords, shape, win, sh, _ = validate_window_args(coords, spatial_shape, window_shape, shift)
    if coords.shape[0] == 0:
        return _empty_windows(coords.device, win, sh)
    init()
    with torch_stream(coords.device):
        raw_key, coords_in_win, _, _ = _window_keys(coords, shape, win, sh)
    order = torch.sort(raw_key, stable=True).indices
    return _windows_from_sorted(raw_key, order, coords_in_win, win, sh)


def dynamic_set_partition(
    coords: torch.Tensor, spatial_shape: Int3, window_shape: Int3, shift: Int3, set_size: int
) -> SetPartition:
    """DSVT dynamic set partition (paper Eq. 3) under both rotated orderings.

    Each window of n_w voxels gets S_w = ceil(n_w/τ) sets of τ slots; slot k of set j holds the voxel of
    rank ``((j·τ + k)·n_w) // (S_w·τ)`` in the window's order (0: sorty, y-major; 1: sortx, x-major).
    Repeated ranks are adjacent and flagged in ``set_voxel_mask`` (True = same voxel as the slot to the left),
    ready for ``key_padding_mask``.

    Args:
        coords, spatial_shape, window_shape, shift: as in :func:`window_partition`.
        set_size: τ ≥ 1 (DSVT-P 36, DSVT-V 48).
    """
    tau = validate_set_size(set_size)
    coords, shape, win, sh, _ = validate_window_args(coords, spatial_shape, window_shape, shift)
    dev = coords.device
    if coords.shape[0] == 0:
        return SetPartition(
            set_voxel_inds=torch.zeros((2, 0, tau), dtype=torch.int64, device=dev),
            set_voxel_mask=torch.zeros((2, 0, tau), dtype=torch.bool, device=dev),
            set_window=torch.zeros(0, dtype=torch.int64, device=dev),
            windows=_empty_windows(dev, win, sh),
        )
    init()
    with torch_stream(dev):
        raw_key, coords_in_win, key_sorty, key_sortx = _window_keys(coords, shape, win, sh)
        # packed keys sort by window first, so both orders group windows identically
        order_sorty = torch.sort(key_sorty, stable=True).indices
        order_sortx = torch.sort(key_sortx, stable=True).indices
        windows = _windows_from_sorted(raw_key, order_sorty, coords_in_win, win, sh)
        counts = windows.voxels_per_window
        win_start = torch.cumsum(counts, 0) - counts
        sets_per_window = torch.div(counts + (tau - 1), tau, rounding_mode="floor")
        set_first = torch.cumsum(sets_per_window, 0) - sets_per_window
        num_windows = windows.num_windows
        set_window = torch.repeat_interleave(torch.arange(num_windows, device=dev), sets_per_window)
        num_sets = int(set_window.numel())
        set_voxel_inds = torch.empty((2, num_sets, tau), dtype=torch.int64, device=dev)
        set_voxel_mask = torch.empty((2, num_sets, tau), dtype=torch.bool, device=dev)
        launch(
            _fill_sets_kernel,
            num_sets,
            [
                to_wp(set_window),
                to_wp(set_first),
                to_wp(win_start),
                to_wp(counts),
                to_wp(order_sorty),
                to_wp(order_sortx),
                tau,
                to_wp(set_voxel_inds),
                to_wp(set_voxel_mask),
            ],
            wp_device(coords),
        )
    return SetPartition(set_voxel_inds, set_voxel_mask, set_window, windows)


def dsvt_stage_partitions(
    coords: torch.Tensor, spatial_shape: Int3, window_shape: Int3, shift_offset: Int3, set_size: int
) -> tuple[SetPartition, SetPartition]:
    """Both shifts of a DSVT stage (the shifted, hybrid windows of the paper).

    Shift 0: ``window_shape`` with offset (0, 0, 0). Shift 1: the large window (2wx, 2wy, wz) with offset
    ``shift_offset`` (DSVT-P Waymo: 24×24×1 at offset 6; the z offset is dropped when Z == wz).
    """
    shift0 = dynamic_set_partition(coords, spatial_shape, window_shape, (0, 0, 0), set_size)
    shift1 = dynamic_set_partition(coords, spatial_shape, large_window(window_shape), shift_offset, set_size)
    return shift0, shift1
