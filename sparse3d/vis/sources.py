"""Files and folders to scenes: the readers behind ``sparse3d-vis PATH [PATH ...]``.

Supported inputs (types as in :mod:`sparse3d.vis.detect`):

* points: KITTI ``.bin`` (x, y, z, reflectance), ``.npy`` (N, 3+; column 3 is intensity; with
  ``--color rgb`` and 6+ columns, columns 3..5 are RGB), ``.ply`` (``red green blue`` colours, ``intensity`` /
  ``reflectance``, ``label`` / ``semantic`` properties), ``.pcd`` (through Open3D's tensor reader: colours,
  intensity, label). A SemanticKITTI ``labels/NNNNNN.label`` next to ``velodyne/NNNNNN.bin`` (or
  ``NNNNNN.label`` beside it) supplies labels. A coordinate frame marks the sensor origin.
* KITTI frames: a KITTI root (``training/`` first, else ``testing/``), a subset folder, or one
  ``velodyne/<id>.bin`` (its ``calib/`` and ``label_2/`` found beside ``velodyne/``); read with
  :func:`sparse3d.datasets.kitti.load_frame` (points, and the ``label_2`` boxes converted through the calib as
  ground truth). ``DontCare`` rows are ignore regions with placeholder 3-D values, so they are not drawn.
* detections (:mod:`sparse3d.vis.detections`): ``sparse3d-detect``'s ``detections.json`` or KITTI ``label_2``
  result files (or its output folder, ``detections.json`` preferred), for the frame chosen by ``--frame``,
  else the frame of the KITTI input or the stem of the point file beside them; KITTI rows are converted with
  that KITTI frame's calib. Ground truth and predictions (those above ``--score-threshold``) are drawn in
  distinct colours, the points inside them recoloured to match.
* meshes: ``.ply .obj .glb .off .stl`` through trimesh when installed, else Open3D; vertex colours kept;
  open-boundary edges highlighted; optional wireframe and normals.
* 3DGS ``.ply``: Gaussian centres in their DC colours, or the K most opaque as ellipsoids (``glyphs``).
* posed image sets: a SpaRe/DTU root (scene by ``--frame``, default the first of the split) or scene folder:
  every camera with a ``pos_XXX.txt`` as a frustum; input and test views with their images.
* SparseFlex grids (``SparseSDFGrid.save`` ``.npz``) and fields (a fit run's ``field.npz``), told apart by their
  keys (:mod:`sparse3d.vis.sparseflex`): the active cubes as a line set (at most ``max_cubes``, evenly strided,
  with a note when subsampled) and/or the extracted mesh (``show``), in the input's coordinates.
* training runs: a per-scene run folder shows its exported 3DGS ``.ply``, a SparseFlex fit run (``field.npz`` and
  ``mesh.ply``) its mesh; a dataset-trained run has no scene and is refused with a one-line reason.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparse3d.datasets.kitti import KittiFrame, load_frame
from sparse3d.io.gaussian_ply import load_gaussian_ply
from sparse3d.io.images import read_image
from sparse3d.io.kitti import KittiCalib
from sparse3d.io.pointcloud import read_kitti_bin, read_ply_points, read_semantic_kitti_label
from sparse3d.io.spare import SplitEntry, load_scene, read_split
from sparse3d.utils.errors import UserError
from sparse3d.vis import builders as B
from sparse3d.vis import colors as C
from sparse3d.vis.detect import (
    KITTI_SUBSETS,
    TYPES,
    detect_type,
    folder_type,
    is_kitti_subset,
    kitti_velodyne_file,
    resolve_frame_files,
    spare_split_files,
)
from sparse3d.vis.detections import BoxSet, frame_matches, kitti_label_boxes, read_detections_json
from sparse3d.vis.scene import Drawable, Points, Scene
from sparse3d.vis.sparseflex import (
    MAX_CUBES,
    SHOW_MODES,
    is_sparseflex_run,
    load_sparseflex,
    sparseflex_drawables,
)

__all__ = [
    "VisOptions",
    "build_scene",
    "load_detections",
    "load_kitti_frame",
    "load_mesh",
    "load_points",
    "load_run_gaussians",
    "sparseflex_run_mesh",
    "spare_drawables",
]

_INTENSITY_NAMES = ("intensity", "reflectance", "scalar_intensity", "scalar_Intensity", "remission")
_LABEL_NAMES = ("label", "semantic", "class", "scalar_label", "semantic_label")


@dataclass(frozen=True)
class VisOptions:
    """How to read and draw the inputs (the CLI's options).

    Attributes:
        type: ``auto`` (detect from content) or one of :data:`~sparse3d.vis.detect.TYPES`, for every path.
        color: point colouring, one of :data:`~sparse3d.vis.builders.COLOR_MODES`.
        frame: frame id in a folder of frames, a KITTI folder or a detections file, or scene name in a SpaRe
            root.
        score_threshold: draw only the predictions scoring at least this (all of them for None).
        glyphs: 3DGS: draw the ``glyphs`` most opaque Gaussians as ellipsoids instead of all centres as points.
        wireframe: meshes: draw their edges.
        normals: meshes: draw vertex normals.
        voxel_size: points: draw the occupied voxels of this size instead of the points.
        point_size: point diameter in pixels.
        show: SparseFlex grids and fields: ``both``, ``cubes`` or ``mesh``.
        max_cubes: SparseFlex grids and fields: most cubes drawn (an evenly strided subset beyond).
    """

    type: str = "auto"
    color: str = "auto"
    frame: str | None = None
    glyphs: int = 0
    wireframe: bool = False
    normals: bool = False
    voxel_size: float | None = None
    point_size: float = 2.0
    score_threshold: float | None = None
    show: str = "both"
    max_cubes: int = MAX_CUBES


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn reader errors (ValueError, OSError) into a one-line :class:`UserError` that names ``path``."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, OSError) as exc:
        message = " ".join(str(exc).split())
        raise UserError(message if str(path) in message else f"{path}: {message}") from None


# ----------------------------------------------------------------------------------------------- points
def _semantic_kitti_labels(path: Path, num_points: int) -> np.ndarray | None:
    candidates = [path.with_suffix(".label")]
    if path.parent.name == "velodyne":
        candidates.append(path.parent.parent / "labels" / f"{path.stem}.label")
    for candidate in candidates:
        if candidate.is_file():
            with _reading(candidate):
                return read_semantic_kitti_label(candidate, num_points)[0]
    return None


def _first(columns: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray | None:
    return next((columns[n] for n in names if n in columns), None)


def _read_pcd(path: Path) -> B.PointData:
    import open3d as o3d

    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    cloud = o3d.t.io.read_point_cloud(path)
    if cloud.is_empty():
        raise UserError(f"{path}: not a readable PCD point cloud (or it has no points)")
    fields = {k: cloud.point[k].numpy() for k in cloud.point}
    rgb = fields.get("colors")
    intensity, labels = _first(fields, _INTENSITY_NAMES), _first(fields, _LABEL_NAMES)
    return B.PointData(fields["positions"], None if intensity is None else intensity.reshape(-1),
                       None if rgb is None else C.unit_rgb(rgb), None if labels is None else labels.reshape(-1),
                       source=str(path))


def load_points(path: str | Path, color: str = "auto") -> B.PointData:
    """Read a point-cloud file (KITTI ``.bin``, ``.npy``, ``.ply``, ``.pcd``) with whatever per-point fields it
    has; ``color`` only decides whether a ``.npy``'s columns 3..5 are read as RGB."""
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(8)
    with _reading(p):
        if head.startswith(b"ply"):
            cols = read_ply_points(p)
            labels = _first(cols, _LABEL_NAMES)
            return B.PointData(cols["xyz"], _first(cols, _INTENSITY_NAMES),
                               C.unit_rgb(cols["colors"]) if "colors" in cols else None,
                               None if labels is None else labels.astype(np.int64), source=str(p))
        if head.startswith(b"\x93NUMPY"):
            arr = np.load(p, allow_pickle=False)
            if arr.ndim != 2 or arr.shape[1] < 3 or not np.issubdtype(arr.dtype, np.number):
                raise UserError(f"{p}: a point array must be numeric (N, 3+), got {arr.dtype} {arr.shape}")
            rgb = arr[:, 3:6] if color == "rgb" and arr.shape[1] >= 6 else None
            intensity = arr[:, 3] if arr.shape[1] >= 4 and rgb is None else None
            return B.PointData(arr[:, :3], intensity, None if rgb is None else C.unit_rgb(rgb), source=str(p))
        if p.suffix.lower() == ".pcd" or head.startswith(b"# .PCD"):
            return _read_pcd(p)
        scan = read_kitti_bin(p)
    return B.PointData(scan[:, :3], scan[:, 3], None, _semantic_kitti_labels(p, len(scan)), source=str(p))


# ------------------------------------------------------------------------------------- KITTI, detections
def _kitti_frame_id(subset_dir: Path, frame: str | None) -> str:
    """The scan of ``subset_dir/velodyne`` that ``frame`` names (exactly or as a number); without ``frame`` the
    folder must hold a single scan."""
    velodyne = subset_dir / "velodyne"
    stems = sorted(p.stem for p in velodyne.iterdir() if p.is_file() and p.suffix.lower() == ".bin")
    if not stems:
        raise UserError(f"{velodyne}: no .bin scans found")
    if frame is None:
        if len(stems) > 1:
            raise UserError(f"{subset_dir}: holds {len(stems)} frames ({stems[0]} .. {stems[-1]}); "
                            "pick one with --frame ID")
        return stems[0]
    chosen = [s for s in stems if frame_matches(s, frame)]
    if not chosen:
        raise UserError(f"--frame: no frame {frame!r} in {velodyne} (frames {stems[0]} .. {stems[-1]})")
    return chosen[0]


def load_kitti_frame(path: str | Path, frame: str | None = None) -> KittiFrame:
    """One KITTI frame of a root, a subset folder (``training`` / ``testing``) or a ``velodyne/<id>.bin``,
    through :func:`~sparse3d.datasets.kitti.load_frame`; ``frame`` picks the frame in a folder."""
    p = Path(path)
    if p.is_file():
        if not kitti_velodyne_file(p):
            raise UserError(f"{p}: not a KITTI scan <subset>/velodyne/<id>.bin with a calib/ folder beside "
                            "velodyne/")
        subset_dir, fid = p.parent.parent, p.stem
    else:
        subsets = [d for d in (p, *(p / s for s in KITTI_SUBSETS)) if is_kitti_subset(d)]
        if not subsets:
            raise UserError(f"{p}: not a KITTI folder (a root with training/ or testing/, or a subset folder "
                            "with velodyne/ and calib/)")
        subset_dir = subsets[0]
        fid = _kitti_frame_id(subset_dir, frame)
    if subset_dir.name not in KITTI_SUBSETS:
        raise UserError(f"{subset_dir}: a KITTI subset folder must be named {' or '.join(KITTI_SUBSETS)}")
    with _reading(subset_dir):
        return load_frame(subset_dir.parent, fid, subset=subset_dir.name)


def _label_file(folder: Path, frame: str | None) -> Path:
    files = sorted(p for p in folder.glob("*.txt") if p.is_file())
    if not files:
        raise UserError(f"{folder}: no KITTI label files (<id>.txt) found")
    if frame is None:
        if len(files) > 1:
            raise UserError(f"{folder}: holds {len(files)} label files ({files[0].stem} .. {files[-1].stem}); "
                            "pick one with --frame ID")
        return files[0]
    chosen = [p for p in files if frame_matches(p.stem, frame)]
    if not chosen:
        raise UserError(f"--frame: no label file for frame {frame!r} in {folder} "
                        f"(frames {files[0].stem} .. {files[-1].stem})")
    return chosen[0]


def load_detections(path: str | Path, frame: str | None = None, calib: KittiCalib | None = None) -> BoxSet:
    """The boxes of frame ``frame`` in a ``detections.json``, a KITTI ``label_2`` file or folder, or a
    ``sparse3d-detect`` output folder (its ``detections.json`` when present, else its ``label_2/``). KITTI rows
    are in the camera frame and need the frame's ``calib``."""
    p = Path(path)
    if p.is_dir():
        if (p / "detections.json").is_file():
            return read_detections_json(p / "detections.json", frame)
        p = _label_file(p / "label_2" if (p / "label_2").is_dir() else p, frame)
    if p.suffix.lower() == ".json":
        return read_detections_json(p, frame)
    if calib is None:
        raise UserError(f"{p}: KITTI label rows are in the camera frame; pass the frame's KITTI scan or folder "
                        "too (its calib converts them), or the detections.json")
    return kitti_label_boxes(p, calib)


# ----------------------------------------------------------------------------------------------- meshes
def _trimesh_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(vertices, faces, vertex colours or None) through trimesh, or None when trimesh is not installed."""
    try:
        import trimesh
    except ImportError:
        return None
    try:
        mesh: Any = trimesh.load(str(path), force="mesh")
    except Exception as exc:  # trimesh raises many types for malformed files; all mean "cannot read this file"
        raise UserError(f"{path}: cannot read the mesh ({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    colors = None
    kind = getattr(mesh.visual, "kind", None)
    if kind in ("vertex", "face"):
        colors = np.asarray(mesh.visual.vertex_colors)[:, :3]
    elif kind == "texture":
        with contextlib.suppress(Exception):  # a texture that cannot be sampled leaves the mesh grey
            colors = np.asarray(mesh.visual.to_color().vertex_colors)[:, :3]
    return np.asarray(mesh.vertices), np.asarray(mesh.faces), colors


def _open3d_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    import open3d as o3d

    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    mesh = o3d.io.read_triangle_mesh(path)
    colors = np.asarray(mesh.vertex_colors) if mesh.has_vertex_colors() else None
    return np.asarray(mesh.vertices), np.asarray(mesh.triangles), colors


def load_mesh(path: str | Path, backend: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read a triangle mesh: vertices (V, 3) float32, faces (F, 3) int64 and per-vertex colours (V, 3) in [0, 1]
    or None. ``backend``: ``trimesh``, ``open3d`` or ``auto`` (trimesh when installed)."""
    p = Path(path)
    if backend not in ("auto", "trimesh", "open3d"):
        raise ValueError(f"backend must be 'auto', 'trimesh' or 'open3d', got {backend!r}")
    arrays = _trimesh_arrays(p) if backend in ("auto", "trimesh") else None
    if arrays is None:
        if backend == "trimesh":
            raise UserError(f"{p}: trimesh is not installed (pip install trimesh)")
        arrays = _open3d_arrays(p)
    vertices, faces, colors = arrays
    if len(faces) == 0:
        raise UserError(f"{p}: no triangles found (for a point cloud use --type points)")
    if not np.isfinite(vertices).all():
        raise UserError(f"{p}: mesh has non-finite vertex coordinates")
    return (vertices.astype(np.float32), faces.astype(np.int64),
            None if colors is None else C.unit_rgb(colors))


# ------------------------------------------------------------------------------------------ runs, SpaRe
def sparseflex_run_mesh(folder: str | Path) -> Path | None:
    """The ``mesh.ply`` of a SparseFlex fit run folder (one holding ``field.npz`` and ``mesh.ply``), else None."""
    d = Path(folder)
    return d / "mesh.ply" if is_sparseflex_run(d) else None


def load_run_gaussians(folder: str | Path) -> Path:
    """The 3DGS ``.ply`` a per-scene training run exported; :class:`UserError` for a dataset-trained run (which
    has model weights, no scene) or a run that exported no point cloud."""
    d = Path(folder)
    summary_path = d / "summary.json"
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{summary_path}: cannot read the run summary ({' '.join(str(exc).split())})") from None
    if not isinstance(summary, dict):
        raise UserError(f"{summary_path}: not a run summary (a JSON object)")
    if "scene" not in summary:
        raise UserError(f"{d}: a dataset-trained run (model weights, no scene artefacts); sparse3d-vis has "
                        "nothing to show for it")
    exported = [d / Path(str(e)).name for e in summary.get("exports") or [] if str(e).endswith(".ply")]
    for candidate in [*exported, d / "point_cloud.ply"]:
        if candidate.is_file():
            return candidate
    raise UserError(f"{d}: the run exported no point cloud (method {summary.get('method', '?')}); "
                    f"its renders are in {d / 'renders'}")


def _spare_entry(path: Path, frame: str | None) -> tuple[Path, SplitEntry, bool]:
    """(dataset root, split entry, whether ``frame`` chose the scene) of a SpaRe root, scene folder or split
    file; a root's scene is ``frame`` or the first scene of its splits (Track 1 development first)."""
    if path.is_dir() and not spare_split_files(path):  # a scene folder inside a root
        root = path.parent
        for split in spare_split_files(root):
            scenes = read_split(split)
            if path.name in scenes:
                return root, scenes[path.name], False
        raise UserError(f"{path}: scene {path.name!r} is in none of the split files of {root}")
    root = path.parent if path.is_file() else path
    entries: dict[str, SplitEntry] = {}
    for split in [path] if path.is_file() else spare_split_files(path):
        for name, entry in read_split(split).items():
            entries.setdefault(name, entry)
    if frame is None:
        return root, next(iter(entries.values())), False
    if frame not in entries:
        raise UserError(f"--frame: no scene {frame!r} in {path} (scenes: {', '.join(sorted(entries))})")
    return root, entries[frame], True


def spare_drawables(path: str | Path, frame: str | None = None) -> tuple[list[Drawable], np.ndarray, np.ndarray, bool]:
    """Frusta of one SpaRe/DTU scene: input views (orange) and test views (cyan) with their images where the
    image files exist, other rig cameras (grey) without. Returns the drawables, the cameras' ``up`` and
    ``forward`` directions (see :func:`~sparse3d.vis.builders.camera_up_forward`) and whether ``frame`` picked
    the scene."""
    p = Path(path)
    root, entry, used_frame = _spare_entry(p, frame)
    scene = load_scene(root, entry)
    depth = B.default_frustum_depth(scene.cameras.centers.numpy())
    out: list[Drawable] = []
    roles = [(list(entry.input_views), C.INPUT_CAMERA_COLOR, "input views"),
             (list(entry.test_views), C.TEST_CAMERA_COLOR, "test views"),
             ([v for v in scene.views if v not in entry.input_views and v not in entry.test_views],
              C.OTHER_CAMERA_COLOR, "other cameras")]
    for views, color, role in roles:
        if not views:
            continue
        images = None
        if role != "other cameras":
            images = []
            for v in views:
                image_path = scene.image_path(v)
                with _reading(image_path):
                    images.append(read_image(image_path) if image_path.is_file() else None)
        out += B.camera_frusta(scene.cameras_for(views), images, color=color, depth=depth,
                               name=f"{entry.scene} {role}")
    up, forward = B.camera_up_forward(scene.cameras)
    return out, up, forward, used_frame


def _expand(paths: Sequence[str | Path], options: VisOptions) -> tuple[list[tuple[Path, str]], bool]:
    """(file or folder, type) for every input, folders of frames resolved to their frame's files; and whether
    some path consumed ``options.frame``."""
    if options.type != "auto" and options.type not in TYPES:
        raise UserError(f"--type: unknown type {options.type!r}; one of auto, {', '.join(TYPES)}")
    out: list[tuple[Path, str]] = []
    used_frame = False
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise UserError(f"{p}: no such file or folder")
        files = [p]
        if p.is_dir() and folder_type(p) is None:
            files = resolve_frame_files(p, options.frame)
            used_frame = used_frame or options.frame is not None
        for f in files:
            kind = detect_type(f) if options.type == "auto" else options.type
            if kind == "run" and f.is_file():  # a run's summary.json stands for its folder
                f = f.parent
            if kind == "run" and not ((f / "summary.json").is_file() or is_sparseflex_run(f)):
                raise UserError(f"{f}: --type run needs a run folder holding summary.json (or a SparseFlex fit's "
                                "field.npz and mesh.ply)")
            if kind == "posed" and f.is_dir() and folder_type(f) != "posed":
                raise UserError(f"{f}: --type posed needs a SpaRe dataset root or scene folder")
            if kind in ("kitti", "detections") and f.is_dir() and folder_type(f) != kind:
                raise UserError(f"{f}: --type {kind} needs a {'KITTI' if kind == 'kitti' else 'detection results'} "
                                "folder")
            if kind not in ("run", "posed", "kitti", "detections") and f.is_dir():
                raise UserError(f"{f}: --type {kind} needs a file, got a folder")
            out.append((f, kind))
    return out, used_frame


def build_scene(paths: Sequence[str | Path], options: VisOptions | None = None) -> Scene:
    """The scene for ``sparse3d-vis PATH [PATH ...]``: every input read, detected by content (or
    ``options.type``), drawn as described in this module's docstring; points inside ground-truth boxes take the
    ground-truth box colour, points inside predicted boxes the prediction colour. Preset views use +z up and
    +x forward, or the cameras' own up and forward when the scene is only cameras."""
    opts = options or VisOptions()
    if opts.glyphs < 0:
        raise UserError(f"--glyphs: must be >= 0, got {opts.glyphs}")
    if not opts.point_size > 0:
        raise UserError(f"--point-size: must be positive, got {opts.point_size}")
    if opts.color not in B.COLOR_MODES:
        raise UserError(f"--color: unknown colouring {opts.color!r}; one of {', '.join(B.COLOR_MODES)}")
    if opts.show not in SHOW_MODES:
        raise UserError(f"--show: unknown choice {opts.show!r}; one of {', '.join(SHOW_MODES)}")
    if opts.max_cubes < 1:
        raise UserError(f"--max-cubes: must be >= 1, got {opts.max_cubes}")
    if opts.score_threshold is not None and not np.isfinite(opts.score_threshold):
        raise UserError(f"--score-threshold: must be a finite number, got {opts.score_threshold}")
    inputs, used_frame = _expand(paths, opts)
    # detections last: they take their frame id and calib from the scans and KITTI frames
    inputs.sort(key=lambda item: item[1] == "detections")
    clouds: list[Points] = []
    boxes: list[BoxSet] = []
    others: list[Drawable] = []
    camera_axes: tuple[np.ndarray, np.ndarray] | None = None
    notes: list[str] = []
    context_frame: str | None = None
    calib: KittiCalib | None = None
    for path, kind in inputs:
        if kind == "points":
            data = load_points(path, opts.color)
            clouds.append(B.point_cloud(data, opts.color))
            context_frame = context_frame or path.stem
        elif kind == "kitti":
            frame = load_kitti_frame(path, opts.frame)
            used_frame = used_frame or (opts.frame is not None and path.is_dir())
            data = B.PointData(frame.points[:, :3], frame.points[:, 3], source=str(path))
            clouds.append(B.point_cloud(data, opts.color))
            boxes.append(BoxSet(frame.boxes.astype(np.float64), tuple(str(n) for n in frame.names),
                                np.full(len(frame.boxes), np.nan)))
            context_frame = context_frame or frame.frame_id
            calib = calib or frame.calib
        elif kind == "detections":
            boxes.append(load_detections(path, opts.frame or context_frame, calib))
            used_frame = used_frame or opts.frame is not None
        elif kind == "mesh":
            vertices, faces, colors = load_mesh(path)
            others += B.mesh_drawables(vertices, faces, colors, wireframe=opts.wireframe, normals=opts.normals,
                                       name=str(path))
        elif kind in ("grid", "field"):
            flex = load_sparseflex(path, kind, with_mesh=opts.show != "cubes")
            drawables, new_notes = sparseflex_drawables(flex, opts.show, opts.max_cubes, wireframe=opts.wireframe,
                                                        normals=opts.normals)
            others += drawables
            notes += new_notes
        elif kind == "run" and (mesh_path := sparseflex_run_mesh(path)) is not None:
            vertices, faces, colors = load_mesh(mesh_path)
            others += B.mesh_drawables(vertices, faces, colors, wireframe=opts.wireframe, normals=opts.normals,
                                       name=str(mesh_path))
        elif kind in ("gaussians", "run"):
            ply = load_run_gaussians(path) if kind == "run" else path
            with _reading(ply):
                gaussians = load_gaussian_ply(ply)
            others.append(B.gaussian_glyphs(gaussians, opts.glyphs, name=str(ply)) if opts.glyphs
                          else B.gaussian_points(gaussians, name=str(ply)))
        else:  # posed
            drawables, up, forward, frame_used_here = spare_drawables(path, opts.frame)
            others += drawables
            camera_axes = camera_axes or (up, forward)
            used_frame = used_frame or frame_used_here
    if opts.frame is not None and not used_frame:
        raise UserError(f"--frame: {opts.frame!r} selects nothing: no PATH is a folder of frames, a KITTI folder, "
                        "a detections file or a SpaRe root")

    scene = Scene(point_size=opts.point_size, notes=notes)
    if camera_axes is not None and not clouds and not boxes:  # only cameras: look at them the way they look
        scene = Scene(up=camera_axes[0], forward=camera_axes[1], point_size=opts.point_size, notes=notes)
    all_boxes = BoxSet.concatenate(boxes).above(opts.score_threshold)
    gt, pred = all_boxes.select(~all_boxes.is_prediction), all_boxes.select(all_boxes.is_prediction)
    for cloud in clouds:
        cloud = B.highlight_points_in_boxes(cloud, gt.boxes, C.GT_BOX_COLOR) if len(gt) else cloud
        cloud = B.highlight_points_in_boxes(cloud, pred.boxes, C.PRED_BOX_COLOR) if len(pred) else cloud
        scene.add(B.voxelize_points(cloud, opts.voxel_size) if opts.voxel_size is not None else cloud)
    scene.add(*others, *B.box_drawables(all_boxes))
    if clouds:
        lo, hi = scene.bounds()
        scene.add(B.coordinate_frame(size=max(min(1.0, 0.1 * float(np.max(hi - lo))), 1e-3)))
    return scene
