"""Warp mesh distance queries (:mod:`sparse3d.kernels.mesh_distance`) against the brute-force torch oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparse3d.datasets.synth.shapes import superquadric_mesh
from sparse3d.kernels.mesh_distance import MeshDistance, mesh_signed_distance
from sparse3d.kernels.reference import mesh_distance as ref


def _sphere(radius: float = 0.35, rings: int = 12, segments: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    v, f = superquadric_mesh(radius, radius, radius, 1.0, 1.0, rings=rings, segments=segments)
    return torch.tensor(v, dtype=torch.float32), torch.tensor(f, dtype=torch.int64)


def _sheet(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An open, wavy height-field sheet over [-0.3, 0.3]^2 (n x n vertices), normals towards +z."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.linspace(-0.3, 0.3, n)
    x, y = torch.meshgrid(xs, xs, indexing="ij")
    z = 0.05 * torch.sin(6 * x) * torch.cos(5 * y) + 0.01 * torch.rand(n, n, generator=g)
    v = torch.stack((x, y, z), -1).reshape(-1, 3)
    i = torch.arange(n - 1)
    a = (i[:, None] * n + i[None, :]).reshape(-1)
    faces = torch.cat([torch.stack((a, a + n, a + n + 1), -1), torch.stack((a, a + n + 1, a + 1), -1)])
    return v, faces


def _dist_to_face(v: torch.Tensor, f: torch.Tensor, p: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """Distance of each point to its own reported face (oracle, float64)."""
    out = torch.empty(p.shape[0], dtype=torch.float64)
    for i in range(p.shape[0]):
        d, _, _, _ = ref.closest_points(v, f[face[i] : face[i] + 1], p[i : i + 1])
        out[i] = d[0]
    return out


def _check_against_oracle(v, f, p, mode, sign_margin=1e-4):
    dist, face = mesh_signed_distance(v, f, p, mode)
    rdist, _ = ref.mesh_signed_distance(v, f, p, mode)
    assert dist.dtype == torch.float32 and face.dtype == torch.int64 and dist.shape == (p.shape[0],)
    assert torch.allclose(dist.abs(), rdist.abs(), atol=2e-6, rtol=1e-5)
    if mode != "none":
        robust = rdist.abs() > sign_margin
        assert robust.float().mean() > 0.9
        assert torch.equal(torch.sign(dist[robust]), torch.sign(rdist[robust]))
    else:
        assert bool((dist >= 0).all())
    # The reported face realises the distance (ties may pick another face than the oracle's argmin).
    sel = torch.arange(0, p.shape[0], max(1, p.shape[0] // 40))
    assert torch.allclose(_dist_to_face(v, f, p[sel], face[sel]).float(), dist[sel].abs(), atol=2e-6, rtol=1e-5)
    return dist


@pytest.mark.parametrize("mode", ["winding", "normal", "none"])
def test_closed_sphere_matches_oracle(mode):
    v, f = _sphere()
    g = torch.Generator().manual_seed(1)
    p = torch.rand(600, 3, generator=g) - 0.5
    dist = _check_against_oracle(v, f, p, mode)
    if mode != "none":  # analytic sign of the sphere, away from its tessellation error
        r = p.norm(dim=1)
        clear = (r - 0.35).abs() > 0.03
        assert torch.equal(dist[clear] < 0, r[clear] < 0.35)


@pytest.mark.parametrize("mode", ["normal", "none"])
def test_open_sheet_matches_oracle(mode):
    v, f = _sheet()
    g = torch.Generator().manual_seed(2)
    p = (torch.rand(500, 3, generator=g) - 0.5) * torch.tensor([1.0, 1.0, 0.4])
    dist = _check_against_oracle(v, f, p, mode)
    if mode == "normal":  # well above / below the sheet interior: side of the sheet
        inner = (p[:, :2].abs() < 0.25).all(1) & (p[:, 2].abs() > 0.08)
        assert torch.equal(dist[inner] > 0, p[inner, 2] > 0)


def test_winding_sign_of_a_nearly_closed_mesh():
    """A sphere with a hole: the winding number still says inside/outside away from the hole."""
    v, f = _sphere()
    f = f[10:]  # drop a few faces at one pole
    g = torch.Generator().manual_seed(6)
    p = torch.rand(600, 3, generator=g) - 0.5
    dist, _ = mesh_signed_distance(v, f, p, "winding")
    rdist, _ = ref.mesh_signed_distance(v, f, p, "winding")
    assert torch.allclose(dist.abs(), rdist.abs(), atol=2e-6, rtol=1e-5)
    w = ref.winding_numbers(v, f, p)
    clear = ((w - 0.5).abs() > 0.1) & (rdist.abs() > 1e-3)
    assert clear.float().mean() > 0.9
    assert torch.equal(dist[clear] < 0, rdist[clear] < 0)
    r = p.norm(dim=1)
    assert torch.equal((w > 0.5)[clear & ((r - 0.35).abs() > 0.05)], (r < 0.35)[clear & ((r - 0.35).abs() > 0.05)])


def test_random_soup_and_far_points():
    g = torch.Generator().manual_seed(3)
    v = torch.rand(90, 3, generator=g) - 0.5
    f = torch.randperm(90, generator=g).reshape(30, 3)
    near = torch.rand(300, 3, generator=g) - 0.5
    far = torch.nn.functional.normalize(torch.randn(50, 3, generator=g), dim=1) * 50.0
    p = torch.cat([near, far])
    dist, _ = mesh_signed_distance(v, f, p, "none")
    rdist, _ = ref.mesh_signed_distance(v, f, p, "none")
    assert torch.allclose(dist, rdist, atol=2e-6, rtol=1e-5)
    assert bool((dist[300:] > 49.0).all())


@pytest.mark.parametrize("mode", ["winding", "normal", "none"])
def test_points_on_vertices_edges_faces(mode):
    v, f = _sphere()
    tri = v[f]
    on = torch.cat([v, (tri[:, 0] + tri[:, 1]) / 2, tri.mean(1)])
    dist, face = mesh_signed_distance(v, f, on, mode)
    # Face centroids lie below the sphere's chords' planes by float rounding only.
    assert float(dist.abs().max()) < 1e-6
    assert bool((face >= 0).all())


def test_degenerate_triangles_are_ignored():
    v, f = _sphere()
    # Zero-area faces: a repeated vertex and three collinear points far from the sphere.
    extra_v = torch.tensor([[0.45, 0.0, 0.0], [0.47, 0.0, 0.0], [0.49, 0.0, 0.0]])
    v2 = torch.cat([v, extra_v])
    n = v.shape[0]
    f2 = torch.cat([f, torch.tensor([[0, 0, 1], [n, n + 1, n + 2]])])
    p = torch.tensor([[0.47, 0.0, 0.0], [0.47, 0.01, 0.0], [0.0, 0.0, 0.0]])
    for mode in ("winding", "normal", "none"):
        dist, face = mesh_signed_distance(v2, f2, p, mode)
        rdist, _ = ref.mesh_signed_distance(v2, f2, p, mode)
        assert torch.allclose(dist, rdist, atol=2e-6)
        assert bool((face < f.shape[0]).all())  # a degenerate face is never the answer
    assert float(dist[0]) > 0.1  # the collinear "triangle" through p[0] does not count
    only_slivers, face = mesh_signed_distance(extra_v, torch.tensor([[0, 1, 2]]), p, "none")
    assert bool(torch.isinf(only_slivers).all()) and bool((face == -1).all())


def test_max_distance_prunes_consistently():
    v, f = _sphere()
    g = torch.Generator().manual_seed(4)
    p = torch.rand(400, 3, generator=g) - 0.5
    md = MeshDistance(v, f)
    full = md.query(p, "winding")
    cut = md.query(p, "winding", max_distance=0.05)
    inside_band = full.dist.abs() < 0.05
    assert torch.equal(cut.dist[inside_band], full.dist[inside_band])
    assert torch.equal(cut.face[inside_band], full.face[inside_band])
    assert bool(torch.isinf(cut.dist[~inside_band]).all()) and bool((cut.face[~inside_band] == -1).all())
    # Barycentrics reproduce the closest point at the reported distance.
    tri = v[f[full.face]]
    closest = (full.bary[:, :, None] * tri).sum(1)
    assert torch.allclose((closest - p).norm(dim=1), full.dist.abs(), atol=2e-6)
    assert torch.allclose(full.bary.sum(1), torch.ones(400), atol=1e-5)


def test_split_launch_equals_serial(monkeypatch):
    """Over the CPU split threshold the answers are the same as one serial launch."""
    from sparse3d.kernels import runtime

    v, f = _sphere()
    g = torch.Generator().manual_seed(5)
    p = torch.rand(9000, 3, generator=g) - 0.5
    split = mesh_signed_distance(v, f, p, "normal")
    monkeypatch.setenv("SPARSE3D_CPU_THREADS", "1")
    assert runtime.cpu_threads() == 1
    serial = mesh_signed_distance(v, f, p, "normal")
    assert torch.equal(split[0], serial[0]) and torch.equal(split[1], serial[1])


def test_empty_points_and_float64_inputs():
    v, f = _sphere()
    dist, face = mesh_signed_distance(v.double(), f.int(), torch.zeros(0, 3, dtype=torch.float64), "none")
    assert dist.shape == (0,) and face.shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"vertices": torch.zeros(4, 2)}, "vertices"),
        ({"faces": torch.zeros(2, 3)}, "faces"),
        ({"faces": torch.tensor([[0, 1, 99]])}, "faces"),
        ({"faces": torch.zeros(0, 3, dtype=torch.int64)}, "faces"),
        ({"points": torch.zeros(3)}, "points"),
        ({"mode": "parity"}, "mode"),
        ({"max_distance": -1.0}, "max_distance"),
        ({"vertices": torch.tensor([[math.nan, 0, 0], [1, 0, 0], [0, 1, 0]])}, "vertices"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs, name):
    args = {
        "vertices": torch.tensor(np.eye(3), dtype=torch.float32),
        "faces": torch.tensor([[0, 1, 2]]),
        "points": torch.zeros(2, 3),
        "mode": "none",
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        mesh_signed_distance(**args)
