"""Sparse FlexiCubes extraction (:mod:`sparse3d.kernels.flexicubes`) against the dense plain-torch oracle
(:mod:`sparse3d.kernels.reference.flexicubes`) and analytic surfaces.

* With every cube of a small grid active, the sparse extraction gives the oracle's vertices (up to order), faces
  (as a set of oriented triangles), L_dev and gradients (float64 oracle autograd), in both quad-split modes, for
  random fields (which contain C16/C19-ambiguous neighbours), a sphere and a torus, with cubes in random order.
* A sphere extracted from the band of cubes around it is the dense mesh, closed and outward (positive volume).
* A plane restricted to cubes over a disc gives one open sheet with a single boundary loop.
"""

from __future__ import annotations

import math

import pytest
import torch

from sparse3d.kernels.flexicubes import (
    FlexiMesh,
    corner_positions,
    cube_corner_table,
    extract_mesh,
    sdf_sign_loss,
    sort_cubes,
    weight_l1,
)
from sparse3d.kernels.flexicubes_tables import CHECK_TABLE
from sparse3d.kernels.reference.flexicubes import flexicubes_dense


def _grid(n: int) -> torch.Tensor:
    a = torch.arange(n)
    return torch.stack(torch.meshgrid(a, a, a, indexing="ij"), -1).reshape(-1, 3)


def _sphere(p: torch.Tensor, r: float = 0.35) -> torch.Tensor:
    return p.norm(dim=1) - r


def _torus(p: torch.Tensor) -> torch.Tensor:
    q = torch.stack(((p[:, 0:2].norm(dim=1) - 0.25), p[:, 2]), 1)
    return q.norm(dim=1) - 0.1


def _canon_faces(faces: torch.Tensor) -> list[tuple[int, ...]]:
    """Oriented triangles rotated to start at their smallest index, sorted."""
    start = torch.argmin(faces, 1)
    rolled = torch.gather(faces, 1, (start[:, None] + torch.arange(3)) % 3)
    return sorted(map(tuple, rolled.tolist()))


def _match(ours: torch.Tensor, ref: torch.Tensor, tol: float = 2e-5) -> torch.Tensor:
    """Index j with ours[i] == ref[j[i]] (a bijection, positions within ``tol``)."""
    assert ours.shape == ref.shape
    d = torch.cdist(ours.double(), ref.double())
    j = d.argmin(1)
    assert float(d.min(1).values.max()) < tol
    assert torch.unique(j).numel() == ref.shape[0]
    return j


def _ambiguous_pairs(sdf: torch.Tensor, r: int) -> int:
    """Dense count of flagged cubes whose neighbour across the ambiguous face is flagged too."""
    cubes = _grid(r)
    m = torch.arange(8)
    off = torch.stack((m & 1, (m >> 1) & 1, (m >> 2) & 1), 1)
    c = cubes[:, None, :] + off
    vid = (c[..., 0] * (r + 1) + c[..., 1]) * (r + 1) + c[..., 2]
    case = ((sdf[vid] < 0).long() << m).sum(1)
    flag = CHECK_TABLE[case, 0] == 1
    nb = cubes + CHECK_TABLE[case, 1:4].long()
    ok = ((nb >= 0) & (nb < r)).all(1)
    nid = ((nb[:, 0] * r + nb[:, 1]) * r + nb[:, 2]).clamp(0, r**3 - 1)
    return int((flag & ok & flag[nid]).sum())


def _compare_dense(r: int, sdf: torch.Tensor, weights: bool, training: bool, seed: int) -> None:
    """Sparse (all cubes, shuffled) == dense oracle: vertices, faces, L_dev and all gradients."""
    gen = torch.Generator().manual_seed(seed)
    n, v = r**3, (r + 1) ** 3
    cubes = _grid(r)
    raw = [sdf.double()]
    if weights:
        raw += [
            torch.randn(v, 3, generator=gen, dtype=torch.float64) * 2,
            torch.randn(n, 12, generator=gen, dtype=torch.float64),
            torch.randn(n, 8, generator=gen, dtype=torch.float64),
            torch.randn(n, generator=gen, dtype=torch.float64) * 2,
        ]
    else:
        raw += [None, None, None, None]
    ref_in = [None if t is None else t.clone().requires_grad_() for t in raw]
    vr, fr, lr = flexicubes_dense(ref_in[0], r, *ref_in[1:], training=training)

    perm = torch.randperm(n, generator=gen)
    coords = cubes[perm].to(torch.int32)
    keys, cc = cube_corner_table(coords, r)
    assert torch.equal(keys, torch.arange(v))
    index = [keys, keys, perm, perm, perm]
    ours_in = [None if t is None else t[i].float().clone().requires_grad_() for t, i in zip(raw, index)]
    mesh = extract_mesh(coords, r, *ours_in, training=training, corners=(keys, cc))
    assert mesh.vertices.dtype == torch.float32 and mesh.faces.dtype == torch.int64

    j = _match(mesh.vertices.detach(), vr.detach())
    torch.testing.assert_close(mesh.vertices.detach().double(), vr.detach()[j], atol=2e-6, rtol=0)
    assert _canon_faces(j[mesh.faces]) == _canon_faces(fr)
    d = lr.shape[0]
    assert mesh.l_dev.shape == (d,)
    torch.testing.assert_close(mesh.l_dev.detach().double(), lr.detach()[j[:d]], atol=2e-6, rtol=0)
    # every dual vertex sits in its cube (deformation < half a voxel, crossings on deformed edges)
    rel = mesh.vertices[:d].detach() - corner_positions(keys, r)[cc[mesh.dual_cubes, 0]]
    assert bool((rel > -0.5 / r).all() & (rel < 1.5 / r).all())

    gen_w = torch.Generator().manual_seed(seed + 1)
    wv = torch.randn(vr.shape, generator=gen_w, dtype=torch.float64)
    # Without weights every crossing is the unweighted one, and the distances of symmetric patches to their centroid
    # tie, where |d_e - mean d| has a kink whose side float32 and float64 pick differently: leave L_dev out then.
    wl = torch.randn(d, generator=gen_w, dtype=torch.float64) * (1.0 if weights else 0.0)
    ((vr * wv).sum() + (lr * wl).sum()).backward()
    ((mesh.vertices * wv[j].float()).sum() + (mesh.l_dev * wl[j[:d]].float()).sum()).backward()
    for name, ours, ref, i in zip(("sdf", "deform", "beta", "alpha", "gamma"), ours_in, ref_in, index):
        if ours is None:
            continue
        g_ref = torch.zeros_like(ref) if ref.grad is None else ref.grad
        g_ours = torch.zeros_like(ours) if ours.grad is None else ours.grad
        scale = float(g_ref.abs().max()) + 1e-12
        err = float((g_ours.double() - g_ref[i]).abs().max())
        assert err <= 2e-5 * scale + 1e-6, f"{name} gradient differs by {err} (scale {scale})"


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("r,seed", [(4, 0), (7, 1)])
def test_dense_equivalence_random_field(r, seed, training):
    gen = torch.Generator().manual_seed(seed)
    sdf = torch.randn((r + 1) ** 3, generator=gen, dtype=torch.float64)
    if r == 7:
        assert _ambiguous_pairs(sdf, r) > 0  # the C16/C19 rule is exercised
    _compare_dense(r, sdf, weights=True, training=training, seed=seed)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("shape,r", [("sphere", 10), ("torus", 16)])
def test_dense_equivalence_shapes(shape, r, training):
    p = corner_positions(torch.arange((r + 1) ** 3), r).double()
    sdf = _sphere(p) if shape == "sphere" else _torus(p)
    _compare_dense(r, sdf, weights=training, training=training, seed=3)


def test_plain_dmc_without_weights_is_the_reference():
    r = 6
    gen = torch.Generator().manual_seed(5)
    _compare_dense(r, torch.randn((r + 1) ** 3, generator=gen, dtype=torch.float64), False, False, seed=5)


def _band(r: int, sdf_fn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cubes whose corners change sign (from a dense scan of this small grid), their corners and corner SDF."""
    cubes = _grid(r)
    m = torch.arange(8)
    off = torch.stack((m & 1, (m >> 1) & 1, (m >> 2) & 1), 1)
    s = sdf_fn((cubes[:, None, :] + off).reshape(-1, 3).double() / r - 0.5).reshape(-1, 8)
    band = cubes[(s < 0).any(1) & (s >= 0).any(1)]
    keys, cc = cube_corner_table(band, r)
    return band, keys, cc, sdf_fn(corner_positions(keys, r).double()).float()


def _edge_counts(faces: torch.Tensor) -> torch.Tensor:
    e = torch.cat((faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]))
    return torch.unique(torch.sort(e, 1).values, dim=0, return_counts=True)


def test_sphere_band_is_closed_outward_and_equals_dense():
    r, radius = 32, 0.35
    band, keys, cc, sdf = _band(r, _sphere)
    mesh = extract_mesh(band, r, sdf, corners=(keys, cc))
    v, f = mesh.vertices, mesh.faces
    _, counts = _edge_counts(f)
    assert bool((counts == 2).all())  # watertight, manifold edges
    directed = torch.cat((f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]))
    assert torch.unique(directed, dim=0).shape[0] == directed.shape[0]  # consistently oriented
    volume = float((v[f[:, 0]] * torch.cross(v[f[:, 1]], v[f[:, 2]], dim=1)).sum() / 6)
    assert abs(volume - 4 / 3 * math.pi * radius**3) < 0.03 * 4 / 3 * math.pi * radius**3
    assert float((v.norm(dim=1) - radius).abs().max()) < 0.5 / r
    # the band holds every cube around every crossing edge, so it is the dense mesh
    p = corner_positions(torch.arange((r + 1) ** 3), r)
    vr, fr, _ = flexicubes_dense(_sphere(p), r)
    j = _match(v, vr)
    assert _canon_faces(j[f]) == _canon_faces(fr)


def test_open_sheet_over_a_disc():
    """z = 0.03 plane; only the cubes crossing it with centre within 0.3 of the z axis are active."""
    r = 24
    cubes = _grid(r)
    centre = (cubes.double() + 0.5) / r - 0.5
    plane = lambda p: p[:, 2] - 0.03  # noqa: E731
    lo, hi = centre[:, 2] - 0.5 / r, centre[:, 2] + 0.5 / r
    band = cubes[(lo < 0.03) & (hi > 0.03) & (centre[:, :2].norm(dim=1) < 0.3)]
    keys, cc = cube_corner_table(band, r)
    mesh = extract_mesh(band, r, plane(corner_positions(keys, r).double()).float(), corners=(keys, cc))
    v, f = mesh.vertices, mesh.faces
    assert f.shape[0] > 0
    # one layer on the plane, no second shell
    torch.testing.assert_close(v[:, 2], torch.full_like(v[:, 2], 0.03), atol=1e-6, rtol=0)
    normal = torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=1)
    assert bool((normal[:, 2] > 0).all())  # all facing +z (outside = s > 0 = above)
    edges, counts = _edge_counts(f)
    assert int(counts.max()) == 2
    boundary = edges[counts == 1]
    deg = torch.bincount(boundary.reshape(-1), minlength=v.shape[0])
    assert bool(((deg == 0) | (deg == 2)).all())
    # the boundary is one loop: walk it
    nbrs: dict[int, list[int]] = {}
    for a, b in boundary.tolist():
        nbrs.setdefault(a, []).append(b)
        nbrs.setdefault(b, []).append(a)
    start = boundary[0, 0].item()
    prev, cur, steps = None, start, 0
    while True:
        nxt = nbrs[cur][0] if nbrs[cur][0] != prev else nbrs[cur][1]
        prev, cur, steps = cur, nxt, steps + 1
        if cur == start:
            break
    assert steps == boundary.shape[0]
    area = float(normal.norm(dim=1).sum() / 2)
    assert 0.6 * math.pi * 0.3**2 < area < math.pi * 0.3**2  # a disc minus a rim of at most one voxel


def test_corner_table_round_trip_and_sort():
    r = 9
    gen = torch.Generator().manual_seed(2)
    cubes = _grid(r)[torch.randperm(r**3, generator=gen)[:100]]
    keys, cc = cube_corner_table(cubes, r)
    assert bool((keys[1:] > keys[:-1]).all())
    m = torch.arange(8)
    xyz = cubes[:, None, :] + torch.stack((m & 1, (m >> 1) & 1, (m >> 2) & 1), 1)
    assert torch.equal(keys[cc], (xyz[..., 0] * (r + 1) + xyz[..., 1]) * (r + 1) + xyz[..., 2])
    assert torch.unique(cc).numel() == keys.numel()  # every key used
    torch.testing.assert_close(corner_positions(keys, r)[cc], xyz.float() / r - 0.5)
    sorted_coords, order = sort_cubes(cubes, r)
    assert torch.equal(sorted_coords, cubes[order])
    lin = (sorted_coords[:, 0] * r + sorted_coords[:, 1]) * r + sorted_coords[:, 2]
    assert bool((lin[1:] > lin[:-1]).all())


def test_empty_and_border_only_inputs():
    r = 4
    cubes = torch.tensor([[1, 1, 1]])
    keys, cc = cube_corner_table(cubes, r)
    sdf = torch.tensor([-1.0] + [1.0] * 7)
    mesh = extract_mesh(cubes, r, sdf)  # one surface cube: its edges have one cube, no face
    assert mesh.vertices.shape == (0, 3) and mesh.faces.shape == (0, 3) and mesh.l_dev.shape == (0,)
    assert mesh.edges.shape == (3, 2)  # but its three sign-changing edges are listed
    empty = extract_mesh(torch.empty((0, 3), dtype=torch.int64), r, torch.empty(0))
    assert empty.faces.shape == (0, 3) and empty.vertices.shape == (0, 3)
    outside = extract_mesh(_grid(r), r, torch.ones((r + 1) ** 3), training=True)
    assert outside.faces.shape == (0, 3) and outside.edges.shape == (0, 2)


def test_sdf_sign_loss_and_weight_l1():
    r = 5
    gen = torch.Generator().manual_seed(4)
    sdf = torch.randn((r + 1) ** 3, generator=gen)
    mesh = extract_mesh(_grid(r), r, sdf)
    # oracle: every grid edge of the dense grid with a sign change
    p = _grid(r + 1)
    pairs = []
    for axis in range(3):
        q = p[p[:, axis] < r]
        q2 = q.clone()
        q2[:, axis] += 1
        a = (q[:, 0] * (r + 1) + q[:, 1]) * (r + 1) + q[:, 2]
        b = (q2[:, 0] * (r + 1) + q2[:, 1]) * (r + 1) + q2[:, 2]
        keep = (sdf[a] < 0) != (sdf[b] < 0)
        pairs.append(torch.stack((a[keep], b[keep]), 1))
    pairs = torch.cat(pairs)
    assert sorted(map(tuple, mesh.edges.tolist())) == sorted(map(tuple, pairs.tolist()))
    sa, sb = sdf[pairs[:, 0]].double(), sdf[pairs[:, 1]].double()
    expected = (
        -((sb > 0) * torch.log(torch.sigmoid(sa)) + (sb <= 0) * torch.log(1 - torch.sigmoid(sa))).mean()
        - ((sa > 0) * torch.log(torch.sigmoid(sb)) + (sa <= 0) * torch.log(1 - torch.sigmoid(sb))).mean()
    )
    torch.testing.assert_close(sdf_sign_loss(mesh, sdf).double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdf_sign_loss(mesh.edges, sdf), sdf_sign_loss(mesh, sdf))
    beta = torch.randn(7, 12, generator=gen)
    alpha = torch.randn(7, 8, generator=gen)
    torch.testing.assert_close(weight_l1(beta, alpha), (beta.abs().sum() + alpha.abs().sum()) / (7 * 20))
    torch.testing.assert_close(weight_l1(None, alpha), alpha.abs().mean())


def test_reference_gradcheck():
    """The oracle is differentiable in float64 (finite differences), so its gradients can judge ours."""
    r = 2
    gen = torch.Generator().manual_seed(7)
    sdf = (torch.rand(27, generator=gen, dtype=torch.float64) - 0.4).requires_grad_()
    ws = [
        (torch.randn(s, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
        for s in ((27, 3), (8, 12), (8, 8), (8,))
    ]

    def fn(*args):
        v, _, l_dev = flexicubes_dense(args[0], r, *args[1:], training=True)
        return v, l_dev

    assert flexicubes_dense(sdf, r)[1].shape[0] > 0
    assert torch.autograd.gradcheck(fn, (sdf, *ws), eps=1e-6, atol=1e-5)


def test_mesh_type():
    mesh = extract_mesh(_grid(3), 3, torch.randn(64, generator=torch.Generator().manual_seed(0)))
    assert isinstance(mesh, FlexiMesh)
    assert mesh.dual_cubes.shape == mesh.l_dev.shape


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(resolution=0), "resolution"),
        (dict(cube_coords=torch.tensor([[0, 0, 4]])), "cube_coords"),
        (dict(cube_coords=torch.tensor([[0, 0, -1]])), "cube_coords"),
        (dict(cube_coords=torch.tensor([[0.0, 0.0, 0.0]])), "cube_coords"),
        (dict(cube_coords=torch.tensor([[0, 0, 0], [0, 0, 0]]), sdf=torch.zeros(8)), "duplicate"),
        (dict(sdf=torch.zeros(7)), "sdf"),
        (dict(sdf=torch.zeros(8, dtype=torch.float64)), "sdf"),
        (dict(deform=torch.zeros(8, 2)), "deform"),
        (dict(beta=torch.zeros(1, 8)), "beta"),
        (dict(alpha=torch.zeros(2, 8)), "alpha"),
        (dict(gamma=torch.zeros(1, 1)), "gamma"),
        (dict(corners=(torch.arange(8), torch.zeros(2, 8, dtype=torch.int64))), "corners"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(cube_coords=torch.tensor([[0, 0, 0]]), resolution=4, sdf=torch.zeros(8))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        extract_mesh(args.pop("cube_coords"), args.pop("resolution"), args.pop("sdf"), **args)
    with pytest.raises(ValueError, match="cube_coords"):
        cube_corner_table(torch.zeros(3, 2, dtype=torch.int64), 4)
    with pytest.raises(ValueError, match="corner_keys"):
        corner_positions(torch.tensor([125]), 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("training", [False, True])
def test_cuda_matches_cpu(training):
    r = 6
    gen = torch.Generator().manual_seed(11)
    n, v = r**3, (r + 1) ** 3
    cubes = _grid(r)[torch.randperm(n, generator=gen)]
    keys, _ = cube_corner_table(cubes, r)
    raw = [
        torch.randn(v, generator=gen),
        torch.randn(v, 3, generator=gen),
        torch.randn(n, 12, generator=gen),
        torch.randn(n, 8, generator=gen),
        torch.randn(n, generator=gen),
    ]
    results = []
    for device in ("cpu", "cuda"):
        ins = [t.to(device).requires_grad_() for t in raw]
        mesh = extract_mesh(cubes.to(device), r, *ins, training=training)
        (mesh.vertices.square().sum() + mesh.l_dev.sum()).backward()
        results.append((mesh, [t.grad.cpu() if t.grad is not None else torch.zeros(t.shape) for t in ins]))
    (m_cpu, g_cpu), (m_gpu, g_gpu) = results
    torch.testing.assert_close(m_gpu.vertices.detach().cpu(), m_cpu.vertices.detach(), atol=1e-5, rtol=1e-5)
    assert torch.equal(m_gpu.faces.cpu(), m_cpu.faces)
    assert torch.equal(m_gpu.edges.cpu(), m_cpu.edges)
    for a, b in zip(g_gpu, g_cpu):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_split_cpu_launches_match_single_launch(monkeypatch):
    """The CPU launches cut into chunks over the cores give the single-launch result."""
    import sparse3d.kernels.flexicubes as fc
    from sparse3d.kernels import runtime

    r = 12
    gen = torch.Generator().manual_seed(9)
    sdf = torch.randn((r + 1) ** 3, generator=gen)
    beta = torch.randn(r**3, 12, generator=gen)
    monkeypatch.setenv("SPARSE3D_CPU_THREADS", "1")
    single = extract_mesh(_grid(r), r, sdf, beta=beta)
    monkeypatch.setenv("SPARSE3D_CPU_THREADS", "3")
    monkeypatch.setattr(runtime, "SPLIT_MIN_ELEMENTS", 2)
    monkeypatch.setattr(fc, "DUAL_SPLIT_MIN", 2)
    split = extract_mesh(_grid(r), r, sdf, beta=beta)
    assert torch.equal(single.vertices, split.vertices)
    assert torch.equal(single.faces, split.faces)
    assert torch.equal(single.l_dev, split.l_dev)


@pytest.mark.parametrize("training", [False, True])
def test_random_subset_of_cubes_matches_masked_oracle(training):
    """Sparse extraction over a random half of the cubes == the dense oracle with the other cubes masked out
    (no dual vertices there, no quads around their edges, no C16/C19 neighbour)."""
    r = 8
    gen = torch.Generator().manual_seed(13)
    n, v = r**3, (r + 1) ** 3
    active = torch.rand(n, generator=gen) < 0.6
    sdf = torch.randn(v, generator=gen, dtype=torch.float64)
    beta = torch.randn(n, 12, generator=gen, dtype=torch.float64)
    gamma = torch.randn(n, generator=gen, dtype=torch.float64)
    vr, fr, lr = flexicubes_dense(sdf, r, beta=beta, gamma=gamma, training=training, active=active)
    idx = torch.nonzero(active).squeeze(1)
    coords = _grid(r)[idx]
    keys, cc = cube_corner_table(coords, r)
    mesh = extract_mesh(
        coords, r, sdf[keys].float(), beta=beta[idx].float(), gamma=gamma[idx].float(), training=training
    )
    assert fr.shape[0] > 0
    j = _match(mesh.vertices, vr.float())
    assert _canon_faces(j[mesh.faces]) == _canon_faces(fr)
    torch.testing.assert_close(mesh.l_dev.double(), lr[j[: lr.shape[0]]], atol=2e-6, rtol=0)
