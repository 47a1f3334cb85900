"""Drawables from sparse3d's in-memory data: point clouds with a colouring, 3-D boxes, meshes, Gaussian clouds,
posed cameras with their images, sparse voxel tensors.

Each builder takes arrays or sparse3d objects (not file names; :mod:`sparse3d.vis.sources` reads files) and
returns :mod:`sparse3d.vis.scene` drawables, so training code can build the same pictures it logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from sparse3d.cameras import Cameras
from sparse3d.geometry.boxes import BOX_EDGES, box_corners, points_in_boxes
from sparse3d.io.gaussian_ply import GaussianCloud
from sparse3d.models.splatting.gaussians import SH_C0
from sparse3d.utils.errors import UserError
from sparse3d.views import PosedImages
from sparse3d.vis import colors as C
from sparse3d.vis.detections import BoxSet
from sparse3d.vis.geometry import (
    boundary_edges,
    ellipsoid_mesh,
    frustum_corners,
    heading_segments,
    image_plane_grid,
    mesh_edges,
    vertex_normals,
)
from sparse3d.vis.scene import CoordinateFrame, Drawable, Lines, Mesh, Points, Voxels

if TYPE_CHECKING:
    from sparse3d.sparse.tensor import SparseVoxelTensor

__all__ = [
    "COLOR_MODES",
    "PointData",
    "point_colors",
    "point_cloud",
    "box_lines",
    "box_drawables",
    "highlight_points_in_boxes",
    "mesh_drawables",
    "gaussian_colors",
    "gaussian_points",
    "gaussian_glyphs",
    "default_frustum_depth",
    "camera_frusta",
    "posed_images_drawables",
    "camera_up_forward",
    "voxels_from_tensor",
    "voxelize_points",
    "coordinate_frame",
]

COLOR_MODES = C.COLOR_MODES


@dataclass
class PointData:
    """A point cloud with the per-point fields a file may carry.

    Attributes:
        xyz: (N, 3) float32 positions.
        intensity: (N,) reflectance / intensity, or None.
        rgb: (N, 3) float32 colours in [0, 1], or None.
        labels: (N,) int64 semantic labels, or None.
        source: what the points came from (a file name), used in error messages.
    """

    xyz: np.ndarray
    intensity: np.ndarray | None = None
    rgb: np.ndarray | None = None
    labels: np.ndarray | None = None
    source: str = "points"

    def __post_init__(self) -> None:
        self.xyz = np.ascontiguousarray(self.xyz, dtype=np.float32)
        if self.xyz.ndim != 2 or self.xyz.shape[1] != 3:
            raise ValueError(f"{self.source}: xyz must have shape (N, 3), got {self.xyz.shape}")
        n = self.xyz.shape[0]
        for name in ("intensity", "rgb", "labels"):
            value = getattr(self, name)
            if value is not None and np.asarray(value).shape[:1] != (n,):
                raise ValueError(f"{self.source}: {name} has {np.asarray(value).shape[0]} rows, xyz has {n}")


def point_colors(data: PointData, mode: str = "auto", up: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """(N, 3) colours of ``data`` by ``mode`` (one of :data:`COLOR_MODES`).

    ``intensity``: viridis over the 1..99 % quantiles; ``height``: turbo over the 1..99 % quantiles of the
    coordinate along ``up``; ``label``: :func:`~sparse3d.vis.colors.label_colors`; ``rgb``: the stored colours.
    Asking for a field the cloud lacks raises :class:`UserError` naming the source.
    """
    if mode not in COLOR_MODES:
        raise UserError(f"--color: unknown colouring {mode!r}; one of {', '.join(COLOR_MODES)}")
    if mode == "auto":
        mode = "rgb" if data.rgb is not None else "intensity" if data.intensity is not None else "height"
    if mode == "rgb":
        if data.rgb is None:
            raise UserError(f"{data.source}: --color rgb: the point cloud has no colours")
        return C.unit_rgb(data.rgb)
    if mode == "intensity":
        if data.intensity is None:
            raise UserError(f"{data.source}: --color intensity: the point cloud has no intensity values")
        return C.colormap(data.intensity, "viridis")
    if mode == "label":
        if data.labels is None:
            raise UserError(f"{data.source}: --color label: the point cloud has no labels")
        return C.label_colors(data.labels)
    height = data.xyz.astype(np.float64) @ (np.asarray(up, np.float64) / np.linalg.norm(up))
    return C.colormap(height, "turbo")


def point_cloud(data: PointData, mode: str = "auto", up: Sequence[float] = (0.0, 0.0, 1.0)) -> Points:
    """A :class:`Points` drawable of ``data`` coloured by ``mode`` (see :func:`point_colors`)."""
    return Points(data.xyz, point_colors(data, mode, up), name=data.source)


def box_lines(boxes: np.ndarray, color: Sequence[float], name: str = "boxes") -> Lines:
    """(B, 7) boxes as one line set: the 12 edges of each box plus its heading marker, a segment from the box
    centre to the centre of its front face. Vertices are 8 corners, then centre and front point, per box."""
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    corners = box_corners(arr)
    b = len(corners)
    if b:
        start, end = heading_segments(arr)
    else:
        start = end = np.zeros((0, 3))
    vertices = np.concatenate([corners, start[:, None], end[:, None]], axis=1).reshape(-1, 3)
    base = 10 * np.arange(b)[:, None, None]
    edges = np.asarray(BOX_EDGES, dtype=np.int64)
    segments = np.concatenate([edges[None] + base, np.array([[[8, 9]]]) + base], axis=1).reshape(-1, 2)
    return Lines(vertices, segments, np.tile(np.asarray(color, np.float32), (len(segments), 1)), name=name)


def box_drawables(boxes: BoxSet, name: str = "boxes") -> list[Lines]:
    """Ground truth (entries without a score) and predictions as two line sets in
    :data:`~sparse3d.vis.colors.GT_BOX_COLOR` and :data:`~sparse3d.vis.colors.PRED_BOX_COLOR`."""
    out = []
    pred = boxes.is_prediction
    for mask, color, kind in ((~pred, C.GT_BOX_COLOR, "ground truth"), (pred, C.PRED_BOX_COLOR, "predicted")):
        if mask.any():
            out.append(box_lines(boxes.boxes[mask], color, name=f"{name} ({kind})"))
    return out


def highlight_points_in_boxes(points: Points, boxes: np.ndarray, color: Sequence[float]) -> Points:
    """A copy of ``points`` with the points inside any of ``boxes`` recoloured to ``color``."""
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    inside = points_in_boxes(points.positions, arr).any(axis=0) if len(arr) else None
    colors = points.colors.copy()
    if inside is not None:
        colors[inside] = np.asarray(color, np.float32)
    return Points(points.positions, colors, name=points.name)


def mesh_drawables(
    vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None, *, wireframe: bool = False,
    normals: bool = False, name: str = "mesh",
) -> list[Drawable]:
    """A mesh, its open-boundary edges (edges of exactly one face) in
    :data:`~sparse3d.vis.colors.BOUNDARY_COLOR`, and optionally its wireframe and vertex normals.

    ``colors`` are per-vertex (uint8 or float); without them the mesh is grey. Normal segments are 2 % of
    the mesh's bounding-box diagonal long, drawn from at most 20k vertices (evenly strided).
    """
    v = np.asarray(vertices, dtype=np.float32)
    f = np.asarray(faces, dtype=np.int64)
    vc = np.tile(np.asarray(C.MESH_COLOR, np.float32), (len(v), 1)) if colors is None else C.unit_rgb(colors)
    vn = vertex_normals(v, f)
    out: list[Drawable] = [Mesh(v, f, vc, normals=vn, shaded=True, name=name)]
    if wireframe:
        edges, _ = mesh_edges(f)
        out.append(Lines(v, edges, np.tile(np.asarray(C.WIREFRAME_COLOR, np.float32), (len(edges), 1)),
                         name=f"{name} wireframe"))
    boundary = boundary_edges(f)
    if len(boundary):
        out.append(Lines(v, boundary, np.tile(np.asarray(C.BOUNDARY_COLOR, np.float32), (len(boundary), 1)),
                         name=f"{name} open boundary"))
    if normals and len(v):
        used = np.zeros(len(v), bool)
        used[f.reshape(-1)] = True
        idx = np.flatnonzero(used & (np.abs(vn).sum(axis=1) > 0))[:: max(1, int(used.sum()) // 20000)]
        length = 0.02 * float(np.linalg.norm(v.max(axis=0) - v.min(axis=0)))
        ends = np.concatenate([v[idx], v[idx] + length * vn[idx]])
        seg = np.stack([np.arange(len(idx)), len(idx) + np.arange(len(idx))], axis=1)
        out.append(Lines(ends, seg, np.tile(np.asarray(C.NORMAL_COLOR, np.float32), (len(idx), 1)),
                         name=f"{name} normals"))
    return out


def gaussian_colors(cloud: GaussianCloud) -> np.ndarray:
    """(N, 3) view-independent colours of a Gaussian cloud: its DC term ``SH_C0 * f_dc + 0.5``, clipped."""
    dc = cloud.sh[:, 0, :].detach().cpu().double().numpy()
    return np.clip(SH_C0 * dc + 0.5, 0.0, 1.0).astype(np.float32)


def gaussian_points(cloud: GaussianCloud, name: str = "gaussians") -> Points:
    """The Gaussians' centres as points in their DC colours."""
    return Points(cloud.means.detach().cpu().numpy(), gaussian_colors(cloud), name=name)


def gaussian_glyphs(
    cloud: GaussianCloud, count: int, rank_by: str = "opacity", sigma: float = 2.0, name: str = "gaussians"
) -> Mesh:
    """The ``count`` most opaque (``rank_by="opacity"``) or largest (``"size"``: largest axis) Gaussians as
    shaded ellipsoids at their ``sigma``-level surface, in their DC colours."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if rank_by not in ("opacity", "size"):
        raise ValueError(f"rank_by must be 'opacity' or 'size', got {rank_by!r}")
    key = cloud.opacities if rank_by == "opacity" else cloud.scales.max(dim=1).values
    order = torch.argsort(key.detach().cpu(), descending=True, stable=True)[:count].numpy()
    means = cloud.means.detach().cpu().numpy()[order]
    vertices, faces = ellipsoid_mesh(means, cloud.quats.detach().cpu().numpy()[order],
                                     cloud.scales.detach().cpu().numpy()[order], sigma=sigma)
    per_glyph = len(vertices) // max(len(order), 1)
    colors = np.repeat(gaussian_colors(cloud)[order], per_glyph, axis=0)
    return Mesh(vertices, faces, colors, shaded=True, name=name)


def default_frustum_depth(centres: np.ndarray) -> float:
    """A frustum depth that keeps neighbouring frusta apart: 15 % of the median distance of the camera
    centres from their mean (1.0 for a single camera or coincident centres)."""
    c = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    if len(c) < 2:
        return 1.0
    spread = float(np.median(np.linalg.norm(c - c.mean(axis=0), axis=1)))
    return 0.15 * spread if spread > 0 else 1.0


def camera_frusta(
    cameras: Cameras, images: Sequence[np.ndarray | None] | None = None, color: Sequence[float] = C.INPUT_CAMERA_COLOR,
    depth: float | None = None, max_cells: int = 64, name: str = "cameras",
) -> list[Drawable]:
    """Each camera as a pyramid from its centre (the apex) to its image rectangle at camera depth ``depth``,
    with a small triangle above the image's top edge marking image-up; with ``images[i]`` (H, W, 3 in [0, 1])
    the rectangle is filled by the image (an unlit vertex-coloured grid of at most ``max_cells`` cells across).
    ``depth`` defaults to :func:`default_frustum_depth`."""
    K, view = cameras.K.detach().cpu().numpy(), cameras.viewmat.detach().cpu().numpy()
    w, h = cameras.width, cameras.height
    centres, corners = frustum_corners(K, view, w, h, 1.0)
    d = default_frustum_depth(centres) if depth is None else float(depth)
    centres, corners = frustum_corners(K, view, w, h, d)
    # The up-marker tip: above the top edge's middle by a quarter of the image height, in the image plane.
    tip = corners[:, 0] + 0.5 * (corners[:, 1] - corners[:, 0]) + 0.25 * (corners[:, 0] - corners[:, 3])
    n = len(centres)
    vertices = np.concatenate([centres[:, None], corners, tip[:, None]], axis=1).reshape(-1, 3)
    local = np.array([[0, 1], [0, 2], [0, 3], [0, 4], [1, 2], [2, 3], [3, 4], [4, 1], [1, 5], [5, 2]])
    segments = (local[None] + 6 * np.arange(n)[:, None, None]).reshape(-1, 2)
    out: list[Drawable] = [Lines(vertices, segments, np.tile(np.asarray(color, np.float32), (len(segments), 1)),
                                 name=name)]
    for i, image in enumerate(images or []):
        if image is None:
            continue
        img = np.asarray(image, dtype=np.float32)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image {i} must be (H, W, 3), got {img.shape}")
        cols = max(1, min(max_cells, img.shape[1]))
        rows = max(1, round(cols * img.shape[0] / img.shape[1]))
        grid_v, grid_f = image_plane_grid(K[i], view[i], w, h, d, cols, rows)
        vc = cv2.resize(img, (cols + 1, rows + 1), interpolation=cv2.INTER_AREA).reshape(-1, 3)
        out.append(Mesh(grid_v, grid_f, np.clip(vc, 0.0, 1.0), shaded=False, name=f"{name} image {i}"))
    return out


def posed_images_drawables(
    views: PosedImages, color: Sequence[float] = C.INPUT_CAMERA_COLOR, depth: float | None = None,
    with_images: bool = True,
) -> list[Drawable]:
    """The frusta of a :class:`~sparse3d.views.PosedImages` with its images (see :func:`camera_frusta`)."""
    images = list(views.images.detach().cpu().numpy()) if with_images else None
    return camera_frusta(views.cameras, images, color=color, depth=depth, name=views.scene or "cameras")


def camera_up_forward(cameras: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """World directions for viewing a camera set: ``up`` = the mean of the cameras' image-up directions (minus
    their y axes), ``forward`` = their mean viewing direction made orthogonal to ``up`` (or any direction
    orthogonal to ``up`` when the cameras face each other, as on a turntable rig)."""
    R = cameras.R.detach().cpu().double().numpy()
    up = -R[:, 1, :].mean(axis=0)
    up = up / np.linalg.norm(up) if np.linalg.norm(up) > 1e-9 else np.array([0.0, 0.0, 1.0])
    fwd = R[:, 2, :].mean(axis=0)
    fwd = fwd - fwd.dot(up) * up
    if np.linalg.norm(fwd) < 1e-6:
        axis = np.eye(3)[int(np.argmin(np.abs(up)))]
        fwd = axis - axis.dot(up) * up
    return up, fwd / np.linalg.norm(fwd)


def voxels_from_tensor(
    tensor: SparseVoxelTensor, batch: int = 0, colors: np.ndarray | None = None, name: str = "voxels"
) -> Voxels:
    """The active voxels of batch element ``batch`` as cubes; ``colors`` (N, 3) per voxel of the whole tensor,
    default: turbo over the voxel centres' height (z)."""
    keep = (tensor.coords[:, 0] == batch).cpu().numpy()
    centres = tensor.voxel_centers().detach().cpu().numpy()[keep]
    if colors is None:
        vc = C.colormap(centres[:, 2], "turbo") if len(centres) else np.zeros((0, 3), np.float32)
    else:
        vc = C.unit_rgb(np.asarray(colors)[keep])
    return Voxels(centres, np.asarray(tensor.voxel_size, np.float32), vc, name=name)


def voxelize_points(points: Points, voxel_size: float) -> Voxels:
    """The voxels of edge ``voxel_size`` that ``points`` occupy (grid anchored at the cloud's minimum corner),
    each coloured by the mean colour of its points; voxelised with :meth:`SparseVoxelTensor.from_points`."""
    if not voxel_size > 0:
        raise UserError(f"--voxel-size: must be positive, got {voxel_size}")
    pos = points.positions[np.isfinite(points.positions).all(axis=1)]
    if not len(pos):
        return Voxels(np.zeros((0, 3)), voxel_size, np.zeros((0, 3)), name=f"{points.name} voxels")
    lo, hi = pos.min(axis=0), pos.max(axis=0) + voxel_size
    cells = np.ceil((hi - lo) / voxel_size).astype(np.float64)
    if float(np.prod(cells)) >= 2.0**62:
        raise UserError(f"--voxel-size: {voxel_size} is too small for a cloud spanning {(hi - lo).tolist()}")
    from sparse3d.sparse.tensor import SparseVoxelTensor  # imports the Warp kernels: only when voxelising

    colors = points.colors[np.isfinite(points.positions).all(axis=1)]
    tensor, _ = SparseVoxelTensor.from_points(
        torch.from_numpy(np.ascontiguousarray(pos)), [voxel_size] * 3, [*lo.tolist(), *hi.tolist()],
        features=torch.from_numpy(np.ascontiguousarray(colors)),
    )
    return voxels_from_tensor(tensor, colors=np.clip(tensor.features.numpy(), 0.0, 1.0), name=f"{points.name} voxels")


def coordinate_frame(size: float = 1.0, origin: Sequence[float] = (0.0, 0.0, 0.0)) -> CoordinateFrame:
    """Axes at ``origin`` (the sensor origin of a LiDAR scan)."""
    return CoordinateFrame(np.asarray(origin, np.float32), float(size))
