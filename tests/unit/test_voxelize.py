"""Dynamic voxelisation (Warp) vs the torch.unique oracle in kernels/reference/voxelize.py, plus properties
checked without the reference: voxel boxes contain their points, counts add up, coords sorted and unique.
"""

from __future__ import annotations

import math

import pytest
import torch

import sparse3d.kernels.runtime as runtime
from sparse3d.kernels import hashmap as H
from sparse3d.kernels import voxelize as V
from sparse3d.kernels.reference import voxelize as R
from sparse3d.kernels.voxelize_types import Voxelization, grid_size_from_range

RANGE = (-4.0, -3.0, -1.0, 4.0, 3.0, 1.0)  # exactly representable bounds
SIZE = (0.25, 0.5, 0.125)  # powers of two: boundary arithmetic is exact
GRID = (32, 12, 16)


# ------------------------------------------------------------------------------------------------ helpers
def random_cloud(n: int, seed: int, point_range=RANGE, extra: int = 1, margin: float = 0.2) -> torch.Tensor:
    """(n, 3+extra) float32 points spread a bit beyond the range (so some fall outside)."""
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor(point_range[:3])
    hi = torch.tensor(point_range[3:])
    span = hi - lo
    xyz = lo - margin * span + (1 + 2 * margin) * span * torch.rand(n, 3, generator=g)
    feats = torch.randn(n, extra, generator=g)
    return torch.cat([xyz, feats], dim=1).to(torch.float32)


def assert_same(got: Voxelization, want: Voxelization) -> None:
    assert got.grid_size == want.grid_size
    assert got.num_nonfinite == want.num_nonfinite
    assert got.num_out_of_range == want.num_out_of_range
    for name in ("coords", "point_to_voxel", "counts"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype, name
        assert a.shape == b.shape, name
        assert torch.equal(a, b), name


def both(points, voxel_size=SIZE, point_range=RANGE, batch_idx=None) -> Voxelization:
    got = V.voxelize(points, voxel_size, point_range, batch_idx)
    want = R.voxelize(points, voxel_size, point_range, batch_idx)
    assert_same(got, want)
    check_properties(got, points, voxel_size, point_range, batch_idx)
    return got


def check_properties(res: Voxelization, points, voxel_size, point_range, batch_idx) -> None:
    """Oracle-free checks of a voxelisation result."""
    n = points.shape[0]
    coords, p2v, counts = res.coords, res.point_to_voxel, res.counts
    m = coords.shape[0]
    assert coords.shape == (m, 4) and coords.dtype == torch.int32
    assert p2v.shape == (n,) and p2v.dtype == torch.int64
    assert counts.shape == (m,) and counts.dtype == torch.int32
    kept = p2v >= 0
    assert int(kept.sum()) + res.num_nonfinite + res.num_out_of_range == n
    assert int(counts.sum()) == int(kept.sum())
    assert bool((counts >= 1).all())
    if m:
        assert int(p2v.max()) < m
        assert torch.equal(torch.bincount(p2v[kept], minlength=m).to(torch.int32), counts)
    # non-finite rows are exactly the ones counted as such
    xyz = points[:, :3].double()
    finite = torch.isfinite(xyz).all(dim=1)
    assert int((~finite).sum()) == res.num_nonfinite
    assert not bool(kept[~finite].any())
    # coords: unique and sorted by (batch, x, y, z); inside grid
    gx, gy, gz = res.grid_size
    b, z, y, x = (coords[:, i].long() for i in range(4))
    assert bool(((x >= 0) & (x < gx) & (y >= 0) & (y < gy) & (z >= 0) & (z < gz) & (b >= 0)).all())
    key = ((b * gx + x) * gy + y) * gz + z
    if m > 1:
        assert bool((key[1:] > key[:-1]).all()), "coords not strictly sorted by (b, x, y, z)"
    # every kept point lies in its voxel's box [min + idx*size, min + (idx+1)*size) (float64, few-ulp slack)
    if bool(kept.any()):
        c = coords[p2v[kept]].double()
        lo = torch.tensor(point_range[:3], dtype=torch.float64)
        size = torch.tensor(voxel_size, dtype=torch.float64)
        idx = torch.stack([c[:, 3], c[:, 2], c[:, 1]], dim=1)
        p = xyz[kept]
        eps = 1e-5 * max(abs(v) for v in point_range)
        assert bool((p >= lo + idx * size - eps).all())
        assert bool((p < lo + (idx + 1) * size + eps).all())
        if batch_idx is not None:
            assert torch.equal(c[:, 0].long(), batch_idx[kept].long())
        else:
            assert bool((c[:, 0] == 0).all())
    # kept finite points are exactly those whose box index is inside the grid (float64 recomputation, interior)
    lo = torch.tensor(point_range[:3], dtype=torch.float64)
    size = torch.tensor(voxel_size, dtype=torch.float64)
    rel = (xyz - lo) / size
    grid = torch.tensor([gx, gy, gz], dtype=torch.float64)
    clearly_in = finite & (rel > 1e-3).all(1) & (rel < grid - 1e-3).all(1)
    clearly_out = finite & ((rel < -1e-3).any(1) | (rel > grid + 1e-3).any(1))
    assert bool(kept[clearly_in].all())
    assert not bool(kept[clearly_out].any())


# ------------------------------------------------------------------------------------------ vs the reference
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_multibatch_with_bad_rows(seed):
    n = 3000
    pts = random_cloud(n, seed, extra=2)
    g = torch.Generator().manual_seed(100 + seed)
    bad = torch.randperm(n, generator=g)[:60]
    pts[bad[:20], 0] = float("nan")
    pts[bad[20:35], 1] = float("inf")
    pts[bad[35:50], 2] = float("-inf")
    pts[bad[50:], 0] = 1e30  # finite but huge
    batch = torch.randint(0, 3, (n,), generator=g, dtype=torch.int32)
    res = both(pts, batch_idx=batch)
    assert res.num_nonfinite == 50
    assert not bool((res.point_to_voxel[bad[50:]] >= 0).any())  # huge finite x is out of range
    assert res.num_out_of_range > 10
    assert res.grid_size == GRID


def test_random_int64_batch_and_default_batch():
    pts = random_cloud(1000, 7)
    batch = torch.randint(0, 4, (1000,), generator=torch.Generator().manual_seed(7), dtype=torch.int64)
    both(pts, batch_idx=batch)
    res = both(pts)
    assert bool((res.coords[:, 0] == 0).all())


def test_kitti_like_range_and_dense_voxels():
    # the DSVT/PointPillars-style 0.16 grid and a 0.1 grid whose extent hits float rounding
    for size, rng in [
        ((0.16, 0.16, 4.0), (0.0, -39.68, -3.0, 69.12, 39.68, 1.0)),
        ((0.1, 0.1, 0.15), (0, -40, -3, 75.2, 40, 1)),
    ]:
        pts = random_cloud(4000, 3, point_range=rng, margin=0.05)
        res = both(pts, size, rng)
        assert res.grid_size == grid_size_from_range(rng, size)
    # many points per voxel: coarse grid
    res = both(random_cloud(2000, 4, margin=0.0), (2.0, 2.0, 1.0))
    assert int(res.counts.max()) > 10


def _below(v: float) -> float:
    """Largest float32 strictly below ``v``."""
    t = torch.tensor(v, dtype=torch.float32)
    return float(torch.nextafter(t, torch.tensor(-math.inf)))


def test_range_boundaries_min_kept_max_dropped():
    lo, hi = RANGE[:3], RANGE[3:]
    pts = torch.tensor(
        [
            [lo[0], lo[1], lo[2]],  # the min corner: kept, voxel (0, 0, 0)
            [hi[0], 0.0, 0.0],  # x == max: dropped
            [0.0, hi[1], 0.0],  # y == max: dropped
            [0.0, 0.0, hi[2]],  # z == max: dropped
            [hi[0] - SIZE[0] / 2, 0.0, 0.0],  # inside the last x voxel: kept
            [_below(lo[0]), 0.0, 0.0],  # just below x min: dropped
            [lo[0] + SIZE[0], lo[1] + SIZE[1], lo[2] + SIZE[2]],  # exactly on an inner face: voxel (1, 1, 1)
        ],
        dtype=torch.float32,
    )
    res = both(pts)
    assert res.point_to_voxel.tolist()[1:4] == [-1, -1, -1]
    assert res.point_to_voxel[5].item() == -1
    assert res.num_out_of_range == 4 and res.num_nonfinite == 0
    vox = {i: res.coords[res.point_to_voxel[i]].tolist() for i in (0, 4, 6)}
    assert vox[0] == [0, 0, 0, 0]
    assert vox[4][3] == GRID[0] - 1
    assert vox[6] == [0, 1, 1, 1]  # (b, z, y, x)
    # with a zero minimum, p - min is exact: the largest float32 below the max is kept in the last voxel
    rng, size = (0.0, 0.0, 0.0, 8.0, 4.0, 2.0), (0.25, 0.25, 0.25)
    pts = torch.tensor([[_below(8.0), _below(4.0), _below(2.0)], [8.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    res = both(pts, size, rng)
    assert res.point_to_voxel.tolist() == [1, -1, 0]
    assert res.coords.tolist() == [[0, 0, 0, 0], [0, 7, 15, 31]]


def test_empty_cloud():
    res = both(torch.empty(0, 4, dtype=torch.float32))
    assert res.coords.shape == (0, 4) and res.point_to_voxel.shape == (0,) and res.counts.shape == (0,)
    assert res.num_nonfinite == 0 and res.num_out_of_range == 0 and res.grid_size == GRID
    res = V.voxelize(torch.empty(0, 3), SIZE, RANGE, torch.empty(0, dtype=torch.int32))
    assert res.coords.shape == (0, 4)


def test_single_point():
    res = both(torch.tensor([[0.3, -0.6, 0.9]], dtype=torch.float32))
    # x: (0.3+4)/0.25 = 17.2 -> 17; y: (-0.6+3)/0.5 = 4.8 -> 4; z: (0.9+1)/0.125 = 15.2 -> 15
    assert res.coords.tolist() == [[0, 15, 4, 17]]
    assert res.point_to_voxel.tolist() == [0] and res.counts.tolist() == [1]


def test_all_points_dropped():
    pts = torch.tensor(
        [[100.0, 0.0, 0.0], [float("nan"), 0.0, 0.0], [0.0, -3.5, 0.0], [0.0, 0.0, float("inf")]]
    )
    res = both(pts)
    assert res.coords.shape == (0, 4) and res.counts.shape == (0,)
    assert res.point_to_voxel.tolist() == [-1, -1, -1, -1]
    assert res.num_nonfinite == 2 and res.num_out_of_range == 2


def test_batch_with_empty_element():
    pts = random_cloud(500, 9, margin=0.0)
    batch = torch.where(torch.arange(500) % 2 == 0, 0, 2).to(torch.int32)
    res = both(pts, batch_idx=batch)
    assert set(res.coords[:, 0].tolist()) == {0, 2}
    # same voxels per batch element as voxelising each element alone
    for b in (0, 2):
        alone = V.voxelize(pts[batch == b], SIZE, RANGE)
        assert torch.equal(res.coords[res.coords[:, 0] == b][:, 1:], alone.coords[:, 1:])
        assert torch.equal(res.counts[res.coords[:, 0] == b], alone.counts)


def test_non_contiguous_points():
    base = random_cloud(800, 10, extra=3)
    wide = torch.cat([torch.randn(800, 2), base], dim=1)  # xyz at columns 2..4
    view = wide[:, 2:]
    assert not view.is_contiguous()
    got = both(view)
    assert_same(got, V.voxelize(base.clone(), SIZE, RANGE))
    transposed = base.t().contiguous().t()  # (N, C) view of a (C, N) buffer
    assert not transposed.is_contiguous()
    assert_same(both(transposed), got)
    strided_rows = torch.cat([base, base], dim=1).reshape(1600, -1)[::2]
    assert_same(both(strided_rows), got)


def test_extra_feature_columns_ignored():
    pts = random_cloud(600, 11, extra=5)
    got = V.voxelize(pts, SIZE, RANGE)
    assert_same(got, V.voxelize(pts[:, :3].contiguous(), SIZE, RANGE))
    poisoned = pts.clone()
    poisoned[:, 3:] = float("nan")
    assert_same(V.voxelize(poisoned, SIZE, RANGE), got)


def test_large_input_split_path():
    n = 200_000
    assert n >= runtime.SPLIT_MIN_ELEMENTS
    pts = random_cloud(n, 12, point_range=(0.0, -20.0, -2.0, 40.0, 20.0, 2.0), margin=0.05)
    pts[::997, 1] = float("nan")
    batch = (torch.arange(n) * 3 // n).to(torch.int32)
    both(pts, (0.2, 0.2, 0.25), (0.0, -20.0, -2.0, 40.0, 20.0, 2.0), batch)


def test_occupancy_and_sort_dedup_give_the_same_voxels(monkeypatch):
    # GRID has 6144 cells: 20k points take the occupancy bitmap, and forcing the sort must not change anything
    pts = random_cloud(20_000, seed=71)
    batch = torch.randint(0, 3, (20_000,), generator=torch.Generator().manual_seed(72), dtype=torch.int32)
    calls = []
    real = H.occupancy_unique
    monkeypatch.setattr(H, "occupancy_unique", lambda k, r: calls.append(r) or real(k, r))
    got = both(pts, batch_idx=batch)
    assert calls == [3 * GRID[0] * GRID[1] * GRID[2]]
    monkeypatch.setattr(H, "OCCUPANCY_CELLS_PER_KEY", 0)
    assert_same(V.voxelize(pts, SIZE, RANGE, batch), got)
    assert len(calls) == 1


def test_large_input_forced_partitions(monkeypatch):
    pts = random_cloud(60_000, 13)
    want = R.voxelize(pts, SIZE, RANGE)
    for n in (3, 4):
        monkeypatch.setattr(runtime, "cpu_threads", lambda n=n: n)
        assert_same(V.voxelize(pts, SIZE, RANGE), want)


# ----------------------------------------------------------------------------------------- grid_size_from_range
def test_grid_size_rounding():
    assert grid_size_from_range((0, -40, -3, 75.2, 40, 1), (0.1, 0.1, 0.1)) == (752, 800, 40)
    assert grid_size_from_range((0, -39.68, -3, 69.12, 39.68, 1), (0.16, 0.16, 4)) == (432, 496, 1)
    assert grid_size_from_range((-74.88, -74.88, -2, 74.88, 74.88, 4.0), (0.32, 0.32, 0.1875)) == (
        468,
        468,
        32,
    )
    assert grid_size_from_range((0, 0, 0, 1.0, 1.0, 1.0), (0.16, 0.16, 0.3)) == (7, 7, 4)  # rounds up
    assert grid_size_from_range((0, 0, 0, 1, 1, 1), (5, 5, 5)) == (1, 1, 1)  # at least one voxel
    assert grid_size_from_range(RANGE, SIZE) == GRID


@pytest.mark.parametrize(
    "point_range,voxel_size,name",
    [
        ((0, 0, 0, 1, 1), (0.1, 0.1, 0.1), "point_range"),
        ((0, 0, 0, 1, 1, 1), (0.1, 0.1), "voxel_size"),
        ((0, 0, 0, 1, 1, 1), (0.1, 0.0, 0.1), "voxel_size"),
        ((0, 0, 0, 1, 1, 1), (0.1, -0.1, 0.1), "voxel_size"),
        ((0, 0, 0, 1, 0, 1), (0.1, 0.1, 0.1), "point_range"),
        ((0, 2, 0, 1, 1, 1), (0.1, 0.1, 0.1), "point_range"),
    ],
)
def test_grid_size_errors(point_range, voxel_size, name):
    with pytest.raises(ValueError, match=name):
        grid_size_from_range(point_range, voxel_size)
    with pytest.raises(ValueError, match=name):
        V.voxelize(torch.zeros(2, 3), voxel_size, point_range)


# ---------------------------------------------------------------------------------------------------- errors
def test_input_validation():
    pts = random_cloud(10, 14)
    with pytest.raises(ValueError, match="points"):
        V.voxelize(pts.double(), SIZE, RANGE)
    with pytest.raises(ValueError, match="points"):
        V.voxelize(pts[:, :2].contiguous(), SIZE, RANGE)
    with pytest.raises(ValueError, match="points"):
        V.voxelize(pts[:, 0].contiguous(), SIZE, RANGE)
    with pytest.raises(ValueError, match="points"):
        V.voxelize(pts.numpy(), SIZE, RANGE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_idx"):
        V.voxelize(pts, SIZE, RANGE, torch.zeros(9, dtype=torch.int32))
    with pytest.raises(ValueError, match="batch_idx"):
        V.voxelize(pts, SIZE, RANGE, torch.tensor([0] * 9 + [-1], dtype=torch.int32))
    with pytest.raises(ValueError, match="batch_idx"):
        V.voxelize(pts, SIZE, RANGE, torch.zeros(10, dtype=torch.float32))
    with pytest.raises(ValueError, match="batch_idx"):
        V.voxelize(pts, SIZE, RANGE, torch.zeros(10, 1, dtype=torch.int32))


def test_int64_batch_ids_beyond_int32_rejected():
    pts = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match="batch_idx"):
        V.voxelize(pts, (1.0, 1.0, 1.0), (0, 0, 0, 4, 4, 4), torch.tensor([0, 2**32]))
