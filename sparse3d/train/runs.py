"""A whole training run of a dataset-trained model from a composed config: data, model, optimizer, trainer,
``summary.json``. ``sparse3d-train`` calls :func:`train_model`; scripts and notebooks can too."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sparse3d.config_schema import validate_config
from sparse3d.io.atomic import atomic_write_json
from sparse3d.train import distributed as D
from sparse3d.train.checkpoint import CHECKPOINT_DIR, LAST_NAME
from sparse3d.train.data_spec import DataSpec, build
from sparse3d.train.session import process_session
from sparse3d.train.trainer import WEIGHTS_NAME, Trainer
from sparse3d.utils.jsonable import jsonable
from sparse3d.utils.seed import seed_everything


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def train_model(
    cfg: DictConfig,
    data: DataSpec,
    output_dir: Path,
    runs_root: Path,
    on_session: Callable[[D.DistInfo], None] | None = None,
) -> dict[str, Any]:
    """Build and train ``cfg.model`` on ``data``; returns the summary (rank 0 also writes summary.json).

    ``cfg`` holds ``model``, ``trainer``, optional ``optimizer``/``scheduler`` (``_partial_`` factories),
    ``resume``, ``task_name`` and ``experiment_name``. ``on_session`` runs once the process group exists
    (the CLI quiets worker ranks' consoles there). Value ranges are checked first
    (:func:`sparse3d.config_schema.validate_config`), before any data is generated or read.
    """
    validate_config(cfg)
    wall_start = time.perf_counter()
    with process_session(cfg.trainer.device) as session:
        if on_session is not None:
            on_session(session.dist)
        data.prepare()
        train_ds, val_ds, collate_fn = data.build_train(), data.build_val(), data.build_collate()
        # Seed right before building the model so its initialisation does not depend on the data code.
        seed_everything(cfg.trainer.seed)
        model = build(cfg.model)
        optimizer = build(cfg.optimizer) if cfg.get("optimizer") is not None else None
        scheduler = build(cfg.scheduler) if cfg.get("scheduler") is not None else None
        trainer = Trainer(cfg.trainer, output_dir, full_config=cfg, runs_root=runs_root)
        metrics = trainer.fit(
            model, train_ds, val_ds, collate_fn=collate_fn, optimizer=optimizer, scheduler=scheduler,
            batch_size=data.batch_size, num_workers=data.num_workers, resume=cfg.resume,
        )
        summary = _summary(cfg, model, trainer, metrics, output_dir, wall_start)
        if session.dist.is_main:
            atomic_write_json(output_dir / "summary.json", summary)
        D.barrier()
        return summary


def _summary(cfg: DictConfig, model: torch.nn.Module, trainer: Trainer, metrics: Mapping[str, float],
             output_dir: Path, wall_start: float) -> dict[str, Any]:
    total, trainable = count_parameters(model)
    model_info: dict[str, Any] = {
        "target": OmegaConf.select(cfg, "model._target_", default=type(model).__qualname__),
        "num_parameters": total,
        "num_trainable_parameters": trainable,
    }
    extra = getattr(model, "summary", None)
    if callable(extra):
        model_info.update(jsonable(extra()))
    train_metrics = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("train/")}
    val_metrics = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("val/")}
    ckpt = output_dir / CHECKPOINT_DIR / LAST_NAME
    weights = output_dir / WEIGHTS_NAME
    return jsonable({
        "task": cfg.task_name,
        "experiment": cfg.experiment_name,
        "output_dir": str(output_dir),
        "steps": int(metrics["step"]),
        "epochs": int(metrics["epoch"]),
        "final_train_loss": train_metrics.get("loss"),
        "final_train_loss_last_step": train_metrics.get("loss_last"),
        "train": train_metrics,
        "validation": val_metrics,
        "wall_time_s": time.perf_counter() - wall_start,
        "train_time_s": metrics.get("time/train_s"),
        "steps_per_s": metrics.get("time/steps_per_s"),  # excludes the first step (see first_step_s)
        "first_step_s": metrics.get("time/first_step_s"),
        "num_parameters": total,
        "model": model_info,
        "device": str(trainer.device),
        "world_size": trainer.dist.world_size,
        "seed": int(cfg.trainer.seed),
        "resumed_from": str(trainer.resumed_from) if trainer.resumed_from else None,
        "checkpoint": str(ckpt) if ckpt.exists() else None,
        "weights": str(weights) if weights.exists() else None,
    })


def _metric_line(label: str, metrics: Mapping[str, Any]) -> str:
    return f"  {label}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))


def print_summary(app: str, summary: Mapping[str, Any]) -> None:
    """A short human-readable recap on stdout of either kind of run (the JSON has everything); rank 0 only."""
    if not D.current_dist_info().is_main:
        return
    loss = summary.get("final_train_loss")
    where = f" (scene {summary['scene']})" if "scene" in summary else ""
    ranks = f" (x{summary['world_size']})" if "world_size" in summary else ""
    lines = [
        f"{app}: {summary.get('experiment')}{where} finished {summary['steps']} steps in "
        f"{summary['wall_time_s']:.1f} s on {summary['device']}{ranks}",
        f"  train loss {loss:.4f}" if isinstance(loss, float) else "  train loss n/a",
    ]
    if summary.get("validation"):
        lines.append(_metric_line("validation", summary["validation"]))
    if summary.get("test_initial"):
        lines.append(_metric_line("test views at step 0", summary["test_initial"]))
    if summary.get("test"):
        lines.append(_metric_line("test views", summary["test"]))
    speed, first = summary.get("steps_per_s"), summary.get("first_step_s")
    if isinstance(speed, float) and isinstance(first, float):
        lines.append(f"  speed: {speed:.3g} steps/s after the first step, which took {first:.1f} s (one-time set-up "
                     "such as kernel compilation)")
    if "num_parameters" in summary:
        lines.append(f"  parameters: {summary['num_parameters']:,}")
    files = "summary.json, checkpoints/, tb/, model.safetensors" if "scene" not in summary else \
        "summary.json, checkpoints/, tb/, renders/" + "".join(f", {Path(p).name}" for p in summary.get("exports", []))
    lines.append(f"  outputs: {summary['output_dir']} ({files})")
    print("\n".join(lines), flush=True)
