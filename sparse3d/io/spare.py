"""SpaRe / DTU scenes as the SpaRe benchmark ships them: split JSON, ``pos_XXX.txt`` cameras, images, masks.

Facts (from the data release of SpaRe, the AIM 2024 Sparse Neural Rendering Challenge, Nazarczuk et al. 2024,
and DTU's file naming, Aanæs et al. 2016): view index ``i`` is file number ``i + 1``; DTU images are
``rect_{i+1:03d}_{lighting}_r5000.png`` and SpaRe-synthetic images ``cam_{i+1:03d}_{lighting}_0000.png``;
lighting 3 (all lights on) is the evaluation condition; ``pos_{i+1:03d}.txt`` holds a 3x4 projection matrix
``P = K [R | t]`` at full resolution (1600x1200). Split files map scene names to
``{"input_views": [...], "test_views": [...], "dataset": "DTU" | "Synthetic"}``.

Layout read here (and written by :mod:`sparse3d.datasets.synth.spare_scenes`)::

    <root>/Track1_split_development.json ...
    <root>/<scene>/cam_014_3_0000.png           (or <root>/<scene>/images/cam_014_3_0000.png)
    <root>/<scene>/cameras/pos_014.txt          (or a shared ``calibration_dir`` with pos_XXX.txt, DTU style)
    <root>/<scene>/masks/cam_014.png            (optional; 8-bit, 255 = object)

Every error names the offending file (and the scene and field for split files).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sparse3d.cameras import Cameras
from sparse3d.io.images import png_info, read_image, read_mask
from sparse3d.utils.errors import UserError
from sparse3d.views import PosedImages

PathLike = str | Path

DATASETS: tuple[str, ...] = ("Synthetic", "DTU")
EVAL_LIGHTING = 3
NUM_LIGHTINGS = 7
NUM_RIG_VIEWS = 49
SPLITS: tuple[str, ...] = ("development", "test")
TRACK_INPUT_VIEWS: dict[int, int] = {1: 3, 2: 9}
TEST_VIEWS_PER_SCENE = 10
BENCHMARK_SIZE: tuple[int, int] = (1600, 1200)
"""(width, height) at which the benchmark evaluates and expects submissions."""


# ------------------------------------------------------------------------------------------------ file names
def _check_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    return dataset


def image_stem(dataset: str, view: int) -> str:
    """Lighting-independent part of an image name: ``rect_014`` (DTU) or ``cam_014`` (Synthetic)."""
    prefix = "rect" if _check_dataset(dataset) == "DTU" else "cam"
    return f"{prefix}_{view + 1:03d}"


def image_filename(dataset: str, view: int, lighting: int = EVAL_LIGHTING) -> str:
    """Image file name of 0-based ``view`` under ``lighting`` in the benchmark's naming scheme."""
    if not 0 <= lighting < NUM_LIGHTINGS:
        raise ValueError(f"lighting must be in 0..{NUM_LIGHTINGS - 1}, got {lighting}")
    suffix = "r5000" if _check_dataset(dataset) == "DTU" else "0000"
    return f"{image_stem(dataset, view)}_{lighting}_{suffix}.png"


def mask_filename(dataset: str, view: int) -> str:
    """Mask file name of a view (masks do not depend on lighting)."""
    return f"{image_stem(dataset, view)}.png"


def camera_filename(view: int) -> str:
    """``pos_XXX.txt`` of 0-based ``view``."""
    return f"pos_{view + 1:03d}.txt"


def split_filename(track: int, split: str) -> str:
    """``Track1_split_development.json`` and friends."""
    if track not in TRACK_INPUT_VIEWS:
        raise ValueError(f"track must be 1 or 2, got {track}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return f"Track{track}_split_{split}.json"


# ------------------------------------------------------------------------------------------- camera files
def read_projection_matrix(path: PathLike) -> np.ndarray:
    """Read a ``pos_XXX.txt`` 3x4 projection matrix (whitespace-separated numbers)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"camera file not found: {p}")
    try:
        values = np.array([float(v) for v in p.read_text().split()], dtype=np.float64)
    except ValueError as exc:
        raise UserError(f"{p}: not a projection matrix ({exc})") from None
    if values.size != 12 or not np.all(np.isfinite(values)):
        raise UserError(f"{p}: a projection matrix needs 12 finite numbers (3x4), found {values.size}")
    return values.reshape(3, 4)


def write_projection_matrix(path: PathLike, P: np.ndarray) -> Path:
    """Write a 3x4 projection matrix as three text rows (full float precision)."""
    p = Path(path)
    mat = np.asarray(P, dtype=np.float64)
    if mat.shape != (3, 4):
        raise ValueError(f"{p}: projection matrix must be 3x4, got {mat.shape}")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(" ".join(f"{v:.17g}" for v in row) for row in mat) + "\n")
    return p


# --------------------------------------------------------------------------------------------- split files
def scene_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a scene name, or None when it can.

    A scene name is used as a folder name under the data root, the render directory and the submission zip,
    so it must be a plain name: a non-empty string without path separators or control characters, not ``.``
    or ``..`` (``../x`` would write outside the work directory; ``/abs`` would replace the work directory).
    """
    if not isinstance(name, str) or not name:
        return "a scene name must be a non-empty string"
    if "/" in name or "\\" in name:
        return "a scene name must be a plain folder name, without '/' or '\\'"
    if name in (".", ".."):
        return "'.' and '..' are not scene names"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "a scene name must not contain control characters"
    return None


class _JsonObject(dict):
    """A decoded JSON object that remembers the keys it held more than once (``json`` keeps the last)."""

    duplicates: list[str]


def _json_object(pairs: list[tuple[str, object]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    seen: set[str] = set()
    obj.duplicates = [k for k, _ in pairs if k in seen or seen.add(k)]  # type: ignore[func-returns-value]
    return obj


@dataclass(frozen=True)
class SplitEntry:
    """One scene of a split file."""

    scene: str
    input_views: tuple[int, ...]
    test_views: tuple[int, ...]
    dataset: str

    def __post_init__(self) -> None:
        problem = scene_name_problem(self.scene)
        if problem is not None:
            raise ValueError(f"SplitEntry.scene {self.scene!r}: {problem}")

    def to_json(self) -> dict[str, object]:
        return {"input_views": list(self.input_views), "test_views": list(self.test_views), "dataset": self.dataset}


def _view_list(path: Path, scene: str, field: str, value: object, num_views: int) -> tuple[int, ...]:
    where = f"{path}: scene {scene!r}, field {field!r}"
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise UserError(f"{where}: must be a list of integers, got {value!r}")
    if len(set(value)) != len(value):
        raise UserError(f"{where}: duplicate view ids {sorted(v for v in set(value) if value.count(v) > 1)}")
    bad = [v for v in value if not 0 <= v < num_views]
    if bad:
        raise UserError(f"{where}: view ids {bad} outside 0..{num_views - 1}")
    return tuple(value)


def parse_split(data: object, path: PathLike = "<split>", num_views: int = NUM_RIG_VIEWS) -> dict[str, SplitEntry]:
    """Validate decoded split JSON: unique plain scene names (:func:`scene_name_problem`); per scene 3 or 9 unique
    inputs, 10 unique tests, disjoint, ids in range, a known dataset.

    Repeated keys are seen only in objects decoded by :func:`read_split` (plain dicts cannot hold them).
    """
    p = Path(path)
    if not isinstance(data, dict) or not data:
        raise UserError(f"{p}: a split file must be a non-empty JSON object mapping scene names to entries")
    repeated = getattr(data, "duplicates", [])
    if repeated:
        raise UserError(f"{p}: scene {repeated[0]!r} appears more than once (each scene name must be unique)")
    entries: dict[str, SplitEntry] = {}
    for scene, entry in data.items():
        problem = scene_name_problem(scene)
        if problem is not None:
            raise UserError(f"{p}: scene {scene!r}: {problem}")
        if not isinstance(entry, dict):
            raise UserError(f"{p}: scene {scene!r}: entry must be an object, got {type(entry).__name__}")
        repeated = getattr(entry, "duplicates", [])
        if repeated:
            raise UserError(f"{p}: scene {scene!r}: field {repeated[0]!r} appears more than once")
        missing = [k for k in ("input_views", "test_views", "dataset") if k not in entry]
        if missing:
            raise UserError(f"{p}: scene {scene!r}: missing field(s) {missing}")
        inputs = _view_list(p, scene, "input_views", entry["input_views"], num_views)
        tests = _view_list(p, scene, "test_views", entry["test_views"], num_views)
        if len(inputs) not in TRACK_INPUT_VIEWS.values():
            raise UserError(f"{p}: scene {scene!r}, field 'input_views': expected 3 or 9 views, got {len(inputs)}")
        if len(tests) != TEST_VIEWS_PER_SCENE:
            raise UserError(
                f"{p}: scene {scene!r}, field 'test_views': expected {TEST_VIEWS_PER_SCENE} views, got {len(tests)}"
            )
        overlap = sorted(set(inputs) & set(tests))
        if overlap:
            raise UserError(f"{p}: scene {scene!r}: views {overlap} are both input and test views")
        dataset = entry["dataset"]
        if dataset not in DATASETS:
            raise UserError(f"{p}: scene {scene!r}, field 'dataset': must be one of {list(DATASETS)}, got {dataset!r}")
        entries[scene] = SplitEntry(scene=scene, input_views=inputs, test_views=tests, dataset=dataset)
    return entries


def read_split(path: PathLike, num_views: int = NUM_RIG_VIEWS) -> dict[str, SplitEntry]:
    """Read and validate a ``Track{1,2}_split_{development,test}.json`` file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"split file not found: {p}")
    try:
        data = json.loads(p.read_text(), object_pairs_hook=_json_object)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: invalid JSON ({exc})") from None
    return parse_split(data, p, num_views)


def write_split(path: PathLike, entries: Mapping[str, SplitEntry] | Iterable[SplitEntry]) -> Path:
    """Write a split file (scene order preserved) after validating it."""
    items = list(entries.values() if isinstance(entries, Mapping) else entries)
    data = {e.scene: e.to_json() for e in items}
    if len(data) != len(items):
        repeated = sorted({e.scene for e in items if sum(f.scene == e.scene for f in items) > 1})
        raise ValueError(f"{path}: scenes {repeated} appear more than once")
    parse_split(data, path)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2) + "\n")
    return p


# -------------------------------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class SpareScene:
    """One scene on disk: where its files are and the cameras of every view that has a ``pos`` file."""

    name: str
    dataset: str
    directory: Path
    image_dir: Path
    cameras: Cameras
    views: tuple[int, ...]
    lighting: int = EVAL_LIGHTING

    def index_of(self, view: int) -> int:
        try:
            return self.views.index(view)
        except ValueError:
            raise UserError(f"scene {self.name!r} has no camera file for view {view} ({camera_filename(view)})") from None

    def camera(self, view: int) -> Cameras:
        """The camera of one view (a batch of one)."""
        return self.cameras[self.index_of(view)]

    def cameras_for(self, views: Sequence[int]) -> Cameras:
        return self.cameras[[self.index_of(v) for v in views]]

    def image_path(self, view: int, lighting: int | None = None) -> Path:
        return self.image_dir / image_filename(self.dataset, view, self.lighting if lighting is None else lighting)

    def mask_path(self, view: int) -> Path | None:
        p = self.directory / "masks" / mask_filename(self.dataset, view)
        return p if p.is_file() else None

    def available_lightings(self, view: int) -> list[int]:
        """Which lighting conditions exist on disk for ``view`` (the inputs zips may not hold all seven)."""
        return [k for k in range(NUM_LIGHTINGS) if self.image_path(view, k).is_file()]


def _find_image_dir(scene_dir: Path, dataset: str, views: Iterable[int], lighting: int) -> Path:
    for candidate in (scene_dir, scene_dir / "images", scene_dir / "image"):
        if any((candidate / image_filename(dataset, v, lighting)).is_file() for v in views):
            return candidate
    return scene_dir


def load_scene(
    root: PathLike, entry: SplitEntry, lighting: int = EVAL_LIGHTING, calibration_dir: PathLike | None = None
) -> SpareScene:
    """Locate a scene's files and decompose its cameras.

    Cameras come from ``<root>/<scene>/cameras/`` or, DTU style, from a shared ``calibration_dir``. The image size
    is the one most of the scene's images have (PNG headers only), so one wrongly sized image is blamed on its
    own; without any image the benchmark size 1600x1200 is used.
    """
    scene_dir = Path(root) / entry.scene
    if not scene_dir.is_dir():
        raise UserError(f"scene directory not found: {scene_dir} (scene {entry.scene!r} of the split)")
    cam_dir = Path(calibration_dir) if calibration_dir is not None else scene_dir / "cameras"
    if not cam_dir.is_dir():
        raise UserError(f"camera directory not found: {cam_dir} (pass calibration_dir= for a shared calibration)")
    views = tuple(sorted(int(p.stem[4:]) - 1 for p in cam_dir.glob("pos_[0-9][0-9][0-9].txt")))
    needed = sorted(set(entry.input_views) | set(entry.test_views))
    missing = [camera_filename(v) for v in needed if v not in views]
    if missing:
        raise UserError(f"{cam_dir}: missing camera files {missing} needed by scene {entry.scene!r}")
    image_dir = _find_image_dir(scene_dir, entry.dataset, needed, lighting)
    width, height = _scene_size(entry, [image_dir / image_filename(entry.dataset, v, lighting) for v in needed])
    mats = [read_projection_matrix(cam_dir / camera_filename(v)) for v in views]
    try:
        cameras = Cameras.from_projection_matrices(mats, width, height)
    except ValueError:
        for v, mat in zip(views, mats, strict=True):  # name the file that cannot be decomposed
            try:
                Cameras.from_projection_matrices([mat], width, height)
            except ValueError as exc:
                raise UserError(f"{cam_dir / camera_filename(v)}: {exc}") from None
        raise
    scene = SpareScene(entry.scene, entry.dataset, scene_dir, image_dir, cameras, views, lighting)
    _check_in_front(scene, cam_dir)
    return scene


def _scene_size(entry: SplitEntry, paths: Sequence[Path]) -> tuple[int, int]:
    """(width, height) shared by most of the scene's images that exist; UserError when there is no majority."""
    sizes: dict[tuple[int, int], list[Path]] = {}
    for path in paths:
        if path.is_file():
            try:
                info = png_info(path)
            except ValueError as exc:
                raise UserError(str(exc)) from None
            sizes.setdefault((info.width, info.height), []).append(path)
    if not sizes:
        return BENCHMARK_SIZE
    ranked = sorted(sizes.items(), key=lambda item: -len(item[1]))
    if len(ranked) > 1 and len(ranked[0][1]) == len(ranked[1][1]):
        listing = ", ".join(f"{files[0].name} {w}x{h}" for (w, h), files in ranked)
        raise UserError(f"{paths[0].parent}: images of scene {entry.scene!r} disagree in size and no size is "
                        f"the majority ({listing})")
    return ranked[0][0]


def _check_in_front(scene: SpareScene, cam_dir: Path) -> None:
    """Every camera must see the point the rig looks at (see :func:`rig_target`) at positive depth."""
    if len(scene.views) < 2:
        return
    target = rig_target(scene.cameras).double()
    depth = ((target - scene.cameras.centers.double()) * scene.cameras.R[:, 2, :].double()).sum(-1)
    behind = [camera_filename(v) for v, d in zip(scene.views, depth.tolist(), strict=True) if not d > 0]
    if behind:
        more = f" (so do {behind[1:]})" if len(behind) > 1 else ""
        raise UserError(f"{cam_dir / behind[0]}: camera looks away from the scene (the rig centre is behind it)"
                        f"{more}")


def rig_target(cameras: Cameras) -> torch.Tensor:
    """World point closest (least squares) to all optical axes: where a turntable-like rig is looking."""
    centres = cameras.centers.double()
    forward = cameras.R[:, 2, :].double()
    proj = torch.eye(3, dtype=torch.float64) - forward.unsqueeze(-1) * forward.unsqueeze(-2)
    return torch.linalg.lstsq(proj.sum(0), (proj @ centres.unsqueeze(-1)).sum(0)).solution.squeeze(-1).float()


def load_images(scene: SpareScene, views: Sequence[int], lighting: int | None = None) -> torch.Tensor:
    """(V, H, W, 3) float32 images of ``views``; every file must exist and match the camera size."""
    out = []
    for v in views:
        path = scene.image_path(v, lighting)
        if not path.is_file():
            found = scene.available_lightings(v)
            hint = f" (lightings present for this view: {found})" if found else ""
            raise UserError(f"image not found: {path}{hint}")
        try:
            image = read_image(path)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if (image.shape[1], image.shape[0]) != (scene.cameras.width, scene.cameras.height):
            raise UserError(
                f"{path}: size {image.shape[1]}x{image.shape[0]} differs from the scene's "
                f"{scene.cameras.width}x{scene.cameras.height}"
            )
        out.append(torch.from_numpy(image))
    return torch.stack(out) if out else torch.zeros(0, scene.cameras.height, scene.cameras.width, 3)


def load_masks(scene: SpareScene, views: Sequence[int]) -> torch.Tensor | None:
    """(V, H, W) bool object masks, or None when any of the views has no mask file."""
    paths = [scene.mask_path(v) for v in views]
    if not paths or any(p is None for p in paths):
        return None
    masks = []
    for p in paths:
        m = read_mask(p)
        if (m.shape[1], m.shape[0]) != (scene.cameras.width, scene.cameras.height):
            raise UserError(f"{p}: mask size {m.shape[1]}x{m.shape[0]} differs from the scene's image size")
        masks.append(torch.from_numpy(m))
    return torch.stack(masks)


def load_input_views(scene: SpareScene, entry: SplitEntry) -> PosedImages:
    """The scene's input views (images, cameras, masks if present) for a method's ``fit``."""
    views = list(entry.input_views)
    return PosedImages(
        images=load_images(scene, views),
        cameras=scene.cameras_for(views),
        masks=load_masks(scene, views),
        scene=scene.name,
    )

