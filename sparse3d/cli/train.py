"""``sparse3d-train``: compose a config, build data/model/optimizer, run the shared trainer.

Examples::

    sparse3d-train                                   # quick-start demo (experiment=quickstart)
    sparse3d-train experiment=quickstart trainer.max_steps=200 trainer.device=cpu
    sparse3d-train -m trainer.seed=0,1,2             # sweep
    sparse3d-train resume=true                       # continue the newest run of this experiment
    torchrun --standalone --nproc_per_node=2 $(which sparse3d-train) trainer.device=cpu

Writes ``<run dir>/summary.json``, ``checkpoints/``, ``tb/`` and ``model.safetensors`` (rank 0 only).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from sparse3d.cli import _hydra as H
from sparse3d.train import distributed as D
from sparse3d.train.checkpoint import CHECKPOINT_DIR, LAST_NAME, atomic_write_json
from sparse3d.train.trainer import WEIGHTS_NAME, Trainer
from sparse3d.utils.device import resolve_device
from sparse3d.utils.seed import seed_everything

log = logging.getLogger("sparse3d.cli.train")

APP = "sparse3d-train"


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def run_train(cfg: DictConfig) -> dict[str, Any]:
    """The body of ``sparse3d-train``; returns the summary dict (also written to summary.json)."""
    wall_start = time.perf_counter()
    output_dir = H.hydra_output_dir()
    env = D.dist_info_from_env()
    device = resolve_device(cfg.trainer.device, env.local_rank if env.enabled else None)
    info = D.init_distributed(device.type)
    H.quiet_console_on_worker_ranks(info)
    H.warn_if_rank_dirs_may_split(info)
    try:
        log.info("run dir %s (rank %d/%d)", output_dir, info.rank, info.world_size)
        H.prepare_data(cfg.data)
        train_ds, val_ds, collate_fn = H.build_datasets(cfg.data)
        # Seed right before building the model so its initialisation does not depend on the data code.
        seed_everything(cfg.trainer.seed)
        model = H.build(cfg.model)
        optimizer = H.build(cfg.optimizer) if cfg.get("optimizer") is not None else None
        scheduler = H.build(cfg.scheduler) if cfg.get("scheduler") is not None else None

        trainer = Trainer(cfg.trainer, output_dir, full_config=cfg, runs_root=H.runs_root(cfg))
        metrics = trainer.fit(
            model,
            train_ds,
            val_ds,
            collate_fn=collate_fn,
            optimizer=optimizer,
            scheduler=scheduler,
            batch_size=int(OmegaConf.select(cfg, "data.batch_size", default=1)),
            num_workers=int(OmegaConf.select(cfg, "data.num_workers", default=0)),
            resume=cfg.resume,
        )
        summary = _summary(cfg, model, trainer, metrics, output_dir, wall_start)
        if info.is_main:
            atomic_write_json(output_dir / "summary.json", summary)
            _print_summary(summary)
        D.barrier()
        return summary
    finally:
        D.destroy_distributed()


def _summary(
    cfg: DictConfig, model: torch.nn.Module, trainer: Trainer, metrics: dict[str, float], output_dir: Any,
    wall_start: float,
) -> dict[str, Any]:
    total, trainable = count_parameters(model)
    model_info: dict[str, Any] = {
        "target": OmegaConf.select(cfg, "model._target_", default=type(model).__qualname__),
        "num_parameters": total,
        "num_trainable_parameters": trainable,
    }
    extra = getattr(model, "summary", None)
    if callable(extra):
        model_info.update(H.jsonable(extra()))
    train_metrics = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("train/")}
    val_metrics = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("val/")}
    ckpt = output_dir / CHECKPOINT_DIR / LAST_NAME
    weights = output_dir / WEIGHTS_NAME
    return H.jsonable(
        {
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
            "steps_per_s": metrics.get("time/steps_per_s"),
            "num_parameters": total,
            "model": model_info,
            "device": str(trainer.device),
            "world_size": trainer.dist.world_size,
            "seed": int(cfg.trainer.seed),
            "resumed_from": str(trainer.resumed_from) if trainer.resumed_from else None,
            "checkpoint": str(ckpt) if ckpt.exists() else None,
            "weights": str(weights) if weights.exists() else None,
        }
    )


def _print_summary(summary: dict[str, Any]) -> None:
    """A short human-readable recap on stdout (the JSON has everything)."""
    loss = summary.get("final_train_loss")
    lines = [
        f"{APP}: {summary['experiment']} finished {summary['steps']} steps in {summary['wall_time_s']:.1f} s "
        f"on {summary['device']} (x{summary['world_size']})",
        f"  train loss {loss:.4f}" if isinstance(loss, float) else "  train loss n/a",
    ]
    if summary["validation"]:
        lines.append("  validation: " + ", ".join(f"{k} {v:.4g}" for k, v in summary["validation"].items()
                                                  if isinstance(v, (int, float))))
    lines.append(f"  parameters: {summary['num_parameters']:,}")
    lines.append(f"  outputs: {summary['output_dir']} (summary.json, checkpoints/, tb/, model.safetensors)")
    print("\n".join(lines), flush=True)


@hydra.main(version_base=H.VERSION_BASE, config_path=H.CONFIG_PATH, config_name="train")
@H.guarded(APP)
def _hydra_entry(cfg: DictConfig) -> float | None:
    summary = run_train(cfg)
    loss = summary.get("final_train_loss")
    return float(loss) if isinstance(loss, (int, float)) else None  # sweepers may optimise it


def main() -> None:
    """Console-script entry point."""
    _hydra_entry()


if __name__ == "__main__":
    main()
