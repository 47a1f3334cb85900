"""KITTI object-detection AP: 2-D bbox, BEV, 3-D and AOS, easy / moderate / hard, AP R40 and R11.

The semantics are those of the official KITTI object devkit (``evaluate_object.cpp``) as re-implemented in
the widely used Python evaluator of SECOND / OpenPCDet (``kitti_object_eval_python``), so the numbers are
comparable with published tables:

* **Difficulty filter** per ground-truth object: 2-D box height > 40 / 25 / 25 px, occlusion <= 0 / 1 / 2,
  truncation <= 0.15 / 0.3 / 0.5. A filtered object of the evaluated class is *ignored* (neither needed nor
  penalised). ``Van`` objects are ignored when evaluating ``Car`` and ``Person_sitting`` when evaluating
  ``Pedestrian``; other classes do not take part. Detections with a 2-D height below the minimum height
  are ignored (they may still absorb a ground-truth object without counting as a true positive).
* **Matching** (greedy, ground-truth objects in file order): an object takes the unassigned detection with
  the largest overlap above the class threshold (strictly greater), preferring non-ignored detections.
  Detections assigned to ignored objects count neither as true nor false positives. For the 2-D ``bbox``
  metric (and AOS), unassigned detections whose area lies inside a ``DontCare`` region by more than the
  threshold (intersection over the detection's area) are not false positives either.
* **Recall sampling**: the scores of the true positives (each object's best-scoring match) are thinned to at
  most 41 thresholds spaced ~1/40 in recall; precision (and AOS similarity, ``(1 + cos Δα) / 2`` summed
  over true positives, divided by TP + FP) is computed at each threshold and interpolated as the maximum
  over all later thresholds. AP_R40 averages positions 1..40, AP_R11 positions 0, 4, ..., 40 (11 points).
  As in the devkit, precision is indexed by threshold: with fewer than 41 valid objects of a class the
  thresholds run out before position 40 and the AP stays below 1 even for perfect detections.
* **Overlap thresholds**: strict set Car 0.7, Pedestrian / Cyclist 0.5 for every metric; loose set keeps
  the 2-D thresholds and uses Car 0.5, Pedestrian / Cyclist 0.25 for BEV and 3-D.

BEV and 3-D IoUs are computed in the rectified camera frame without calibration: a camera label (bottom
centre ``(x, y, z)``, ``h, w, l``, ``ry``) maps to a z-up box by the fixed rotation
``(z, -x, -y + h/2, l, w, h, -(ry + pi/2))`` (:func:`camera_to_zup_boxes`), which preserves every IoU, and
the rotated-IoU kernels of :mod:`sparse3d.kernels.rotated_iou` do the rest. All AP values are fractions in
[0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sparse3d.io.kitti import decimal_float64

DIFFICULTIES = ("easy", "moderate", "hard")
METRICS = ("bbox", "bev", "3d", "aos")
OVERLAP_SETS = ("strict", "loose")
MIN_HEIGHT = (40.0, 25.0, 25.0)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.3, 0.5)
NUM_RECALL_POSITIONS = 41
DONT_CARE = "DontCare"
AOS_PLACEHOLDER_ALPHA = -10.0

# (bbox, bev, 3d) overlap thresholds per class, as in the devkit / OpenPCDet tables.
STRICT_OVERLAPS: dict[str, tuple[float, float, float]] = {
    "Car": (0.7, 0.7, 0.7), "Pedestrian": (0.5, 0.5, 0.5), "Cyclist": (0.5, 0.5, 0.5),
    "Van": (0.7, 0.7, 0.7), "Person_sitting": (0.5, 0.5, 0.5), "Truck": (0.7, 0.7, 0.7),
}
LOOSE_OVERLAPS: dict[str, tuple[float, float, float]] = {
    "Car": (0.7, 0.5, 0.5), "Pedestrian": (0.5, 0.25, 0.25), "Cyclist": (0.5, 0.25, 0.25),
    "Van": (0.7, 0.5, 0.5), "Person_sitting": (0.5, 0.25, 0.25), "Truck": (0.7, 0.5, 0.5),
}
# Ground-truth classes that are ignored (not penalised, not rewarded) when evaluating the key class.
SIMILAR_CLASSES: dict[str, str] = {"car": "van", "pedestrian": "person_sitting"}


class LabelObjects(Protocol):
    """What the evaluator reads from one label file (:class:`sparse3d.io.kitti.KittiObjects` satisfies it)."""

    name: np.ndarray
    truncated: np.ndarray
    occluded: np.ndarray
    alpha: np.ndarray
    bbox: np.ndarray
    hwl: np.ndarray
    location: np.ndarray
    rotation_y: np.ndarray
    score: np.ndarray | None

    def __len__(self) -> int: ...


# ----------------------------------------------------------------------------------------------- overlaps
def image_box_overlap(boxes: np.ndarray, query: np.ndarray, criterion: str = "iou") -> np.ndarray:
    """(N, M) overlaps of 2-D boxes ``(x1, y1, x2, y2)`` (continuous coordinates, no +1 pixel).

    ``criterion="iou"``: intersection over union; ``"ioa"``: intersection over the area of ``boxes[n]``
    (how far a detection lies inside a ``DontCare`` region).
    """
    if criterion not in ("iou", "ioa"):
        raise ValueError(f"criterion must be 'iou' or 'ioa', got {criterion!r}")
    a = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(query, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    if criterion == "ioa":
        denom = np.broadcast_to(area_a[:, None], inter.shape)
    else:
        area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        denom = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / np.where(denom > 0, denom, 1.0), 0.0)


def camera_to_zup_boxes(location: np.ndarray, hwl: np.ndarray, rotation_y: np.ndarray) -> np.ndarray:
    """(M, 7) float32 z-up boxes ``(x, y, z, dx, dy, dz, heading)`` from rect-camera labels, no calibration.

    ``(x, y, z)`` = ``(z_c, -x_c, -y_c + h/2)`` (geometric centre), ``(dx, dy, dz)`` = ``(l, w, h)``,
    heading = ``-(ry + pi/2)``. The map is a proper rotation of the camera frame (y down, z forward) onto a
    z-up frame, i.e. the LiDAR box conversion with an ideal calibration, so IoUs equal those of the labels.
    """
    loc = np.asarray(location, dtype=np.float64).reshape(-1, 3)
    dims = np.asarray(hwl, dtype=np.float64).reshape(-1, 3)
    ry = np.asarray(rotation_y, dtype=np.float64).reshape(-1)
    height, width, length = dims[:, 0], dims[:, 1], dims[:, 2]
    boxes = np.stack([loc[:, 2], -loc[:, 0], -loc[:, 1] + height / 2, length, width, height, -(ry + math.pi / 2)],
                     axis=1)
    return boxes.astype(np.float32)


def kernel_pair_ious(a: np.ndarray, b: np.ndarray, chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """(BEV IoU, 3-D IoU), each (P,) float64, of the z-up box pairs ``a[p]``, ``b[p]`` (both (P, 7)).

    Uses the rotated-IoU kernels of :mod:`sparse3d.kernels.rotated_iou` on the CPU, ``chunk`` pairs per launch.
    """
    import torch

    from sparse3d.kernels.rotated_iou import boxes_iou_3d_aligned, boxes_iou_bev_aligned

    a = np.ascontiguousarray(a, dtype=np.float32).reshape(-1, 7)
    b = np.ascontiguousarray(b, dtype=np.float32).reshape(-1, 7)
    if a.shape != b.shape:
        raise ValueError(f"a and b must both be (P, 7), got {a.shape} and {b.shape}")
    bev, iou3d = np.zeros(len(a)), np.zeros(len(a))
    for lo in range(0, len(a), chunk):
        ta, tb = torch.from_numpy(a[lo:lo + chunk]), torch.from_numpy(b[lo:lo + chunk])
        bev[lo:lo + chunk] = boxes_iou_bev_aligned(ta, tb).numpy()
        iou3d[lo:lo + chunk] = boxes_iou_3d_aligned(ta, tb).numpy()
    return bev, iou3d


# --------------------------------------------------------------------------------------- per-frame rules
def _lower_names(objects: LabelObjects) -> np.ndarray:
    return np.array([str(n).lower() for n in np.asarray(objects.name).reshape(-1)], dtype=object)


def _clean(gt_names: np.ndarray, gt_height: np.ndarray, occluded: np.ndarray, truncated: np.ndarray,
           dt_names: np.ndarray, dt_height: np.ndarray, class_name: str, difficulty: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`clean_frame` on arrays (lower-case names), any number of frames concatenated."""
    cls = class_name.lower()
    filtered = ((occluded > MAX_OCCLUSION[difficulty]) | (truncated > MAX_TRUNCATION[difficulty])
                | (gt_height <= MIN_HEIGHT[difficulty]))
    same = gt_names == cls
    similar = gt_names == SIMILAR_CLASSES.get(cls, "\0")
    ignored_gt = np.full(len(gt_names), -1, dtype=np.int8)
    ignored_gt[similar | (same & filtered)] = 1
    ignored_gt[same & ~filtered] = 0
    ignored_dt = np.where(dt_height < MIN_HEIGHT[difficulty], 1, np.where(dt_names == cls, 0, -1)).astype(np.int8)
    return ignored_gt, ignored_dt


def _heights(objects: LabelObjects) -> np.ndarray:
    box = decimal_float64(np.asarray(objects.bbox).reshape(-1, 4))
    return box[:, 3] - box[:, 1]


def clean_frame(gt: LabelObjects, dt: LabelObjects, class_name: str, difficulty: int
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """The devkit's ``clean_data``: (ignored_gt (G,), ignored_dt (D,), number of valid ground-truth objects).

    ``ignored_gt``: 0 = an object to find, 1 = ignored (similar class, or filtered by the difficulty: 2-D
    height <= the minimum, occlusion or truncation above the maximum), -1 = not taking part.
    ``ignored_dt``: 0 = a detection of the class, 1 = ignored (2-D height below the difficulty's minimum,
    any class), -1 = another class.
    """
    ignored_gt, ignored_dt = _clean(
        _lower_names(gt), _heights(gt), np.asarray(gt.occluded).reshape(-1),
        decimal_float64(np.asarray(gt.truncated).reshape(-1)), _lower_names(dt), np.abs(_heights(dt)),
        class_name, difficulty)
    return ignored_gt, ignored_dt, int(np.count_nonzero(ignored_gt == 0))


@dataclass
class FrameMatch:
    """One frame's inputs to the matching, for one class, difficulty, metric and overlap threshold.

    ``overlaps`` (D, G) detection x object; ``ignored_gt`` (G,) / ``ignored_dt`` (D,) from :func:`clean_frame`;
    ``scores`` (D,); ``in_dont_care`` (D,) detections inside a DontCare region (2-D metric only) or None;
    ``cos_similarity`` (D, G) ``(1 + cos(alpha_gt - alpha_dt)) / 2`` for AOS, or None.
    """

    overlaps: np.ndarray
    ignored_gt: np.ndarray
    ignored_dt: np.ndarray
    scores: np.ndarray
    in_dont_care: np.ndarray | None = None
    cos_similarity: np.ndarray | None = None


@dataclass
class _Padded:
    """A batch of :class:`FrameMatch` padded to (F, D, G); padding objects / detections are ignored (-1)."""

    overlaps: np.ndarray
    ignored_gt: np.ndarray
    ignored_dt: np.ndarray
    scores: np.ndarray
    in_dont_care: np.ndarray
    cos_similarity: np.ndarray | None


def _pad(frames: Sequence[FrameMatch], with_aos: bool) -> _Padded:
    num_f = len(frames)
    num_d = max((len(f.scores) for f in frames), default=0)
    num_g = max((len(f.ignored_gt) for f in frames), default=0)
    out = _Padded(np.zeros((num_f, num_d, num_g)), np.full((num_f, num_g), -1, np.int8),
                  np.full((num_f, num_d), -1, np.int8), np.full((num_f, num_d), -np.inf),
                  np.zeros((num_f, num_d), bool), np.zeros((num_f, num_d, num_g)) if with_aos else None)
    for k, f in enumerate(frames):
        d, g = len(f.scores), len(f.ignored_gt)
        out.overlaps[k, :d, :g] = f.overlaps
        out.ignored_gt[k, :g] = f.ignored_gt
        out.ignored_dt[k, :d] = f.ignored_dt
        out.scores[k, :d] = f.scores
        if f.in_dont_care is not None:
            out.in_dont_care[k, :d] = f.in_dont_care
        if out.cos_similarity is not None and f.cos_similarity is not None:
            out.cos_similarity[k, :d, :g] = f.cos_similarity
    return out


def _chunks(frames: Sequence[FrameMatch], size: int) -> list[list[FrameMatch]]:
    """Frames grouped by similar (G, D) so that padding stays small."""
    order = sorted(frames, key=lambda f: (len(f.ignored_gt), len(f.scores)))
    return [order[i:i + size] for i in range(0, len(order), size)]


def match_scores(frames: Sequence[FrameMatch], min_overlap: float, chunk: int = 256) -> np.ndarray:
    """Scores of the true positives with every detection kept (the devkit's threshold-collection pass).

    In each frame, each object (file order) takes the unassigned detection of highest score (first on ties)
    with overlap > ``min_overlap``, ignored detections included; it is a true positive when neither side is
    ignored. Returned unsorted.
    """
    found = [_match_scores_padded(_pad(group, with_aos=False), min_overlap) for group in _chunks(frames, chunk)]
    return np.concatenate(found) if found else np.zeros(0)


def pr_statistics(frames: Sequence[FrameMatch], thresholds: np.ndarray, min_overlap: float,
                  chunk: int = 128) -> np.ndarray:
    """(T, 4) ``(tp, fp, fn, similarity)`` summed over frames at each score threshold (the ``compute_fp`` pass).

    Detections scoring below a threshold are dropped for that row. In each frame, each object (file order)
    takes the unassigned detection with the largest overlap > ``min_overlap`` among non-ignored detections
    (first on ties), else the first ignored one; pairs with an ignored side are neither TP nor FN. Unassigned
    non-ignored detections are false positives unless ``in_dont_care``. ``similarity`` sums
    ``cos_similarity`` over true positives (0 without it).
    """
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    out = np.zeros((len(thresholds), 4), dtype=np.float64)
    with_aos = any(f.cos_similarity is not None for f in frames)
    for group in _chunks(frames, chunk):
        _pr_padded(_pad(group, with_aos), thresholds, min_overlap, out)
    return out


def _match_scores_padded(b: _Padded, min_overlap: float) -> np.ndarray:
    num_f, num_d = b.scores.shape
    if num_d == 0:
        return np.zeros(0)
    found = []
    assigned = np.zeros(b.scores.shape, dtype=bool)
    usable = b.ignored_dt != -1
    rows = np.arange(num_f)
    for i in range(b.ignored_gt.shape[1]):
        cand = usable & ~assigned & (b.overlaps[:, :, i] > min_overlap) & (b.ignored_gt[:, i] != -1)[:, None]
        has = cand.any(axis=1)
        if not has.any():
            continue
        det = np.argmax(np.where(cand, b.scores, -np.inf), axis=1)
        assigned[rows[has], det[has]] = True
        tp = has & (b.ignored_gt[:, i] == 0) & (b.ignored_dt[rows, det] == 0)
        found.append(b.scores[rows[tp], det[tp]])
    return np.concatenate(found) if found else np.zeros(0)


def _pr_padded(b: _Padded, thresholds: np.ndarray, min_overlap: float, out: np.ndarray) -> None:
    """Add one padded batch's per-threshold (tp, fp, fn, similarity) to ``out`` (T, 4)."""
    num_f, num_d = b.scores.shape
    num_t = len(thresholds)
    eligible = (b.scores[:, None, :] >= thresholds[None, :, None]) & (b.ignored_dt != -1)[:, None, :]
    assigned = np.zeros((num_f, num_t, num_d), dtype=bool)
    ign0 = (b.ignored_dt == 0)[:, None, :]
    ign1 = (b.ignored_dt == 1)[:, None, :]
    for i in range(b.ignored_gt.shape[1]):
        takes_part = b.ignored_gt[:, i] != -1
        valid = (b.ignored_gt[:, i] == 0)[:, None]
        hit = (b.overlaps[:, :, i] > min_overlap) & takes_part[:, None]
        if not hit.any():
            out[:, 2] += np.count_nonzero(valid)
            continue
        cand = eligible & ~assigned & hit[:, None, :]
        c0, c1 = cand & ign0, cand & ign1
        has0, has1 = c0.any(axis=2), c1.any(axis=2)
        best0 = np.argmax(np.where(c0, b.overlaps[:, None, :, i], -1.0), axis=2)
        det = np.where(has0, best0, np.argmax(c1, axis=2))
        found = has0 | has1
        ff, tt = np.nonzero(found)
        assigned[ff, tt, det[ff, tt]] = True
        tp = has0 & valid
        out[:, 0] += tp.sum(axis=0)
        out[:, 2] += (~found & valid).sum(axis=0)
        if b.cos_similarity is not None:
            ff, tt = np.nonzero(tp)
            np.add.at(out[:, 3], tt, b.cos_similarity[ff, det[ff, tt], i])
    free = eligible & ~assigned & ign0 & ~b.in_dont_care[:, None, :]
    out[:, 1] += free.sum(axis=(0, 2))


def recall_thresholds(tp_scores: np.ndarray, num_gt: int, num_points: int = NUM_RECALL_POSITIONS) -> np.ndarray:
    """Scores at which precision is sampled: true-positive scores thinned to ~1/(num_points-1) recall steps.

    Scores are visited in descending order; a score is kept when the current recall target is nearer to its
    recall than to the next score's (the last score is always kept), and each kept score advances the target
    by 1/(num_points-1). At most ``num_points`` thresholds are returned.
    """
    scores = np.sort(np.asarray(tp_scores, dtype=np.float64))[::-1]
    kept: list[float] = []
    current = 0.0
    last = len(scores) - 1
    for i, score in enumerate(scores):
        left = (i + 1) / num_gt
        right = (i + 2) / num_gt if i < last else left
        if i < last and (right - current) < (current - left):
            continue
        kept.append(float(score))
        current += 1.0 / (num_points - 1.0)
    return np.asarray(kept[:num_points], dtype=np.float64)


def interpolated_ap(values: np.ndarray) -> tuple[float, float]:
    """(AP_R40, AP_R11) of a precision (or AOS) array over the 41 recall positions, interpolated in place.

    ``values[i]`` becomes ``max(values[i:])``; AP_R40 is the mean of positions 1..40 and AP_R11 of
    positions 0, 4, ..., 40.
    """
    if values.shape[-1] != NUM_RECALL_POSITIONS:
        raise ValueError(f"values must have {NUM_RECALL_POSITIONS} recall positions, got {values.shape[-1]}")
    values[:] = np.maximum.accumulate(values[::-1])[::-1]
    return float(values[1:].mean()), float(values[::4].mean())


# ------------------------------------------------------------------------------------------------ result
@dataclass
class KittiEvalResult:
    """AP tables of :func:`kitti_eval`.

    ``ap_r40`` / ``ap_r11``: (C, 2, 4, 3) arrays over class × overlap set (strict, loose) × metric
    (bbox, bev, 3d, aos) × difficulty (easy, moderate, hard), fractions in [0, 1] (AOS is NaN when the
    predictions carry no orientation, i.e. every alpha is -10). ``precision``: (C, 2, 4, 3, 41) interpolated
    curves. ``num_gt``: (C, 3) valid objects per difficulty. ``overlaps``: (C, 2, 3) thresholds of
    (bbox, bev, 3d).
    """

    classes: tuple[str, ...]
    ap_r40: np.ndarray
    ap_r11: np.ndarray
    precision: np.ndarray
    num_gt: np.ndarray
    overlaps: np.ndarray
    num_frames: int
    aos_computed: bool

    def get(self, class_name: str, metric: str, difficulty: str, overlap: str = "strict",
            recall: str = "R40") -> float:
        """One AP value, e.g. ``get("Car", "3d", "moderate")``."""
        table = {"R40": self.ap_r40, "R11": self.ap_r11}[recall]
        return float(table[self.classes.index(class_name), OVERLAP_SETS.index(overlap), METRICS.index(metric),
                           DIFFICULTIES.index(difficulty)])

    def flat(self) -> dict[str, float | None]:
        """``{"<class>/<metric>_<R40|R11>/<difficulty>[/loose]": AP}`` for every entry (loose BEV/3-D only)."""
        out: dict[str, float | None] = {}
        for c, cls in enumerate(self.classes):
            for s, oset in enumerate(OVERLAP_SETS):
                for m, metric in enumerate(METRICS):
                    if oset == "loose" and metric not in ("bev", "3d"):
                        continue
                    for d, diff in enumerate(DIFFICULTIES):
                        suffix = "/loose" if oset == "loose" else ""
                        out[f"{cls}/{metric}_R40/{diff}{suffix}"] = _finite(self.ap_r40[c, s, m, d])
                        out[f"{cls}/{metric}_R11/{diff}{suffix}"] = _finite(self.ap_r11[c, s, m, d])
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested tables: ``classes.<class>.<strict|loose>.<metric>.<difficulty>.{AP_R40, AP_R11}``."""
        classes: dict[str, Any] = {}
        for c, cls in enumerate(self.classes):
            entry: dict[str, Any] = {"num_gt": {d: int(self.num_gt[c, i]) for i, d in enumerate(DIFFICULTIES)}}
            for s, oset in enumerate(OVERLAP_SETS):
                node: dict[str, Any] = {"iou": dict(zip(("bbox", "bev", "3d"),
                                                        (float(v) for v in self.overlaps[c, s]), strict=True))}
                for m, metric in enumerate(METRICS):
                    node[metric] = {diff: {"AP_R40": _finite(self.ap_r40[c, s, m, d]),
                                           "AP_R11": _finite(self.ap_r11[c, s, m, d])}
                                    for d, diff in enumerate(DIFFICULTIES)}
                entry[oset] = node
            classes[cls] = entry
        moderate = {f"{metric}_R40": _mean_finite([self.ap_r40[c, 0, m, 1] for c in range(len(self.classes))])
                    for m, metric in enumerate(METRICS)}
        return {"num_frames": self.num_frames, "aos_computed": self.aos_computed,
                "difficulties": list(DIFFICULTIES), "classes": classes,
                "mean_over_classes_moderate_strict": moderate}

    def to_markdown(self, title: str = "KITTI detection AP") -> str:
        """Tables per class (rows: metric and overlap set; columns: R40 and R11 per difficulty), in percent."""
        lines = [f"# {title}", "",
                 f"{self.num_frames} frames; AP in percent (official KITTI devkit semantics, 41 recall positions:"
                 " R40 = positions 1..40, R11 = 0, 4, ..., 40).", ""]
        header = ("| metric | set | IoU | " + " | ".join(f"R40 {d}" for d in DIFFICULTIES) + " | "
                  + " | ".join(f"R11 {d}" for d in DIFFICULTIES) + " |")
        for c, cls in enumerate(self.classes):
            counts = ", ".join(f"{d} {int(self.num_gt[c, i])}" for i, d in enumerate(DIFFICULTIES))
            lines += [f"## {cls}", "", f"Ground-truth objects: {counts}.", ""]
            if self.num_gt[c].max() == 0:
                lines += ["No ground-truth objects of this class: every AP is 0.", ""]
            elif self.num_gt[c].min() < NUM_RECALL_POSITIONS:
                lines += ["Fewer than 41 objects in some difficulty: precision is sampled at one true-positive score "
                          "per 1/40 of recall, so there AP stays below 100 even for perfect detections.", ""]
            lines += [header, "|" + "---|" * 9]
            for s, oset in enumerate(OVERLAP_SETS):
                for m, metric in enumerate(METRICS):
                    if oset == "loose" and metric not in ("bev", "3d"):
                        continue
                    iou = self.overlaps[c, s, 0 if metric == "aos" else ("bbox", "bev", "3d").index(metric)]
                    cells = [_pct(self.ap_r40[c, s, m, d]) for d in range(3)]
                    cells += [_pct(self.ap_r11[c, s, m, d]) for d in range(3)]
                    lines.append(f"| {metric} | {oset} | {iou:g} | " + " | ".join(cells) + " |")
            lines.append("")
        if self.classes:
            lines += ["## Mean over classes (moderate, strict IoU, R40)", "",
                      "| " + " | ".join(METRICS) + " |", "|" + "---|" * len(METRICS),
                      "| " + " | ".join(_pct(_mean_finite([self.ap_r40[c, 0, m, 1]
                                                          for c in range(len(self.classes))]))
                                        for m in range(len(METRICS))) + " |", ""]
        return "\n".join(lines)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _mean_finite(values: Sequence[float]) -> float | None:
    vals = [float(v) for v in values if np.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100.0 * value:.2f}"


# ------------------------------------------------------------------------------------------------- driver
@dataclass
class _Chunk:
    """Frames padded together once (sorted by size); indices point into the concatenated per-object arrays."""

    gt_index: np.ndarray  # (F, G) int64, -1 = padding
    dt_index: np.ndarray  # (F, D) int64, -1 = padding
    overlaps: np.ndarray  # (3, F, D, G): bbox, bev, 3d
    dont_care_ioa: np.ndarray  # (F, D) largest IoA of a detection with a DontCare region
    cos_similarity: np.ndarray  # (F, D, G)

    def padded(self, ignored_gt: np.ndarray, ignored_dt: np.ndarray, scores: np.ndarray, metric_index: int,
               min_overlap: float, with_aos: bool) -> _Padded:
        """The matching inputs for one class / difficulty, reduced to the frames, objects and detections that
        take part (ignored != -1), each frame's file order kept."""
        ig = np.where(self.gt_index < 0, -1, ignored_gt[self.gt_index]).astype(np.int8)
        idt = np.where(self.dt_index < 0, -1, ignored_dt[self.dt_index]).astype(np.int8)
        rows = np.flatnonzero((ig != -1).any(axis=1) | (idt == 0).any(axis=1))
        ig, idt = ig[rows], idt[rows]
        g_order = np.argsort(ig == -1, axis=1, kind="stable")[:, : int((ig != -1).sum(axis=1).max(initial=0))]
        d_order = np.argsort(idt == -1, axis=1, kind="stable")[:, : int((idt != -1).sum(axis=1).max(initial=0))]
        cells = (rows[:, None, None], d_order[:, :, None], g_order[:, None, :])
        dt_index = np.take_along_axis(self.dt_index[rows], d_order, axis=1)
        idt = np.take_along_axis(idt, d_order, axis=1)
        in_dc = np.zeros(dt_index.shape, bool)
        if metric_index == 0:
            in_dc = np.take_along_axis(self.dont_care_ioa[rows], d_order, axis=1) > min_overlap
        return _Padded(self.overlaps[metric_index][cells], np.take_along_axis(ig, g_order, axis=1), idt,
                       np.where(idt == -1, -np.inf, scores[dt_index]), in_dc,
                       self.cos_similarity[cells] if with_aos else None)


def _valid_dims(objects: LabelObjects) -> np.ndarray:
    dims = np.asarray(objects.hwl, dtype=np.float64).reshape(-1, 3)
    return np.isfinite(dims).all(axis=1) & (dims > 0).all(axis=1)


def _concat(arrays: Sequence[np.ndarray], dtype: Any, width: int = 0) -> np.ndarray:
    shaped = [np.asarray(a, dtype=dtype).reshape((-1, width) if width else -1) for a in arrays]
    return np.concatenate(shaped) if shaped else np.zeros((0, width) if width else 0, dtype=dtype)


def _prepare_chunks(gt: Sequence[LabelObjects], dt: Sequence[LabelObjects], classes: Sequence[str],
                    pair_ious: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                    chunk: int = 128) -> list[_Chunk]:
    """Overlaps of every frame, padded in chunks of similar size; BEV / 3-D IoUs of all pairs in one call."""
    wanted = {c.lower() for c in classes}
    wanted |= {SIMILAR_CLASSES[c] for c in wanted if c in SIMILAR_CLASSES}
    g_start = np.cumsum([0] + [len(g) for g in gt])
    d_start = np.cumsum([0] + [len(d) for d in dt])
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    for g, d in zip(gt, dt, strict=True):
        gi = np.flatnonzero(np.isin(_lower_names(g), list(wanted)) & _valid_dims(g))
        di = np.flatnonzero((_lower_names(d) != DONT_CARE.lower()) & _valid_dims(d))  # small ones of any class count
        pairs.append((np.repeat(di, len(gi)), np.tile(gi, len(di))))
    all_d = _concat([pd + d_start[k] for k, (pd, _) in enumerate(pairs)], np.int64)
    all_g = _concat([pg + g_start[k] for k, (_, pg) in enumerate(pairs)], np.int64)
    bev = iou3d = np.zeros(0)
    if len(all_d):
        dt_boxes = _concat([camera_to_zup_boxes(d.location, d.hwl, d.rotation_y) for d in dt], np.float32, 7)
        gt_boxes = _concat([camera_to_zup_boxes(g.location, g.hwl, g.rotation_y) for g in gt], np.float32, 7)
        bev, iou3d = (np.asarray(v, dtype=np.float64) for v in pair_ious(dt_boxes[all_d], gt_boxes[all_g]))
    pair_start = np.cumsum([0] + [len(pd) for pd, _ in pairs])

    order = sorted(range(len(gt)), key=lambda k: (len(gt[k]), len(dt[k])))
    chunks = []
    for lo in range(0, len(order), chunk):
        members = order[lo:lo + chunk]
        num_g = max(len(gt[k]) for k in members)
        num_d = max(len(dt[k]) for k in members)
        c = _Chunk(np.full((len(members), num_g), -1, np.int64), np.full((len(members), num_d), -1, np.int64),
                   np.zeros((3, len(members), num_d, num_g)), np.zeros((len(members), num_d)),
                   np.zeros((len(members), num_d, num_g)))
        for row, k in enumerate(members):
            g, d = gt[k], dt[k]
            ng, nd = len(g), len(d)
            c.gt_index[row, :ng] = np.arange(g_start[k], g_start[k] + ng)
            c.dt_index[row, :nd] = np.arange(d_start[k], d_start[k] + nd)
            if not (ng and nd):
                continue
            c.overlaps[0, row, :nd, :ng] = image_box_overlap(d.bbox, g.bbox)
            pd, pg = pairs[k]
            span = slice(pair_start[k], pair_start[k + 1])
            c.overlaps[1, row, pd, pg] = bev[span]
            c.overlaps[2, row, pd, pg] = iou3d[span]
            dont_care = np.asarray(g.bbox, dtype=np.float64).reshape(-1, 4)[_lower_names(g) == DONT_CARE.lower()]
            if len(dont_care):
                c.dont_care_ioa[row, :nd] = image_box_overlap(d.bbox, dont_care, criterion="ioa").max(axis=1)
            delta = (np.asarray(g.alpha, dtype=np.float64).reshape(1, -1)
                     - np.asarray(d.alpha, dtype=np.float64).reshape(-1, 1))
            c.cos_similarity[row, :nd, :ng] = (1.0 + np.cos(delta)) / 2.0
        chunks.append(c)
    return chunks


def kitti_eval(gt: Sequence[LabelObjects], dt: Sequence[LabelObjects],
               classes: Sequence[str] = ("Car", "Pedestrian", "Cyclist"),
               pair_ious: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
               strict_overlaps: Mapping[str, tuple[float, float, float]] | None = None,
               loose_overlaps: Mapping[str, tuple[float, float, float]] | None = None) -> KittiEvalResult:
    """KITTI AP of detections ``dt`` against labels ``gt`` (one entry per frame, same order).

    Args:
        gt: ground-truth label files (``DontCare`` rows included).
        dt: predictions with a ``score`` column (``score=None`` means every score is 0).
        classes: class names to evaluate, each in the overlap tables (or the given ones).
        pair_ious: ``f(a (P,7), b (P,7)) -> (bev (P,), 3d (P,))`` IoUs of z-up box pairs; default the
            rotated-IoU kernels (:func:`kernel_pair_ious`).
        strict_overlaps / loose_overlaps: ``{class: (bbox, bev, 3d)}`` thresholds replacing the defaults.

    AOS is computed (from the 2-D matching) unless every prediction has the placeholder alpha -10.
    """
    if len(gt) != len(dt):
        raise ValueError(f"gt and dt must have one entry per frame, got {len(gt)} and {len(dt)}")
    strict = dict(STRICT_OVERLAPS, **(strict_overlaps or {}))
    loose = dict(LOOSE_OVERLAPS, **(loose_overlaps or {}))
    classes = tuple(classes)
    for cls in classes:
        if cls not in strict or cls not in loose:
            raise ValueError(f"classes: no overlap thresholds for {cls!r}; known: {sorted(strict)}")
    chunks = _prepare_chunks(gt, dt, classes, pair_ious or kernel_pair_ious)
    gt_names = _concat([_lower_names(g) for g in gt], object)
    dt_names = _concat([_lower_names(d) for d in dt], object)
    gt_height = _concat([_heights(g) for g in gt], np.float64)
    dt_height = np.abs(_concat([_heights(d) for d in dt], np.float64))
    occluded = _concat([g.occluded for g in gt], np.int64)
    truncated = decimal_float64(_concat([g.truncated for g in gt], np.float32))
    scores = _concat([np.zeros(len(d)) if d.score is None else d.score for d in dt], np.float64)
    alphas = _concat([d.alpha for d in dt], np.float64)
    aos_computed = bool(len(alphas) == 0 or np.any(alphas != AOS_PLACEHOLDER_ALPHA))

    shape = (len(classes), len(OVERLAP_SETS), len(METRICS), len(DIFFICULTIES))
    ap_r40, ap_r11 = np.zeros(shape), np.zeros(shape)
    precision = np.zeros((*shape, NUM_RECALL_POSITIONS))
    num_gt = np.zeros((len(classes), len(DIFFICULTIES)), dtype=np.int64)
    overlaps = np.array([[strict[c], loose[c]] for c in classes], dtype=np.float64).reshape(len(classes), 2, 3)
    for c, cls in enumerate(classes):
        for d in range(len(DIFFICULTIES)):
            ignored_gt, ignored_dt = _clean(gt_names, gt_height, occluded, truncated, dt_names, dt_height, cls, d)
            num_gt[c, d] = total = int(np.count_nonzero(ignored_gt == 0))
            for metric_index in range(3):
                with_aos = metric_index == 0 and aos_computed
                done: dict[float, tuple[np.ndarray, np.ndarray | None]] = {}
                for s in range(len(OVERLAP_SETS)):
                    min_overlap = float(overlaps[c, s, metric_index])
                    if min_overlap not in done:
                        batches = [ch.padded(ignored_gt, ignored_dt, scores, metric_index, min_overlap, with_aos)
                                   for ch in chunks]
                        done[min_overlap] = _curves(batches, total, min_overlap, with_aos)
                    prec, aos = done[min_overlap]
                    for m, curve in ((metric_index, prec), (3, aos)):
                        if m == 3 and metric_index != 0:
                            continue
                        if curve is None:
                            ap_r40[c, s, m, d] = ap_r11[c, s, m, d] = np.nan
                            precision[c, s, m, d] = np.nan
                            continue
                        values = curve.copy()
                        ap_r40[c, s, m, d], ap_r11[c, s, m, d] = interpolated_ap(values)
                        precision[c, s, m, d] = values
    return KittiEvalResult(classes, ap_r40, ap_r11, precision, num_gt, overlaps, len(gt), aos_computed)


def _curves(batches: Sequence[_Padded], total_gt: int, min_overlap: float, with_aos: bool
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw (not yet interpolated) precision and AOS arrays over the 41 recall positions."""
    prec = np.zeros(NUM_RECALL_POSITIONS)
    aos = np.zeros(NUM_RECALL_POSITIONS) if with_aos else None
    if total_gt == 0:
        return prec, aos
    # batches where nothing of the class takes part contribute nothing
    batches = [b for b in batches if (b.ignored_gt != -1).any() or (b.ignored_dt == 0).any()]
    found = [_match_scores_padded(b, min_overlap) for b in batches]
    thresholds = recall_thresholds(np.concatenate(found) if found else np.zeros(0), total_gt)
    if len(thresholds) == 0:
        return prec, aos
    pr = np.zeros((len(thresholds), 4))
    for b in batches:
        _pr_padded(b, thresholds, min_overlap, pr)
    denom = pr[:, 0] + pr[:, 1]
    safe = np.where(denom > 0, denom, 1.0)
    prec[: len(thresholds)] = np.where(denom > 0, pr[:, 0] / safe, 0.0)
    if aos is not None:
        aos[: len(thresholds)] = np.where(denom > 0, pr[:, 3] / safe, 0.0)
    return prec, aos
