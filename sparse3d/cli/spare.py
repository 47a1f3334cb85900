"""``sparse3d-spare``: SpaRe benchmark submissions, submission checks, per-scene sweeps and result tables.

Examples::

    sparse3d-spare submit data_root=/data/spare split=Track1_split_development.json out=sub.zip
    sparse3d-spare check zip=sub.zip split=/data/spare/Track1_split_development.json   # exit 1 if invalid
    sparse3d-spare submit -m data_root=... split=... scene=A,B,C    # one job per scene: render + evaluate
    sparse3d-spare sweep data_root=... split=... scene=A            # the same job, without a multirun
    sparse3d-spare collect runs=outputs/spare/submit/multirun_<stamp>

The first bare word is rewritten to ``command=<word>`` (Hydra has no positional arguments). Under ``-m``
(multirun) ``submit`` runs sweep jobs (:func:`sparse3d.spare.sweep.sweep_scenes`): each renders its scene(s) into
its own job dir and, when the test views' ground truth is on disk (generated data), scores them into
``results.json``; ``collect`` gathers those files into one table (:func:`sparse3d.spare.results.collect_results`).
This module only parses the config and dispatches; the SpaRe logic lives in :mod:`sparse3d.spare`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sparse3d.cli import _hydra as H
from sparse3d.io.spare import NUM_LIGHTINGS
from sparse3d.spare.check import check_submission
from sparse3d.spare.report import format_metric
from sparse3d.spare.results import collect_results, results_markdown, write_results_csv
from sparse3d.spare.submission import write_submission
from sparse3d.spare.sweep import sweep_scenes
from sparse3d.train.scene_trainer import method_factory
from sparse3d.utils.errors import UserError

log = logging.getLogger("sparse3d.cli.spare")

APP = "sparse3d-spare"
COMMANDS = ("submit", "check", "sweep", "collect")
EXIT_INVALID = 1


# --------------------------------------------------------------------------------------------------- inputs
def _path(cfg: DictConfig, key: str) -> Path:
    value = cfg.get(key)
    if value is None or str(value) == "":
        raise UserError(f"{key}=... is required for `{APP} {cfg.command}`")
    return Path(str(value)).expanduser()


def _data_root(cfg: DictConfig) -> Path:
    root = _path(cfg, "data_root")
    if not root.is_dir():
        raise UserError(f"data_root not found: {root}")
    return root


def _split_path(cfg: DictConfig, root: Path | None) -> Path:
    """``split`` as given, or as a file name inside ``data_root`` (``split=Track1_split_development.json``)."""
    split = _path(cfg, "split")
    if not split.is_file() and root is not None and not split.is_absolute() and (root / split).is_file():
        return root / split
    if not split.is_file():
        raise UserError(f"split file not found: {split}" + (f" (nor {root / split})" if root is not None else ""))
    return split


def _scene_selection(cfg: DictConfig) -> list[str] | None:
    scene, scenes = cfg.get("scene"), cfg.get("scenes")
    if scene is not None and scenes is not None:
        raise UserError("give either scene=<name> or scenes=[...], not both")
    if scene is not None:
        return [str(scene)]
    if scenes is not None:
        if isinstance(scenes, str):
            return [scenes]
        return [str(s) for s in OmegaConf.to_container(scenes)]  # type: ignore[union-attr]
    return None


def _optional(cfg: DictConfig, key: str) -> str | None:
    value = cfg.get(key)
    return None if value is None else str(value)


def _method_name() -> str:
    return str(HydraConfig.get().runtime.choices.get("method", "custom"))


def _render_settings(cfg: DictConfig) -> tuple[int, int, int]:
    """``width``, ``height`` and ``lighting`` checked before any scene is rendered."""
    values = {}
    for key in ("width", "height", "lighting"):
        try:
            values[key] = int(cfg[key])
        except (TypeError, ValueError):
            raise UserError(f"{key} must be an integer, got {cfg.get(key)!r}") from None
    for key in ("width", "height"):
        if values[key] < 1:
            raise UserError(f"{key} must be >= 1 pixel, got {values[key]}")
    if not 0 <= values["lighting"] < NUM_LIGHTINGS:
        raise UserError(f"lighting must be 0..{NUM_LIGHTINGS - 1} (the SpaRe lighting conditions), "
                        f"got {values['lighting']}")
    return values["width"], values["height"], values["lighting"]


# --------------------------------------------------------------------------------------------------- submit
def run_submit(cfg: DictConfig) -> int:
    """Render every selected scene at width x height and write the submission zip; check it afterwards."""
    width, height, lighting = _render_settings(cfg)
    out = _path(cfg, "out")
    if out.is_dir():
        raise UserError(f"out={out} is a folder: give the path of the submission .zip to write")
    root = _data_root(cfg)
    split = _split_path(cfg, root)
    scenes = _scene_selection(cfg)
    summary = write_submission(
        method_factory(cfg.method), root, split, out, width=width, height=height,
        calibration_dir=_optional(cfg, "calibration_dir"), scenes=scenes, work_dir=_optional(cfg, "work_dir"),
        lighting=lighting, progress=bool(cfg.progress), trainer=cfg.trainer,
    )
    print(f"{APP}: wrote {summary.zip_path} ({summary.num_files} images; rendered {len(summary.rendered)} "
          f"scene(s), reused {len(summary.skipped)} from {summary.work_dir})", flush=True)
    problems = check_submission(summary.zip_path, split, int(cfg.width), int(cfg.height))
    if problems and scenes is not None:
        print(f"{APP}: partial submission ({len(scenes)} scene(s) selected): {len(problems)} file(s) of other "
              "scenes are missing", flush=True)
        return 0
    return _print_problems(summary.zip_path, problems)


# ---------------------------------------------------------------------------------------------------- check
def _print_problems(zip_path: Path, problems: list[Any]) -> int:
    if not problems:
        print(f"{APP}: {zip_path}: valid submission", flush=True)
        return 0
    print(f"{APP}: {zip_path}: {len(problems)} problem(s):", flush=True)
    for problem in problems:
        print(f"  {problem}", flush=True)
    return EXIT_INVALID


def run_check(cfg: DictConfig) -> int:
    """Print every problem of a submission zip; exit status 1 if there is any."""
    zip_path = _path(cfg, "zip")
    if not zip_path.is_file():
        raise UserError(f"zip not found: {zip_path}")
    root = Path(str(cfg.data_root)).expanduser() if cfg.get("data_root") else None
    datasets = cfg.get("datasets")
    if isinstance(datasets, str):
        datasets = [datasets]
    try:
        problems = check_submission(zip_path, _split_path(cfg, root), int(cfg.width), int(cfg.height),
                                    datasets=None if datasets is None else list(datasets))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return _print_problems(zip_path, problems)


# ---------------------------------------------------------------------------------------------------- sweep
def run_sweep_job(cfg: DictConfig) -> Path:
    """One sweep job in this Hydra job's output dir (:func:`~sparse3d.spare.sweep.sweep_scenes`); prints its scores."""
    width, height, lighting = _render_settings(cfg)
    root = _data_root(cfg)
    split = _split_path(cfg, root)
    swept = sweep_scenes(
        method_factory(cfg.method), root, split, _scene_selection(cfg), H.hydra_output_dir(), width,
        height, calibration_dir=_optional(cfg, "calibration_dir"), lighting=lighting,
        evaluate=bool(cfg.evaluate.enabled), psnr_mask_mode=str(cfg.evaluate.psnr_mask_mode),
        lpips_backbone=_optional(cfg.evaluate, "lpips_backbone"), lpips_heads=_optional(cfg.evaluate, "lpips_heads"),
        device=str(cfg.evaluate.device), progress=bool(cfg.progress), method_name=_method_name(),
        extra={"command": str(cfg.command)}, trainer=cfg.trainer,
    )
    if swept.evaluation is None:
        print(f"{APP}: rendered {swept.scenes} into {swept.render_dir} (not evaluated: {swept.not_evaluated_reason})",
              flush=True)
        return swept.results_path
    for name, s in swept.evaluation.scenes.items():
        print(f"{APP}: {name} ({s['dataset']}): PSNR {format_metric(s['psnr'], 'psnr')}  "
              f"SSIM {format_metric(s['ssim'], 'ssim')}  PSNR-M {format_metric(s['psnr_m'], 'psnr_m')}  "
              f"LPIPS {format_metric(s['lpips'], 'lpips')}", flush=True)
    return swept.results_path


# -------------------------------------------------------------------------------------------------- collect
def run_collect(cfg: DictConfig) -> tuple[Path, Path]:
    runs = _path(cfg, "runs")
    if not runs.is_dir():
        raise UserError(f"runs directory not found: {runs}")
    rows, means = collect_results(runs)
    stem = Path(str(cfg.table)).expanduser() if cfg.get("table") else runs / "summary"
    stem.parent.mkdir(parents=True, exist_ok=True)
    markdown = results_markdown(rows, means)
    md_path = stem.with_name(stem.name + ".md")
    md_path.write_text(markdown)
    csv_path = write_results_csv(rows, means, stem.with_name(stem.name + ".csv"))
    print(markdown, flush=True)
    print(f"{APP}: wrote {md_path} and {csv_path}", flush=True)
    return md_path, csv_path


# ------------------------------------------------------------------------------------------------ dispatch
def run_spare(cfg: DictConfig) -> int:
    """Run the chosen command; returns the process exit status (1 = invalid submission)."""
    if OmegaConf.is_missing(cfg, "command") or cfg.command not in COMMANDS:
        got = "nothing" if OmegaConf.is_missing(cfg, "command") else repr(cfg.command)
        raise UserError(f"choose a command: `{APP} <{'|'.join(COMMANDS)}> key=value ...` (got {got})")
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if cfg.command == "sweep" or (cfg.command == "submit" and multirun):
        run_sweep_job(cfg)
        return 0
    if cfg.command == "submit":
        return run_submit(cfg)
    if cfg.command == "check":
        return run_check(cfg)
    run_collect(cfg)
    return 0


@hydra.main(version_base=H.VERSION_BASE, config_path=H.CONFIG_PATH, config_name="spare")
@H.guarded(APP)
def _hydra_entry(cfg: DictConfig) -> None:
    status = run_spare(cfg)
    if status:
        raise SystemExit(status)


def main() -> None:
    """Console-script entry point (accepts ``sparse3d-spare <command> [-m] ...``)."""
    sys.argv = H.rewrite_positional_group(sys.argv, "command")
    _hydra_entry()


if __name__ == "__main__":
    main()
