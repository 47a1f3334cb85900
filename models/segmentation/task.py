"""Per-point semantic segmentation as a task module of the shared trainer.

The task holds its stages, each built from YAML (``configs/model/sparse_unet.yaml``): ``voxelizer`` (points ->
sparse voxels), ``backbone`` (sparse network), ``head`` (voxel features -> per-point logits), ``loss`` and
``metrics``. It implements the trainer protocol (``training_step``, ``validation_step``,
``aggregate_validation``); ``forward`` is inference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparse3d.metrics.segmentation import ConfusionMetrics


class SegmentationTask(nn.Module):
    """voxelizer -> backbone -> head, trained with ``loss``, scored with ``metrics``.

    Points that the voxelizer drops (outside the range, non-finite) get ``ignore_index`` as their target,
    so they count in neither the loss nor the metrics.
    """

    def __init__(self, voxelizer: nn.Module, backbone: nn.Module, head: nn.Module, loss: nn.Module,
                 metrics: ConfusionMetrics, ignore_index: int = 0) -> None:
        super().__init__()
        self.voxelizer, self.backbone, self.head = voxelizer, backbone, head
        self.loss = loss
        self.metrics = metrics
        self.ignore_index = int(ignore_index)

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-point logits (N, num_classes) and the point -> voxel map (-1 = dropped point)."""
        voxels, vox = self.voxelizer(batch)
        features = self.backbone(voxels)
        return self.head(features, vox.point_to_voxel), vox.point_to_voxel

    def _targets(self, batch: dict[str, Any], point_to_voxel: torch.Tensor) -> torch.Tensor:
        labels = batch["labels"].clone()
        labels[point_to_voxel < 0] = self.ignore_index
        return labels

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits, p2v = self(batch)
        labels = self._targets(batch, p2v)
        loss = self.loss(logits, labels)
        valid = labels != self.ignore_index
        acc = (logits.argmax(1)[valid] == labels[valid]).float().mean() if valid.any() else loss.new_zeros(())
        voxels = float(getattr(self.voxelizer, "stats", {}).get("voxels", 0.0))
        return {"loss": loss, "acc": acc.detach(), "voxels": torch.tensor(voxels)}

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits, p2v = self(batch)
        return self.metrics.batch(logits, self._targets(batch, p2v))

    def aggregate_validation(self, outputs: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        return self.metrics.compute(outputs)

    def summary(self) -> dict[str, float]:
        """Statistics the stages recorded in the last forward pass (voxel counts, dropped points)."""
        stats: dict[str, float] = {}
        for stage in (self.voxelizer, self.backbone, self.head):
            stats.update(getattr(stage, "stats", {}))
        return stats
