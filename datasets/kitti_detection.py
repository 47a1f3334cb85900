"""KITTI object frames as a torch Dataset for 3-D detection training and validation.

Each item is one frame from :func:`sparse3d.datasets.kitti.load_frame`: the LiDAR points (optionally only
those in the front camera's field of view, as OpenPCDet trains on KITTI), the LiDAR-frame boxes of the
``class_names`` classes (other classes and DontCare are left out of the targets) and, for training, the
augmentations: ground-truth database sampling (:class:`~sparse3d.datasets.gt_sampling.GtSampler`, the
``augment.gt_sampling`` sub-config) first, then the global ones of
:class:`~sparse3d.datasets.detection_augment.GlobalAugment`. Points and boxes outside ``point_range`` are dropped
after augmentation.

Randomness: the augmentation of sample ``index`` in epoch ``e`` comes from a generator seeded with
``(seed, e, index)``, GT sampling from one seeded with ``(seed, e, index, 1)`` (a separate stream, so switching GT
sampling on or off leaves the global draws as they were); the trainer calls
:meth:`KittiDetectionDataset.set_epoch` before each epoch, so a resumed run sees exactly the samples the
uninterrupted run would have seen, whatever the worker layout.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sparse3d.datasets.detection_augment import GlobalAugment, in_range_masks
from sparse3d.datasets.gt_sampling import (
    OPENPCDET_KITTI_MIN_POINTS,
    OPENPCDET_KITTI_SAMPLE_GROUPS,
    GtSampler,
    build_gt_database,
    db_info_name,
    parse_class_counts,
)
from sparse3d.datasets.kitti import load_frame, read_split
from sparse3d.train import distributed as D
from sparse3d.utils.errors import UserError

__all__ = ["KittiDetectionDataset", "collate_detection"]

log = logging.getLogger("sparse3d.datasets.kitti_detection")

GT_SAMPLING_KEYS = ("db_info_path", "min_points", "sample_groups", "filter_difficulty", "build_if_missing")
"""Keys of ``augment.gt_sampling``."""
_GT_SAMPLING_STREAM = 1


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


def _build_gt_sampler(cfg: Mapping[str, Any], root: Path, class_names: Sequence[str]) -> GtSampler:
    """``augment.gt_sampling`` as a :class:`GtSampler`, building the database first when it is missing and allowed.

    Keys: ``db_info_path`` (None: ``<root>/kitti_dbinfos_train.pkl``; a relative path is relative to ``root``),
    ``min_points`` and ``sample_groups`` (``{class: count}`` or OpenPCDet's ``['Car:15', ...]``, every class one of
    ``class_names``; when absent, OpenPCDet's KITTI values for those of ``class_names`` it has),
    ``filter_difficulty`` (default ``[-1]``) and ``build_if_missing``: ``auto`` (default: build the database
    from the train split when ``root`` was written by sparse3d's KITTI generator, refuse for other data),
    ``true`` or ``false``. Under DDP rank 0 builds and the others wait for it.
    """
    if not isinstance(cfg, Mapping):
        raise UserError(f"augment.gt_sampling must be a mapping of {', '.join(GT_SAMPLING_KEYS)} (or null), got "
                        f"{cfg!r}")
    unknown = sorted(set(cfg) - set(GT_SAMPLING_KEYS))
    if unknown:
        raise UserError(f"augment.gt_sampling: unknown key(s) {', '.join(map(str, unknown))}; known: "
                        f"{', '.join(sorted(GT_SAMPLING_KEYS))}")

    def defaults(table: Mapping[str, int]) -> dict[str, int]:
        return {c: n for c, n in table.items() if c in class_names}

    groups = parse_class_counts(cfg.get("sample_groups", defaults(OPENPCDET_KITTI_SAMPLE_GROUPS)),
                                "augment.gt_sampling.sample_groups")
    min_points = parse_class_counts(cfg.get("min_points", defaults(OPENPCDET_KITTI_MIN_POINTS)),
                                    "augment.gt_sampling.min_points")
    for what, counts in (("sample_groups", groups), ("min_points", min_points)):
        foreign = [c for c in counts if c not in class_names]
        if foreign:
            raise UserError(f"augment.gt_sampling.{what}: unknown class {', '.join(map(repr, foreign))} "
                            f"(data.class_names: {', '.join(class_names)})")
    difficulty = cfg.get("filter_difficulty", [-1])
    if (isinstance(difficulty, (str, bytes)) or not isinstance(difficulty, Sequence)
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in difficulty)):
        raise UserError(f"augment.gt_sampling.filter_difficulty must be a list of difficulty levels (e.g. [-1]), "
                        f"got {difficulty!r}")
    build = cfg.get("build_if_missing", "auto")
    if build not in ("auto", True, False):
        raise UserError(f"augment.gt_sampling.build_if_missing must be auto, true or false, got {build!r}")
    given = cfg.get("db_info_path")
    info_path = root / db_info_name("train") if given in (None, "") else root / Path(str(given))
    if not D.broadcast_object(info_path.is_file()):
        if build == "auto":
            from sparse3d.datasets.synth.kitti import MARKER_NAME  # only here: the generator imports Open3D

            build = (root / MARKER_NAME).is_file()
        if not build:
            raise UserError(f"{info_path}: GT database not found; build it with `sparse3d-data kitti_gt_database "
                            f"root={root}` (or set data.train.augment.gt_sampling=null)")
        if D.current_dist_info().is_main:
            log.info("GT database %s is missing: building it from %s (train split)", info_path, root)
            build_gt_database(root, "train", out_dir=info_path.parent, info_name=info_path.name)
        D.barrier("GT database")
    return GtSampler.from_file(info_path, groups, min_points, [int(d) for d in difficulty])


class KittiDetectionDataset(Dataset):
    """Frames of ``split`` under the KITTI object ``root`` (``ImageSets/<split>.txt``).

    Args:
        root: KITTI object root (``training/``, ``ImageSets/``).
        split: ``train``, ``val`` or any ``ImageSets/<split>.txt``.
        class_names: classes to detect (KITTI names, e.g. Car, Pedestrian, Cyclist), in label order.
        point_range: (xmin, ymin, zmin, xmax, ymax, zmax) kept after augmentation.
        augment: keyword arguments of :class:`GlobalAugment` plus an optional ``gt_sampling`` sub-mapping (see
            :func:`_build_gt_sampler`; GT sampling runs first), or None for none (validation). Without any
            :class:`GlobalAugment` key only GT sampling runs.
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
        global_keys = dict(augment or {})
        gt_cfg = global_keys.pop("gt_sampling", None)
        self.augment = _build_augment(global_keys) if global_keys else None
        if gt_cfg is True:  # `gt_sampling: true`: OpenPCDet's KITTI settings
            gt_cfg = {}
        self.gt_sampler = (None if gt_cfg is None or gt_cfg is False
                           else _build_gt_sampler(gt_cfg, self.root, self.class_names))
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
        points, boxes, names = frame.points, frame.boxes, np.asarray(frame.names)
        if self.gt_sampler is not None:  # before the class filter: no pasted object may overlap any labelled one
            rng = np.random.default_rng([self.seed, self.epoch, index, _GT_SAMPLING_STREAM])
            sample = self.gt_sampler(points, boxes, names, rng)
            points, boxes, names = sample.points, sample.boxes, sample.names
        wanted = np.array([name in self.class_names for name in names], dtype=bool)
        boxes = boxes[wanted].astype(np.float32)
        labels = np.array([self.class_names.index(n) for n in names[wanted]], dtype=np.int64)
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
