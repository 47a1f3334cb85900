"""Mesh metrics (:mod:`sparse3d.metrics.mesh`) against analytic cases.

Oracles:

* concentric spheres of radii 1 and 1 + d: every point of one surface is exactly d from the other, so accuracy,
  completeness and Chamfer-L1 are d, Chamfer-L2 is d^2, F-score is 0 below d and 1 above, normals agree;
* the sampling noise floor: nearest-neighbour distances between ``n`` uniform samples on a surface of area ``A``
  behave like a planar Poisson process of density lambda = n / A, whose nearest-neighbour distance has mean
  1 / (2 sqrt(lambda)), mean square 1 / (pi lambda) and P(d < tau) = 1 - exp(-lambda pi tau^2);
* a unit cube translated by t along x, and a cube's bottom square against the whole cube, whose point-to-surface
  distances integrate in closed form (derivations next to each test);
* every sampled distance is at least the exact point-to-surface distance, so sampled means sit between the
  analytic value (minus the Monte-Carlo error) and the analytic value plus the noise floor.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparse3d.datasets.synth.shapes import box_mesh, superquadric_mesh
from sparse3d.io.mesh import TriangleMesh
from sparse3d.metrics.mesh import mesh_metrics, sample_surface, threshold_key

N = 100_000


def _sphere(radius: float) -> TriangleMesh:
    return TriangleMesh(*superquadric_mesh(radius, radius, radius, 1.0, 1.0))


def _cube(offset: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> TriangleMesh:
    lo = np.asarray(offset)
    return TriangleMesh(*box_mesh(lo, lo + 1.0))


def _floor(n: int, area: float) -> float:
    """Mean nearest-neighbour distance of n Poisson points on a surface of this area."""
    return 0.5 / math.sqrt(n / area)


@pytest.fixture(scope="module")
def unit_sphere() -> TriangleMesh:
    return _sphere(1.0)


# --------------------------------------------------------------------------------------------------- sampling
def test_sample_surface_is_deterministic_on_the_surface_and_area_weighted() -> None:
    # two disjoint triangles of areas 0.5 and 4.5 (z = 0 and z = 1): 10 % of the points on the first
    tri = TriangleMesh(np.float32([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 1], [0, 3, 1]]),
                       np.int64([[0, 1, 2], [3, 4, 5]]))
    points, normals = sample_surface(tri, 20_000, seed=7)
    again, _ = sample_surface(tri, 20_000, seed=7)
    other, _ = sample_surface(tri, 20_000, seed=8)
    assert points.dtype == np.float32 and points.shape == (20_000, 3) and normals.shape == (20_000, 3)
    assert np.array_equal(points, again) and not np.array_equal(points, other)
    low = points[:, 2] == 0
    share = low.mean()
    assert abs(share - 0.1) < 4 * math.sqrt(0.1 * 0.9 / 20_000), share
    # inside the triangles: x, y >= 0 and x + y <= 1 (resp. 3)
    assert (points[:, :2] >= 0).all()
    assert (points[low, :2].sum(1) <= 1 + 1e-6).all() and (points[~low, :2].sum(1) <= 3 + 1e-6).all()
    assert np.allclose(normals, [0, 0, 1])
    # uniform inside a triangle: the mean is the centroid
    assert np.allclose(points[low, :2].mean(0), [1 / 3, 1 / 3], atol=0.02)


def test_sample_surface_normals_are_the_face_normals_and_skip_degenerate_faces(unit_sphere: TriangleMesh) -> None:
    points, normals = sample_surface(unit_sphere, 5000, seed=0)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-5)
    radial = points / np.linalg.norm(points, axis=1, keepdims=True)
    assert (np.einsum("ij,ij->i", radial, normals) > 0.99).all()  # outward, counter-clockwise faces
    assert (np.abs(np.linalg.norm(points, axis=1) - 1) < 1e-3).all()
    degenerate = TriangleMesh(np.float32([[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0]]), np.int64([[0, 1, 2], [0, 1, 3]]))
    pts, nrm = sample_surface(degenerate, 1000, seed=0)
    assert (pts[:, 1] >= 0).all() and np.allclose(nrm, [0, 0, 1])  # every point on the only non-degenerate face
    empty = TriangleMesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64))
    assert sample_surface(empty, 10, 0)[0].shape == (0, 3)
    with pytest.raises(ValueError, match="n must"):
        sample_surface(unit_sphere, -1, 0)


# ------------------------------------------------------------------------------------------- analytic cases
def test_identical_meshes_score_the_sampling_noise_floor(unit_sphere: TriangleMesh) -> None:
    taus = (0.005, 0.01)
    result = mesh_metrics(unit_sphere, unit_sphere, n_points=N, seed=0, thresholds=taus, normalize="none")
    lam = N / (4 * math.pi)
    assert result["chamfer_l1"] == pytest.approx(0.5 / math.sqrt(lam), rel=0.02)
    assert result["chamfer_l2"] == pytest.approx(1 / (math.pi * lam), rel=0.03)
    assert result["chamfer_l1"] < 0.006  # ~0: 0.6 % of the radius
    for tau in taus:
        expected = 1 - math.exp(-lam * math.pi * tau * tau)
        assert result[threshold_key("recall", tau)] == pytest.approx(expected, abs=0.006)
        assert result[threshold_key("precision", tau)] == pytest.approx(expected, abs=0.006)
    assert result[threshold_key("fscore", 0.01)] > 0.91
    # with the default normalisation (tau as a fraction of the diagonal, 2 sqrt 3) every point is within tau
    default = mesh_metrics(unit_sphere, unit_sphere, n_points=N, seed=0)
    assert default["fscore@0.01"] == 1.0 and default["fscore@0.005"] > 0.999
    assert result["normal_consistency"] > 0.999


@pytest.mark.parametrize("d", [0.05, 0.2])
def test_concentric_spheres(d: float, unit_sphere: TriangleMesh) -> None:
    outer = _sphere(1.0 + d)
    taus = (d / 2, 2 * d)
    result = mesh_metrics(unit_sphere, outer, n_points=N, seed=1, thresholds=taus, normalize="none")
    floor = _floor(N, 4 * math.pi)
    # sampled distances exceed the true d by at most ~ floor^2 / d (a nearest sample off to the side)
    for key in ("accuracy", "completeness", "chamfer_l1"):
        assert d - 1e-3 < result[key] < d + 2 * floor * floor / d + 1e-3, (key, result[key])
    assert result["chamfer_l2"] == pytest.approx(d * d, rel=0.03)
    assert result[threshold_key("fscore", d / 2)] == 0.0
    assert result[threshold_key("precision", 2 * d)] == result[threshold_key("recall", 2 * d)] == 1.0
    assert result[threshold_key("fscore", 2 * d)] == 1.0
    assert result[threshold_key("tau_abs", 2 * d)] == 2 * d and result["scale"] == 1.0
    assert result["normal_consistency"] > 0.999


def test_normalisation_divides_by_the_gt_box(unit_sphere: TriangleMesh) -> None:
    """Same samples (same n and seed), so normalised values are the input-unit ones divided by the scale exactly."""
    d, n = 0.05, 20_000
    outer = _sphere(1.0 + d)
    taus = (d / 2, 2 * d)
    result = mesh_metrics(unit_sphere, outer, n_points=n, seed=1, thresholds=taus, normalize="none")
    # the default normalisation divides every distance by the ground truth's bounding-box diagonal
    scaled = mesh_metrics(unit_sphere, outer, n_points=n, seed=1, thresholds=taus)
    lo, hi = outer.vertices.min(0).astype(np.float64), outer.vertices.max(0).astype(np.float64)
    diagonal = float(np.linalg.norm(hi - lo))
    assert scaled["scale"] == pytest.approx(diagonal, rel=1e-9)
    assert scaled["chamfer_l1"] == pytest.approx(result["chamfer_l1"] / diagonal, rel=1e-9)
    assert scaled["chamfer_l2"] == pytest.approx(result["chamfer_l2"] / diagonal**2, rel=1e-9)
    assert scaled[threshold_key("tau_abs", d / 2)] == pytest.approx(d / 2 * diagonal)
    # tau = 0.025 is below d in input units but 0.025 * diagonal (~0.09) is above it
    assert result["fscore@0.025"] == 0.0 and scaled["fscore@0.025"] == 1.0
    extent = mesh_metrics(unit_sphere, outer, n_points=n, seed=1, thresholds=taus, normalize="gt_extent")
    assert extent["chamfer_l1"] == pytest.approx(result["chamfer_l1"] / float(np.max(hi - lo)), rel=1e-9)
    assert extent["convention"]["normalize"] == "gt_extent" and "longest side" in extent["convention"]["units"]


def test_translated_cube() -> None:
    """Pred = unit cube moved by t along x. Distances from the pred surface to the cube [0, 1]^3:
    right face x = 1 + t: t; left face x = t (inside): min(t, y, 1 - y, z, 1 - z), whose mean is
    int_0^t P(min(y', z') > s) ds = int_0^t (1 - 2s)^2 ds = (1 - (1 - 2t)^3) / 6; the four side faces: max(0, x - 1)
    for x uniform in [t, 1 + t], mean t^2 / 2. Accuracy = the area-weighted mean (areas 1 each, 6 in all);
    completeness is the same by symmetry."""
    t = 0.1
    analytic = (t + (1 - (1 - 2 * t) ** 3) / 6 + 4 * t * t / 2) / 6
    result = mesh_metrics(_cube((t, 0, 0)), _cube(), n_points=N, seed=2, normalize="none", thresholds=(0.05,))
    floor = _floor(N, 6.0)
    for key in ("accuracy", "completeness", "chamfer_l1"):
        assert analytic - 5e-4 < result[key] < analytic + floor, (key, result[key], analytic)
    # precision at tau < t: left face: P(m < tau) = 1 - (1 - 2 tau)^2; right face: 0; side faces: x < 1 + tau
    tau = 0.05
    precision = ((1 - (1 - 2 * tau) ** 2) + 4 * (1 + tau - t)) / 6
    assert result["precision@0.05"] == pytest.approx(precision, abs=0.01)
    # normals disagree (dot 0) only where the nearest surface is a perpendicular face: on the inner left face where
    # min(y', z') < t (share 1 - (1 - 2t)^2 of it) and possibly on the overhanging strips x > 1 of the side faces
    # (share t of each, nearest to an edge); everywhere else they agree (dot 1). Same in both directions.
    lower = 1 - ((1 - (1 - 2 * t) ** 2) + 4 * t) / 6
    upper = 1 - (1 - (1 - 2 * t) ** 2) / 6
    assert lower - 0.01 < result["normal_consistency"] < upper, (lower, result["normal_consistency"], upper)


def test_square_against_cube_is_asymmetric() -> None:
    """Pred = the cube's bottom square, gt = the cube. Accuracy ~ 0 (the square lies on the cube). Completeness:
    bottom 0, top 1, sides z (mean 1/2) -> (0 + 1 + 4/2) / 6 = 1/2; mean squared (0 + 1 + 4/3) / 6 = 7/18.
    Recall at tau: the bottom and a band of height tau on each side: (1 + 4 tau) / 6. Normal consistency: pred
    points all meet the bottom face (1); gt bottom and top points meet the square's normal (1), side points are
    perpendicular (0) -> (1 + 1/3) / 2 = 2/3."""
    square = TriangleMesh(np.float32([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]), np.int64([[0, 2, 1], [0, 3, 2]]))
    result = mesh_metrics(square, _cube(), n_points=N, seed=3, thresholds=(0.01,), normalize="none")
    assert 0 < result["accuracy"] < 1.2 * _floor(N, 6.0)
    assert result["completeness"] == pytest.approx(0.5, abs=2e-3)
    assert result["chamfer_l1"] == pytest.approx((result["accuracy"] + result["completeness"]) / 2, rel=1e-12)
    assert result["chamfer_l2"] == pytest.approx(7 / 36, abs=1e-3)
    assert result["recall@0.01"] == pytest.approx((1 + 0.04) / 6, abs=0.004)
    assert result["precision@0.01"] > 0.98
    p, r = result["precision@0.01"], result["recall@0.01"]
    assert result["fscore@0.01"] == pytest.approx(2 * p * r / (p + r), rel=1e-12)
    assert result["normal_consistency"] == pytest.approx(2 / 3, abs=0.01)


def test_normal_consistency_ignores_orientation(unit_sphere: TriangleMesh) -> None:
    flipped = unit_sphere.flipped()
    assert flipped.signed_volume() < 0 < unit_sphere.signed_volume()
    result = mesh_metrics(flipped, unit_sphere, n_points=50_000, seed=0)
    assert result["normal_consistency"] > 0.999
    _, normals = sample_surface(flipped, 100, 0)
    points, _ = sample_surface(flipped, 100, 0)
    assert (np.einsum("ij,ij->i", points, normals) < 0).all()  # the flipped normals really point inwards


# ------------------------------------------------------------------------------------------------ contracts
def test_deterministic_with_seed_and_reports_the_convention(unit_sphere: TriangleMesh) -> None:
    cube = _cube((-0.5, -0.5, -0.5))
    a = mesh_metrics(cube, unit_sphere, n_points=20_000, seed=5)
    b = mesh_metrics(cube, unit_sphere, n_points=20_000, seed=5)
    c = mesh_metrics(cube, unit_sphere, n_points=20_000, seed=6)
    assert a == b
    assert a["chamfer_l1"] != c["chamfer_l1"]
    assert a["chamfer_l1"] == pytest.approx(c["chamfer_l1"], rel=0.05)
    convention = a["convention"]
    assert convention["n_points"] == 20_000 and convention["seed"] == 5
    assert convention["normalize"] == "gt_diagonal" and convention["thresholds"] == [0.005, 0.01]
    assert "squared" in convention["chamfer_l2"] and "diagonal" in convention["units"]
    assert a["num_pred_points"] == a["num_gt_points"] == 20_000 and a["notes"] == []


@pytest.mark.parametrize("which", ["pred", "gt", "both"])
def test_empty_meshes_give_defined_values(which: str, unit_sphere: TriangleMesh) -> None:
    empty = TriangleMesh(np.zeros((3, 3)), np.zeros((0, 3), np.int64))
    flat = TriangleMesh(np.float32([[0, 0, 0], [1, 1, 1], [2, 2, 2]]), np.int64([[0, 1, 2]]))  # zero area
    pred = empty if which in ("pred", "both") else unit_sphere
    gt = flat if which in ("gt", "both") else unit_sphere
    result = mesh_metrics(pred, gt, n_points=1000, seed=0)
    for key in ("accuracy", "completeness", "chamfer_l1", "chamfer_l2"):
        assert result[key] == math.inf
    for tau in (0.005, 0.01):
        for name in ("precision", "recall", "fscore"):
            assert result[threshold_key(name, tau)] == 0.0
    assert result["normal_consistency"] == 0.0
    assert result["notes"] and "no surface" in result["notes"][0]
    assert math.isnan(result["scale"]) == (which != "pred")


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"n_points": 0}, "n_points"), ({"n_points": 2.5}, "n_points"), ({"seed": -1}, "seed"),
    ({"normalize": "bbox"}, "normalize"), ({"thresholds": (0.01, -1)}, "thresholds"),
    ({"thresholds": ()}, "thresholds"), ({"thresholds": (0.01, 0.01)}, "thresholds"),
])
def test_bad_arguments_name_the_argument(kwargs: dict, needle: str, unit_sphere: TriangleMesh) -> None:
    with pytest.raises(ValueError, match=needle):
        mesh_metrics(unit_sphere, unit_sphere, **kwargs)
    with pytest.raises(ValueError, match="gt must be a TriangleMesh"):
        mesh_metrics(unit_sphere, (unit_sphere.vertices, unit_sphere.faces))  # type: ignore[arg-type]


def test_surface_distance_has_no_sampling_floor(unit_sphere: TriangleMesh) -> None:
    """Point-to-surface: identical meshes score 0 and F = 1 even at a threshold far below the sample spacing,
    where point-to-point distances cannot; a translated cube's accuracy is the exact face offset."""
    tau = 1e-4  # the sample spacing of 20k points on the unit sphere is about 0.025 (diagonal 3.46: tau_abs 3.5e-4)
    same = mesh_metrics(unit_sphere, unit_sphere, n_points=20_000, seed=0, thresholds=(tau,), distance="surface")
    assert same["chamfer_l1"] < 1e-6 and same[threshold_key("fscore", tau)] == 1.0
    assert same["normal_consistency"] > 0.999 and "point to surface" in same["convention"]["distance"]
    floor = mesh_metrics(unit_sphere, unit_sphere, n_points=20_000, seed=0, thresholds=(tau,))
    assert floor[threshold_key("fscore", tau)] < 0.1
    # a unit cube moved by 0.01 along x: its two x faces (2 of 6 of the area) lie 0.01 from the other cube's, the
    # other four lie in the other cube's face planes (0 away, but for a 1 % strip past its edges)
    shifted = mesh_metrics(_cube((0.01, 0.0, 0.0)), _cube(), n_points=60_000, seed=0, normalize="none",
                           distance="surface")
    assert shifted["accuracy"] == pytest.approx(0.01 * 2 / 6, rel=0.03)
    with pytest.raises(ValueError, match="distance"):
        mesh_metrics(unit_sphere, unit_sphere, n_points=10, distance="nearest")
