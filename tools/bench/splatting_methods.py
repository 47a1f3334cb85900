"""``sparse3d-bench splatting_methods``: the sparse-view methods against each other on generated SpaRe scenes.

Why this suite: one scene says little about a sparse-view method (the object, the three input views and the
test views all vary), so the methods are compared on several generated scenes with the same step budget and
the SpaRe metrics, and the cost of a step is split into its parts to show where the time goes.

What it does:

1. Generates ``scenes`` SpaRe-layout scenes with :func:`sparse3d.datasets.synth.spare_scenes.generate_spare_scenes`
   (``seed``; scene ``i`` depends on ``(seed, i)``; ``naming="alternate"`` gives "Synthetic" and DTU-named
   scenes in turn) at ``resolution`` (W, H), evaluation lighting only, and uses the Track 1 development split
   it writes (3 input views, 10 test views per scene).
2. For every scene, then every method of ``methods``: composes ``sparse3d-train experiment=<method>_spare``
   (the shipped ``configs/method/<method>.yaml`` with that experiment's overrides, e.g. CoherentGS's
   ``background_tol``; ``experiment=gs3d_spare method=<method>`` when there is no such experiment, plus the
   suite's ``overrides[<method>]``) and runs it through :func:`sparse3d.spare.sweep.sweep_scenes`, the code of
   ``sparse3d-spare sweep``: the per-scene loop (:class:`~sparse3d.train.scene_trainer.SceneTrainer`) fits a
   fresh method for ``steps`` steps (0 for a method whose ``default_steps`` is 0, i.e. nothing to train), the test
   views are written as submission PNGs and scored with :func:`sparse3d.spare.evaluation.evaluate_rendering`
   (PSNR, PSNR-M over mask pixels, SSIM; LPIPS when its weights are configured). The loop runs without
   TensorBoard, periodic checkpoints, progress bar and exports, which are not the method's cost.
3. Reads the step time split from the method's ``timings`` (seconds summed per part, e.g. CoherentGS's
   ``decoder``/``rasterizer``/``losses``/``update``, 3DGS and RDG-GS's ``rasterizer``/``losses``/``update``)
   divided by the steps run; ``other`` is the rest of the loop's training time per step.

Records: one per (method, scene), named ``<method> <scene>``, with ``psnr``, ``psnr_m``, ``ssim``,
``num_gaussians``, ``train_s`` (= ``ours_s``, the loop's training time), ``fit_s`` (set-up + training, e.g. the
depth prior), ``step_s`` and ``step_<part>_s``; then one ``<method> mean`` row per method (mean of its scene
rows) whose notes give the mean differences to ``gs3d`` and the per-scene PSNR-M wins over ``reprojection``
(the issue's bar: +1.5 dB mean PSNR-M over 3DGS and a PSNR-M above the reprojection baseline on every scene).
Rows are run scene by scene, so a stopped run has every method on its first scenes; each finished run prints
one progress line (stderr).
"""

from __future__ import annotations

import importlib.resources
import json
import math
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
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

__all__ = ["DEFAULT_METHODS", "DEFAULT_SIZES", "QUICK_SIZES", "SUITE", "compose_method", "run_splatting_methods_suite"]

SUITE = "splatting_methods"
DEFAULT_METHODS: tuple[str, ...] = ("reprojection", "gs3d", "rdggs", "coherentgs")
DEFAULT_SIZES: dict[str, tuple[int, ...]] = {"scenes": (5,), "steps": (300,), "resolution": (200, 150)}
QUICK_SIZES: dict[str, tuple[int, ...]] = {"scenes": (2,), "steps": (4,), "resolution": (64, 48)}
FAMILIES: tuple[str, ...] = ("scenes", "steps", "resolution")
NAMINGS: tuple[str, ...] = ("alternate", "Synthetic", "DTU")
BASELINE = "gs3d"
"""Method the mean rows are compared with (the issue's 3DGS baseline at the same step budget)."""
FLOOR = "reprojection"
"""Method every other one must beat on every scene (PSNR-M)."""
BAR_DB = 1.5
"""Mean PSNR-M gain over :data:`BASELINE` the issue asks of the sparse-view methods."""
SPLIT_ORDER: tuple[str, ...] = ("decoder", "rasterizer", "losses", "update")
METRICS: tuple[str, ...] = ("psnr", "psnr_m", "ssim", "lpips")
LOOP_OPTIONS: dict[str, Any] = {"progress": False, "tensorboard": False, "ckpt_every": 0, "export": False,
                                "eval_every": 0, "image_every": 0}
"""Per-scene loop options of the bench: no I/O that is not the method's cost."""


# ------------------------------------------------------------------------------------------------- config
def _config_names(group: str) -> list[str]:
    folder = importlib.resources.files("sparse3d.configs").joinpath(group)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def compose_method(method: str, overrides: Sequence[str] = (), seed: int = 0) -> DictConfig:
    """The ``sparse3d-train`` config of ``method`` on a SpaRe scene: ``experiment=<method>_spare`` when it exists,
    else ``experiment=gs3d_spare method=<method>``, then ``overrides`` (Hydra syntax, e.g. ``method.stride=1``).

    Composes inside a running Hydra app (``sparse3d-bench``) or on its own (tests, Python). A config that does not
    compose (unknown key, bad value) is a ValueError naming the method."""
    if f"{method}_spare" in _config_names("experiment"):
        args = [f"experiment={method}_spare"]
    else:
        args = ["experiment=gs3d_spare", f"method={method}"]
    return compose_train_config([*args, f"seed={int(seed)}", *overrides], f"overrides.{method}")


def _one(sizes: Mapping[str, tuple[int, ...]], family: str) -> int:
    values = sizes[family]
    if len(values) != 1:
        raise ValueError(f"sizes.{family} takes one value, got {list(values)}")
    return int(values[0])


def _check_args(methods: Sequence[str], overrides: Mapping[str, Any] | None, naming: str, seed: int,
                work_dir: str | None) -> dict[str, list[str]]:
    """Every argument checked before anything runs; returns the overrides as lists of strings per method."""
    names = check_names(methods, "method")
    known = [m for m in _config_names("method") if m != "sparseflex_fit"]
    unknown = [m for m in names if m not in known]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; available: {', '.join(known)}")
    if naming not in NAMINGS:
        raise ValueError(f"naming must be one of {', '.join(NAMINGS)}, got {naming!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    check_work_dir(work_dir, "a fresh one keeps the timings honest: the loop would resume from checkpoints there")
    return check_run_overrides(overrides, names, "method")


# --------------------------------------------------------------------------------------------------- runs
def _capturing(factory: Callable[[], Any], built: list[Any]) -> Callable[[], Any]:
    """``factory`` that also keeps every method it builds (the suite reads their timings after the fit)."""

    def make() -> Any:
        method = factory()
        built.append(method)
        return method

    return make


def _step_split(method: Any, steps: int, train_s: float) -> dict[str, float | None]:
    """Seconds per step: total, each part the method times, and the rest of the loop (``other``)."""
    if steps <= 0:
        return {"step_s": None}
    timings = getattr(method, "timings", None)
    split: dict[str, float | None] = {"step_s": train_s / steps}
    parts = dict(timings) if isinstance(timings, Mapping) else {}
    keys = [k for k in SPLIT_ORDER if k in parts] + sorted(k for k in parts if k not in SPLIT_ORDER)
    for key in keys:
        split[f"step_{key}_s"] = float(parts[key]) / steps
    split["step_other_s"] = max(0.0, (train_s - sum(float(parts[k]) for k in keys)) / steps) if keys else None
    return split


def _fmt(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "—"


def _split_text(row: Mapping[str, Any]) -> str:
    step = row.get("step_s")
    if not isinstance(step, (int, float)):
        return "no training steps"
    parts = [f"{key[5:-2]} {row[key] * 1e3:.0f}" for key in row
             if key.startswith("step_") and key.endswith("_s") and key != "step_s" and row[key] is not None]
    return f"{step * 1e3:.0f} ms/step" + (f" = {' + '.join(parts)}" if parts else "")


def _run_one(method: str, cfg: DictConfig, trainer: DictConfig, scene: str, dataset: str, data_root: Path,
             split: Path, job_dir: Path, width: int, height: int) -> dict[str, Any]:
    """Fit ``method`` on ``scene`` with the ``sparse3d-spare sweep`` code, score it; one record's fields."""
    from sparse3d.spare.submission import STATE_DIR
    from sparse3d.spare.sweep import sweep_scenes
    from sparse3d.train.scene_trainer import SUMMARY_NAME, method_factory

    built: list[Any] = []
    factory = _capturing(method_factory(cfg.method), built)
    swept = sweep_scenes(factory, data_root, split, [scene], job_dir, width, height, method_name=method,
                         trainer=trainer, extra={"suite": SUITE})
    if swept.evaluation is None:
        raise RuntimeError(f"{scene} was not scored: {swept.not_evaluated_reason}")
    scores = swept.evaluation.scenes[scene]
    summary = json.loads((swept.render_dir / STATE_DIR / scene / SUMMARY_NAME).read_text(encoding="utf-8"))
    info = summary.get("method_info") or {}
    train_s, steps_done = float(summary["train_time_s"]), int(summary["steps"])
    row: dict[str, Any] = {
        "method": method, "scene": scene, "dataset": dataset, "steps": steps_done,
        **{k: scores.get(k) for k in METRICS},
        "num_gaussians": info.get("num_gaussians"),
        "train_s": train_s, "fit_s": float(summary["wall_time_s"]),
        **_step_split(built[-1], steps_done, train_s),
        "render_dir": str(swept.render_dir / scene),
    }
    return row


def _record(row: Mapping[str, Any], width: int, height: int) -> BenchRecord:
    notes = (f"PSNR {_fmt(row.get('psnr'))}, PSNR-M {_fmt(row.get('psnr_m'))}, SSIM {_fmt(row.get('ssim'), 3)}"
             + (f", {int(row['num_gaussians'])} Gaussians" if isinstance(row.get("num_gaussians"), (int, float))
                else "") + f"; {_split_text(row)}")
    if row.get("error"):
        notes = f"FAILED: {row['error']}"
    extra = {k: v for k, v in row.items() if k not in ("suite", "name", "size", "ours_s", "notes")}
    extra.update(size_unit="steps", width=width, height=height)
    return BenchRecord(SUITE, f"{row['method']} {row['scene']}", int(row.get("steps") or 0), row.get("train_s"),
                       notes=notes, extra=extra)


def _mean(values: Sequence[Any]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(nums) / len(nums) if nums and len(nums) == len(values) else None


def _mean_rows(rows: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """One ``mean`` row per method over the scenes it finished, with its comparison to the baseline and floor."""
    done = {m: [r for r in rows if r["method"] == m and not r.get("error")] for m in methods}
    means: dict[str, dict[str, Any]] = {}
    for method in methods:
        mine = done[method]
        keys = ["psnr", "psnr_m", "ssim", "lpips", "num_gaussians", "train_s", "fit_s"]
        keys += [k for k in (mine[0] if mine else {}) if k.startswith("step_") and k.endswith("_s")]
        mean: dict[str, Any] = {"method": method, "scene": "mean", "dataset": "mixed",
                                "steps": mine[0]["steps"] if mine else 0, "num_scenes": len(mine),
                                "scenes": [r["scene"] for r in mine]}
        mean.update({k: _mean([r.get(k) for r in mine]) for k in keys})
        means[method] = mean
    for method, mean in means.items():
        notes = [f"mean of {mean['num_scenes']} scene(s): PSNR {_fmt(mean['psnr'])}, PSNR-M {_fmt(mean['psnr_m'])}, "
                 f"SSIM {_fmt(mean['ssim'], 3)}; {_split_text(mean)}"]
        failed = [r["scene"] for r in rows if r["method"] == method and r.get("error")]
        if failed:
            notes.append(f"failed on {failed}")
        base = means.get(BASELINE)
        if base is not None and method != BASELINE:
            common = {r["scene"] for r in done[method]} & {r["scene"] for r in done[BASELINE]}
            for key in ("psnr_m", "psnr", "ssim"):
                mine_v = _mean([r.get(key) for r in done[method] if r["scene"] in common])
                base_v = _mean([r.get(key) for r in done[BASELINE] if r["scene"] in common])
                mean[f"delta_{key}_vs_{BASELINE}"] = None if mine_v is None or base_v is None else mine_v - base_v
            notes.append(f"vs {BASELINE}: PSNR-M {_signed(mean[f'delta_psnr_m_vs_{BASELINE}'])} dB, PSNR "
                         f"{_signed(mean[f'delta_psnr_vs_{BASELINE}'])} dB")
        if FLOOR in means and method != FLOOR:
            floor = {r["scene"]: r for r in done[FLOOR]}
            pairs = [(r, floor[r["scene"]]) for r in done[method] if r["scene"] in floor]
            wins = [r["scene"] for r, f in pairs if _gt(r.get("psnr_m"), f.get("psnr_m"))]
            lost = [r["scene"] for r, f in pairs if r["scene"] not in wins]
            mean[f"wins_vs_{FLOOR}"], mean[f"scenes_vs_{FLOOR}"] = len(wins), len(pairs)
            mean[f"lost_vs_{FLOOR}"] = lost
            notes.append(f"PSNR-M above {FLOOR} on {len(wins)}/{len(pairs)} scenes"
                         + (f" (not on {', '.join(lost)})" if lost else ""))
            delta = mean.get(f"delta_psnr_m_vs_{BASELINE}")
            if method != BASELINE and isinstance(delta, float) and pairs:
                met = delta >= BAR_DB and not lost and not failed
                mean["bar_met"] = met
                notes.append(f"bar (≥ +{BAR_DB} dB PSNR-M vs {BASELINE}, above {FLOOR} on every scene) "
                             f"{'met' if met else 'NOT met'}")
        mean["notes"] = "; ".join(notes)
    return list(means.values())


def _gt(a: Any, b: Any) -> bool:
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > b


def _signed(value: Any) -> str:
    return f"{value:+.2f}" if isinstance(value, (int, float)) and math.isfinite(value) else "—"


def _progress(text: str) -> None:
    print(f"[{SUITE} {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------- API
def run_splatting_methods_suite(
    quick: bool = False,
    device: str = "cpu",
    sizes: Mapping[str, Any] | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    naming: str = "alternate",
    work_dir: str | None = None,
) -> list[dict[str, Any]]:
    """Run every method on every generated scene (module docstring); returns the records, mean rows last.

    ``sizes``: ``scenes`` (count), ``steps`` (budget of every trained method), ``resolution`` (W, H); missing
    families keep :data:`DEFAULT_SIZES` (:data:`QUICK_SIZES` with ``quick``). ``overrides``: per method, a list of
    Hydra overrides of its composed config (``{"coherentgs": ["method.stride=1"]}``). ``work_dir``: where scenes and
    runs go (must be new or empty; kept afterwards); None = a temporary folder removed at the end.
    A run that fails is recorded with its error (and left out of the means) so the others still finish.
    """
    if OmegaConf.is_config(methods):
        methods = OmegaConf.to_container(methods)  # type: ignore[assignment,arg-type]
    if OmegaConf.is_config(overrides):
        overrides = OmegaConf.to_container(overrides)  # type: ignore[assignment,arg-type]
    chosen = override_sizes(QUICK_SIZES if quick else DEFAULT_SIZES, sizes, FAMILIES)
    num_scenes, steps = _one(chosen, "scenes"), _one(chosen, "steps")
    if len(chosen["resolution"]) != 2:
        raise ValueError(f"sizes.resolution takes two values (width, height), got {list(chosen['resolution'])}")
    width, height = (int(v) for v in chosen["resolution"])
    if width < 16 or height < 16:
        raise ValueError(f"sizes.resolution must be at least 16x16 pixels, got {width}x{height}")
    per_method = _check_args(methods, overrides, naming, seed, work_dir)
    dev = prepare_run(1, device)
    configs = {m: compose_method(m, per_method.get(m, ()), seed) for m in methods}
    from sparse3d.train.scene_trainer import as_scene_trainer_config, method_factory

    loops: dict[str, DictConfig] = {}
    for method, cfg in configs.items():  # build one of each now: a bad override fails before any fitting
        try:
            probe = method_factory(cfg.method)()
            budget = 0 if int(getattr(probe, "default_steps", 1)) == 0 else steps
            del probe
            loop = OmegaConf.to_container(cfg.trainer, resolve=True)
            assert isinstance(loop, dict)
            loop.update(LOOP_OPTIONS, max_steps=budget, device=str(dev))
            loops[method] = as_scene_trainer_config(loop)
        except Exception as exc:  # noqa: BLE001 -- any failure to build is a bad method config or override
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            raise ValueError(f"method {method}: cannot build it from its config: "
                             f"{' '.join(str(cause).split())[:300]}") from None

    from sparse3d.datasets.synth.spare_scenes import generate_spare_scenes
    from sparse3d.io.spare import read_split, split_filename

    owned = work_dir is None
    root = Path(tempfile.mkdtemp(prefix="sparse3d-bench-methods-")) if owned else Path(str(work_dir)).expanduser()
    rows: list[dict[str, Any]] = []
    try:
        data_root = root / "scenes"
        t0 = time.perf_counter()
        generate_spare_scenes(data_root, num_scenes=num_scenes, width=width, height=height, seed=seed,
                              lightings=[3], naming=naming, progress=False)
        split = data_root / split_filename(1, "development")
        entries = read_split(split)
        _progress(f"generated {num_scenes} scene(s) at {width}x{height} in {time.perf_counter() - t0:.0f} s: "
                  f"{', '.join(f'{n} ({e.dataset})' for n, e in entries.items())}")
        total, k = len(entries) * len(methods), 0
        for scene, entry in entries.items():
            for method in methods:
                k += 1
                job = root / "runs" / method / scene
                try:
                    row = _run_one(method, configs[method], loops[method], scene, entry.dataset, data_root,
                                   split, job, width, height)
                except Exception as exc:  # noqa: BLE001 -- one failed fit must not lose the other rows
                    row = {"method": method, "scene": scene, "dataset": entry.dataset,
                           "steps": int(loops[method].max_steps),
                           "error": " ".join(f"{type(exc).__name__}: {exc}".split())[:300]}
                    _progress(f"[{k}/{total}] {method} on {scene} FAILED: {row['error']}\n"
                              + "".join(traceback.format_exception(exc)[-3:]))
                else:
                    _progress(f"[{k}/{total}] {method} on {scene} ({entry.dataset}): PSNR {_fmt(row['psnr'])} "
                              f"PSNR-M {_fmt(row['psnr_m'])} SSIM {_fmt(row['ssim'], 3)} Gaussians "
                              f"{row['num_gaussians']} train {row['train_s']:.1f} s fit {row['fit_s']:.1f} s "
                              f"({_split_text(row)})")
                rows.append(row)
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
    if owned:
        for row in rows:
            row.pop("render_dir", None)
    records = [_record(r, width, height).to_dict() for r in rows]
    for mean in _mean_rows(rows, methods):
        notes = mean.pop("notes")
        extra = dict(mean)
        extra.update(size_unit="steps", width=width, height=height)
        records.append(BenchRecord(SUITE, f"{mean['method']} mean", int(mean["steps"]), mean.get("train_s"),
                                   notes=notes, extra=extra).to_dict())
    return records
