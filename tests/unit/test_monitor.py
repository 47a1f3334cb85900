"""Progress speed and ETA leave the first step out; a slow first step is explained once.

Oracle: a fake clock with a known schedule (a long first step, then steps of fixed length) gives the exact rate
and ETA.
"""

from __future__ import annotations

import logging
import time

import pytest

from sparse3d.train import monitor
from sparse3d.train.monitor import FIRST_RUN_NOTICE, ProgressReporter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _after(total: int | None, start: int, schedule: list[tuple[float, int]]) -> ProgressReporter:
    """A reporter (notice off, fake clock) after ``schedule``: (seconds the step took, step number) pairs."""
    clock = FakeClock()
    reporter = ProgressReporter(total, start, enabled=True, show_bar=False, first_step_notice_s=None, clock=clock)
    for seconds, step in schedule:
        clock.now += seconds
        reporter.update(step, 1.0)
    return reporter


def test_rate_and_eta_leave_the_first_step_out() -> None:
    first = _after(31, 0, [(100.0, 1)])  # step 1: compiling kernels
    assert first.rate(1) == 0.0 and first.eta(1) == float("inf")  # nothing measured yet
    reporter = _after(31, 0, [(100.0, 1)] + [(2.0, step) for step in range(2, 12)])
    assert reporter.rate(11) == pytest.approx(0.5)  # 10 steps in 20 s, not 11 in 120 s
    assert reporter.eta(11) == pytest.approx(40.0)
    assert reporter.elapsed() == pytest.approx(120.0)  # the wall time still counts everything
    assert reporter.eta(31) == 0.0


def test_rate_after_resume_counts_from_the_first_step_of_this_process() -> None:
    reporter = _after(100, 50, [(30.0, 51), (4.0, 53)])
    assert reporter.rate(53) == pytest.approx(0.5)
    assert reporter.eta(53) == pytest.approx(94.0)
    assert _after(None, 0, [(1.0, 1), (1.0, 2)]).eta(2) == float("inf")


def test_log_line_shows_the_measured_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    reporter = _after(31, 0, [(100.0, 1), (20.0, 11)])
    with caplog.at_level(logging.INFO, logger="sparse3d.train"):
        reporter.log_line(11, 0, {"loss": 0.25}, 1e-3)
    assert "step 11/31 (35%)" in caplog.text
    assert "0.50 step/s | elapsed 0:02:00 | ETA 0:00:40" in caplog.text


def _notices(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "speed and ETA leave this step out" in r.getMessage()]


def test_a_slow_first_step_is_explained_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sparse3d.train"):
        reporter = ProgressReporter(10, 0, enabled=True, show_bar=False, first_step_notice_s=0.05)
        time.sleep(0.5)  # the first step outlasts the notice delay
        reporter.update(1, 1.0)
        reporter.close()
    notices = _notices(caplog)
    assert len(notices) == 1 and notices[0].startswith("step 1 is still running"), notices


def test_the_notice_names_the_warp_modules_being_compiled(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitor, "_kernels_compiling", lambda: ["sparse3d.kernels.sparse_conv"])
    with caplog.at_level(logging.INFO, logger="sparse3d.train"):
        reporter = ProgressReporter(10, 4, enabled=True, show_bar=False, first_step_notice_s=0.05)
        time.sleep(0.5)
        reporter.update(5, 1.0)
        reporter.close()
    notices = _notices(caplog)
    assert len(notices) == 1
    assert notices[0].startswith(f"step 5: {FIRST_RUN_NOTICE}: Warp is compiling sparse3d.kernels.sparse_conv")


@pytest.mark.parametrize("enabled", [True, False])
def test_no_notice_for_a_fast_first_step_or_a_silent_rank(enabled: bool, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sparse3d.train"):
        reporter = ProgressReporter(10, 0, enabled=enabled, show_bar=False, first_step_notice_s=0.2 if enabled else 0.05)
        if enabled:
            reporter.update(1, 1.0)  # before the notice delay
        time.sleep(0.5)
        reporter.close()
    assert _notices(caplog) == []
