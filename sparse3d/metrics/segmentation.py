"""Semantic-segmentation metrics from a confusion matrix: overall accuracy, per-class IoU and mean IoU.

Classes are counted as *present* when the ground truth has at least one point of them; the ignore class is
never present. mIoU averages the IoU of present classes only, as the SemanticKITTI benchmark does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(K, K) int64 counts, rows = ground truth, columns = prediction, over targets != ``ignore_index``."""
    valid = target != ignore_index
    idx = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores_from_confusion(conf: torch.Tensor, ignore_index: int) -> dict[str, float]:
    """``accuracy``, ``miou`` and ``iou_<c>`` for every present class."""
    conf = conf.double()
    tp = conf.diag()
    iou = tp / (conf.sum(0) + conf.sum(1) - tp).clamp(min=1)
    present = conf.sum(1) > 0
    if 0 <= ignore_index < present.numel():
        present[ignore_index] = False
    result = {"accuracy": float(tp.sum() / conf.sum().clamp(min=1))}
    result["miou"] = float(iou[present].mean()) if present.any() else 0.0
    for c in range(conf.shape[0]):
        if present[c]:
            result[f"iou_{c}"] = float(iou[c])
    return result


class ConfusionMetrics:
    """The metrics stage of a segmentation task: per-batch confusion matrices, summed at the end."""

    def __init__(self, num_classes: int, ignore_index: int = 0) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)

    def batch(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-batch output of ``validation_step``."""
        return {"confusion": confusion_matrix(logits.argmax(1), target, self.num_classes, self.ignore_index)}

    def compute(self, outputs: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, float]:
        """Scores over all batches (the confusion matrices are summed first)."""
        conf = torch.stack([o["confusion"].cpu() for o in outputs]).sum(0)
        return scores_from_confusion(conf, self.ignore_index)
