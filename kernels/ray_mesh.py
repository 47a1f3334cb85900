"""Nearest ray--triangle hits against a triangle mesh through Warp's BVH (``wp.Mesh`` + ``wp.mesh_query_ray``).

:func:`cast_rays` answers, for every ray ``o + t d`` and interval ``[t_min, t_max]``, which triangle it hits
first, at which ``t`` and with which barycentric coordinates. :class:`RayMesh` keeps the BVH so that many
cameras (or many optimisation steps, with :meth:`RayMesh.update` refitting it after the vertices move) reuse one
build.

Contract (the plain-torch oracle :mod:`sparse3d.kernels.reference.ray_mesh` states the same):

* No back-face culling: a triangle is hit from either side, so open surfaces and rays starting inside a closed
  mesh work. Triangles with zero area are never hit.
* ``t`` is measured in multiples of the direction's length (unit directions give distances). The hit nearest
  to the origin with ``t_min <= t <= t_max`` wins; the interval is applied by starting the BVH query at
  ``o + t_min d``, so its ends hold up to float32 rounding of that shifted origin.
* Barycentrics ``(b1, b2)``: the hit point is ``(1 - b1 - b2) v0 + b1 v1 + b2 v2`` for the face ``(v0, v1, v2)``
  (Moller--Trumbore's ``(u, v)``, Open3D's ``primitive_uvs``).
* Misses: ``face = -1``, ``t = inf``, ``bary = 0``.
* The triangle test is Warp's watertight one (Woop, Benthin and Wald, "Watertight Ray/Triangle Intersection",
  JCGT 2013): a ray through a shared edge or vertex of a closed mesh hits one of the triangles around it, never
  none. Which of them is reported is unspecified (all give the same ``t``).

Every ray is independent and writes only its own outputs, so the CPU split over the cores
(:func:`sparse3d.kernels.runtime.launch`) needs no atomics; CUDA runs the kernel in one launch.
"""

from __future__ import annotations

import math

import torch
import warp as wp

from sparse3d.kernels.runtime import (
    check_same_device,
    check_tensor,
    init,
    launch,
    to_wp,
    torch_stream,
    wp_device,
)

wp.set_module_options({"enable_backward": False, "optimization_level": 3})

__all__ = ["RayMesh", "cast_rays"]

SPLIT_MIN_RAYS = 4096
"""Rays from which a CPU launch is split over the cores (each ray walks the BVH, far more than an element op)."""


@wp.kernel
def _cast_kernel(
    offset: int,
    mesh: wp.uint64,
    origins: wp.array(dtype=wp.vec3),
    directions: wp.array(dtype=wp.vec3),
    t_min: wp.array(dtype=wp.float32),
    t_max: wp.array(dtype=wp.float32),
    t_stride: int,
    face_out: wp.array(dtype=wp.int64),
    t_out: wp.array(dtype=wp.float32),
    bary_out: wp.array(dtype=wp.vec2),
):
    r = wp.tid() + offset
    lo = t_min[r * t_stride]
    hi = t_max[r * t_stride]
    face = wp.int64(-1)
    t = float(wp.inf)
    bary = wp.vec2(0.0, 0.0)
    if hi >= lo:
        d = directions[r]
        start = origins[r] + d * lo
        # mesh_query_ray keeps hits with 0 <= t < max_t: widen the end by one ulp so t_max itself counts.
        span = hi - lo
        span = span + wp.max(span * 1.1920929e-07, 1.0e-30)
        q = wp.mesh_query_ray(mesh, start, d, span)
        if q.result:
            face = wp.int64(q.face)
            t = lo + q.t
            # Warp's (u, v) weigh the face's first and second vertex; ours weigh the second and third.
            bary = wp.vec2(q.v, 1.0 - q.u - q.v)
    face_out[r] = face
    t_out[r] = t
    bary_out[r] = bary




def _check_mesh(vertices: torch.Tensor, faces: torch.Tensor) -> None:
    check_tensor("vertices", vertices, (torch.float32, torch.float64), ndim=2, last_dim=3)
    check_tensor("faces", faces, (torch.int32, torch.int64), ndim=2, last_dim=3)
    check_same_device(vertices=vertices, faces=faces)
    if faces.shape[0] == 0:
        raise ValueError("faces must hold at least one triangle, got shape (0, 3)")
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0 or hi >= vertices.shape[0]:
        raise ValueError(f"faces index vertices outside 0..{vertices.shape[0] - 1} (min {lo}, max {hi})")
    if not bool(torch.isfinite(vertices).all()):
        raise ValueError("vertices contain NaN or inf")


def _interval(name: str, value: float | torch.Tensor, rays: int, device: torch.device) -> torch.Tensor:
    """A per-ray (R,) or broadcast (1,) float32 tensor for ``t_min`` / ``t_max``."""
    if isinstance(value, torch.Tensor):
        check_tensor(name, value, (torch.float32, torch.float64))
        if value.dim() == 0:
            value = value.reshape(1)
        if value.dim() != 1 or value.shape[0] not in (1, rays):
            raise ValueError(f"{name} must be a scalar or have shape ({rays},), got {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{name} is on {value.device} but the rays are on {device}")
        return value.detach().to(torch.float32).contiguous()
    if not isinstance(value, (int, float)) or math.isnan(float(value)):
        raise ValueError(f"{name} must be a number or a tensor, got {value!r}")
    return torch.full((1,), float(value), dtype=torch.float32, device=device)


class RayMesh:
    """A triangle mesh with its Warp BVH, for casting many batches of rays.

    Args:
        vertices: (V, 3) float positions (detached and copied to float32; gradients are not tracked here).
        faces: (F, 3) int vertex indices, F >= 1, on the same device.

    The BVH lives on the vertices' device (CPU or CUDA). :meth:`update` moves the vertices and refits the BVH
    (same topology, boxes recomputed), which is much cheaper than a rebuild while the mesh deforms smoothly.
    """

    def __init__(self, vertices: torch.Tensor, faces: torch.Tensor) -> None:
        _check_mesh(vertices, faces)
        init()
        self.device = vertices.device
        self._wp_device = wp_device(vertices)
        self._points = vertices.detach().to(torch.float32).contiguous().clone()
        self.faces = faces.to(torch.int64).contiguous()
        self._indices = faces.to(torch.int32).reshape(-1).contiguous()
        with torch_stream(self.device):
            self._mesh = wp.Mesh(
                points=to_wp(self._points, dtype=wp.vec3), indices=to_wp(self._indices, dtype=wp.int32)
            )

    @property
    def vertices(self) -> torch.Tensor:
        """(V, 3) float32 positions the BVH was built or last refitted for (do not modify in place)."""
        return self._points

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def update(self, vertices: torch.Tensor) -> None:
        """Move the vertices to ``vertices`` (same count and device) and refit the BVH."""
        check_tensor("vertices", vertices, (torch.float32, torch.float64), ndim=2, last_dim=3)
        if vertices.shape != self._points.shape:
            raise ValueError(f"vertices must have shape {tuple(self._points.shape)}, got {tuple(vertices.shape)}")
        if vertices.device != self.device:
            raise ValueError(f"vertices are on {vertices.device} but the mesh is on {self.device}")
        if not bool(torch.isfinite(vertices).all()):
            raise ValueError("vertices contain NaN or inf")
        with torch.no_grad():
            self._points.copy_(vertices)
        with torch_stream(self.device):
            self._mesh.refit()

    def cast(
        self,
        origins: torch.Tensor,
        directions: torch.Tensor,
        t_min: float | torch.Tensor = 0.0,
        t_max: float | torch.Tensor = math.inf,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nearest hits of the rays ``origins + t * directions`` (R, 3) with ``t_min <= t <= t_max``.

        ``t_min`` / ``t_max`` are numbers or (R,) tensors. Returns ``face`` (R,) int64 (-1 = miss), ``t`` (R,)
        float32 (inf on misses) and ``bary`` (R, 2) float32 (see the module docstring for the conventions).
        """
        check_tensor("origins", origins, (torch.float32, torch.float64), ndim=2, last_dim=3)
        check_tensor("directions", directions, (torch.float32, torch.float64), ndim=2, last_dim=3)
        if origins.shape != directions.shape:
            raise ValueError(f"origins {tuple(origins.shape)} and directions {tuple(directions.shape)} differ in shape")
        if origins.device != self.device or directions.device != self.device:
            raise ValueError(f"origins/directions must be on the mesh's device {self.device}")
        rays = origins.shape[0]
        lo = _interval("t_min", t_min, rays, self.device)
        hi = _interval("t_max", t_max, rays, self.device)
        if bool(torch.isinf(lo).any()):
            raise ValueError("t_min must be finite")
        stride = 1 if rays > 1 and (lo.shape[0] == rays or hi.shape[0] == rays) else 0
        if stride:
            lo = lo.expand(rays).contiguous()
            hi = hi.expand(rays).contiguous()
        face = torch.empty(rays, dtype=torch.int64, device=self.device)
        t = torch.empty(rays, dtype=torch.float32, device=self.device)
        bary = torch.empty(rays, 2, dtype=torch.float32, device=self.device)
        if rays == 0:
            return face, t, bary
        o = origins.detach().to(torch.float32).contiguous()
        d = directions.detach().to(torch.float32).contiguous()
        with torch_stream(self.device):
            launch(
                _cast_kernel,
                rays,
                [
                    self._mesh.id,
                    to_wp(o, dtype=wp.vec3),
                    to_wp(d, dtype=wp.vec3),
                    to_wp(lo),
                    to_wp(hi),
                    stride,
                    to_wp(face),
                    to_wp(t),
                    to_wp(bary, dtype=wp.vec2),
                ],
                self._wp_device,
                min_split=SPLIT_MIN_RAYS,
            )
        return face, t, bary


def cast_rays(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    origins: torch.Tensor,
    directions: torch.Tensor,
    t_min: float | torch.Tensor = 0.0,
    t_max: float | torch.Tensor = math.inf,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest hit of every ray with the mesh ``(vertices, faces)``: ``(face, t, bary)``.

    Builds a :class:`RayMesh` and casts once; keep a :class:`RayMesh` to cast several batches.
    """
    return RayMesh(vertices, faces).cast(origins, directions, t_min, t_max)
