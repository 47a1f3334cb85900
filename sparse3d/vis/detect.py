"""What a path holds, decided from its content: magic bytes, PLY header properties, JSON keys, folder layout.

Types (:data:`TYPES`):

* ``points`` -- KITTI velodyne ``.bin`` (float32 x, y, z, reflectance rows), NumPy ``.npy`` (N, 3+), ``.pcd``,
  or a PLY whose vertex element is not a 3DGS scene and that has no faces.
* ``kitti`` -- a KITTI object frame: the dataset root (``training/`` or ``testing/`` inside), a subset folder
  (``velodyne/`` and ``calib/`` inside), or a ``velodyne/<id>.bin`` whose subset folder has ``calib/``.
* ``detections`` -- boxes from :mod:`sparse3d.vis.detections`: a ``detections.json`` of ``sparse3d-detect``
  (a JSON object of frame id -> entry list), a KITTI ``label_2`` file (15 or 16 columns), a ``label_2``
  folder, or a ``sparse3d-detect`` output folder (``detections.json`` and/or ``label_2/``, no ``velodyne/``).
* ``mesh`` -- a PLY with faces, OBJ, OFF, STL, or binary glTF (``.glb``).
* ``gaussians`` -- a PLY with the 3DGS vertex properties (``f_dc_0``, ``opacity``, ``scale_0``, ``rot_0``).
* ``posed`` -- a SpaRe/DTU dataset: its root folder (holding ``Track*_split_*.json``), one scene folder of it,
  or a split file.
* ``grid`` -- a SparseFlex sparse voxel grid ``.npz`` (written by ``SparseSDFGrid.save``: a ``format`` entry).
* ``field`` -- a SparseFlex fit's ``field.npz`` (``sdf deform beta alpha gamma resolution cube_coords``).
* ``run`` -- a training run folder (holding ``summary.json``), or its ``summary.json``; a folder holding a
  SparseFlex fit's ``field.npz`` and ``mesh.ply``.

A folder of per-frame scans (``000012.bin``...; a SemanticKITTI sequence folder with ``velodyne/``) is
resolved to one frame's files by :func:`resolve_frame_files` first.
"""

from __future__ import annotations

import json
from pathlib import Path

from sparse3d.io.pointcloud import _parse_ply_header
from sparse3d.utils.errors import UserError
from sparse3d.vis.detections import frame_matches
from sparse3d.vis.sparseflex import is_sparseflex_run, npz_kind

__all__ = [
    "TYPES",
    "FRAME_SUFFIXES",
    "detect_type",
    "folder_type",
    "is_kitti_subset",
    "kitti_velodyne_file",
    "ply_header",
    "resolve_frame_files",
    "spare_split_files",
]

TYPES: tuple[str, ...] = ("points", "kitti", "detections", "mesh", "gaussians", "posed", "grid", "field", "run")
FRAME_SUFFIXES: tuple[str, ...] = (".bin", ".npy", ".pcd", ".ply")
"""Scan files a folder of frames may hold."""
KITTI_SUBSETS: tuple[str, ...] = ("training", "testing")

GAUSSIAN_PROPERTIES = ("f_dc_0", "opacity", "scale_0", "rot_0")
_MESH_SUFFIXES = {".obj", ".off", ".stl", ".glb"}
_HEADER_LIMIT = 1 << 20


def spare_split_files(folder: Path) -> list[Path]:
    """The SpaRe split files directly inside ``folder``, Track 1 development first."""
    files = sorted(folder.glob("Track*_split_*.json"))
    return sorted(files, key=lambda p: (p.name != "Track1_split_development.json", p.name))


def ply_header(path: Path) -> tuple[str, list[tuple[str, int, list]]]:
    """(format, elements) of a PLY header, each element ``(name, count, properties)`` with properties
    ``(name, type)`` or ``(name, 'list', count_type, item_type)``; :class:`UserError` if it is not a PLY."""
    with open(path, "rb") as f:
        head = f.read(_HEADER_LIMIT)
    try:
        fmt, elements, _ = _parse_ply_header(path, head)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return fmt, elements


def _detect_ply(path: Path) -> str:
    _, elements = ply_header(path)
    by_name = {name: (count, props) for name, count, props in elements}
    if "vertex" not in by_name:
        raise UserError(f"{path}: PLY file has no 'vertex' element")
    vertex_props = {p[0] for p in by_name["vertex"][1]}
    if all(p in vertex_props for p in GAUSSIAN_PROPERTIES):
        return "gaussians"
    if by_name.get("face", (0, []))[0] > 0:
        return "mesh"
    return "points"


def is_kitti_subset(path: Path) -> bool:
    """``path`` is a KITTI subset folder: it holds ``velodyne/`` and ``calib/``."""
    return (path / "velodyne").is_dir() and (path / "calib").is_dir()


def kitti_velodyne_file(path: Path) -> bool:
    """``path`` is a scan ``<subset>/velodyne/<id>.bin`` of a KITTI subset folder (one with ``calib/``)."""
    return path.suffix.lower() == ".bin" and path.parent.name == "velodyne" and is_kitti_subset(path.parent.parent)


def _is_label_line(line: bytes) -> bool:
    tokens = line.split()
    if len(tokens) not in (15, 16) or tokens[0].endswith(b":"):
        return False
    try:
        [float(t) for t in tokens[1:]]
    except ValueError:
        return False
    return True


def _detect_json(path: Path) -> str:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: invalid JSON ({' '.join(str(exc).split())})") from None
    if isinstance(data, list):
        raise UserError(f"{path}: a JSON list is not a detections file (sparse3d-detect writes "
                        "detections.json as {frame_id: [{'name', 'score', 'box_lidar'}, ...]})")
    if isinstance(data, dict):
        if "frames" in data:
            raise UserError(f"{path}: nerfstudio transforms.json posed image sets are not supported by "
                            "sparse3d-vis yet (SpaRe/DTU folders are)")
        if all(isinstance(v, list) for v in data.values()) and (data or path.name == "detections.json"):
            return "detections"
        if data and all(isinstance(v, dict) and "input_views" in v for v in data.values()):
            return "posed"
        if "output_dir" in data and "steps" in data:
            return "run"
        raise UserError(f"{path}: JSON object is neither a detections.json, a SpaRe split file nor a run's "
                        "summary.json")
    raise UserError(f"{path}: JSON holds a {type(data).__name__}, not a detections.json, split file or run "
                    "summary")


def _looks_like_obj(head: bytes) -> bool:
    lines = [ln.strip() for ln in head.splitlines()]
    return any(ln.startswith(b"v ") for ln in lines) and any(ln.startswith(b"f ") for ln in lines)


def folder_type(path: Path) -> str | None:
    """``run`` for a run folder (or a SparseFlex fit's folder), ``posed`` for a SpaRe root or scene folder, ``kitti`` for a KITTI root or subset
    folder, ``detections`` for a ``sparse3d-detect`` output or ``label_2`` folder, None for any other folder."""
    if (path / "summary.json").is_file() or is_sparseflex_run(path):
        return "run"
    if spare_split_files(path) or (spare_split_files(path.parent) and (path / "cameras").is_dir()):
        return "posed"
    if is_kitti_subset(path) or any(is_kitti_subset(path / s) for s in KITTI_SUBSETS):
        return "kitti"
    if not (path / "velodyne").is_dir() and (
        (path / "detections.json").is_file() or (path / "label_2").is_dir() or path.name == "label_2"
    ):
        return "detections"
    return None


def detect_type(path: str | Path) -> str:
    """The :data:`TYPES` entry for ``path`` (a file, or a run / SpaRe folder); :class:`UserError` when the
    content matches none of them."""
    p = Path(path)
    if p.is_dir():
        kind = folder_type(p)
        if kind is None:
            raise UserError(f"{p}: folder is not a training run (no summary.json), a SpaRe dataset (no "
                            "Track*_split_*.json), a KITTI folder (no velodyne/ + calib/) or detection results")
        return kind
    if not p.is_file():
        raise UserError(f"{p}: no such file or folder")
    with open(p, "rb") as f:
        head = f.read(4096)
    suffix = p.suffix.lower()
    if not head:
        raise UserError(f"{p}: file is empty")
    if head.startswith(b"ply"):
        return _detect_ply(p)
    if head.startswith(b"\x93NUMPY"):
        return "points"
    if head.startswith(b"glTF"):
        return "mesh"
    if head.startswith(b"PK\x03\x04") and suffix in (".npz", ""):
        return npz_kind(p)
    stripped = head.lstrip()
    if head.startswith(b"# .PCD") or (suffix == ".pcd" and b"FIELDS" in head and b"DATA" in head):
        return "points"
    if stripped[:1] in (b"[", b"{") and suffix in (".json", ""):
        return _detect_json(p)
    if suffix == ".off" or stripped.split(b"\n", 1)[0].strip() in (b"OFF", b"COFF", b"NOFF", b"CNOFF"):
        return "mesh"
    if suffix == ".stl" and (stripped.startswith(b"solid") or len(head) >= 84):
        return "mesh"
    if suffix == ".obj" or _looks_like_obj(head):
        return "mesh"
    if suffix == ".txt" and _is_label_line(stripped.split(b"\n", 1)[0]):
        return "detections"
    if suffix == ".bin":
        if kitti_velodyne_file(p):
            return "kitti"
        size = p.stat().st_size
        if size % 16:
            raise UserError(f"{p}: {size} bytes is not a whole number of KITTI points (16 bytes each: "
                            "float32 x, y, z, reflectance)")
        return "points"
    if suffix == ".label":
        raise UserError(f"{p}: SemanticKITTI labels are read next to their scan (velodyne/NNNNNN.bin -> "
                        "labels/NNNNNN.label); pass the .bin file")
    raise UserError(f"{p}: unrecognised content (not a PLY, PCD, NPY, KITTI .bin or label file, OBJ/OFF/STL/GLB "
                    "mesh, SparseFlex grid or field .npz, detections.json, SpaRe split or run summary)")


def resolve_frame_files(folder: Path, frame: str | None) -> list[Path]:
    """The scan of one frame in a folder of frames (``<id>.bin``, ``<id>.npy``...; a SemanticKITTI sequence
    folder is searched in its ``velodyne/``). ``frame`` matches a file stem exactly or as a number
    (``12`` finds ``000012.bin``); without it the folder must hold a single frame."""
    if (folder / "calib").is_dir() and not (folder / "velodyne").is_dir():
        raise UserError(f"{folder}: a KITTI folder without velodyne/ (a KITTI subset holds velodyne/ and calib/)")
    search = folder / "velodyne" if (folder / "velodyne").is_dir() else folder
    files = sorted(p for p in search.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise UserError(f"{folder}: no frame files ({', '.join(FRAME_SUFFIXES)}) found")
    stems = sorted({p.stem for p in files})
    if frame is None:
        if len(stems) > 1:
            raise UserError(f"{folder}: holds {len(stems)} frames ({stems[0]} .. {stems[-1]}); "
                            "pick one with --frame ID")
        return files
    chosen = [p for p in files if frame_matches(p.stem, frame)]
    if not chosen:
        raise UserError(f"--frame: no frame {frame!r} in {search} (frames {stems[0]} .. {stems[-1]})")
    return chosen
