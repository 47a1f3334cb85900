"""COLMAP sparse models: ``cameras``, ``images`` and ``points3D`` as text (parsed here) or binary (through
``pycolmap``, the optional extra ``sparse3d[colmap]``).

Format facts (COLMAP documentation, "Output Format"):

* ``cameras.txt``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]``. Parameters per model (the pinhole family read
  here): ``SIMPLE_PINHOLE f cx cy``; ``PINHOLE fx fy cx cy``; ``SIMPLE_RADIAL f cx cy k``; ``RADIAL f cx cy k1
  k2``; ``OPENCV fx fy cx cy k1 k2 p1 p2``; ``FULL_OPENCV fx fy cx cy k1 k2 p1 p2 k3 k4 k5 k6``. Distortion
  coefficients are kept (:class:`~sparse3d.io.posed_files.LensDistortion`) and not applied.
* ``images.txt``: two lines per image, ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then the image's 2-D
  points ``X Y POINT3D_ID ...`` (possibly empty). The quaternion (Hamilton, scalar first) and translation map
  world to camera, ``x_cam = R(q) x_world + t``, and COLMAP's camera axes are OpenCV's (x right, y down,
  z forward), so they become :class:`~sparse3d.cameras.Cameras` without any axis change.
* ``points3D.txt``: ``POINT3D_ID X Y Z R G B ERROR TRACK[]`` with ``TRACK`` pairs ``IMAGE_ID POINT2D_IDX``.
* Lines starting with ``#`` are comments. The centre of the top-left pixel is at (0.5, 0.5), the convention of
  :mod:`sparse3d.cameras`, so ``cx, cy`` are used as written.

Every malformed line raises one :class:`UserError` naming the file, the line number and the problem. One
implementation per encoding: text files are parsed here, binary files are read by pycolmap (a missing pycolmap
raises :class:`PycolmapMissingError`, a :class:`UserError`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparse3d.cameras import Cameras
from sparse3d.io.posed_files import LensDistortion, PosedImageFiles, fit_cameras_to_images, image_size
from sparse3d.utils.errors import UserError

PathLike = str | Path

CAMERA_PARAMS: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
    "FULL_OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"),
}
"""The pinhole-family camera models read here and their parameter names in COLMAP's order."""
OTHER_COLMAP_MODELS: tuple[str, ...] = (
    "OPENCV_FISHEYE", "FOV", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "THIN_PRISM_FISHEYE", "RAD_TAN_THIN_PRISM_FISHEYE",
)
"""COLMAP models that are not pinhole cameras plus distortion; refused with a hint to undistort."""
_INTRINSIC_NAMES = frozenset({"f", "fx", "fy", "cx", "cy"})
MODEL_FILES: tuple[str, ...] = ("cameras", "images", "points3D")


class PycolmapMissingError(UserError):
    """A binary model needs pycolmap, which is not installed (callers with optional points may skip them)."""


@dataclass(frozen=True)
class ColmapCamera:
    """One ``cameras.txt`` entry."""

    camera_id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]

    def named_params(self) -> dict[str, float]:
        return dict(zip(CAMERA_PARAMS[self.model], self.params, strict=True))

    def K(self) -> np.ndarray:
        """3x3 pinhole intrinsics (float64)."""
        p = self.named_params()
        fx, fy = p.get("fx", p.get("f")), p.get("fy", p.get("f"))
        return np.array([[fx, 0.0, p["cx"]], [0.0, fy, p["cy"]], [0.0, 0.0, 1.0]])

    def distortion(self) -> LensDistortion | None:
        """The model's distortion coefficients, or None for the undistorted models."""
        coeffs = {k: v for k, v in self.named_params().items() if k not in _INTRINSIC_NAMES}
        return LensDistortion(self.model, coeffs) if coeffs else None


@dataclass(frozen=True)
class ColmapImage:
    """One ``images.txt`` entry (its 2-D points are not kept)."""

    image_id: int
    qvec: tuple[float, float, float, float]
    tvec: tuple[float, float, float]
    camera_id: int
    name: str

    def rotation(self) -> np.ndarray:
        """World-to-camera rotation of the (normalised) quaternion."""
        return qvec_to_rotmat(np.asarray(self.qvec))


@dataclass(frozen=True)
class ColmapPoints:
    """The sparse point cloud: ``ids`` (P,) int64, ``xyz`` (P, 3) float32, ``rgb`` (P, 3) float32 in [0, 1],
    ``error`` (P,) float32 mean reprojection error in pixels (-1 where unknown)."""

    ids: np.ndarray
    xyz: np.ndarray
    rgb: np.ndarray
    error: np.ndarray

    def __len__(self) -> int:
        return int(len(self.ids))

    @classmethod
    def empty(cls) -> ColmapPoints:
        return cls(np.zeros(0, np.int64), np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32),
                   np.zeros(0, np.float32))


@dataclass(frozen=True)
class ColmapModel:
    """A sparse model: cameras and images by id, and the 3-D points (empty when there is no points file)."""

    path: Path
    cameras: Mapping[int, ColmapCamera]
    images: Mapping[int, ColmapImage]
    points: ColmapPoints


# --------------------------------------------------------------------------------------------- rotations
def qvec_to_rotmat(qvec: np.ndarray) -> np.ndarray:
    """3x3 rotation of a Hamilton quaternion ``(w, x, y, z)`` (normalised first)."""
    w, x, y, z = np.asarray(qvec, dtype=np.float64) / np.linalg.norm(qvec)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """Unit quaternion ``(w, x, y, z)`` with ``w >= 0`` of a 3x3 rotation (the eigenvector method)."""
    R = np.asarray(R, dtype=np.float64)
    (a, b, c), (d, e, f), (g, h, i) = R
    # q q^T is the top eigenvector of this symmetric matrix (Bar-Itzhack 2000)
    M = np.array([
        [a - e - i, d + b, g + c, h - f],
        [d + b, e - a - i, h + f, c - g],
        [g + c, h + f, i - a - e, d - b],
        [h - f, c - g, d - b, a + e + i],
    ]) / 3.0
    vals, vecs = np.linalg.eigh(M)
    x, y, z, w = vecs[:, int(np.argmax(vals))]
    q = np.array([w, x, y, z])
    return q if q[0] >= 0 else -q


# ------------------------------------------------------------------------------------------- text reading
def _data_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) of every line that is not a comment (empty lines included)."""
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (a binary model? name it .bin)") from None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped.startswith("#"):
            yield number, stripped


def _ints(path: Path, number: int, tokens: Sequence[str], what: str) -> list[int]:
    try:
        return [int(t) for t in tokens]
    except ValueError:
        raise UserError(f"{path}:{number}: {what} must be integers, got {' '.join(tokens)!r}") from None


def _floats(path: Path, number: int, tokens: Sequence[str], what: str) -> list[float]:
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        raise UserError(f"{path}:{number}: {what} must be numbers, got {' '.join(tokens)!r}") from None
    if not all(np.isfinite(values)):
        raise UserError(f"{path}:{number}: {what} must be finite, got {' '.join(tokens)!r}")
    return values


def _camera(where: str, camera_id: int, model: str, width: int, height: int, params: Sequence[float]) -> ColmapCamera:
    """Validate one camera (shared by the text and binary readers); ``where`` is ``file:line`` or ``file``."""
    if model not in CAMERA_PARAMS:
        known = model in OTHER_COLMAP_MODELS
        raise UserError(
            f"{where}: camera {camera_id}: {'unsupported' if known else 'unknown'} camera model {model!r} "
            f"(read here: {', '.join(CAMERA_PARAMS)}"
            + ("; undistort the images with `colmap image_undistorter` first)" if known else ")")
        )
    names = CAMERA_PARAMS[model]
    if len(params) != len(names):
        raise UserError(f"{where}: camera {camera_id}: model {model} takes {len(names)} parameters "
                        f"({' '.join(names)}), got {len(params)}")
    if width < 1 or height < 1:
        raise UserError(f"{where}: camera {camera_id}: width and height must be >= 1, got {width}x{height}")
    cam = ColmapCamera(camera_id, model, width, height, tuple(float(v) for v in params))
    K = cam.K()
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise UserError(f"{where}: camera {camera_id}: focal lengths must be > 0, got {K[0, 0]}, {K[1, 1]}")
    return cam


def read_cameras_text(path: PathLike) -> dict[int, ColmapCamera]:
    """Parse ``cameras.txt``."""
    p = Path(path)
    cameras: dict[int, ColmapCamera] = {}
    for number, line in _data_lines(p):
        if not line:
            continue
        tokens = line.split()
        if len(tokens) < 4:
            raise UserError(f"{p}:{number}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]', got {line!r}")
        camera_id, width, height = _ints(p, number, [tokens[0], tokens[2], tokens[3]], "CAMERA_ID, WIDTH and HEIGHT")
        params = _floats(p, number, tokens[4:], "camera parameters")
        if camera_id in cameras:
            raise UserError(f"{p}:{number}: duplicate camera id {camera_id}")
        cameras[camera_id] = _camera(f"{p}:{number}", camera_id, tokens[1], width, height, params)
    return cameras


def _image(where: str, image_id: int, qvec: Sequence[float] | np.ndarray, tvec: Sequence[float] | np.ndarray,
           camera_id: int, name: str) -> ColmapImage:
    """Validate one image (shared by the text and binary readers); ``where`` is ``file:line`` or ``file``."""
    if not np.linalg.norm(qvec) > 1e-8:
        raise UserError(f"{where}: image {image_id}: the quaternion is zero")
    if not name:
        raise UserError(f"{where}: image {image_id}: missing NAME")
    q = np.asarray(qvec, dtype=np.float64) / np.linalg.norm(qvec)
    return ColmapImage(image_id, tuple(float(v) for v in q), tuple(float(v) for v in tvec), camera_id,  # type: ignore[arg-type]
                       name)


def read_images_text(path: PathLike) -> dict[int, ColmapImage]:
    """Parse ``images.txt`` (the line after each image line holds its 2-D points; it is skipped)."""
    p = Path(path)
    images: dict[int, ColmapImage] = {}
    names: dict[str, int] = {}
    lines = _data_lines(p)
    for number, line in lines:
        if not line:
            continue
        tokens = line.split()
        if len(tokens) < 10:
            raise UserError(f"{p}:{number}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', got {line!r}")
        image_id, camera_id = _ints(p, number, [tokens[0], tokens[8]], "IMAGE_ID and CAMERA_ID")
        values = _floats(p, number, tokens[1:8], "QW QX QY QZ TX TY TZ")
        name = " ".join(tokens[9:])
        if image_id in images:
            raise UserError(f"{p}:{number}: duplicate image id {image_id}")
        if name in names:
            raise UserError(f"{p}:{number}: image name {name!r} also used by image {names[name]}")
        images[image_id] = _image(f"{p}:{number}", image_id, values[:4], values[4:], camera_id, name)
        names[name] = image_id
        points_line = next(lines, None)
        if points_line is not None and points_line[1]:
            count = len(points_line[1].split())
            if count % 3:
                raise UserError(f"{p}:{points_line[0]}: the 2-D points of image {image_id} must be triples "
                                f"'X Y POINT3D_ID', got {count} values")
    return images


def read_points3d_text(path: PathLike) -> ColmapPoints:
    """Parse ``points3D.txt`` (tracks are checked for shape, not kept)."""
    p = Path(path)
    ids, xyz, rgb, err = [], [], [], []
    for number, line in _data_lines(p):
        if not line:
            continue
        tokens = line.split()
        if len(tokens) < 8 or (len(tokens) - 8) % 2:
            raise UserError(f"{p}:{number}: expected 'POINT3D_ID X Y Z R G B ERROR TRACK[]' with TRACK pairs, "
                            f"got {len(tokens)} values")
        ids.append(_ints(p, number, tokens[:1], "POINT3D_ID")[0])
        xyz.append(_floats(p, number, tokens[1:4], "X Y Z"))
        color = _ints(p, number, tokens[4:7], "R G B")
        if any(not 0 <= c <= 255 for c in color):
            raise UserError(f"{p}:{number}: R G B must be in 0..255, got {color}")
        rgb.append(color)
        err.append(_floats(p, number, tokens[7:8], "ERROR")[0])
    if not ids:
        return ColmapPoints.empty()
    return ColmapPoints(np.asarray(ids, np.int64), np.asarray(xyz, np.float32),
                        np.asarray(rgb, np.float32) / 255.0, np.asarray(err, np.float32))


# ----------------------------------------------------------------------------------------- binary (pycolmap)
def _read_binary(folder: Path) -> tuple[dict[int, ColmapCamera], dict[int, ColmapImage], ColmapPoints]:
    try:
        import pycolmap
    except ImportError:
        raise PycolmapMissingError(f"{folder}: reading a binary COLMAP model (.bin) needs the pycolmap package: "
                        "pip install 'sparse3d[colmap]' (or convert it: colmap model_converter --output_type TXT)"
                        ) from None
    rec = pycolmap.Reconstruction()
    try:
        rec.read_binary(str(folder))
    except Exception as exc:  # pycolmap raises its own error types for bad files
        raise UserError(f"{folder}: pycolmap cannot read the binary model ({exc})") from None
    cameras = {}
    for camera_id, cam in rec.cameras.items():
        model = cam.model.name if hasattr(cam.model, "name") else str(cam.model_name)
        cameras[int(camera_id)] = _camera(str(folder / "cameras.bin"), int(camera_id), model, int(cam.width),
                                          int(cam.height), [float(v) for v in cam.params])
    images = {}
    for image_id, img in rec.images.items():
        if hasattr(img, "has_pose") and not img.has_pose:
            continue
        pose = img.cam_from_world() if callable(img.cam_from_world) else img.cam_from_world
        m = np.asarray(pose.matrix(), dtype=np.float64)
        images[int(image_id)] = _image(str(folder / "images.bin"), int(image_id), rotmat_to_qvec(m[:, :3]), m[:, 3],
                                       int(img.camera_id), str(img.name))
    items = sorted(rec.points3D.items())
    if not items:
        return cameras, images, ColmapPoints.empty()
    points = ColmapPoints(
        np.array([i for i, _ in items], np.int64), np.array([pt.xyz for _, pt in items], np.float32),
        np.array([pt.color for _, pt in items], np.float32) / 255.0, np.array([pt.error for _, pt in items], np.float32),
    )
    return cameras, images, points


# ------------------------------------------------------------------------------------------------- models
def find_model_dir(root: PathLike) -> Path:
    """The model folder under a scene root: ``root`` itself, ``root/sparse/0`` or ``root/sparse``."""
    r = Path(root)
    for candidate in (r, r / "sparse" / "0", r / "sparse"):
        if any((candidate / f"cameras{ext}").is_file() for ext in (".txt", ".bin")):
            return candidate
    raise UserError(f"no COLMAP model found in {r}, {r / 'sparse' / '0'} or {r / 'sparse'} "
                    "(expected cameras.txt/images.txt or cameras.bin/images.bin)")


def read_colmap_model(folder: PathLike) -> ColmapModel:
    """Read a model folder: the text files when ``cameras.txt`` is there, else the binary files via pycolmap.

    ``points3D`` may be absent (no points). Every image must reference an existing camera.
    """
    d = Path(folder)
    if not d.is_dir():
        raise UserError(f"COLMAP model folder not found: {d}")
    if (d / "cameras.txt").is_file():
        if not (d / "images.txt").is_file():
            raise UserError(f"{d}: cameras.txt without images.txt")
        cameras = read_cameras_text(d / "cameras.txt")
        images = read_images_text(d / "images.txt")
        points = read_points3d_text(d / "points3D.txt") if (d / "points3D.txt").is_file() else ColmapPoints.empty()
        image_file, camera_file = d / "images.txt", d / "cameras.txt"
    elif (d / "cameras.bin").is_file():
        cameras, images, points = _read_binary(d)
        image_file, camera_file = d / "images.bin", d / "cameras.bin"
    else:
        raise UserError(f"{d}: no cameras.txt or cameras.bin")
    if not images:
        raise UserError(f"{image_file}: the model has no images")
    for img in images.values():
        if img.camera_id not in cameras:
            raise UserError(f"{image_file}: image {img.image_id} ({img.name}) references camera {img.camera_id}, "
                            f"which is not in {camera_file} (ids: {sorted(cameras)[:10]})")
    return ColmapModel(d, cameras, images, points)


def read_model_points(folder: PathLike) -> ColmapPoints:
    """The ``points3D`` of a model folder: ``points3D.txt`` parsed here when the model is text, else the
    binary model through pycolmap; empty when the text model has no points file."""
    d = Path(folder)
    if (d / "cameras.txt").is_file() or (d / "points3D.txt").is_file():
        return read_points3d_text(d / "points3D.txt") if (d / "points3D.txt").is_file() else ColmapPoints.empty()
    if (d / "cameras.bin").is_file():
        return _read_binary(d)[2]
    raise UserError(f"{d}: no COLMAP model (expected points3D.txt, or cameras.bin/images.bin/points3D.bin)")


def points_source(model_dir: PathLike) -> str:
    """The label of a model's points in logs: ``points3D (<path of the points file>)``."""
    d = Path(model_dir)
    name = "points3D.txt" if (d / "cameras.txt").is_file() or (d / "points3D.txt").is_file() else "points3D.bin"
    return f"points3D ({d / name})"


def model_views(model: ColmapModel, image_dir: PathLike) -> PosedImageFiles:
    """The model's images sorted by name as :class:`PosedImageFiles`, images under ``image_dir``.

    All images must share one size; when the files in ``image_dir`` are a resized copy (e.g. ``images_4``)
    the intrinsics are scaled to them (checked on the first image).
    """
    folder = Path(image_dir)
    ordered = sorted(model.images.values(), key=lambda im: im.name)
    sizes = sorted({(model.cameras[im.camera_id].width, model.cameras[im.camera_id].height) for im in ordered})
    if len(sizes) > 1:
        raise UserError(f"{model.path}: images of different sizes {[f'{w}x{h}' for w, h in sizes[:4]]}; "
                        "sparse3d loads one image size per scene")
    width, height = sizes[0]
    K = np.stack([model.cameras[im.camera_id].K() for im in ordered])
    R = np.stack([im.rotation() for im in ordered])
    t = np.array([im.tvec for im in ordered])
    cameras = Cameras.from_Rt(K, R, t, width, height)
    paths = tuple(folder / im.name for im in ordered)
    first = next((p for p in paths if p.is_file()), None)
    if first is None:
        raise UserError(f"{model.path}: none of the model's {len(paths)} images is in {folder} (first: {paths[0]})")
    cameras = fit_cameras_to_images(cameras, *image_size(first), model.path, first)
    return PosedImageFiles(
        cameras=cameras, image_paths=paths, names=tuple(im.name for im in ordered), source=model.path,
        distortion=tuple(model.cameras[im.camera_id].distortion() for im in ordered),
    )


# ------------------------------------------------------------------------------------------------ writing
def write_colmap_text(
    folder: PathLike,
    cameras: Sequence[ColmapCamera],
    images: Sequence[ColmapImage],
    points: ColmapPoints | None = None,
    observations: Mapping[int, Sequence[tuple[float, float, int]]] | None = None,
    tracks: Mapping[int, Sequence[tuple[int, int]]] | None = None,
) -> Path:
    """Write ``cameras.txt``, ``images.txt`` and ``points3D.txt`` (full float precision) into ``folder``.

    ``observations`` maps an image id to its 2-D points ``(x, y, point3d_id)``; ``tracks`` maps a point id to
    its ``(image_id, point2d_idx)`` pairs. Both default to empty.
    """
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    obs = observations or {}
    trk = tracks or {}
    cam_lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
                 f"# Number of cameras: {len(cameras)}"]
    for c in cameras:
        cam_lines.append(" ".join([str(c.camera_id), c.model, str(c.width), str(c.height),
                                   *(f"{v:.17g}" for v in c.params)]))
    img_lines = ["# Image list with two lines of data per image:",
                 "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME", "#   POINTS2D[] as (X, Y, POINT3D_ID)",
                 f"# Number of images: {len(images)}"]
    for im in images:
        img_lines.append(" ".join([str(im.image_id), *(f"{v:.17g}" for v in (*im.qvec, *im.tvec)),
                                   str(im.camera_id), im.name]))
        img_lines.append(" ".join(f"{x:.6f} {y:.6f} {pid}" for x, y, pid in obs.get(im.image_id, ())))
    pts = points if points is not None else ColmapPoints.empty()
    pt_lines = ["# 3D point list with one line of data per point:",
                "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
                f"# Number of points: {len(pts)}"]
    rgb8 = np.clip(np.round(pts.rgb * 255.0), 0, 255).astype(np.int64)
    for k in range(len(pts)):
        pid = int(pts.ids[k])
        track = " ".join(f"{i} {j}" for i, j in trk.get(pid, ()))
        pt_lines.append(" ".join([str(pid), *(f"{float(v):.9g}" for v in pts.xyz[k]), *(str(int(c)) for c in rgb8[k]),
                                  f"{float(pts.error[k]):.6g}", track]).rstrip())
    (d / "cameras.txt").write_text("\n".join(cam_lines) + "\n")
    (d / "images.txt").write_text("\n".join(img_lines) + "\n")
    (d / "points3D.txt").write_text("\n".join(pt_lines) + "\n")
    return d
