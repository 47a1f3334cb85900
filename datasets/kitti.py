"""KITTI 3-D object detection: frames in the LiDAR frame and the OpenPCDet-style info cache.

Layout (the KITTI object download plus the usual split files)::

    root/ImageSets/{train,val,test}.txt          one frame id per line (6 digits)
    root/training/velodyne/<id>.bin              float32 (x, y, z, reflectance)
    root/training/label_2/<id>.txt               camera-frame labels
    root/training/calib/<id>.txt                 P0..P3, R0_rect, Tr_velo_to_cam, Tr_imu_to_velo
    root/training/image_2/<id>.png               only its header is read, for the image size
    root/testing/{velodyne,calib,image_2}/...    the test frames (no labels)

:func:`load_frame` reads one frame: labels become LiDAR boxes ``(x, y, z, dx, dy, dz, heading)`` (centre,
extents along/across the heading and vertical, yaw counter-clockwise from +x; see
:mod:`sparse3d.geometry.boxes`), ``DontCare`` rows are kept apart as ignore regions. ``num_points_in_gt``
counts, as OpenPCDet does, only the points inside the camera field of view (:func:`fov_mask`), so a box
truncated by the image border counts just its visible part.

``sparse3d-data kitti_infos root=DIR`` (:func:`build_info_cache`) writes ``kitti_infos_<split>.pkl``: a list
with one dict per frame laid out as OpenPCDet's ``kitti_infos_*.pkl`` (field list in :func:`frame_info`), so
OpenPCDet-based tools can read it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sparse3d.geometry.boxes import (
    boxes_to_image_bbox,
    camera_to_lidar_boxes,
    count_points_in_boxes,
    lidar_to_camera_boxes,
    observation_angle,
    wrap_angle,
)
from sparse3d.io.atomic import atomic_path
from sparse3d.io.kitti import (
    DEFAULT_IMAGE_SHAPE,
    KittiCalib,
    KittiObjects,
    decimal_float64,
    kitti_difficulty,
    read_calib,
    read_image_shape,
    read_label,
    read_velodyne,
)
from sparse3d.utils.errors import UserError

__all__ = [
    "KittiFrame",
    "build_info_cache",
    "detections_to_objects",
    "fov_filter",
    "fov_mask",
    "frame_info",
    "load_frame",
    "read_split",
]

NUM_POINT_FEATURES = 4
_SUBSETS = ("training", "testing")


@dataclass
class KittiFrame:
    """One KITTI frame (M labelled objects other than DontCare, K DontCare regions).

    * ``points`` (N, 4) float32 ``(x, y, z, reflectance)`` in the LiDAR frame (all points, or only those in
      the camera field of view when loaded with ``fov_only=True``).
    * ``boxes`` (M, 7) float32 LiDAR boxes, ``names`` (M,) str, ``difficulty`` (M,) int32 (0 easy, 1 moderate,
      2 hard, -1 none; :func:`sparse3d.io.kitti.kitti_difficulty`), ``num_points_in_gt`` (M,) int32 (points
      of the camera field of view inside each box), in label-file order.
    * ``dontcare_bbox`` (K, 4) float32: the image regions (x1, y1, x2, y2) of the DontCare rows, which KITTI's
      evaluation ignores; ``dontcare_boxes`` (K, 7) float32 their 3-D boxes converted the same way (KITTI
      fills these with placeholders, -1000 / -10, so they are rarely meaningful).
    * ``objects``: the label file as read (all rows, DontCare included, file order), None without a label
      file.
    * ``calib``; ``image_shape`` (height, width) from the ``image_2`` PNG header, or the default when there is
      no image (``image_shape_from_file`` says which).
    * ``boxes_float64``: ``boxes`` before rounding to float32 (what ``num_points_in_gt`` was counted with).
    """

    frame_id: str
    points: np.ndarray
    boxes: np.ndarray
    names: np.ndarray
    difficulty: np.ndarray
    num_points_in_gt: np.ndarray
    dontcare_boxes: np.ndarray
    dontcare_bbox: np.ndarray
    calib: KittiCalib
    image_shape: tuple[int, int]
    image_shape_from_file: bool
    objects: KittiObjects | None
    boxes_float64: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


# ------------------------------------------------------------------------------------------------------------
# field of view
# ------------------------------------------------------------------------------------------------------------


def fov_mask(points: np.ndarray, calib: KittiCalib, image_shape: tuple[int, int]) -> np.ndarray:
    """(N,) bool: the point projects into image 2 (``0 <= u < width``, ``0 <= v < height``) and lies in front
    of the camera (rectified depth >= 0).

    Computed exactly as OpenPCDet's ``get_fov_flag`` so that the points it keeps, and so ``num_points_in_gt``,
    are the same: in float32, with ``u, v`` divided by the rectified depth z (not by the third row of ``P2``,
    which adds camera 2's 2.7 mm offset along the optical axis: a sub-pixel difference near the right image
    border, where it decides whether a point is in view)."""
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must have shape (N, 3) or (N, C>=3), got {pts.shape}")
    height, width = int(image_shape[0]), int(image_shape[1])
    ones = np.ones((pts.shape[0], 1), dtype=np.float32)
    velo_to_rect = calib.Tr_velo_to_cam.astype(np.float32).T @ calib.R0_rect.astype(np.float32).T  # (4, 3)
    rect = np.concatenate([pts[:, :3].astype(np.float32), ones], axis=1) @ velo_to_rect
    p2 = calib.P2.astype(np.float32)
    image = np.concatenate([rect, ones], axis=1) @ p2.T
    with np.errstate(divide="ignore", invalid="ignore"):
        u = image[:, 0] / rect[:, 2]
        v = image[:, 1] / rect[:, 2]
    depth = image[:, 2] - p2[2, 3]
    return (u >= 0) & (u < width) & (v >= 0) & (v < height) & (depth >= 0)


def fov_filter(points: np.ndarray, calib: KittiCalib, image_shape: tuple[int, int]) -> np.ndarray:
    """The rows of ``points`` inside the camera field of view (:func:`fov_mask`)."""
    return np.asarray(points)[fov_mask(points, calib, image_shape)]


# ------------------------------------------------------------------------------------------------------------
# frames and splits
# ------------------------------------------------------------------------------------------------------------


def _root(root: str | os.PathLike) -> Path:
    r = Path(root)
    if not r.is_dir():
        raise UserError(
            f"KITTI root {r} does not exist or is not a folder (expected training/{{velodyne,label_2,calib}} "
            "and ImageSets/ inside it)"
        )
    return r


def _frame_id(frame_id: str | int) -> str:
    if isinstance(frame_id, (int, np.integer)) and not isinstance(frame_id, bool):
        if frame_id < 0:
            raise UserError(f"KITTI frame ids are non-negative, got {frame_id}")
        return f"{int(frame_id):06d}"
    text = str(frame_id).strip()
    if not text or any(c in text for c in "/\\") or any(c.isspace() for c in text):
        raise UserError(f"bad KITTI frame id {frame_id!r} (expected e.g. '000123')")
    return text


def read_split(root: str | os.PathLike, split: str) -> list[str]:
    """Frame ids of ``root/ImageSets/<split>.txt``, in file order (blank lines skipped; one id per line)."""
    path = _root(root) / "ImageSets" / f"{split}.txt"
    if not path.is_file():
        folder = path.parent
        have = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
        raise UserError(f"{path}: split file not found (splits in {folder}: {have or 'none'})")
    ids: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 1 or any(c in tokens[0] for c in "/\\"):
            raise UserError(f"{path}:{number}: expected one frame id per line, got {line.strip()[:60]!r}")
        ids.append(tokens[0])
    return ids


def load_frame(
    root: str | os.PathLike,
    frame_id: str | int,
    *,
    subset: str = "training",
    fov_only: bool = False,
    image_shape: tuple[int, int] = DEFAULT_IMAGE_SHAPE,
    difficulty_rule: str = "devkit",
) -> KittiFrame:
    """Read frame ``frame_id`` of ``root/<subset>`` (``training`` or ``testing``).

    The label file is required under ``training`` and optional under ``testing`` (no boxes then).
    ``image_shape`` (height, width) is used only when ``image_2/<id>.png`` is absent: KITTI images are 375 x
    1242 give or take a few pixels, and the size decides which points count as in the field of view. Any
    malformed file raises :class:`~sparse3d.utils.errors.UserError` naming the file and line."""
    if subset not in _SUBSETS:
        raise UserError(f"subset must be one of {_SUBSETS}, got {subset!r}")
    if len(image_shape) != 2 or min(int(v) for v in image_shape) < 1:
        raise UserError(f"image_shape must be (height, width) in pixels, both >= 1, got {tuple(image_shape)}")
    folder = _root(root) / subset
    fid = _frame_id(frame_id)
    points = read_velodyne(folder / "velodyne" / f"{fid}.bin")
    calib = read_calib(folder / "calib" / f"{fid}.txt")
    png = folder / "image_2" / f"{fid}.png"
    from_file = png.is_file()
    shape = read_image_shape(png) if from_file else (int(image_shape[0]), int(image_shape[1]))
    label_path = folder / "label_2" / f"{fid}.txt"
    if label_path.is_file():
        objects: KittiObjects | None = read_label(label_path)
    elif subset == "training":
        raise UserError(f"{label_path}: KITTI label file not found (every training frame needs one)")
    else:
        objects = None

    in_view = fov_mask(points, calib, shape)
    if objects is None or len(objects) == 0:
        boxes64 = np.zeros((0, 7))
        names = np.zeros(0, dtype=str)
        difficulty = np.zeros(0, dtype=np.int32)
        counts = np.zeros(0, dtype=np.int32)
        dontcare = KittiObjects.empty()
    else:
        is_dc = objects.name == "DontCare"
        cared, dontcare = objects.select(~is_dc), objects.select(is_dc)
        boxes64 = _lidar_boxes64(cared, calib)
        names = cared.name
        difficulty = kitti_difficulty(objects, difficulty_rule)[~is_dc]
        counts = count_points_in_boxes(points[in_view], boxes64).astype(np.int32)
    return KittiFrame(
        frame_id=fid,
        points=points[in_view] if fov_only else points,
        boxes=boxes64.astype(np.float32),
        names=names,
        difficulty=difficulty,
        num_points_in_gt=counts,
        dontcare_boxes=_lidar_boxes64(dontcare, calib).astype(np.float32),
        dontcare_bbox=dontcare.bbox.copy(),
        calib=calib,
        image_shape=shape,
        image_shape_from_file=from_file,
        objects=objects,
        boxes_float64=boxes64,
    )


def _lidar_boxes64(objects: KittiObjects, calib: KittiCalib) -> np.ndarray:
    """float64 LiDAR boxes from label values taken as their file decimals (as a float64 text parser sees
    them)."""
    if len(objects) == 0:
        return np.zeros((0, 7))
    return camera_to_lidar_boxes(
        objects.location,
        decimal_float64(objects.hwl),
        decimal_float64(objects.rotation_y),
        calib,
        dtype=np.float64,
    )


# ------------------------------------------------------------------------------------------------------------
# info cache
# ------------------------------------------------------------------------------------------------------------


def _homogeneous_4x4(matrix: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return out


def frame_info(frame: KittiFrame) -> dict[str, Any]:
    """One OpenPCDet info dict for ``frame``.

    ``point_cloud{num_features: 4, lidar_idx}``, ``image{image_idx, image_shape (2,) int32 (h, w)}``,
    ``calib{P2, R0_rect, Tr_velo_to_cam}`` as 4x4 float64 (bottom row 0 0 0 1), and, when the frame has a
    label file, ``annos`` with one row per label line (DontCare included, file order): ``name``,
    ``truncated``, ``occluded``, ``alpha``, ``bbox`` (M, 4) float32, ``dimensions`` (M, 3) as (l, h, w),
    ``location`` (M, 3) float32, ``rotation_y``, ``score`` (-1 for ground truth), ``difficulty`` int32 (-1 for
    DontCare), ``index`` int32 (0..M'-1 over the non-DontCare rows, -1 for DontCare), ``num_points_in_gt``
    int32 (-1 for DontCare), and ``gt_boxes_lidar`` (M', 7) float64 for the non-DontCare rows only, in order.
    Float fields that OpenPCDet keeps as float64 hold the file's decimals
    (:func:`sparse3d.io.kitti.decimal_float64`)."""
    info: dict[str, Any] = {
        "point_cloud": {"num_features": NUM_POINT_FEATURES, "lidar_idx": frame.frame_id},
        "image": {"image_idx": frame.frame_id, "image_shape": np.array(frame.image_shape, dtype=np.int32)},
        "calib": {
            "P2": _homogeneous_4x4(frame.calib.P2),
            "R0_rect": _homogeneous_4x4(frame.calib.R0_rect),
            "Tr_velo_to_cam": _homogeneous_4x4(frame.calib.Tr_velo_to_cam),
        },
    }
    objects = frame.objects
    if objects is None:
        return info
    m = len(objects)
    is_dc = objects.name == "DontCare"
    index = np.full(m, -1, dtype=np.int32)
    index[~is_dc] = np.arange(int((~is_dc).sum()), dtype=np.int32)
    difficulty = np.full(m, -1, dtype=np.int32)
    difficulty[~is_dc] = frame.difficulty
    counts = np.full(m, -1, dtype=np.int32)
    counts[~is_dc] = frame.num_points_in_gt
    hwl = decimal_float64(objects.hwl).reshape(m, 3)
    boxes64 = frame.boxes_float64 if frame.boxes_float64 is not None else frame.boxes.astype(np.float64)
    info["annos"] = {
        "name": objects.name.copy(),
        "truncated": decimal_float64(objects.truncated),
        "occluded": objects.occluded.astype(np.float64),
        "alpha": decimal_float64(objects.alpha),
        "bbox": objects.bbox.copy(),
        "dimensions": hwl[:, [2, 0, 1]],
        "location": objects.location.copy(),
        "rotation_y": decimal_float64(objects.rotation_y),
        "score": decimal_float64(objects.score) if objects.score is not None else np.full(m, -1.0),
        "difficulty": difficulty,
        "index": index,
        "gt_boxes_lidar": boxes64.reshape(-1, 7).copy(),
        "num_points_in_gt": counts,
    }
    return info


def build_info_cache(
    root: str | os.PathLike,
    splits: Sequence[str] = ("train", "val"),
    *,
    out_dir: str | os.PathLike | None = None,
    image_shape: Sequence[int] = DEFAULT_IMAGE_SHAPE,
    difficulty_rule: str = "devkit",
    num_workers: int = 2,
    overwrite: bool = True,
    progress: bool = True,
) -> Path:
    """Write ``kitti_infos_<split>.pkl`` for each split into ``out_dir`` (default: ``root``) and return that
    folder.

    Each file holds a list of :func:`frame_info` dicts in ``ImageSets/<split>.txt`` order. ``test`` reads
    ``root/testing`` (no ``annos``); ``trainval`` without its own ImageSets file is ``train`` followed by
    ``val``, as OpenPCDet builds it. All frames are read before anything is written, and each file is written
    to a temporary name and renamed, so a bad frame leaves no partial output. ``num_workers`` threads read
    frames."""
    base = _root(root)
    target = Path(out_dir) if out_dir is not None else base
    names = [str(s) for s in ([splits] if isinstance(splits, str) else splits)]
    if not names:
        raise UserError("build_info_cache needs at least one split (e.g. splits=[train,val])")
    if num_workers < 1:
        raise UserError(f"num_workers must be >= 1, got {num_workers}")
    outputs = {s: target / f"kitti_infos_{s}.pkl" for s in names}
    if not overwrite:
        existing = [str(p) for p in outputs.values() if p.exists()]
        if existing:
            raise UserError(f"{existing[0]} already exists (pass overwrite=true to replace it)")
    shape = (int(image_shape[0]), int(image_shape[1]))

    plans: dict[str, list[tuple[str, str]]] = {}
    for split in names:
        subset = "testing" if split == "test" else "training"
        if split == "trainval" and not (base / "ImageSets" / "trainval.txt").is_file():
            ids = read_split(base, "train") + read_split(base, "val")
        else:
            ids = read_split(base, split)
        plans[split] = [(subset, fid) for fid in ids]

    def one(item: tuple[str, str]) -> dict[str, Any]:
        subset, fid = item
        return frame_info(
            load_frame(base, fid, subset=subset, image_shape=shape, difficulty_rule=difficulty_rule)
        )

    infos: dict[str, list[dict[str, Any]]] = {}
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        for split, plan in plans.items():
            bar = tqdm(
                pool.map(one, plan),
                total=len(plan),
                desc=f"kitti_infos {split}",
                unit="frame",
                disable=not progress,
            )
            infos[split] = list(bar)

    with contextlib.ExitStack() as stack:  # every split's file is renamed into place only when all were written
        for split, path in outputs.items():
            tmp = stack.enter_context(atomic_path(path))
            tmp.write_bytes(pickle.dumps(infos[split], protocol=pickle.HIGHEST_PROTOCOL))
    return target


def detections_to_objects(boxes: np.ndarray, scores: np.ndarray, names: Sequence[str], calib: KittiCalib,
                          image_shape: tuple[int, int]) -> KittiObjects:
    """LiDAR-frame detections -> KITTI result rows (camera frame, 2-D box in image 2, alpha, score).

    The inverse of the label conversion of :func:`load_frame`, so a detection equal to a labelled box gives back
    that label's location, size and rotation (up to float rounding); truncation and occlusion are unknown for
    detections and written as 0, as KITTI result files do.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    m = b.shape[0]
    location, hwl, rotation_y = lidar_to_camera_boxes(b, calib)
    return KittiObjects(
        name=np.asarray(list(names), dtype=str).reshape(m), truncated=np.zeros(m), occluded=np.zeros(m),
        alpha=observation_angle(b, calib), bbox=boxes_to_image_bbox(b, calib, image_shape), hwl=hwl,
        location=location, rotation_y=wrap_angle(rotation_y), score=np.asarray(scores, dtype=np.float32).reshape(m),
    )
