"""Types, argument rules and window-grid arithmetic shared by the DSVT partition kernels and their oracle.

DSVT (Wang et al., "DSVT: Dynamic Sparse Voxel Transformer with Rotated Sets", CVPR 2023; official code
``github.com/Haiyang-W/DSVT``, ``DSVTInputLayer.window_partition`` / ``get_set``) groups voxels into windows
and splits every window into equal-size sets. :mod:`sparse3d.kernels.set_partition` (Warp) and
:mod:`sparse3d.kernels.reference.set_partition` (the plain-torch oracle) both return these types and raise the
same errors through these validators, whichever implementation runs. This module imports only torch, so that
the oracle stays independent of the kernels.

Conventions: ``coords`` int32 (N, 4) as (batch, z, y, x); ``spatial_shape``, ``window_shape`` and ``shift``
in (x, y, z) order, like OpenPCDet's ``sparse_shape`` and DSVT's ``window_shape`` / ``shifts_list``.
"""

from __future__ import annotations

import math
import operator
from typing import Any, NamedTuple

import torch

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
def _check_coords(coords: Any) -> torch.Tensor:
    """``coords`` as given, after checking it is an int32 (N, 4) tensor on the CPU or a CUDA device."""
    if not isinstance(coords, torch.Tensor):
        raise ValueError(f"coords must be a torch.Tensor, got {type(coords).__name__}")
    if coords.dtype != torch.int32 or coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(
            f"coords must be an int32 (N, 4) tensor, got {coords.dtype} of shape {tuple(coords.shape)}"
        )
    if coords.device.type not in ("cpu", "cuda"):
        raise ValueError(f"coords must be on cpu or cuda, got {coords.device}")
    return coords


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

    The returned shift already has the z shift forced to 0 when ``Z == wz`` (flat windows are never shifted in
    z, as in the official code). A shift larger
    than the window is rejected because ``nw = ceil(shape/w) + 1`` only leaves room for one extra window:
    with a larger shift the raw keys of different windows (or batch elements) would collide.
    The batch count (max batch id + 1, 0 when N = 0) bounds the raw keys; keys must fit in int64 together
    with the in-window sort key packed below them.
    """
    coords = _check_coords(coords)
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
    """Shift-1 window of a DSVT stage: (2wx, 2wy, wz), the window scaled by DSVT's ``hybrid_factor`` (2, 2, 1)."""
    wx, wy, wz = _int_triple("window_shape", window_shape, 1)
    return 2 * wx, 2 * wy, wz
