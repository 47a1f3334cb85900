"""Progress reporting for training: a tqdm bar for humans, logger lines for CI, TensorBoard scalars.

The bar is only drawn on rank 0 with an interactive stderr; the logger lines (step, loss, lr, speed,
ETA) are always emitted every ``log_every`` steps so non-interactive logs still show progress.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from sparse3d.kernels.warmup import FIRST_RUN_NOTICE

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


FIRST_STEP_NOTICE_S = 10.0
"""A first step still running after this many seconds gets a log line saying why it is slow."""


def _kernels_compiling() -> list[str]:
    """Warp modules this process is compiling now (none when Warp was never imported)."""
    if "warp" not in sys.modules:
        return []
    try:
        from sparse3d.kernels.runtime import modules_compiling
    except ImportError:
        return []
    return modules_compiling()


class ProgressReporter:
    """Tracks speed and ETA; drives the tqdm bar and emits periodic log lines.

    Speed and ETA are measured from the end of the first step this process runs: that step also pays one-time
    costs (on a machine's first run Warp compiles the kernels; caches and allocators warm up), which would
    otherwise inflate the ETA for the whole run. Until a second step ends the rate is 0 and the ETA unknown.
    When the first step is still running after ``first_step_notice_s`` seconds (``None``: never), one log line
    says so, naming the Warp modules being compiled if any (:data:`FIRST_RUN_NOTICE`). ``clock`` is the time
    source (seconds).
    """

    def __init__(
        self,
        total_steps: int | None,
        start_step: int,
        enabled: bool,
        show_bar: bool,
        *,
        first_step_notice_s: float | None = FIRST_STEP_NOTICE_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.total_steps = total_steps
        self.start_step = start_step
        self.enabled = enabled
        self._clock = clock
        self.start_time = clock()
        self._rate_origin: tuple[int, float] | None = None  # (step, time) at the end of the first step
        self._latest: tuple[int, float] | None = None  # (step, time) at the end of the latest step
        self._bar: Any = None
        self._notice: threading.Timer | None = None
        if enabled and show_bar and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        if enabled and first_step_notice_s is not None:
            self._notice = threading.Timer(first_step_notice_s, self._first_step_is_slow, args=(first_step_notice_s,))
            self._notice.daemon = True
            self._notice.start()

    def _first_step_is_slow(self, waited_s: float) -> None:
        step = self.start_step + 1
        compiling = _kernels_compiling()
        if compiling:
            log.info("step %d: %s: Warp is compiling %s (cached for later runs; `python -m sparse3d.kernels.warmup` "
                     "compiles them ahead of time); speed and ETA leave this step out",
                     step, FIRST_RUN_NOTICE, ", ".join(compiling))
        else:
            log.info("step %d is still running after %.3g s (one-time set-up on first use); speed and ETA leave "
                     "this step out", step, waited_s)

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
        """Seconds since the reporter was created (the first step included)."""
        return self._clock() - self.start_time

    def rate(self, step: int) -> float:
        """Steps per second after the first step (0 until a later step has ended)."""
        if self._rate_origin is None:
            return 0.0
        origin_step, origin_time = self._rate_origin
        done, seconds = step - origin_step, self._clock() - origin_time
        return done / seconds if seconds > 0 and done > 0 else 0.0

    def first_step_s(self) -> float | None:
        """Seconds from the reporter's creation to the end of the first step (None before it ends)."""
        return None if self._rate_origin is None else self._rate_origin[1] - self.start_time

    def steady_rate(self) -> float | None:
        """Steps per second from the end of the first step to the end of the latest one: the run's training speed
        without the first step's one-time costs (kernel compilation) and without what follows the last step
        (final validation, checkpoint). None until a second step has ended."""
        if self._rate_origin is None or self._latest is None:
            return None
        done, seconds = self._latest[0] - self._rate_origin[0], self._latest[1] - self._rate_origin[1]
        return done / seconds if done > 0 and seconds > 0 else None

    def eta(self, step: int) -> float:
        """Seconds left at the current speed: 0 once ``total_steps`` is reached, inf while unknown."""
        if self.total_steps is None:
            return float("inf")
        if step >= self.total_steps:
            return 0.0
        rate = self.rate(step)
        return (self.total_steps - step) / rate if rate > 0 else float("inf")

    def update(self, step: int, loss: float) -> None:
        """Record that ``step`` ended: advance the bar and show the latest loss."""
        first = self._rate_origin is None
        now = self._clock()
        self._latest = (step, now)
        if first:
            self._rate_origin = (step, now)
            self._cancel_notice()
        if self._bar is not None:
            if first:
                self._bar.unpause()  # the bar's rate, like ours, leaves the first step out
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

    def _cancel_notice(self) -> None:
        if self._notice is not None:
            self._notice.cancel()
            self._notice = None

    def close(self) -> None:
        """Stop the first-step notice timer and close the bar."""
        self._cancel_notice()
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
