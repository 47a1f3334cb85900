"""Distributed (torchrun / DDP) helpers.

Everything here degrades to a no-op in a single process, so the trainer calls the same functions
whether or not it was launched with ``torchrun``. The environment variables read are the ones torchrun
sets: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and ``TORCHELASTIC_RUN_ID``, and two of sparse3d's own:

* ``SPARSE3D_DIST_TIMEOUT_S``: how long joining the process group and every collective wait for the other
  ranks before failing (default 300 for gloo/CPU, 1800 for nccl). Work that rank 0 does alone between two
  collectives (generating a data set, validating, writing a checkpoint) must fit in it.
* ``SPARSE3D_HANG_DUMP_S`` (off by default; for CI and debugging): a rank still running this many seconds
  after it started joining the process group prints every thread's stack to stderr and exits with status 1,
  and a rank stopped with SIGTERM (as torchrun stops the others when one fails) prints its stacks as it dies.
  Ranks on one host share torchrun's stderr, so local rank k waits k * HANG_DUMP_STAGGER_S more seconds:
  the dumps come one after another instead of interleaving line fragments.

Every rank of a multi-process job also prints its threads' stacks on ``kill -USR1 <pid>`` and keeps running.
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import torch
import torch.distributed as dist

from sparse3d.utils.errors import UserError

log = logging.getLogger(__name__)

TIMEOUT_ENV = "SPARSE3D_DIST_TIMEOUT_S"
HANG_DUMP_ENV = "SPARSE3D_HANG_DUMP_S"
DEFAULT_TIMEOUT_S = {"gloo": 300.0, "nccl": 1800.0}
HANG_DUMP_STAGGER_S = 1.5


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


def _env_seconds(name: str) -> float | None:
    """A positive number of seconds from environment variable ``name``; None when unset or empty."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{name} must be a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise UserError(f"{name} must be a positive, finite number of seconds, got {text!r}")
    return value


def collective_timeout_s(backend: str) -> float:
    """How long a rendezvous or collective of ``backend`` waits for the other ranks before failing.

    ``SPARSE3D_DIST_TIMEOUT_S`` when set, else :data:`DEFAULT_TIMEOUT_S` (unknown backends: the nccl value).
    """
    return _env_seconds(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S.get(backend, DEFAULT_TIMEOUT_S["nccl"])


_timeout_s: float | None = None  # the process group's collective timeout, once initialised here


def init_distributed(device_type: str, timeout_s: float | None = None) -> DistInfo:
    """Initialise the default process group when launched with ``WORLD_SIZE > 1``.

    ``gloo`` is used for CPU training and ``nccl`` for CUDA; ``timeout_s`` defaults to
    :func:`collective_timeout_s`. The stack dumps of :func:`install_hang_diagnostics` are armed before the
    rendezvous, so a rank stuck joining is covered too. Calling it twice, or in a single process, is harmless;
    the returned :class:`DistInfo` describes the job either way.
    """
    global _timeout_s
    info = dist_info_from_env()
    if not info.enabled:
        return info
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        timeout = collective_timeout_s(backend) if timeout_s is None else float(timeout_s)
        install_hang_diagnostics()
        try:
            if device_type == "cuda":
                torch.cuda.set_device(info.local_rank)
            dist.init_process_group(
                backend=backend,
                rank=info.rank,
                world_size=info.world_size,
                timeout=datetime.timedelta(seconds=timeout),
            )
        except BaseException:
            remove_hang_diagnostics()
            raise
        _timeout_s = timeout
        log.info("initialised process group: backend=%s rank=%d/%d, collective timeout %.0f s",
                 backend, info.rank, info.world_size, timeout)
    return current_dist_info()


def destroy_distributed() -> None:
    """Tear down the default process group if one exists, and the stack dumps armed with it."""
    global _timeout_s
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _timeout_s = None
    remove_hang_diagnostics()


# ----------------------------------------------------------------------------------------- hang diagnostics
_dump_signals: list[int] = []


def _dump_file() -> TextIO:
    """The stream faulthandler writes to: stderr, or the interpreter's original one if stderr has no fd."""
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.fileno()
                return stream
        except (AttributeError, OSError, ValueError):
            continue
    raise OSError("no stderr file descriptor for stack dumps")


def install_hang_diagnostics() -> None:
    """Arm stack dumps for this rank: on SIGUSR1 always; with ``SPARSE3D_HANG_DUMP_S`` also on SIGTERM and
    once that many seconds (plus the local rank's stagger) have passed, then the process exits with status 1.
    Idempotent."""
    if _dump_signals or not hasattr(signal, "SIGUSR1"):
        return
    deadline = _env_seconds(HANG_DUMP_ENV)
    try:
        out = _dump_file()
    except OSError:
        log.warning("no stderr file descriptor: stack dumps on hang are off")
        return
    faulthandler.register(signal.SIGUSR1, file=out, all_threads=True, chain=False)
    _dump_signals.append(signal.SIGUSR1)
    if deadline is not None:
        faulthandler.register(signal.SIGTERM, file=out, all_threads=True, chain=True)
        _dump_signals.append(signal.SIGTERM)
        local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        faulthandler.dump_traceback_later(deadline + local_rank * HANG_DUMP_STAGGER_S, exit=True, file=out)


def remove_hang_diagnostics() -> None:
    """Undo :func:`install_hang_diagnostics` (safe to call when nothing is armed)."""
    if signal.SIGTERM in _dump_signals:  # armed together with the deadline
        faulthandler.cancel_dump_traceback_later()
    while _dump_signals:
        faulthandler.unregister(_dump_signals.pop())


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """Name the collective and the timeout when a collective fails (a peer died, stalled or took another path)."""
    try:
        yield
    except RuntimeError as exc:
        info = current_dist_info()
        limit = f"{_timeout_s:.0f} s" if _timeout_s is not None else "the process group's timeout"
        raise RuntimeError(
            f"rank {info.rank}/{info.world_size}: {what} failed: {exc}\n(collectives wait up to {limit} for "
            f"every rank, set with {TIMEOUT_ENV}; the other ranks' logs and stack dumps show where they are)"
        ) from exc


def is_distributed() -> bool:
    """True when a process group with more than one member is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier(what: str = "barrier") -> None:
    """Synchronise all ranks (no-op in a single process); ``what`` names it in the error if it fails."""
    if is_distributed():
        with _collective(what):
            dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks in place and return it (identity in a single process)."""
    if is_distributed():
        with _collective("all_reduce"):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it (identity in a single process)."""
    if is_distributed():
        with _collective("all_reduce"):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from ``src`` to every rank and return it."""
    if not is_distributed():
        return obj
    holder = [obj]
    with _collective("broadcast_object"):
        dist.broadcast_object_list(holder, src=src)
    return holder[0]


def gather_objects(obj: Any) -> list[Any]:
    """Collect one picklable object per rank, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    with _collective("gather_objects"):
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
