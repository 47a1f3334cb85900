"""Fixtures and the end-of-session report of the kernel fuzzing job (the harness is ``fuzz_harness.py``)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_harness import Fuzzer, FuzzReport, base_seed  # noqa: E402

_REPORT_KEY = pytest.StashKey[FuzzReport]()


@pytest.fixture(scope="session")
def fuzz_report(request: pytest.FixtureRequest) -> FuzzReport:
    config = request.config
    if _REPORT_KEY not in config.stash:
        config.stash[_REPORT_KEY] = FuzzReport(base_seed())
    return config.stash[_REPORT_KEY]


@pytest.fixture
def fuzzer(fuzz_report: FuzzReport) -> Callable[[str], Fuzzer]:
    return lambda family: Fuzzer(fuzz_report, family)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    report = config.stash.get(_REPORT_KEY, None)
    if report is None or not report.families:
        return
    terminalreporter.section("kernel fuzzing")
    for line in report.lines():
        terminalreporter.write_line(line)
    path = os.environ.get("SPARSE3D_FUZZ_REPORT")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
        terminalreporter.write_line(f"fuzz report written to {path}")
