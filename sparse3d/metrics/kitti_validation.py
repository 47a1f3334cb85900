"""Validation metrics of a 3-D detector on a KITTI-layout split, during training.

The detections of each validation frame are converted to KITTI result rows with the frame's calibration
(:func:`sparse3d.datasets.kitti.detections_to_objects`) and scored against its ``label_2`` file by the same
:func:`sparse3d.metrics.detection.kitti_eval` that ``sparse3d-eval evaluator=kitti_ap`` uses, so the numbers in
TensorBoard and in the evaluator's report agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparse3d.datasets.kitti import detections_to_objects
from sparse3d.io.kitti import DEFAULT_IMAGE_SHAPE, read_calib, read_image_shape, read_label
from sparse3d.metrics.detection import kitti_eval

__all__ = ["KittiDetectionMetrics"]


class KittiDetectionMetrics:
    """``batch`` keeps each frame's detections; ``compute`` returns moderate AP R40 per class (BEV and 3-D) and
    their means over classes, as ``<class>/<metric>_R40/moderate`` and ``mAP/<metric>_R40/moderate``."""

    def __init__(self, class_names: Sequence[str], root: str | Path, metrics: Sequence[str] = ("bev", "3d")) -> None:
        self.class_names = [str(c) for c in class_names]
        self.root = Path(root)
        self.metrics = [str(m) for m in metrics]

    def batch(self, detections: Sequence[Any], batch: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "frame_id": list(batch["frame_id"]),
            "boxes": [d.boxes.detach().cpu().numpy() for d in detections],
            "scores": [d.scores.detach().cpu().numpy() for d in detections],
            "labels": [d.labels.detach().cpu().numpy() for d in detections],
        }

    def compute(self, outputs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        gt, dt = [], []
        for out in outputs:
            for fid, boxes, scores, labels in zip(out["frame_id"], out["boxes"], out["scores"], out["labels"]):
                # only the label, calibration and image size: the scan itself is not needed to score
                folder = self.root / "training"
                image = folder / "image_2" / f"{fid}.png"
                shape = read_image_shape(image) if image.is_file() else DEFAULT_IMAGE_SHAPE
                gt.append(read_label(folder / "label_2" / f"{fid}.txt"))
                names = [self.class_names[int(i)] for i in np.asarray(labels).reshape(-1)]
                dt.append(detections_to_objects(boxes, scores, names, read_calib(folder / "calib" / f"{fid}.txt"),
                                                shape))
        if not gt:
            return {}
        result = kitti_eval(gt, dt, classes=self.class_names)
        values: dict[str, float] = {}
        for metric in self.metrics:
            per_class = [result.get(cls, metric, "moderate") for cls in self.class_names]
            for cls, value in zip(self.class_names, per_class):
                values[f"{cls}/{metric}_R40/moderate"] = value
            values[f"mAP/{metric}_R40/moderate"] = float(np.mean(per_class))
        return values
