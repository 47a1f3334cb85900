"""Benchmark suites of ``sparse3d-bench``: one module per suite, each registered by a file in
``sparse3d.configs`` ``suite/`` (``name`` and a ``runner`` returning record dicts)."""

from __future__ import annotations

import importlib.resources


def available_suites() -> list[str]:
    """Names of the suites shipped in ``configs/suite/``."""
    folder = importlib.resources.files("sparse3d.configs").joinpath("suite")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))
