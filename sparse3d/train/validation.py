"""Validation loop shared by :class:`~sparse3d.train.Trainer` and ``sparse3d-eval``.

Model protocol (optional parts):
  * ``model.validation_step(batch) -> dict[str, Tensor]`` — per-batch outputs (scalars or tensors such
    as confusion matrices). Falls back to ``training_step`` under ``no_grad`` when absent.
  * ``model.aggregate_validation(outputs: list[dict]) -> dict[str, float]`` — combines the per-batch
    outputs (e.g. sums confusion matrices, then computes mIoU). Default: mean of each scalar key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from sparse3d.train.checkpoint import preserved_rng_state
from sparse3d.utils.device import move_to_device


def is_scalar(value: Any) -> bool:
    """True for python numbers and one-element tensors (the values that can be logged)."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def detach_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Detach tensors and move them to CPU so a list of outputs does not pin device memory."""
    result: dict[str, Any] = {}
    for key, value in outputs.items():
        result[key] = value.detach().cpu() if isinstance(value, torch.Tensor) else value
    return result


def default_aggregate(outputs: list[Mapping[str, Any]]) -> dict[str, float]:
    """Mean over batches of every scalar entry (non-scalar entries need ``aggregate_validation``)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for output in outputs:
        for key, value in output.items():
            if is_scalar(value):
                sums[key] = sums.get(key, 0.0) + float(value)
                counts[key] = counts.get(key, 0) + 1
    return {key: sums[key] / counts[key] for key in sums}


def to_float_metrics(metrics: Mapping[str, Any], source: str) -> dict[str, float]:
    """Coerce an aggregate dict to ``{str: float}`` with an error that names the offending key."""
    result: dict[str, float] = {}
    for key, value in metrics.items():
        if not is_scalar(value):
            raise TypeError(f"{source} must return scalar values; key {key!r} is {type(value).__name__}")
        result[str(key)] = float(value)
    return result


def run_validation(
    model: torch.nn.Module,
    batches: Iterable[Any],
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> dict[str, float]:
    """Run the validation protocol over ``batches`` and return aggregated float metrics.

    The model is put in eval mode and restored afterwards, gradients are off, and all RNG states are
    restored on exit, so validating never changes the training trajectory.
    """
    step_fn = getattr(model, "validation_step", None)
    if step_fn is None:
        step_fn = model.training_step
    aggregate = getattr(model, "aggregate_validation", None)
    was_training = model.training
    outputs: list[dict[str, Any]] = []
    model.eval()
    try:
        with torch.no_grad(), preserved_rng_state():
            iterator = progress(batches) if progress is not None else batches
            for batch in iterator:
                batch = move_to_device(batch, device)
                with autocast() if autocast is not None else contextlib.nullcontext():
                    out = step_fn(batch)
                if isinstance(out, torch.Tensor):
                    out = {"loss": out}
                if not isinstance(out, Mapping):
                    raise TypeError(
                        f"{type(model).__name__}.validation_step must return a dict, got {type(out).__name__}"
                    )
                outputs.append(detach_outputs(out))
    finally:
        model.train(was_training)
    if not outputs:
        return {}
    if aggregate is not None:
        metrics = to_float_metrics(aggregate(outputs), f"{type(model).__name__}.aggregate_validation")
    else:
        metrics = default_aggregate(outputs)
    return metrics
