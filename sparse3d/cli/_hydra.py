"""Shared plumbing of the sparse3d Hydra console scripts.

* ``CONFIG_PATH`` is ``pkg://sparse3d.configs``: a relative ``config_path`` would be resolved next to the
  entry-point module and break for installed console scripts.
* Importing this module registers the structured-config schemas and resolvers before Hydra composes.
* :func:`guarded` turns user mistakes (:class:`~sparse3d.utils.errors.UserError`, bad ``_target_``, bad
  values, unreadable or missing files: ``ValueError``/``OSError`` and the like raised while running) into one line
  ``<app>: error: <what>: <problem>`` and exit status 2 instead of a traceback, and removes the outputs the failed
  run had started (``out``/``out_dir``/``json`` paths that did not exist before it, their ``.NAME.partial``
  siblings, and anything registered with :func:`remove_on_failure`).
* Errors Hydra raises before the task function runs (an unknown config group option, an override that does not
  parse, an output folder that cannot be created) are reported the same way for the sparse3d console scripts.
* ``HYDRA_FULL_ERROR=1`` (Hydra's own switch) re-raises instead, with the full traceback, for debugging.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path, PurePath
from typing import Any, TypeVar

import hydra._internal.utils as _hydra_internal
import yaml
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
EXIT_INTERNAL_ERROR = 1

log = logging.getLogger("sparse3d.cli")

F = TypeVar("F", bound=Callable[..., Any])


USER_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    UserError, InstantiationException, OmegaConfBaseException, OSError, ValueError, EOFError, zipfile.BadZipFile,
    zlib.error, struct.error, yaml.YAMLError,
)
"""Exception types that mean "this input cannot be used" (bad value, unreadable or missing file): one line, exit 2.
``ValueError`` covers ``UnicodeDecodeError`` and ``json.JSONDecodeError``; ``OSError`` covers missing files,
permissions and folders where files were expected."""

OUTPUT_KEYS = ("out", "out_dir", "json", "table")
"""Top-level config keys naming what a console script writes; removed after a failed run when they did not exist
before it (work folders such as ``work_dir`` are caches a rerun resumes from, and are kept)."""

_APPS: dict[str, str] = {}  # console-script name or entry-module file -> app name, filled by guarded()
_pending_outputs: list[Path] = []


def _debug() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def remove_on_failure(*paths: str | os.PathLike[str]) -> None:
    """Register outputs the running command is about to create: if it fails, they are removed (files, folders and
    their ``.NAME.partial`` siblings). Paths that exist already are left alone (a failed run must not delete what
    an earlier one wrote). Only meaningful inside a :func:`guarded` task function."""
    for raw in paths:
        path = Path(raw).expanduser()
        for candidate in (path, path.with_name(f".{path.name}.partial")):
            if not candidate.exists() and not candidate.is_symlink():
                _pending_outputs.append(candidate)


def _remove_pending_outputs() -> None:
    while _pending_outputs:
        path = _pending_outputs.pop()
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        except OSError as exc:  # never mask the original error with a clean-up one
            log.warning("could not remove the partial output %s: %s", path, exc)


def _register_config_outputs(args: tuple[Any, ...]) -> None:
    cfg = args[0] if args and isinstance(args[0], DictConfig) else None
    if cfg is None:
        return
    for key in OUTPUT_KEYS:
        try:
            value = cfg.get(key)
        except OmegaConfBaseException:  # an interpolation that does not resolve is reported by the task itself
            continue
        if isinstance(value, (str, os.PathLike)) and str(value):
            remove_on_failure(value)


def guarded(app_name: str) -> Callable[[F], F]:
    """Decorate a Hydra task function so user errors exit cleanly with one line and leave no partial output.

    ``HYDRA_FULL_ERROR=1`` (Hydra's own switch) re-raises instead, for debugging.
    """

    def decorate(fn: F) -> F:
        _APPS[app_name] = app_name
        module_file = getattr(sys.modules.get(fn.__module__), "__file__", None)
        if module_file:
            _APPS[str(Path(module_file).resolve())] = app_name

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _pending_outputs.clear()
            _register_config_outputs(args)
            try:
                result = fn(*args, **kwargs)
            except USER_INPUT_ERRORS as exc:
                _remove_pending_outputs()
                if _debug():
                    raise
                _report(app_name, exc)
                raise SystemExit(EXIT_USER_ERROR) from None
            except (Exception, KeyboardInterrupt):  # not SystemExit: an app's deliberate exit status keeps its outputs
                _remove_pending_outputs()
                raise
            _pending_outputs.clear()
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


def _report(app_name: str, exc: BaseException, internal: bool = False) -> None:
    """``<app>: error: <one line>`` on stderr (and in the run's log files), then how to see the traceback."""
    message = _describe(exc)
    if internal:
        message = f"internal error ({type(exc).__name__}): {message}"
    _log_to_files(logging.ERROR, message)
    print(f"{app_name}: error: {message}", file=sys.stderr, flush=True)
    hint = "report it with" if internal else "for"
    print(f"(set HYDRA_FULL_ERROR=1 {hint} the full traceback)", file=sys.stderr, flush=True)


def _running_app() -> str | None:
    """The sparse3d app this process runs (by ``sys.argv[0]``), or None for someone else's Hydra app."""
    if not sys.argv:
        return None
    argv0 = Path(sys.argv[0])
    if argv0.name in _APPS:
        return _APPS[argv0.name]
    try:
        return _APPS.get(str(argv0.resolve()))
    except OSError:
        return None


# Hydra's own reporter (kept across re-imports of this module, so the patch below never wraps itself).
_hydra_run_and_report = getattr(_hydra_internal.run_and_report, "hydra_original", _hydra_internal.run_and_report)


def _run_and_report(func: Any) -> Any:
    """Hydra's error reporter, made one line for the sparse3d console scripts.

    Hydra reports errors raised outside the task function (composition, overrides, creating the run folder) with
    a multi-line message or a trimmed traceback; for our apps they become ``<app>: error: ...`` and exit 2 (exit 1,
    marked internal, for exception types that are not input errors)."""
    app = _running_app()
    if app is None:
        return _hydra_run_and_report(func)
    try:
        return func()
    except Exception as exc:
        if _debug():
            raise
        internal = not isinstance(exc, USER_INPUT_ERRORS) and not _is_hydra_user_error(exc)
        _report(app, exc, internal=internal)
        raise SystemExit(EXIT_INTERNAL_ERROR if internal else EXIT_USER_ERROR) from None


def _is_hydra_user_error(exc: BaseException) -> bool:
    from hydra.errors import HydraException

    return isinstance(exc, HydraException)


_run_and_report.hydra_original = _hydra_run_and_report  # type: ignore[attr-defined]
_hydra_internal.run_and_report = _run_and_report


def _log_to_files(level: int, message: str) -> None:
    """Record a message in the run's log file(s) only; the console gets it once, on stderr."""
    record = log.makeRecord(log.name, level, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and level >= handler.level:
            handler.handle(record)


def _describe(exc: BaseException) -> str:
    """One readable line from an exception and its causes (Hydra wraps constructor errors).

    A :class:`UserError` anywhere in the ``__cause__`` chain is already written for the user and is shown alone.
    For a constructor Hydra called, the innermost cause is shown instead of Hydra's wrapping; otherwise the error
    and its innermost cause. The config key (``full_key``) is put in front when Hydra or OmegaConf give one, and the
    file when the message does not name it (the ``filename`` of an ``OSError``, or the file being decoded).
    """
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 8:
        if isinstance(cause, UserError):
            return _one_line(str(cause)) or type(cause).__name__
        chain.append(cause)
        cause = cause.__cause__
    root = chain[-1]
    key = next((k for k in (_full_key(e) for e in chain) if k), None)
    if isinstance(exc, InstantiationException) and root is not exc:
        target = re.search(r"target '([^']+)'", str(exc))
        prefix = key or (target.group(1) if target else "")
        return _join(prefix, _plain(root))
    if isinstance(root, OmegaConfBaseException):
        return _join(key or "", _first_line(str(root)))
    message = _plain(exc)
    if root is not exc:
        inner = _plain(root)
        if inner not in message:
            message = f"{message} (caused by {type(root).__name__}: {inner})"
    return _join(key or "", message)


def _plain(exc: BaseException) -> str:
    """An exception's message as one line, naming the file when it can."""
    if isinstance(exc, OSError) and exc.filename is not None:
        names = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        return f"{names}: {exc.strerror or _one_line(str(exc))}"
    if isinstance(exc, UnicodeDecodeError):
        text = f"not {exc.encoding} text ({exc.reason} at byte {exc.start})"
    elif isinstance(exc, json.JSONDecodeError):
        text = f"invalid JSON ({exc.msg}: line {exc.lineno} column {exc.colno})"
    else:
        text = _hydra_compact(str(exc)) or type(exc).__name__
    where = _file_in_traceback(exc) if isinstance(exc, _DECODE_ERRORS) else None
    if where is not None and where not in text and Path(where).name not in text:
        text = f"{where}: {text}"
    return text


def _hydra_compact(text: str) -> str:
    """Hydra's multi-line composition errors as one line (the options it lists kept, the search path dropped)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    out = [lines[0]]
    i = 1
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("Available options in"):
            options = []
            while i < len(lines) and not lines[i].endswith(":") and not lines[i].startswith(
                    ("Config search path", "provider=", "Set the environment")):
                options.append(lines[i])
                i += 1
            out.append(f"(available: {', '.join(options)})")
        elif line.startswith(("Config search path", "provider=", "full_key:", "object_type=", "reference_type=",
                              "Set the environment")):
            continue
        elif len(out) < 3:
            out.append(line)
    return _one_line(" ".join(out))


def _full_key(exc: BaseException) -> str | None:
    key = getattr(exc, "full_key", None)
    if isinstance(key, str) and key:
        return key
    found = re.search(r"full_key: (\S+)", str(exc))
    return found.group(1) if found else None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _join(prefix: str, message: str) -> str:
    return f"{prefix}: {message}" if prefix and prefix not in message else message


_PATH_LOCALS = ("path", "p", "file", "filename", "fname", "split_path", "source", "src")


# Errors raised while decoding a file's bytes, whose messages never say which file it was.
_DECODE_ERRORS = (UnicodeDecodeError, json.JSONDecodeError, EOFError, struct.error, zlib.error, zipfile.BadZipFile,
                  yaml.YAMLError)


def _file_in_traceback(exc: BaseException) -> str | None:
    """The file being read where ``exc`` was raised, or None: the ``Path`` whose ``read_text``/``read_bytes`` failed,
    else a local named like a path (that exists on disk) in the innermost sparse3d frame. Frames further out are
    not looked at: their paths may be other inputs."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        owner = frame.f_locals.get("self")
        if isinstance(owner, PurePath) and _exists(owner):
            return str(owner)
        if not str(frame.f_globals.get("__name__", "")).startswith("sparse3d"):
            continue
        for name in _PATH_LOCALS:
            value = frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)) and _exists(value):
                return str(value)
        return None
    return None


def _exists(value: str | os.PathLike[str]) -> bool:
    try:
        return bool(str(value)) and len(str(value)) < 4096 and os.path.exists(value)
    except (OSError, ValueError):
        return False


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
