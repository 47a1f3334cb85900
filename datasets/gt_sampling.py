"""Ground-truth database sampling ("copy-paste" augmentation) for LiDAR detection, as OpenPCDet does it.

Two halves, after OpenPCDet's ``KittiDataset.create_groundtruth_database`` and ``DataBaseSampler``:

* :func:`build_gt_database` (``sparse3d-data kitti_gt_database root=DIR``) cuts every labelled object of the
  TRAIN split out of its scan: the points inside its box, stored relative to the box centre (``x, y, z`` minus
  the centre; reflectance kept) as float32 ``ROOT/gt_database/<frame>_<class>_<i>.bin``, and one info file
  ``ROOT/kitti_dbinfos_train.pkl``: a dict ``{class name: [info, ...]}`` whose infos carry OpenPCDet's keys
  ``name, path (relative to the info file's folder), image_idx (frame id), gt_idx, box3d_lidar (7,) float32,
  num_points_in_gt, difficulty, bbox (4,), score``. The format is OpenPCDet's own pickle so that databases built
  by either tool are interchangeable; load only files you trust (a pickle can run code).
* :class:`GtSampler` pastes objects from that database into a training frame: per class it draws
  ``max(0, target - objects of that class already in the frame)`` candidates from the objects that pass the
  filters (``num_points_in_gt >= min_points[class]``, ``difficulty`` not in ``filter_difficulty``; OpenPCDet's
  KITTI setting is 5 points for Car, Pedestrian and Cyclist and removes difficulty -1), rejects every candidate
  whose BEV footprint overlaps (rotated BEV IoU > 0) a box of the frame or a candidate accepted before it,
  removes the scene points inside the accepted boxes and adds the accepted objects' points, shifted back to their
  box centre.

Choices, where OpenPCDet leaves room:

* Sampled boxes keep the pose they had in their own frame (OpenPCDet with ``USE_ROAD_PLANE: False``): KITTI is
  recorded from one car with the sensor at a fixed height, so an object's height above the road carries over
  between frames; no road-plane file is needed.
* Overlaps are resolved greedily in draw order: a candidate that overlaps an accepted one is dropped and the
  accepted one stays (OpenPCDet drops both of an overlapping pair of candidates).
* Draws come from a ``numpy.random.Generator`` the caller passes in (the detection dataset seeds it from seed,
  epoch and sample index), not from a shuffled queue kept between samples as OpenPCDet does, so a resumed run
  draws exactly what the uninterrupted one did, whatever the worker layout.
* The database stores all points in a box, also those outside the camera field of view (OpenPCDet's builder
  reads the full scan too); ``num_points_in_gt`` of an info is the number of points stored, which can exceed the
  frame's field-of-view count (:attr:`sparse3d.datasets.kitti.KittiFrame.num_points_in_gt`) for objects cut by
  the image border.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sparse3d.datasets.kitti import _root, load_frame, read_split
from sparse3d.geometry.boxes import points_in_boxes
from sparse3d.io.kitti import DEFAULT_IMAGE_SHAPE
from sparse3d.kernels.rotated_iou import boxes_iou_bev
from sparse3d.kernels.runtime import serial_torch_ops
from sparse3d.utils.errors import UserError

__all__ = [
    "DB_FOLDER",
    "OPENPCDET_KITTI_MIN_POINTS",
    "OPENPCDET_KITTI_SAMPLE_GROUPS",
    "GtSample",
    "GtSampler",
    "build_gt_database",
    "db_info_name",
    "load_db_infos",
    "parse_class_counts",
]

log = logging.getLogger("sparse3d.datasets.gt_sampling")

DB_FOLDER = "gt_database"
"""Folder (next to the info file) that holds the per-object point files."""
DB_NUM_FEATURES = 4
"""Columns of a stored object point: x, y, z relative to the box centre, reflectance."""
OPENPCDET_KITTI_MIN_POINTS: dict[str, int] = {"Car": 5, "Pedestrian": 5, "Cyclist": 5}
"""OpenPCDet's KITTI ``filter_by_min_points``."""
OPENPCDET_KITTI_SAMPLE_GROUPS: dict[str, int] = {"Car": 15, "Pedestrian": 15, "Cyclist": 15}
"""OpenPCDet's KITTI ``SAMPLE_GROUPS`` of its PointPillars / SECOND / PV-RCNN configs (the dataset template says
Car:20)."""
_INFO_KEYS = ("name", "path", "box3d_lidar", "num_points_in_gt", "difficulty")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def db_info_name(split: str = "train") -> str:
    """OpenPCDet's info-file name for ``split``: ``kitti_dbinfos_<split>.pkl``."""
    return f"kitti_dbinfos_{split}.pkl"


# ------------------------------------------------------------------------------------------------------------
# database builder
# ------------------------------------------------------------------------------------------------------------


def _frame_objects(base: Path, frame_id: str, classes: set[str] | None, image_shape: tuple[int, int],
                   difficulty_rule: str) -> list[tuple[dict[str, Any], np.ndarray]]:
    """(info, points relative to the box centre) of every wanted object of one frame, in label order."""
    frame = load_frame(base, frame_id, image_shape=image_shape, difficulty_rule=difficulty_rule)
    if len(frame) == 0:
        return []
    boxes64 = frame.boxes_float64 if frame.boxes_float64 is not None else frame.boxes.astype(np.float64)
    inside = points_in_boxes(frame.points, boxes64)
    assert frame.objects is not None  # a training frame with boxes has its label file
    cared = frame.objects.select(frame.objects.name != "DontCare")
    scores = cared.score if cared.score is not None else np.full(len(cared), -1.0)
    out: list[tuple[dict[str, Any], np.ndarray]] = []
    for i, name in enumerate(str(n) for n in frame.names):
        if classes is not None and name not in classes:
            continue
        if not _SAFE_NAME.match(name):
            raise UserError(f"{base / 'training' / 'label_2' / (frame.frame_id + '.txt')}: object type {name!r} "
                            "cannot name a database file (letters, digits, '_', '-', '.' only)")
        box = frame.boxes[i].astype(np.float32)
        points = frame.points[inside[i]].astype(np.float64)
        points[:, :3] -= box[:3].astype(np.float64)
        info = {
            "name": name,
            "path": f"{DB_FOLDER}/{frame.frame_id}_{name}_{i}.bin",
            "image_idx": frame.frame_id,
            "gt_idx": i,
            "box3d_lidar": box,
            "num_points_in_gt": int(points.shape[0]),
            "difficulty": int(frame.difficulty[i]),
            "bbox": np.asarray(cared.bbox[i], dtype=np.float32).copy(),
            "score": float(scores[i]),
        }
        out.append((info, points.astype(np.float32)))
    return out


def build_gt_database(
    root: str | os.PathLike,
    split: str = "train",
    *,
    classes: Sequence[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    info_name: str | None = None,
    image_shape: Sequence[int] = DEFAULT_IMAGE_SHAPE,
    difficulty_rule: str = "devkit",
    num_workers: int = 2,
    overwrite: bool = True,
    progress: bool = True,
) -> Path:
    """Write the GT database of ``root``'s ``split`` into ``out_dir`` (default ``root``) and return that folder.

    ``out_dir/gt_database/<frame>_<class>_<i>.bin`` holds object ``i`` (label order, DontCare left out) of each
    frame of ``ImageSets/<split>.txt``: its points, all of the scan (not only the camera field of view), relative
    to the box centre, float32 (N, 4). ``out_dir/<info_name>`` (default ``kitti_dbinfos_<split>.pkl``) is the
    info dict described in the module docstring. ``classes`` limits the objects written (None: every labelled
    class, as OpenPCDet). Everything is written to hidden staging names and moved into place at the end, so an
    error leaves the previous database (or nothing) behind; ``overwrite=False`` refuses an existing one.
    """
    base = _root(root)
    if num_workers < 1:
        raise UserError(f"num_workers must be >= 1, got {num_workers}")
    wanted = None if classes is None else {str(c) for c in ([classes] if isinstance(classes, str) else classes)}
    if wanted is not None and not wanted:
        raise UserError("classes must name at least one class (or be null for every labelled class)")
    frame_ids = read_split(base, split)
    target = Path(out_dir) if out_dir is not None else base
    if target.exists() and not target.is_dir():
        raise UserError(f"out_dir {target} exists and is not a folder")
    info_path = target / (info_name or db_info_name(split))
    folder = target / DB_FOLDER
    if not overwrite:
        for existing in (info_path, folder):
            if existing.exists():
                raise UserError(f"{existing} already exists (pass overwrite=true to replace it)")
    if len(image_shape) != 2 or min(int(v) for v in image_shape) < 1:
        raise UserError(f"image_shape must be (height, width) in pixels, both >= 1, got {list(image_shape)}")
    shape = (int(image_shape[0]), int(image_shape[1]))

    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DB_FOLDER}.", suffix=".partial", dir=target))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{info_path.name}.", suffix=".partial", dir=target)
    os.close(fd)
    tmp_info = Path(tmp_name)
    old: Path | None = None  # the previous gt_database while the new one moves in
    moved = False
    try:
        db_infos: dict[str, list[dict[str, Any]]] = {}
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            results = pool.map(lambda fid: _frame_objects(base, fid, wanted, shape, difficulty_rule), frame_ids)
            for objects in tqdm(results, total=len(frame_ids), desc=f"gt_database {split}", unit="frame",
                                disable=not progress):
                for info, points in objects:
                    points.tofile(staging / Path(info["path"]).name)
                    db_infos.setdefault(info["name"], []).append(info)
        with open(tmp_info, "wb") as f:
            pickle.dump(db_infos, f, protocol=pickle.HIGHEST_PROTOCOL)
        # mkstemp/mkdtemp create 0600/0700; give the outputs the modes plain open()/mkdir() would have
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp_info, 0o666 & ~mask)
        os.chmod(staging, 0o777 & ~mask)
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{DB_FOLDER}.", suffix=".old", dir=target))
            os.replace(folder, old / DB_FOLDER)
        os.replace(staging, folder)
        moved = True
        os.replace(tmp_info, info_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        tmp_info.unlink(missing_ok=True)
        if moved:
            shutil.rmtree(folder, ignore_errors=True)
        if old is not None and (old / DB_FOLDER).exists():
            os.replace(old / DB_FOLDER, folder)
        if created:
            shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    counts = ", ".join(f"{name} {len(v)}" for name, v in db_infos.items()) or "no objects"
    log.info("GT database of %d %s frames: %s -> %s", len(frame_ids), split, counts, info_path)
    return target


# ------------------------------------------------------------------------------------------------------------
# sampler
# ------------------------------------------------------------------------------------------------------------


def parse_class_counts(value: Any, what: str) -> dict[str, int]:
    """``{class: int >= 0}`` from a mapping or OpenPCDet's list form (``['Car:15', 'Pedestrian:10']``); any other
    shape or value is a one-line :class:`UserError` naming ``what``."""
    pairs: list[tuple[Any, Any]]
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, Sequence) and not isinstance(value, str):
        pairs = []
        for item in value:
            name, sep, count = str(item).rpartition(":")
            if not sep or not name:
                raise UserError(f"{what}: expected 'Class:count' entries, got {item!r}")
            pairs.append((name.strip(), count.strip()))
    else:
        raise UserError(f"{what} must map class names to counts (e.g. {{Car: 15}}), got {value!r}")
    out: dict[str, int] = {}
    for name, count in pairs:
        if isinstance(count, bool) or isinstance(count, float):
            raise UserError(f"{what}.{name} must be a whole number >= 0, got {count!r}")
        try:
            number = int(str(count))
        except ValueError:
            raise UserError(f"{what}.{name} must be a whole number >= 0, got {count!r}") from None
        if number < 0:
            raise UserError(f"{what}.{name} must be a whole number >= 0, got {number}")
        out[str(name)] = number
    return out


def load_db_infos(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Read and check a GT database info file (the pickle of :func:`build_gt_database` or OpenPCDet's)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: GT database info file not found")
    try:
        with open(p, "rb") as f:
            infos = pickle.load(f)
    except Exception as exc:  # a corrupt pickle raises almost any type
        raise UserError(f"{p}: not a readable GT database info pickle ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None
    if not isinstance(infos, Mapping):
        raise UserError(f"{p}: expected a dict {{class name: [object info, ...]}}, got {type(infos).__name__}")
    for name, entries in infos.items():
        if not isinstance(entries, list):
            raise UserError(f"{p}: entry {name!r} must be a list of object infos, got {type(entries).__name__}")
        for k, info in enumerate(entries):
            missing = [key for key in _INFO_KEYS if not isinstance(info, Mapping) or key not in info]
            if missing:
                raise UserError(f"{p}: object {k} of {name!r} lacks {', '.join(missing)}")
            box = np.asarray(info["box3d_lidar"], dtype=np.float64).reshape(-1)
            if box.shape[0] < 7 or not np.isfinite(box[:7]).all() or min(box[3:6]) <= 0:
                raise UserError(f"{p}: object {k} of {name!r} has a bad box3d_lidar {box.tolist()}")
    return {str(k): v for k, v in infos.items()}


@dataclass(frozen=True)
class GtSample:
    """A frame after GT sampling: ``points`` (N', C) float32 (sampled objects' points first, then the scene's
    that lie in no sampled box), ``boxes`` (M + S, 7) float32 and ``names`` (M + S,) with the S sampled objects
    appended after the frame's M, and ``sampled`` = S."""

    points: np.ndarray
    boxes: np.ndarray
    names: np.ndarray
    sampled: int


@dataclass(frozen=True)
class _Pool:
    boxes: np.ndarray  # (K, 7) float32
    paths: list[Path]
    counts: np.ndarray  # (K,) int64


class GtSampler:
    """Paste database objects into frames (see the module docstring for the procedure and its choices).

    Args:
        db_infos: the info dict of :func:`load_db_infos` (``{class: [info, ...]}``).
        db_root: folder the infos' ``path`` entries are relative to.
        sample_groups: per class, the object count to fill each frame up to (classes not listed are not
            sampled).
        min_points: per class, the fewest stored points an object needs to be drawn (classes not listed: 0).
        filter_difficulty: difficulties never drawn (OpenPCDet removes -1, unknown).
        num_point_features: columns of a stored point (x, y, z relative to the box centre, then features).
    """

    def __init__(self, db_infos: Mapping[str, Sequence[Mapping[str, Any]]], db_root: str | os.PathLike,
                 sample_groups: Mapping[str, int], min_points: Mapping[str, int] | None = None,
                 filter_difficulty: Sequence[int] = (-1,), num_point_features: int = DB_NUM_FEATURES) -> None:
        if num_point_features < 3:
            raise UserError(f"num_point_features must be >= 3, got {num_point_features}")
        self.db_root = Path(db_root)
        self.sample_groups = parse_class_counts(sample_groups, "sample_groups")
        self.min_points = parse_class_counts(min_points or {}, "min_points")
        self.filter_difficulty = {int(d) for d in filter_difficulty}
        self.num_point_features = int(num_point_features)
        self.pools: dict[str, _Pool] = {}
        for name in self.sample_groups:
            keep = [info for info in db_infos.get(name, [])
                    if int(info["difficulty"]) not in self.filter_difficulty
                    and int(info["num_points_in_gt"]) >= self.min_points.get(name, 0)]
            boxes = (np.stack([np.asarray(i["box3d_lidar"], dtype=np.float32).reshape(-1)[:7] for i in keep])
                     if keep else np.zeros((0, 7), np.float32))
            self.pools[name] = _Pool(boxes=boxes, paths=[self.db_root / str(i["path"]) for i in keep],
                                     counts=np.array([int(i["num_points_in_gt"]) for i in keep], dtype=np.int64))
            if not keep and self.sample_groups[name] > 0:
                log.warning("GT sampling: no %s object of the database passes the filters; none will be sampled",
                            name)

    @classmethod
    def from_file(cls, info_path: str | os.PathLike, sample_groups: Mapping[str, int],
                  min_points: Mapping[str, int] | None = None, filter_difficulty: Sequence[int] = (-1,),
                  num_point_features: int = DB_NUM_FEATURES) -> GtSampler:
        """A sampler over the info file ``info_path``; its ``path`` entries are relative to the file's folder."""
        path = Path(info_path)
        return cls(load_db_infos(path), path.parent, sample_groups, min_points, filter_difficulty,
                   num_point_features)

    def pool_size(self, name: str) -> int:
        """How many objects of class ``name`` can be drawn (after the filters)."""
        pool = self.pools.get(name)
        return 0 if pool is None else int(pool.boxes.shape[0])

    def _read(self, path: Path, count: int) -> np.ndarray:
        try:
            data = np.fromfile(path, dtype="<f4")
        except OSError as exc:
            raise UserError(f"{path}: cannot read GT database points ({exc.strerror or exc})") from None
        if data.size != count * self.num_point_features:
            raise UserError(f"{path}: holds {data.size} floats, the database info says {count} points x "
                            f"{self.num_point_features} features")
        return data.reshape(count, self.num_point_features)

    def __call__(self, points: np.ndarray, boxes: np.ndarray, names: Sequence[str],
                 rng: np.random.Generator) -> GtSample:
        """Sample into one frame: ``points`` (N, C >= 3), its ``boxes`` (M, 7) and ``names`` (M,) (all labelled
        objects, of any class, so that none is overlapped), drawing from ``rng``."""
        pts = np.asarray(points, dtype=np.float32)
        if pts.ndim != 2 or pts.shape[1] < 3:
            raise ValueError(f"points must have shape (N, C>=3), got {pts.shape}")
        if pts.shape[1] > self.num_point_features:
            raise ValueError(f"points have {pts.shape[1]} columns but the database stores {self.num_point_features}")
        existing = np.asarray(boxes, dtype=np.float32).reshape(-1, 7)
        labels = np.asarray([str(n) for n in names], dtype=str).reshape(-1)
        if labels.shape[0] != existing.shape[0]:
            raise ValueError(f"names has {labels.shape[0]} entries for {existing.shape[0]} boxes")
        accepted_boxes: list[np.ndarray] = []
        accepted: list[tuple[str, Path, int]] = []
        for name, target in self.sample_groups.items():
            pool = self.pools[name]
            need = target - int(np.sum(labels == name))
            if need <= 0 or pool.boxes.shape[0] == 0:
                continue
            pick = rng.choice(pool.boxes.shape[0], size=min(need, pool.boxes.shape[0]), replace=False)
            candidates = pool.boxes[pick]
            others = np.concatenate([existing, *(b[None] for b in accepted_boxes)], axis=0)
            with serial_torch_ops():
                cand_t = torch.from_numpy(np.ascontiguousarray(candidates))
                vs_others = boxes_iou_bev(cand_t, torch.from_numpy(np.ascontiguousarray(others))).numpy()
                vs_cands = boxes_iou_bev(cand_t, cand_t).numpy()
            kept: list[int] = []
            for j in range(candidates.shape[0]):
                if (vs_others.shape[1] and vs_others[j].max() > 0) or any(vs_cands[j, k] > 0 for k in kept):
                    continue
                kept.append(j)
                accepted_boxes.append(candidates[j])
                accepted.append((name, pool.paths[int(pick[j])], int(pool.counts[int(pick[j])])))
        if not accepted:
            return GtSample(points=pts, boxes=existing, names=labels, sampled=0)
        new_boxes = np.stack(accepted_boxes).astype(np.float32)
        covered = points_in_boxes(pts, new_boxes).any(axis=0)
        objects = []
        for box, (_, path, count) in zip(new_boxes, accepted):
            obj = self._read(path, count)[:, : pts.shape[1]].astype(np.float64)
            obj[:, :3] += box[:3].astype(np.float64)
            objects.append(obj.astype(np.float32))
        return GtSample(
            points=np.concatenate([*objects, pts[~covered]], axis=0),
            boxes=np.concatenate([existing, new_boxes], axis=0),
            names=np.array([*labels.tolist(), *(a[0] for a in accepted)], dtype=str),
            sampled=len(accepted),
        )
