"""One SpaRe/DTU scene as the input and test views of a per-scene method (``data=spare_scene``).

The files are read with :mod:`sparse3d.io.spare`; this module only picks the scene, its input and test views
and an optional working resolution (images resampled with area averaging, masks with nearest neighbour, cameras
rescaled to match), so CPU runs can fit at a fraction of the benchmark's 1600x1200.
"""

from __future__ import annotations

from pathlib import Path

from sparse3d.io.spare import (
    SpareScene,
    image_filename,
    load_images,
    load_masks,
    load_scene,
    mask_filename,
    read_split,
)
from sparse3d.utils.errors import UserError
from sparse3d.views import PosedImages, SceneViews, resample_views

PathLike = str | Path


def load_spare_scene(
    root: PathLike,
    split: PathLike,
    scene: str | None = None,
    lighting: int = 3,
    calibration_dir: PathLike | None = None,
    width: int | None = None,
    height: int | None = None,
    with_test: bool = True,
) -> SceneViews:
    """Input views (at ``lighting``) and, when their images are on disk, the test views (lighting 3) of a scene.

    ``split`` is a path or a file name inside ``root``; ``scene`` None takes the split's first scene.
    ``width``/``height`` (both or neither) resample every view and camera.
    """
    root = Path(root)
    split_path = Path(split)
    if not split_path.is_file() and not split_path.is_absolute() and (root / split_path).is_file():
        split_path = root / split_path
    entries = read_split(split_path)
    if not entries:
        raise UserError(f"{split_path}: the split has no scenes")
    name = next(iter(entries)) if scene is None else str(scene)
    if name not in entries:
        raise UserError(f"{split_path}: no scene {name!r} (scenes: {', '.join(entries)})")
    entry = entries[name]
    if (width is None) != (height is None) or (width is not None and (width < 1 or height < 1)):  # type: ignore[operator]
        raise UserError(f"width and height must be given together and be >= 1, got {width} x {height}")
    spare = load_scene(root, entry, lighting=lighting, calibration_dir=calibration_dir)
    _check_regular_files(spare, entry.input_views, lighting)
    _check_regular_files(spare, entry.test_views, 3)
    inputs = PosedImages(
        images=load_images(spare, entry.input_views), cameras=spare.cameras_for(entry.input_views),
        masks=load_masks(spare, entry.input_views), scene=name,
        names=tuple(image_filename(entry.dataset, v, lighting) for v in entry.input_views),
    )
    test = None
    if with_test and all(spare.image_path(v, 3).is_file() for v in entry.test_views):
        test = PosedImages(
            images=load_images(spare, entry.test_views, lighting=3), cameras=spare.cameras_for(entry.test_views),
            masks=load_masks(spare, entry.test_views), scene=name,
            names=tuple(image_filename(entry.dataset, v, 3) for v in entry.test_views),
        )
    if width is not None and height is not None:
        inputs = resample_views(inputs, int(width), int(height))
        test = resample_views(test, int(width), int(height)) if test is not None else None
    return SceneViews(inputs, test)


def _check_regular_files(spare: SpareScene, views: tuple[int, ...], lighting: int) -> None:
    """An image or mask path that exists but is not a file (a folder, say) is an error, not a missing file:
    missing test images mean "no ground truth" and missing masks "no masks", a folder there means neither."""
    for v in views:
        for path in (spare.image_path(v, lighting), spare.directory / "masks" / mask_filename(spare.dataset, v)):
            if path.exists() and not path.is_file():
                raise UserError(f"{path}: not a regular file (view {v} of scene {spare.name!r})")
