"""nerfstudio / instant-ngp / Blender-NeRF ``transforms.json`` scenes.

Format facts (nerfstudio's "Data conventions" documentation and ``nerfstudio_dataparser.py``; instant-ngp's
``transforms.json``; the NeRF Blender synthetic data):

* ``frames`` is a list of objects with ``file_path`` (relative to the JSON file's folder; the Blender data omit
  the ``.png`` suffix) and ``transform_matrix``, a 4x4 **camera-to-world** matrix with **OpenGL camera axes**:
  x right, y up, z back (the camera looks along -z).
* Intrinsics ``fl_x, fl_y, cx, cy, w, h`` sit at the top level (shared) or in a frame (that frame's own, taking
  precedence). Blender/instant-ngp files may give ``camera_angle_x`` (and ``camera_angle_y``) instead of focal
  lengths: ``fl_x = w / (2 tan(camera_angle_x / 2))``; missing ``cx, cy`` default to ``w / 2, h / 2`` and missing
  ``w, h`` are read from the image files. Pixel centres are at ``+0.5`` (nerfstudio's ray generation), the
  convention of :mod:`sparse3d.cameras`, so ``cx, cy`` are used as written (NeRF's Blender loader casts pixel
  ``i`` through ``i - w/2``, half a pixel off the ``w/2`` default used here).
* ``camera_model`` (default ``OPENCV``) and the distortion coefficients ``k1 k2 k3 k4 p1 p2`` are kept on the
  returned views (:class:`~sparse3d.io.posed_files.LensDistortion`, the coefficients under nerfstudio's
  names) and are **not applied**. Fisheye and panoramic models (``OPENCV_FISHEYE``, ``EQUIRECTANGULAR``...)
  are refused: they are not pinhole cameras.
* ``downscale`` N reads ``<folder>_N/<name>`` for a frame whose image is ``<folder>/<name>`` (the folders
  ``ns-process-data`` writes, e.g. ``images_4``); intrinsics are scaled to the size of the files read.

Conversion: ``c2w_opencv = c2w_opengl @ diag(1, -1, -1, 1)`` (flip the camera's y and z axes; the world frame is
kept as the file defines it). Frames whose image file is missing are skipped with one warning naming them.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparse3d.cameras import Cameras
from sparse3d.io.posed_files import LensDistortion, PosedImageFiles, fit_cameras_to_images, image_size
from sparse3d.utils.errors import UserError

PathLike = str | Path

TRANSFORMS = "transforms.json"
DISTORTION_KEYS: tuple[str, ...] = ("k1", "k2", "k3", "k4", "p1", "p2")
PINHOLE_MODELS: tuple[str, ...] = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")
"""``camera_model`` values read as a pinhole camera (plus declared distortion)."""
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
"""Right-multiplying a camera-to-world matrix by this flips its camera y and z axes (OpenGL <-> OpenCV)."""


@dataclass(frozen=True)
class NerfstudioScene:
    """A ``transforms.json`` scene as read.

    Attributes:
        files: the frames whose images exist, in file order (cameras in OpenCV convention); views are named by
            their file name, or by their ``file_path`` when file names repeat across folders.
        camera_model: the file's top-level ``camera_model``.
        skipped: ``file_path`` of the frames skipped because their image is missing.
        frame_indices: for each view in ``files``, its index in the file's ``frames`` list.
    """

    files: PosedImageFiles
    camera_model: str
    skipped: tuple[str, ...]
    frame_indices: tuple[int, ...]


def _number(path: Path, where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{path}: {where}: field {key!r} must be a finite number, got {value!r}")
    return float(value)


def _lookup(frame: dict[str, Any], top: dict[str, Any], key: str) -> Any:
    return frame[key] if key in frame else top.get(key)


def _matrix(path: Path, where: str, value: Any) -> np.ndarray:
    try:
        m = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{path}: {where}: 'transform_matrix' must be a 4x4 list of numbers") from None
    if m.shape == (3, 4):
        m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise UserError(f"{path}: {where}: 'transform_matrix' must be a finite 4x4 matrix, got shape {m.shape}")
    R = m[:3, :3]
    if np.abs(R.T @ R - np.eye(3)).max() > 1e-3 or np.linalg.det(R) < 0 or np.abs(m[3] - [0, 0, 0, 1]).max() > 1e-6:
        raise UserError(f"{path}: {where}: 'transform_matrix' is not a rigid camera-to-world transform "
                        "(its 3x3 block must be a rotation and its last row [0, 0, 0, 1])")
    return m


def _image_path(base: Path, file_path: str, downscale: int) -> Path:
    p = base / file_path
    if downscale > 1:
        p = p.parent.parent / f"{p.parent.name}_{downscale}" / p.name
    if not p.suffix and not p.is_file():  # Blender-NeRF frames name the file without its suffix
        for suffix in (".png", ".jpg", ".jpeg"):
            if p.with_name(p.name + suffix).is_file():
                return p.with_name(p.name + suffix)
    return p


def _focal(path: Path, where: str, frame: dict[str, Any], top: dict[str, Any], axis: str, size: float
           ) -> float | None:
    """``fl_{axis}``, else ``size / (2 tan(camera_angle_{axis} / 2))``, else None."""
    value, angle = _lookup(frame, top, f"fl_{axis}"), _lookup(frame, top, f"camera_angle_{axis}")
    if value is not None:
        return _number(path, where, f"fl_{axis}", value)
    if angle is None:
        return None
    a = _number(path, where, f"camera_angle_{axis}", angle)
    if not 0 < a < math.pi:
        raise UserError(f"{path}: {where}: 'camera_angle_{axis}' must be in (0, pi) radians, got {a}")
    return 0.5 * size / math.tan(0.5 * a)


def _intrinsics(path: Path, where: str, frame: dict[str, Any], top: dict[str, Any], size: tuple[float, float] | None
                ) -> tuple[np.ndarray, tuple[float, float]]:
    """K at the declared (or given) image size, and that size (w, h)."""
    w_raw, h_raw = _lookup(frame, top, "w"), _lookup(frame, top, "h")
    if (w_raw is None or h_raw is None) and size is None:
        raise UserError(f"{path}: {where}: no 'w'/'h' and no image file to read the size from")
    w = _number(path, where, "w", w_raw) if w_raw is not None else size[0]  # type: ignore[index]
    h = _number(path, where, "h", h_raw) if h_raw is not None else size[1]  # type: ignore[index]
    if w <= 0 or h <= 0:
        raise UserError(f"{path}: {where}: image size must be > 0, got w={w}, h={h}")
    fx = _focal(path, where, frame, top, "x", w)
    if fx is None:
        raise UserError(f"{path}: {where}: no focal length ('fl_x' or 'camera_angle_x')")
    fy = _focal(path, where, frame, top, "y", h)
    fy = fx if fy is None else fy
    if fx <= 0 or fy <= 0:
        raise UserError(f"{path}: {where}: focal lengths must be > 0, got fl_x={fx}, fl_y={fy}")
    cx_raw, cy_raw = _lookup(frame, top, "cx"), _lookup(frame, top, "cy")
    cx = _number(path, where, "cx", cx_raw) if cx_raw is not None else w / 2.0
    cy = _number(path, where, "cy", cy_raw) if cy_raw is not None else h / 2.0
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]), (w, h)


def read_transforms(path: PathLike, downscale: int = 1) -> NerfstudioScene:
    """Read a ``transforms.json`` (a file, or a folder holding one); see the module docstring.

    Every view must end up with one image size (sparse3d's :class:`Cameras` hold one size per batch).
    """
    p = Path(path)
    if p.is_dir():
        p = p / TRANSFORMS
    if not p.is_file():
        raise UserError(f"transforms file not found: {p}")
    if int(downscale) < 1:
        raise UserError(f"downscale must be >= 1, got {downscale}")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a JSON object with a 'frames' list, got {type(data).__name__}")
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise UserError(f"{p}: no frames (expected a non-empty 'frames' list)")
    camera_model = data.get("camera_model", "OPENCV")
    if not isinstance(camera_model, str):
        raise UserError(f"{p}: 'camera_model' must be a string, got {camera_model!r}")
    base = p.parent
    kept: list[tuple[int, Path, str, np.ndarray, dict[str, Any]]] = []
    skipped: list[str] = []
    for i, frame in enumerate(frames):
        where = f"frames[{i}]"
        if not isinstance(frame, dict):
            raise UserError(f"{p}: {where}: expected an object, got {type(frame).__name__}")
        file_path = frame.get("file_path")
        if not isinstance(file_path, str) or not file_path:
            raise UserError(f"{p}: {where}: missing 'file_path'")
        if "transform_matrix" not in frame:
            raise UserError(f"{p}: {where}: missing 'transform_matrix'")
        c2w_gl = _matrix(p, where, frame["transform_matrix"])
        model = frame.get("camera_model", camera_model)
        if model not in PINHOLE_MODELS:
            raise UserError(f"{p}: {where}: camera_model {model!r} is not supported (pinhole models: "
                            f"{', '.join(PINHOLE_MODELS)}); undistort or reproject the images first")
        image = _image_path(base, file_path, int(downscale))
        if not image.is_file():
            skipped.append(file_path)
            continue
        kept.append((i, image, file_path, c2w_gl, frame))
    if skipped:
        shown = ", ".join(skipped[:10]) + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else "")
        warnings.warn(f"{p}: skipped {len(skipped)} of {len(frames)} frames whose images are missing: {shown}",
                      UserWarning, stacklevel=2)
    if not kept:
        raise UserError(f"{p}: none of the {len(frames)} frames has its image on disk (first: {skipped[0]})")

    file_size: tuple[float, float] | None = None
    Ks, sizes, c2ws, distortion = [], [], [], []
    for i, image, _, c2w_gl, frame in kept:
        where = f"frames[{i}]"
        declared = _lookup(frame, data, "w") is not None and _lookup(frame, data, "h") is not None
        if not declared and file_size is None:
            file_size = tuple(float(v) for v in image_size(image))  # type: ignore[assignment]
        K, size = _intrinsics(p, where, frame, data, file_size)
        Ks.append(K)
        sizes.append(size)
        c2ws.append(c2w_gl @ OPENGL_TO_OPENCV)
        coeffs = {k: _number(p, where, k, _lookup(frame, data, k)) for k in DISTORTION_KEYS
                  if _lookup(frame, data, k) is not None}
        distortion.append(LensDistortion(str(frame.get("camera_model", camera_model)), coeffs) if coeffs else None)
    distinct = sorted(set(sizes))
    if len(distinct) > 1:
        raise UserError(f"{p}: frames have different image sizes {[f'{w:g}x{h:g}' for w, h in distinct[:4]]}; "
                        "load frames of one size")
    w, h = distinct[0]
    if w != round(w) or h != round(h):
        raise UserError(f"{p}: image size must be whole pixels, got w={w}, h={h}")
    cameras = Cameras.from_c2w(np.stack(Ks), np.stack(c2ws), int(w), int(h))
    first = kept[0][1]
    cameras = fit_cameras_to_images(cameras, *image_size(first), p, first)
    names = [Path(k[2]).name for k in kept]
    if len(set(names)) < len(names):  # frames from several folders: keep the folders in the names
        names = [Path(k[2]).as_posix().removeprefix("./") for k in kept]
    files = PosedImageFiles(cameras=cameras, image_paths=tuple(k[1] for k in kept), names=tuple(names), source=p,
                            distortion=tuple(distortion))
    return NerfstudioScene(files=files, camera_model=str(camera_model), skipped=tuple(skipped),
                           frame_indices=tuple(k[0] for k in kept))


def write_transforms(
    path: PathLike,
    K: np.ndarray,
    c2w_opencv: np.ndarray,
    file_paths: list[str],
    width: int,
    height: int,
    camera_model: str = "OPENCV",
    distortion: dict[str, float] | None = None,
) -> Path:
    """Write a nerfstudio ``transforms.json`` with shared intrinsics ``K`` (3x3) and one frame per camera.

    ``c2w_opencv`` (N, 4, 4) are OpenCV-axis camera-to-world matrices; they are written in OpenGL axes.
    """
    p = Path(path)
    K = np.asarray(K, dtype=np.float64)
    c2w = np.asarray(c2w_opencv, dtype=np.float64)
    if len(c2w) != len(file_paths):
        raise ValueError(f"{len(c2w)} cameras but {len(file_paths)} file paths")
    coeffs = {k: 0.0 for k in DISTORTION_KEYS}
    coeffs.update(distortion or {})
    data: dict[str, Any] = {
        "camera_model": camera_model,
        "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
        "w": int(width), "h": int(height), **{k: float(v) for k, v in coeffs.items()},
        "frames": [{"file_path": fp, "transform_matrix": (m @ OPENGL_TO_OPENCV).tolist()}
                   for fp, m in zip(file_paths, c2w, strict=True)],
    }
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2) + "\n")
    return p
