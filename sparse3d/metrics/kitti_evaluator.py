"""``sparse3d-eval evaluator=kitti_ap``: KITTI AP of prediction files in ``label_2`` format (plus a score column).

Reads ``<pred>/<id>.txt`` for every frame id of ``<gt>/ImageSets/<split>.txt`` and the ground truth
``<gt>/training/label_2/<id>.txt``, scores them with :func:`sparse3d.metrics.detection.kitti_eval` and writes
``kitti_ap.json`` (all tables), ``kitti_ap.md`` (the same as markdown tables, in percent) and
``results.json`` (run metadata plus the flat ``metrics`` dictionary). Every input file is read before anything is
written, so a malformed file stops the run with one line naming it and leaves no report behind. A frame without
a prediction file has no detections; such frames are listed in a warning and in the results.

With ``ckpt_path=RUN`` instead of ``pred=`` the evaluator first runs that trained detector on the split's frames
(:mod:`sparse3d.detect`, exactly as ``sparse3d-detect ckpt=RUN input=<gt> split=<split>``), writes its
``label_2/<id>.txt`` files and ``detections.json`` into the evaluation's output folder, then scores those files
as ``pred=<output>/label_2`` would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from sparse3d.datasets.kitti import read_split
from sparse3d.detect import LABEL_DIR, Detector, detect_frames, kitti_frames
from sparse3d.io.atomic import atomic_write_json, atomic_write_text
from sparse3d.io.kitti import KittiObjects, read_label
from sparse3d.metrics.detection import STRICT_OVERLAPS, KittiEvalResult, kitti_eval
from sparse3d.train.evaluators import RESULTS_NAME, EvalReport
from sparse3d.utils.errors import UserError

log = logging.getLogger("sparse3d.eval")

JSON_NAME = "kitti_ap.json"
MARKDOWN_NAME = "kitti_ap.md"
_USAGE = ("sparse3d-eval evaluator=kitti_ap pred=<dir of <id>.txt> gt=<KITTI root> split=val "
          "(or ckpt_path=<run> instead of pred=)")


def _label_dir(gt: Path) -> Path:
    """The ground-truth ``training/label_2`` folder of a KITTI root."""
    label_dir = gt / "training" / "label_2"
    if not label_dir.is_dir():
        raise UserError(f"gt={gt}: no training/label_2/ folder with ground-truth labels")
    return label_dir


class KittiApEvaluator:
    """KITTI AP (R40 and R11; bbox, BEV, 3-D, AOS; easy / moderate / hard; strict and loose IoU).

    Args:
        pred: folder of ``<id>.txt`` prediction files (``label_2`` rows with a 16th ``score`` column).
        gt: KITTI root holding ``training/label_2`` and ``ImageSets/``.
        split: an ``ImageSets/<split>.txt`` name (``val``, ``train``, ...); ``None``: every label file in
            ``training/label_2``.
        classes: classes to evaluate (each in the devkit's overlap tables).
        ckpt_path: a training run directory or ``.ckpt`` file to detect with instead of reading ``pred``.
        device, score_threshold, progress: how the ``ckpt_path`` detector runs
            (:meth:`sparse3d.detect.Detector.from_checkpoint`).
    """

    def __init__(self, pred: str | None, gt: str | None, split: str | None = "val",
                 classes: Sequence[str] = ("Car", "Pedestrian", "Cyclist"), experiment: str = "kitti_ap",
                 name: str = "kitti_ap", ckpt_path: str | None = None, device: str = "auto",
                 score_threshold: float | None = None, progress: bool = True) -> None:
        given = {key: value is not None and bool(str(value).strip()) for key, value in
                 (("pred", pred), ("ckpt_path", ckpt_path), ("gt", gt))}
        if given["pred"] and given["ckpt_path"]:
            raise UserError(f"evaluator=kitti_ap takes pred= or ckpt_path=, not both: {_USAGE}")
        for key in ("pred" if not given["ckpt_path"] else "ckpt_path", "gt"):
            if not given[key]:
                raise UserError(f"evaluator=kitti_ap needs {key}=...: {_USAGE}")
        self.ckpt_path = str(ckpt_path) if given["ckpt_path"] else None
        self.pred = Path(str(pred)).expanduser() if given["pred"] else None
        self.device, self.score_threshold, self.progress = str(device), score_threshold, bool(progress)
        self.gt = Path(str(gt)).expanduser()
        self.split = None if split is None or not str(split).strip() else str(split)
        names = classes.split(",") if isinstance(classes, str) else classes
        self.classes = tuple(str(c).strip() for c in names if str(c).strip())
        if not self.classes:
            raise UserError("classes must name at least one class, e.g. classes=[Car]")
        unknown = [c for c in self.classes if c not in STRICT_OVERLAPS]
        if unknown:
            raise UserError(f"classes: no KITTI overlap thresholds for {', '.join(unknown)} "
                            f"(known: {', '.join(STRICT_OVERLAPS)})")
        self.experiment, self.name = experiment, name

    def _frame_ids(self, label_dir: Path) -> tuple[list[str], str]:
        if self.split is None:
            ids = sorted(p.stem for p in label_dir.glob("*.txt"))
            if not ids:
                raise UserError(f"{label_dir}: no label files")
            return ids, str(label_dir)
        ids = read_split(self.gt, self.split)
        source = self.gt / "ImageSets" / f"{self.split}.txt"
        if not ids:
            raise UserError(f"{source}: the split lists no frames")
        repeated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
        if repeated:
            raise UserError(f"{source}: frame id(s) listed more than once: {', '.join(repeated[:10])}")
        return ids, str(source)

    def load(self) -> tuple[list[str], list[KittiObjects], list[KittiObjects], list[str], str]:
        """Read every file: (ids, ground truth, predictions, ids without a prediction file, split source)."""
        if self.pred is None:
            raise UserError(f"evaluator=kitti_ap needs pred=...: {_USAGE}")
        if not self.pred.is_dir():
            raise UserError(f"pred={self.pred}: not a folder of <frame id>.txt prediction files")
        ids, gts, source = self.load_ground_truth()
        preds, missing = self.load_predictions(ids, self.pred)
        return ids, gts, preds, missing, source

    def load_ground_truth(self) -> tuple[list[str], list[KittiObjects], str]:
        """The split's frame ids, their ground-truth labels and where the ids came from."""
        if not self.gt.is_dir():
            raise UserError(f"gt={self.gt}: not a folder (expected a KITTI root with training/label_2)")
        label_dir = _label_dir(self.gt)
        ids, source = self._frame_ids(label_dir)
        gts = []
        for frame in ids:
            gt_file = label_dir / f"{frame}.txt"
            if not gt_file.is_file():
                raise UserError(f"{gt_file}: missing ground-truth label for frame {frame} of split {source}")
            gts.append(read_label(gt_file))
        return ids, gts, source

    @staticmethod
    def load_predictions(ids: Sequence[str], pred: Path) -> tuple[list[KittiObjects], list[str]]:
        """The prediction file of each frame (no detections where it is missing) and the frames without one."""
        preds, missing = [], []
        for frame in ids:
            pred_file = pred / f"{frame}.txt"
            if not pred_file.is_file():
                missing.append(frame)
                preds.append(KittiObjects.empty(with_score=True))
                continue
            objects = read_label(pred_file)
            if len(objects) and objects.score is None:
                raise UserError(f"{pred_file}:1: predictions need a 16th column (score) after rotation_y")
            if objects.score is None:
                objects = KittiObjects.empty(with_score=True)
            preds.append(objects)
        return preds, missing

    def detect(self, ids: Sequence[str], output_dir: Path) -> Path:
        """Run the ``ckpt_path`` detector on frames ``ids`` of ``<gt>/training``; returns its ``label_2`` folder.

        Every frame must be readable (a frame that is not stops the evaluation with one line naming its file)."""
        frames = kitti_frames(self.gt / "training", ids)
        detector = Detector.from_checkpoint(self.ckpt_path, device=self.device, score_threshold=self.score_threshold)

        def stop(_file: str, message: str) -> None:
            raise UserError(message)

        detect_frames(detector, frames, output_dir, progress=self.progress, on_failure=stop)
        return output_dir / LABEL_DIR

    def run(self, output_dir: Path) -> EvalReport:
        start = time.perf_counter()
        if self.ckpt_path is not None:
            ids, gts, source = self.load_ground_truth()
            self.pred = self.detect(ids, output_dir)
            preds, missing = self.load_predictions(ids, self.pred)
        else:
            ids, gts, preds, missing, source = self.load()
        if missing:
            shown = ", ".join(missing[:20]) + (f", ... ({len(missing) - 20} more)" if len(missing) > 20 else "")
            log.warning("%d of %d frames have no prediction file in %s (scored as no detections): %s",
                        len(missing), len(ids), self.pred, shown)
        result = kitti_eval(gts, preds, classes=self.classes)
        extra = {"evaluator": self.name, "experiment": self.experiment, "pred": str(self.pred), "gt": str(self.gt),
                 "checkpoint": self.ckpt_path,
                 "split": source, "num_frames": len(ids), "missing_predictions": missing,
                 "wall_time_s": time.perf_counter() - start, "output_dir": str(output_dir)}
        tables = {**result.to_dict(), **{k: v for k, v in extra.items() if k != "output_dir"}}
        markdown = result.to_markdown(title=f"KITTI detection AP ({Path(source).stem}, {len(ids)} frames)")
        if missing:
            more = f", ... ({len(missing) - 50} more)" if len(missing) > 50 else ""
            markdown += f"\n{len(missing)} frame(s) had no prediction file: {', '.join(missing[:50])}{more}\n"
        results = {**extra, "metrics": result.flat(), "files": [JSON_NAME, MARKDOWN_NAME]}
        atomic_write_json(output_dir / JSON_NAME, tables)
        atomic_write_text(output_dir / MARKDOWN_NAME, markdown)
        atomic_write_json(output_dir / RESULTS_NAME, results)
        return EvalReport(results, _summary(result, len(ids), output_dir))


def _summary(result: KittiEvalResult, num_frames: int, output_dir: Path) -> str:
    """A few lines for the console: moderate AP_R40 per class and the report paths."""
    lines = [f"kitti_ap on {num_frames} frames (AP_R40, moderate, strict IoU):"]
    for cls in result.classes:
        values = "  ".join(f"{m} {_pct(result.get(cls, m, 'moderate'))}" for m in ("bbox", "bev", "3d", "aos"))
        lines.append(f"  {cls}: {values}")
    lines.append(f"  report: {output_dir / MARKDOWN_NAME}")
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.2f}"

