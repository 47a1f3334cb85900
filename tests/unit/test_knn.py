"""The grid k-NN search (:mod:`sparse3d.kernels.knn`) against its brute-force oracle.

Distances must equal the oracle's on random and adversarial clouds (clusters of very different scales,
duplicates, flat and thin clouds, points far apart, huge offsets, lattices full of ties, tiny sets, k beyond the
other points); indices, where ties allow another choice, must be consistent: distinct, never the query itself,
and at the distance reported. The search must not depend on how the CPU launch is split.
"""

from __future__ import annotations

import math

import pytest
import torch

from sparse3d.kernels.knn import knn_distances
from sparse3d.kernels.reference.knn import knn_distances as knn_reference
from sparse3d.models.splatting.gaussians import knn_mean_distance

CUDA = torch.cuda.is_available()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_consistent(points: torch.Tensor, sqdist: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> None:
    """Indices: -1 exactly where the distance is inf, never the query, distinct per row, at the stated distance."""
    n, k = sqdist.shape
    assert index.dtype == torch.int64 and sqdist.dtype == torch.float32
    missing = index < 0
    assert torch.equal(missing, torch.isinf(sqdist))
    assert not (index == rows[:, None]).any()
    assert bool((index < points.shape[0]).all())
    assert bool((sqdist[:, 1:] >= sqdist[:, :-1]).logical_or(torch.isinf(sqdist[:, 1:])).all())  # ascending
    for j in range(1, k):
        same = (index[:, j:] == index[:, : k - j]) & ~missing[:, j:]
        assert not same.any(), "a neighbour is listed twice"
    safe = index.clamp(min=0)
    diff = points[safe] - points[rows][:, None, :]
    recomputed = diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] + diff[..., 2] * diff[..., 2]
    torch.testing.assert_close(
        torch.where(missing, torch.zeros_like(sqdist), sqdist),
        torch.where(missing, torch.zeros_like(recomputed), recomputed),
        rtol=1e-6,
        atol=0.0,
    )


def _check(points: torch.Tensor, k: int, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ours equals the oracle's distances on ``rows`` (default all) and its indices are consistent."""
    sqdist, index = knn_distances(points, k)
    n = points.shape[0]
    assert sqdist.shape == (n, k) and index.shape == (n, k)
    rows = torch.arange(n) if rows is None else rows
    ref_d, _ = knn_reference(points, k, rows)
    torch.testing.assert_close(sqdist[rows], ref_d, rtol=1e-6, atol=0.0)
    _assert_consistent(points.contiguous(), sqdist[rows], index[rows], rows)
    return sqdist, index


def _uniform(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, generator=_gen(seed)) * 10.0


def _clusters(seed: int) -> torch.Tensor:
    g = _gen(seed)
    parts = [
        torch.randn(400, 3, generator=g) * 1e-3 + torch.tensor([5.0, 5.0, 5.0]),
        torch.randn(400, 3, generator=g) * 1.0,
        torch.randn(200, 3, generator=g) * 100.0 + torch.tensor([300.0, -200.0, 50.0]),
        torch.rand(30, 3, generator=g) * 2000.0 - 1000.0,  # scattered outliers
    ]
    return torch.cat(parts)[torch.randperm(1030, generator=g)]


def _duplicates(seed: int) -> torch.Tensor:
    base = torch.rand(150, 3, generator=_gen(seed))
    return base.repeat(7, 1)[torch.randperm(1050, generator=_gen(seed + 1))]


def _plane(seed: int) -> torch.Tensor:
    xy = torch.rand(1500, 2, generator=_gen(seed)) * 4.0
    return torch.cat([xy, torch.full((1500, 1), 2.5)], 1)


def _axis_line(seed: int) -> torch.Tensor:
    t = torch.rand(1200, 1, generator=_gen(seed)) * 50.0
    return torch.cat([torch.zeros(1200, 1), t, torch.zeros(1200, 1)], 1)


def _diagonal_line(seed: int) -> torch.Tensor:
    t = torch.rand(1200, 1, generator=_gen(seed))
    return t * torch.tensor([[3.0, -1.0, 2.0]]) + torch.tensor([[1.0, 1.0, 1.0]])


def _far_apart(seed: int) -> torch.Tensor:
    return (torch.rand(300, 3, generator=_gen(seed)) * 2.0 - 1.0) * 1e6


def _dense_and_sparse(seed: int) -> torch.Tensor:
    """A cluster of 1e-4 spacing next to points kilometres away: many levels, restarts and full scans."""
    g = _gen(seed)
    dense = torch.rand(800, 3, generator=g) * 1e-2
    sparse = torch.rand(40, 3, generator=g) * 1e4
    return torch.cat([dense, sparse, torch.tensor([[-5e3, 0.0, 0.0]])])


def _offset(seed: int) -> torch.Tensor:
    """Large coordinates with small spacing: float32 rounding in the binning is a large share of a cell."""
    return torch.rand(1000, 3, generator=_gen(seed)) * 20.0 + torch.tensor([1e5, -2e5, 3e4])


def _lattice() -> torch.Tensor:
    g = torch.arange(9, dtype=torch.float32) * 0.5
    return torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)


CLOUDS = {
    "uniform": lambda: _uniform(2000, 0),
    "clusters": lambda: _clusters(1),
    "duplicates": lambda: _duplicates(2),
    "plane": lambda: _plane(3),
    "axis_line": lambda: _axis_line(4),
    "diagonal_line": lambda: _diagonal_line(5),
    "far_apart": lambda: _far_apart(6),
    "dense_and_sparse": lambda: _dense_and_sparse(7),
    "offset": lambda: _offset(8),
    "lattice": _lattice,
}


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("name", sorted(CLOUDS))
def test_matches_the_oracle(name: str, k: int) -> None:
    _check(CLOUDS[name](), k)


def test_duplicates_are_neighbours_at_distance_zero() -> None:
    points = _duplicates(2)  # every position appears 7 times
    sqdist, index = _check(points, 8)
    assert bool((sqdist[:, :6] == 0).all()) and bool((sqdist[:, 6:] > 0).all())
    same = (points[index[:, :6]] == points[:, None, :]).all(-1)
    assert bool(same.all())


def test_all_points_identical() -> None:
    sqdist, index = _check(torch.full((20, 3), 3.25), 4)
    assert bool((sqdist == 0).all())


def test_analytic_distances() -> None:
    points = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0], [7.0, 0, 0], [0.0, 2, 0]])
    sqdist, index = knn_distances(points, 2)
    expected = torch.tensor([[1.0, 4.0], [1.0, 4.0], [4.0, 9.0], [16.0, 36.0], [4.0, 5.0]])
    torch.testing.assert_close(sqdist, expected)
    assert index[0].tolist() == [1, 4] and index[3].tolist() == [2, 1] and index[4].tolist() == [0, 1]
    ref_d, ref_i = knn_reference(points, 2)
    torch.testing.assert_close(ref_d, expected)
    assert torch.equal(ref_i, index)  # no ties here, so the indices agree as well


@pytest.mark.parametrize("n, k", [(1, 1), (1, 3), (2, 1), (2, 3), (4, 6), (5, 4)])
def test_tiny_sets_and_k_beyond_the_other_points(n: int, k: int) -> None:
    points = torch.randn(n, 3, generator=_gen(n * 10 + k))
    sqdist, index = _check(points, k)
    have = min(k, n - 1)
    assert bool(torch.isfinite(sqdist[:, :have]).all())
    assert bool(torch.isinf(sqdist[:, have:]).all()) and bool((index[:, have:] == -1).all())


def test_empty_input() -> None:
    sqdist, index = knn_distances(torch.empty(0, 3), 3)
    assert sqdist.shape == (0, 3) and index.shape == (0, 3)
    assert sqdist.dtype == torch.float32 and index.dtype == torch.int64


def test_non_contiguous_input() -> None:
    wide = torch.randn(700, 5, generator=_gen(11))
    sliced = wide[:, 1:4]
    assert not sliced.is_contiguous()
    d_sliced, i_sliced = _check(sliced, 5)
    transposed = sliced.contiguous().t().contiguous().t()
    assert not transposed.is_contiguous()
    d_t, i_t = knn_distances(transposed, 5)
    assert torch.equal(d_t, d_sliced) and torch.equal(i_t, i_sliced)


def test_result_does_not_depend_on_the_cpu_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """40k points are split over the CPU threads; 1 and 3 threads give bit-identical output."""
    g = _gen(12)
    points = torch.cat([torch.rand(30_000, 3, generator=g) * 50.0, torch.randn(10_000, 3, generator=g)])
    monkeypatch.setenv("SPARSE3D_CPU_THREADS", "3")
    split_d, split_i = knn_distances(points, 4)
    monkeypatch.setenv("SPARSE3D_CPU_THREADS", "1")
    one_d, one_i = knn_distances(points, 4)
    assert torch.equal(split_d, one_d) and torch.equal(split_i, one_i)
    rows = torch.randperm(points.shape[0], generator=g)[:1500]
    ref_d, _ = knn_reference(points, 4, rows)
    torch.testing.assert_close(split_d[rows], ref_d, rtol=1e-6, atol=0.0)
    _assert_consistent(points, split_d[rows], split_i[rows], rows)


def test_invalid_arguments_name_the_argument() -> None:
    points = torch.rand(10, 3)
    with pytest.raises(ValueError, match="points"):
        knn_distances(points.double(), 3)
    with pytest.raises(ValueError, match="points"):
        knn_distances(torch.rand(10, 2), 3)
    with pytest.raises(ValueError, match="points"):
        knn_distances(torch.rand(10), 3)
    with pytest.raises(ValueError, match="points"):
        knn_distances(points.numpy(), 3)  # type: ignore[arg-type]
    bad = points.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="points must be finite"):
        knn_distances(bad, 3)
    for k in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="k must"):
            knn_distances(points, k)  # type: ignore[arg-type]


def test_knn_mean_distance_is_the_rms_of_the_oracle() -> None:
    points = _clusters(13)
    ref_d, _ = knn_reference(points, 3)
    torch.testing.assert_close(knn_mean_distance(points, k=3), ref_d.mean(1).sqrt(), rtol=1e-6, atol=0.0)
    d64 = knn_mean_distance(points.double(), k=3)
    assert d64.dtype == torch.float64
    torch.testing.assert_close(d64, ref_d.mean(1).sqrt().double(), rtol=1e-6, atol=0.0)
    three = torch.tensor([[0.0, 0, 0], [3.0, 0, 0], [0.0, 4, 0]])
    assert float(knn_mean_distance(three, k=5)[0]) == pytest.approx(math.sqrt(12.5))  # k capped at N - 1
    assert knn_mean_distance(torch.zeros(1, 3)).tolist() == [1.0]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    for name in ("uniform", "clusters", "duplicates", "dense_and_sparse"):
        points = CLOUDS[name]()
        cpu_d, _ = knn_distances(points, 5)
        gpu_d, gpu_i = knn_distances(points.cuda(), 5)
        assert gpu_d.device.type == "cuda"
        torch.testing.assert_close(gpu_d.cpu(), cpu_d, rtol=1e-6, atol=0.0)
        _assert_consistent(points, gpu_d.cpu(), gpu_i.cpu(), torch.arange(points.shape[0]))
