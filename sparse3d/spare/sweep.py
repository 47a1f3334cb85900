"""One job of a SpaRe sweep: render scenes of a split into a job directory and score those with ground truth.

A sweep runs one job per scene (or group of scenes), e.g. a Hydra multirun of ``sparse3d-spare submit -m``. Each
job fits a fresh method per scene on the scene's input views, renders its test views into ``<job_dir>/render/``
with the submission layout (:func:`sparse3d.spare.submission.render_scene`), and, when the test views' ground
truth is on disk (generated data, or a development split), scores them with
:func:`sparse3d.spare.evaluation.evaluate_rendering`. ``<job_dir>/results.json`` records what was done either way
and is what :func:`sparse3d.spare.results.collect_results` gathers.

Scenes with ground truth are rendered at the ground-truth size, because the metrics never resize; scenes without
it at the requested ``width`` x ``height``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sparse3d.io.spare import EVAL_LIGHTING, SplitEntry, load_scene, read_split, write_split
from sparse3d.spare.evaluation import PathLike, RenderEvaluation, evaluate_rendering
from sparse3d.spare.report import write_json
from sparse3d.spare.results import RESULTS_NAME
from sparse3d.spare.submission import MethodFactory, render_scene, select_scenes
from sparse3d.utils.errors import UserError


@dataclass
class SweepResult:
    """What :func:`sweep_scenes` did: where it wrote, which scenes, and their scores when it could score them."""

    results_path: Path
    render_dir: Path
    scenes: list[str]
    evaluation: RenderEvaluation | None
    not_evaluated_reason: str | None


def has_ground_truth(
    data_root: PathLike, entry: SplitEntry, calibration_dir: PathLike | None = None
) -> tuple[bool, tuple[int, int]]:
    """Whether every test view's ground-truth image is on disk, and the scene's image size (width, height)."""
    scene = load_scene(data_root, entry, calibration_dir=calibration_dir)
    present = all(scene.image_path(v).is_file() for v in entry.test_views)
    return present, (scene.cameras.width, scene.cameras.height)


def sweep_scenes(
    method_factory: MethodFactory,
    data_root: PathLike,
    split: PathLike,
    scenes: Iterable[str] | str | None,
    job_dir: PathLike,
    width: int,
    height: int,
    calibration_dir: PathLike | None = None,
    lighting: int = EVAL_LIGHTING,
    evaluate: bool = True,
    psnr_mask_mode: str = "mask_pixels",
    lpips_backbone: PathLike | None = None,
    lpips_heads: PathLike | None = None,
    device: str = "cpu",
    progress: bool = False,
    method_name: str = "custom",
    extra: Mapping[str, Any] | None = None,
    trainer: Any = None,
) -> SweepResult:
    """Render ``scenes`` of ``split`` (all when None) into ``job_dir/render``, score them, write ``results.json``.

    ``method_factory`` is called once per scene and must return a fresh method, fitted with the per-scene loop
    options ``trainer`` (see :func:`sparse3d.spare.submission.render_scene`). Only scenes whose test views all
    have ground truth on disk are scored, and only when ``evaluate`` is true; the others are listed under
    ``not_evaluated``. ``results.json`` holds ``extra``'s fields, then ``method``, ``split``, ``render_dir``,
    ``fit_render_seconds`` (per scene) and ``not_evaluated``, plus either the full evaluation
    (:func:`sparse3d.spare.report.write_json`) or ``scenes: {}`` and ``not_evaluated_reason``.
    Raises :class:`UserError` for a missing ``data_root`` or scene names that are not in the split.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise UserError(f"data_root not found: {root}")
    entries = select_scenes(read_split(split), scenes)
    job = Path(job_dir)
    job.mkdir(parents=True, exist_ok=True)
    render_dir = job / "render"
    timing: dict[str, float] = {}
    with_gt: dict[str, SplitEntry] = {}
    for name, entry in tqdm(entries.items(), desc="scenes", unit="scene", disable=not progress):
        present, gt_size = has_ground_truth(root, entry, calibration_dir)
        size = gt_size if present else (int(width), int(height))
        start = time.perf_counter()
        render_scene(method_factory, root, entry, render_dir, size[0], size[1], calibration_dir, int(lighting),
                     trainer)
        timing[name] = time.perf_counter() - start
        if present:
            with_gt[name] = entry
    record = {**dict(extra or {}), "method": method_name, "split": str(split), "render_dir": str(render_dir),
              "fit_render_seconds": timing, "not_evaluated": [n for n in entries if n not in with_gt]}
    out = job / RESULTS_NAME
    if with_gt and evaluate:
        job_split = write_split(job / "split.json", with_gt)
        result = evaluate_rendering(
            render_dir, root, job_split, psnr_mask_mode=psnr_mask_mode, lpips_backbone=lpips_backbone,
            lpips_heads=lpips_heads, calibration_dir=calibration_dir, device=device, progress=False,
        )
        write_json(result, out, extra=record)
        return SweepResult(out, render_dir, list(entries), result, None)
    reason = "evaluate.enabled=false" if with_gt else "no ground truth for the test views on disk"
    out.write_text(json.dumps({**record, "scenes": {}, "not_evaluated_reason": reason}, indent=2) + "\n")
    return SweepResult(out, render_dir, list(entries), None, reason)
