"""One mesh as a per-scene data set: posed normal-map renders of it, for fitting surfaces from renders.

:func:`load_mesh_scene` reads a mesh (any format :func:`sparse3d.io.mesh.read_mesh` reads), scales it into the
unit box [-0.5, 0.5]³ (:func:`sparse3d.models.sparseflex.structure.normalize_to_unit_box`), places cameras and
returns a :class:`~sparse3d.views.SceneViews` whose images are normal maps (``0.5 + 0.5·n`` for the world-space
unit normal facing the camera, black background) with object masks, and whose ``mesh`` is the normalised target:
methods such as SparseFlex fitting render their depth/normal/mask supervision from it (with their own near/far
sections), and never read its geometry otherwise.

Cameras (OpenCV convention): ``num_views`` input and ``test_views`` test cameras on Fibonacci spheres of radius
``radius`` looking at the origin (test directions are offset so they differ from the inputs), plus
``inside_views`` input cameras at ``inside_center`` looking along spread directions with a wider field of view
(``inside_fov_deg``), for interiors and cavities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sparse3d.cameras import Cameras, look_at
from sparse3d.utils.errors import UserError
from sparse3d.views import PosedImages, SceneViews

__all__ = ["fibonacci_directions", "load_mesh_scene", "normal_images", "orbit_cameras"]


def fibonacci_directions(n: int, offset: float = 0.0) -> np.ndarray:
    """``n`` unit vectors spread evenly over the sphere (a Fibonacci lattice, rotated by ``offset`` radians)."""
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = math.pi * (1.0 + 5.0 ** 0.5) * i + offset
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def orbit_cameras(centres: np.ndarray, targets: np.ndarray, width: int, height: int,
                  fov_deg: float | Sequence[float]) -> Cameras:
    """Cameras at ``centres`` (N, 3) looking at ``targets`` (N, 3), z-up (x-up when looking along z), with a
    horizontal field of view of ``fov_deg`` degrees (one for all, or one per camera)."""
    Rs, ts = [], []
    for c, t in zip(centres, targets, strict=True):
        d = t - c
        up = (0.0, 0.0, 1.0) if abs(d[2]) < 0.95 * np.linalg.norm(d) else (1.0, 0.0, 0.0)
        R = look_at(c, t, up=up)
        Rs.append(R)
        ts.append(-R @ c)
    fovs = np.broadcast_to(np.asarray(fov_deg, dtype=np.float64), (len(Rs),))
    K = np.stack([_intrinsics(width, height, float(f)) for f in fovs])
    return Cameras.from_Rt(K, np.stack(Rs), np.stack(ts), width, height)


def normal_images(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W, 3) normal-map images (``0.5 + 0.5·n``, black where empty) and (N, H, W) bool masks of a mesh."""
    from sparse3d.kernels.ray_mesh import RayMesh
    from sparse3d.render.mesh_renderer import render_mesh

    ray_mesh = RayMesh(vertices, faces)
    images, masks = [], []
    with torch.no_grad():
        for i in range(len(cameras)):
            out = render_mesh(vertices, faces, cameras, i, antialias=False, ray_mesh=ray_mesh, face_camera=True)
            hit = out.face >= 0
            images.append(torch.where(hit[..., None], 0.5 + 0.5 * out.normal, torch.zeros_like(out.normal)))
            masks.append(hit)
    return torch.stack(images).float().clamp(0, 1), torch.stack(masks)


def load_mesh_scene(mesh: str | Path, *, num_views: int = 24, test_views: int = 8, inside_views: int = 0,
                    inside_center: Sequence[float] = (0.0, 0.0, 0.0), inside_fov_deg: float = 100.0,
                    width: int = 128, height: int = 128, fov_deg: float = 45.0, radius: float = 1.6) -> SceneViews:
    """The mesh at ``mesh`` as a :class:`SceneViews` of normal-map renders (see the module docstring)."""
    from sparse3d.io.mesh import TriangleMesh, read_mesh
    from sparse3d.models.sparseflex.structure import normalize_to_unit_box

    if mesh is None or not str(mesh).strip():
        raise UserError("data.mesh= is required: the mesh to fit (.obj .ply .off .glb .gltf .stl)")
    if num_views < 1 or test_views < 0 or inside_views < 0:
        raise UserError(f"data.num_views must be >= 1 and test_views, inside_views >= 0; got {num_views}, "
                        f"{test_views}, {inside_views}")
    if width < 8 or height < 8 or not 5.0 <= fov_deg <= 150.0 or not 5.0 <= inside_fov_deg <= 150.0 \
            or radius <= 0.0:
        raise UserError(f"bad camera settings: width={width} height={height} (>= 8), fov_deg={fov_deg} and "
                        f"inside_fov_deg={inside_fov_deg} (5..150), radius={radius} (> 0)")
    source = read_mesh(mesh)
    norm = normalize_to_unit_box(torch.as_tensor(source.vertices))
    centre = torch.as_tensor(np.asarray(norm.center), dtype=torch.float64).reshape(1, 3)
    local = ((torch.as_tensor(source.vertices, dtype=torch.float64) - centre) / float(norm.scale)).float()
    faces = torch.as_tensor(source.faces, dtype=torch.int64)
    target = TriangleMesh(local.numpy(), faces.numpy())

    outside = fibonacci_directions(num_views) * radius
    centres = [outside]
    targets = [np.zeros_like(outside)]
    fovs = [np.full(num_views, float(fov_deg))]
    if inside_views:
        c = np.asarray(inside_center, dtype=np.float64).reshape(1, 3)
        centres.append(np.repeat(c, inside_views, 0))
        targets.append(c + fibonacci_directions(inside_views, offset=0.3))
        fovs.append(np.full(inside_views, float(inside_fov_deg)))
    input_cams = orbit_cameras(np.concatenate(centres), np.concatenate(targets), width, height,
                               np.concatenate(fovs))
    images, masks = normal_images(local, faces, input_cams)
    if not bool(masks.any()):
        raise UserError(f"{mesh}: no camera sees the mesh (check data.radius / data.fov_deg)")
    name = Path(str(mesh)).stem
    names = tuple(f"input_{i:03d}.png" for i in range(len(input_cams)))
    inputs = PosedImages(images, input_cams, masks, scene=name, names=names)
    test = None
    if test_views:
        tc = fibonacci_directions(test_views, offset=1.1) * radius
        test_cams = orbit_cameras(tc, np.zeros_like(tc), width, height, fov_deg)
        timages, tmasks = normal_images(local, faces, test_cams)
        test = PosedImages(timages, test_cams, tmasks, scene=name,
                           names=tuple(f"test_{i:03d}.png" for i in range(test_views)))
    return SceneViews(inputs, test, mesh=target, normalization=norm)
