"""Sparse SDF grids for SparseFlex (:mod:`sparse3d.models.sparseflex.structure`) against analytic fields."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparse3d.datasets.synth.shapes import superquadric_mesh
from sparse3d.kernels import flexicubes
from sparse3d.kernels.mesh_distance import MeshDistance
from sparse3d.models.sparseflex.structure import (
    Normalization,
    SparseSDFGrid,
    grid_from_mesh,
    grid_from_points,
    grid_from_sdf_volume,
    is_watertight,
    normalize_to_unit_box,
    subdivide,
)
from sparse3d.utils.errors import UserError

R_SPHERE = 0.35
TESSELLATION = 1e-3  # bound on the distance between the sphere and its 48 x 96 mesh (sagitta ~ 2e-4)


def _sphere(radius: float = R_SPHERE, inward: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    v, f = superquadric_mesh(radius, radius, radius, 1.0, 1.0, rings=48, segments=96)
    faces = torch.tensor(f, dtype=torch.int64)
    return torch.tensor(v, dtype=torch.float32), (faces.flip(1) if inward else faces)


def _square_sheet(half: float = 0.3, z0: float = 0.013, n: int = 13) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat open square ``|x|, |y| <= half`` at height ``z0``, counter-clockwise seen from +z."""
    xs = torch.linspace(-half, half, n)
    x, y = torch.meshgrid(xs, xs, indexing="ij")
    v = torch.stack((x, y, torch.full_like(x, z0)), -1).reshape(-1, 3)
    i = torch.arange(n - 1)
    a = (i[:, None] * n + i[None, :]).reshape(-1)  # vertex (ix, iy) = ix * n + iy
    faces = torch.cat([torch.stack((a, a + n, a + n + 1), -1), torch.stack((a, a + n + 1, a + 1), -1)])
    return v, faces


def _dense_corner_sdf(resolution: int, sdf) -> tuple[torch.Tensor, torch.Tensor]:
    """All cube coords (R^3, 3) and their 8 corner values of an analytic field."""
    r = torch.arange(resolution)
    coords = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    offs = torch.tensor([[m & 1, (m >> 1) & 1, (m >> 2) & 1] for m in range(8)])
    corners = (coords[:, None, :] + offs[None]).to(torch.float64) / resolution - 0.5
    return coords, sdf(corners)


def _key_set(coords: torch.Tensor, resolution: int) -> set[int]:
    c = coords.to(torch.int64)
    return set(((c[:, 0] * resolution + c[:, 1]) * resolution + c[:, 2]).tolist())


def _sign_change_cubes(resolution: int, sdf) -> torch.Tensor:
    coords, values = _dense_corner_sdf(resolution, sdf)
    change = (values < 0).any(1) & (values >= 0).any(1)
    return coords[change]


def test_sphere_band_holds_every_surface_cube_and_accurate_sdf():
    v, f = _sphere()
    res = 64
    grid = grid_from_mesh(v, f, res, coarse=16, normalization=Normalization.identity())
    grid.validate()
    assert not grid.open_surface
    analytic = lambda p: p.norm(dim=-1) - R_SPHERE  # noqa: E731
    missing = _key_set(_sign_change_cubes(res, analytic), res) - _key_set(grid.cube_coords, res)
    assert not missing
    exact = analytic(grid.corner_points().to(torch.float64)).to(torch.float32)
    assert float((grid.sdf - exact).abs().max()) < TESSELLATION
    # Band: no cube farther than band (1 voxel) + tessellation from the surface.
    assert float(analytic(grid.cube_centers()).abs().max()) <= 1.0 / res + TESSELLATION
    # Cube table consistent with the corner keys.
    keys, table = flexicubes.cube_corner_table(grid.cube_coords, res)
    assert torch.equal(keys, grid.corner_keys) and torch.equal(table, grid.cube_corners)


@pytest.mark.parametrize("shape", ["sphere", "sheet"])
def test_coarse_to_fine_equals_direct_evaluation(shape):
    v, f = _sphere() if shape == "sphere" else _square_sheet()
    norm = Normalization.identity()
    fine = grid_from_mesh(v, f, 64, coarse=8, normalization=norm)
    direct = grid_from_mesh(v, f, 64, coarse=64, normalization=norm)  # dense 64^3 in one level
    assert fine.num_cubes > 1000
    assert torch.equal(fine.cube_coords, direct.cube_coords)
    assert torch.equal(fine.sdf, direct.sdf)
    assert fine.open_surface == (shape == "sheet")


def test_open_sheet_band_stops_at_the_rim():
    half, z0, res = 0.3, 0.013, 64
    v, f = _square_sheet(half, z0)
    assert not is_watertight(f)
    grid = grid_from_mesh(v, f, res, band=2.5, normalization=Normalization.identity())
    assert grid.open_surface
    h = 1.0 / res
    c = grid.cube_centers()
    lateral = c[:, :2].abs().amax(1)
    # No cube lies beyond the rim (a 2.5-voxel band would reach 2.5 voxels past it): every cube box still
    # overlaps the sheet's prism.
    assert float(lateral.max()) - h / 2 < half
    assert float(lateral.max()) > half - h  # the band does reach the rim
    # Every cube the sheet's interior passes through is present.
    coords, values = _dense_corner_sdf(res, lambda p: p[..., 2] - z0)
    centers = (coords.to(torch.float32) + 0.5) / res - 0.5
    crossing = ((values < 0).any(1) & (values >= 0).any(1)) & (centers[:, :2].abs().amax(1) < half - h)
    assert not (_key_set(coords[crossing], res) - _key_set(grid.cube_coords, res))
    # One layer of sign: the sheet's side (normals +z), exact for a flat sheet inside the rim.
    p = grid.corner_points()
    interior = p[:, :2].abs().amax(1) < half
    assert torch.allclose(grid.sdf[interior], p[interior, 2] - z0, atol=1e-6)


def test_hollow_sphere_keeps_both_shells():
    outer_v, outer_f = _sphere(0.4)
    inner_v, inner_f = _sphere(0.2, inward=True)
    v = torch.cat([outer_v, inner_v])
    f = torch.cat([outer_f, inner_f + outer_v.shape[0]])
    res = 64
    grid = grid_from_mesh(v, f, res, coarse=16, normalization=Normalization.identity())
    analytic = lambda p: torch.maximum(p.norm(dim=-1) - 0.4, 0.2 - p.norm(dim=-1))  # noqa: E731
    missing = _key_set(_sign_change_cubes(res, analytic), res) - _key_set(grid.cube_coords, res)
    assert not missing
    r = grid.cube_centers().norm(dim=1)
    assert bool(((r - 0.2).abs() < 2.0 / res).any()) and bool(((r - 0.4).abs() < 2.0 / res).any())
    exact = analytic(grid.corner_points().to(torch.float64)).to(torch.float32)
    assert float((grid.sdf - exact).abs().max()) < TESSELLATION


def test_normalization_round_trip_and_padding():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(100, 3, generator=g) * torch.tensor([4.0, 1.0, 2.0]) + 10.0
    norm = normalize_to_unit_box(pts, padding=0.05)
    local = norm.to_local(pts)
    assert float(local.abs().max()) == pytest.approx(0.45, abs=1e-5)
    assert torch.allclose(norm.to_world(local), pts, atol=1e-4)


def test_mesh_grid_in_world_units_matches_scaled_analytic():
    v, f = _sphere()
    world = v * 3.0 + torch.tensor([1.0, -2.0, 0.5])
    grid = grid_from_mesh(world, f, 32)
    norm = grid.normalization
    radius_local = R_SPHERE * 3.0 / norm.scale
    exact = grid.corner_points().norm(dim=1) - radius_local
    assert float((grid.sdf - exact).abs().max()) < TESSELLATION * 3.0 / norm.scale
    assert np.allclose(norm.center, [1.0, -2.0, 0.5], atol=1e-5)


def test_save_load_round_trip(tmp_path):
    v, f = _square_sheet()
    grid = grid_from_mesh(v, f, 32)
    path = tmp_path / "grid.npz"
    grid.save(path)
    back = SparseSDFGrid.load(path)
    assert back.resolution == grid.resolution and back.open_surface == grid.open_surface
    for name in ("cube_coords", "corner_keys", "cube_corners", "sdf"):
        assert torch.equal(getattr(back, name), getattr(grid, name)), name
    assert np.array_equal(back.normalization.center, grid.normalization.center)
    assert back.normalization.scale == grid.normalization.scale


def _write(path, **arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def test_load_rejects_bad_files_naming_them(tmp_path):
    v, f = _sphere()
    grid = grid_from_mesh(v, f, 16)
    good = tmp_path / "good.npz"
    grid.save(good)
    with np.load(good) as data:
        arrays = {k: data[k] for k in data.files}
    cases = {
        "missing.npz": None,
        "text.npz": "text",
        "other.npz": {**arrays, "format": np.array("something else")},
        "newer.npz": {**arrays, "version": np.array(99)},
        "nosdf.npz": {k: a for k, a in arrays.items() if k != "sdf"},
        "unsorted.npz": {**arrays, "cube_coords": arrays["cube_coords"][::-1].copy()},
        "short.npz": {**arrays, "sdf": arrays["sdf"][:-1]},
        "range.npz": {**arrays, "cube_coords": arrays["cube_coords"] + 100},
        "nan.npz": {**arrays, "sdf": np.full_like(arrays["sdf"], np.nan)},
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content == "text":
            path.write_text("not an archive")
        elif content is not None:
            _write(path, **content)
        with pytest.raises(UserError) as info:
            SparseSDFGrid.load(path)
        message = str(info.value)
        assert name in message and "\n" not in message, (name, message)


def test_sdf_volume_keeps_crossings_and_samples():
    d = 33
    res = d - 1
    analytic = lambda p: p.norm(dim=-1) - 0.3  # noqa: E731
    xs = torch.linspace(-0.5, 0.5, d, dtype=torch.float64)
    grid_pts = torch.stack(torch.meshgrid(xs, xs, xs, indexing="ij"), -1)
    volume = analytic(grid_pts).numpy()
    grid = grid_from_sdf_volume(volume)
    assert grid.resolution == res
    assert not (_key_set(_sign_change_cubes(res, analytic), res) - _key_set(grid.cube_coords, res))
    assert torch.allclose(grid.sdf, analytic(grid.corner_points().to(torch.float64)).float(), atol=1e-6)
    # World units: spacing 2 and origin (10, 0, 0) scale values and positions alike; the level shifts them.
    world = grid_from_sdf_volume(volume * 2.0 * res + 1.0, level=1.0, spacing=2.0, origin=(10.0, 0.0, 0.0))
    assert torch.equal(world.cube_coords, grid.cube_coords)
    assert torch.allclose(world.sdf, grid.sdf, atol=1e-6)
    assert world.normalization.scale == pytest.approx(2.0 * res)
    assert np.allclose(world.normalization.center, [10.0 + res, res, res])


def test_subdivide_equals_direct_band_selection():
    analytic = lambda p: (p.norm(dim=-1) - 0.3).to(torch.float32)  # noqa: E731
    xs = torch.linspace(-0.5, 0.5, 33, dtype=torch.float64)
    coarse = grid_from_sdf_volume(analytic(torch.stack(torch.meshgrid(xs, xs, xs, indexing="ij"), -1)).numpy())
    fine = subdivide(coarse, analytic, band=1.0)
    assert fine.resolution == 64
    fine.validate()
    r = torch.arange(64)
    coords = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    centers = (coords.to(torch.float32) + 0.5) / 64 - 0.5
    expected = coords[analytic(centers).abs() <= 1.0 / 64]
    assert _key_set(fine.cube_coords, 64) == _key_set(expected, 64)
    assert torch.allclose(fine.sdf, analytic(fine.corner_points()), atol=1e-7)


def _sphere_samples(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    normals = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    return normals * R_SPHERE, normals


@pytest.mark.parametrize("given_normals", [True, False])
def test_point_cloud_grid(given_normals):
    pts, normals = _sphere_samples(20000)
    res = 32
    grid = grid_from_points(pts, normals if given_normals else None, res, normalization=Normalization.identity())
    grid.validate()
    # Cubes: the occupied ones dilated by one voxel, nothing else.
    occ = torch.unique(torch.floor((pts.double() + 0.5) * res).long(), dim=0)
    offs = torch.stack(torch.meshgrid(*[torch.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    expected = (occ[:, None] + offs[None]).reshape(-1, 3)
    assert _key_set(grid.cube_coords, res) == _key_set(expected, res)
    exact = grid.corner_points().norm(dim=1) - R_SPHERE
    # Tangent-plane distance of a dense sample: close to the analytic SDF near the surface, same sign.
    near = exact.abs() < 1.0 / res
    assert float((grid.sdf[near] - exact[near]).abs().max()) < 0.25 / res
    clear = exact.abs() > 0.5 / res
    assert torch.equal(grid.sdf[clear] < 0, exact[clear] < 0)


def test_bad_arguments_name_them():
    v, f = _sphere()
    with pytest.raises(ValueError, match="resolution"):
        grid_from_mesh(v, f, 0)
    with pytest.raises(ValueError, match="resolution"):
        grid_from_mesh(v, f, 3000)  # 3000 -> 1500 -> 750 -> 375: no dense start level <= 256
    with pytest.raises(ValueError, match="band"):
        grid_from_mesh(v, f, 32, band=-1.0)
    with pytest.raises(ValueError, match="sign"):
        grid_from_mesh(v, f, 32, sign="parity")
    with pytest.raises(ValueError, match="coarse"):
        grid_from_mesh(v, f, 32, coarse=0)
    with pytest.raises(ValueError, match="vertices"):
        grid_from_mesh(v[:, :2], f, 32)
    with pytest.raises(ValueError, match="faces"):
        grid_from_mesh(v, f + 10**6, 32)
    with pytest.raises(ValueError, match="volume"):
        grid_from_sdf_volume(np.zeros((4, 4, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="spacing"):
        grid_from_sdf_volume(np.zeros((4, 4, 4), dtype=np.float32), spacing=0.0)
    with pytest.raises(ValueError, match="normals"):
        grid_from_points(torch.zeros(10, 3), torch.zeros(9, 3), 16)
    with pytest.raises(ValueError, match="points"):
        grid_from_points(torch.zeros(0, 3), None, 16)
    with pytest.raises(ValueError, match="padding"):
        normalize_to_unit_box(v, padding=0.7)
    with pytest.raises(ValueError, match="sdf_fn"):
        subdivide(grid_from_mesh(v, f, 8), lambda p: torch.zeros(3))


def test_watertight_check():
    v, f = _sphere()
    assert is_watertight(f)
    assert not is_watertight(f[1:])
    assert not is_watertight(_square_sheet()[1])
    assert math.isclose(float(normalize_to_unit_box(v).scale), 0.7 / (1 - 2 / 32), rel_tol=1e-3)


def _edge_use(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique undirected edges (E, 2) of ``faces`` and how many faces use each."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(dim=1).values
    return torch.unique(e, dim=0, return_counts=True)


def test_extracted_sphere_is_watertight():
    v, f = _sphere()
    grid = grid_from_mesh(v, f, 32, normalization=Normalization.identity())
    mesh = flexicubes.extract_mesh(grid.cube_coords, grid.resolution, grid.sdf,
                                   corners=(grid.corner_keys, grid.cube_corners))
    _, counts = _edge_use(mesh.faces)
    assert mesh.faces.shape[0] > 1000 and bool((counts == 2).all())
    tri = mesh.vertices.double()[mesh.faces]
    volume = float((tri[:, 0] * torch.cross(tri[:, 1], tri[:, 2], dim=1)).sum() / 6.0)
    assert volume == pytest.approx(4.0 / 3.0 * math.pi * R_SPHERE**3, rel=0.03)
    assert float((mesh.vertices.norm(dim=1) - R_SPHERE).abs().max()) < 1.0 / 32


def test_extracted_sheet_is_one_open_layer():
    half, z0, res = 0.3, 0.013, 64
    v, f = _square_sheet(half, z0)
    grid = grid_from_mesh(v, f, res, normalization=Normalization.identity())
    mesh = flexicubes.extract_mesh(grid.cube_coords, grid.resolution, grid.sdf,
                                   corners=(grid.corner_keys, grid.cube_corners))
    h = 1.0 / res
    # One layer: every vertex on the sheet's plane, about two triangles per voxel column over the square.
    assert float((mesh.vertices[:, 2] - z0).abs().max()) < 1e-5
    one_layer = 2 * (2 * half * res) ** 2
    assert 0.8 * one_layer < mesh.faces.shape[0] < 1.05 * one_layer
    assert float(mesh.vertices[:, :2].abs().max()) < half + h
    # The boundary stays open: boundary edges form closed loops near the rim (each boundary vertex has two).
    edges, counts = _edge_use(mesh.faces)
    assert bool((counts <= 2).all())
    boundary = edges[counts == 1]
    assert boundary.shape[0] > 4 * 2 * half * res * 0.8
    _, degree = torch.unique(boundary.reshape(-1), return_counts=True)
    assert bool((degree == 2).all())
    assert float(mesh.vertices[boundary.reshape(-1), :2].abs().amax(1).min()) > half - 2 * h


@pytest.mark.parametrize("hollow", [False, True])
def test_region_winding_signs_equal_per_corner_winding(hollow):
    """Corner signs propagated over regions of provably constant winding number equal a winding query at every
    corner (the grid evaluates one query per region)."""
    v, f = _sphere(0.4)
    if hollow:
        inner_v, inner_f = _sphere(0.2, inward=True)
        f = torch.cat([f, inner_f + v.shape[0]])
        v = torch.cat([v, inner_v])
    grid = grid_from_mesh(v, f, 64, band=1.5, coarse=16, normalization=Normalization.identity())
    direct = MeshDistance(v, f).query(grid.corner_points(), "winding")
    assert torch.equal(grid.sdf < 0, direct.dist < 0)
    assert torch.allclose(grid.sdf, direct.dist, atol=1e-7)
