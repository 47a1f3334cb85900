"""LLFF scenes: ``poses_bounds.npy`` with ``images/``, ``images_N/`` (Mildenhall et al., "Local Light Field
Fusion", SIGGRAPH 2019; the format written by LLFF's ``imgs2poses.py`` and read by NeRF's ``load_llff.py``).

Format facts (LLFF's README and ``imgs2poses.py``):

* ``poses_bounds.npy`` is a float (N, 17) array, one row per image in the sorted order of the image file
  names. The first 15 numbers are a row-major 3x5 matrix ``[R | c | hwf]``: a 3x3 camera-to-world rotation
  whose columns are the camera's **[down, right, backwards]** axes in world coordinates, the camera centre
  ``c``, and ``hwf = [height, width, focal]`` of the full-resolution images in ``images/``. The last two numbers
  are the near and far depth bounds of the scene seen from that camera. The principal point is not stored;
  LLFF (which drops COLMAP's ``cx, cy``) assumes the image centre.
* ``images_N/`` holds the same images downsampled N times (``images_8`` is the 504x378 of the sparse-view LLFF
  protocol for the 4032x3024 originals).

Conversions done here, once, at the IO boundary:

* axes: OpenCV's camera axes are [right, down, forward], so with LLFF's columns ``(d, r, b)`` the OpenCV
  camera-to-world rotation is ``[r, d, -b]``, i.e. ``R_cv = R_llff[:, [1, 0, 2]] * [1, 1, -1]``;
* intrinsics: ``fx = fy = f``, ``cx = W / 2``, ``cy = H / 2`` at ``hwf``'s size (the image centre in the
  pixel-centres-at-0.5 convention of :mod:`sparse3d.cameras`, where COLMAP, which LLFF's poses come from, also
  puts it; NeRF's ``get_rays`` casts pixel ``i`` through ``i - W/2``, half a pixel off), then scaled per axis by
  ``(image width / W, image height / H)`` of the files actually read (``images_N``), as NeRF's loader scales the
  focal by ``1 / N``;
* bound rescale (NeRF's ``load_llff.py``, ``bd_factor=0.75``): world units are multiplied by
  ``s = 1 / (bd_factor * min(near bounds))``: camera centres and bounds are scaled by ``s``, so the nearest
  bound becomes ``1 / bd_factor = 4/3``;
* optional recentring (NeRF's ``recenter_poses``, off by default): the world is re-expressed in the frame of
  the "average camera" (OpenGL axes as in NeRF) whose centre is the mean camera centre, whose backward axis is
  the normalised sum of the cameras' backward axes and whose right axis is ``normalize(up_sum x back)``.

The transform applied to world coordinates (scale, then recentring) is returned as
:attr:`LLFFScene.world_transform`, so points in the file's world frame (e.g. LLFF's COLMAP ``sparse/0``) can be
mapped into the frame of the returned cameras.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparse3d.cameras import Cameras
from sparse3d.io.posed_files import PosedImageFiles, fit_cameras_to_images, image_size, list_images
from sparse3d.utils.errors import UserError

PathLike = str | Path

POSES_BOUNDS = "poses_bounds.npy"
BD_FACTOR = 0.75
"""NeRF's default: after rescaling, the nearest bound is ``1 / BD_FACTOR``."""
# Column permutation and signs taking LLFF's [down, right, back] rotation columns to OpenCV's [right, down, fwd].
_AXES = np.array([1, 0, 2])
_SIGNS = np.array([1.0, 1.0, -1.0])


def image_folder(factor: int | None) -> str:
    """``images`` for full resolution (factor None or 1), else ``images_{factor}``."""
    if factor is None or int(factor) == 1:
        return "images"
    if int(factor) < 1:
        raise UserError(f"the LLFF downsampling factor must be >= 1, got {factor}")
    return f"images_{int(factor)}"


def read_poses_bounds(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``poses_bounds.npy``: (N, 3, 5) float64 LLFF pose matrices and (N, 2) near/far bounds.

    Checks: an (N, 17) numeric array with N >= 1, finite values, rotations orthonormal with determinant +1,
    positive height/width/focal, one image size for all rows, and ``0 < near < far``.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"LLFF pose file not found: {p}")
    try:
        raw = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{p}: not a NumPy .npy array ({exc})") from None
    if raw.dtype.kind not in "fiu":
        raise UserError(f"{p}: expected a numeric array, got dtype {raw.dtype}")
    if raw.ndim != 2 or raw.shape[1] != 17 or raw.shape[0] < 1:
        raise UserError(f"{p}: expected an (N, 17) array (a 3x5 pose [R | c | hwf] and near/far per image), "
                        f"got shape {raw.shape}")
    data = raw.astype(np.float64)
    bad_rows = np.flatnonzero(~np.isfinite(data).all(axis=1))
    if len(bad_rows):
        raise UserError(f"{p}: row {int(bad_rows[0])} holds NaN or inf")
    poses = data[:, :15].reshape(-1, 3, 5)
    bounds = data[:, 15:17]
    R = poses[:, :, :3]
    orth = np.abs(R.transpose(0, 2, 1) @ R - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(R)
    bad = np.flatnonzero((orth > 1e-3) | (det < 0))
    if len(bad):
        i = int(bad[0])
        raise UserError(f"{p}: row {i}: the 3x3 rotation is not a proper rotation (|RᵀR - I| = {orth[i]:.3g}, "
                        f"det = {det[i]:.3g})")
    hwf = poses[:, :, 4]
    bad = np.flatnonzero((hwf <= 0).any(axis=1))
    if len(bad):
        raise UserError(f"{p}: row {int(bad[0])}: height, width and focal must be > 0, got {hwf[bad[0]].tolist()}")
    sizes = {(float(h), float(w)) for h, w in hwf[:, :2]}
    if len(sizes) > 1:
        raise UserError(f"{p}: rows give different image sizes (height, width) {sorted(sizes)[:4]}")
    bad = np.flatnonzero(~((bounds[:, 0] > 0) & (bounds[:, 1] > bounds[:, 0])))
    if len(bad):
        raise UserError(f"{p}: row {int(bad[0])}: bounds must satisfy 0 < near < far, got {bounds[bad[0]].tolist()}")
    return poses, bounds


def llff_to_opencv_c2w(poses: np.ndarray) -> np.ndarray:
    """(N, 4, 4) OpenCV-axis camera-to-world matrices from (N, 3, 5) LLFF poses (``[r, d, -b]`` columns)."""
    poses = np.asarray(poses, dtype=np.float64)
    c2w = np.tile(np.eye(4), (len(poses), 1, 1))
    c2w[:, :3, :3] = poses[:, :, :3][:, :, _AXES] * _SIGNS
    c2w[:, :3, 3] = poses[:, :, 3]
    return c2w


def opencv_c2w_to_llff(c2w: np.ndarray, hwf: np.ndarray) -> np.ndarray:
    """(N, 3, 5) LLFF poses from OpenCV camera-to-world matrices (N, 3|4, 4) and ``hwf`` (3,) or (N, 3)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    n = len(c2w)
    poses = np.zeros((n, 3, 5))
    # inverse of llff_to_opencv_c2w: LLFF column j is OpenCV column _AXES[j] times _SIGNS[j] (signs are +-1)
    poses[:, :, :3] = (c2w[:, :3, :3] * _SIGNS)[:, :, np.argsort(_AXES)]
    poses[:, :, 3] = c2w[:, :3, 3]
    poses[:, :, 4] = np.broadcast_to(np.asarray(hwf, dtype=np.float64), (n, 3))
    return poses


def write_poses_bounds(path: PathLike, c2w: np.ndarray, hwf: np.ndarray, bounds: np.ndarray) -> Path:
    """Write ``poses_bounds.npy`` from OpenCV camera-to-world matrices, full-size ``hwf`` and (N, 2) bounds."""
    p = Path(path)
    poses = opencv_c2w_to_llff(c2w, hwf)
    b = np.asarray(bounds, dtype=np.float64).reshape(len(poses), 2)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.save(p, np.concatenate([poses.reshape(len(poses), 15), b], axis=1))
    return p


def bounds_scale(bounds: np.ndarray, bd_factor: float = BD_FACTOR) -> float:
    """NeRF's rescale factor ``1 / (bd_factor * min(bounds))``: the nearest bound becomes ``1 / bd_factor``."""
    if not bd_factor > 0:
        raise UserError(f"bd_factor must be > 0, got {bd_factor}")
    return float(1.0 / (float(np.min(bounds)) * bd_factor))


def average_pose(c2w: np.ndarray) -> np.ndarray:
    """NeRF's ``poses_avg`` for OpenCV-axis (N, 4, 4) camera-to-world matrices, as a 4x4 matrix whose columns
    are the average camera's OpenGL axes [right, up, back] and mean centre (as NeRF builds it)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    back = -c2w[:, :3, 2].sum(0)  # OpenGL backward axis = -OpenCV forward
    up = -c2w[:, :3, 1].sum(0)  # OpenGL up = -OpenCV down
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    avg = np.eye(4)
    avg[:3, :3] = np.stack([right, np.cross(back, right), back], axis=1)
    avg[:3, 3] = c2w[:, :3, 3].mean(0)
    return avg


@dataclass(frozen=True)
class LLFFScene:
    """An LLFF scene as read: views (cameras in OpenCV convention, image files), bounds and the world change.

    Attributes:
        files: cameras at the size of the images read, image paths, names.
        bounds: (N, 2) near/far depth bounds in the returned world units (scaled with the cameras).
        scale: the factor world units were multiplied by (1.0 without rescaling).
        world_transform: 4x4 map from the file's world coordinates to the returned cameras' world coordinates.
        full_size: (width, height) of the full-resolution images the file's ``hwf`` describes.
    """

    files: PosedImageFiles
    bounds: np.ndarray
    scale: float
    world_transform: np.ndarray
    full_size: tuple[int, int]


def read_llff(
    scene_dir: PathLike,
    factor: int | None = None,
    rescale: bool = True,
    bd_factor: float = BD_FACTOR,
    recenter: bool = False,
) -> LLFFScene:
    """Read an LLFF scene folder (``poses_bounds.npy`` and the image folder of ``factor``).

    The number of images in the folder must equal the number of pose rows; cameras get the size of the images
    in the folder (read from the first file) with intrinsics scaled to it. See the module docstring for the
    conventions; ``rescale``/``bd_factor`` and ``recenter`` follow NeRF's ``load_llff.py``.
    """
    root = Path(scene_dir)
    if not root.is_dir():
        raise UserError(f"LLFF scene folder not found: {root}")
    pose_path = root / POSES_BOUNDS
    poses, bounds = read_poses_bounds(pose_path)
    folder = root / image_folder(factor)
    if not folder.is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("images"))
        raise UserError(f"{folder}: image folder not found for downsampling factor {factor} "
                        f"(folders present: {have or 'none'})")
    paths = list_images(folder)
    if len(paths) != len(poses):
        raise UserError(f"{pose_path}: {len(poses)} poses but {len(paths)} images in {folder}")
    c2w = llff_to_opencv_c2w(poses)
    height, width, _ = poses[0, :, 4]
    full_w, full_h = int(round(width)), int(round(height))
    K = np.zeros((len(poses), 3, 3))
    K[:, 0, 0] = K[:, 1, 1] = poses[:, 2, 4]
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = width / 2.0, height / 2.0, 1.0
    transform = np.eye(4)
    scale = 1.0
    if rescale:
        scale = bounds_scale(bounds, bd_factor)
        c2w[:, :3, 3] *= scale
        bounds = bounds * scale
        transform[:3, :3] *= scale
    if recenter:
        to_avg = np.linalg.inv(average_pose(c2w))
        c2w = to_avg @ c2w
        transform = to_avg @ transform
    cameras = Cameras.from_c2w(K, c2w, full_w, full_h)
    w, h = image_size(paths[0])
    cameras = fit_cameras_to_images(cameras, w, h, pose_path, paths[0])
    files = PosedImageFiles(cameras=cameras, image_paths=tuple(paths), names=tuple(p.name for p in paths),
                            source=pose_path)
    return LLFFScene(files=files, bounds=bounds, scale=scale, world_transform=transform, full_size=(full_w, full_h))
