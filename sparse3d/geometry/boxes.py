"""3-D boxes in the LiDAR frame and their KITTI camera-frame form (numpy, at the IO boundary).

Conventions (those of OpenPCDet):

* LiDAR frame: x forward, y left, z up. A box is ``(x, y, z, dx, dy, dz, heading)``: ``(x, y, z)`` its
  geometric centre, ``dx`` the extent along the heading direction, ``dy`` across it, ``dz`` vertical, and
  ``heading`` the yaw counter-clockwise from +x (seen from above).
* KITTI label: bottom centre ``location`` in the rectified camera frame (x right, y down, z forward),
  ``(h, w, l)`` and ``rotation_y`` about the camera's y axis. The conversion is
  ``xyz = rect_to_lidar(location)``, ``z += h / 2``, ``(dx, dy, dz) = (l, w, h)``,
  ``heading = -(rotation_y + pi / 2)``; its inverse undoes each step (no angle wrapping, so a round trip gives
  the same numbers back).
* Corner order of :func:`box_corners` (OpenPCDet's): indices 0-3 the bottom face, 4-7 the top face directly
  above them; 0 = (+dx/2, +dy/2), 1 = (+dx/2, -dy/2), 2 = (-dx/2, -dy/2), 3 = (-dx/2, +dy/2) in the box frame,
  so 0-1 is the front edge (the heading side).
"""

from __future__ import annotations

import math

import numpy as np

from sparse3d.io.kitti import KittiCalib

__all__ = [
    "BOX_EDGES",
    "box_corners",
    "boxes_to_image_bbox",
    "camera_to_lidar_boxes",
    "count_points_in_boxes",
    "lidar_to_camera_boxes",
    "observation_angle",
    "points_in_boxes",
    "wrap_angle",
]

_CORNER_SIGNS = (
    np.array(
        [[1, 1, -1], [1, -1, -1], [-1, -1, -1], [-1, 1, -1], [1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1]],
        dtype=np.float64,
    )
    / 2.0
)
BOX_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1),
    (1, 2),
    (2, 3),
    (3, 0),
    (4, 5),
    (5, 6),
    (6, 7),
    (7, 4),
    (0, 4),
    (1, 5),
    (2, 6),
    (3, 7),
)
"""The 12 edges of a box as pairs of :func:`box_corners` indices (bottom ring, top ring, verticals)."""
_NEAR = 1e-3  # homogeneous depth (m) below which projected corners are clipped away


def _boxes(boxes: np.ndarray, name: str = "boxes") -> np.ndarray:
    arr = np.asarray(boxes)
    if arr.ndim != 2 or arr.shape[1] != 7:
        raise ValueError(f"{name} must have shape (M, 7) (x, y, z, dx, dy, dz, heading), got {arr.shape}")
    return arr


def _out_dtype(arr: np.ndarray) -> np.dtype:
    return np.dtype(np.float64) if arr.dtype == np.float64 else np.dtype(np.float32)


def wrap_angle(angle: np.ndarray | float) -> np.ndarray:
    """Angles wrapped to [-pi, pi) (float64)."""
    a = np.asarray(angle, dtype=np.float64)
    return (a + math.pi) % (2.0 * math.pi) - math.pi


def camera_to_lidar_boxes(
    location: np.ndarray, hwl: np.ndarray, rotation_y: np.ndarray, calib: KittiCalib, dtype: type = np.float32
) -> np.ndarray:
    """KITTI camera-frame labels -> LiDAR boxes (M, 7) (``dtype``, float32 by default; computed in float64).

    ``location`` (M, 3) bottom centres in the rectified camera frame, ``hwl`` (M, 3) as in the label file,
    ``rotation_y`` (M,)."""
    loc = np.asarray(location, dtype=np.float64)
    dims = np.asarray(hwl, dtype=np.float64)
    ry = np.asarray(rotation_y, dtype=np.float64)
    if loc.ndim != 2 or loc.shape[1] != 3:
        raise ValueError(f"location must have shape (M, 3), got {loc.shape}")
    m = loc.shape[0]
    if dims.shape != (m, 3):
        raise ValueError(f"hwl must have shape ({m}, 3), got {dims.shape}")
    if ry.shape != (m,):
        raise ValueError(f"rotation_y must have shape ({m},), got {ry.shape}")
    xyz = calib.rect_to_lidar(loc)
    h, w, length = dims[:, 0], dims[:, 1], dims[:, 2]
    xyz[:, 2] += h / 2.0
    heading = -(ry + np.pi / 2.0)
    return np.concatenate([xyz, np.stack([length, w, h, heading], axis=1)], axis=1).astype(dtype)


def lidar_to_camera_boxes(boxes: np.ndarray, calib: KittiCalib) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LiDAR boxes (M, 7) -> KITTI ``(location (M, 3), hwl (M, 3), rotation_y (M,))``, the exact inverse of
    :func:`camera_to_lidar_boxes` (float32 for float32 boxes, float64 for float64; ``rotation_y`` not
    wrapped)."""
    arr = _boxes(boxes)
    out = _out_dtype(arr)
    b = arr.astype(np.float64)
    bottom = b[:, :3].copy()
    bottom[:, 2] -= b[:, 5] / 2.0
    location = calib.lidar_to_rect(bottom)
    hwl = b[:, [5, 4, 3]]
    rotation_y = -b[:, 6] - np.pi / 2.0
    return location.astype(out), hwl.astype(out), rotation_y.astype(out)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """The 8 corners (M, 8, 3) of each box, in the order given in the module docstring."""
    arr = _boxes(boxes)
    b = arr.astype(np.float64)
    local = b[:, None, 3:6] * _CORNER_SIGNS[None]  # (M, 8, 3)
    c, s = np.cos(b[:, 6])[:, None], np.sin(b[:, 6])[:, None]
    x = local[..., 0] * c - local[..., 1] * s
    y = local[..., 0] * s + local[..., 1] * c
    corners = np.stack([x, y, local[..., 2]], axis=-1) + b[:, None, :3]
    return corners.astype(_out_dtype(arr))


def points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(M, N) bool: point n lies in box m, i.e. within the box's half-extents in the box's own frame, faces
    included. ``points`` is (N, 3) or (N, C >= 3) (extra columns ignored); computed in float64."""
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must have shape (N, 3) or (N, C>=3), got {pts.shape}")
    b = _boxes(boxes).astype(np.float64)
    xyz = pts[:, :3].astype(np.float64)
    inside = np.zeros((b.shape[0], xyz.shape[0]), dtype=bool)
    for m in range(b.shape[0]):
        cx, cy, cz, dx, dy, dz, heading = b[m]
        shifted_z = xyz[:, 2] - cz
        near = np.abs(shifted_z) <= dz / 2.0
        # cheap prefilter: the box's circumscribed circle in BEV
        rx, ry = xyz[:, 0] - cx, xyz[:, 1] - cy
        near &= rx * rx + ry * ry <= (dx * dx + dy * dy) / 4.0 * (1.0 + 1e-9)
        idx = np.flatnonzero(near)
        if idx.size == 0:
            continue
        c, s = math.cos(heading), math.sin(heading)
        local_x = rx[idx] * c + ry[idx] * s
        local_y = -rx[idx] * s + ry[idx] * c
        inside[m, idx] = (np.abs(local_x) <= dx / 2.0) & (np.abs(local_y) <= dy / 2.0)
    return inside


def count_points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(M,) int64: how many of ``points`` lie in each box (:func:`points_in_boxes`; a point in two overlapping
    boxes counts for both)."""
    return points_in_boxes(points, boxes).sum(axis=1, dtype=np.int64)


def boxes_to_image_bbox(boxes: np.ndarray, calib: KittiCalib, image_shape: tuple[int, int]) -> np.ndarray:
    """2-D boxes (M, 4) float32 ``(x1, y1, x2, y2)`` in image 2: the extent of each box's projected corners,
    clipped to ``[0, width - 1] x [0, height - 1]`` as KITTI labels are.

    The box is clipped against a near plane just in front of the camera before projecting, so a box that
    reaches behind the camera gets the 2-D extent of its visible part; a box wholly behind the camera gets
    ``(0, 0, 0, 0)``. A box outside the image gets a zero-width or zero-height box on the image border."""
    arr = _boxes(boxes)
    height, width = int(image_shape[0]), int(image_shape[1])
    if height < 1 or width < 1:
        raise ValueError(f"image_shape must be (height, width) >= 1, got {image_shape}")
    m = arr.shape[0]
    out = np.zeros((m, 4), dtype=np.float32)
    if m == 0:
        return out
    corners = box_corners(arr.astype(np.float64))  # (M, 8, 3)
    rect = calib.lidar_to_rect(corners.reshape(-1, 3))
    hom = (np.concatenate([rect, np.ones((rect.shape[0], 1))], axis=1) @ calib.P2.T).reshape(m, 8, 3)
    edges = np.array(BOX_EDGES)
    for i in range(m):
        h = hom[i]
        w = h[:, 2]
        keep = [h[w >= _NEAR]]
        wa, wb = w[edges[:, 0]], w[edges[:, 1]]
        crossing = (wa - _NEAR) * (wb - _NEAR) < 0
        if crossing.any():
            a, b = h[edges[crossing, 0]], h[edges[crossing, 1]]
            t = (_NEAR - wa[crossing]) / (wb[crossing] - wa[crossing])
            keep.append(a + t[:, None] * (b - a))
        visible = np.concatenate(keep, axis=0)
        if visible.shape[0] == 0:
            continue
        uv = visible[:, :2] / visible[:, 2:3]
        lo, hi = uv.min(axis=0), uv.max(axis=0)
        out[i] = [
            np.clip(lo[0], 0, width - 1),
            np.clip(lo[1], 0, height - 1),
            np.clip(hi[0], 0, width - 1),
            np.clip(hi[1], 0, height - 1),
        ]
    return out


def observation_angle(boxes: np.ndarray, calib: KittiCalib) -> np.ndarray:
    """KITTI ``alpha`` (M,) float32 of LiDAR boxes: ``rotation_y - atan2(x, z)`` of the bottom centre in the
    rectified camera frame, wrapped to [-pi, pi)."""
    location, _, rotation_y = lidar_to_camera_boxes(_boxes(boxes).astype(np.float64), calib)
    alpha = rotation_y - np.arctan2(location[:, 0], location[:, 2])
    return wrap_angle(alpha).astype(np.float32)
