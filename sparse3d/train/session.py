"""The one place where a process picks its device and joins (or starts) the process group.

``sparse3d-train``, ``sparse3d-eval``, :meth:`sparse3d.train.Trainer.fit` and the per-scene loop all enter
:func:`process_session`. The first entry resolves the device (``auto``/``cpu``/``cuda``/``cuda:N``; under
torchrun a bare ``cuda`` means ``cuda:<LOCAL_RANK>``) and initialises the default process group when
``WORLD_SIZE > 1``; nested entries reuse that session, so a CLI can set up the process before building data
and the trainer inside it does not do it a second time. The process group is destroyed by the entry that
created it, and only by that one.

Joining the group and every collective wait at most ``SPARSE3D_DIST_TIMEOUT_S`` seconds for the other ranks,
and each rank prints its threads' stacks on SIGUSR1 (and, with ``SPARSE3D_HANG_DUMP_S``, when it hangs or is
stopped): see :mod:`sparse3d.train.distributed`. Code between collectives must take the same path on every
rank, deciding from values every rank shares (e.g. :func:`~sparse3d.train.distributed.broadcast_object`), not
from the file system each rank reads at a different moment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from sparse3d.train import distributed as D
from sparse3d.utils.device import resolve_device
from sparse3d.utils.errors import UserError


@dataclass(frozen=True)
class Session:
    """The device this process computes on and its place in the job."""

    device: torch.device
    dist: D.DistInfo


_ACTIVE: list[Session] = []


def active_session() -> Session | None:
    """The innermost open session, or None outside :func:`process_session`."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextlib.contextmanager
def process_session(device: str | torch.device = "auto") -> Iterator[Session]:
    """Resolve ``device`` and start the process group if needed; yield the :class:`Session`.

    Inside an open session the same session is yielded again; asking for a different device there is an
    error (one process trains on one device).
    """
    outer = active_session()
    if outer is not None:
        wanted = resolve_device(device, outer.dist.local_rank if outer.dist.enabled else None)
        if wanted != outer.device:
            raise UserError(f"device {str(device)!r} requested inside a session already running on {outer.device}")
        _ACTIVE.append(outer)
        try:
            yield outer
        finally:
            _ACTIVE.pop()
        return
    env = D.dist_info_from_env()
    resolved = resolve_device(device, env.local_rank if env.enabled else None)
    owns_group = env.enabled and not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = D.init_distributed(resolved.type)
    session = Session(resolved, info)
    _ACTIVE.append(session)
    try:
        yield session
    finally:
        _ACTIVE.pop()
        if owns_group:
            D.destroy_distributed()
