"""Nearest-view reprojection: the floor every SpaRe method has to beat.

For each target camera the input view whose camera centre is closest is warped into the target with the
homography induced by one plane: through the rig target point (where the input cameras' optical axes meet,
:func:`sparse3d.io.spare.rig_target`) with its normal along the target camera's optical axis. For an object
that is small compared to the camera distance this is the best single-plane guess of its depth, and it
needs no training, so it shows what a method gains over "copy the closest photo".

Geometry (OpenCV axes, pixel centres at +0.5 as in :mod:`sparse3d.cameras`). With the plane
``n^T X_t = d`` in target-camera coordinates (``n = (0, 0, 1)``, ``d`` the target depth of the rig point) and
the relative motion ``X_s = R_rel X_t + t_rel`` (``R_rel = R_s R_t^T``, ``t_rel = t_s - R_rel t_t``), a target
pixel maps to the source pixel ``H_ts x`` with ``H_ts = K_s (R_rel + t_rel n^T / d) K_t^-1``. This is the
inverse of the source-to-target homography ``K_t (R' - t' n'^T / d') K_s^-1`` of the textbook formula; using
the target-to-source direction lets OpenCV sample every output pixel once (``WARP_INVERSE_MAP``) and lets us
blank target pixels whose plane point lies behind the source camera.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from sparse3d.cameras import Cameras
from sparse3d.io.spare import rig_target
from sparse3d.views import PosedImages

# Pixel-centre convention shift: OpenCV puts pixel centres at integer coordinates, sparse3d at +0.5.
_CV_TO_OURS = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
_OURS_TO_CV = np.linalg.inv(_CV_TO_OURS)


def plane_homography(source: Cameras, target: Cameras, point: np.ndarray) -> np.ndarray:
    """3x3 homography mapping target pixels to source pixels (sparse3d pixel convention, float64).

    The plane passes through the world ``point`` with its normal along ``target``'s optical axis.
    Both arguments are batches of one camera. Raises ``ValueError`` if ``point`` is not in front of the target.
    """
    K_s, K_t = source.K[0].double().numpy(), target.K[0].double().numpy()
    V_s, V_t = source.viewmat[0].double().numpy(), target.viewmat[0].double().numpy()
    R_s, t_s, R_t, t_t = V_s[:3, :3], V_s[:3, 3], V_t[:3, :3], V_t[:3, 3]
    depth = float((R_t @ np.asarray(point, dtype=np.float64) + t_t)[2])
    if not depth > 0:
        raise ValueError(f"the plane point {np.asarray(point).tolist()} is not in front of the target camera "
                         f"(depth {depth:.4g}); reprojection needs the object in view")
    R_rel = R_s @ R_t.T
    t_rel = t_s - R_rel @ t_t
    normal = np.array([0.0, 0.0, 1.0])
    return K_s @ (R_rel + np.outer(t_rel, normal) / depth) @ np.linalg.inv(K_t)


def warp_to_target(image: np.ndarray, H_ts: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear warp of an (h, w, 3) float32 image into a ``width`` x ``height`` target; outside is black.

    ``H_ts`` maps target pixels to source pixels (sparse3d convention). Target pixels whose ray meets the
    plane behind the source camera (homogeneous scale <= 0) are blanked: a homography alone would mirror them.
    """
    M = _OURS_TO_CV @ H_ts @ _CV_TO_OURS
    out = cv2.warpPerspective(
        np.ascontiguousarray(image, dtype=np.float32), M, (int(width), int(height)),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=(0.0, 0.0, 0.0),
    )
    cols = np.arange(width, dtype=np.float64)
    rows = np.arange(height, dtype=np.float64)
    w = M[2, 0] * cols[None, :] + M[2, 1] * rows[:, None] + M[2, 2]
    out[w <= 0] = 0.0
    return np.clip(out, 0.0, 1.0)


def _max_shift(H: np.ndarray, width: int, height: int) -> float:
    """Largest displacement ``|H x - x|`` over the image corners: detects a (numerically) identity warp."""
    corners = np.array([[0.0, 0.0, 1.0], [width, 0.0, 1.0], [0.0, height, 1.0], [width, height, 1.0]]).T
    mapped = H @ corners
    if np.any(mapped[2] <= 0):
        return float("inf")
    return float(np.abs(mapped[:2] / mapped[2] - corners[:2]).max())


class NearestViewReprojection:
    """Per-scene method (:class:`~sparse3d.train.scene_trainer.SceneMethod`) that warps the nearest input view
    through the object plane. It has nothing to optimise: ``default_steps`` is 0 and ``setup`` does all the work.

    Args:
        plane_point: world point the plane passes through; ``None`` uses the rig target of the input cameras
            (needs at least two non-parallel input cameras).
    """

    default_steps = 0

    def __init__(self, plane_point: Sequence[float] | None = None) -> None:
        self.plane_point = None if plane_point is None else np.asarray(plane_point, dtype=np.float64).reshape(3)
        self._images: np.ndarray | None = None
        self._cameras: Cameras | None = None
        self._point: np.ndarray | None = None

    def setup(self, views: PosedImages, max_steps: int = 0) -> None:
        """Keep the input views and fix the plane point (nothing is optimised; ``max_steps`` is ignored)."""
        if len(views.cameras) == 0:
            raise ValueError("views: need at least one input view")
        self._images = views.images.detach().cpu().float().numpy()
        self._cameras = views.cameras.to("cpu")
        if self.plane_point is not None:
            self._point = self.plane_point
        elif len(views.cameras) < 2:
            raise ValueError("views: the rig target needs two or more input cameras; pass plane_point instead")
        else:
            self._point = rig_target(self._cameras).double().numpy()

    def nearest_view(self, target: Cameras) -> int:
        """Index of the input view with the closest camera centre; ties go to the smallest viewing angle."""
        if self._cameras is None:
            raise RuntimeError("call setup() before render()")
        centres = self._cameras.centers.double()
        dist = (centres - target.centers[0].double()).norm(dim=-1)
        forward = self._cameras.R[:, 2, :].double()
        cos = (forward @ target.R[0, 2, :].double()).clamp(-1.0, 1.0)
        tied = dist <= dist.min() * (1.0 + 1e-6) + 1e-12
        angle = torch.where(tied, torch.arccos(cos), torch.full_like(cos, torch.inf))
        return int(torch.argmin(angle))

    def render(self, cameras: Cameras) -> torch.Tensor:
        """(N, H, W, 3) float32 images at ``cameras.height`` x ``cameras.width``."""
        if self._images is None or self._cameras is None or self._point is None:
            raise RuntimeError("call setup() before render()")
        out = np.zeros((len(cameras), cameras.height, cameras.width, 3), dtype=np.float32)
        for i in range(len(cameras)):
            target = cameras[i].to("cpu")
            k = self.nearest_view(target)
            source = self._cameras[k]
            H_ts = plane_homography(source, target, self._point)
            same_size = (source.width, source.height) == (target.width, target.height)
            if same_size and _max_shift(H_ts, target.width, target.height) < 1e-3:
                out[i] = self._images[k]  # the target is the input camera: return the photo untouched
            else:
                out[i] = warp_to_target(self._images[k], H_ts, cameras.width, cameras.height)
        return torch.from_numpy(out)

    def training_step(self, step: int) -> dict[str, float]:
        raise RuntimeError("NearestViewReprojection has nothing to optimise; run it with max_steps=0")

    def state_dict(self) -> dict[str, Any]:
        """Empty: ``setup`` rebuilds everything from the input views."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None

    def export(self, out_dir: Path) -> list[Path]:
        """Nothing beyond the renders."""
        return []
