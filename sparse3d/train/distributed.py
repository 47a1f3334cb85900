"""Distributed (torchrun / DDP) helpers.

Everything here degrades to a no-op in a single process, so the trainer calls the same functions
whether or not it was launched with ``torchrun``. The environment variables read are the ones torchrun
sets: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and ``TORCHELASTIC_RUN_ID``.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job. ``world_size == 1`` means plain single-process training."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 is the only process that writes files (checkpoints, TensorBoard, JSON)."""
        return self.rank == 0


def dist_info_from_env() -> DistInfo:
    """Read rank/world size from torchrun's environment variables (defaults: single process)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
    )


def current_dist_info() -> DistInfo:
    """The info of the initialised process group, or the environment's when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        env = dist_info_from_env()
        return DistInfo(rank=dist.get_rank(), local_rank=env.local_rank, world_size=dist.get_world_size())
    return dist_info_from_env()


def init_distributed(device_type: str, timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the default process group when launched with ``WORLD_SIZE > 1``.

    ``gloo`` is used for CPU training and ``nccl`` for CUDA. Calling it twice, or in a single process,
    is harmless; the returned :class:`DistInfo` describes the job either way.
    """
    info = dist_info_from_env()
    if not info.enabled:
        return info
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(
            backend=backend,
            rank=info.rank,
            world_size=info.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        log.info("initialised process group: backend=%s rank=%d/%d", backend, info.rank, info.world_size)
    return current_dist_info()


def destroy_distributed() -> None:
    """Tear down the default process group if one exists (safe to call unconditionally)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True when a process group with more than one member is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Synchronise all ranks (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks in place and return it (identity in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it (identity in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from ``src`` to every rank and return it."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def gather_objects(obj: Any) -> list[Any]:
    """Collect one picklable object per rank, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def torchrun_run_id() -> str | None:
    """The torchrun job id shared by all ranks, or ``None`` outside torchrun."""
    return os.environ.get("TORCHELASTIC_RUN_ID")


class TrainingStepAdapter(torch.nn.Module):
    """Routes ``forward(batch)`` to ``model.training_step(batch)``.

    DistributedDataParallel only synchronises gradients for computation that goes through the wrapped
    module's ``forward``. Models in sparse3d expose ``training_step`` instead (their ``forward`` is free
    for inference), so the trainer wraps this adapter, not the model, in DDP and calls ``ddp(batch)``.
    The adapter owns no parameters of its own; state dicts are always taken from the unwrapped model.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> Any:
        return self.model.training_step(batch)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP and :class:`TrainingStepAdapter` wrappers (and nothing else)."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(model, TrainingStepAdapter):
            model = model.model
        else:
            return model
