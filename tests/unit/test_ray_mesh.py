"""Warp BVH ray casting (``sparse3d.kernels.ray_mesh``) against the brute-force Moller--Trumbore oracle and
analytic cases: random triangle soups, misses, rays exactly through edges and vertices (watertightness), rays
from inside a closed mesh, ``t_min`` / ``t_max`` clipping, BVH refits and argument validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparse3d.datasets.synth.shapes import box_mesh, superquadric_mesh
from sparse3d.kernels.ray_mesh import SPLIT_MIN_RAYS, RayMesh, cast_rays
from sparse3d.kernels.reference import ray_mesh as ref


def _soup(seed: int, faces: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Random triangles of varied size in the unit cube (shared and unshared vertices)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(faces, 1, 3, generator=g)
    size = 0.02 + 0.2 * torch.rand(faces, 1, 1, generator=g)
    v = (centres + size * torch.randn(faces, 3, 3, generator=g)).reshape(-1, 3)
    f = torch.arange(3 * faces).view(faces, 3)
    return v, f


def _rays(seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    o = torch.rand(count, 3, generator=g) * 1.6 - 0.3
    d = torch.randn(count, 3, generator=g)
    d = d * (0.5 + torch.rand(count, 1, generator=g))  # not unit length: t is in multiples of |d|
    return o, d


def _assert_matches_oracle(v, f, o, d, t_min=0.0, t_max=math.inf) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    face, t, bary = cast_rays(v, f, o, d, t_min, t_max)
    rf, rt, rb = ref.cast_rays(v, f, o, d, t_min, t_max)
    assert face.dtype == torch.int64 and t.dtype == torch.float32 and bary.shape == (o.shape[0], 2)
    assert torch.equal(face, rf)
    hit = face >= 0
    assert torch.isinf(t[~hit]).all() and (bary[~hit] == 0).all()
    torch.testing.assert_close(t[hit], rt[hit], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bary[hit], rb[hit], rtol=0, atol=1e-4)
    return face, t, bary


@pytest.mark.parametrize("seed", [0, 1])
def test_random_soup_matches_oracle(seed: int) -> None:
    v, f = _soup(seed)
    o, d = _rays(seed + 10, SPLIT_MIN_RAYS + 904)  # large enough to take the split CPU launch
    face, t, bary = _assert_matches_oracle(v, f, o, d)
    hit = face >= 0
    assert 0.2 < hit.float().mean() < 0.95  # a real mix of hits and misses
    # The reported point lies on the reported triangle at the reported t.
    tri = v[f[face[hit]]]
    b1, b2 = bary[hit, 0:1], bary[hit, 1:2]
    point = (1 - b1 - b2) * tri[:, 0] + b1 * tri[:, 1] + b2 * tri[:, 2]
    torch.testing.assert_close(point, o[hit] + t[hit, None] * d[hit], rtol=0, atol=1e-4)


def test_per_ray_interval_matches_oracle() -> None:
    v, f = _soup(3)
    o, d = _rays(4, 3000)
    g = torch.Generator().manual_seed(5)
    lo = torch.rand(3000, generator=g) * 0.5
    hi = lo + torch.rand(3000, generator=g) * 1.5
    _assert_matches_oracle(v, f, o, d, lo, hi)
    _assert_matches_oracle(v, f, o, d, 0.3, hi)  # scalar and per-ray ends mixed
    _assert_matches_oracle(v, f, o, d, lo, math.inf)


def test_misses_and_empty_batches() -> None:
    v, f = _soup(6, faces=50)
    o = torch.full((7, 3), 5.0)
    d = torch.tensor([[1.0, 0.0, 0.0]]).repeat(7, 1)  # away from the unit cube
    face, t, bary = cast_rays(v, f, o, d)
    assert (face == -1).all() and torch.isinf(t).all() and (bary == 0).all()
    face, t, bary = cast_rays(v, f, o[:0], d[:0])
    assert face.shape == (0,) and t.shape == (0,) and bary.shape == (0, 2)


def test_hits_exactly_on_edges_and_vertices_are_watertight() -> None:
    # Unit square split along its diagonal (0,0)-(1,1); rays straight down onto the diagonal, the shared
    # vertices and the outer edges, all exactly representable.
    v = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    xy = torch.tensor([[0.5, 0.5], [0.25, 0.25], [0.0, 0.0], [1.0, 1.0], [0.5, 0.0], [0.0, 0.5], [0.75, 0.75]])
    o = torch.cat([xy, torch.full((len(xy), 1), 2.0)], 1)
    d = torch.tensor([[0.0, 0.0, -1.0]]).repeat(len(xy), 1)
    face, t, bary = cast_rays(v, f, o, d)
    rf, rt, _ = ref.cast_rays(v, f, o, d)
    assert (face >= 0).all() and (rf >= 0).all()
    torch.testing.assert_close(t, torch.full_like(t, 2.0))
    torch.testing.assert_close(rt, torch.full_like(rt, 2.0))
    # Whichever triangle is reported, the barycentrics reconstruct the exact point.
    tri = v[f[face]]
    point = (1 - bary[:, 0:1] - bary[:, 1:2]) * tri[:, 0] + bary[:, 0:1] * tri[:, 1] + bary[:, 1:2] * tri[:, 2]
    torch.testing.assert_close(point[:, :2], xy, rtol=0, atol=1e-6)


def test_rays_through_every_vertex_and_edge_of_a_closed_mesh_never_miss() -> None:
    vn, fn = superquadric_mesh(1.0, 1.0, 1.0, 1.0, 1.0, rings=12, segments=24)
    v = torch.tensor(vn, dtype=torch.float32)
    f = torch.tensor(fn)
    edges = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    targets = torch.cat([v, 0.5 * (v[edges[:, 0]] + v[edges[:, 1]])])
    o = torch.zeros_like(targets)  # from the centre, inside the closed mesh
    face, t, _ = cast_rays(v, f, o, targets)
    assert (face >= 0).all()
    torch.testing.assert_close(t, torch.ones_like(t), rtol=0, atol=1e-5)  # the target itself, at t = 1


def test_rays_from_inside_a_box_hit_its_walls_analytically() -> None:
    vn, fn = box_mesh((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
    v, f = torch.tensor(vn, dtype=torch.float32), torch.tensor(fn)
    g = torch.Generator().manual_seed(7)
    d = torch.randn(2000, 3, generator=g)
    o = (torch.rand(2000, 3, generator=g) - 0.5) * 1.0
    face, t, _ = _assert_matches_oracle(v, f, o, d)
    assert (face >= 0).all()  # no back-face culling: the inside of every wall is hit
    # Distance to the slab walls: min over axes of (sign(d) - o) / d.
    expected = ((torch.sign(d) - o) / d).min(1).values
    torch.testing.assert_close(t, expected, rtol=1e-5, atol=1e-5)


def test_t_min_t_max_select_between_two_planes() -> None:
    quad = torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
    v = torch.cat([quad + torch.tensor([0.0, 0.0, 1.0]), quad + torch.tensor([0.0, 0.0, 2.0])])
    f = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    o = torch.tensor([[0.1, 0.2, 0.0]]).repeat(5, 1)
    d = torch.tensor([[0.0, 0.0, 1.0]]).repeat(5, 1)
    lo = torch.tensor([0.0, 1.5, 0.0, 2.5, 0.9])
    hi = torch.tensor([10.0, 10.0, 0.5, 10.0, 1.1])
    face, t, _ = cast_rays(v, f, o, d, lo, hi)
    assert (face[[0, 4]] < 2).all() and (face[1] >= 2) and (face[[2, 3]] == -1).all()
    torch.testing.assert_close(t[[0, 1, 4]], torch.tensor([1.0, 2.0, 1.0]))
    # An interval that ends exactly on a hit keeps it (closed interval).
    face, t, _ = cast_rays(v, f, o[:1], d[:1], 0.0, 1.0)
    assert face.item() in (0, 1) and t.item() == pytest.approx(1.0)


def test_refit_after_moving_vertices_equals_a_fresh_build() -> None:
    v, f = _soup(8, faces=200)
    o, d = _rays(9, 1500)
    mesh = RayMesh(v, f)
    moved = v * 1.1 + torch.tensor([0.05, -0.02, 0.1])
    mesh.update(moved)
    face, t, bary = mesh.cast(o, d)
    rf, rt, rb = ref.cast_rays(moved, f, o, d)
    assert torch.equal(face, rf)
    hit = face >= 0
    torch.testing.assert_close(t[hit], rt[hit], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mesh.vertices, moved)


def test_float64_inputs_and_int32_faces() -> None:
    v, f = _soup(11, faces=80)
    o, d = _rays(12, 400)
    face, t, _ = cast_rays(v.double(), f.int(), o.double(), d.double())
    rf, rt, _ = ref.cast_rays(v, f, o, d)
    assert torch.equal(face, rf)
    torch.testing.assert_close(t[face >= 0], rt[face >= 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vertices": torch.zeros(4, 2)}, "vertices"),
        ({"faces": torch.tensor([[0, 1, 9]])}, "faces"),
        ({"faces": torch.zeros(0, 3, dtype=torch.int64)}, "faces"),
        ({"faces": torch.tensor([[0.0, 1.0, 2.0]])}, "faces"),
        ({"origins": torch.zeros(3, 3)}, "origins"),
        ({"directions": torch.zeros(2, 4)}, "directions"),
        ({"t_min": torch.zeros(5)}, "t_min"),
        ({"t_max": "far"}, "t_max"),
        ({"t_min": -math.inf}, "t_min"),
        ({"vertices": torch.tensor([[0.0, 0.0, math.nan], [1.0, 0, 0], [0, 1.0, 0]])}, "vertices"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs: dict, match: str) -> None:
    args = {
        "vertices": torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
        "faces": torch.tensor([[0, 1, 2]]),
        "origins": torch.zeros(2, 3),
        "directions": torch.ones(2, 3),
        "t_min": 0.0,
        "t_max": math.inf,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        cast_rays(**args)


def test_update_rejects_other_shapes() -> None:
    v, f = _soup(13, faces=10)
    mesh = RayMesh(v, f)
    with pytest.raises(ValueError, match="vertices"):
        mesh.update(v[:-1])
    assert mesh.num_faces == 10 and np.isfinite(mesh.vertices.numpy()).all()
