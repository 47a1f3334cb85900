"""Differentiable depth, normal and mask renders of a triangle mesh, by ray casting plus analytic anti-aliasing.

The rasterise--interpolate--antialias pipeline of nvdiffrast (Laine et al., "Modular Primitives for
High-Performance Differentiable Rendering", SIGGRAPH Asia 2020, arXiv:2011.03277) with the rasteriser replaced by
a ray caster, so it runs on the CPU as well as on CUDA:

1. **Visibility** (no gradients): one ray per pixel centre, pixel (row i, col j) at ``(j + 0.5, i + 0.5)`` as in
   :class:`sparse3d.cameras.Cameras`, cast with :class:`sparse3d.kernels.ray_mesh.RayMesh` (Warp BVH). Ray ``p``
   has origin the camera centre and direction ``R^T K^-1 (u, v, 1)``, so its parameter ``t`` *is* the camera-z
   depth. No back-face culling. ``near`` / ``far`` clip the ray to ``near <= depth <= far`` (planes of constant
   camera z): a near plane inside an object shows its interior, a section of the mesh.
2. **Interpolation** (gradients to the vertices): with the hit triangle fixed, the ray--triangle intersection is
   recomputed in torch autograd (Moller--Trumbore) from the triangle's three vertices; ``depth`` is its ``t``
   and ``normal`` the triangle's unit geometric normal ``(v1 - v0) x (v2 - v0)``, which faces outwards for
   counter-clockwise faces whichever side the camera sees (``face_camera=True`` flips it towards the camera).
3. **Silhouette anti-aliasing** of the mask (gradients to the vertices through silhouette positions), after
   nvdiffrast's analytic rule. For every horizontally or vertically adjacent pixel pair of which exactly one
   pixel is covered, work in the covered pixel's frame (origin at its centre, ``X`` towards the other pixel,
   ``Y`` across) with the projected vertices. Of the covered triangle's edges that cross ``Y = 0``, the one
   crossing farthest towards the other pixel is its exit edge. If the exit edge is a *silhouette edge* -- a
   boundary edge, or one whose neighbouring triangle folds over to the same side in the image (a front- and
   back-facing pair) -- it is the silhouette; nvdiffrast stops here and does nothing otherwise. This renderer
   instead follows the line into the neighbouring triangle (which lies beyond a non-silhouette exit edge) and
   repeats, for up to ``antialias_steps`` triangles (``antialias_steps=1`` is nvdiffrast's rule): on finely
   tessellated smooth surfaces the triangles next to the silhouette are slivers that seldom cover a pixel
   centre, so the single-triangle rule misses most of the silhouette. As in nvdiffrast, the edge counts only
   if it runs more across the pair than along it (|dY| >= |dX|; the orthogonal pairs handle the others), and
   its crossing ``c`` (the distance from the covered pixel's centre towards the other one) only within
   ``[-1/16, 1 + 1/16]``, clamped to ``[0, 1]``. Then, as in nvdiffrast: if ``c < 1/2`` the covered pixel is
   blended towards the uncovered one with weight ``1/2 - c``, otherwise the uncovered pixel towards the covered
   one with weight ``c - 1/2`` -- for an edge perpendicular to the pair this is exactly the pixel's box-filter
   coverage. ``c`` is differentiable in the edge's projected endpoints, so mask losses move the silhouette.
   Contributions of several pairs to one pixel add up, computed from the hard mask; the result is clamped to
   ``[0, 1]``. Pairs of two different covered triangles leave the mask unchanged (both are 1) and are skipped.
   Not anti-aliased: a silhouette made by the near/far planes (a section's cut is not a mesh edge), and pairs
   whose followed triangles or neighbour vertices are not in front of the camera.

Background pixels have ``depth = 0``, ``normal = 0``, ``face = -1`` (finite, so masked losses stay finite).
Gradients reach ``vertices`` only (cameras are constants). Everything runs on the vertices' device; the ray cast
uses float32, the differentiable recomputation the vertices' dtype (float32 or float64). On the CPU the forward
pass runs torch's ops on one thread (:func:`sparse3d.kernels.runtime.serial_torch_ops`): they are many small
gathers between Warp launches. The backward pass runs wherever the caller calls it; on a busy CPU, calling it
inside ``serial_torch_ops()`` as well avoids stalls in torch's thread pool.

Usage::

    mesh = RayMesh(vertices.detach(), faces)                 # one BVH, refitted as the vertices move
    for step in range(steps):
        out = render_mesh(vertices, faces, cameras, i, ray_mesh=mesh, near=near)
        loss = (out.mask - gt_mask).abs().mean() + (gt_mask * (out.depth - gt_depth)).abs().mean()
    views = render_mesh_views(vertices, faces, cameras)     # every camera, one BVH
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch

from sparse3d.cameras import Cameras
from sparse3d.kernels.ray_mesh import RayMesh
from sparse3d.kernels.runtime import check_same_device, check_tensor, serial_torch_ops

__all__ = ["MeshRender", "render_mesh", "render_mesh_views", "edge_adjacency"]

AA_CROSSING_TOLERANCE = 1.0 / 16.0
"""A silhouette crossing up to this many pixels outside the segment between the two pixel centres still counts
(then clamped onto it): the ray cast and the projection disagree by rounding (nvdiffrast uses the same bound)."""
AA_WALK_STEPS = 256
"""Default most triangles followed along a pixel pair's line while looking for the silhouette edge."""


@dataclass(frozen=True)
class MeshRender:
    """One camera's render (H, W = the camera's image size).

    Attributes:
        depth: (H, W) camera-z depth of the nearest hit, 0 where nothing is hit; differentiable.
        normal: (H, W, 3) world-space unit geometric normal of the hit triangle (outward for counter-clockwise
            faces, or flipped towards the camera with ``face_camera=True``), 0 where nothing is hit.
        mask: (H, W) coverage in [0, 1]: 1/0 for hit/miss, anti-aliased along silhouettes when requested.
        face: (H, W) int64 index of the hit triangle, -1 where nothing is hit (no gradient).
    """

    depth: torch.Tensor
    normal: torch.Tensor
    mask: torch.Tensor
    face: torch.Tensor


# ------------------------------------------------------------------------------------------------ topology
def edge_adjacency(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbours across the edges of every face: ``(neighbor, opposite)``, both (F, 3) int64.

    Edge ``k`` of a face joins its vertices ``k + 1`` and ``k + 2`` (mod 3), i.e. it is the edge opposite vertex
    ``k``. ``neighbor[f, k]`` is the one other face sharing that edge and ``opposite[f, k]`` that face's vertex
    off the edge; both are -1 when the edge is a boundary edge, is shared by three or more faces, or belongs to
    a face with a repeated vertex (the anti-aliasing treats such edges as silhouettes).
    """
    check_tensor("faces", faces, (torch.int32, torch.int64), ndim=2, last_dim=3)
    f = faces.to(torch.int64)
    n = f.shape[0]
    neighbor = torch.full((3 * n,), -1, dtype=torch.int64, device=f.device)
    opposite = torch.full((3 * n,), -1, dtype=torch.int64, device=f.device)
    if n == 0:
        return neighbor.view(0, 3), opposite.view(0, 3)
    a = f[:, [1, 2, 0]]
    b = f[:, [2, 0, 1]]
    span = int(f.max()) + 1
    key = torch.minimum(a, b) * span + torch.maximum(a, b)
    degenerate = (f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 2] == f[:, 0])
    unique_neg = -1 - torch.arange(3 * n, device=f.device).view(n, 3)  # never pairs with anything
    key = torch.where(degenerate[:, None], unique_neg, key).reshape(-1)
    own = f.reshape(-1)  # half-edge 3 f + k is opposite vertex f[f, k]
    order = torch.argsort(key, stable=True)
    _, counts = torch.unique_consecutive(key[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    pair_start = starts[counts == 2]
    h0, h1 = order[pair_start], order[pair_start + 1]
    neighbor[h0], neighbor[h1] = torch.div(h1, 3, rounding_mode="floor"), torch.div(h0, 3, rounding_mode="floor")
    opposite[h0], opposite[h1] = own[h1], own[h0]
    return neighbor.view(n, 3), opposite.view(n, 3)


_ADJACENCY: weakref.WeakKeyDictionary[RayMesh, tuple[torch.Tensor, torch.Tensor]] = weakref.WeakKeyDictionary()


def _adjacency_for(ray_mesh: RayMesh) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`edge_adjacency` of a RayMesh's faces, computed once per RayMesh (its faces never change)."""
    adj = _ADJACENCY.get(ray_mesh)
    if adj is None:
        adj = edge_adjacency(ray_mesh.faces)
        _ADJACENCY[ray_mesh] = adj
    return adj


# ------------------------------------------------------------------------------------------------- helpers
def _camera_rays(cameras: Cameras, index: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera centre (3,) and directions (H*W, 3) ``R^T K^-1 (j + 0.5, i + 0.5, 1)``: t along them is camera z."""
    K = cameras.K[index].detach().to(torch.float64).cpu()
    view = cameras.viewmat[index].detach().to(torch.float64).cpu()
    R, t = view[:3, :3], view[:3, 3]
    cols = torch.arange(cameras.width, dtype=torch.float64) + 0.5
    rows = torch.arange(cameras.height, dtype=torch.float64) + 0.5
    vv, uu = torch.meshgrid(rows, cols, indexing="ij")
    pix = torch.stack([uu, vv, torch.ones_like(uu)], -1).reshape(-1, 3)
    dirs_cam = pix @ torch.linalg.inv(K).T  # K^-1 p (skew included); z component 1 (K upper triangular)
    dirs = dirs_cam @ R  # R^T d, as row vectors
    centre = -(R.T @ t)
    return centre.to(device=device, dtype=dtype), dirs.to(device=device, dtype=dtype)


def _intersect(
    origin: torch.Tensor, dirs: torch.Tensor, p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Moller--Trumbore ``t`` (M,) of rays (M, 3) from ``origin`` with known hit triangles; also ``e1 x e2``."""
    e1 = p1 - p0
    e2 = p2 - p0
    pvec = torch.cross(dirs, e2, dim=-1)
    det = (e1 * pvec).sum(-1)
    det = torch.where(det.abs() > 0, det, torch.ones_like(det))  # a hit triangle has det != 0; guard rounding
    s = origin - p0
    qvec = torch.cross(s, e1, dim=-1)
    t = (e2 * qvec).sum(-1) / det
    return t, torch.cross(e1, e2, dim=-1)


def _area2(ax: torch.Tensor, ay: torch.Tensor, bx: torch.Tensor, by: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """Twice the signed area of the 2-D triangle (a, b, c)."""
    return (bx - ax) * (cy - ay) - (cx - ax) * (by - ay)


_EDGE_A = (1, 2, 0)
_EDGE_B = (2, 0, 1)


def _silhouette_crossings(
    faces: torch.Tensor,
    neighbor: torch.Tensor,
    opposite: torch.Tensor,
    uv: torch.Tensor,
    in_front: torch.Tensor,
    start_face: torch.Tensor,
    centre: torch.Tensor,
    ds: torch.Tensor,
    vertical: torch.Tensor,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Walk along each pair's pixel line from the covered pixel's triangle to the first silhouette edge.

    All inputs are detached. In the frame of the covered pixel (``X`` towards the other pixel, ``Y`` across,
    origin at the covered pixel's centre), the triangle's exit edge on ``Y = 0`` is the straddling edge with
    the largest crossing ``X``. A silhouette exit edge ends the walk; otherwise it continues in the neighbouring
    triangle (which lies beyond that edge in the image), for at most ``steps`` triangles. Returns ``found``
    (P,) and the found edge's endpoint vertex ids ``a``, ``b`` (P,).
    """
    P = start_face.shape[0]
    dev = start_face.device
    found = torch.zeros(P, dtype=torch.bool, device=dev)
    edge_a = torch.zeros(P, dtype=torch.int64, device=dev)
    edge_b = torch.zeros(P, dtype=torch.int64, device=dev)
    cur = start_face.clone()
    live = torch.arange(P, device=dev)
    ka = torch.tensor(_EDGE_A, device=dev)
    kb = torch.tensor(_EDGE_B, device=dev)
    for _ in range(max(1, steps)):
        if live.numel() == 0:
            break
        tri = cur[live]
        vid = faces[tri]  # (L, 3)
        nb = neighbor[tri]
        op = opposite[tri]
        wing = torch.where(op >= 0, op, vid)  # no neighbour: the vertex itself, whose wing area equals the face's
        ids = torch.cat([vid, wing], 1)  # (L, 6)
        rel = uv[ids] - centre[live, None, :]
        vert = vertical[live, None]
        X = ds[live, None] * torch.where(vert, rel[..., 1], rel[..., 0])
        Y = torch.where(vert, rel[..., 0], rel[..., 1])
        front_ok = in_front[ids].all(1)
        bb = _area2(X[:, 0], Y[:, 0], X[:, 1], Y[:, 1], X[:, 2], Y[:, 2])
        wings = torch.stack(
            [
                _area2(X[:, 3], Y[:, 3], X[:, 1], Y[:, 1], X[:, 2], Y[:, 2]),
                _area2(X[:, 0], Y[:, 0], X[:, 4], Y[:, 4], X[:, 2], Y[:, 2]),
                _area2(X[:, 0], Y[:, 0], X[:, 1], Y[:, 1], X[:, 5], Y[:, 5]),
            ],
            1,
        )
        xa, ya, xb, yb = X[:, ka], Y[:, ka], X[:, kb], Y[:, kb]
        straddle = (ya < 0) != (yb < 0)
        dy = torch.where(straddle, yb - ya, torch.ones_like(ya))
        cross = torch.where(straddle, xa - ya * (xb - xa) / dy, torch.full_like(xa, -math.inf))
        reach, k = cross.max(1)
        kk = k[:, None]
        silhouette = ((wings >= 0) == (bb >= 0)[:, None]).gather(1, kk).squeeze(1)
        steep = ((yb - ya).abs() >= (xb - xa).abs()).gather(1, kk).squeeze(1)
        usable = front_ok & torch.isfinite(reach) & (reach < 1.0 + AA_CROSSING_TOLERANCE)
        hit_edge = usable & silhouette & steep
        idx = live[hit_edge]
        found[idx] = True
        edge_a[idx] = vid.gather(1, ka[k][:, None]).squeeze(1)[hit_edge]
        edge_b[idx] = vid.gather(1, kb[k][:, None]).squeeze(1)[hit_edge]
        go_on = usable & ~silhouette
        cur[live[go_on]] = nb.gather(1, kk).squeeze(1)[go_on]
        live = live[go_on]
    return found, edge_a, edge_b


def _silhouette_mask(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    adjacency: tuple[torch.Tensor, torch.Tensor],
    cameras: Cameras,
    index: int,
    face: torch.Tensor,
    hard: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """The anti-aliased mask (H*W,) from the hard one (see the module docstring, step 3)."""
    H, W = cameras.height, cameras.width
    dtype = vertices.dtype
    hit = (face >= 0).view(H, W)
    pairs = []
    for down in (False, True):
        first, second = (hit[:-1], hit[1:]) if down else (hit[:, :-1], hit[:, 1:])
        i, j = torch.nonzero(first != second, as_tuple=True)
        p0 = i * W + j
        pairs.append((p0, p0 + (W if down else 1), torch.full_like(p0, int(down))))
    p0 = torch.cat([p[0] for p in pairs])
    if p0.numel() == 0:
        return hard
    p1 = torch.cat([p[1] for p in pairs])
    vertical = torch.cat([p[2] for p in pairs]).bool()
    first_hit = face[p0] >= 0
    covered = torch.where(first_hit, p0, p1)
    other = torch.where(first_hit, p1, p0)
    ds = torch.where(first_hit, 1.0, -1.0).to(dtype)  # +1: the other pixel is to the right / below
    centre = torch.stack([(covered % W).to(dtype) + 0.5, torch.div(covered, W, rounding_mode="floor").to(dtype) + 0.5], 1)

    K = cameras.K[index].detach().to(device=vertices.device, dtype=dtype)
    view = cameras.viewmat[index].detach().to(device=vertices.device, dtype=dtype)
    cam = vertices @ view[:3, :3].T + view[:3, 3]  # (V, 3), differentiable
    z = cam[:, 2]
    in_front = z.detach() > 0
    z_safe = torch.where(in_front, z, torch.ones_like(z))
    uv = (cam @ K.T)[:, :2] / z_safe[:, None]

    neighbor, opposite = adjacency
    found, ea, eb = _silhouette_crossings(
        faces, neighbor, opposite, uv.detach(), in_front, face[covered], centre, ds, vertical, steps
    )
    keep = found.nonzero().squeeze(1)
    if keep.numel() == 0:
        return hard
    rel_a = uv[ea[keep]] - centre[keep]
    rel_b = uv[eb[keep]] - centre[keep]
    vk = vertical[keep, None]
    along_a, across_a = torch.where(vk, rel_a[:, 1:], rel_a[:, :1]), torch.where(vk, rel_a[:, :1], rel_a[:, 1:])
    along_b, across_b = torch.where(vk, rel_b[:, 1:], rel_b[:, :1]), torch.where(vk, rel_b[:, :1], rel_b[:, 1:])
    c = ds[keep] * (along_a - across_a * (along_b - along_a) / (across_b - across_a)).squeeze(1)
    c_det = c.detach()
    ok = (c_det > -AA_CROSSING_TOLERANCE) & (c_det < 1.0 + AA_CROSSING_TOLERANCE)
    keep, c = keep[ok], c[ok].clamp(0.0, 1.0)
    near_side = c.detach() < 0.5  # crossing on the covered pixel's side: that pixel loses coverage
    target = torch.where(near_side, covered[keep], other[keep])
    source = torch.where(near_side, other[keep], covered[keep])
    delta = (c - 0.5).abs() * (hard[source] - hard[target])
    return hard.index_add(0, target, delta).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------- rendering
def _check_inputs(
    vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, near: float | None, far: float | None,
    antialias_steps: int,
) -> None:
    check_tensor("vertices", vertices, (torch.float32, torch.float64), ndim=2, last_dim=3)
    check_tensor("faces", faces, (torch.int32, torch.int64), ndim=2, last_dim=3)
    check_same_device(vertices=vertices, faces=faces)
    if not isinstance(cameras, Cameras):
        raise ValueError(f"cameras must be a sparse3d.cameras.Cameras, got {type(cameras).__name__}")
    for name, value in (("near", near), ("far", far)):
        if value is not None and (not isinstance(value, (int, float)) or math.isnan(value) or value < 0):
            raise ValueError(f"{name} must be None or a number >= 0, got {value!r}")
    if not isinstance(antialias_steps, int) or antialias_steps < 1:
        raise ValueError(f"antialias_steps must be an int >= 1, got {antialias_steps!r}")
    if near is not None and far is not None and far <= near:
        raise ValueError(f"far must be greater than near, got near={near}, far={far}")


def _ray_mesh_for(vertices: torch.Tensor, faces: torch.Tensor, ray_mesh: RayMesh | None) -> RayMesh:
    if ray_mesh is None:
        return RayMesh(vertices.detach(), faces)
    if not isinstance(ray_mesh, RayMesh):
        raise ValueError(f"ray_mesh must be a RayMesh, got {type(ray_mesh).__name__}")
    if ray_mesh.device != vertices.device or ray_mesh.num_faces != faces.shape[0]:
        raise ValueError(
            f"ray_mesh ({ray_mesh.num_faces} faces on {ray_mesh.device}) does not match faces "
            f"({faces.shape[0]} on {vertices.device})"
        )
    if not torch.equal(ray_mesh.faces, faces.to(torch.int64)):
        raise ValueError("ray_mesh was built over other faces than faces")
    if ray_mesh.vertices.shape != vertices.shape:
        raise ValueError(f"ray_mesh has {ray_mesh.vertices.shape[0]} vertices, vertices has {vertices.shape[0]}")
    if not torch.equal(ray_mesh.vertices, vertices.detach().to(torch.float32)):
        ray_mesh.update(vertices.detach())
    return ray_mesh


def render_mesh(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    cameras: Cameras,
    index: int = 0,
    *,
    near: float | None = None,
    far: float | None = None,
    antialias: bool = True,
    ray_mesh: RayMesh | None = None,
    face_camera: bool = False,
    antialias_steps: int = AA_WALK_STEPS,
) -> MeshRender:
    """Render camera ``index`` of ``cameras``: depth, normal, mask and face id (see the module docstring).

    Args:
        vertices: (V, 3) float32/float64 positions; may require grad (depth, normal and the anti-aliased mask
            are differentiable with respect to them).
        faces: (F, 3) int vertex indices, on the vertices' device.
        cameras: the cameras (moved to the vertices' device as needed).
        near, far: clip the rays to ``near <= camera z <= far`` (None: 0 and infinity).
        antialias: anti-alias the mask along silhouettes (otherwise it is the hard 0/1 coverage, with no
            gradient).
        ray_mesh: a :class:`RayMesh` over the same faces to reuse (its BVH is refitted when its vertices differ
            from ``vertices``); built here when omitted.
        face_camera: flip normals to face the camera (default: the triangle's own outward side).
        antialias_steps: most triangles followed from a covered pixel's triangle towards the silhouette
            (1 = nvdiffrast's rule, only the covered pixel's own triangle).
    """
    _check_inputs(vertices, faces, cameras, near, far, antialias_steps)
    if not isinstance(index, int) or not 0 <= index < len(cameras):
        raise ValueError(f"index must be an int in 0..{len(cameras) - 1}, got {index!r}")
    with serial_torch_ops():
        mesh = _ray_mesh_for(vertices, faces, ray_mesh)
        return _render_one(
            vertices, faces.to(torch.int64), cameras, index, near, far, antialias, mesh, face_camera, antialias_steps
        )


def render_mesh_views(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    cameras: Cameras,
    *,
    near: float | None = None,
    far: float | None = None,
    antialias: bool = True,
    ray_mesh: RayMesh | None = None,
    face_camera: bool = False,
    antialias_steps: int = AA_WALK_STEPS,
) -> list[MeshRender]:
    """:func:`render_mesh` for every camera of ``cameras`` (one BVH for all), in camera order."""
    _check_inputs(vertices, faces, cameras, near, far, antialias_steps)
    with serial_torch_ops():
        mesh = _ray_mesh_for(vertices, faces, ray_mesh)
        f = faces.to(torch.int64)
        return [
            _render_one(vertices, f, cameras, i, near, far, antialias, mesh, face_camera, antialias_steps)
            for i in range(len(cameras))
        ]


def _render_one(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    cameras: Cameras,
    index: int,
    near: float | None,
    far: float | None,
    antialias: bool,
    mesh: RayMesh,
    face_camera: bool,
    antialias_steps: int,
) -> MeshRender:
    H, W = cameras.height, cameras.width
    device, dtype = vertices.device, vertices.dtype
    origin, dirs = _camera_rays(cameras, index, dtype, device)
    origins32 = origin.to(torch.float32).expand(H * W, 3)
    face, _, _ = mesh.cast(
        origins32, dirs.to(torch.float32), 0.0 if near is None else float(near), math.inf if far is None else float(far)
    )
    idx = torch.nonzero(face >= 0).squeeze(1)
    tri = faces[face[idx]]
    p0, p1, p2 = vertices[tri[:, 0]], vertices[tri[:, 1]], vertices[tri[:, 2]]
    t, n = _intersect(origin, dirs[idx], p0, p1, p2)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    if face_camera:
        n = torch.where(((n * dirs[idx]).sum(-1) > 0)[:, None], -n, n)
    depth = torch.zeros(H * W, dtype=dtype, device=device).index_put((idx,), t)
    normal = torch.zeros(H * W, 3, dtype=dtype, device=device).index_put((idx,), n)
    hard = (face >= 0).to(dtype)
    if antialias:
        mask = _silhouette_mask(vertices, faces, _adjacency_for(mesh), cameras, index, face, hard, antialias_steps)
    else:
        mask = hard
    return MeshRender(depth=depth.view(H, W), normal=normal.view(H, W, 3), mask=mask.view(H, W), face=face.view(H, W))
