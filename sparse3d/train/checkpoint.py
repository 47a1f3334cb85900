"""Checkpoints: RNG capture, resume look-up and safetensors weight export.

A checkpoint (``*.ckpt``) is a ``torch.save``'d dict holding everything needed to continue training
bit-for-bit: model, optimizer, scheduler and grad-scaler states, the step/epoch position, every RNG
state, and the resolved config. Only plain containers, numbers, strings and tensors are stored so the
file loads with ``torch.load(weights_only=True)`` (no arbitrary pickle execution).

Exported weights (``model.safetensors``) hold the model state dict only and are what users ship.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparse3d.io.atomic import atomic_write, atomic_write_json, atomic_write_text  # noqa: F401 (re-exported)
from sparse3d.train.distributed import current_dist_info, unwrap_model
from sparse3d.utils.errors import UserError

log = logging.getLogger("sparse3d.train")

CKPT_FORMAT = "sparse3d-checkpoint"
CKPT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LAST_NAME = "last.ckpt"
HYDRA_SUBDIR = ".hydra"


def step_checkpoint_name(step: int) -> str:
    """File name of the periodic checkpoint taken after ``step`` optimizer steps."""
    return f"step_{step:07d}.ckpt"


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Atomically ``torch.save`` a checkpoint dict to ``path``."""
    payload = {"format": CKPT_FORMAT, "version": CKPT_VERSION, **state}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def link_or_copy_atomic(src: Path, dst: Path) -> Path:
    """Make ``dst`` an identical file to ``src`` atomically, hard-linking when the file system allows.

    Used to refresh ``last.ckpt`` from a fresh ``step_*.ckpt`` without writing the bytes twice.
    """

    def write(tmp: Path) -> None:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            import shutil

            shutil.copyfile(src, tmp)

    return atomic_write(dst, write)


def write_run_checkpoint(state: dict[str, Any], ckpt_dir: Path, step: int, periodic: bool, keep: int) -> Path:
    """Save a run's checkpoint: ``step_XXXXXXX.ckpt`` and a refreshed ``last.ckpt`` when ``periodic`` (keeping the
    newest ``keep`` step files, all when ``keep <= 0``), else ``last.ckpt`` alone. Returns ``last.ckpt``."""
    last = ckpt_dir / LAST_NAME
    if not periodic:
        save_checkpoint(state, last)
        return last
    link_or_copy_atomic(save_checkpoint(state, ckpt_dir / step_checkpoint_name(step)), last)
    if keep > 0:
        for old in sorted(ckpt_dir.glob("step_*.ckpt"))[:-keep]:
            old.unlink(missing_ok=True)
    return last


class RunDirectory:
    """Where a training loop keeps its files: ``output_dir`` (the run), ``ckpt_dir`` in it, ``runs_root`` (where
    ``resume=true`` looks for earlier runs, default the run's parent) and the app config stored in checkpoints."""

    def __init__(self, output_dir: str | os.PathLike, full_config: Any = None,
                 runs_root: str | os.PathLike | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.ckpt_dir = self.output_dir / CHECKPOINT_DIR
        self.runs_root = Path(runs_root) if runs_root is not None else self.output_dir.parent
        self.full_config = plain_config(full_config)


def plain_config(config: Any) -> dict[str, Any] | None:
    """A resolved app config as plain containers (what checkpoints store so a run can be rebuilt)."""
    if config is None:
        return None
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    return dict(config)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, with a clear error for wrong files."""
    ckpt_path = Path(path)
    if not ckpt_path.is_file():
        raise UserError(f"checkpoint not found: {ckpt_path}")
    try:
        state = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # garbage, or a pickle of arbitrary objects (refused by weights_only)
        text = " ".join(str(exc).split())
        reason = text.split("WeightsUnpickler error:")[-1]
        reason = re.split(r"\.? (?:Check the documentation|Please use|In PyTorch 2\.6)", reason)[0].strip()
        reason = reason.split(". ")[0][:200]  # torch's explanation of weights_only runs for paragraphs
        raise UserError(f"could not read checkpoint {ckpt_path}: not a PyTorch checkpoint of plain tensors and "
                        f"containers, or a damaged file ({reason})") from exc
    except Exception as exc:  # corrupted file, truncated download
        first = " ".join(str(exc).split()).split(". ")[0][:200]
        raise UserError(f"could not read checkpoint {ckpt_path}: {first}") from exc
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise UserError(f"{ckpt_path} is not a sparse3d training checkpoint (missing format tag)")
    return state


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """Accept either a ``.ckpt`` file or a run directory holding ``checkpoints/last.ckpt``."""
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        last = candidate / CHECKPOINT_DIR / LAST_NAME
        if last.is_file():
            return last
        raise UserError(f"{candidate} is a directory but has no {CHECKPOINT_DIR}/{LAST_NAME}")
    if candidate.is_file():
        return candidate
    raise UserError(f"checkpoint not found: {candidate}")


def find_latest_checkpoint(runs_root: str | os.PathLike, exclude: str | os.PathLike | None = None) -> Path | None:
    """Newest ``checkpoints/last.ckpt`` (by modification time) anywhere below ``runs_root``.

    ``exclude`` is the current run's directory, whose own (possibly just created) files must not count
    as an "earlier run". Multirun sub-directories are searched too.
    """
    root = Path(runs_root)
    if not root.is_dir():
        return None
    excluded = Path(exclude).resolve() if exclude is not None else None
    best: tuple[float, Path] | None = None
    for candidate in root.rglob(f"{CHECKPOINT_DIR}/{LAST_NAME}"):
        run_dir = candidate.parent.parent.resolve()
        if excluded is not None and run_dir == excluded:
            continue
        mtime = candidate.stat().st_mtime
        if best is None or mtime > best[0]:
            best = (mtime, candidate)
    return best[1] if best else None


def _run_started(run_dir: Path) -> float:
    """When a run started: its ``.hydra/config.yaml`` (written before training) or, for runs made from Python,
    its ``last.ckpt``; the directory's own time otherwise."""
    for marker in (run_dir / HYDRA_SUBDIR / "config.yaml", run_dir / CHECKPOINT_DIR / LAST_NAME):
        if marker.is_file():
            return marker.stat().st_mtime
    return run_dir.stat().st_mtime


def earlier_runs(runs_root: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Path]:
    """Run directories below ``runs_root`` (those holding ``.hydra/`` or ``checkpoints/``), newest start first.

    ``exclude`` (the current run) is left out; multirun sub-directories count as runs.
    """
    root = Path(runs_root)
    if not root.is_dir():
        return []
    excluded = Path(exclude).resolve() if exclude is not None else None
    found: set[Path] = set()
    for pattern in (HYDRA_SUBDIR, CHECKPOINT_DIR):
        for marker in root.rglob(pattern):
            run_dir = marker.parent
            if marker.is_dir() and run_dir.resolve() != excluded:
                found.add(run_dir)
    return sorted(found, key=lambda run: (_run_started(run), str(run)), reverse=True)


def resolve_resume(resume: Any, runs_root: str | os.PathLike | None, current_run_dir: str | os.PathLike | None) -> Path | None:
    """Interpret the ``resume`` option: ``false``/``null`` → no resume, ``true`` → the newest earlier run
    of this task/experiment below ``runs_root``, a string → that checkpoint file or run directory.

    With ``true``, when the newest earlier runs have no ``checkpoints/last.ckpt`` (stopped before their first
    checkpoint, or failed at start-up) a warning names them and the run resumed instead; when no earlier run has a
    checkpoint it stops with :class:`UserError`.
    """
    if resume is None or resume is False:
        return None
    if isinstance(resume, str) and resume.strip().lower() in {"", "false", "no", "none", "null"}:
        return None
    if resume is True or (isinstance(resume, str) and resume.strip().lower() in {"true", "yes", "last", "latest"}):
        if runs_root is None:
            raise UserError("resume=true needs to know where earlier runs live (runs_root); pass a path instead")
        runs = earlier_runs(runs_root, exclude=current_run_dir)
        with_ckpt = [run for run in runs if (run / CHECKPOINT_DIR / LAST_NAME).is_file()]
        if not with_ckpt:
            newest = f"; the newest, {runs[0]}, stopped before its first checkpoint" if runs else ""
            raise UserError(
                f"resume=true but no earlier run with {CHECKPOINT_DIR}/{LAST_NAME} exists under {runs_root}{newest}; "
                "train without resume first or pass resume=<path to a .ckpt or run dir>"
            )
        chosen = with_ckpt[0]
        skipped = runs[: runs.index(chosen)]
        if skipped and current_dist_info().is_main:
            names = ", ".join(str(run) for run in skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3
                                                                    else "")
            log.warning(
                "resume=true: the newest run%s (%s) %s no %s/%s (stopped before the first checkpoint or failed at "
                "start-up); resuming the newest run that has one instead: %s", "s" if len(skipped) > 1 else "",
                names, "have" if len(skipped) > 1 else "has", CHECKPOINT_DIR, LAST_NAME, chosen,
            )
        return chosen / CHECKPOINT_DIR / LAST_NAME
    if isinstance(resume, (str, os.PathLike)):
        return resolve_checkpoint_path(resume)
    raise UserError(f"resume must be false, true or a path, got {resume!r}")


# --------------------------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """Snapshot python, numpy and torch (CPU + CUDA) RNG states as weights_only-loadable values."""
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if cuda_states is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states[: torch.cuda.device_count()]])


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Run a block (e.g. validation) without disturbing the training RNG streams.

    Without this, turning validation on or off would change every later random draw and make runs with
    different ``val_every`` diverge.
    """
    saved = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(saved)


# ------------------------------------------------------------------------------------ exported weights


def save_weights(model: torch.nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Export ``model``'s state dict as ``safetensors`` (atomic; shared tensors handled)."""
    from safetensors.torch import save_model

    target = Path(path)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return atomic_write(target, lambda tmp: save_model(unwrap_model(model), str(tmp), metadata=meta or None))


def load_weights(
    model: torch.nn.Module, path: str | os.PathLike, strict: bool = True, device: str | torch.device = "cpu"
) -> tuple[list[str], list[str]]:
    """Load ``safetensors`` weights into ``model``; returns ``(missing, unexpected)`` key lists."""
    from safetensors.torch import load_model

    source = Path(path)
    if not source.is_file():
        raise UserError(f"weights file not found: {source}")
    missing, unexpected = load_model(unwrap_model(model), str(source), strict=strict, device=str(device))
    return list(missing), list(unexpected)


def read_weights_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a ``safetensors`` header (e.g. the producing config)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})
