"""Progress reporting for training: a tqdm bar for humans, logger lines for CI, TensorBoard scalars.

The bar is only drawn on rank 0 with an interactive stderr; the logger lines (step, loss, lr, speed,
ETA) are always emitted every ``log_every`` steps so non-interactive logs still show progress.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("sparse3d.train")


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (days spill into hours), or ``?`` when unknown."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):  # NaN / negative / inf
        return "?"
    return str(datetime.timedelta(seconds=int(round(seconds))))


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``loss 0.1234 | acc 0.9000`` with ``loss`` first and short, fixed precision."""
    keys = sorted(metrics, key=lambda k: (k != "loss", k))
    return " | ".join(f"{key} {metrics[key]:.4g}" for key in keys)


class ProgressReporter:
    """Tracks speed and ETA; drives the tqdm bar and emits periodic log lines."""

    def __init__(self, total_steps: int | None, start_step: int, enabled: bool, show_bar: bool) -> None:
        self.total_steps = total_steps
        self.start_step = start_step
        self.enabled = enabled
        self.start_time = time.perf_counter()
        self._bar: Any = None
        if enabled and show_bar and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    @contextlib.contextmanager
    def logging_redirect(self) -> Iterator[None]:
        """Route log records through tqdm while the bar is shown so lines do not tear the bar."""
        if self._bar is None:
            yield
            return
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():
            yield

    def elapsed(self) -> float:
        return time.perf_counter() - self.start_time

    def rate(self, step: int) -> float:
        """Steps per second since this process started training."""
        done = step - self.start_step
        elapsed = self.elapsed()
        return done / elapsed if elapsed > 0 and done > 0 else 0.0

    def eta(self, step: int) -> float:
        """Seconds left at the current speed (inf when unknown)."""
        rate = self.rate(step)
        if self.total_steps is None or rate <= 0:
            return float("inf")
        return max(0, self.total_steps - step) / rate

    def update(self, step: int, loss: float) -> None:
        """Advance the bar by one step and show the latest loss."""
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def log_line(self, step: int, epoch: int, metrics: Mapping[str, float], lr: float | None) -> None:
        """Emit the periodic progress line to the Python logger (rank 0 only)."""
        if not self.enabled:
            return
        total = f"/{self.total_steps}" if self.total_steps is not None else ""
        pct = f" ({100.0 * step / self.total_steps:.0f}%)" if self.total_steps else ""
        parts = [f"step {step}{total}{pct}", f"epoch {epoch}", format_metrics(metrics)]
        if lr is not None:
            parts.append(f"lr {lr:.3g}")
        parts.append(f"{self.rate(step):.2f} step/s")
        parts.append(f"elapsed {format_duration(self.elapsed())}")
        parts.append(f"ETA {format_duration(self.eta(step))}")
        log.info(" | ".join(parts))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class ScalarWriter:
    """TensorBoard ``SummaryWriter`` in ``<output_dir>/tb`` on rank 0; a no-op elsewhere."""

    def __init__(self, log_dir: Path | None) -> None:
        self._writer: Any = None
        self.log_dir = log_dir
        if log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # tensorboard is a dependency, but keep training if it is broken
            log.warning("TensorBoard logging disabled: %s", exc)
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def add_scalars(self, prefix: str, metrics: Mapping[str, float], step: int) -> None:
        if self._writer is None:
            return
        for key, value in metrics.items():
            self._writer.add_scalar(f"{prefix}/{key}", value, global_step=step)

    def add_image(self, tag: str, image: Any, step: int) -> None:
        """An (H, W, 3) float image in [0, 1] (HWC, as sparse3d keeps images on the IO side)."""
        if self._writer is None:
            return
        self._writer.add_image(tag, image, global_step=step, dataformats="HWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
