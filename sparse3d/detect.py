"""Run a trained 3-D detector on point-cloud files or KITTI folders: the core of ``sparse3d-detect``.

* :class:`Detector` wraps a detection model rebuilt from a run directory or ``.ckpt`` file
  (:func:`sparse3d.train.evaluators.load_trained_model`) and turns one frame's points into LiDAR-frame boxes,
  scores and class names.
* :func:`find_frames` lists the frames of an input: one ``.bin`` / ``.npy`` / ``.pcd`` / ``.ply`` file, a folder of
  such files, a KITTI subset folder (``velodyne/``, ``calib/``, optional ``image_2/``) or a KITTI root (its
  ``training/`` or ``testing/`` subset, optionally one ``ImageSets`` split).
* :func:`detect_frames` runs the detector frame by frame and writes ``<out>/detections.json``
  (``{frame_id: [{"name", "score", "box_lidar": [x, y, z, dx, dy, dz, heading]}, ...]}``, LiDAR frame, z at the
  box centre) and, for frames with a calibration, ``<out>/label_2/<frame_id>.txt`` (KITTI result rows in the
  rectified camera frame with a 16th ``score`` column, as ``sparse3d-eval evaluator=kitti_ap pred=`` reads).

A frame whose files cannot be read is reported (one line naming the file) and skipped; the others still run.
Every file is written atomically (temporary name, then rename), so an interrupted run never leaves a partial one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from sparse3d.datasets.kitti import detections_to_objects, fov_mask, read_split
from sparse3d.io.atomic import atomic_write, atomic_write_json
from sparse3d.io.kitti import (
    DEFAULT_IMAGE_SHAPE,
    KittiCalib,
    read_calib,
    read_image_shape,
    read_velodyne,
    write_label,
)
from sparse3d.io.pointcloud import read_point_cloud
from sparse3d.train.evaluators import load_trained_model
from sparse3d.utils.device import resolve_device
from sparse3d.utils.errors import UserError

__all__ = [
    "JSON_NAME",
    "LABEL_DIR",
    "POINT_SUFFIXES",
    "DetectSummary",
    "Detector",
    "FrameDetections",
    "FrameInput",
    "detect_frames",
    "find_frames",
    "kitti_frames",
]

log = logging.getLogger("sparse3d.detect")

POINT_SUFFIXES: tuple[str, ...] = (".bin", ".npy", ".pcd", ".ply")
LABEL_DIR = "label_2"
JSON_NAME = "detections.json"
_INPUT_ERRORS = (UserError, ValueError, OSError, EOFError)


@dataclass(frozen=True)
class FrameDetections:
    """One frame's detections: ``boxes`` (K, 7) float32 LiDAR boxes, ``scores`` (K,) float32, ``names`` (K,)."""

    frame_id: str
    boxes: np.ndarray
    scores: np.ndarray
    names: list[str]

    def to_json(self) -> list[dict[str, Any]]:
        """The frame's entry of ``detections.json``."""
        return [{"name": name, "score": float(score), "box_lidar": [float(v) for v in box]}
                for name, score, box in zip(self.names, self.scores, self.boxes, strict=True)]


class Detector:
    """A detection model (``forward(batch) -> list[Detections]``, ``class_names``) ready to run on single frames.

    Args:
        model: the detection task, e.g. :class:`sparse3d.models.detection.task.DetectionTask`.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        point_features: columns per point the model reads (x, y, z, then features); inputs with fewer columns
            are padded with zeros, extra columns are dropped. Default: the model's ``vfe.in_channels``, else 4.
        fov_only: keep only the points in the camera's field of view when a frame has a calibration (the KITTI
            datasets train and validate on those points).
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "auto",
                 point_features: int | None = None, fov_only: bool = False) -> None:
        names = getattr(model, "class_names", None)
        if not names:
            raise UserError(f"{type(model).__name__} is not a detection model (it has no class_names)")
        self.class_names = [str(n) for n in names]
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        if point_features is None:
            point_features = getattr(getattr(model, "vfe", None), "in_channels", 4)
        self.point_features = int(point_features)
        if self.point_features < 3:
            raise UserError(f"point_features must be >= 3 (x, y, z), got {self.point_features}")
        self.fov_only = bool(fov_only)

    @classmethod
    def from_checkpoint(cls, ckpt: str | os.PathLike | None, device: str = "auto",
                        score_threshold: float | None = None, fov_only: bool | None = None, model: Any = None,
                        data: Any = None, paths: Any = None) -> Detector:
        """Load a trained detector from a run directory or ``.ckpt`` file.

        ``score_threshold`` replaces the head's decoding threshold (``model.dense_head.score_threshold``);
        ``fov_only`` None follows the checkpoint's validation data (``data.val.fov_only``); ``model``/``data``
        nodes are merged over the saved config as in ``sparse3d-eval``.
        """
        if score_threshold is not None:
            threshold = float(score_threshold)
            if not 0.0 <= threshold < 1.0:
                raise UserError(f"score_threshold must lie in [0, 1), got {score_threshold}")
            user = OmegaConf.to_container(model, resolve=False) if isinstance(model, DictConfig) else (model or {})
            model = OmegaConf.merge(user, {"dense_head": {"score_threshold": threshold}})
        trained = load_trained_model(ckpt, model=model, data=data, paths=paths, usage="ckpt=<run dir or .ckpt file>")
        if score_threshold is not None:
            head = getattr(trained.model, "dense_head", None)
            if getattr(head, "score_threshold", None) != float(score_threshold):
                raise UserError(f"score_threshold: the model in {trained.checkpoint} has no dense_head with a "
                                "score threshold")
        if fov_only is None:
            fov_only = bool(OmegaConf.select(trained.config, "data.val.fov_only", default=False))
        features = OmegaConf.select(trained.config, "data.point_features", default=None)
        return cls(trained.model, device=device, point_features=None if features is None else int(features),
                   fov_only=fov_only)

    def prepare(self, points: np.ndarray) -> np.ndarray:
        """(N, point_features) float32: rows with a non-finite x, y or z dropped, columns padded or cut."""
        pts = np.asarray(points, dtype=np.float32)
        if pts.ndim != 2 or pts.shape[1] < 3:
            raise ValueError(f"points must have shape (N, 3+), got {pts.shape}")
        pts = pts[np.isfinite(pts[:, :3]).all(axis=1)]
        if pts.shape[1] < self.point_features:
            pts = np.concatenate([pts, np.zeros((pts.shape[0], self.point_features - pts.shape[1]), np.float32)], 1)
        return np.ascontiguousarray(pts[:, : self.point_features])

    @torch.no_grad()
    def __call__(self, points: np.ndarray, frame_id: str = "") -> FrameDetections:
        """Detect objects in one frame's points (N, 3+) (LiDAR frame)."""
        pts = torch.from_numpy(self.prepare(points)).to(self.device)
        batch = {"points": pts, "batch_idx": torch.zeros(pts.shape[0], dtype=torch.int32, device=self.device),
                 "batch_size": 1, "frame_id": [frame_id]}
        det = self.model(batch)[0]
        labels = det.labels.detach().cpu().numpy().astype(np.int64).reshape(-1)
        return FrameDetections(
            frame_id=frame_id,
            boxes=det.boxes.detach().cpu().numpy().astype(np.float32).reshape(-1, 7),
            scores=det.scores.detach().cpu().numpy().astype(np.float32).reshape(-1),
            names=[self.class_names[int(i)] for i in labels],
        )

    @torch.no_grad()
    def export_onnx(self, points: np.ndarray, path: str | os.PathLike) -> tuple[Path, float]:
        """Export the DSVT blocks (single-stage backbones) to ONNX with ``points`` as the example frame, then run
        the file with onnxruntime on that frame; returns the path and the max abs difference to PyTorch."""
        from sparse3d.models.dsvt.export import (
            DSVTBlocks,
            dsvt_blocks_inputs,
            export_dsvt_blocks_onnx,
            run_onnx,
        )

        backbone = getattr(self.model, "backbone_3d", None)
        if backbone is None:
            raise UserError(f"export_onnx={path}: the model has no DSVT backbone_3d, so there are no blocks to export")
        pts = torch.from_numpy(self.prepare(points)).to(self.device)
        voxels = self.model.vfe(pts, torch.zeros(pts.shape[0], dtype=torch.int32, device=self.device), 1)
        out: Path | None = None
        try:
            out = export_dsvt_blocks_onnx(backbone, voxels.features, voxels.coords, path)
            inputs = dsvt_blocks_inputs(backbone, voxels.features, voxels.coords)
            reference = DSVTBlocks(backbone)(*inputs.values()).cpu().numpy()
            diff = float(np.abs(run_onnx(out, inputs) - reference).max())
        except (ValueError, ImportError) as err:
            if out is not None:  # written but not checkable (e.g. onnxruntime missing)
                out.unlink(missing_ok=True)
            raise UserError(f"export_onnx={path}: {err}") from None
        return out, diff


@dataclass(frozen=True)
class FrameInput:
    """Where one frame's files are: its points, and for KITTI frames its calibration and image (image size)."""

    frame_id: str
    points: Path
    calib: Path | None = None
    image: Path | None = None
    kitti: bool = False
    """points are a KITTI velodyne scan (read with the KITTI checks: 4 columns, every value finite)."""


def kitti_frames(folder: str | os.PathLike, ids: Sequence[str] | None = None) -> list[FrameInput]:
    """Frames of a KITTI subset folder (``velodyne/``, ``calib/``, optional ``image_2/``): ``ids``, or every scan
    of ``velodyne/`` (sorted) when None."""
    folder = Path(folder)
    velodyne = folder / "velodyne"
    if ids is None:
        ids = sorted(p.stem for p in velodyne.glob("*.bin"))
    return [FrameInput(i, velodyne / f"{i}.bin", folder / "calib" / f"{i}.txt",
                       (folder / "image_2" / f"{i}.png") if (folder / "image_2" / f"{i}.png").is_file() else None,
                       kitti=True) for i in ids]


def find_frames(source: str | os.PathLike, split: str | None = None, subset: str = "training",
                calib: str | os.PathLike | None = None) -> list[FrameInput]:
    """The frames of ``source``, in order.

    * a point file (``.bin``, ``.npy``, ``.pcd``, ``.ply``): one frame named by its stem, with ``calib``;
    * a KITTI root (``<subset>/velodyne/``): the frames of ``ImageSets/<split>.txt``, or every scan of the subset
      when ``split`` is None; each with ``<subset>/calib/<id>.txt``;
    * a KITTI subset folder (``velodyne/`` inside): every scan, each with its ``calib/<id>.txt``;
    * any other folder: every point file directly inside it (sorted by name), each with ``calib``.

    ``calib`` (one KITTI calibration file for every frame) is refused for KITTI folders, which have their own.
    """
    path = Path(source).expanduser()
    calib_path = Path(calib).expanduser() if calib is not None else None
    if not path.exists():
        raise UserError(f"input={path}: no such file or folder")
    if path.is_file():
        if split is not None:
            raise UserError(f"split={split} needs a KITTI root as input, not the file {path}")
        if path.suffix.lower() not in POINT_SUFFIXES:
            raise UserError(f"input={path}: not a point-cloud file (expected {' '.join(POINT_SUFFIXES)})")
        return [FrameInput(path.stem, path, calib_path)]
    kitti_folder = path / subset if (path / subset / "velodyne").is_dir() else path
    if (kitti_folder / "velodyne").is_dir():
        if calib_path is not None:
            raise UserError(f"calib= is for point files; the KITTI folder {kitti_folder} has its own calib/ folder")
        if split is not None and kitti_folder == path:
            raise UserError(f"split={split} needs the KITTI root (holding ImageSets/ and {subset}/), not {path}")
        frames = kitti_frames(kitti_folder, read_split(path, split) if split is not None else None)
        if not frames:
            raise UserError(f"input={path}: no scans in {kitti_folder / 'velodyne'}")
        return frames
    if split is not None:
        raise UserError(f"split={split} needs a KITTI root as input (holding ImageSets/ and {subset}/velodyne/)")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in POINT_SUFFIXES)
    if not files:
        raise UserError(f"input={path}: no point-cloud files ({' '.join(POINT_SUFFIXES)}) and no velodyne/ folder")
    stems = [p.stem for p in files]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise UserError(f"input={path}: several point files share the frame id {repeated[0]!r} "
                        f"({', '.join(p.name for p in files if p.stem == repeated[0])})")
    return [FrameInput(p.stem, p, calib_path) for p in files]


@dataclass
class DetectSummary:
    """What :func:`detect_frames` did: detections of the frames that ran, failures as (file, message)."""

    detections: dict[str, FrameDetections]
    failures: list[tuple[str, str]] = field(default_factory=list)
    json_path: Path | None = None
    label_dir: Path | None = None
    labels_written: int = 0


def read_frame(frame: FrameInput, shared_calib: KittiCalib | None,
                shared_shape: tuple[int, int]) -> tuple[np.ndarray, KittiCalib | None, tuple[int, int]]:
    """Points, calibration (or None) and image size of one frame; input problems raise naming the file."""
    points = read_velodyne(frame.points) if frame.kitti else read_point_cloud(frame.points)
    calib, shape = shared_calib, shared_shape
    if frame.calib is not None and shared_calib is None:
        calib = read_calib(frame.calib)
    if frame.image is not None:
        shape = read_image_shape(frame.image)
    return points, calib, shape


def _failure_message(frame: FrameInput, exc: BaseException) -> tuple[str, str]:
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None:
        message = f"{exc.filename}: {exc.strerror or message}"
    named = str(frame.points) in message or (frame.calib is not None and str(frame.calib) in message) or (
        frame.image is not None and str(frame.image) in message)
    return str(frame.points), message if named else f"{frame.points}: {message}"


def detect_frames(detector: Detector, frames: Sequence[FrameInput], out_dir: str | os.PathLike,
                  calib: str | os.PathLike | None = None, image_shape: Sequence[int] = DEFAULT_IMAGE_SHAPE,
                  progress: bool = True, on_failure: Callable[[str, str], None] | None = None) -> DetectSummary:
    """Run ``detector`` on every frame and write ``detections.json`` and ``label_2/<id>.txt`` into ``out_dir``.

    ``calib`` is one KITTI calibration file used for frames without their own (point files); ``image_shape``
    (height, width) clips the 2-D boxes of frames without an ``image_2`` PNG. Label files are written only for
    frames with a calibration. A frame whose files cannot be read is skipped and reported through
    ``on_failure(file, one-line message)`` and in the summary; ``detections.json`` lists the frames that ran and
    is written when at least one did.
    """
    if not frames:
        raise UserError("no frames to detect")
    ids = [f.frame_id for f in frames]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise UserError(f"frame id {repeated[0]!r} appears more than once in the input")
    shared_calib = read_calib(Path(calib).expanduser()) if calib is not None else None
    if len(image_shape) != 2 or min(int(v) for v in image_shape) < 1:
        raise UserError(f"image_shape must be (height, width) in pixels, got {list(image_shape)}")
    shared_shape = (int(image_shape[0]), int(image_shape[1]))
    out = Path(out_dir).expanduser()
    label_dir = out / LABEL_DIR
    summary = DetectSummary(detections={})
    bar = tqdm(frames, desc="detect", unit="frame", disable=not progress or len(frames) < 2)
    for frame in bar:
        try:
            points, frame_calib, shape = read_frame(frame, shared_calib, shared_shape)
        except _INPUT_ERRORS as exc:
            failure = _failure_message(frame, exc)
            summary.failures.append(failure)
            if on_failure is not None:
                on_failure(*failure)
            continue
        if frame_calib is not None and detector.fov_only:
            points = points[fov_mask(points, frame_calib, shape)]
        result = detector(points, frame.frame_id)
        summary.detections[frame.frame_id] = result
        if frame_calib is not None:
            objects = detections_to_objects(result.boxes, result.scores, result.names, frame_calib, shape)
            atomic_write(label_dir / f"{frame.frame_id}.txt", lambda tmp, objs=objects: write_label(tmp, objs))
            summary.labels_written += 1
            summary.label_dir = label_dir
    if summary.detections:
        summary.json_path = atomic_write_json(out / JSON_NAME, {fid: det.to_json()
                                                                for fid, det in summary.detections.items()})
    return summary
