"""Shared plumbing of the sparse3d Hydra console scripts.

* ``CONFIG_PATH`` is ``pkg://sparse3d.configs``: a relative ``config_path`` would be resolved next to the
  entry-point module and break for installed console scripts.
* Importing this module registers the structured-config schemas and resolvers before Hydra composes.
* :func:`guarded` turns user mistakes (:class:`~sparse3d.utils.errors.UserError`, bad ``_target_``,
  missing files) into a one-line message and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sparse3d.config_schema import register
from sparse3d.train import distributed as D
from sparse3d.utils.errors import UserError

register()

CONFIG_PATH = "pkg://sparse3d.configs"
VERSION_BASE = "1.3"
EXIT_USER_ERROR = 2

log = logging.getLogger("sparse3d.cli")

F = TypeVar("F", bound=Callable[..., Any])


def guarded(app_name: str) -> Callable[[F], F]:
    """Decorate a Hydra task function so user errors exit cleanly with a short message.

    ``HYDRA_FULL_ERROR=1`` (Hydra's own switch) re-raises instead, for debugging.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (UserError, InstantiationException, OmegaConfBaseException, FileNotFoundError) as exc:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                message = _describe(exc)
                _log_to_files(logging.ERROR, message)
                print(f"{app_name}: error: {message}", file=sys.stderr, flush=True)
                print("(set HYDRA_FULL_ERROR=1 for the full traceback)", file=sys.stderr, flush=True)
                raise SystemExit(EXIT_USER_ERROR) from None

        return wrapper  # type: ignore[return-value]

    return decorate


def _log_to_files(level: int, message: str) -> None:
    """Record a message in the run's log file(s) only; the console gets it once, on stderr."""
    record = log.makeRecord(log.name, level, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and level >= handler.level:
            handler.handle(record)


def _describe(exc: BaseException) -> str:
    """One readable message from an exception and its causes (Hydra wraps constructor errors)."""
    parts = [str(exc).strip() or type(exc).__name__]
    cause = exc.__cause__
    while cause is not None and len(parts) < 4:
        text = f"{type(cause).__name__}: {cause}".strip()
        if text not in parts[-1]:
            parts.append(text)
        cause = cause.__cause__
    return "\n  caused by ".join(parts)


# Hydra flags that take a value as the next token (see `<app> --help`).
_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c",
                "--package", "-p", "--experimental-rerun", "--shell-completion", "-sc"}
_INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def rewrite_positional_group(argv: Sequence[str], group: str) -> list[str]:
    """Turn the first bare word into ``group=<word>``: ``prog [flags] NAME k=v`` → ``prog [flags] group=NAME k=v``.

    Hydra has no positional arguments; this keeps ``sparse3d-data lidar`` working. Flags and their values
    (``--config-dir DIR``) and overrides (anything with ``=``) are left alone, except that ``-m`` is moved
    before the overrides so ``sparse3d-data lidar -m seed=0,1`` works.
    """
    args = list(argv)
    index = 1
    while index < len(args):
        token = args[index]
        if token.startswith("-"):
            takes_value = token in _VALUE_FLAGS or (
                token in {"--info", "-i"} and index + 1 < len(args) and args[index + 1] in _INFO_CHOICES
            )
            index += 2 if takes_value else 1
            continue
        if token and "=" not in token:
            args[index] = f"{group}={token}"
        break
    return _hoist_multirun_flag(args)


def _hoist_multirun_flag(argv: list[str]) -> list[str]:
    """Move ``-m``/``--multirun`` in front of the overrides: Hydra's argparse takes the overrides as one
    positional list, so ``prog NAME -m k=a,b`` (override, flag, overrides) would otherwise be rejected."""
    flags = [a for a in argv[1:] if a in ("-m", "--multirun")]
    return [argv[0], *flags, *(a for a in argv[1:] if a not in ("-m", "--multirun"))]


def hydra_output_dir() -> Path:
    """The run directory Hydra created (Hydra >= 1.2 does not chdir into it)."""
    return Path(HydraConfig.get().runtime.output_dir)


def runs_root(cfg: DictConfig) -> Path:
    """``<output_root>/<task>/<experiment>``: where ``resume=true`` looks for earlier runs."""
    return Path(str(cfg.paths.output_root)) / str(cfg.task_name) / str(cfg.experiment_name)


def quiet_console_on_worker_ranks(info: D.DistInfo) -> None:
    """On ranks > 0 keep INFO records in the per-rank log file but only warnings on the console."""
    if info.is_main:
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)


def warn_if_rank_dirs_may_split(info: D.DistInfo) -> None:
    """Ranks share a run dir only through TORCHELASTIC_RUN_ID; say so when it is unusable."""
    if not info.enabled:
        return
    run_id = D.torchrun_run_id()
    if run_id is None:
        log.warning("WORLD_SIZE>1 without torchrun: each rank may create its own run directory; launch with torchrun")
    elif run_id == "none":
        log.warning(
            "torchrun without --standalone or --rdzv-id: the run dir is named torchrun_none and reused by every "
            "such job; pass --rdzv-id=<unique id> (e.g. $SLURM_JOB_ID)"
        )


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with plain python containers for list/dict arguments."""
    return instantiate(node, _convert_="all", **kwargs)


def prepare_data(data_cfg: DictConfig | Mapping[str, Any]) -> None:
    """Generate the data set when ``generate_if_missing`` is set and ``root`` does not exist yet.

    Rank 0 generates; the other ranks wait at a barrier so nobody reads half-written files.
    """
    root = _select(data_cfg, "root")
    if root is None:
        return
    root_path = Path(str(root))
    if root_path.exists():
        return
    generator = _select(data_cfg, "generator")
    if not _select(data_cfg, "generate_if_missing") or generator is None:
        raise UserError(
            f"data root {root_path} does not exist; generate it (e.g. `sparse3d-data lidar out_dir={root_path}`), "
            "point data.root / paths.data_dir at your data, or set data.generate_if_missing=true"
        )
    if D.current_dist_info().is_main:
        log.info("data root %s is missing: generating it with %s", root_path, _select(generator, "_target_"))
        build(generator)
    D.barrier()
    if not root_path.exists():
        raise UserError(f"the data generator finished but {root_path} still does not exist")


def build_datasets(data_cfg: DictConfig) -> tuple[Any, Any, Any]:
    """Instantiate ``data.train``, optional ``data.val`` and optional ``data.collate_fn``."""
    train_node = _select(data_cfg, "train")
    if train_node is None:
        raise UserError("the data config has no 'train' node (a _target_ building the training dataset)")
    train = build(train_node)
    val_node = _select(data_cfg, "val")
    val = build(val_node) if val_node is not None else None
    collate_node = _select(data_cfg, "collate_fn")
    collate = build(collate_node) if collate_node is not None else None
    return train, val, collate


def _select(cfg: Any, key: str) -> Any:
    if cfg is None:
        return None
    if isinstance(cfg, DictConfig):
        return OmegaConf.select(cfg, key, default=None)
    if isinstance(cfg, Mapping):
        return cfg.get(key)
    return getattr(cfg, key, None)


def jsonable(value: Any) -> Any:
    """Convert tensors, numpy scalars, paths and containers into JSON-serialisable values."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.detach().cpu().tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return None  # NaN is not valid JSON
    return value
