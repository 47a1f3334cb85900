"""LiDAR 3-D detection as a task module of the shared trainer.

Stages as OpenPCDet's module topology, each built from YAML (``configs/model/dsvt_pillar.yaml`` and siblings):
``vfe`` (points -> voxel features) -> ``backbone_3d`` (DSVT, or none for a PointPillars-style baseline) ->
``map_to_bev`` (dense BEV map) -> ``backbone_2d`` -> ``dense_head``. The stages after the VFE are given as
partial constructors and completed here with what the previous stage determines (grid size, channels, stride),
so a grid shape is derived once from ``point_range`` and ``voxel_size`` and never typed twice.

Batch contract (``sparse3d.datasets.kitti_detection.collate_detection``): ``points`` (N, 4+) float32,
``batch_idx`` (N,), ``batch_size``, ``gt_boxes`` list of (M_b, 7) LiDAR boxes, ``gt_labels`` list of (M_b,)
class indices (-1 = ignore), ``frame_id`` list of str.

TensorBoard images: :meth:`DetectionTask.validation_images` draws BEV pictures (:mod:`sparse3d.vis.bev`) of the
last validation batch, ground truth against detections; the trainer writes them after each validation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from sparse3d.models.detection.center_head import CenterHead, Detections
from sparse3d.models.detection.center_targets import BEVGrid, build_targets
from sparse3d.models.dsvt.vfe import DynamicVFE

__all__ = ["DetectionTask"]


class DetectionTask(nn.Module):
    """vfe -> backbone_3d -> map_to_bev -> backbone_2d -> dense_head, trained with the head's losses.

    Args:
        class_names: detected classes, in heatmap order.
        vfe: the voxel feature encoder (built).
        backbone_3d: ``grid_size -> module`` (e.g. a partial :class:`~sparse3d.models.dsvt.backbone.DSVT`), or
            None to scatter the VFE features directly (PointPillars-style).
        map_to_bev: ``(grid_size, in_channels) -> module``.
        backbone_2d: ``in_channels -> module`` with ``out_channels`` and ``out_stride``.
        dense_head: ``(in_channels, num_classes, grid) -> module``.
        metrics: optional ``(class_names) -> object`` with ``batch(detections, batch)`` / ``compute(outputs)``
            for validation.
        val_images: how many frames of the last validation batch :meth:`validation_images` draws (0: none).
    """

    VAL_IMAGE_SCORE = 0.3
    """Detections below this score are left out of the validation images."""
    VAL_IMAGE_RESOLUTION = 0.2
    """Metres per pixel of the validation images."""

    def __init__(self, class_names: Sequence[str], vfe: DynamicVFE, map_to_bev: Callable[..., nn.Module],
                 backbone_2d: Callable[..., nn.Module], dense_head: Callable[..., CenterHead],
                 backbone_3d: Callable[..., nn.Module] | None = None,
                 metrics: Callable[..., Any] | None = None, val_images: int = 2) -> None:
        super().__init__()
        self.class_names = [str(c) for c in class_names]
        if not self.class_names:
            raise ValueError("class_names must list at least one class")
        self.vfe = vfe
        grid = vfe.grid_size
        if backbone_3d is not None:
            self.backbone_3d: nn.Module | None = backbone_3d(grid_size=grid)
            bev_grid, channels = self.backbone_3d.output_shape, self.backbone_3d.out_channels
        else:
            self.backbone_3d = None
            bev_grid, channels = grid, vfe.out_channels
        self.map_to_bev = map_to_bev(grid_size=bev_grid, in_channels=channels)
        self.backbone_2d = backbone_2d(in_channels=self.map_to_bev.out_channels)
        head_grid = BEVGrid.from_range(vfe.point_range, vfe.voxel_size, bev_grid, self.backbone_2d.out_stride)
        self.dense_head = dense_head(in_channels=self.backbone_2d.out_channels, num_classes=len(self.class_names),
                                     grid=head_grid)
        self.metrics = metrics(class_names=self.class_names) if metrics is not None else None
        if val_images < 0:
            raise ValueError(f"val_images must be >= 0, got {val_images}")
        self.val_images = int(val_images)
        self._last_val: tuple[dict[str, Any], list[Detections]] | None = None

    def forward_maps(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The head's dense prediction maps for a batch."""
        batch_size = int(batch.get("batch_size", 1))
        voxels = self.vfe(batch["points"], batch.get("batch_idx"), batch_size)
        features, coords = voxels.features, voxels.coords
        if self.backbone_3d is not None and features.shape[0]:
            features, coords = self.backbone_3d(features, coords)
        bev = self.map_to_bev(features, coords, batch_size)
        return self.dense_head(self.backbone_2d(bev))

    def forward(self, batch: dict[str, Any]) -> list[Detections]:
        """Inference: post-processed detections per frame (LiDAR-frame boxes, scores, class indices)."""
        return self.dense_head.decode(self.forward_maps(batch))

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        maps = self.forward_maps(batch)
        targets = build_targets(batch["gt_boxes"], batch["gt_labels"], len(self.class_names), self.dense_head.grid,
                                self.dense_head.max_objects)
        loss, parts = self.dense_head.loss(maps, targets)
        out = {"loss": loss}
        out.update({k: torch.tensor(v) for k, v in parts.items()})
        return out

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        detections = self(batch)
        if self.val_images:  # a reference, no copy: validation_images draws the last batch, then lets it go
            self._last_val = (batch, detections)
        if self.metrics is None:
            return {}
        return self.metrics.batch(detections, batch)

    def aggregate_validation(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        return self.metrics.compute(outputs) if self.metrics is not None else {}

    def validation_images(self) -> dict[str, np.ndarray]:
        """BEV images of the first :attr:`val_images` frames of the last validation batch, keyed ``bev/<frame_id>``:
        (H, W, 3) float32 in [0, 1] over the VFE's point range, points by height, ground-truth boxes (labels >= 0)
        and detections scoring at least :attr:`VAL_IMAGE_SCORE` in distinct colours
        (:func:`sparse3d.vis.bev.bev_image`). Empty when nothing was validated since the last call."""
        from sparse3d.vis.bev import BevGrid, bev_image

        if self._last_val is None:
            return {}
        batch, detections = self._last_val
        self._last_val = None
        grid = BevGrid.from_point_range(self.vfe.point_range, self.VAL_IMAGE_RESOLUTION)
        points = batch["points"].detach()
        batch_idx = batch.get("batch_idx")
        frame_ids = batch.get("frame_id") or [str(i) for i in range(len(detections))]
        images: dict[str, np.ndarray] = {}
        for b in range(min(self.val_images, len(detections))):
            frame_points = points if batch_idx is None else points[batch_idx == b]
            gt = batch["gt_boxes"][b].detach()
            labels = batch["gt_labels"][b].detach()
            det = detections[b]
            keep = det.scores >= self.VAL_IMAGE_SCORE
            image = bev_image(frame_points[:, :3].float().cpu().numpy(), gt[labels >= 0].float().cpu().numpy(),
                              det.boxes[keep].detach().float().cpu().numpy(), grid=grid)
            images[f"bev/{frame_ids[b]}"] = image.astype(np.float32) / 255.0
        return images
