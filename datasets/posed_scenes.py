"""Scenes of real capture formats (LLFF, nerfstudio ``transforms.json``, COLMAP, DTU) as the input and test views
of a per-scene method, with the standard sparse-view splits (``data=llff_scene``, ``nerfstudio_scene``,
``colmap_scene``, ``dtu_scene``).

Files are parsed by :mod:`sparse3d.io.llff`, :mod:`sparse3d.io.nerfstudio`, :mod:`sparse3d.io.colmap` and
:mod:`sparse3d.io.spare`; this module picks the scene folder, the split and an optional working resolution
(:func:`sparse3d.views.resample_views`).

Sparse points (:class:`~sparse3d.views.ScenePoints`, for point initialisation): a COLMAP scene's ``points3D``;
an LLFF scene's ``sparse/0`` model when it sits next to ``poses_bounds.npy`` (mapped by the reader's world
change, so they stay aligned with the rescaled / recentred cameras; a binary model without pycolmap is skipped
with a warning); a nerfstudio scene's PLY named by ``ply_file_path`` in ``transforms.json`` (relative to its
folder, in the frame of the ``transform_matrix`` entries). Scenes without points get ``points=None``.

Splits (index ``i`` counts the views in the reader's order: sorted image names for LLFF and COLMAP, file order
for ``transforms.json``):

* ``llff``: the LLFF sparse-view protocol of RegNeRF/FreeNeRF/FSGS: test = every 8th view (``i % 8 == 0``);
  the ``num_train`` (3) input views are ``round(linspace(0, n_rest - 1, num_train))`` over the remaining views in
  order (fern's 20 views: test {0, 8, 16}, inputs {1, 10, 19}). Rounding is half-to-even, as Python's ``round``.
* ``every_nth``: the same rule with any ``test_every``; ``num_train`` None keeps every remaining view.
* ``dtu`` (DTU-layout data, :func:`load_dtu_scene`): the pixelNeRF/RegNeRF DTU split: inputs are the first
  ``num_train`` of ``[25, 22, 28, 40, 44, 48, 0, 8, 13]``; test = views 0-48 minus all nine of those and minus
  ``[3-7, 16-21, 36-39]`` (25 views).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sparse3d.io.colmap import (
    PycolmapMissingError,
    find_model_dir,
    model_views,
    points_source,
    read_colmap_model,
    read_model_points,
)
from sparse3d.io.llff import POSES_BOUNDS, read_llff
from sparse3d.io.nerfstudio import TRANSFORMS, read_transforms
from sparse3d.io.pointcloud import read_ply_points
from sparse3d.io.posed_files import PosedImageFiles
from sparse3d.io.spare import (
    EVAL_LIGHTING,
    NUM_RIG_VIEWS,
    SplitEntry,
    image_filename,
    load_images,
    load_masks,
    load_scene,
)
from sparse3d.utils.errors import UserError
from sparse3d.views import PosedImages, ScenePoints, SceneViews, resample_views

PathLike = str | Path

SPLITS: tuple[str, ...] = ("llff", "every_nth", "dtu")
LLFF_HOLD = 8
DTU_TRAIN_IDS: tuple[int, ...] = (25, 22, 28, 40, 44, 48, 0, 8, 13)
DTU_EXCLUDED_IDS: tuple[int, ...] = (3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 36, 37, 38, 39)


# ---------------------------------------------------------------------------------------------------- splits
def holdout_split(num_views: int, test_every: int = LLFF_HOLD, num_train: int | None = 3) -> tuple[list[int], list[int]]:
    """(input views, test views): test = ``i % test_every == 0``; inputs spread by linspace over the rest."""
    if test_every < 2:
        raise UserError(f"test_every must be >= 2 (1 would hold out every view), got {test_every}")
    test = [i for i in range(num_views) if i % test_every == 0]
    rest = [i for i in range(num_views) if i % test_every != 0]
    if num_train is None:
        return rest, test
    if not 1 <= num_train <= len(rest):
        raise UserError(f"num_train must be in 1..{len(rest)} for {num_views} views holding out every "
                        f"{test_every}th, got {num_train}")
    picks = [round(float(x)) for x in np.linspace(0, len(rest) - 1, num_train)]
    return [rest[k] for k in picks], test


def dtu_split(num_train: int = 3) -> tuple[list[int], list[int]]:
    """(input views, test views) of the DTU sparse-view protocol (see the module docstring)."""
    if not 1 <= num_train <= len(DTU_TRAIN_IDS):
        raise UserError(f"num_train must be in 1..{len(DTU_TRAIN_IDS)} for the DTU split, got {num_train}")
    excluded = set(DTU_TRAIN_IDS) | set(DTU_EXCLUDED_IDS)
    return list(DTU_TRAIN_IDS[:num_train]), [i for i in range(NUM_RIG_VIEWS) if i not in excluded]


def split_views(num_views: int, split: str = "llff", num_train: int | None = 3,
                test_every: int = LLFF_HOLD) -> tuple[list[int], list[int]]:
    """The (input, test) view indices of ``split`` (one of :data:`SPLITS`) over ``num_views`` views."""
    if split == "llff":
        if test_every != LLFF_HOLD:
            raise UserError(f"split=llff holds out every {LLFF_HOLD}th view; use split=every_nth to set test_every "
                            f"(got test_every={test_every})")
        return holdout_split(num_views, LLFF_HOLD, 3 if num_train is None else num_train)
    if split == "every_nth":
        return holdout_split(num_views, test_every, num_train)
    if split == "dtu":
        if num_views < NUM_RIG_VIEWS:
            raise UserError(f"split=dtu needs the {NUM_RIG_VIEWS} DTU views, the scene has {num_views}")
        return dtu_split(3 if num_train is None else num_train)
    raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


# ------------------------------------------------------------------------------------------------- helpers
def _check_size(width: int | None, height: int | None) -> None:
    if (width is None) != (height is None) or (width is not None and (width < 1 or height < 1)):  # type: ignore[operator]
        raise UserError(f"width and height must be given together and be >= 1, got {width} x {height}")


def scene_folder(root: PathLike, scene: str | None, has_scene: Callable[[Path], bool], what: str,
                 looked_for: str = "") -> Path:
    """``root/scene``; with ``scene`` None, ``root`` itself when it holds a scene, else its first sub-folder
    (sorted by name) that does. ``looked_for`` (e.g. ``poses_bounds.npy``) names in the error what marks a scene."""
    r = Path(root)
    if not r.is_dir():
        raise UserError(f"data root not found: {r}")
    if scene is not None:
        folder = r / str(scene)
        if not folder.is_dir():
            raise UserError(f"scene folder not found: {folder}")
        return folder
    if has_scene(r):
        return r
    for sub in sorted(p for p in r.iterdir() if p.is_dir()):
        if has_scene(sub):
            return sub
    marker = f" (looked for {looked_for})" if looked_for else ""
    raise UserError(f"no {what} scene in {r} or its sub-folders{marker}")


def _points(xyz: np.ndarray, rgb: np.ndarray, source: str) -> ScenePoints | None:
    """Reader arrays as :class:`ScenePoints`; None when there are no points."""
    return ScenePoints.from_numpy(xyz, rgb, source) if len(xyz) else None


def llff_points(folder: Path, world_transform: np.ndarray) -> ScenePoints | None:
    """The points of the COLMAP model ``folder/sparse/0`` (if any) in the LLFF reader's world frame."""
    model = folder / "sparse" / "0"
    if not any((model / f"{name}{ext}").is_file() for name in ("cameras", "points3D") for ext in (".txt", ".bin")):
        return None
    try:
        pts = read_model_points(model)
    except PycolmapMissingError as exc:
        warnings.warn(f"{exc}; the scene's sparse points are not used", UserWarning, stacklevel=3)
        return None
    found = _points(pts.xyz, pts.rgb, points_source(model))
    return None if found is None else found.transformed(world_transform)


def nerfstudio_points(transforms_path: Path) -> ScenePoints | None:
    """The PLY named by ``ply_file_path`` in a ``transforms.json`` (relative to its folder), or None.

    Colours: ``red green blue`` as 0..255 integers or [0, 1] floats; mid grey when the file has none."""
    data = json.loads(transforms_path.read_text())
    rel = data.get("ply_file_path") if isinstance(data, dict) else None
    if rel is None:
        return None
    if not isinstance(rel, str) or not rel:
        raise UserError(f"{transforms_path}: field 'ply_file_path' must be a file path, got {rel!r}")
    ply = transforms_path.parent / rel
    if not ply.is_file():
        raise UserError(f"{transforms_path}: field 'ply_file_path' names {ply}, which does not exist")
    fields = read_ply_points(ply)
    xyz = np.asarray(fields["xyz"], np.float64)
    if not np.isfinite(xyz).all():
        raise UserError(f"{ply}: point coordinates must be finite")
    colors = fields.get("colors")
    if colors is not None:
        colors = colors / 255.0 if np.issubdtype(colors.dtype, np.integer) else colors
    return _points(xyz, colors if colors is not None else np.full_like(xyz, 0.5), f"{ply.name} ({ply})")


def _views(files: PosedImageFiles, split: str, num_train: int | None, test_every: int, scene: str,
           width: int | None, height: int | None, with_test: bool,
           points: ScenePoints | None = None) -> SceneViews:
    """Split, report unapplied distortion, read the images and resample them; ``points`` pass through."""
    _check_size(width, height)
    train, test = split_views(len(files), split, num_train, test_every)
    chosen = files.select(train + (test if with_test else []))
    report = chosen.distortion_report()
    if report is not None:
        warnings.warn(report, UserWarning, stacklevel=3)
    inputs = files.select(train).load(scene)
    tests = files.select(test).load(scene) if with_test and test else None
    return _resampled(inputs, tests, width, height, points)


def _resampled(inputs: PosedImages, tests: PosedImages | None, width: int | None, height: int | None,
               points: ScenePoints | None = None) -> SceneViews:
    if width is None or height is None:
        return SceneViews(inputs, tests, points)
    return SceneViews(resample_views(inputs, width, height),
                      resample_views(tests, width, height) if tests is not None else None, points)


# ------------------------------------------------------------------------------------------------- loaders
def load_llff_scene(
    root: PathLike,
    scene: str | None = None,
    factor: int | None = 8,
    split: str = "llff",
    num_train: int | None = 3,
    test_every: int = LLFF_HOLD,
    rescale: bool = True,
    recenter: bool = False,
    width: int | None = None,
    height: int | None = None,
    with_test: bool = True,
) -> SceneViews:
    """An LLFF scene (``poses_bounds.npy`` + ``images_{factor}``) split into input and test views.

    ``root`` is the scene folder or a folder of scenes (``scene`` picks one; None the first). ``rescale`` and
    ``recenter`` are NeRF's (:func:`sparse3d.io.llff.read_llff`); ``width``/``height`` resample every view.
    """
    folder = scene_folder(root, scene, lambda p: (p / POSES_BOUNDS).is_file(), "LLFF", POSES_BOUNDS)
    llff = read_llff(folder, factor=factor, rescale=rescale, recenter=recenter)
    return _views(llff.files, split, num_train, test_every, folder.name, width, height, with_test,
                  llff_points(folder, llff.world_transform))


def load_nerfstudio_scene(
    root: PathLike,
    scene: str | None = None,
    transforms: str = TRANSFORMS,
    downscale: int = 1,
    split: str = "llff",
    num_train: int | None = 3,
    test_every: int = LLFF_HOLD,
    width: int | None = None,
    height: int | None = None,
    with_test: bool = True,
) -> SceneViews:
    """A ``transforms.json`` scene split into input and test views (frames with missing images are skipped
    with a warning before splitting; declared distortion is reported, not applied)."""
    folder = scene_folder(root, scene, lambda p: (p / transforms).is_file(), "nerfstudio", transforms)
    ns = read_transforms(folder / transforms, downscale=downscale)
    return _views(ns.files, split, num_train, test_every, folder.name, width, height, with_test,
                  nerfstudio_points(folder / transforms))


def load_colmap_scene(
    root: PathLike,
    scene: str | None = None,
    model_dir: str | None = None,
    image_dir: str = "images",
    split: str = "llff",
    num_train: int | None = 3,
    test_every: int = LLFF_HOLD,
    width: int | None = None,
    height: int | None = None,
    with_test: bool = True,
) -> SceneViews:
    """A COLMAP scene (model in ``model_dir``, default ``sparse/0``, ``sparse`` or the folder itself; images in
    ``image_dir``) split into input and test views, images ordered by name; its ``points3D`` become
    ``points``."""

    def has_model(p: Path) -> bool:
        try:
            find_model_dir(p if model_dir is None else p / model_dir)
        except UserError:
            return False
        return True

    where = model_dir or "sparse/0, sparse or the folder itself"
    folder = scene_folder(root, scene, has_model, "COLMAP", f"cameras.txt or cameras.bin in {where}")
    model = read_colmap_model(find_model_dir(folder) if model_dir is None else folder / model_dir)
    return _views(model_views(model, folder / image_dir), split, num_train, test_every, folder.name, width, height,
                  with_test, _points(model.points.xyz, model.points.rgb, points_source(model.path)))


def load_dtu_scene(
    root: PathLike,
    scene: str | None = None,
    num_train: int = 3,
    lighting: int = EVAL_LIGHTING,
    dataset: str = "DTU",
    calibration_dir: PathLike | None = None,
    width: int | None = None,
    height: int | None = None,
    with_test: bool = True,
) -> SceneViews:
    """A DTU-layout scene (read with :mod:`sparse3d.io.spare`) with the DTU sparse-view split; test views are
    taken at the evaluation lighting, with object masks when the scene has them.

    ``root`` is the scene folder or a folder of scenes; ``scene`` None takes ``root`` when it has a ``cameras/``
    folder, else its first sub-folder (sorted) that has one.
    """
    _check_size(width, height)
    folder = scene_folder(root, scene, lambda p: (p / "cameras").is_dir(), "DTU-layout", "a cameras/ folder")
    train, test = dtu_split(num_train)
    entry = SplitEntry(folder.name, tuple(train), tuple(test), dataset)
    spare = load_scene(folder.parent, entry, lighting=lighting, calibration_dir=calibration_dir)

    def views(ids: list[int], light: int) -> PosedImages:
        return PosedImages(images=load_images(spare, ids, lighting=light), cameras=spare.cameras_for(ids),
                           masks=load_masks(spare, ids), scene=folder.name,
                           names=tuple(image_filename(dataset, v, light) for v in ids))

    return _resampled(views(train, lighting), views(test, EVAL_LIGHTING) if with_test else None, width, height)
