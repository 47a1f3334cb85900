"""KITTI object-detection files: ``calib/*.txt``, ``label_2/*.txt``, ``velodyne/*.bin`` and PNG image sizes.

Format facts (KITTI object devkit ``readme.txt``; the conventions OpenPCDet and mmdetection3d read):

* ``calib``: one matrix per line, ``KEY: v1 v2 ...`` in row-major order: ``P0``..``P3`` (3x4 projection of the
  rectified camera frame onto camera 0..3's image), ``R0_rect`` (3x3 rectifying rotation), ``Tr_velo_to_cam``
  (3x4, LiDAR -> reference camera) and ``Tr_imu_to_velo`` (3x4). LiDAR -> rectified camera is
  ``R0_rect @ Tr_velo_to_cam @ [p; 1]``; rectified camera -> image 2 is ``P2 @ [p_rect; 1]`` then division by
  depth. Some readers (OpenPCDet) find the matrices by line number, so :func:`write_calib` always writes the
  seven lines in the order above.
* ``label_2``: one object per line,
  ``type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y [score]``; ``(x, y, z)`` is the bottom
  centre of the box in the rectified camera frame (x right, y down, z forward), ``h, w, l`` in metres,
  ``rotation_y`` about the camera y axis, ``alpha`` the observation angle, ``bbox`` the 2-D box in pixels of
  image 2. ``DontCare`` rows mark regions to ignore and carry placeholder 3-D values (-1, -1000, -10). The
  16th column, ``score``, appears only in detection results.
* ``velodyne``: little-endian float32 rows ``(x, y, z, reflectance)`` in the LiDAR frame (x forward, y left,
  z up). Read through :func:`sparse3d.io.pointcloud.read_kitti_bin`, with KITTI-specific checks added.

Every malformed file raises one :class:`~sparse3d.utils.errors.UserError` naming the file, the line (or point)
and the problem.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparse3d.io.pointcloud import read_kitti_bin, write_kitti_bin
from sparse3d.utils.errors import UserError

__all__ = [
    "CALIB_SHAPES",
    "DIFFICULTY_NAMES",
    "DEFAULT_IMAGE_SHAPE",
    "KittiCalib",
    "KittiObjects",
    "kitti_difficulty",
    "decimal_float64",
    "read_calib",
    "read_image_shape",
    "read_label",
    "read_velodyne",
    "write_calib",
    "write_label",
    "write_velodyne",
]

PathLike = str | os.PathLike

CALIB_SHAPES: dict[str, tuple[int, int]] = {
    "P0": (3, 4),
    "P1": (3, 4),
    "P2": (3, 4),
    "P3": (3, 4),
    "R0_rect": (3, 3),
    "Tr_velo_to_cam": (3, 4),
    "Tr_imu_to_velo": (3, 4),
}
"""The matrices of a KITTI object calib file, in file order, with their shapes."""
_CALIB_ALIASES = {"R_rect": "R0_rect", "Tr_velo_cam": "Tr_velo_to_cam", "Tr_imu_velo": "Tr_imu_to_velo"}

DEFAULT_IMAGE_SHAPE: tuple[int, int] = (375, 1242)
"""(height, width) of most KITTI object images; used when a frame's ``image_2`` PNG is absent. Some frames are
a few pixels smaller (e.g. 370 x 1224), so without the PNG the camera-FOV filter, and the points counted per
box, can differ from OpenPCDet's (which reads every image) along the image border."""

DIFFICULTY_NAMES: tuple[str, ...] = ("easy", "moderate", "hard")
"""Names of difficulty levels 0, 1, 2; -1 means none of them (too small, truncated, occluded, or DontCare)."""
_MIN_HEIGHT = (40.0, 25.0, 25.0)
_MAX_OCCLUSION = (0, 1, 2)
_MAX_TRUNCATION = (0.15, 0.3, 0.5)

_LABEL_COLUMNS = (
    "truncated",
    "occluded",
    "alpha",
    "x1",
    "y1",
    "x2",
    "y2",
    "h",
    "w",
    "l",
    "x",
    "y",
    "z",
    "rotation_y",
    "score",
)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _require_file(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: {what} not found" if not p.exists() else f"{p}: {what} is not a regular file")
    return p


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) of every non-empty line."""
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file") from None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped:
            yield number, stripped


def _numbers(
    path: Path, number: int, tokens: Sequence[str], what: str, columns: Sequence[str] | None = None
) -> np.ndarray:
    """Parse ``tokens`` as finite floats; the error names the line and, given ``columns``, the column."""
    values = np.empty(len(tokens), dtype=np.float64)
    for i, token in enumerate(tokens):
        column = f" {columns[i]}" if columns is not None else ""
        try:
            values[i] = float(token)
        except ValueError:
            raise UserError(f"{path}:{number}: {what}{column}: {token!r} is not a number") from None
        if not math.isfinite(values[i]):
            raise UserError(f"{path}:{number}: {what}{column} must be finite, got {token!r}")
    return values


def _format_float(value: float) -> str:
    """Shortest text that reads back to the same float64 (exact round trips of what we write)."""
    text = repr(float(value))
    return "0.0" if text == "-0.0" else text


# ------------------------------------------------------------------------------------------------------------
# calib
# ------------------------------------------------------------------------------------------------------------


def _homogeneous(points: np.ndarray, name: str) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {pts.shape}")
    return np.concatenate([pts, np.ones((pts.shape[0], 1))], axis=1)


@dataclass(frozen=True)
class KittiCalib:
    """The matrices of one KITTI calib file (float64).

    ``P2`` (3, 4), ``R0_rect`` (3, 3) and ``Tr_velo_to_cam`` (3, 4) are the ones LiDAR/camera conversions
    need; ``extra`` keeps the others (``P0``, ``P1``, ``P3``, ``Tr_imu_to_velo`` and any unknown key) so that
    a file read and written again keeps them.
    """

    P2: np.ndarray
    R0_rect: np.ndarray
    Tr_velo_to_cam: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("P2", "R0_rect", "Tr_velo_to_cam"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape != CALIB_SHAPES[name]:
                raise ValueError(f"{name} must have shape {CALIB_SHAPES[name]}, got {value.shape}")
            object.__setattr__(self, name, value)
        extra = {str(k): np.asarray(v, dtype=np.float64) for k, v in self.extra.items()}
        for key, value in extra.items():
            if key in CALIB_SHAPES and value.shape != CALIB_SHAPES[key]:
                raise ValueError(f"extra[{key!r}] must have shape {CALIB_SHAPES[key]}, got {value.shape}")
        object.__setattr__(self, "extra", extra)

    def velo_to_rect(self) -> np.ndarray:
        """The 4x4 LiDAR -> rectified camera transform ``R0_rect @ Tr_velo_to_cam``."""
        r0 = np.eye(4)
        r0[:3, :3] = self.R0_rect
        v2c = np.eye(4)
        v2c[:3, :] = self.Tr_velo_to_cam
        return r0 @ v2c

    def lidar_to_rect(self, pts: np.ndarray) -> np.ndarray:
        """LiDAR-frame points (N, 3) -> rectified camera frame (N, 3), float64."""
        return (_homogeneous(pts, "pts") @ self.velo_to_rect().T)[:, :3]

    def rect_to_lidar(self, pts: np.ndarray) -> np.ndarray:
        """Rectified camera-frame points (N, 3) -> LiDAR frame (N, 3), float64 (exact inverse of
        :meth:`lidar_to_rect` up to rounding)."""
        return (_homogeneous(pts, "pts") @ np.linalg.inv(self.velo_to_rect()).T)[:, :3]

    def rect_to_image(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project rectified camera-frame points (N, 3) with ``P2``: returns pixel coordinates ``uv`` (N, 2)
        and the depth (N,) (the rectified z, so a point behind the camera has depth <= 0 and meaningless
        uv)."""
        projected = _homogeneous(pts, "pts") @ self.P2.T
        depth = projected[:, 2] - self.P2[2, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = projected[:, :2] / projected[:, 2:3]
        return uv, depth


def read_calib(path: PathLike) -> KittiCalib:
    """Read a KITTI object calib file (``KEY: numbers`` per line). ``P2``, ``R0_rect`` and ``Tr_velo_to_cam``
    are required (the KITTI tracking spellings ``R_rect`` and ``Tr_velo_cam`` are accepted); a missing key, a
    non-numeric value or a matrix with the wrong number of entries raises :class:`UserError` naming the
    line."""
    p = _require_file(path, "KITTI calib file")
    found: dict[str, np.ndarray] = {}
    lines: dict[str, int] = {}
    for number, line in _text_lines(p):
        key, sep, rest = line.partition(":")
        key = key.strip()
        if not sep or not key or " " in key:
            raise UserError(f"{p}:{number}: expected 'KEY: numbers', got {line[:60]!r}")
        key = _CALIB_ALIASES.get(key, key)
        if key in found:
            raise UserError(f"{p}:{number}: {key} given twice (first on line {lines[key]})")
        tokens = rest.split()
        values = _numbers(p, number, tokens, key)
        if key in CALIB_SHAPES:
            rows, cols = CALIB_SHAPES[key]
            if values.size != rows * cols:
                raise UserError(
                    f"{p}:{number}: {key} must have {rows * cols} numbers ({rows}x{cols}), got {values.size}"
                )
            values = values.reshape(rows, cols)
        found[key] = values
        lines[key] = number
    missing = [k for k in ("P2", "R0_rect", "Tr_velo_to_cam") if k not in found]
    if missing:
        raise UserError(f"{p}: calib file lacks {', '.join(missing)}")
    for key, matrix in (("R0_rect", found["R0_rect"]), ("Tr_velo_to_cam", found["Tr_velo_to_cam"][:, :3])):
        if abs(float(np.linalg.det(matrix))) < 1e-6:
            raise UserError(f"{p}:{lines[key]}: {key} is singular (its 3x3 rotation part has determinant "
                            f"{float(np.linalg.det(matrix)):.3g}), so LiDAR and camera frames cannot be mapped")
    extra = {k: v for k, v in found.items() if k not in ("P2", "R0_rect", "Tr_velo_to_cam")}
    return KittiCalib(
        P2=found["P2"], R0_rect=found["R0_rect"], Tr_velo_to_cam=found["Tr_velo_to_cam"], extra=extra
    )


def write_calib(path: PathLike, calib: KittiCalib) -> None:
    """Write ``calib`` in the KITTI layout: ``P0, P1, P2, P3, R0_rect, Tr_velo_to_cam, Tr_imu_to_velo`` in
    that order, then any other key of ``calib.extra``. Readers that index lines expect all seven, so a missing
    ``P0``/``P1``/``P3`` is written as a copy of ``P2`` and a missing ``Tr_imu_to_velo`` as ``[I | 0]``.
    Numbers are written in their shortest exact form, so :func:`read_calib` gives back the same float64
    values."""
    matrices: dict[str, np.ndarray] = {}
    for key in CALIB_SHAPES:
        if key in ("P2", "R0_rect", "Tr_velo_to_cam"):
            matrices[key] = getattr(calib, key)
        elif key in calib.extra:
            matrices[key] = calib.extra[key]
        elif key.startswith("P"):
            matrices[key] = calib.P2
        else:
            matrices[key] = np.eye(3, 4)
    for key, value in calib.extra.items():
        if key not in matrices:
            matrices[key] = value
    text = "".join(
        f"{key}: {' '.join(_format_float(v) for v in np.asarray(m, dtype=np.float64).ravel())}\n"
        for key, m in matrices.items()
    )
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


# ------------------------------------------------------------------------------------------------------------
# label_2
# ------------------------------------------------------------------------------------------------------------


@dataclass
class KittiObjects:
    """The objects of one ``label_2`` file (M rows, in file order, DontCare included).

    ``bbox`` is (x1, y1, x2, y2) in pixels of image 2; ``hwl`` is (height, width, length) as in the file;
    ``location`` the bottom centre in the rectified camera frame; ``score`` is None for ground truth and the
    16th column for detection results.
    """

    name: np.ndarray
    truncated: np.ndarray
    occluded: np.ndarray
    alpha: np.ndarray
    bbox: np.ndarray
    hwl: np.ndarray
    location: np.ndarray
    rotation_y: np.ndarray
    score: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.name = np.asarray(self.name, dtype=str).reshape(-1)
        m = self.name.shape[0]
        self.truncated = np.asarray(self.truncated, dtype=np.float32).reshape(m)
        self.occluded = np.asarray(self.occluded, dtype=np.int32).reshape(m)
        self.alpha = np.asarray(self.alpha, dtype=np.float32).reshape(m)
        self.bbox = np.asarray(self.bbox, dtype=np.float32).reshape(m, 4)
        self.hwl = np.asarray(self.hwl, dtype=np.float32).reshape(m, 3)
        self.location = np.asarray(self.location, dtype=np.float32).reshape(m, 3)
        self.rotation_y = np.asarray(self.rotation_y, dtype=np.float32).reshape(m)
        if self.score is not None:
            self.score = np.asarray(self.score, dtype=np.float32).reshape(m)

    def __len__(self) -> int:
        return int(self.name.shape[0])

    def select(self, mask_or_index: np.ndarray | Sequence[int] | Sequence[bool]) -> KittiObjects:
        """The objects picked by a boolean mask (M,) or an index array, in that order."""
        key = np.asarray(mask_or_index)
        if key.dtype == np.bool_ and key.shape != (len(self),):
            raise ValueError(f"mask must have shape ({len(self)},), got {key.shape}")
        if key.dtype != np.bool_:
            key = key.astype(np.int64).reshape(-1)
        return KittiObjects(
            name=self.name[key],
            truncated=self.truncated[key],
            occluded=self.occluded[key],
            alpha=self.alpha[key],
            bbox=self.bbox[key],
            hwl=self.hwl[key],
            location=self.location[key],
            rotation_y=self.rotation_y[key],
            score=None if self.score is None else self.score[key],
        )

    @classmethod
    def empty(cls, with_score: bool = False) -> KittiObjects:
        """Zero objects."""
        z = np.zeros(0)
        return cls(
            name=np.zeros(0, dtype=str),
            truncated=z,
            occluded=z,
            alpha=z,
            bbox=np.zeros((0, 4)),
            hwl=np.zeros((0, 3)),
            location=np.zeros((0, 3)),
            rotation_y=z,
            score=z if with_score else None,
        )


def read_label(path: PathLike) -> KittiObjects:
    """Read a ``label_2`` file (ground truth, 15 columns, or detections, 16). Blank lines are skipped; an
    empty file gives zero objects. A wrong column count, a non-numeric or non-finite value, a non-integer
    occlusion level or a mix of 15- and 16-column rows raises :class:`UserError` naming the line."""
    p = _require_file(path, "KITTI label file")
    rows: list[tuple[str, np.ndarray]] = []
    width: int | None = None
    for number, line in _text_lines(p):
        tokens = line.split()
        if len(tokens) not in (15, 16):
            raise UserError(
                f"{p}:{number}: expected 15 columns 'type truncated occluded alpha x1 y1 x2 y2 h w l x y z "
                f"rotation_y' (16 with a score), got {len(tokens)}"
            )
        if width is not None and len(tokens) != width:
            raise UserError(f"{p}:{number}: has {len(tokens)} columns but earlier lines have {width}")
        width = len(tokens)
        values = _numbers(p, number, tokens[1:], f"object {tokens[0]!r}", _LABEL_COLUMNS)
        if values[1] != round(values[1]) or int(round(values[1])) not in (-1, 0, 1, 2, 3):
            raise UserError(
                f"{p}:{number}: occluded must be an integer 0..3 (-1 when unknown), got {tokens[2]!r}"
            )
        if not (values[0] == -1 or 0 <= values[0] <= 1):
            raise UserError(f"{p}:{number}: truncated must lie in [0, 1] (-1 when unknown), got {tokens[1]!r}")
        if tokens[0] != "DontCare" and (values[7:10] < 0).any():
            raise UserError(f"{p}:{number}: object {tokens[0]!r} has a negative size h w l = {' '.join(tokens[8:11])}")
        rows.append((tokens[0], values))
    if not rows:
        return KittiObjects.empty()
    table = np.stack([v for _, v in rows])
    return KittiObjects(
        name=np.array([n for n, _ in rows], dtype=str),
        truncated=table[:, 0],
        occluded=np.rint(table[:, 1]).astype(np.int32),
        alpha=table[:, 2],
        bbox=table[:, 3:7],
        hwl=table[:, 7:10],
        location=table[:, 10:13],
        rotation_y=table[:, 13],
        score=table[:, 14] if width == 16 else None,
    )


def write_label(path: PathLike, objects: KittiObjects, decimals: int | None = None) -> None:
    """Write ``objects`` as a ``label_2`` file (a ``score`` column when ``objects.score`` is not None).

    ``decimals=None`` writes each float32 in its shortest exact form (reads back bit-identical);
    ``decimals=2`` gives the look of the KITTI files. Names may not contain whitespace."""
    for n in objects.name:
        if not n or any(c.isspace() for c in n):
            raise ValueError(f"object names for {path} must be non-empty and without whitespace, got {n!r}")

    def fmt(value: np.floating) -> str:
        if decimals is not None:
            return f"{float(value):.{decimals}f}"
        text = np.format_float_positional(np.float32(value), unique=True, trim="-")
        return "0" if text == "-0" else text

    lines = []
    for i in range(len(objects)):
        cols = [
            str(objects.name[i]),
            fmt(objects.truncated[i]),
            str(int(objects.occluded[i])),
            fmt(objects.alpha[i]),
        ]
        cols += [fmt(v) for v in objects.bbox[i]] + [fmt(v) for v in objects.hwl[i]]
        cols += [fmt(v) for v in objects.location[i]] + [fmt(objects.rotation_y[i])]
        if objects.score is not None:
            cols.append(fmt(objects.score[i]))
        lines.append(" ".join(cols) + "\n")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(lines))


def decimal_float64(values: np.ndarray) -> np.ndarray:
    """float32 label values as the float64 of their shortest decimal text (``float32(0.15) -> 0.15``, not
    ``0.15000000596``), i.e. what a reader parsing the file straight to float64 gets for KITTI's short
    decimals. Use it before comparing with thresholds such as a truncation of 0.15 or 0.3."""
    arr = np.asarray(values, dtype=np.float32)
    return arr.astype(str).astype(np.float64) if arr.size else arr.astype(np.float64)


def kitti_difficulty(objects: KittiObjects, rule: str = "devkit") -> np.ndarray:
    """Difficulty level per object (M,) int32: 0 easy, 1 moderate, 2 hard, -1 none (and always -1 for
    DontCare).

    Level ``d`` admits an object with occlusion <= (0, 1, 2)[d], truncation <= (0.15, 0.3, 0.5)[d] and a 2-D
    box height of (40, 25, 25)[d] px (compared as each rule below says); the object gets the lowest admitting
    level. Values are compared as the decimals written in the file (:func:`decimal_float64`).

    * ``rule="devkit"`` (the KITTI evaluation code): height = ``y2 - y1`` and it must exceed the minimum
      strictly (a box exactly 40 px tall is not easy).
    * ``rule="openpcdet"`` (OpenPCDet's info cache): height = ``y2 - y1 + 1`` and ``>=`` the minimum, so boxes
      between 39 and 40 px tall (24 and 25 px) count one level easier than under the devkit rule.
    """
    if rule not in ("devkit", "openpcdet"):
        raise ValueError(f"rule must be 'devkit' or 'openpcdet', got {rule!r}")
    level = np.full(len(objects), -1, dtype=np.int32)
    if len(objects) == 0:
        return level
    truncated = decimal_float64(objects.truncated)
    if rule == "devkit":
        bbox = decimal_float64(objects.bbox)
        height = np.abs(bbox[:, 3] - bbox[:, 1])
    else:
        height = objects.bbox[:, 3].astype(np.float64) - objects.bbox[:, 1].astype(np.float64) + 1.0
    for d in (2, 1, 0):  # hardest first, so the easiest admitting level wins
        tall = height > _MIN_HEIGHT[d] if rule == "devkit" else height >= _MIN_HEIGHT[d]
        ok = tall & (objects.occluded <= _MAX_OCCLUSION[d]) & (truncated <= _MAX_TRUNCATION[d])
        level[ok] = d
    level[objects.name == "DontCare"] = -1
    return level


# ------------------------------------------------------------------------------------------------------------
# velodyne and images
# ------------------------------------------------------------------------------------------------------------


def read_velodyne(path: PathLike) -> np.ndarray:
    """Read a velodyne scan as float32 (N, 4) ``(x, y, z, reflectance)``.

    A size that is not a multiple of 16 bytes or a NaN/inf value raises :class:`UserError` naming the file
    (and the first bad point)."""
    p = _require_file(path, "KITTI velodyne scan")
    try:
        points = read_kitti_bin(p, num_features=4)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    finite = np.isfinite(points).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise UserError(
            f"{p}: point {i} (byte offset {16 * i}) has a non-finite value {points[i].tolist()}; "
            f"{int((~finite).sum())} of {points.shape[0]} points are affected"
        )
    return points


def write_velodyne(path: PathLike, points: np.ndarray) -> None:
    """Write points (N, 4) as a KITTI velodyne scan (little-endian float32); creates parent folders."""
    arr = np.asarray(points)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"points for {path} must have shape (N, 4) (x, y, z, reflectance), got {arr.shape}")
    write_kitti_bin(path, arr)


def read_image_shape(path: PathLike) -> tuple[int, int]:
    """(height, width) of a PNG from its header alone (the first 24 bytes); not a PNG ->
    :class:`UserError`."""
    p = _require_file(path, "image")
    with open(p, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise UserError(f"{p}: not a PNG file (bad signature or no IHDR chunk)")
    width, height = struct.unpack(">II", head[16:24])
    if width == 0 or height == 0:
        raise UserError(f"{p}: PNG header gives an empty image ({width}x{height})")
    return int(height), int(width)
