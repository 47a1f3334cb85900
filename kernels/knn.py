"""Exact k-nearest-neighbour search within one 3-D point set, through a hierarchy of uniform grids.

:func:`knn_distances` gives every point the squared distances to, and the indices of, its ``k`` nearest *other*
points (the point itself is excluded by index; a duplicate of it counts, at distance 0). It serves the 3D
Gaussian Splatting initialisation (scale = RMS distance to the 3 nearest neighbours), where a brute-force
search is quadratic in the cloud size.

How it searches:

1. Every point gets a cell of a fine cubic grid over the cloud's bounding box (:data:`GRID_BITS` bits per
   axis) and the Morton code of that cell; one sort by code orders the points so that the cells of every
   coarser grid (cells 2^L times wider, codes shifted right by 3L) are contiguous runs of the sorted points.
   These grids are the *levels*. Of levels that partition the points identically only the coarsest is kept;
   the coarsest level has at most two cells per axis. A level's occupied cells are listed by ascending code,
   so a cell is found by binary search (consecutive queries are neighbours in space and walk the same,
   cached, search paths).
2. Per query point (one thread each, in sorted order): start at the finest level whose cell around the point
   holds at least ``max(8, 2k)`` points (:data:`MIN_START_COUNT`), then visit the cells of growing shells
   (Chebyshev rings) around that cell, skipping cells whose box is no closer than the current k-th best. The
   search ends when the k-th best squared distance is at most the squared distance to the outside of the
   visited block (no unvisited point can be closer), when the block covers the level's grid, or after one
   scan of all the level's occupied cells (taken when the next ring has more cells than the level has
   occupied ones). After :data:`RING_BUDGET` rings without an answer the search restarts one level coarser;
   the coarsest level is searched to the end.

The answer is exact: the pruning and stopping tests subtract a slack of a few float32 ulps of the coordinates,
so rounding in the binning can only cost extra work, never a neighbour. Squared distances are float32
``dx*dx + dy*dy + dz*dz``; equally distant neighbours may be listed in another order (or, at the k-th place,
be another point) than in a brute-force search, the distances never differ. Work grows with the number of
points sharing a start cell, so a cloud made of many copies of a few positions costs up to quadratic time in
the number of copies.

Each thread writes only its own output row, so the CPU split over cores needs no atomics and the result does
not depend on thread scheduling. CUDA runs the same kernel in one launch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import warp as wp

from sparse3d.kernels.runtime import check_tensor, init, launch, serial_torch_ops, to_wp, wp_device

wp.set_module_options({"enable_backward": False, "optimization_level": 3})

GRID_BITS = 21
"""Bits per axis of the finest grid's cell coordinates (a 63-bit Morton code)."""
MIN_START_COUNT = 8
"""A query starts at the finest level whose cell around it holds at least ``max(MIN_START_COUNT, 2k)`` points
(itself included); fewer means more cell look-ups per point, more means more distances (chosen by benchmark)."""
RING_BUDGET = 2
"""Rings searched at a level before restarting one level coarser (the coarsest level has no budget)."""
SPLIT_MIN_POINTS = 2048
"""Queries from which a CPU launch is split over the cores (each query does far more than an element-wise op)."""
_SLACK_ULPS = 8.0
_F32_EPS = 1.1920929e-07


@wp.func
def _spread_bits(v: wp.int64) -> wp.int64:
    """Bits 0..20 of ``v`` moved to bits 0, 3, 6, ... (one axis of a 3-D Morton code)."""
    x = wp.uint64(v) & wp.uint64(0x1FFFFF)
    x = (x | (x << wp.uint64(32))) & wp.uint64(0x1F00000000FFFF)
    x = (x | (x << wp.uint64(16))) & wp.uint64(0x1F0000FF0000FF)
    x = (x | (x << wp.uint64(8))) & wp.uint64(0x100F00F00F00F00F)
    x = (x | (x << wp.uint64(4))) & wp.uint64(0x10C30C30C30C30C3)
    x = (x | (x << wp.uint64(2))) & wp.uint64(0x1249249249249249)
    return wp.int64(x)


@wp.func
def _morton(c: wp.vec3i) -> wp.int64:
    return (
        (_spread_bits(wp.int64(c[0])) << wp.int64(2))
        | (_spread_bits(wp.int64(c[1])) << wp.int64(1))
        | _spread_bits(wp.int64(c[2]))
    )


@wp.func
def _fine_cell(p: wp.vec3, lo: wp.vec3, inv_h: float, dims: wp.vec3i) -> wp.vec3i:
    """Finest-grid cell of ``p``, clamped into the grid (binning and queries share this one rounding)."""
    q = (p - lo) * inv_h
    return wp.vec3i(
        wp.clamp(int(wp.floor(q[0])), 0, dims[0] - 1),
        wp.clamp(int(wp.floor(q[1])), 0, dims[1] - 1),
        wp.clamp(int(wp.floor(q[2])), 0, dims[2] - 1),
    )


@wp.func
def _level_dims(dims: wp.vec3i, shift: int) -> wp.vec3i:
    return wp.vec3i(((dims[0] - 1) >> shift) + 1, ((dims[1] - 1) >> shift) + 1, ((dims[2] - 1) >> shift) + 1)


@wp.func
def _cell_sq_dist(q: wp.vec3, lo: wp.vec3, width: float, c: wp.vec3i, slack: float) -> float:
    """Squared distance from ``q`` to the box of cell ``c`` (cells ``width`` wide from ``lo``), each axis' gap
    less ``slack`` (never below 0): a lower bound on the distance to any point binned into the cell."""
    d = 0.0
    for a in range(3):
        b = lo[a] + float(c[a]) * width
        gap = wp.max(wp.max(b - q[a], q[a] - (b + width)) - slack, 0.0)
        d += gap * gap
    return d


@wp.func
def _find_cell(c: wp.vec3i, first: int, last: int, cell_keys: wp.array(dtype=wp.int64)) -> int:
    """Row of cell ``c`` among the sorted keys ``cell_keys[first:last]`` of one level, or -1 when empty."""
    key = _morton(c)
    a = first
    b = last
    while a < b:
        mid = (a + b) >> 1
        if cell_keys[mid] < key:
            a = mid + 1
        else:
            b = mid
    if a < last and cell_keys[a] == key:
        return a
    return -1


@wp.func
def _scan_cell(
    cell: int,
    t: int,
    q: wp.vec3,
    row: int,
    k: int,
    pts: wp.array(dtype=wp.vec3),
    order: wp.array(dtype=wp.int64),
    cell_begin: wp.array(dtype=wp.int32),
    cell_end: wp.array(dtype=wp.int32),
    out_d: wp.array2d(dtype=wp.float32),
    out_i: wp.array2d(dtype=wp.int64),
) -> float:
    """Insert the cell's points (but the query ``t`` itself) into the sorted row; returns the new k-th best."""
    for j in range(cell_begin[cell], cell_end[cell]):
        if j != t:
            d = wp.length_sq(pts[j] - q)
            if d < out_d[row, k - 1]:
                m = k - 1
                while m > 0 and out_d[row, m - 1] > d:
                    out_d[row, m] = out_d[row, m - 1]
                    out_i[row, m] = out_i[row, m - 1]
                    m -= 1
                out_d[row, m] = d
                out_i[row, m] = order[j]
    return out_d[row, k - 1]


@wp.func
def _visit(
    c: wp.vec3i,
    width: float,
    worst: float,
    t: int,
    q: wp.vec3,
    row: int,
    k: int,
    lo: wp.vec3,
    slack: float,
    pts: wp.array(dtype=wp.vec3),
    order: wp.array(dtype=wp.int64),
    cell_begin: wp.array(dtype=wp.int32),
    cell_end: wp.array(dtype=wp.int32),
    cell_keys: wp.array(dtype=wp.int64),
    first: int,
    last: int,
    out_d: wp.array2d(dtype=wp.float32),
    out_i: wp.array2d(dtype=wp.int64),
) -> float:
    """Scan cell ``c`` of the level whose cells are rows ``first .. last - 1``, unless its box is no closer than
    the k-th best; returns the new k-th best."""
    if _cell_sq_dist(q, lo, width, c, slack) >= worst:
        return worst
    cell = _find_cell(c, first, last, cell_keys)
    if cell < 0:
        return worst
    return _scan_cell(cell, t, q, row, k, pts, order, cell_begin, cell_end, out_d, out_i)


@wp.func
def _block_clearance(q: wp.vec3, lo: wp.vec3, width: float, qc: wp.vec3i, r: int, dims: wp.vec3i, slack: float) -> float:
    """Distance from ``q`` to the nearest cell outside the block of rings 0..r (inf when the block covers the
    grid), less ``slack``: no unvisited point is closer."""
    big = 3.0e38
    best = big
    for a in range(3):
        if qc[a] - r > 0:
            best = wp.min(best, q[a] - (lo[a] + float(qc[a] - r) * width))
        if qc[a] + r < dims[a] - 1:
            best = wp.min(best, (lo[a] + float(qc[a] + r + 1) * width) - q[a])
    if best >= big:
        return float(wp.inf)
    return wp.max(best - slack, 0.0)


@wp.kernel
def _cell_codes_kernel(
    offset: int,
    points: wp.array(dtype=wp.vec3),
    lo: wp.vec3,
    inv_h: float,
    dims: wp.vec3i,
    codes: wp.array(dtype=wp.int64),
):
    i = wp.tid() + offset
    codes[i] = _morton(_fine_cell(points[i], lo, inv_h, dims))


@wp.kernel
def _knn_kernel(
    offset: int,
    pts: wp.array(dtype=wp.vec3),
    order: wp.array(dtype=wp.int64),
    cell_begin: wp.array(dtype=wp.int32),
    cell_end: wp.array(dtype=wp.int32),
    level_shift: wp.array(dtype=wp.int32),
    level_first: wp.array(dtype=wp.int32),
    cell_keys: wp.array(dtype=wp.int64),
    lo: wp.vec3,
    h: float,
    inv_h: float,
    dims: wp.vec3i,
    slack: float,
    k: int,
    start_count: int,
    out_d: wp.array2d(dtype=wp.float32),
    out_i: wp.array2d(dtype=wp.int64),
):
    """k nearest other points of sorted point ``t``, written to row ``order[t]`` (see the module docstring).

    ``level_first`` has one entry per level plus one: the cells of level ``l`` are rows
    ``level_first[l] .. level_first[l + 1] - 1`` of ``cell_begin`` / ``cell_end``.
    """
    t = wp.tid() + offset
    q = pts[t]
    row = int(order[t])
    for m in range(k):
        out_d[row, m] = wp.inf
        out_i[row, m] = wp.int64(-1)
    qc0 = _fine_cell(q, lo, inv_h, dims)
    top = level_shift.shape[0] - 1

    # Finest level whose cell around q holds >= start_count points (the count only grows with the level).
    a = int(0)  # noqa: UP018 -- a Warp variable (a bare literal would be a constant)
    b = int(top)
    while a < b:
        mid = (a + b) / 2
        s = level_shift[mid]
        cell = _find_cell(wp.vec3i(qc0[0] >> s, qc0[1] >> s, qc0[2] >> s), level_first[mid], level_first[mid + 1], cell_keys)
        if cell_end[cell] - cell_begin[cell] >= start_count:
            b = mid
        else:
            a = mid + 1
    level = int(a)

    worst = float(wp.inf)
    done = bool(False)  # noqa: UP018
    while not done:
        s = level_shift[level]
        width = h * float(1 << s)
        ldims = _level_dims(dims, s)
        qc = wp.vec3i(qc0[0] >> s, qc0[1] >> s, qc0[2] >> s)
        first = level_first[level]
        last = level_first[level + 1]
        occupied = last - first
        r = int(0)  # noqa: UP018
        restart = bool(False)  # noqa: UP018
        while not done and not restart:
            ring_cells = 1
            if r > 0:
                ring_cells = 24 * r * r + 2
            if ring_cells > occupied:
                # Fewer occupied cells than the ring has: scan every occupied cell not visited yet.
                for cell in range(first, last):
                    p0 = pts[cell_begin[cell]]
                    c = _fine_cell(p0, lo, inv_h, dims)
                    c = wp.vec3i(c[0] >> s, c[1] >> s, c[2] >> s)
                    cheb = wp.max(wp.max(wp.abs(c[0] - qc[0]), wp.abs(c[1] - qc[1])), wp.abs(c[2] - qc[2]))
                    if cheb >= r and _cell_sq_dist(q, lo, width, c, slack) < worst:
                        worst = _scan_cell(cell, t, q, row, k, pts, order, cell_begin, cell_end, out_d, out_i)
                done = True
            else:
                x0 = wp.max(-r, -qc[0])
                x1 = wp.min(r, ldims[0] - 1 - qc[0])
                y0 = wp.max(-r, -qc[1])
                y1 = wp.min(r, ldims[1] - 1 - qc[1])
                z0 = wp.max(-r, -qc[2])
                z1 = wp.min(r, ldims[2] - 1 - qc[2])
                for dx in range(x0, x1 + 1):
                    for dy in range(y0, y1 + 1):
                        # On the ring's x or y faces every z; inside them only the z faces -r and r.
                        dz = z0
                        step = 1
                        if wp.abs(dx) != r and wp.abs(dy) != r:
                            dz = -r
                            step = 2 * r
                        while dz <= z1:
                            if dz >= z0:
                                worst = _visit(
                                    wp.vec3i(qc[0] + dx, qc[1] + dy, qc[2] + dz), width, worst, t, q, row, k,
                                    lo, slack, pts, order, cell_begin, cell_end, cell_keys, first, last, out_d, out_i,
                                )
                            dz += step
                clearance = _block_clearance(q, lo, width, qc, r, ldims, slack)
                if worst <= clearance * clearance:
                    done = True
                elif level < top and r >= RING_BUDGET:
                    restart = True
                else:
                    r += 1
        if restart:
            for m in range(k):
                out_d[row, m] = wp.inf
                out_i[row, m] = wp.int64(-1)
            worst = float(wp.inf)
            level += 1


@dataclass
class _Grids:
    """The sorted points and the cells of every kept level (see the module docstring)."""

    points: torch.Tensor
    """(N, 3) float32, sorted by the Morton code of their finest cell."""
    order: torch.Tensor
    """(N,) int64: input row of each sorted point."""
    cell_begin: torch.Tensor
    """(C,) int32 first sorted point of each cell, levels concatenated finest first."""
    cell_end: torch.Tensor
    """(C,) int32 one past the last sorted point of each cell."""
    level_shift: torch.Tensor
    """(L,) int32: level ``l`` has cells ``2^level_shift[l]`` finest cells wide."""
    level_first: torch.Tensor
    """(L + 1,) int32: the cells of level ``l`` are rows ``level_first[l] .. level_first[l + 1] - 1``."""
    cell_keys: torch.Tensor
    """(C,) int64 Morton code of each cell at its level, ascending within a level."""
    lo: wp.vec3
    inv_h: float
    dims: wp.vec3i
    slack: float


def _build_grids(points: torch.Tensor) -> _Grids:
    """Bin, sort and index ``points`` (N >= 2, contiguous, finite)."""
    lo_t = points.min(0).values
    extent = points.max(0).values - lo_t
    span = float(extent.max())
    cells = 2**GRID_BITS
    inv_h = (cells - 1) / span if span > 0 else 1.0
    lo_list = [float(v) for v in lo_t.cpu()]
    lo = wp.vec3(*lo_list)
    dims = wp.vec3i(*(min(cells, int(float(e) * inv_h) + 1) for e in extent.cpu()))
    # Coordinates are rounded to float32 in the binning and the box bounds: a few ulps of the largest
    # magnitude cover both, so pruning can only be conservative.
    slack = _SLACK_ULPS * _F32_EPS * (max(abs(v) for v in lo_list) + span)

    dev = points.device
    codes = torch.empty(points.shape[0], dtype=torch.int64, device=dev)
    launch(_cell_codes_kernel, points.shape[0], [to_wp(points, wp.vec3), lo, inv_h, dims, to_wp(codes)], wp_device(points))
    codes, order = torch.sort(codes, stable=True)
    shifts, keys, ends = _levels(codes, max(int(v) for v in dims))
    level_first = [0]
    for level_keys in keys:
        level_first.append(level_first[-1] + level_keys.numel())
    end = torch.cat(ends)
    begin = torch.cat([torch.cat([e.new_zeros(1), e[:-1]]) for e in ends])
    return _Grids(
        points=points[order].contiguous(),
        order=order,
        cell_begin=begin.to(torch.int32),
        cell_end=end.to(torch.int32),
        level_shift=torch.tensor(shifts, dtype=torch.int32, device=dev),
        level_first=torch.tensor(level_first, dtype=torch.int32, device=dev),
        cell_keys=torch.cat(keys),
        lo=lo,
        inv_h=inv_h,
        dims=dims,
        slack=slack,
    )


def _levels(codes: torch.Tensor, max_dim: int) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor]]:
    """The kept levels of sorted Morton ``codes``, finest first: shifts, tagged cell keys, cell run ends.

    Level ``L`` groups codes by ``code >> 3L``. The coarsest level is the first with at most two cells per
    axis; a finer level is dropped when the next coarser one has as many cells (the same partition).
    """
    top = 0
    while ((max_dim - 1) >> top) + 1 > 2:
        top += 1
    finest = torch.unique_consecutive(codes).numel()
    runs: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    for shift in range(top, -1, -1):
        uniq, counts = torch.unique_consecutive(codes >> (3 * shift), return_counts=True)
        if runs and runs[-1][1].numel() == uniq.numel():
            continue  # a finer level with the same partition: the coarser one is kept
        runs.append((shift, uniq, counts))
        if uniq.numel() == finest:
            break  # every finer level partitions the points the same way
    runs.reverse()
    shifts = [shift for shift, _, _ in runs]
    keys = [uniq for _, uniq, _ in runs]
    ends = [counts.cumsum(0) for _, _, counts in runs]
    return shifts, keys, ends


def knn_distances(points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances and indices of each point's ``k`` nearest other points, nearest first.

    ``points`` is (N, 3) float32 on the CPU or a CUDA device (any strides; gradients are not tracked).
    Returns ``(sqdist, index)``: (N, k) float32 ascending and (N, k) int64. Row ``i`` never contains ``i``;
    duplicates of point ``i`` are other points at distance 0. Where fewer than ``k`` other points exist
    (N <= k) the missing entries are ``inf`` and ``-1``. The distances equal a brute-force search's (float32
    ``dx*dx + dy*dy + dz*dz``); among equally distant neighbours the indices may differ. Raises ValueError for
    a wrong shape, dtype or device, non-finite coordinates or ``k < 1``.
    """
    check_tensor("points", points, torch.float32, ndim=2, last_dim=3)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    n = points.shape[0]
    if n >= 2**31:
        raise ValueError(f"points has {n} rows; at most {2**31 - 1} are supported")
    dev = points.device
    if n < 2:
        return (
            torch.full((n, k), float("inf"), dtype=torch.float32, device=dev),
            torch.full((n, k), -1, dtype=torch.int64, device=dev),
        )
    init()
    with serial_torch_ops():  # torch glue around the Warp launches: see serial_torch_ops
        points = points.detach().contiguous()
        if not bool(torch.isfinite(points).all()):
            raise ValueError("points must be finite (found NaN or inf coordinates)")
        g = _build_grids(points)
        out_d = torch.empty((n, k), dtype=torch.float32, device=dev)  # every row is written by the kernel
        out_i = torch.empty((n, k), dtype=torch.int64, device=dev)
        launch(
            _knn_kernel,
            n,
            [
                to_wp(g.points, wp.vec3),
                to_wp(g.order),
                to_wp(g.cell_begin),
                to_wp(g.cell_end),
                to_wp(g.level_shift),
                to_wp(g.level_first),
                to_wp(g.cell_keys),
                g.lo,
                1.0 / g.inv_h,
                g.inv_h,
                g.dims,
                g.slack,
                k,
                max(MIN_START_COUNT, 2 * k),
                to_wp(out_d),
                to_wp(out_i),
            ],
            wp_device(points),
            min_split=SPLIT_MIN_POINTS,
        )
    return out_d, out_i
