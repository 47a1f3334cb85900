"""``sparse3d-bench dsvt_quality``: train the DSVT detector and the PointPillars-style baseline on generated KITTI
frames with one step budget, then score both with KITTI AP R40 on the generated val split.

Why this suite: the detection pipeline's quality bar is a training run (a time limit on 2 CPU cores and AP on
held-out frames), so the numbers in BENCHMARKS.md must come from one command that generates the data, trains
each experiment the way ``sparse3d-train`` does and evaluates the way ``sparse3d-eval evaluator=kitti_ap`` does,
with the baseline measured in the same run.

What it does:

1. Writes (or extends) ``frames`` generated KITTI frames with :func:`sparse3d.datasets.synth.kitti.generate_kitti_frames`
   (``seed``, ``val_fraction``) under ``data_root`` (default: ``<work_dir>/kitti``); frame ``i`` depends only on
   ``(seed, i)``, so a folder from an earlier run is reused and only the missing frames are written.
2. For every experiment of ``experiments`` (default ``dsvt_synth`` and ``pointpillars_synth``): composes
   ``sparse3d-train experiment=<name>`` with the data root, ``trainer.max_steps=steps`` (``steps`` 0: the
   experiment's own ``trainer.max_steps``), no periodic validation or checkpoints (they are not the training's
   cost) and the suite's ``overrides[<name>]``, and trains it with :func:`sparse3d.train.runs.train_model`, the
   code of ``sparse3d-train`` (ground-truth database sampling and the other augmentations as configured).
3. Runs :class:`sparse3d.metrics.kitti_evaluator.KittiApEvaluator` on the run's last checkpoint over the val
   split (the detector writes KITTI label files, which are then scored with the devkit's rules).

Records: one per experiment, named after it, with ``size`` = steps, ``ours_s`` = training seconds (the loop's
time, data loading included), the moderate AP R40 at the strict IoU (Car 0.7, Pedestrian / Cyclist 0.5) as
``<class>_<bev|3d>`` fractions, ``train_frames`` / ``val_frames``, ``eval_s`` and ``detect_ms_per_frame``,
``eval_dir`` (the label files and report) and, for experiments in :data:`BAR_EXPERIMENTS`, ``bar_met``:
at least :data:`BAR_TRAIN_FRAMES` training and :data:`BAR_VAL_FRAMES` val frames, training within
:data:`BAR_MINUTES` minutes, Car BEV >= :data:`BAR_CAR_BEV` and Car 3-D >= :data:`BAR_CAR_3D`.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sparse3d.bench.common import (
    BenchRecord,
    check_names,
    check_run_overrides,
    check_work_dir,
    compose_train_config,
    override_sizes,
    prepare_run,
)

__all__ = ["DEFAULT_EXPERIMENTS", "DEFAULT_SIZES", "QUICK_SIZES", "SUITE", "bar_met", "run_dsvt_quality_suite"]

SUITE = "dsvt_quality"
DEFAULT_EXPERIMENTS: tuple[str, ...] = ("dsvt_synth", "pointpillars_synth")
DEFAULT_SIZES: dict[str, tuple[int, ...]] = {"frames": (1250,), "steps": (0,)}
QUICK_SIZES: dict[str, tuple[int, ...]] = {"frames": (6,), "steps": (2,)}
FAMILIES: tuple[str, ...] = ("frames", "steps")
CLASSES: tuple[str, ...] = ("Car", "Pedestrian", "Cyclist")
AP_METRICS: tuple[str, ...] = ("bev", "3d")
BAR_EXPERIMENTS: tuple[str, ...] = ("dsvt_synth",)
"""Experiments the issue's bar applies to (the baseline is reported beside them, without a bar)."""
BAR_TRAIN_FRAMES, BAR_VAL_FRAMES, BAR_MINUTES = 1000, 200, 60.0
BAR_CAR_BEV, BAR_CAR_3D = 0.80, 0.70
RUN_OPTIONS: tuple[str, ...] = ("trainer.val_every=0", "trainer.val_at_end=false", "trainer.ckpt_every=0")
"""Loop options of the bench: no validation passes or periodic checkpoints inside the timed training."""


def _progress(text: str) -> None:
    print(f"[{SUITE} {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def bar_met(row: Mapping[str, Any]) -> bool:
    """The issue's quality bar on one experiment's row (fields as in the module docstring)."""
    def at_least(key: str, bound: float) -> bool:
        value = row.get(key)
        return isinstance(value, (int, float)) and math.isfinite(value) and value >= bound

    minutes = row.get("train_s")
    return (at_least("train_frames", BAR_TRAIN_FRAMES) and at_least("val_frames", BAR_VAL_FRAMES)
            and isinstance(minutes, (int, float)) and minutes / 60.0 <= BAR_MINUTES
            and at_least("Car_bev", BAR_CAR_BEV) and at_least("Car_3d", BAR_CAR_3D))


# ------------------------------------------------------------------------------------------------- config
def compose_experiment(experiment: str, overrides: Sequence[str]) -> DictConfig:
    """``sparse3d-train experiment=<experiment> <overrides>`` (inside the running ``sparse3d-bench`` app or on its
    own); a config that does not compose, or that trains no ``model``, is a ValueError naming the experiment."""
    cfg = compose_train_config([f"experiment={experiment}", *overrides], f"experiment {experiment}")
    if cfg.get("model") is None or OmegaConf.select(cfg, "data.generator") is None:
        raise ValueError(f"experiment {experiment}: not a detector trained on generated KITTI data "
                         "(it needs model= and a data generator)")
    return cfg


def _check_args(experiments: Sequence[str], overrides: Mapping[str, Any] | None, seed: int, val_fraction: float,
                work_dir: str | None) -> dict[str, list[str]]:
    """Every argument checked before any frame is generated; returns the overrides per experiment."""
    names = check_names(experiments, "experiment")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    check_work_dir(work_dir, "the runs would mix with an earlier run's checkpoints")
    return check_run_overrides(overrides, names, "experiment")


def _one(sizes: Mapping[str, tuple[int, ...]], family: str, low: int) -> int:
    values = sizes[family]
    if len(values) != 1 or int(values[0]) < low:
        raise ValueError(f"sizes.{family} takes one whole number >= {low}, got {list(values)}")
    return int(values[0])


# --------------------------------------------------------------------------------------------------- runs
def _train_and_score(experiment: str, cfg: DictConfig, data_root: Path, run_dir: Path, device: str,
                     val_frames: int) -> dict[str, Any]:
    """Train ``cfg`` as ``sparse3d-train`` does, then score its last checkpoint as ``sparse3d-eval`` does."""
    from sparse3d.metrics.kitti_evaluator import KittiApEvaluator
    from sparse3d.train.data_spec import DataSpec
    from sparse3d.train.runs import train_model

    summary = train_model(cfg, DataSpec.from_config(cfg.get("data")), run_dir / "train", run_dir / "runs")
    eval_dir = run_dir / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    classes = [c for c in CLASSES if c in list(cfg.data.class_names)]
    t0 = time.perf_counter()
    report = KittiApEvaluator(pred=None, gt=str(data_root), split="val", classes=classes, experiment=experiment,
                              ckpt_path=str(run_dir / "train"), device=device, progress=False).run(eval_dir)
    eval_s = time.perf_counter() - t0
    metrics = report.results["metrics"]
    row: dict[str, Any] = {
        "experiment": experiment, "steps": int(summary["steps"]), "epochs": int(summary["epochs"]),
        "train_s": float(summary["train_time_s"]), "wall_s": float(summary["wall_time_s"]),
        "steps_per_s": summary.get("steps_per_s"), "batch_size": int(cfg.data.batch_size),
        "final_train_loss": summary.get("final_train_loss"), "num_parameters": int(summary["num_parameters"]),
        "eval_s": eval_s, "detect_ms_per_frame": 1e3 * eval_s / max(val_frames, 1), "eval_dir": str(eval_dir),
    }
    for cls in CLASSES:
        for metric in AP_METRICS:
            row[f"{cls}_{metric}"] = metrics.get(f"{cls}/{metric}_R40/moderate") if cls in classes else None
    return row


def _record(row: Mapping[str, Any]) -> BenchRecord:
    def pct(key: str) -> str:
        value = row.get(key)
        return f"{100 * value:.1f}" if isinstance(value, (int, float)) and math.isfinite(value) else "—"

    aps = ", ".join(f"{cls} BEV {pct(f'{cls}_bev')} / 3-D {pct(f'{cls}_3d')}" for cls in CLASSES)
    notes = (f"AP R40 moderate (%): {aps}; {row['steps']} steps × batch {row['batch_size']} "
             f"({row['steps'] * row['batch_size'] / max(row['train_frames'], 1):.1f} epochs of {row['train_frames']} "
             f"frames) in {row['train_s'] / 60:.1f} min, "
             f"{row['val_frames']} val frames")
    if "bar_met" in row:
        notes += (f"; bar (≥ {BAR_TRAIN_FRAMES} train / {BAR_VAL_FRAMES} val frames, ≤ {BAR_MINUTES:.0f} min, Car "
                  f"BEV ≥ {100 * BAR_CAR_BEV:.0f} and 3-D ≥ {100 * BAR_CAR_3D:.0f}) "
                  f"{'met' if row['bar_met'] else 'NOT met'}")
    extra = {k: v for k, v in row.items() if k not in ("suite", "name", "size", "ours_s", "notes")}
    extra["size_unit"] = "steps"
    return BenchRecord(SUITE, str(row["experiment"]), int(row["steps"]), float(row["train_s"]), notes=notes,
                       extra=extra)


# ---------------------------------------------------------------------------------------------------- API
def run_dsvt_quality_suite(
    quick: bool = False,
    device: str = "cpu",
    sizes: Mapping[str, Any] | None = None,
    experiments: Sequence[str] = DEFAULT_EXPERIMENTS,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    data_root: str | None = None,
    work_dir: str | None = None,
) -> list[dict[str, Any]]:
    """Generate the frames, train and score every experiment (module docstring); returns one record each.

    ``sizes``: ``frames`` (generated frames, train + val) and ``steps`` (each experiment's step budget; 0 keeps
    its config's ``trainer.max_steps``); missing families keep :data:`DEFAULT_SIZES` (:data:`QUICK_SIZES` with
    ``quick``). ``overrides``: per experiment, Hydra overrides of its composed config. ``data_root``: where the
    frames are (generated or extended there; None: inside the work folder). ``work_dir``: runs and reports
    (new or empty; kept); None: a temporary folder removed at the end (then ``eval_dir`` is dropped).
    """
    if OmegaConf.is_config(experiments):
        experiments = OmegaConf.to_container(experiments)  # type: ignore[assignment,arg-type]
    if OmegaConf.is_config(overrides):
        overrides = OmegaConf.to_container(overrides)  # type: ignore[assignment,arg-type]
    chosen = override_sizes(QUICK_SIZES if quick else DEFAULT_SIZES, sizes, FAMILIES)
    frames, steps = _one(chosen, "frames", 2), _one(chosen, "steps", 0)
    per_exp = _check_args(experiments, overrides, seed, val_fraction, work_dir)
    dev = prepare_run(1, device)
    owned = work_dir is None
    root = Path(tempfile.mkdtemp(prefix="sparse3d-bench-dsvtq-")) if owned else Path(str(work_dir)).expanduser()
    kitti = Path(str(data_root)).expanduser() if data_root is not None else root / "kitti"
    configs: dict[str, DictConfig] = {}
    for name in experiments:  # compose all first: a bad name or override fails before any frame is written
        extra = [f"data.root={kitti}", f"data.generator.num_frames={frames}", f"data.generator.seed={seed}",
                 f"data.generator.val_fraction={val_fraction}", f"seed={seed}", f"trainer.device={dev}",
                 *RUN_OPTIONS, *([f"trainer.max_steps={steps}"] if steps > 0 else []), *per_exp.get(name, ())]
        configs[name] = compose_experiment(name, extra)
    from sparse3d.datasets.kitti import read_split
    from sparse3d.datasets.synth.kitti import generate_kitti_frames

    rows: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        generate_kitti_frames(kitti, num_frames=frames, val_fraction=val_fraction, seed=seed, progress=not quick)
        train_frames, val_frames = len(read_split(kitti, "train")), len(read_split(kitti, "val"))
        _progress(f"{frames} generated frames in {kitti} ({train_frames} train / {val_frames} val) ready in "
                  f"{time.perf_counter() - t0:.0f} s")
        for k, (name, cfg) in enumerate(configs.items(), 1):
            row = _train_and_score(name, cfg, kitti, root / "runs" / name, str(dev), val_frames)
            row.update(train_frames=train_frames, val_frames=val_frames, frames=frames)
            if name in BAR_EXPERIMENTS:
                row["bar_met"] = bar_met(row)
            _progress(f"[{k}/{len(configs)}] {name}: {_record(row).notes}")
            rows.append(row)
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
    if owned:
        for row in rows:
            row.pop("eval_dir", None)
    return [_record(r).to_dict() for r in rows]
