"""Closest point, distance and inside/outside sign of query points with respect to a triangle mesh.

A :class:`MeshDistance` wraps one Warp BVH (:class:`warp.Mesh`) built over the mesh, so that many query batches
(e.g. the levels of a coarse-to-fine grid) share one build. Per query point it returns

* ``dist``: the Euclidean distance to the closest point of the mesh, negative inside (``s < 0`` inside, the
  FlexiCubes convention), ``inf`` when no face is strictly closer than ``max_distance``;
* ``face``: the closest face (int64, ``-1`` when none was found);
* ``bary``: the barycentric coordinates ``(b0, b1, b2)`` of the closest point on that face
  (``closest = b0 * v0 + b1 * v1 + b2 * v2``).

Sign modes:

* ``"winding"`` -- inside where the generalised winding number exceeds 1/2 (Jacobson et al., "Robust
  inside-outside segmentation using generalized winding numbers", SIGGRAPH 2013), evaluated by Warp's fast
  dipole approximation (Barill et al., SIGGRAPH 2018). Robust for closed or nearly closed meshes.
* ``"normal"`` -- the sign of the offset ``p - closest`` against the angle-weighted pseudo-normal of the
  closest feature (Baerentzen and Aanaes, IEEE TVCG 2005): the face normal when the closest point is inside a
  face, the faces' (pi-weighted) normals summed at an edge, the angle-weighted sum at a vertex. On an open
  sheet this gives the side of the sheet, the only meaningful sign there.
* ``"none"`` -- unsigned distance (the fastest query).

Faces whose area is negligible relative to their edge lengths (``|e0 x e1| / (|e0|^2 + |e1|^2 + |e2|^2) <
1e-6``, :data:`SLIVER_RATIO`) are ignored by the closest-point search, as Warp's BVH query does; a mesh made only
of such faces has no closest point anywhere. Every thread writes only its own output row, so the CPU split over
cores needs no atomics. The plain-torch oracle is :mod:`sparse3d.kernels.reference.mesh_distance`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import warp as wp

from sparse3d.kernels.runtime import check_same_device, check_tensor, init, launch, to_wp, wp_device

wp.set_module_options({"enable_backward": False, "optimization_level": 3})

MODES: tuple[str, ...] = ("winding", "normal", "none")
"""Accepted sign modes (see the module docstring)."""
SLIVER_RATIO = 1.0e-6
"""Faces with ``|e0 x e1| / (|e0|^2 + |e1|^2 + |e2|^2)`` below this are ignored (Warp's sliver test)."""
SPLIT_MIN_POINTS = 4096
"""Queries from which a CPU launch is split over the cores (each query walks a BVH)."""


@wp.func
def _write(
    i: int,
    mesh: wp.uint64,
    p: wp.vec3,
    found: bool,
    sign: float,
    f: int,
    u: float,
    v: float,
    dist: wp.array(dtype=wp.float32),
    face: wp.array(dtype=wp.int64),
    bary: wp.array(dtype=wp.vec3),
):
    if found:
        c = wp.mesh_eval_position(mesh, f, u, v)
        dist[i] = sign * wp.length(p - c)
        face[i] = wp.int64(f)
        bary[i] = wp.vec3(u, v, 1.0 - u - v)
    else:
        dist[i] = wp.inf
        face[i] = wp.int64(-1)
        bary[i] = wp.vec3(0.0, 0.0, 0.0)


@wp.kernel
def _query_kernel(
    offset: int,
    mesh: wp.uint64,
    points: wp.array(dtype=wp.vec3),
    max_dist: float,
    mode: int,
    dist: wp.array(dtype=wp.float32),
    face: wp.array(dtype=wp.int64),
    bary: wp.array(dtype=wp.vec3),
):
    """Closest point of every query; ``mode`` indexes :data:`MODES` (0 winding, 1 normal, 2 none)."""
    i = wp.tid() + offset
    p = points[i]
    if mode == 0:
        q = wp.mesh_query_point_sign_winding_number(mesh, p, max_dist)
    elif mode == 1:
        q = wp.mesh_query_point_sign_normal(mesh, p, max_dist)
    else:
        q = wp.mesh_query_point_no_sign(mesh, p, max_dist)
    sign = 1.0
    if mode != 2 and q.sign < 0.0:
        sign = -1.0
    _write(i, mesh, p, q.result, sign, q.face, q.u, q.v, dist, face, bary)


@dataclass
class MeshQueryResult:
    """Per-query closest-point answer (see the module docstring)."""

    dist: torch.Tensor
    """(P,) float32 signed distance (``inf`` where nothing was found within ``max_distance``)."""
    face: torch.Tensor
    """(P,) int64 closest face, ``-1`` where nothing was found."""
    bary: torch.Tensor
    """(P, 3) float32 barycentric coordinates of the closest point on ``face`` (zeros where none)."""


def check_mesh(vertices: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a triangle mesh; returns contiguous float32 vertices and int64 faces.

    Raises ValueError naming ``vertices`` or ``faces`` for wrong shapes or dtypes, non-finite vertices, no
    faces, or face indices outside ``[0, V)``.
    """
    check_tensor("vertices", vertices, (torch.float32, torch.float64), ndim=2, last_dim=3)
    check_tensor("faces", faces, (torch.int32, torch.int64), ndim=2, last_dim=3)
    check_same_device(vertices=vertices, faces=faces)
    if faces.shape[0] == 0:
        raise ValueError("faces must hold at least one triangle, got shape (0, 3)")
    if not bool(torch.isfinite(vertices).all()):
        raise ValueError("vertices must be finite (found NaN or inf)")
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0 or hi >= vertices.shape[0]:
        raise ValueError(f"faces index vertices 0..{vertices.shape[0] - 1}, got indices in [{lo}, {hi}]")
    return vertices.to(torch.float32).contiguous(), faces.to(torch.int64).contiguous()


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


class MeshDistance:
    """A triangle mesh with its Warp BVH, queried for closest points and signed distances.

    ``winding=True`` also builds the data for ``mode="winding"`` queries (Warp builds it with the BVH). The
    vertex and index buffers are owned by this object and stay alive as long as it does.
    """

    def __init__(self, vertices: torch.Tensor, faces: torch.Tensor, winding: bool = True) -> None:
        vertices, faces = check_mesh(vertices, faces)
        init()
        self.device = wp_device(vertices)
        self.torch_device = vertices.device
        self.winding = bool(winding)
        self._vertices = vertices
        self._indices = faces.to(torch.int32).reshape(-1).contiguous()
        self._mesh = wp.Mesh(
            points=to_wp(self._vertices, wp.vec3),
            indices=to_wp(self._indices, wp.int32),
            support_winding_number=self.winding,
        )

    @property
    def num_faces(self) -> int:
        return self._indices.shape[0] // 3

    def query(self, points: torch.Tensor, mode: str = "winding", max_distance: float = math.inf) -> MeshQueryResult:
        """Closest face, barycentrics and signed distance of every row of ``points`` (P, 3).

        Only faces strictly closer than ``max_distance`` count; a smaller bound prunes the BVH walk. The sign of
        ``mode="winding"`` needs the object built with ``winding=True``.
        """
        _check_mode(mode)
        check_tensor("points", points, (torch.float32, torch.float64), ndim=2, last_dim=3)
        if points.device != self.torch_device:
            raise ValueError(f"points must be on the mesh's device {self.torch_device}, got {points.device}")
        if not (isinstance(max_distance, (int, float)) and max_distance > 0 and not math.isnan(max_distance)):
            raise ValueError(f"max_distance must be a positive number, got {max_distance!r}")
        if mode == "winding" and not self.winding:
            raise ValueError("mode='winding' needs a MeshDistance built with winding=True")
        pts = points.to(torch.float32).contiguous()
        n = pts.shape[0]
        dist = torch.empty(n, dtype=torch.float32, device=pts.device)
        face = torch.empty(n, dtype=torch.int64, device=pts.device)
        bary = torch.empty((n, 3), dtype=torch.float32, device=pts.device)
        if n:
            launch(
                _query_kernel,
                n,
                [self._mesh.id, to_wp(pts, wp.vec3), float(max_distance), MODES.index(mode), to_wp(dist), to_wp(face),
                 to_wp(bary, wp.vec3)],
                self.device,
                min_split=SPLIT_MIN_POINTS,
            )
        return MeshQueryResult(dist=dist, face=face, bary=bary)


def mesh_signed_distance(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    points: torch.Tensor,
    mode: str = "winding",
    max_distance: float = math.inf,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed distance ``(P,)`` float32 (negative inside) and closest face ``(P,)`` int64 of each query point.

    One-shot form of :class:`MeshDistance` (builds the BVH, queries, drops it). ``mode`` is ``"winding"``,
    ``"normal"`` or ``"none"`` (module docstring); points with no face strictly closer than ``max_distance``
    get ``inf`` and face ``-1``.
    """
    _check_mode(mode)
    check_tensor("points", points, (torch.float32, torch.float64), ndim=2, last_dim=3)
    check_mesh(vertices, faces)
    check_same_device(vertices=vertices, points=points)
    result = MeshDistance(vertices, faces, winding=mode == "winding").query(points, mode, max_distance)
    return result.dist, result.face
