"""The mesh ray caster against analytic cases: planes, spheres, Lambert and Blinn-Phong formulas, shadows,
projection round trips, and its own ray generation against ``Cameras.pixel_rays``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse3d.cameras import Cameras
from sparse3d.datasets.synth.shapes import superquadric_mesh
from sparse3d.render.mesh_raycast import (
    MeshRaycaster,
    MeshWithMaterial,
    PointLight,
    camera_rays,
    compose_layers,
    render_meshes,
    vertex_normals,
)

W, H, F = 64, 48, 60.0


def _camera(width: int = W, height: int = H, skew: float = 0.0, R: np.ndarray | None = None,
            centre: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Cameras:
    K = np.array([[F, skew, width / 2 + 0.3], [0.0, F * 1.05, height / 2 - 0.2], [0.0, 0.0, 1.0]])
    R = np.eye(3) if R is None else R
    t = -R @ np.asarray(centre, dtype=np.float64)
    return Cameras.from_Rt(K[None], R[None], t[None], width, height)


def _quad(z: float, half: float = 50.0, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Square in the plane z = const, normal towards -z (the camera at the origin) unless ``flip``."""
    v = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]], dtype=np.float64)
    f = np.array([[0, 2, 1], [0, 3, 2]]) if not flip else np.array([[0, 1, 2], [0, 2, 3]])
    return v, f


def _plane_hits(cam: Cameras, z: float) -> np.ndarray:
    """(H, W, 3) analytic intersection of every pixel-centre ray with the plane z = const (camera at origin)."""
    origin, dirs = cam.pixel_rays(0)
    d = dirs.double().numpy()
    return origin.double().numpy() + d * ((z - origin[..., 2:].double().numpy()) / d[..., 2:])


def _sphere(radius: float, centre: tuple[float, float, float], n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    v, f = superquadric_mesh(radius, radius, radius, 1.0, 1.0, rings=n, segments=2 * n)
    return v + np.asarray(centre), f


def test_camera_rays_match_cameras_pixel_rays() -> None:
    R = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    R *= np.sign(np.linalg.det(R))
    cam = _camera(skew=0.7, R=R, centre=(0.3, -1.0, 2.0))
    origin, dirs = camera_rays(cam, 0, 0, H)
    ref_o, ref_d = cam.pixel_rays(0)
    np.testing.assert_allclose(dirs, ref_d.numpy(), atol=2e-6)
    np.testing.assert_allclose(np.broadcast_to(origin, dirs.shape), ref_o.numpy(), atol=1e-5)
    _, part = camera_rays(cam, 0, 10, 13)  # a row chunk is the same rows of the full image
    np.testing.assert_allclose(part, dirs[10:13])


def test_plane_depth_mask_and_lambert_shading() -> None:
    z, albedo, ambient = 3.0, np.array([0.8, 0.5, 0.3]), 0.1
    light = PointLight((1.0, -2.0, 0.5), (0.9, 0.7, 0.8))
    cam = _camera()
    for flip in (False, True):  # the shading normal faces the viewer whatever the winding
        v, f = _quad(z, flip=flip)
        res = render_meshes([MeshWithMaterial(v, f, albedo, specular=0.0)], cam, [light], ambient=ambient)[0]
        assert res.mask.all() and (res.mesh_index == 0).all()
        np.testing.assert_allclose(res.depth, z, rtol=1e-5)
        p = _plane_hits(cam, z)
        to_l = np.asarray(light.position) - p
        cos = np.clip(-to_l[..., 2] / np.linalg.norm(to_l, axis=-1), 0, None)  # n = (0, 0, -1)
        expected = np.clip(albedo * ambient + albedo * np.asarray(light.intensity) * cos[..., None], 0, 1)
        np.testing.assert_allclose(res.rgb, expected, atol=2e-5)


def test_blinn_phong_specular_matches_formula() -> None:
    z, albedo, ks, shin = 2.0, np.array([0.4, 0.4, 0.6]), 0.5, 20.0
    light = PointLight((0.2, 0.1, 0.0), 0.8)
    cam = _camera()
    v, f = _quad(z)
    res = render_meshes([MeshWithMaterial(v, f, albedo, specular=ks, shininess=shin)], cam, [light], ambient=0.0)[0]
    p = _plane_hits(cam, z)
    n = np.array([0.0, 0.0, -1.0])
    l_vec = np.asarray(light.position) - p
    l_vec /= np.linalg.norm(l_vec, axis=-1, keepdims=True)
    view = -p / np.linalg.norm(p, axis=-1, keepdims=True)
    h = l_vec + view
    h /= np.linalg.norm(h, axis=-1, keepdims=True)
    n_l = np.clip(l_vec @ n, 0, None)[..., None]
    n_h = np.clip(h @ n, 0, None)[..., None]
    expected = np.clip(0.8 * (albedo * n_l + ks * n_h**shin), 0, 1)
    assert (expected.max() > 0.5) and (res.rgb.max() > 0.5)  # the highlight is in view
    np.testing.assert_allclose(res.rgb, expected, atol=5e-5)


def test_sphere_depth_and_mask_area() -> None:
    r, dist = 1.0, 6.0
    cam = _camera(160, 120)
    res = render_meshes([MeshWithMaterial(*_sphere(r, (0.0, 0.0, dist)), (1.0, 1.0, 1.0))], cam, [], ambient=1.0)[0]
    K = cam.K[0].double().numpy()
    # On-axis sphere: its silhouette is a circle of angular radius asin(r / dist), an ellipse in pixels
    # (fx != fy) with semi-axes f * tan(asin(r / dist)).
    tan_a = r / np.sqrt(dist**2 - r**2)
    area = np.pi * K[0, 0] * tan_a * K[1, 1] * tan_a
    assert res.mask.sum() == pytest.approx(area, rel=0.01)
    origin, dirs = cam.pixel_rays(0)
    d = dirs.double().numpy()[res.mask]
    c = np.array([0.0, 0.0, dist])
    b = d @ c
    t = b - np.sqrt(b**2 - (c @ c - r**2))  # first intersection along the unit ray
    np.testing.assert_allclose(res.depth[res.mask], t * d[:, 2], atol=2e-3)  # tessellation error << 2 mm
    assert np.isinf(res.depth[~res.mask]).all() and (res.rgb[~res.mask] == 0).all()


def test_projected_point_lands_on_the_pixel_whose_ray_hits_it() -> None:
    R = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(0.3), -np.sin(0.3)], [0.0, np.sin(0.3), np.cos(0.3)]])
    centre, eye = np.array([0.1, 0.3, 3.0]), np.array([0.2, -0.1, -0.5])
    cam = _camera(R=R, centre=tuple(eye))
    res = render_meshes([MeshWithMaterial(*_sphere(0.8, tuple(centre)), (1.0, 1.0, 1.0))], cam, [], ambient=1.0)[0]
    origins, dirs = cam.pixel_rays(0)
    rng = np.random.default_rng(1)
    normals = rng.normal(size=(400, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    points = centre + 0.8 * normals
    uv, depth = cam.project(torch.tensor(points, dtype=torch.float32))
    checked = 0
    for p, n, (u, v), z_pt in zip(points, normals, uv[0].numpy(), depth[0].numpy(), strict=True):
        i, j = int(np.floor(v)), int(np.floor(u))
        if not (0 <= i < H and 0 <= j < W):
            continue
        # the ray through that pixel's centre passes within half a pixel footprint of the point
        d = dirs[i, j].double().numpy()
        rel = p - origins[i, j].double().numpy()
        assert np.linalg.norm(rel - (rel @ d) * d) < 0.75 * z_pt / F
        to_eye = (eye - p) / np.linalg.norm(eye - p)
        if n @ to_eye > 0.7:  # clearly visible, away from the silhouette: the ray's first hit is the point
            checked += 1
            assert res.mask[i, j] and abs(res.depth[i, j] - z_pt) < 0.05, (u, v, res.depth[i, j], z_pt)
    assert checked > 30


def test_mask_counts_only_in_mask_meshes_and_shadows_are_cast() -> None:
    cam = _camera()
    floor = MeshWithMaterial(*_quad(4.0), (0.9, 0.9, 0.9), in_mask=False, smooth=False)
    # a small square occluder 1 unit in front of the floor, light straight behind the camera side
    occ_v = np.array([[-0.5, -0.5, 3.0], [0.5, -0.5, 3.0], [0.5, 0.5, 3.0], [-0.5, 0.5, 3.0]])
    occluder = MeshWithMaterial(occ_v, np.array([[0, 2, 1], [0, 3, 2]]), (0.2, 0.8, 0.2))
    light = PointLight((0.0, 0.0, 0.0), 1.0)
    res_shadow = render_meshes([floor, occluder], cam, [light], ambient=0.05, shadows=True)[0]
    res_plain = render_meshes([floor, occluder], cam, [light], ambient=0.05, shadows=False)[0]
    # The occluder hides its own shadow from this camera (light at the camera centre), so move the light.
    light2 = PointLight((1.0, 0.0, 1.0), 1.0)
    lit = render_meshes([floor, occluder], cam, [light2], ambient=0.05, shadows=True)[0]
    # Analytic mask: pixel rays through the occluder square.
    p3 = _plane_hits(cam, 3.0)
    in_occ = (np.abs(p3[..., 0]) < 0.5) & (np.abs(p3[..., 1]) < 0.5)
    margin = (np.abs(np.abs(p3[..., 0]) - 0.5) > 0.02) & (np.abs(np.abs(p3[..., 1]) - 0.5) > 0.02)
    assert (res_shadow.mask[margin] == in_occ[margin]).all()
    assert (res_shadow.mesh_index[margin] == np.where(in_occ, 1, 0)[margin]).all()
    # With the light at the eye every shadow hides behind its occluder (up to float32 ties at the edges).
    assert (np.abs(res_shadow.rgb - res_plain.rgb).max(-1) > 1e-6).sum() <= 2
    # Floor point p is in shadow iff the segment p -> light crosses z = 3 inside the occluder.
    p4 = _plane_hits(cam, 4.0)
    q = np.asarray(light2.position)
    s = (3.0 - p4[..., 2]) / (q[2] - p4[..., 2])
    x = p4 + s[..., None] * (q - p4)
    shadowed = (np.abs(x[..., 0]) < 0.5) & (np.abs(x[..., 1]) < 0.5) & ~in_occ
    clear = ~((np.abs(x[..., 0]) < 0.55) & (np.abs(x[..., 1]) < 0.55)) & ~in_occ
    assert shadowed.sum() > 20 and clear.sum() > 20
    np.testing.assert_allclose(lit.rgb[shadowed], 0.05 * 0.9, atol=1e-6)  # ambient only
    assert (lit.rgb[clear].mean(-1) > 0.05 * 0.9 + 0.1).all()


def test_vertex_colours_are_interpolated_barycentrically_and_textures_replace_them() -> None:
    cam = _camera()
    v = np.array([[-3.0, -3.0, 5.0], [3.0, -3.0, 5.0], [0.0, 3.0, 5.0]])
    colors = np.eye(3)
    tri = MeshWithMaterial(v, np.array([[0, 2, 1]]), colors)
    res = render_meshes([tri], cam, [], ambient=1.0)[0]
    p = _plane_hits(cam, 5.0)[res.mask]
    # barycentric coordinates of p in the triangle, solved independently
    A = np.array([[v[0, 0], v[1, 0], v[2, 0]], [v[0, 1], v[1, 1], v[2, 1]], [1.0, 1.0, 1.0]])
    bary = np.linalg.solve(A, np.stack([p[:, 0], p[:, 1], np.ones(len(p))]))
    assert res.mask.sum() > 200
    np.testing.assert_allclose(res.rgb[res.mask], bary.T, atol=1e-4)

    def checker(points: np.ndarray) -> np.ndarray:
        on = (np.floor(points[:, 0] * 2) + np.floor(points[:, 1] * 2)) % 2
        return np.stack([on, 1 - on, np.full_like(on, 0.5)], 1)

    textured = MeshWithMaterial(v, np.array([[0, 2, 1]]), colors, texture=checker)
    res_t = render_meshes([textured], cam, [], ambient=1.0)[0]
    np.testing.assert_array_equal(res_t.mask, res.mask)
    np.testing.assert_allclose(res_t.rgb[res.mask], checker(p), atol=1e-6)


def test_layers_compose_linearly_and_chunking_does_not_matter() -> None:
    cam = _camera()
    sphere = MeshWithMaterial(*_sphere(1.0, (0.0, 0.0, 5.0), n=64), (0.7, 0.6, 0.5), specular=0.3, shininess=15.0)
    floor = MeshWithMaterial(*_quad(6.5), (0.9, 0.9, 0.9), in_mask=False, smooth=False)
    lights = [PointLight((2.0, -2.0, 3.0), 0.6), PointLight((-2.0, -1.0, 2.0), (0.3, 0.4, 0.5))]
    caster = MeshRaycaster([sphere, floor])
    layers = caster.render_layers(cam, 0, lights)
    small = caster.render_layers(cam, 0, lights, chunk_pixels=100)  # 1 row per chunk
    for a, b in ((layers.lights, small.lights), (layers.albedo, small.albedo), (layers.depth, small.depth)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    weights = [0.5, 2.0]
    scaled = [PointLight(li.position, np.asarray(li.rgb()) * w) for li, w in zip(lights, weights, strict=True)]
    direct = caster.render(cam, scaled, ambient=0.07)[0]
    np.testing.assert_allclose(compose_layers(layers, weights, 0.07), direct.rgb, atol=1e-5)
    assert layers.mask.sum() == (layers.mesh_index == 0).sum() > 0


def test_vertex_normals_of_a_sphere_point_outward() -> None:
    v, f = _sphere(2.0, (0.0, 0.0, 0.0), n=32)
    n = vertex_normals(v, f)
    np.testing.assert_allclose(n, v / np.linalg.norm(v, axis=1, keepdims=True), atol=0.02)


def test_bad_meshes_are_rejected_with_the_argument_named() -> None:
    v, f = _quad(1.0)
    with pytest.raises(ValueError, match="faces"):
        MeshWithMaterial(v, f + 10, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="colors"):
        MeshWithMaterial(v, f, np.ones((3, 3)))
    with pytest.raises(ValueError, match="vertices"):
        MeshWithMaterial(v[:, :2], f, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="meshes"):
        MeshRaycaster([])
    with pytest.raises(ValueError, match="weights"):
        compose_layers(MeshRaycaster([MeshWithMaterial(v, f, (1, 1, 1))]).render_layers(_camera(), 0, []), [1.0])
