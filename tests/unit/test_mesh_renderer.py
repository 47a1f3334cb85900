"""The differentiable mesh renderer against independent oracles: Open3D ray casting (depth, coverage),
analytic planes and spheres (depth, normal, clipping), finite differences (depth gradients), exact box-filter
coverage (anti-aliased mask of axis-aligned edges), the analytic growth rate of a sphere's silhouette area, and
a radius fit from mask losses (which cannot move without anti-aliasing)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparse3d.cameras import Cameras, look_at
from sparse3d.datasets.synth.shapes import box_mesh, superquadric_mesh
from sparse3d.kernels.ray_mesh import RayMesh
from sparse3d.render.mesh_raycast import MeshRaycaster, MeshWithMaterial
from sparse3d.render.mesh_renderer import edge_adjacency, render_mesh, render_mesh_views

W, H, FOCAL = 64, 48, 70.0


def _camera(
    centre, target=(0.0, 0.0, 0.0), width: int = W, height: int = H, up=(0.0, 0.0, 1.0), focal: float = FOCAL
) -> Cameras:
    K = np.array([[focal, 0.0, width / 2 + 0.3], [0.0, focal * 1.02, height / 2 - 0.2], [0.0, 0.0, 1.0]])
    R = look_at(centre, target, up=up)
    return Cameras.from_Rt(K[None], R[None], (-R @ np.asarray(centre, dtype=np.float64))[None], width, height)


def _unit_sphere(rings: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    v, f = superquadric_mesh(1.0, 1.0, 1.0, 1.0, 1.0, rings=rings, segments=2 * rings)
    return torch.tensor(v, dtype=torch.float32), torch.tensor(f)


def _open3d(vertices: np.ndarray, faces: np.ndarray, cam: Cameras):
    return MeshRaycaster([MeshWithMaterial(vertices, faces, (1.0, 1.0, 1.0))]).render_layers(cam, 0, [], shadows=False)


# ------------------------------------------------------------------------------------------ depth and normal
@pytest.mark.parametrize("shape", ["sphere", "box"])
def test_depth_matches_open3d(shape: str) -> None:
    if shape == "sphere":
        v, f = superquadric_mesh(0.4, 0.3, 0.35, 1.0, 1.0, rings=24, segments=48)
    else:
        v, f = box_mesh((-0.3, -0.2, -0.25), (0.35, 0.3, 0.2))
    cam = _camera((0.4, -1.3, 0.6))
    out = render_mesh(torch.tensor(v, dtype=torch.float32), torch.tensor(f), cam)
    gt = _open3d(v, f, cam)
    hit = out.face.numpy() >= 0
    assert (hit != gt.hit).sum() <= 2  # only pixel centres on a silhouette may be decided differently
    both = hit & gt.hit
    assert both.sum() > 300
    np.testing.assert_allclose(out.depth.detach().numpy()[both], gt.depth[both], rtol=0, atol=1e-4)
    assert (out.depth.detach().numpy()[~hit] == 0).all() and (out.normal.detach().numpy()[~hit] == 0).all()
    n = out.normal.detach().numpy()[hit]
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)


def test_plane_depth_and_normal_are_analytic() -> None:
    # Tilted plane through (0, 0, 0.2) with unit normal nrm (counter-clockwise faces seen from +nrm).
    nrm = np.array([0.2, -0.3, 1.0])
    nrm /= np.linalg.norm(nrm)
    a = np.cross(nrm, [1.0, 0.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(nrm, a)
    p0 = np.array([0.0, 0.0, 0.2])
    v = np.stack([p0 + 5 * (sx * a + sy * b) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))])
    f = np.array([[0, 1, 2], [0, 2, 3]])
    cam = _camera((0.3, -0.4, 2.5), target=(0.1, 0.0, 0.0))
    out = render_mesh(torch.tensor(v, dtype=torch.float64), torch.tensor(f), cam)
    assert (out.face >= 0).all()
    origins, dirs = cam.pixel_rays(0)  # independent ray construction (unit directions)
    o, d = origins.double().numpy(), dirs.double().numpy()
    t = ((p0 - o) @ nrm) / (d @ nrm)
    point = o + d * t[..., None]
    R, tt = cam.R[0].double().numpy(), cam.t[0].double().numpy()
    depth = point @ R[2] + tt[2]
    np.testing.assert_allclose(out.depth.numpy(), depth, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out.normal.numpy(), np.broadcast_to(nrm, (H, W, 3)), atol=1e-9)
    # Seen from below, the geometric normal still points up; face_camera flips it towards the camera.
    below = _camera((0.3, -0.4, -2.5), target=(0.1, 0.0, 0.0))
    geo = render_mesh(torch.tensor(v), torch.tensor(f), below)
    facing = render_mesh(torch.tensor(v), torch.tensor(f), below, face_camera=True)
    np.testing.assert_allclose(geo.normal.numpy(), np.broadcast_to(nrm, (H, W, 3)), atol=1e-9)
    np.testing.assert_allclose(facing.normal.numpy(), np.broadcast_to(-nrm, (H, W, 3)), atol=1e-9)


def test_depth_normal_and_mask_gradients_match_finite_differences() -> None:
    v, f = superquadric_mesh(0.4, 0.35, 0.3, 1.0, 1.0, rings=6, segments=12)
    vertices = torch.tensor(v, dtype=torch.float64)
    faces = torch.tensor(f)
    cam = _camera((0.5, -1.4, 0.5), width=24, height=20, focal=34.0)  # the whole mesh, silhouette included
    g = torch.Generator().manual_seed(0)
    wd = torch.rand(20, 24, dtype=torch.float64, generator=g)
    wn = torch.rand(20, 24, 3, dtype=torch.float64, generator=g)
    wm = torch.rand(20, 24, dtype=torch.float64, generator=g)

    def loss(x: torch.Tensor) -> torch.Tensor:
        out = render_mesh(x, faces, cam)
        return (out.depth * wd).sum() + (out.normal * wn).sum() + (out.mask * wm).sum()

    x = vertices.clone().requires_grad_(True)
    loss(x).backward()
    base = render_mesh(vertices, faces, cam).face
    assert (base < 0).any() and (base >= 0).sum() > 100
    mask_only = vertices.clone().requires_grad_(True)
    render_mesh(mask_only, faces, cam).mask.sum().backward()
    silhouette = torch.nonzero(mask_only.grad.norm(dim=1) > 0).squeeze(1)
    assert silhouette.numel() >= 4
    probes = sorted(set(range(0, vertices.shape[0], 9)) | set(silhouette[:8].tolist()))
    eps = 1e-6
    checked = 0
    for vi in probes:
        for axis in range(3):
            plus, minus = vertices.clone(), vertices.clone()
            plus[vi, axis] += eps
            minus[vi, axis] -= eps
            assert torch.equal(render_mesh(plus, faces, cam).face, base)  # visibility is unchanged
            fd = (loss(plus) - loss(minus)).item() / (2 * eps)
            assert x.grad[vi, axis].item() == pytest.approx(fd, rel=1e-4, abs=1e-5)
            checked += abs(fd) > 1e-3
    assert checked > 10  # the probed vertices do move the render


# --------------------------------------------------------------------------------------------- the mask
def test_mask_of_axis_aligned_edges_equals_exact_pixel_coverage() -> None:
    # A fronto-parallel rectangle at depth 2 whose edges fall at known sub-pixel positions; for pixels along
    # an edge (not at corners) the anti-aliased mask is exactly the box-filter coverage, and its gradient with
    # respect to the edge position is the number of rows (columns) the edge spans.
    cam = Cameras.from_Rt(
        np.array([[[50.0, 0.0, 32.0], [0.0, 50.0, 24.0], [0.0, 0.0, 1.0]]]), np.eye(3)[None], np.zeros((1, 3)), W, H
    )
    u0, u1, v0, v1 = 12.3, 47.8, 10.6, 35.2  # pixel coordinates of the edges
    z = 2.0
    x0, x1 = (u0 - 32.0) * z / 50.0, (u1 - 32.0) * z / 50.0
    y0, y1 = (v0 - 24.0) * z / 50.0, (v1 - 24.0) * z / 50.0
    right = torch.tensor(x1, dtype=torch.float64, requires_grad=True)
    xs = torch.stack([torch.tensor(x0, dtype=torch.float64), right, right, torch.tensor(x0, dtype=torch.float64)])
    ys = torch.tensor([y0, y0, y1, y1], dtype=torch.float64)
    vertices = torch.stack([xs, ys, torch.full_like(ys, z)], 1)
    faces = torch.tensor([[0, 2, 1], [0, 3, 2]])
    out = render_mesh(vertices, faces, cam)
    cols = np.arange(W) + 0.5
    rows = np.arange(H) + 0.5
    cov_u = np.clip(np.minimum(cols + 0.5, u1) - np.maximum(cols - 0.5, u0), 0.0, 1.0)
    cov_v = np.clip(np.minimum(rows + 0.5, v1) - np.maximum(rows - 0.5, v0), 0.0, 1.0)
    coverage = cov_v[:, None] * cov_u[None, :]
    mask = out.mask.detach().numpy()
    inner_rows = (rows > v0 + 1) & (rows < v1 - 1)
    inner_cols = (cols > u0 + 1) & (cols < u1 - 1)
    np.testing.assert_allclose(mask[inner_rows], coverage[inner_rows], atol=1e-6)
    np.testing.assert_allclose(mask[:, inner_cols], coverage[:, inner_cols], atol=1e-6)
    hard = render_mesh(vertices.detach(), faces, cam, antialias=False).mask.numpy()
    assert np.abs(hard - coverage).sum() > 10 * np.abs(mask - coverage).sum()
    # d(sum of the mask)/d(right edge, in pixels) = the rows it spans (25 pixel centres in [v0, v1]).
    out.mask.sum().backward()
    spanned = ((rows > v0) & (rows < v1)).sum()
    assert right.grad.item() * z / 50.0 == pytest.approx(spanned, rel=1e-6)


def test_antialiased_mask_approximates_supersampled_coverage() -> None:
    v, f = _unit_sphere()
    cam = _camera((0.1, -1.5, 0.4))
    r = 0.3
    out = render_mesh(v * r, f, cam)
    fine = _open3d(v.numpy() * r, f.numpy(), cam.resized(W * 8, H * 8))
    coverage = fine.hit.reshape(H, 8, W, 8).mean(axis=(1, 3))
    edge = (coverage > 0) & (coverage < 1)
    mask = out.mask.detach().numpy()
    hard = (out.face.numpy() >= 0).astype(np.float64)
    assert edge.sum() > 60
    assert np.abs(mask - coverage)[edge].mean() < 0.3 * np.abs(hard - coverage)[edge].mean()
    assert mask.sum() == pytest.approx(coverage.sum(), rel=2e-3)
    assert mask.min() >= 0.0 and mask.max() <= 1.0


def test_mask_area_gradient_matches_the_analytic_silhouette_growth() -> None:
    v, f = _unit_sphere()
    centre = np.array([0.1, -1.5, 0.4])
    cam = _camera(centre)
    dist = float(np.linalg.norm(centre))
    r = torch.tensor(0.3, requires_grad=True)
    render_mesh(v * r, f, cam).mask.sum().backward()
    # A sphere of radius r at distance D projects (on the optical axis) to a circle of radius
    # rho = f r / sqrt(D^2 - r^2); its image area pi rho^2 grows at d/dr (pi rho^2).
    fx, fy = FOCAL, FOCAL * 1.02
    growth = math.pi * fx * fy * 2 * r.item() * dist**2 / (dist**2 - r.item() ** 2) ** 2
    assert r.grad.item() == pytest.approx(growth, rel=0.05)


@pytest.mark.parametrize("start", [0.25, 0.35])
def test_mask_loss_moves_a_sphere_radius_towards_the_target(start: float) -> None:
    v, f = _unit_sphere()
    cam = _camera((0.1, -1.5, 0.4))
    target = render_mesh(v * 0.3, f, cam).mask
    radius = torch.tensor(start, requires_grad=True)
    opt = torch.optim.Adam([radius], lr=0.01)
    mesh = RayMesh(v * start, f)
    radii, losses = [start], []
    for _ in range(4):
        opt.zero_grad()
        loss = (render_mesh(v * radius, f, cam, ray_mesh=mesh).mask - target).abs().mean()
        loss.backward()
        opt.step()
        radii.append(radius.item())
        losses.append(loss.item())
    gaps = [abs(x - 0.3) for x in radii]
    assert all(b < a for a, b in zip(gaps, gaps[1:]))  # monotone towards 0.3
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert gaps[-1] < 0.5 * gaps[0]
    # Without anti-aliasing the mask is piecewise constant in the vertices: no gradient at all.
    hard = (render_mesh(v * radius, f, cam, antialias=False).mask - target).abs().mean()
    assert not hard.requires_grad and hard.item() > 0


def test_following_triangles_extends_nvdiffrast_single_triangle_rule() -> None:
    # A lone triangle: every edge is a silhouette of the covering triangle, so both rules agree exactly.
    tri = torch.tensor([[-0.3, -0.2, 0.1], [0.35, -0.1, -0.2], [0.0, 0.3, 0.2]])
    cam = _camera((0.9, -1.2, 0.7))
    one = render_mesh(tri, torch.tensor([[0, 1, 2]]), cam, antialias_steps=1).mask
    many = render_mesh(tri, torch.tensor([[0, 1, 2]]), cam).mask
    torch.testing.assert_close(one, many)
    assert ((one > 0) & (one < 1)).sum() > 20
    # A box: a pixel covered by one triangle of a side whose silhouette edge belongs to the side's other
    # triangle is anti-aliased only by following the line into that triangle.
    v, f = box_mesh((-0.3, -0.2, -0.25), (0.35, 0.3, 0.2))
    fine = _open3d(v, f, cam.resized(W * 8, H * 8))
    coverage = fine.hit.reshape(H, 8, W, 8).mean(axis=(1, 3))
    vt, ft = torch.tensor(v, dtype=torch.float32), torch.tensor(f)
    err_one = np.abs(render_mesh(vt, ft, cam, antialias_steps=1).mask.numpy() - coverage).sum()
    err_many = np.abs(render_mesh(vt, ft, cam).mask.numpy() - coverage).sum()
    err_hard = np.abs(render_mesh(vt, ft, cam, antialias=False).mask.numpy() - coverage).sum()
    assert err_many < err_one < err_hard
    assert err_many < 0.25 * err_hard


# ------------------------------------------------------------------------------------------------ clipping
def test_near_plane_inside_a_hollow_sphere_shows_its_inner_surface() -> None:
    v, f = _unit_sphere(rings=64)
    cam = _camera((0.0, -3.0, 0.0))
    outside = render_mesh(v, f, cam)
    section = render_mesh(v, f, cam, near=3.0)
    i, j = H // 2, W // 2
    origin, dirs = cam.pixel_rays(0)
    o, d = origin[i, j].double().numpy(), dirs[i, j].double().numpy()
    # Ray-sphere roots along the unit direction; camera z = t * (d . forward).
    b = float(o @ d)
    disc = math.sqrt(b * b - (float(o @ o) - 1.0))
    fwd = cam.R[0, 2].double().numpy()
    near_z, far_z = (-b - disc) * (d @ fwd), (-b + disc) * (d @ fwd)
    assert outside.depth[i, j].item() == pytest.approx(near_z, abs=2e-3)
    assert section.depth[i, j].item() == pytest.approx(far_z, abs=2e-3)
    # The section sees the inside of the far wall: its outward normal points away from the camera.
    assert float(section.normal[i, j].detach() @ torch.tensor(d, dtype=torch.float32)) > 0.9
    seen = section.face >= 0
    assert (section.depth.detach()[seen] >= 3.0).all()
    # A camera inside the sphere sees its inner surface everywhere, at distance 1 along every ray.
    inside = render_mesh(v, f, _camera((0.0, 0.0, 0.0), target=(0.0, 1.0, 0.0)))
    assert (inside.face >= 0).all() and (inside.mask == 1).all()
    cam_in = _camera((0.0, 0.0, 0.0), target=(0.0, 1.0, 0.0))
    _, dirs_in = cam_in.pixel_rays(0)
    dist = inside.depth.detach() / (dirs_in @ cam_in.R[0, 2])
    torch.testing.assert_close(dist, torch.ones_like(dist), rtol=0, atol=1e-3)


def test_far_plane_keeps_only_the_nearer_cap() -> None:
    v, f = _unit_sphere(rings=48)
    cam = _camera((0.0, -3.0, 0.0))
    full = render_mesh(v, f, cam)
    cap = render_mesh(v, f, cam, far=2.2)
    expected = (full.face >= 0) & (full.depth.detach() <= 2.2)
    assert (expected != (cap.face >= 0)).sum() <= 2  # rounding at the far plane itself
    assert 0 < int((cap.face >= 0).sum()) < int(expected.numel())
    assert (cap.depth.detach()[cap.face >= 0] <= 2.2 + 1e-5).all()


# ------------------------------------------------------------------------------------ views and ray meshes
def test_views_and_reused_ray_mesh_equal_single_renders() -> None:
    v, f = _unit_sphere(rings=16)
    v = v * 0.4
    cams = [_camera((0.1, -1.5, 0.4)), _camera((1.2, 0.8, -0.3))]
    cameras = Cameras(K=torch.cat([c.K for c in cams]), viewmat=torch.cat([c.viewmat for c in cams]), width=W, height=H)
    views = render_mesh_views(v, f, cameras)
    mesh = RayMesh(v * 2.0, f)  # stale positions: refitted to v on use
    for i, view in enumerate(views):
        single = render_mesh(v, f, cameras, i)
        reused = render_mesh(v, f, cameras, i, ray_mesh=mesh)
        for out in (single, reused):
            assert torch.equal(out.face, view.face)
            torch.testing.assert_close(out.depth, view.depth)
            torch.testing.assert_close(out.mask, view.mask)
    torch.testing.assert_close(mesh.vertices, v)


def test_edge_adjacency_of_a_closed_mesh_is_symmetric() -> None:
    _, f = _unit_sphere(rings=8)
    neighbor, opposite = edge_adjacency(f)
    assert (neighbor >= 0).all()
    for face in range(0, f.shape[0], 7):
        for k in range(3):
            nb = int(neighbor[face, k])
            edge = {int(f[face, (k + 1) % 3]), int(f[face, (k + 2) % 3])}
            assert edge < set(f[nb].tolist())
            assert int(opposite[face, k]) in set(f[nb].tolist()) - edge
            assert face in neighbor[nb].tolist()
    # A lone triangle and a face with a repeated vertex have no neighbours.
    lone, _ = edge_adjacency(torch.tensor([[0, 1, 2], [3, 4, 4], [4, 3, 5]]))
    assert (lone[:2] == -1).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"vertices": torch.zeros(5, 2)}, "vertices"),
        ({"faces": torch.tensor([[0.0, 1.0, 2.0]])}, "faces"),
        ({"index": 3}, "index"),
        ({"near": -1.0}, "near"),
        ({"near": 2.0, "far": 1.0}, "far"),
        ({"cameras": "camera"}, "cameras"),
        ({"antialias_steps": 0}, "antialias_steps"),
        ({"ray_mesh": "bvh"}, "ray_mesh"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs: dict, match: str) -> None:
    v, f = box_mesh((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    args = {"vertices": torch.tensor(v, dtype=torch.float32), "faces": torch.tensor(f), "cameras": _camera((3.0, 0.0, 0.0))}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        render_mesh(**args)


def test_ray_mesh_over_other_faces_is_rejected() -> None:
    v, f = box_mesh((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    vt, ft = torch.tensor(v, dtype=torch.float32), torch.tensor(f)
    mesh = RayMesh(vt, ft.flip(1))
    with pytest.raises(ValueError, match="ray_mesh"):
        render_mesh(vt, ft, _camera((3.0, 0.0, 0.0)), ray_mesh=mesh)
    with pytest.raises(ValueError, match="ray_mesh"):
        render_mesh(vt, ft[:-1], _camera((3.0, 0.0, 0.0)), ray_mesh=mesh)
