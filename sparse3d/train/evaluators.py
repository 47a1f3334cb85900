"""Evaluators run by ``sparse3d-eval evaluator=<name>``, and the validation evaluator of dataset-trained models.

An evaluator is any object built from ``configs/evaluator/<name>.yaml`` with a ``run(output_dir)`` method
(:class:`Evaluator`) that scores something, writes its files into ``output_dir`` (at least
``results.json``) and returns an :class:`EvalReport`. The CLI composes, builds, runs and prints; a new pipeline
adds an evaluator class and one YAML file.

:class:`ValidationEvaluator` rebuilds a training run's model and data from the config saved in its checkpoint
(user overrides merged on top) and runs the model's validation protocol (``validation_step`` +
``aggregate_validation``) over ``data.val``; :func:`load_trained_model` is that rebuild on its own (the inference
tools use it too).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from omegaconf import DictConfig, OmegaConf
from torch import nn

from sparse3d.io.atomic import atomic_write_json
from sparse3d.train.checkpoint import load_checkpoint, resolve_checkpoint_path
from sparse3d.train.data_spec import DataSpec, build
from sparse3d.train.trainer import evaluate
from sparse3d.utils.errors import UserError
from sparse3d.utils.seed import seed_everything

log = logging.getLogger("sparse3d.eval")

RESULTS_NAME = "results.json"


@dataclass(frozen=True)
class EvalReport:
    """What an evaluator produced: the results (as written to ``results.json``) and a text to print."""

    results: dict[str, Any]
    text: str


@runtime_checkable
class Evaluator(Protocol):
    """Scores predictions or a checkpoint and writes ``results.json`` (and more) into ``output_dir``."""

    def run(self, output_dir: Path) -> EvalReport: ...


def merge_saved_config(saved: dict[str, Any] | None, overrides: DictConfig | dict[str, Any] | None,
                       paths: Any = None) -> DictConfig:
    """Combine a checkpoint's resolved ``model``/``data`` configs with the user's ``model``/``data`` nodes.

    A user node with a different ``_target_`` replaces the saved one; otherwise it is merged on top.
    Interpolations in user nodes (e.g. ``${data.num_classes}``) resolve against the merged config, and
    ``paths`` (this machine's) replace the saved ones so ``${paths.data_dir}`` means the local data dir.
    """
    saved = saved or {}
    overrides = overrides or {}
    merged = OmegaConf.create({
        "paths": OmegaConf.to_container(paths, resolve=True) if isinstance(paths, DictConfig) else paths,
        "model": saved.get("model"),
        "data": saved.get("data"),
    })
    for key in ("model", "data"):
        user = overrides.get(key)
        if user is None:
            continue
        user_node = OmegaConf.to_container(user, resolve=False) if isinstance(user, DictConfig) else user
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


@dataclass(frozen=True)
class TrainedModel:
    """A model rebuilt from a training checkpoint.

    ``model`` holds the checkpoint's weights (in eval mode, on the CPU); ``config`` is the merged ``paths`` /
    ``model`` / ``data`` config it was built from; ``checkpoint`` the ``.ckpt`` file read; ``step`` its
    optimizer step."""

    model: nn.Module
    config: DictConfig
    checkpoint: Path
    step: int


def load_trained_model(ckpt_path: str | Path | None, model: Any = None, data: Any = None, paths: Any = None,
                       strict: bool = True, usage: str = "ckpt_path=<run dir or .ckpt file>") -> TrainedModel:
    """Rebuild a dataset-trained model from a run directory (its ``checkpoints/last.ckpt``) or a ``.ckpt`` file.

    The model is built from the config saved in the checkpoint with the user's ``model``/``data`` nodes merged
    on top (:func:`merge_saved_config`), then the saved weights are loaded (``strict`` state-dict loading; a
    non-strict load logs what was missing or unexpected). Every problem with the checkpoint (missing, not a
    checkpoint, a per-scene run, weights that do not fit the model) is a one-line :class:`UserError`;
    ``usage`` is shown when ``ckpt_path`` is empty.
    """
    if ckpt_path is None or not str(ckpt_path).strip() or str(ckpt_path) == "???":
        raise UserError(f"a checkpoint is required: {usage}")
    resolved = resolve_checkpoint_path(ckpt_path)
    state = load_checkpoint(resolved, map_location="cpu")
    if "model" not in state or state.get("kind") == "scene":
        raise UserError(f"{resolved} is not a dataset-trained model checkpoint; per-scene runs keep their "
                        "test scores in summary.json")
    merged = merge_saved_config(state.get("config"), {"model": model, "data": data}, paths)
    built = build(merged.model)
    try:
        missing, unexpected = built.load_state_dict(state["model"], strict=strict)
    except RuntimeError as exc:
        raise UserError(f"checkpoint {resolved} does not match the model: {exc}") from exc
    if missing or unexpected:
        log.warning("non-strict load: missing=%s unexpected=%s", list(missing), list(unexpected))
    return TrainedModel(built.eval(), merged, resolved, int(state.get("step", 0)))


class ValidationEvaluator:
    """Re-evaluate a dataset-trained model from its checkpoint on its validation data.

    Args:
        ckpt_path: a ``.ckpt`` file or a run directory holding ``checkpoints/last.ckpt``.
        model, data: nodes merged over the checkpoint's saved ones (see :func:`merge_saved_config`).
        paths: this machine's ``paths`` node (for interpolations in the saved data config).
        batch_size, num_workers: override the data config's values (None keeps them).
        strict: strict state-dict loading.
    """

    def __init__(self, ckpt_path: str | None, model: Any = None, data: Any = None, paths: Any = None,
                 batch_size: int | None = None, num_workers: int | None = None, strict: bool = True,
                 device: str = "auto", amp: bool = False, amp_dtype: str = "float16", seed: int = 0,
                 experiment: str = "default", name: str = "validation") -> None:
        if ckpt_path is None or not str(ckpt_path).strip() or str(ckpt_path) == "???":
            raise UserError("ckpt_path is required: sparse3d-eval ckpt_path=<run dir or .ckpt file>")
        for key, value, minimum in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if value is not None and int(value) < minimum:
                raise UserError(f"{key} must be >= {minimum}, got {value}")
        self.ckpt_path = str(ckpt_path)
        self.overrides = {"model": model, "data": data}
        self.paths = paths
        self.batch_size, self.num_workers = batch_size, num_workers
        self.strict, self.device, self.amp, self.amp_dtype = bool(strict), str(device), bool(amp), str(amp_dtype)
        self.seed = int(seed)
        self.experiment, self.name = experiment, name

    def run(self, output_dir: Path) -> EvalReport:
        start = time.perf_counter()
        seed_everything(self.seed)
        trained = load_trained_model(self.ckpt_path, paths=self.paths, strict=self.strict, **self.overrides)
        model, merged, ckpt_path = trained.model, trained.config, trained.checkpoint
        data = DataSpec.from_config(merged.data)
        data.prepare()
        dataset = data.build_val()
        if dataset is None:
            raise UserError("the data config has no 'val' node to evaluate on")
        metrics = evaluate(
            model, dataset, batch_size=self.batch_size or data.batch_size,
            num_workers=data.num_workers if self.num_workers is None else int(self.num_workers),
            collate_fn=data.build_collate(), device=self.device, amp=self.amp, amp_dtype=self.amp_dtype,
            seed=self.seed,
        )
        results = {
            "evaluator": self.name,
            "experiment": self.experiment,
            "checkpoint": str(ckpt_path),
            "step": trained.step,
            "num_samples": len(dataset),
            "metrics": metrics,
            "model": OmegaConf.select(merged, "model._target_", default=None),
            "device": self.device,
            "wall_time_s": time.perf_counter() - start,
            "output_dir": str(output_dir),
        }
        atomic_write_json(output_dir / RESULTS_NAME, results)
        lines = [f"validation on {len(dataset)} samples, checkpoint step {results['step']}"]
        lines += [f"  {key}: {value:.6g}" for key, value in metrics.items()]
        lines.append(f"  results: {output_dir / RESULTS_NAME}")
        return EvalReport(results, "\n".join(lines))
