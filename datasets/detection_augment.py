"""Global augmentations of a LiDAR frame with its boxes, as OpenPCDet's ``DataAugmentor`` applies them.

Every function takes points (N, 3+C) and boxes (M, 7) ``(x, y, z, dx, dy, dz, heading)`` in the LiDAR frame and
returns transformed copies, so a box keeps enclosing the same points. The random draws come from a
``numpy.random.Generator`` the caller seeds from (seed, epoch, sample index), which makes a resumed run repeat
the same augmented samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sparse3d.geometry.boxes import box_corners, wrap_angle

__all__ = ["GlobalAugment", "flip_x", "flip_y", "in_range_masks", "rotate_z", "scale", "translate"]


def flip_x(points: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror across the x axis (y -> -y); headings become -heading."""
    p, b = points.copy(), boxes.copy()
    p[:, 1] *= -1
    b[:, 1] *= -1
    b[:, 6] = -b[:, 6]
    return p, b


def flip_y(points: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror across the y axis (x -> -x); headings become pi - heading."""
    p, b = points.copy(), boxes.copy()
    p[:, 0] *= -1
    b[:, 0] *= -1
    b[:, 6] = np.pi - b[:, 6]
    return p, b


def rotate_z(points: np.ndarray, boxes: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate the scene by ``angle`` (rad, counter-clockwise) about the sensor's z axis."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]], dtype=np.float64)
    p, b = points.copy(), boxes.copy()
    p[:, :2] = (points[:, :2].astype(np.float64) @ rot.T).astype(points.dtype)
    b[:, :2] = (boxes[:, :2].astype(np.float64) @ rot.T).astype(boxes.dtype)
    b[:, 6] = wrap_angle(boxes[:, 6] + angle)
    return p, b


def scale(points: np.ndarray, boxes: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale the scene about the sensor by ``factor`` (positions and box sizes)."""
    p, b = points.copy(), boxes.copy()
    p[:, :3] *= factor
    b[:, :6] *= factor
    return p, b


def translate(points: np.ndarray, boxes: np.ndarray, offset: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Shift the scene by ``offset`` (x, y, z)."""
    t = np.asarray(offset, dtype=points.dtype)
    p, b = points.copy(), boxes.copy()
    p[:, :3] += t
    b[:, :3] += t.astype(boxes.dtype)
    return p, b


def in_range_masks(points: np.ndarray, boxes: np.ndarray, point_range: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Points inside ``point_range`` (half-open), and boxes with at least one BEV corner inside its x-y extent."""
    lo, hi = np.asarray(point_range[:3]), np.asarray(point_range[3:])
    pts = np.all((points[:, :3] >= lo) & (points[:, :3] < hi), axis=1)
    if boxes.shape[0] == 0:
        return pts, np.zeros(0, dtype=bool)
    corners = box_corners(boxes)[:, :4, :2] if boxes.shape[0] else np.zeros((0, 4, 2))
    inside = np.all((corners >= lo[:2]) & (corners <= hi[:2]), axis=2)
    return pts, inside.any(axis=1)


@dataclass(frozen=True)
class GlobalAugment:
    """The training-time augmentation chain: flips, a rotation, a scaling and a translation, each optional.

    Args:
        flip_x, flip_y: mirror with probability 0.5 across the x / y axis.
        rotation: (min, max) angle in rad, uniform (DSVT: ±pi/4); None = off.
        scaling: (min, max) factor, uniform (DSVT: 0.95–1.05); None = off.
        translation_std: per-axis Gaussian std in metres (DSVT: 0.5); 0 = off.
    """

    flip_x: bool = True
    flip_y: bool = False
    rotation: tuple[float, float] | None = (-np.pi / 4, np.pi / 4)
    scaling: tuple[float, float] | None = (0.95, 1.05)
    translation_std: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rotation", "scaling"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or not value[0] <= value[1]):
                raise ValueError(f"augment.{name} must be [min, max] with min <= max, got {value}")
        if self.scaling is not None and self.scaling[0] <= 0:
            raise ValueError(f"augment.scaling must be positive, got {self.scaling}")
        if not self.translation_std >= 0:
            raise ValueError(f"augment.translation_std must be >= 0, got {self.translation_std}")

    def __call__(self, points: np.ndarray, boxes: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        # Draw every random number in a fixed order whether or not a step is on, so a config change of one
        # step does not reshuffle the others.
        do_fx, do_fy = rng.random() < 0.5, rng.random() < 0.5
        angle = rng.uniform(*self.rotation) if self.rotation is not None else 0.0
        factor = rng.uniform(*self.scaling) if self.scaling is not None else 1.0
        offset = rng.normal(0.0, 1.0, 3) * self.translation_std
        if self.flip_x and do_fx:
            points, boxes = flip_x(points, boxes)
        if self.flip_y and do_fy:
            points, boxes = flip_y(points, boxes)
        if self.rotation is not None:
            points, boxes = rotate_z(points, boxes, angle)
        if self.scaling is not None:
            points, boxes = scale(points, boxes, factor)
        if self.translation_std > 0:
            points, boxes = translate(points, boxes, offset)
        return points, boxes
