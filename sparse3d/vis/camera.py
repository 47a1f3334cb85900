"""Where the viewer looks from: preset views framed on a scene's bounds, explicit look-at cameras, turntables.

A :class:`ViewCamera` is a pinhole camera in sparse3d's convention (OpenCV axes, world-to-camera extrinsic,
principal point at the image centre); the renderer uses it as given, so a test can project a known point with
:meth:`ViewCamera.project` and find it at that pixel in the rendered image.

Preset views, with ``up`` and ``forward`` taken from the :class:`~sparse3d.vis.scene.Scene` (LiDAR: +z, +x):

* ``bev``: straight down along ``-up``; ``forward`` points to the top of the image (left is left).
* ``front``: level, looking along ``forward`` from behind the scene (as a forward-facing camera on the ego
  vehicle sees it).
* ``iso``: from behind, to the right and above (azimuth 45 degrees, elevation 35.26 degrees, the isometric
  angle), looking at the scene centre.

Each preset looks at the centre of the scene's bounding box from as close as it can while the whole box stays
in the image (with a 5 % margin).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sparse3d.vis.scene import Scene

Vec3 = Sequence[float] | np.ndarray
"""A 3-vector given as a list, tuple or array."""

__all__ = ["VIEWS", "ViewCamera", "intrinsics", "look_at_camera", "view_camera", "orbit_cameras"]

VIEWS: tuple[str, ...] = ("bev", "front", "iso")
FOV_Y_DEG = 50.0
"""Vertical field of view of the viewer's camera."""
_ELEVATION = {"bev": 90.0, "front": 0.0, "iso": math.degrees(math.atan(1.0 / math.sqrt(2.0)))}
_AZIMUTH = {"bev": 0.0, "front": 0.0, "iso": -45.0}  # degrees from "behind" (-forward), positive towards left


@dataclass(frozen=True)
class ViewCamera:
    """A pinhole camera: ``K`` (3, 3), ``extrinsic`` (4, 4) world-to-camera (OpenCV axes), image size."""

    K: np.ndarray
    extrinsic: np.ndarray
    width: int
    height: int

    @property
    def center(self) -> np.ndarray:
        """(3,) camera centre in world coordinates."""
        R, t = self.extrinsic[:3, :3], self.extrinsic[:3, 3]
        return -R.T @ t

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (P, 2) (pixel centres at ``+0.5``) and camera depths (P,) of world points (P, 3)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        cam = pts @ self.extrinsic[:3, :3].T + self.extrinsic[:3, 3]
        uvw = cam @ self.K.T
        return uvw[:, :2] / uvw[:, 2:3], cam[:, 2]


def intrinsics(width: int, height: int, fov_y_deg: float = FOV_Y_DEG) -> np.ndarray:
    """(3, 3) K with square pixels, the given vertical field of view and the principal point at the centre."""
    f = (height / 2.0) / math.tan(math.radians(fov_y_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def _unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=np.float64) / np.linalg.norm(v)


def _basis(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(up, forward, left) orthonormal, forward made orthogonal to up (falling back to any orthogonal axis)."""
    up = _unit(scene.up)
    fwd = np.asarray(scene.forward, dtype=np.float64) - np.dot(scene.forward, up) * up
    if np.linalg.norm(fwd) < 1e-6:
        axis = np.eye(3)[int(np.argmin(np.abs(up)))]
        fwd = axis - axis.dot(up) * up
    fwd = _unit(fwd)
    return up, fwd, np.cross(up, fwd)


def look_at_camera(
    eye: Vec3, lookat: Vec3, up: Vec3, width: int, height: int, image_up_fallback: Vec3 | None = None,
    fov_y_deg: float = FOV_Y_DEG,
) -> ViewCamera:
    """A camera at ``eye`` looking at ``lookat`` with ``up`` shown upwards; when the view runs along ``up``,
    ``image_up_fallback`` (default: any axis orthogonal to the view) is shown upwards instead."""
    eye_v, target = np.asarray(eye, np.float64), np.asarray(lookat, np.float64)
    view_dir = target - eye_v
    if not np.linalg.norm(view_dir) > 0:
        raise ValueError("eye and lookat must differ")
    forward = _unit(view_dir)
    image_up = np.asarray(up, np.float64)
    if np.linalg.norm(np.cross(forward, _unit(image_up))) < 1e-6:
        image_up = np.asarray(image_up_fallback, np.float64) if image_up_fallback is not None else \
            np.eye(3)[int(np.argmin(np.abs(forward)))]
    right = _unit(np.cross(forward, image_up))
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    extrinsic = np.eye(4)
    extrinsic[:3, :3] = R
    extrinsic[:3, 3] = -R @ eye_v
    return ViewCamera(intrinsics(width, height, fov_y_deg), extrinsic, int(width), int(height))


_MARGIN = 0.95  # the framed bounds fill at most 95 % of the image in each direction


def _framed_eye(scene: Scene, direction: np.ndarray, image_up_fallback: np.ndarray, width: int, height: int,
                fov_y_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """(eye, centre): the eye on the ray from the bounds' centre along ``direction``, as close as it can be
    while all eight corners of the scene's bounding box project inside the image (with a 5 % margin)."""
    lo, hi = scene.bounds()
    centre = (lo + hi) / 2.0
    R = look_at_camera(centre + direction, centre, scene.up, width, height, image_up_fallback, fov_y_deg).extrinsic[:3, :3]
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    rel = (corners - centre) @ R.T  # camera axes, origin at the centre
    K = intrinsics(width, height, fov_y_deg)
    tan_x, tan_y = _MARGIN * (width / 2.0) / K[0, 0], _MARGIN * (height / 2.0) / K[1, 1]
    need = np.maximum(np.abs(rel[:, 0]) / tan_x, np.abs(rel[:, 1]) / tan_y) - rel[:, 2]
    extent = float(np.linalg.norm(hi - lo))
    distance = max(float(need.max()), float((-rel[:, 2]).max()) + 0.05 * extent, 1e-6)
    if extent == 0.0:
        distance = 1.0
    return centre + direction * distance, centre


def _preset_eye(scene: Scene, elevation_deg: float, azimuth_deg: float, image_up_fallback: np.ndarray, width: int,
                height: int, fov_y_deg: float) -> tuple[np.ndarray, np.ndarray]:
    up, fwd, left = _basis(scene)
    el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
    # Unit vector from the centre to the eye: "behind" is -forward, positive azimuth turns towards the left.
    horizontal = -fwd * math.cos(az) + left * math.sin(az)
    direction = horizontal * math.cos(el) + up * math.sin(el)
    return _framed_eye(scene, direction, image_up_fallback, width, height, fov_y_deg)


def view_camera(scene: Scene, view: str, width: int, height: int, fov_y_deg: float = FOV_Y_DEG) -> ViewCamera:
    """The preset ``view`` (one of :data:`VIEWS`) framed on ``scene``."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; one of {', '.join(VIEWS)}")
    up, fwd, _ = _basis(scene)
    eye, centre = _preset_eye(scene, _ELEVATION[view], _AZIMUTH[view], fwd, width, height, fov_y_deg)
    return look_at_camera(eye, centre, up, width, height, image_up_fallback=fwd, fov_y_deg=fov_y_deg)


def orbit_cameras(
    scene: Scene, frames: int, width: int, height: int, view: str = "iso", fov_y_deg: float = FOV_Y_DEG
) -> list[ViewCamera]:
    """``frames`` cameras turning once around the scene's ``up`` axis through its centre, at the elevation of
    ``view`` and one distance for all frames (the largest any frame needs to frame the scene, so nothing is cut
    off and the scene does not zoom); frame 0 looks from where ``view`` does. The camera moves clockwise seen
    from above, so the scene appears to turn counter-clockwise, as on a turntable."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; one of {', '.join(VIEWS)}")
    up, fwd, _ = _basis(scene)
    poses = []
    for i in range(frames):
        # Straight down (bev) has no horizontal direction to keep upright: turn the image with the orbit instead.
        turn = math.radians(360.0 * i / frames)
        fallback = fwd * math.cos(turn) + np.cross(up, fwd) * math.sin(turn)
        eye, centre = _preset_eye(scene, _ELEVATION[view], _AZIMUTH[view] + 360.0 * i / frames, fallback, width,
                                  height, fov_y_deg)
        poses.append((eye, centre, fallback))
    distance = max(float(np.linalg.norm(eye - centre)) for eye, centre, _ in poses)
    return [look_at_camera(centre + _unit(eye - centre) * distance, centre, up, width, height,
                           image_up_fallback=fallback, fov_y_deg=fov_y_deg) for eye, centre, fallback in poses]
