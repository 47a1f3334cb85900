"""Plain-torch oracle of DSVT window partition and dynamic set partition.

DSVT: Wang et al., "DSVT: Dynamic Sparse Voxel Transformer with Rotated Sets", CVPR 2023; official code
``github.com/Haiyang-W/DSVT`` (``DSVTInputLayer.window_partition`` / ``get_set``). This module is the spec the
Warp kernels in :mod:`sparse3d.kernels.set_partition` are tested against, bit for bit; it is written from the
paper with plain torch ops (``torch.unique``, per-window sorts, Eq. 3 evaluated per window). The result types
and the argument validation both implementations share live in :mod:`sparse3d.kernels.set_partition_types`.
"""

from __future__ import annotations

import torch

from sparse3d.kernels.set_partition_types import (
    Int3,
    SetPartition,
    WindowPartition,
    large_window,
    validate_set_size,
    validate_window_args,
    window_grid,
)


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
