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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig
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
    """One readable message from an exception and its causes (Hydra wraps constructor errors).

    A :class:`UserError` raised by a constructor that Hydra called is already written for the user: it is shown
    alone, without Hydra's wrapping.
    """
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, UserError):
            return str(cause).strip()
        cause = cause.__cause__
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
