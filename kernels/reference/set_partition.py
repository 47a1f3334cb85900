"""Plain-torch oracle of DSVT window partition and dynamic set partition (dsvt.md §3.1–3.3).

This module is the spec the Warp kernels in :mod:`sparse3d.kernels.set_partition` are tested against,
bit for bit. It also defines the result types and the argument validation both implementations share, so a
caller gets the same types and the same errors whichever implementation runs.

Conventions: ``coords`` int32 (N, 4) as (batch, z, y, x); ``spatial_shape``, ``window_shape`` and ``shift``
in (x, y, z) order, like OpenPCDet's ``sparse_shape`` and DSVT's ``window_shape`` / ``shifts_list``.
"""

from __future__ import annotations

import math
import operator
from typing import Any, NamedTuple

import torch

from sparse3d.kernels.runtime import check_tensor

Int3 = tuple[int, int, int]

_INT64_MAX = 2**63 - 1


class WindowPartition(NamedTuple):
    """Voxels grouped into (possibly shifted) windows.

    Windows are renumbered 0..W-1 in ascending order of their raw key, so ``win_id`` can index per-window
    tensors directly and ``window_key`` maps back to the window grid.
    """

    win_id: torch.Tensor
    """int64 (N,): renumbered window of each voxel."""
    coords_in_win: torch.Tensor
    """int32 (N, 3): (z' % wz, y' % wy, x' % wx), the voxel's position inside its window."""
    num_windows: int
    """W, the number of non-empty windows."""
    window_key: torch.Tensor
    """int64 (W,): raw key ``b·(nwx·nwy·nwz) + (x'//wx)·(nwy·nwz) + (y'//wy)·nwz + z'//wz``, ascending."""
    voxels_per_window: torch.Tensor
    """int64 (W,): n_w, voxels in each window."""
    window_shape: Int3
    """(wx, wy, wz) used."""
    shift: Int3
    """(sx, sy, sz) actually applied (sz is 0 when Z == wz)."""


class SetPartition(NamedTuple):
    """Equal-size voxel sets inside windows under the two DSVT orderings (rotated sets)."""

    set_voxel_inds: torch.Tensor
    """int64 (2, S_total, τ): [ordering (0 = sorty, 1 = sortx), set, slot] → voxel index."""
    set_voxel_mask: torch.Tensor
    """bool (2, S_total, τ): True where the slot repeats the voxel of the slot to its left (padding)."""
    set_window: torch.Tensor
    """int64 (S_total,): renumbered window of each set; sets are ordered by window, then set index j."""
    windows: WindowPartition
    """The window partition the sets were built from."""


# ------------------------------------------------------------------------------------------ validation
def _int_triple(name: str, value: Any, minimum: int) -> Int3:
    """Three Python ints ≥ ``minimum`` (bools rejected: ``True`` as a window size is always a mistake)."""
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of 3 ints, got {value!r}") from None
    if len(items) != 3:
        raise ValueError(f"{name} must have 3 entries (x, y, z), got {len(items)}: {value!r}")
    out = []
    for v in items:
        if isinstance(v, bool):
            raise ValueError(f"{name} entries must be ints, got {value!r}")
        try:
            iv = operator.index(v)
        except TypeError:
            raise ValueError(f"{name} entries must be ints, got {value!r}") from None
        if iv < minimum:
            kind = "positive" if minimum == 1 else "non-negative"
            raise ValueError(f"{name} entries must be {kind}, got {value!r}")
        out.append(int(iv))
    return out[0], out[1], out[2]


def validate_window_args(
    coords: Any, spatial_shape: Any, window_shape: Any, shift: Any
) -> tuple[torch.Tensor, Int3, Int3, Int3, int]:
    """Check the arguments of :func:`window_partition`; return them normalised plus the batch count.

    The returned shift already has the z shift forced to 0 when ``Z == wz`` (dsvt.md §3.1). A shift larger
    than the window is rejected because ``nw = ceil(shape/w) + 1`` only leaves room for one extra window:
    with a larger shift the raw keys of different windows (or batch elements) would collide.
    The batch count (max batch id + 1, 0 when N = 0) bounds the raw keys; keys must fit in int64 together
    with the in-window sort key packed below them.
    """
    coords = check_tensor("coords", coords, dtypes=torch.int32, ndim=2, last_dim=4)
    sx_, sy_, sz_ = _int_triple("spatial_shape", spatial_shape, 1)
    wx, wy, wz = _int_triple("window_shape", window_shape, 1)
    sx, sy, sz = _int_triple("shift", shift, 0)
    if sz_ == wz:
        sz = 0
    for axis, s, w in (("x", sx, wx), ("y", sy, wy), ("z", sz, wz)):
        if s > w:
            raise ValueError(
                f"shift {axis} = {s} exceeds window_shape {axis} = {w}; the window grid only has room for a "
                f"shift of at most one window"
            )
    num_batches = 0
    if coords.shape[0] > 0:
        c = coords
        lo, hi = torch.aminmax(c, dim=0)
        lo_l, hi_l = lo.tolist(), hi.tolist()
        if min(lo_l) < 0 or hi_l[1] >= sz_ or hi_l[2] >= sy_ or hi_l[3] >= sx_:
            # slow path only on error: find the first offending row to name it
            bad = (c < 0).any(dim=1) | (c[:, 1] >= sz_) | (c[:, 2] >= sy_) | (c[:, 3] >= sx_)
            row = int(torch.nonzero(bad)[0, 0])
            raise ValueError(
                f"coords row {row} = {c[row].tolist()} (batch, z, y, x) is outside spatial_shape "
                f"(X, Y, Z) = {(sx_, sy_, sz_)} or has a negative batch index"
            )
        num_batches = hi_l[0] + 1
    nw = (math.ceil(sx_ / wx) + 1) * (math.ceil(sy_ / wy) + 1) * (math.ceil(sz_ / wz) + 1)
    if max(num_batches, 1) * nw * (wx * wy * wz) > _INT64_MAX:
        raise ValueError(
            f"spatial_shape {(sx_, sy_, sz_)} with {num_batches} batch elements and window_shape "
            f"{(wx, wy, wz)} gives window keys that overflow int64"
        )
    return coords, (sx_, sy_, sz_), (wx, wy, wz), (sx, sy, sz), num_batches


def validate_set_size(set_size: Any) -> int:
    """τ must be a positive int."""
    if isinstance(set_size, bool):
        raise ValueError(f"set_size must be an int >= 1, got {set_size!r}")
    try:
        tau = operator.index(set_size)
    except TypeError:
        raise ValueError(f"set_size must be an int >= 1, got {set_size!r}") from None
    if tau < 1:
        raise ValueError(f"set_size must be an int >= 1, got {set_size!r}")
    return int(tau)


def window_grid(spatial_shape: Int3, window_shape: Int3) -> Int3:
    """Windows per axis, ``ceil(shape / w) + 1``: the +1 leaves room for the shifted windows."""
    return (
        math.ceil(spatial_shape[0] / window_shape[0]) + 1,
        math.ceil(spatial_shape[1] / window_shape[1]) + 1,
        math.ceil(spatial_shape[2] / window_shape[2]) + 1,
    )


def large_window(window_shape: Any) -> Int3:
    """Shift-1 window of a DSVT stage: (2wx, 2wy, wz) (dsvt.md §3.1, hybrid factor (2, 2, 1))."""
    wx, wy, wz = _int_triple("window_shape", window_shape, 1)
    return 2 * wx, 2 * wy, wz


# ------------------------------------------------------------------------------------------ the oracle
def window_partition(
    coords: torch.Tensor, spatial_shape: Int3, window_shape: Int3, shift: Int3
) -> WindowPartition:
    """Assign each voxel to a window of ``window_shape`` after shifting the grid by ``shift``."""
    coords, shape, win, sh, _ = validate_window_args(coords, spatial_shape, window_shape, shift)
    wx, wy, wz = win
    nwx, nwy, nwz = window_grid(shape, win)
    c = coords.long()
    b = c[:, 0]
    zs = c[:, 1] + sh[2]
    ys = c[:, 2] + sh[1]
    xs = c[:, 3] + sh[0]
    key = b * (nwx * nwy * nwz) + (xs // wx) * (nwy * nwz) + (ys // wy) * nwz + zs // wz
    window_key, win_id, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
    coords_in_win = torch.stack([zs % wz, ys % wy, xs % wx], dim=1).to(torch.int32)
    return WindowPartition(
        win_id=win_id.reshape(-1).to(torch.int64),
        coords_in_win=coords_in_win,
        num_windows=int(window_key.numel()),
        window_key=window_key.to(torch.int64),
        voxels_per_window=counts.to(torch.int64),
        window_shape=win,
        shift=sh,
    )


def set_ranks(n: int, set_size: int) -> torch.Tensor:
    """Paper Eq. 3 for one window of ``n`` voxels: (S_w, τ) ranks ``((j·τ + k)·n) // (S_w·τ)``."""
    num_sets = -(-n // set_size)
    jk = torch.arange(num_sets * set_size, dtype=torch.int64)
    return ((jk * n) // (num_sets * set_size)).view(num_sets, set_size)


def dynamic_set_partition(
    coords: torch.Tensor, spatial_shape: Int3, window_shape: Int3, shift: Int3, set_size: int
) -> SetPartition:
    """Split every window into ceil(n_w/τ) sets of τ slots, evenly over its voxels (paper Eq. 3).

    Slots index the window's voxels sorted by the in-window key of each ordering; when n_w is not a
    multiple of τ some ranks repeat (always adjacently) and the repeats are masked.
    """
    tau = validate_set_size(set_size)
    windows = window_partition(coords, spatial_shape, window_shape, shift)
    wx, wy, wz = windows.window_shape
    device = windows.win_id.device
    # voxel ids grouped by window, ascending voxel id inside a window (stable sort)
    by_window = torch.argsort(windows.win_id, stable=True)
    members_per_window = torch.split(by_window, windows.voxels_per_window.tolist())
    inds: list[list[torch.Tensor]] = [[], []]
    masks: list[torch.Tensor] = []
    set_window: list[torch.Tensor] = []
    for w, members in enumerate(members_per_window):
        n = int(members.numel())
        ranks = set_ranks(n, tau).to(device)
        cz, cy, cx = windows.coords_in_win[members].long().unbind(dim=1)
        keys = (cy * (wx * wz) + cx * wz + cz, cx * (wy * wz) + cy * wz + cz)
        for o, key in enumerate(keys):
            ordered = members[torch.argsort(key, stable=True)]
            inds[o].append(ordered[ranks])
        mask = torch.zeros(ranks.shape, dtype=torch.bool, device=device)
        mask[:, 1:] = ranks[:, 1:] == ranks[:, :-1]
        masks.append(mask)
        set_window.append(torch.full((ranks.shape[0],), w, dtype=torch.int64, device=device))
    if masks:
        set_voxel_inds = torch.stack([torch.cat(inds[0]), torch.cat(inds[1])])
        mask_all = torch.cat(masks)
        set_voxel_mask = torch.stack([mask_all, mask_all])
        set_window_t = torch.cat(set_window)
    else:
        set_voxel_inds = torch.zeros((2, 0, tau), dtype=torch.int64, device=device)
        set_voxel_mask = torch.zeros((2, 0, tau), dtype=torch.bool, device=device)
        set_window_t = torch.zeros((0,), dtype=torch.int64, device=device)
    return SetPartition(set_voxel_inds, set_voxel_mask, set_window_t, windows)


def dsvt_stage_partitions(
    coords: torch.Tensor, spatial_shape: Int3, window_shape: Int3, shift_offset: Int3, set_size: int
) -> tuple[SetPartition, SetPartition]:
    """Both shifts of a DSVT stage: (window, offset 0) and (large window (2wx, 2wy, wz), ``shift_offset``)."""
    shift0 = dynamic_set_partition(coords, spatial_shape, window_shape, (0, 0, 0), set_size)
    shift1 = dynamic_set_partition(coords, spatial_shape, large_window(window_shape), shift_offset, set_size)
    return shift0, shift1
