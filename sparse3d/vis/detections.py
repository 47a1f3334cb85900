"""3-D boxes ``sparse3d-vis`` draws: ground truth and the detection results ``sparse3d-detect`` writes.

Two result formats are read, both as :mod:`sparse3d.detect` writes them:

* ``detections.json``: ``{frame_id: [{"name": str, "score": float, "box_lidar": [x, y, z, dx, dy, dz,
  heading]}, ...]}`` -- LiDAR frame, ``z`` at the box centre, sizes along / across the heading and vertical,
  ``heading`` the yaw counter-clockwise from +x (:mod:`sparse3d.geometry.boxes`). Every entry is a prediction.
  Other keys of an entry are ignored.
* KITTI ``label_2`` rows (:func:`sparse3d.io.kitti.read_label`): 16 columns (with a score) are predictions,
  15 columns ground truth; they are in the rectified camera frame, so the frame's calibration converts them
  (:func:`sparse3d.geometry.boxes.camera_to_lidar_boxes`). ``DontCare`` rows are ignore regions with
  placeholder 3-D values and are not drawn.

Readers raise :class:`~sparse3d.utils.errors.UserError` with one line naming the file, the frame, the entry
and the field.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparse3d.geometry.boxes import camera_to_lidar_boxes
from sparse3d.io.kitti import KittiCalib, read_label
from sparse3d.utils.errors import UserError

__all__ = [
    "BoxSet",
    "frame_matches",
    "kitti_label_boxes",
    "load_detections_json",
    "parse_detections_json",
    "read_detections_json",
]


@dataclass(frozen=True)
class BoxSet:
    """Boxes of one frame.

    Attributes:
        boxes: (B, 7) float64 LiDAR boxes ``(x, y, z, dx, dy, dz, heading)``.
        names: the B class names.
        scores: (B,) float64, NaN for ground truth (entries without a score).
    """

    boxes: np.ndarray
    names: tuple[str, ...]
    scores: np.ndarray

    @classmethod
    def empty(cls) -> BoxSet:
        return cls(np.zeros((0, 7)), (), np.zeros(0))

    @classmethod
    def concatenate(cls, sets: list[BoxSet]) -> BoxSet:
        """All boxes of ``sets``, in order."""
        if not sets:
            return cls.empty()
        return cls(np.concatenate([s.boxes for s in sets]), tuple(n for s in sets for n in s.names),
                   np.concatenate([s.scores for s in sets]))

    @property
    def is_prediction(self) -> np.ndarray:
        """(B,) bool: the entry carries a score."""
        return ~np.isnan(self.scores)

    def select(self, mask: np.ndarray) -> BoxSet:
        """The entries where ``mask`` is true."""
        m = np.asarray(mask, dtype=bool)
        return BoxSet(self.boxes[m], tuple(n for n, keep in zip(self.names, m.tolist()) if keep), self.scores[m])

    def above(self, threshold: float | None) -> BoxSet:
        """Ground truth plus the predictions scoring at least ``threshold`` (all of them for None)."""
        if threshold is None:
            return self
        with np.errstate(invalid="ignore"):
            return self.select(~self.is_prediction | (self.scores >= threshold))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def frame_matches(stem: str, frame: str) -> bool:
    """``frame`` names the frame ``stem``: the same text, or the same number (``12`` and ``000012``)."""
    return stem == frame or (stem.isdigit() and frame.isdigit() and int(stem) == int(frame))


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _frame_entries(data: dict, source: str, frame: str | None) -> tuple[str, object]:
    """The (frame id, entry list) of ``frame`` in a decoded ``detections.json``."""
    ids = list(data)
    if frame is None:
        if len(ids) != 1:
            listing = f"frames {ids[0]} .. {ids[-1]}" if ids else "no frames"
            raise UserError(f"{source}: holds {len(ids)} frames ({listing}); pick one with --frame ID")
        return ids[0], data[ids[0]]
    chosen = [i for i in ids if frame_matches(str(i), frame)]
    if not chosen:
        listing = f"frames {ids[0]} .. {ids[-1]}" if ids else "no frames"
        raise UserError(f"{source}: no frame {frame!r} ({listing})")
    return chosen[0], data[chosen[0]]


def parse_detections_json(data: object, source: str = "detections.json", frame: str | None = None) -> BoxSet:
    """One frame of decoded ``detections.json`` (format in the module docstring); ``frame`` picks it (exactly
    or as a number), and may be None when the file holds a single frame."""
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise UserError(f"{source}: detections.json must be a JSON object {{frame_id: [{{'name', 'score', "
                        f"'box_lidar'}}, ...]}}, got {type(data).__name__}")
    fid, entries = _frame_entries(data, source, frame)
    boxes, names, scores = [], [], []
    for i, entry in enumerate(entries):  # type: ignore[arg-type]
        where = f"{source}: frame {fid} entry {i}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: must be an object, got {type(entry).__name__}")
        box = entry.get("box_lidar")
        if not (isinstance(box, list) and len(box) == 7 and all(_finite_number(v) for v in box)):
            raise UserError(f"{where}: 'box_lidar' must be 7 finite numbers (x, y, z, dx, dy, dz, heading), "
                            f"got {box!r}")
        if any(v < 0 for v in box[3:6]):
            raise UserError(f"{where}: box sizes (dx, dy, dz) must be >= 0, got {box[3:6]}")
        name = entry.get("name")
        if not isinstance(name, str):
            raise UserError(f"{where}: 'name' must be a string, got {name!r}")
        score = entry.get("score")
        if not _finite_number(score):
            raise UserError(f"{where}: 'score' must be a finite number, got {score!r}")
        boxes.append([float(v) for v in box])
        names.append(name)
        scores.append(float(score))  # type: ignore[arg-type]
    return BoxSet(np.asarray(boxes, dtype=np.float64).reshape(-1, 7), tuple(names), np.asarray(scores, np.float64))


def load_detections_json(path: str | os.PathLike) -> object:
    """The decoded JSON of a ``detections.json``; :class:`UserError` naming the file when it is unreadable."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: detections file not found")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{p}: invalid JSON ({' '.join(str(exc).split())})") from None


def read_detections_json(path: str | os.PathLike, frame: str | None = None) -> BoxSet:
    """Read one frame of a ``detections.json`` (see :func:`parse_detections_json`)."""
    return parse_detections_json(load_detections_json(path), str(path), frame)


def kitti_label_boxes(path: str | os.PathLike, calib: KittiCalib) -> BoxSet:
    """The boxes of one KITTI ``label_2`` file in the LiDAR frame of ``calib``: predictions for 16-column result
    files, ground truth for 15-column label files; DontCare rows left out."""
    objects = read_label(path)
    keep = objects.select(objects.name != "DontCare")
    if not len(keep):
        return BoxSet.empty()
    boxes = camera_to_lidar_boxes(keep.location, keep.hwl, keep.rotation_y, calib, dtype=np.float64)
    scores = np.full(len(keep), np.nan) if keep.score is None else keep.score.astype(np.float64)
    return BoxSet(boxes, tuple(str(n) for n in keep.name), scores)
