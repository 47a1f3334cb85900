"""Write a SpaRe submission zip: render every scene's test views through a novel-view method, zip the scenes.

Format: that of the SpaRe benchmark of the AIM 2024 Sparse Neural Rendering Challenge (Nazarczuk et al., ECCV
Workshops 2024; https://sparebenchmark.github.io): ``<scene>/<image_filename(dataset, view, 3)>`` 8-bit RGB PNGs
at 1600x1200, one per (scene, test view) of the split, with the scene folders at the archive root (no enclosing
folder), for its synthetic scenes and its DTU scenes (Jensen et al., CVPR 2014) alike. The zip is written
deterministically (sorted names, fixed timestamps) so the same renders give the same bytes.

Every scene is fitted by the shared per-scene loop (:class:`~sparse3d.train.scene_trainer.SceneTrainer`) with a
fresh method from the same ``configs/method/<name>.yaml`` that ``sparse3d-train`` uses, so any
:class:`~sparse3d.train.scene_trainer.SceneMethod` plugs in. Work is resumable at two levels: finished scenes in
``work_dir`` (all ten PNGs present, of the right size and decoding completely) are skipped, and each scene's loop
keeps its checkpoints in ``work_dir/.method_state/<scene>/``, so an interrupted fit continues from its last
checkpoint.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sparse3d.io.atomic import atomic_path
from sparse3d.io.images import decode_image, png_info, write_png
from sparse3d.io.spare import (
    BENCHMARK_SIZE,
    EVAL_LIGHTING,
    SplitEntry,
    image_filename,
    load_input_views,
    load_scene,
    read_split,
)
from sparse3d.train.scene_trainer import SceneMethod, SceneTrainer, render_views
from sparse3d.utils.errors import UserError
from sparse3d.views import SceneViews

log = logging.getLogger("sparse3d.spare.submission")

PathLike = str | Path
MethodFactory = Callable[[], SceneMethod]
STATE_DIR = ".method_state"
"""Folder of a render directory holding each scene's per-scene run (checkpoints, logs, exports); never zipped."""
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def submission_name(entry: SplitEntry, view: int) -> str:
    """Archive member of one (scene, test view): ``scan63/rect_014_3_r5000.png``."""
    return f"{entry.scene}/{image_filename(entry.dataset, view, EVAL_LIGHTING)}"


def expected_names(entries: Iterable[SplitEntry]) -> list[str]:
    """Every member a complete submission for ``entries`` holds, in archive order (sorted)."""
    return sorted(submission_name(e, v) for e in entries for v in e.test_views)


def select_scenes(entries: Mapping[str, SplitEntry], scenes: Iterable[str] | str | None) -> dict[str, SplitEntry]:
    """The split's entries restricted to ``scenes`` (all when None), in split order; unknown names are an error."""
    if scenes is None:
        return dict(entries)
    wanted = [scenes] if isinstance(scenes, str) else [str(s) for s in scenes]
    unknown = [s for s in wanted if s not in entries]
    if unknown:
        raise UserError(f"scenes {unknown} are not in the split (names are case-sensitive); known: {list(entries)}")
    return {name: entry for name, entry in entries.items() if name in wanted}


def scene_is_rendered(folder: PathLike, entry: SplitEntry, width: int, height: int) -> bool:
    """True when ``folder/<scene>/`` holds every test view as a PNG of the right size and format that decodes
    completely (a file damaged after it was written makes the scene render again)."""
    for view in entry.test_views:
        path = Path(folder) / submission_name(entry, view)
        if not path.is_file():
            return False
        try:
            data = path.read_bytes()
            info = png_info(data)
            if (info.width, info.height) != (width, height) or not info.is_rgb8:
                return False
            decode_image(data, max_pixels=width * height)
        except (ValueError, OSError):
            return False
    return True


def render_scene(
    method_factory: MethodFactory,
    data_root: PathLike,
    entry: SplitEntry,
    out_dir: PathLike,
    width: int | None = BENCHMARK_SIZE[0],
    height: int | None = BENCHMARK_SIZE[1],
    calibration_dir: PathLike | None = None,
    lighting: int = EVAL_LIGHTING,
    trainer: Any = None,
) -> list[Path]:
    """Fit a fresh method on the scene's input views and write its test views to ``out_dir/<scene>/``.

    The fit runs in ``out_dir/.method_state/<scene>/`` with the loop options ``trainer``
    (:class:`~sparse3d.config_schema.SceneTrainerConfig`; None = defaults) and resumes there when a checkpoint
    exists. ``width``/``height`` None renders at the size of the images on disk; otherwise the cameras are
    rescaled (:meth:`Cameras.resized`) when the data on disk has another size. Files are written atomically
    (temp name, then rename) so an interrupted run never leaves a truncated PNG that looks finished.
    """
    scene = load_scene(data_root, entry, lighting=lighting, calibration_dir=calibration_dir)
    cams = scene.cameras_for(entry.test_views)
    width = cams.width if width is None else int(width)
    height = cams.height if height is None else int(height)
    if (cams.width, cams.height) != (width, height):
        if abs(cams.width * height - cams.height * width) > max(cams.width, cams.height):
            log.warning("scene %s: images on disk are %dx%d, rendering %dx%d changes the aspect ratio",
                        entry.scene, cams.width, cams.height, width, height)
        cams = cams.resized(width, height)
    method = method_factory()
    loop = SceneTrainer(trainer, Path(out_dir) / STATE_DIR / entry.scene)
    loop.fit(method, SceneViews(load_input_views(scene, entry)), resume="auto")
    cams = cams.to(loop.device)
    written = []
    for index, view in enumerate(entry.test_views):
        image = render_views(method, cams[index])[0]
        path = Path(out_dir) / submission_name(entry, view)
        with atomic_path(path, fsync=False) as tmp:
            write_png(tmp, image.numpy())
        written.append(path)
    return written


def zip_scenes(folder: PathLike, entries: Iterable[SplitEntry], out_zip: PathLike) -> Path:
    """Zip ``folder/<scene>/<file>`` for every expected member, scene folders at the root, deterministically."""
    out = Path(out_zip)
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w") as archive:  # never a half-written zip
        for name in expected_names(entries):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, (Path(folder) / name).read_bytes())
    return out


@dataclass
class SubmissionSummary:
    """What :func:`write_submission` did."""

    zip_path: Path
    work_dir: Path
    rendered: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    num_files: int = 0


def default_work_dir(out_zip: PathLike) -> Path:
    """``submission.zip`` → ``submission_render/``: stable between runs, so a second run resumes."""
    out = Path(out_zip)
    return out.with_name(f"{out.stem}_render")


def write_submission(
    method_factory: MethodFactory,
    data_root: PathLike,
    split_path: PathLike,
    out_zip: PathLike,
    width: int = BENCHMARK_SIZE[0],
    height: int = BENCHMARK_SIZE[1],
    calibration_dir: PathLike | None = None,
    scenes: Iterable[str] | str | None = None,
    work_dir: PathLike | None = None,
    lighting: int = EVAL_LIGHTING,
    progress: bool = True,
    trainer: Any = None,
) -> SubmissionSummary:
    """Render every scene of the split (or ``scenes``) into ``work_dir`` and zip them into ``out_zip``.

    ``method_factory`` is called once per scene and must return a fresh :class:`SceneMethod`; ``trainer`` holds
    the per-scene loop options (see :func:`render_scene`).
    """
    root = Path(data_root)
    if not root.is_dir():
        raise UserError(f"data root not found: {root}")
    entries = select_scenes(read_split(split_path), scenes)
    work = Path(work_dir) if work_dir is not None else default_work_dir(out_zip)
    summary = SubmissionSummary(zip_path=Path(out_zip), work_dir=work)
    for name, entry in tqdm(entries.items(), desc="scenes", unit="scene", disable=not progress):
        if scene_is_rendered(work, entry, width, height):
            summary.skipped.append(name)
            continue
        render_scene(method_factory, root, entry, work, width, height, calibration_dir, lighting, trainer)
        summary.rendered.append(name)
    if summary.skipped:
        log.info("skipped %d scene(s) already rendered in %s: %s", len(summary.skipped), work, summary.skipped)
    zip_scenes(work, entries.values(), out_zip)
    summary.num_files = sum(len(e.test_views) for e in entries.values())
    return summary
