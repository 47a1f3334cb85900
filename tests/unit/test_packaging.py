"""The wheel's package list must cover every source folder (a missing sub-package is silently dropped)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]


def _setuptools_config() -> dict:
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not running from a source checkout")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_source_folder_is_a_listed_package() -> None:
    cfg = _setuptools_config()
    listed = set(cfg["packages"])
    missing = []
    for dotted, folder in cfg["package-dir"].items():
        base = ROOT / folder
        for d in [base, *sorted(p for p in base.rglob("*") if p.is_dir())]:
            if d.name == "__pycache__" or not any(f.suffix in (".py", ".yaml") for f in d.iterdir()):
                continue
            name = ".".join([dotted, *d.relative_to(base).parts])
            if name not in listed:
                missing.append(f"{name} ({d.relative_to(ROOT)})")
    assert not missing, "add to [tool.setuptools] packages: " + ", ".join(missing)


def test_no_top_level_project_folders_are_packages() -> None:
    cfg = _setuptools_config()
    for name in cfg["packages"]:
        assert name == "sparse3d" or name.startswith("sparse3d."), f"{name} would install a top-level module"
