"""``sparse3d-eval``: evaluate a training checkpoint on the validation split, or score rendered images.

Examples::

    sparse3d-eval ckpt_path=outputs/train/quickstart/2025-01-01_12-00-00          # a run dir
    sparse3d-eval ckpt_path=.../checkpoints/step_0000030.ckpt device=cpu
    sparse3d-eval ckpt_path=<run> ++data.root=/other/data batch_size=4
    sparse3d-eval task=render pred=submission.zip data_root=/data/spare split=Track1_split_development.json \
        lpips.backbone=/weights/alexnet-owt-7be5be79.pth lpips.heads=/weights/alex.pth

The model and data are rebuilt from the resolved config stored in the checkpoint; ``model=...`` /
``data=...`` (config groups) or ``++model.<key>=...`` override parts of it. Results go to
``<output_root>/eval/<experiment>/<timestamp>/results.json`` and are printed. ``task=render`` needs no
checkpoint: it scores ``pred`` (a directory or a SpaRe submission zip) with
:func:`sparse3d.metrics.rendering.evaluate_rendering`, prints the markdown table and also writes
``per_image.csv`` and ``results.md``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from sparse3d.cli import _hydra as H
from sparse3d.metrics import rendering as R
from sparse3d.train.checkpoint import atomic_write_json, load_checkpoint, resolve_checkpoint_path
from sparse3d.train.trainer import evaluate
from sparse3d.utils.device import resolve_device
from sparse3d.utils.errors import UserError
from sparse3d.utils.seed import seed_everything

log = logging.getLogger("sparse3d.cli.eval")

APP = "sparse3d-eval"


def merge_saved_config(saved: dict[str, Any] | None, cfg: DictConfig) -> DictConfig:
    """Combine the checkpoint's resolved ``model``/``data`` configs with the user's overrides.

    A user node with a different ``_target_`` replaces the saved one; otherwise it is merged on top.
    Interpolations in user nodes (e.g. ``${data.num_classes}``) resolve against the merged config, and
    ``paths`` come from the eval app so ``${paths.data_dir}`` means this machine's data dir.
    """
    saved = saved or {}
    merged = OmegaConf.create(
        {
            "paths": OmegaConf.to_container(cfg.paths, resolve=True),
            "model": saved.get("model"),
            "data": saved.get("data"),
        }
    )
    for key in ("model", "data"):
        user = cfg.get(key)
        if user is None:
            continue
        user_node = OmegaConf.to_container(user, resolve=False)
        saved_node = merged.get(key)
        saved_target = saved_node.get("_target_") if isinstance(saved_node, DictConfig) else None
        user_target = user_node.get("_target_") if isinstance(user_node, dict) else None
        if saved_node is None or (user_target is not None and user_target != saved_target):
            merged[key] = user_node
        else:
            merged = OmegaConf.merge(merged, {key: user_node})  # type: ignore[assignment]
    if merged.get("model") is None:
        raise UserError("the checkpoint has no saved model config; choose one with model=<name>")
    if merged.get("data") is None:
        raise UserError("the checkpoint has no saved data config; choose one with data=<name>")
    return merged


def _segmentation_task(
    model: torch.nn.Module, merged: DictConfig, cfg: DictConfig
) -> tuple[dict[str, float], int]:
    """Validation-protocol evaluation (validation_step + aggregate_validation) over ``data.val``."""
    H.prepare_data(merged.data)
    val_node = merged.data.get("val")
    if val_node is None:
        raise UserError("the data config has no 'val' node to evaluate on")
    dataset = H.build(val_node)
    collate_node = merged.data.get("collate_fn")
    collate_fn = H.build(collate_node) if collate_node is not None else None
    batch_size = cfg.batch_size if cfg.batch_size is not None else merged.data.get("batch_size", 1)
    num_workers = cfg.num_workers if cfg.num_workers is not None else merged.data.get("num_workers", 0)
    metrics = evaluate(
        model, dataset, batch_size=int(batch_size), num_workers=int(num_workers), collate_fn=collate_fn,
        device=cfg.device, amp=cfg.amp, amp_dtype=cfg.amp_dtype, seed=cfg.seed,
    )
    return metrics, len(dataset)


# Checkpoint evaluation tasks by name (model, merged config, cfg) -> (metrics, number of samples).
TASKS: dict[str, Callable[[torch.nn.Module, DictConfig, DictConfig], tuple[dict[str, float], int]]] = {
    "segmentation": _segmentation_task,
}


def _render_task(cfg: DictConfig) -> dict[str, Any]:
    """``task=render``: score rendered images against ground truth; no checkpoint involved."""
    start = time.perf_counter()
    for key in ("pred", "data_root", "split"):
        if not cfg.get(key):
            raise UserError(f"task=render needs {key}=...: "
                            "sparse3d-eval task=render pred=<dir|zip> data_root=<dir> split=<json>")
    result = R.evaluate_rendering(
        str(cfg.pred), str(cfg.data_root), str(cfg.split),
        psnr_mask_mode=str(cfg.psnr_mask_mode),
        lpips_backbone=cfg.lpips.backbone, lpips_heads=cfg.lpips.heads,
        calibration_dir=cfg.calibration_dir, device=resolve_device(str(cfg.device)),
        progress=bool(cfg.progress),
    )
    output_dir = H.hydra_output_dir()
    output_dir.mkdir(parents=True, exist_ok=True)
    extra = {"task": cfg.task, "experiment": cfg.experiment_name, "device": str(cfg.device),
             "num_images": len(result.images), "wall_time_s": time.perf_counter() - start,
             "output_dir": str(output_dir)}
    R.write_json(result, output_dir / "results.json", extra)
    R.write_csv(result, output_dir / "per_image.csv")
    R.write_markdown(result, output_dir / "results.md")
    print(R.to_markdown(result), flush=True)
    print(f"{APP}: render on {len(result.images)} images; results: {output_dir / 'results.json'}", flush=True)
    return {**R.to_json_dict(result), **extra}


# Tasks that score files instead of a checkpoint.
FILE_TASKS: dict[str, Callable[[DictConfig], dict[str, Any]]] = {"render": _render_task}


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """The body of ``sparse3d-eval``; returns the results dict (also written to results.json)."""
    start = time.perf_counter()
    if cfg.task in FILE_TASKS:
        return FILE_TASKS[cfg.task](cfg)
    if cfg.task not in TASKS:
        available = ", ".join(sorted([*TASKS, *FILE_TASKS]))
        raise UserError(f"unknown eval task {cfg.task!r}; available: {available}")
    if OmegaConf.is_missing(cfg, "ckpt_path") or not str(cfg.ckpt_path).strip():
        raise UserError("ckpt_path is required: sparse3d-eval ckpt_path=<run dir or .ckpt file>")
    ckpt_path = resolve_checkpoint_path(str(cfg.ckpt_path))
    state = load_checkpoint(ckpt_path, map_location="cpu")
    merged = merge_saved_config(state.get("config"), cfg)

    seed_everything(cfg.seed)
    model = H.build(merged.model)
    try:
        missing, unexpected = model.load_state_dict(state["model"], strict=bool(cfg.strict))
    except RuntimeError as exc:
        raise UserError(f"checkpoint {ckpt_path} does not match the model: {exc}") from exc
    if missing or unexpected:
        log.warning("non-strict load: missing=%s unexpected=%s", list(missing), list(unexpected))

    metrics, num_samples = TASKS[cfg.task](model, merged, cfg)
    output_dir = H.hydra_output_dir()
    results = H.jsonable(
        {
            "task": cfg.task,
            "experiment": cfg.experiment_name,
            "checkpoint": str(ckpt_path),
            "step": int(state.get("step", 0)),
            "num_samples": num_samples,
            "metrics": metrics,
            "model": OmegaConf.select(merged, "model._target_", default=None),
            "device": str(cfg.device),
            "wall_time_s": time.perf_counter() - start,
            "output_dir": str(output_dir),
        }
    )
    atomic_write_json(output_dir / "results.json", results)
    print(f"{APP}: {cfg.task} on {num_samples} samples, checkpoint step {results['step']}", flush=True)
    for key, value in metrics.items():
        print(f"  {key}: {value:.6g}", flush=True)
    print(f"  results: {output_dir / 'results.json'}", flush=True)
    return results


@hydra.main(version_base=H.VERSION_BASE, config_path=H.CONFIG_PATH, config_name="eval")
@H.guarded(APP)
def _hydra_entry(cfg: DictConfig) -> None:
    run_eval(cfg)


def main() -> None:
    """Console-script entry point."""
    _hydra_entry()


if __name__ == "__main__":
    main()
