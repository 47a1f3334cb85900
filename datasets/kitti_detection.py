"""KITTI object frames as a torch Dataset for 3-D detection training and validation.

Each item is one frame from :func:`sparse3d.datasets.kitti.load_frame`: the LiDAR points (optionally only
those in the front camera's field of view, as OpenPCDet trains on KITTI), the LiDAR-frame boxes of the
``class_names`` classes (other classes and DontCare are left out of the targets) and, for training, the global
augmentations of :class:`~sparse3d.datasets.detection_augment.GlobalAugment`. Points and boxes outside
``point_range`` are dropped after augmentation.

Randomness: the augmentation of sample ``index`` in epoch ``e`` comes from a generator seeded with
``(seed, e, index)``; the trainer calls :meth:`KittiDetectionDataset.set_epoch` before each epoch, so a resumed
run sees exactly the samples the uninterrupted run would have seen, whatever the worker layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sparse3d.datasets.detection_augment import GlobalAugment, in_range_masks
from sparse3d.datasets.kitti import load_frame, read_split
from sparse3d.utils.errors import UserError

__all__ = ["KittiDetectionDataset", "collate_detection"]


def _build_augment(augment: Mapping[str, Any]) -> GlobalAugment:
    """``data.train.augment`` as a :class:`GlobalAugment`; unknown keys and bad ranges are one-line errors."""
    known = {f.name for f in fields(GlobalAugment)}
    unknown = sorted(set(augment) - known)
    if unknown:
        raise UserError(f"augment: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return GlobalAugment(**{k: (tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v)
                                for k, v in augment.items()})
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None


class KittiDetectionDataset(Dataset):
    """Frames of ``split`` under the KITTI object ``root`` (``ImageSets/<split>.txt``).

    Args:
        root: KITTI object root (``training/``, ``ImageSets/``).
        split: ``train``, ``val`` or any ``ImageSets/<split>.txt``.
        class_names: classes to detect (KITTI names, e.g. Car, Pedestrian, Cyclist), in label order.
        point_range: (xmin, ymin, zmin, xmax, ymax, zmax) kept after augmentation.
        augment: keyword arguments of :class:`GlobalAugment`, or None for none (validation).
        fov_only: keep only points that project into the front camera image.
        seed: base seed of the per-sample augmentation.
    """

    def __init__(self, root: str | Path, split: str, class_names: Sequence[str], point_range: Sequence[float],
                 augment: Mapping[str, Any] | None = None, fov_only: bool = True, seed: int = 0) -> None:
        self.root = Path(root)
        self.split = split
        self.class_names = [str(c) for c in class_names]
        if not self.class_names:
            raise UserError("data.class_names must list at least one class")
        if len(point_range) != 6 or not all(np.isfinite(float(v)) for v in point_range):
            raise UserError(f"data.point_range must be 6 finite numbers (xmin, ymin, zmin, xmax, ymax, zmax), got "
                            f"{list(point_range)}")
        self.point_range = [float(v) for v in point_range]
        self.augment = _build_augment(augment) if augment else None
        self.fov_only = bool(fov_only)
        self.seed = int(seed)
        self.epoch = 0
        self.frame_ids = read_split(self.root, split)
        if not self.frame_ids:
            raise UserError(f"{self.root / 'ImageSets' / (split + '.txt')}: the split lists no frame")

    def __len__(self) -> int:
        return len(self.frame_ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (called by the trainer before each epoch)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        frame_id = self.frame_ids[index]
        frame = load_frame(self.root, frame_id, fov_only=self.fov_only)
        points = frame.points
        wanted = np.array([name in self.class_names for name in frame.names], dtype=bool)
        boxes = frame.boxes[wanted].astype(np.float32)
        labels = np.array([self.class_names.index(n) for n in np.asarray(frame.names)[wanted]], dtype=np.int64)
        if self.augment is not None:
            points, boxes = self.augment(points, boxes, self._rng(index))
        keep_points, keep_boxes = in_range_masks(points, boxes, self.point_range)
        return {
            "points": torch.from_numpy(np.ascontiguousarray(points[keep_points], dtype=np.float32)),
            "gt_boxes": torch.from_numpy(np.ascontiguousarray(boxes[keep_boxes], dtype=np.float32)),
            "gt_labels": torch.from_numpy(labels[keep_boxes]),
            "frame_id": frame_id,
        }


def collate_detection(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Concatenate the points of a batch with their batch index; boxes and labels stay per frame."""
    points = [s["points"] for s in samples]
    return {
        "points": torch.cat(points, dim=0) if points else torch.zeros(0, 4),
        "batch_idx": torch.cat([torch.full((p.shape[0],), b, dtype=torch.int32) for b, p in enumerate(points)])
        if points else torch.zeros(0, dtype=torch.int32),
        "batch_size": len(samples),
        "gt_boxes": [s["gt_boxes"] for s in samples],
        "gt_labels": [s["gt_labels"] for s in samples],
        "frame_id": [s["frame_id"] for s in samples],
    }
