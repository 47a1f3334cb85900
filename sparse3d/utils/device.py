"""Device selection and moving nested batches to a device.

Configs name devices as strings ("auto", "cpu", "cuda", "cuda:N"); this module turns them into
``torch.device`` objects with a clear error instead of a CUDA runtime failure deep inside a model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import torch

from sparse3d.utils.errors import UserError

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(spec: str | torch.device, local_rank: int | None = None) -> torch.device:
    """Turn a device string into a ``torch.device``.

    ``auto`` picks CUDA when available. Under distributed training (``local_rank`` given) a bare
    ``cuda``/``auto`` maps to ``cuda:<local_rank>`` so each process gets its own GPU.
    """
    if isinstance(spec, torch.device):
        return spec
    text = str(spec).strip().lower()
    if not _DEVICE_RE.match(text):
        raise UserError(f"trainer.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"device {spec!r} requested but CUDA is not available (use trainer.device=cpu or auto)")
    if text == "cuda":
        index = local_rank if local_rank is not None else torch.cuda.current_device()
        return torch.device("cuda", index)
    index = int(text.split(":", 1)[1])
    if index >= torch.cuda.device_count():
        raise UserError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device("cuda", index)


def move_to_device(obj: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """Recursively move tensors inside dicts, lists, tuples, namedtuples and dataclasses to ``device``.

    Other objects exposing ``.to(device)`` (e.g. sparse tensor containers) are moved with that method;
    everything else (ints, strings, paths) is returned unchanged.
    """
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        moved = {key: move_to_device(value, device, non_blocking) for key, value in obj.items()}
        return moved if type(obj) is dict else _rebuild_mapping(obj, moved)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(move_to_device(value, device, non_blocking) for value in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to_device(value, device, non_blocking) for value in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {
            f.name: move_to_device(getattr(obj, f.name), device, non_blocking)
            for f in dataclasses.fields(obj)
            if f.init
        }
        return dataclasses.replace(obj, **changes)
    to = getattr(obj, "to", None)
    if callable(to) and not isinstance(obj, (str, bytes)):
        return to(device)
    return obj


def _rebuild_mapping(original: Mapping, moved: dict) -> Any:
    """Keep the mapping type (OrderedDict, defaultdict, ...) when it can be rebuilt from items."""
    try:
        return type(original)(moved)
    except TypeError:
        return moved
