"""3-D box files of one frame as JSON: what ``sparse3d-detect`` writes and ``sparse3d-vis`` draws.

Format: a JSON list with one object per box::

    [
      {"box": [x, y, z, dx, dy, dz, heading], "name": "Car", "score": 0.93},
      {"box": [12.1, -3.4, -0.8, 4.2, 1.8, 1.6, 1.57], "name": "Car"}
    ]

* ``box``: seven finite numbers in the LiDAR frame -- centre ``(x, y, z)`` (z at the box centre, not the
  bottom), size ``(dx, dy, dz)`` >= 0 along the box's own x (length, the heading direction), y (width) and z
  (height), and ``heading``, the rotation about +z from +x in radians.
* ``name``: the class name (a string, required).
* ``score``: the detector's confidence, a finite number. Entries with a score are *predictions*; entries
  without one are *ground truth*, so a detection file and a label file (or one file holding both) can be drawn
  side by side in distinct colours.

An empty list is a frame without boxes. Other keys are ignored, so writers may add
fields such as ``"id"`` without breaking readers.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparse3d.utils.errors import UserError

__all__ = ["BoxSet", "parse_box_json", "read_box_json", "write_box_json"]


@dataclass(frozen=True)
class BoxSet:
    """Boxes of one frame.

    Attributes:
        boxes: (B, 7) float64 ``(x, y, z, dx, dy, dz, heading)``.
        names: the B class names.
        scores: (B,) float64, NaN for ground-truth entries (those without a score).
    """

    boxes: np.ndarray
    names: tuple[str, ...]
    scores: np.ndarray

    @property
    def is_prediction(self) -> np.ndarray:
        """(B,) bool: the entry carries a score."""
        return ~np.isnan(self.scores)

    def select(self, mask: np.ndarray) -> BoxSet:
        """The entries where ``mask`` is true."""
        m = np.asarray(mask, dtype=bool)
        return BoxSet(self.boxes[m], tuple(n for n, keep in zip(self.names, m.tolist()) if keep), self.scores[m])

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_box_json(data: object, source: str = "<boxes>") -> BoxSet:
    """Validate decoded JSON in the format above; :class:`UserError` names ``source``, the entry and the field."""
    if not isinstance(data, list):
        raise UserError(f"{source}: a box file must be a JSON list of {{'box', 'name', 'score'}} objects, "
                        f"got {type(data).__name__}")
    boxes, names, scores = [], [], []
    for i, entry in enumerate(data):
        where = f"{source}: entry {i}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: must be an object, got {type(entry).__name__}")
        box = entry.get("box")
        if not (isinstance(box, list) and len(box) == 7 and all(_finite_number(v) for v in box)):
            raise UserError(f"{where}: 'box' must be 7 finite numbers (x, y, z, dx, dy, dz, heading), got {box!r}")
        if any(v < 0 for v in box[3:6]):
            raise UserError(f"{where}: box sizes (dx, dy, dz) must be >= 0, got {box[3:6]}")
        name = entry.get("name")
        if not isinstance(name, str):
            raise UserError(f"{where}: 'name' must be a string, got {name!r}")
        score = entry.get("score")
        if score is not None and not _finite_number(score):
            raise UserError(f"{where}: 'score' must be a finite number, got {score!r}")
        boxes.append([float(v) for v in box])
        names.append(name)
        scores.append(float("nan") if score is None else float(score))
    return BoxSet(np.asarray(boxes, dtype=np.float64).reshape(-1, 7), tuple(names), np.asarray(scores, np.float64))


def read_box_json(path: str | os.PathLike) -> BoxSet:
    """Read and validate one frame's box file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: box file not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{p}: invalid JSON ({exc})") from None
    return parse_box_json(data, str(p))


def write_box_json(path: str | os.PathLike, boxes: np.ndarray, names: list[str] | tuple[str, ...],
                   scores: np.ndarray | None = None) -> Path:
    """Write boxes (B, 7), their names and optional scores (B,) in the format above; entries without a score
    (``scores`` None, or NaN as in :attr:`BoxSet.scores`) are written as ground truth."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    if len(names) != len(b) or (scores is not None and len(scores) != len(b)):
        raise ValueError(f"{path}: {len(b)} boxes, {len(names)} names, "
                         f"{'no' if scores is None else len(scores)} scores")
    entries: list[dict[str, object]] = []
    for i in range(len(b)):
        entry: dict[str, object] = {"box": [float(v) for v in b[i]], "name": str(names[i])}
        if scores is not None and not math.isnan(float(scores[i])):
            entry["score"] = float(scores[i])
        entries.append(entry)
    parse_box_json(entries, str(path))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
    return p
