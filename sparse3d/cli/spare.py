"""``sparse3d-spare``: SpaRe benchmark submissions, submission checks, per-scene sweeps and result tables.

Examples::

    sparse3d-spare submit data_root=/data/spare split=Track1_split_development.json out=sub.zip
    sparse3d-spare check zip=sub.zip split=/data/spare/Track1_split_development.json   # exit 1 if invalid
    sparse3d-spare submit -m data_root=... split=... scene=A,B,C    # one job per scene: render + evaluate
    sparse3d-spare sweep data_root=... split=... scene=A            # the same job, without a multirun
    sparse3d-spare collect runs=outputs/spare/submit/multirun_<stamp>

The first bare word is rewritten to ``command=<word>`` (Hydra has no positional arguments). Under ``-m``
(multirun) ``submit`` runs sweep jobs: each renders its scene(s) into its own job dir and, when the test views'
ground truth is on disk (generated data), scores them with :func:`sparse3d.metrics.rendering.evaluate_rendering`
into ``results.json``; ``collect`` gathers those files into one table.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from sparse3d.cli import _hydra as H
from sparse3d.io.spare import SplitEntry, load_scene, read_split, write_split
from sparse3d.metrics.rendering import LABELS, METRICS, evaluate_rendering, format_metric, write_json
from sparse3d.spare.check import check_submission
from sparse3d.spare.submission import render_scene, select_scenes, write_submission
from sparse3d.utils.errors import UserError

log = logging.getLogger("sparse3d.cli.spare")

APP = "sparse3d-spare"
COMMANDS = ("submit", "check", "sweep", "collect")
RESULTS_NAME = "results.json"
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


def method_factory(cfg: DictConfig) -> Callable[[], Any]:
    """The ``method`` node built as a factory (``_partial_: true``): one fresh method per scene."""
    built = H.build(cfg.method)
    if not isinstance(built, functools.partial):
        raise UserError(f"the method config ({cfg.method.get('_target_')}) must set `_partial_: true` so a fresh "
                        "method can be built for every scene (see configs/spare/method/reprojection.yaml)")
    return built


def _method_name() -> str:
    return str(HydraConfig.get().runtime.choices.get("method", "custom"))


# --------------------------------------------------------------------------------------------------- submit
def run_submit(cfg: DictConfig) -> int:
    """Render every selected scene at width x height and write the submission zip; check it afterwards."""
    root = _data_root(cfg)
    split = _split_path(cfg, root)
    scenes = _scene_selection(cfg)
    summary = write_submission(
        method_factory(cfg), root, split, _path(cfg, "out"), width=int(cfg.width), height=int(cfg.height),
        calibration_dir=_optional(cfg, "calibration_dir"), scenes=scenes, work_dir=_optional(cfg, "work_dir"),
        lighting=int(cfg.lighting), progress=bool(cfg.progress),
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
def _has_ground_truth(root: Path, entry: SplitEntry, cfg: DictConfig) -> tuple[bool, tuple[int, int]]:
    scene = load_scene(root, entry, calibration_dir=_optional(cfg, "calibration_dir"))
    present = all(scene.image_path(v).is_file() for v in entry.test_views)
    return present, (scene.cameras.width, scene.cameras.height)


def run_sweep_job(cfg: DictConfig) -> Path:
    """Render the selected scene(s) into this job's dir, score them if ground truth exists, write results.json.

    Scenes with ground truth are rendered at the ground-truth size (metrics never resize); others at
    ``width`` x ``height``.
    """
    root = _data_root(cfg)
    split = _split_path(cfg, root)
    entries = select_scenes(read_split(split), _scene_selection(cfg))
    job_dir = H.hydra_output_dir()
    render_dir = job_dir / "render"
    factory = method_factory(cfg)
    timing: dict[str, float] = {}
    with_gt: dict[str, SplitEntry] = {}
    for name, entry in tqdm(entries.items(), desc="scenes", unit="scene", disable=not cfg.progress):
        has_gt, gt_size = _has_ground_truth(root, entry, cfg)
        width, height = gt_size if has_gt else (int(cfg.width), int(cfg.height))
        start = time.perf_counter()
        render_scene(factory, root, entry, render_dir, width, height, _optional(cfg, "calibration_dir"),
                     int(cfg.lighting))
        timing[name] = time.perf_counter() - start
        if has_gt:
            with_gt[name] = entry
    extra = {"command": str(cfg.command), "method": _method_name(), "split": str(split), "render_dir": str(render_dir),
             "fit_render_seconds": timing, "not_evaluated": [n for n in entries if n not in with_gt]}
    out = job_dir / RESULTS_NAME
    if with_gt and cfg.evaluate.enabled:
        job_split = write_split(job_dir / "split.json", with_gt)
        result = evaluate_rendering(
            render_dir, root, job_split, psnr_mask_mode=str(cfg.evaluate.psnr_mask_mode),
            lpips_backbone=_optional(cfg.evaluate, "lpips_backbone"), lpips_heads=_optional(cfg.evaluate, "lpips_heads"),
            calibration_dir=_optional(cfg, "calibration_dir"), device=str(cfg.evaluate.device), progress=False,
        )
        write_json(result, out, extra=extra)
        for name, s in result.scenes.items():
            print(f"{APP}: {name} ({s['dataset']}): PSNR {_cell(s['psnr'], 'psnr')}  SSIM {_cell(s['ssim'], 'ssim')}  "
                  f"PSNR-M {_cell(s['psnr_m'], 'psnr_m')}  LPIPS {_cell(s['lpips'], 'lpips')}", flush=True)
    else:
        reason = "evaluate.enabled=false" if with_gt else "no ground truth for the test views on disk"
        out.write_text(json.dumps({**extra, "scenes": {}, "not_evaluated_reason": reason}, indent=2) + "\n")
        print(f"{APP}: rendered {list(entries)} into {render_dir} (not evaluated: {reason})", flush=True)
    return out


# -------------------------------------------------------------------------------------------------- collect
def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        return float(value)  # "inf" / "-inf": JSON has no infinity
    return float(value)


def _cell(value: Any, metric: str) -> str:
    return format_metric(_number(value), metric)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def collect_results(runs: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows (one per method and scene) from every ``results.json`` under ``runs``, and per-dataset means."""
    files = sorted(runs.rglob(RESULTS_NAME))
    if not files:
        raise UserError(f"no {RESULTS_NAME} under {runs}; pass runs=<multirun dir of `{APP} submit -m`/sweep>")
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], Path] = {}
    for path in files:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: invalid JSON ({exc})") from None
        method = str(data.get("method", "?"))
        for scene, s in (data.get("scenes") or {}).items():
            key = (method, scene)
            if key in seen:
                raise UserError(f"scene {scene!r} of method {method!r} is in both {seen[key]} and {path}")
            seen[key] = path
            row = {"method": method, "dataset": s["dataset"], "scene": scene, "images": s.get("num_images"),
                   "job": str(path.parent.relative_to(runs))}
            row.update({k: _number(s.get(k)) for k in METRICS})
            rows.append(row)
    if not rows:
        raise UserError(f"no evaluated scenes in the {len(files)} {RESULTS_NAME} file(s) under {runs} "
                        "(scenes are scored only when their test views' ground truth is on disk)")
    rows.sort(key=lambda r: (r["method"], r["dataset"], r["scene"]))
    means = []
    for method, dataset in sorted({(r["method"], r["dataset"]) for r in rows}):
        group = [r for r in rows if (r["method"], r["dataset"]) == (method, dataset)]
        mean = {"method": method, "dataset": dataset, "scenes": len(group)}
        mean.update({k: _mean([r[k] for r in group]) for k in METRICS})
        means.append(mean)
    return rows, means


def results_markdown(rows: list[dict[str, Any]], means: list[dict[str, Any]]) -> str:
    header = "| Method | Dataset | Scene | " + " | ".join(LABELS[k] for k in METRICS) + " |"
    lines = ["# SpaRe sweep results", "", "Per-dataset mean = mean of scene means (Synthetic and DTU never mixed); "
             "`n/c` = not computed.", "", header, "|---|---|---|" + "---:|" * len(METRICS)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['dataset']} | {r['scene']} | "
                     + " | ".join(_cell(r[k], k) for k in METRICS) + " |")
    for m in means:
        lines.append(f"| **{m['method']}** | **{m['dataset']}** | **mean of {m['scenes']}** | "
                     + " | ".join(f"**{_cell(m[k], k)}**" for k in METRICS) + " |")
    return "\n".join(lines) + "\n"


def write_results_csv(rows: list[dict[str, Any]], means: list[dict[str, Any]], path: Path) -> Path:
    """Scene rows, then one ``mean`` row per (method, dataset); empty cell = not computed."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "dataset", "scene", "images", *METRICS, "job"])
        for r in rows:
            writer.writerow([r["method"], r["dataset"], r["scene"], r["images"],
                             *("" if r[k] is None else repr(r[k]) for k in METRICS), r["job"]])
        for m in means:
            writer.writerow([m["method"], m["dataset"], "mean", "",
                             *("" if m[k] is None else repr(m[k]) for k in METRICS), f"{m['scenes']} scenes"])
    return path


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
