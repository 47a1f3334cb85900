"""SemanticKITTI-layout point-cloud segmentation dataset (the real download or our synthetic scenes).

Layout: ``root/sequences/XX/velodyne/NNNNNN.bin`` with ``root/sequences/XX/labels/NNNNNN.label`` and a label
config in ``root`` (``sparse3d_lidar.yaml`` written by ``sparse3d-data lidar``, or ``semantic-kitti.yaml`` as
shipped with the SemanticKITTI API; both have ``labels``, ``learning_map``, ``learning_map_inv`` and
``split``). Raw label ids are mapped through ``learning_map`` to contiguous training ids, 0 meaning ignore.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from sparse3d.io.pointcloud import read_kitti_bin, read_semantic_kitti_label
from sparse3d.utils.errors import UserError

__all__ = ["SemanticKittiDataset", "collate_point_batches", "CONFIG_NAMES"]

CONFIG_NAMES = ("sparse3d_lidar.yaml", "semantic-kitti.yaml")
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}


class SemanticKittiDataset(Dataset):
    """Scans of one split as ``{"points": (N, 4) float32, "labels": (N,) int64, "frame_id": "SS/NNNNNN"}``.

    ``point_range`` (xmin, ymin, zmin, xmax, ymax, zmax) keeps points with min <= p < max (half-open, so a
    voxel grid over the same range never gets an index equal to its size). ``max_points`` randomly
    subsamples larger scans. ``augment`` applies a random rotation about z, a random y flip and a uniform
    scale in [0.95, 1.05] before cropping. Rows with NaN/inf coordinates are dropped. ``label_config`` can
    point at a yaml elsewhere (e.g. the SemanticKITTI API's ``config/semantic-kitti.yaml``).

    Randomness (augmentation, subsampling) is a function of ``(seed, epoch, index)`` only, never of the process,
    the DataLoader worker or how many items were read before: the trainer calls :meth:`set_epoch` before each
    epoch, so a run resumed from a checkpoint sees exactly the samples an uninterrupted run would have. Without
    ``augment`` the draws depend on ``(seed, index)`` alone, so evaluation subsampling is the same every epoch.

    Scans a model cannot learn from raise :class:`~sparse3d.utils.errors.UserError` naming the file and the cause:
    a non-finite reflectance on a point with finite coordinates, no point inside ``point_range``, or (in splits
    with labels) no point inside the range with a label other than 0 (ignore). ``check=True`` reads every scan
    once when the dataset is built so these surface before training starts; for a full SemanticKITTI split that
    means reading tens of gigabytes, and ``check=False`` leaves the same checks to each read.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        point_range: Sequence[float] | None = None,
        max_points: int | None = None,
        augment: bool = False,
        seed: int = 0,
        label_config: str | Path | None = None,
        check: bool = True,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(
                f"SemanticKITTI root {root} does not exist. Run `sparse3d-data lidar` to generate a synthetic "
                "set there, or point `data.root` at a SemanticKITTI download (the folder containing sequences/)."
            )
        if split not in _SPLIT_ALIASES:
            raise ValueError(f"split must be one of {sorted(_SPLIT_ALIASES)}, got {split!r}")
        self.root = root
        self.split = _SPLIT_ALIASES[split]
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0

        if point_range is not None:
            pr = np.asarray(point_range, dtype=np.float32)
            if pr.shape != (6,) or not np.all(np.isfinite(pr)) or not np.all(pr[:3] < pr[3:]):
                raise ValueError(
                    "point_range must be (xmin, ymin, zmin, xmax, ymax, zmax), finite, with min < max, "
                    f"got {point_range}"
                )
            self.point_range: np.ndarray | None = pr
        else:
            self.point_range = None
        if max_points is not None and max_points < 1:
            raise ValueError(f"max_points must be >= 1 or None, got {max_points}")
        self.max_points = max_points

        self.config_path = self._find_config(label_config)
        cfg = self._load_config(self.config_path)
        try:
            self.labels: dict[int, str] = {int(k): str(v) for k, v in cfg["labels"].items()}
            self.learning_map: dict[int, int] = {int(k): int(v) for k, v in cfg["learning_map"].items()}
            self.learning_map_inv: dict[int, int] = {int(k): int(v) for k, v in cfg["learning_map_inv"].items()}
        except (AttributeError, TypeError, ValueError) as exc:
            raise UserError(f"{self.config_path}: labels, learning_map and learning_map_inv must map integer ids to "
                            f"names / integer ids ({exc})") from None
        if sorted(self.learning_map_inv) != list(range(len(self.learning_map_inv))):
            raise ValueError(f"{self.config_path}: learning_map_inv keys must be 0..C-1")
        # Raw semantic ids are 16-bit; unknown raw ids map to 0 (ignore).
        self._lut = np.zeros(1 << 16, dtype=np.int64)
        for raw, train_id in self.learning_map.items():
            if not 0 <= raw < (1 << 16):
                raise ValueError(f"{self.config_path}: raw label id {raw} is outside 0..65535")
            self._lut[raw] = train_id

        sequences = cfg["split"].get(self.split) or []
        if not sequences:
            raise ValueError(f"{self.config_path} lists no sequences for split {self.split!r}")
        seq_root = root / "sequences"
        if not seq_root.is_dir() and (root / "dataset" / "sequences").is_dir():
            seq_root = root / "dataset" / "sequences"  # the SemanticKITTI zip extracts to dataset/sequences
        self.has_labels = self.split != "test"
        self.frames: list[tuple[str, Path, Path | None]] = []
        for seq in sequences:
            name = f"{int(seq):02d}"
            velodyne = seq_root / name / "velodyne"
            if not velodyne.is_dir():
                raise FileNotFoundError(
                    f"split {self.split!r} needs sequence {name} but {velodyne} does not exist; "
                    "download its velodyne scans or regenerate the synthetic set with `sparse3d-data lidar`"
                )
            for scan in sorted(velodyne.glob("*.bin")):
                label: Path | None = None
                if self.has_labels:
                    label = seq_root / name / "labels" / f"{scan.stem}.label"
                    if not label.is_file():
                        raise FileNotFoundError(
                            f"label file {label} for scan {scan} is missing; the {self.split!r} split needs "
                            "labels (download the SemanticKITTI label archive into the same root)"
                        )
                self.frames.append((f"{name}/{scan.stem}", scan, label))
        if not self.frames:
            raise ValueError(f"no velodyne scans found for split {self.split!r} under {seq_root}")
        if check:
            for index in range(len(self.frames)):
                self._read(index)

    @staticmethod
    def _load_config(path: Path) -> dict:
        """The label config as a mapping holding the SemanticKITTI keys; one-line errors naming the file."""
        try:
            cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"{path}: not a readable YAML label config ({reason})") from None
        if not isinstance(cfg, dict):
            raise UserError(f"{path}: a SemanticKITTI label config is a mapping, got {type(cfg).__name__}")
        missing = [k for k in ("labels", "learning_map", "learning_map_inv", "split") if k not in cfg]
        if missing:
            raise UserError(f"{path} lacks the SemanticKITTI config keys {missing}")
        return cfg

    def _find_config(self, label_config: str | Path | None) -> Path:
        """The explicit config, else the first of CONFIG_NAMES found in root."""
        if label_config is not None:
            p = Path(label_config)
            if not p.is_file():
                raise FileNotFoundError(f"label config {p} not found")
            return p
        for name in CONFIG_NAMES:
            if (self.root / name).is_file():
                return self.root / name
        raise FileNotFoundError(
            f"no label config in {self.root} (looked for {', '.join(CONFIG_NAMES)}). Copy semantic-kitti.yaml "
            "from the SemanticKITTI API into the root, pass label_config=..., or run `sparse3d-data lidar`."
        )

    @property
    def num_classes(self) -> int:
        """Number of training ids including 0 (ignore), i.e. len(learning_map_inv)."""
        return len(self.learning_map_inv)

    @property
    def class_names(self) -> list[str]:
        """Name of each training id (index 0 is the ignore class)."""
        return [self.labels.get(self.learning_map_inv[i], f"class_{i}") for i in range(self.num_classes)]

    @property
    def frame_ids(self) -> list[str]:
        return [f for f, _, _ in self.frames]

    def __len__(self) -> int:
        return len(self.frames)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws ``__getitem__`` makes (the trainer calls this each epoch;
        DataLoader workers copy the dataset when an epoch's iterator starts, so they see it too)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        """The random stream of one item: ``(seed, epoch, index)`` with augmentation, ``(seed, index)`` without."""
        seed = self.seed % (1 << 63)
        if not self.augment:
            return np.random.default_rng([seed, index])
        return np.random.default_rng([seed, index, self.epoch % (1 << 63), 1])

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """One scan's points with finite coordinates and their training ids, checked (see the class docstring)."""
        _, scan_path, label_path = self.frames[index]
        points = read_kitti_bin(scan_path, num_features=4)
        if label_path is not None:
            semantic, _ = read_semantic_kitti_label(label_path, num_points=points.shape[0])
            labels = self._lut[semantic]
        else:
            labels = np.zeros(points.shape[0], dtype=np.int64)
        finite = np.isfinite(points[:, :3]).all(axis=1)
        points, labels = points[finite], labels[finite]
        bad_features = int((~np.isfinite(points[:, 3:])).any(axis=1).sum())
        if bad_features:
            raise UserError(f"{scan_path}: {bad_features} of {points.shape[0]} points with finite coordinates have "
                            "a NaN or infinite reflectance; repair or remove this scan")
        inside = self._inside(points)
        if not inside.any():
            raise UserError(f"{scan_path}: no point inside point_range {self._range_text()} "
                            f"({self._extent_text(points)}); check data.point_range or remove this scan")
        if label_path is not None and not (labels[inside] != 0).any():
            raise UserError(f"{label_path}: all {int(inside.sum())} points inside point_range have training id 0 "
                            f"(ignore) after learning_map of {self.config_path}; nothing to learn from this scan")
        return points, labels

    def _inside(self, points: np.ndarray) -> np.ndarray:
        if self.point_range is None:
            return np.ones(points.shape[0], dtype=bool)
        lo, hi = self.point_range[:3], self.point_range[3:]
        return np.all((points[:, :3] >= lo) & (points[:, :3] < hi), axis=1)

    def _range_text(self) -> str:
        return "none" if self.point_range is None else "[" + ", ".join(f"{v:g}" for v in self.point_range) + "]"

    @staticmethod
    def _extent_text(points: np.ndarray) -> str:
        if points.shape[0] == 0:
            return "the scan has no point with finite coordinates"
        lo, hi = points[:, :3].min(axis=0), points[:, :3].max(axis=0)
        return f"{points.shape[0]} points, " + ", ".join(
            f"{axis} in [{a:.3g}, {b:.3g}]" for axis, a, b in zip("xyz", lo, hi, strict=True))

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} scans")
        index %= len(self)
        frame_id, scan_path, _ = self.frames[index]
        points, labels = self._read(index)
        rng = self._rng(index)
        if self.augment:
            points = points.copy()
            angle = rng.uniform(-np.pi, np.pi)
            c, s = np.cos(angle), np.sin(angle)
            x, y = points[:, 0].copy(), points[:, 1].copy()
            points[:, 0], points[:, 1] = c * x - s * y, s * x + c * y
            if rng.random() < 0.5:
                points[:, 1] = -points[:, 1]
            points[:, :3] *= np.float32(rng.uniform(0.95, 1.05))
        inside = self._inside(points)
        points, labels = points[inside], labels[inside]
        if points.shape[0] == 0:
            raise UserError(f"{scan_path}: no point inside point_range {self._range_text()} after augmentation "
                            f"(epoch {self.epoch}); widen data.point_range or remove this scan")
        if self.max_points is not None and points.shape[0] > self.max_points:
            keep = np.sort(rng.choice(points.shape[0], self.max_points, replace=False))
            points, labels = points[keep], labels[keep]
        return {
            "points": torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)),
            "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
            "frame_id": frame_id,
        }

    def __repr__(self) -> str:
        return f"SemanticKittiDataset(root={str(self.root)!r}, split={self.split!r}, scans={len(self)})"


def collate_point_batches(items: list[dict]) -> dict:
    """Concatenate scans into one point list with a per-point batch index (the layout voxelizers expect)."""
    if not items:
        raise ValueError("collate_point_batches needs at least one item")
    points = torch.cat([it["points"] for it in items], dim=0)
    labels = torch.cat([it["labels"] for it in items], dim=0)
    batch_idx = torch.cat(
        [torch.full((it["points"].shape[0],), b, dtype=torch.int32) for b, it in enumerate(items)], dim=0
    )
    return {
        "points": points,
        "batch_idx": batch_idx,
        "labels": labels,
        "batch_size": len(items),
        "frame_ids": [it["frame_id"] for it in items],
    }
