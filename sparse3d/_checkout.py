"""Imports from a source checkout resolve like the installed package.

The wheel installs ``models/`` as ``sparse3d.models``, ``kernels/`` as ``sparse3d.kernels`` and so on
(``[tool.setuptools] package-dir`` in pyproject.toml). In a checkout those folders sit beside ``sparse3d/``.
Python puts the working directory first on ``sys.path`` for ``python -c``, ``python -m`` and notebooks, so
started in the checkout's root it imports the checkout's ``sparse3d/``, which holds none of them.
:func:`install` then adds a finder that maps each such sub-package to its checkout folder, read from
pyproject.toml so the mapping is written once. Installed copies of ``sparse3d`` hold their sub-packages and
are left alone.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE = "sparse3d"


class CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds the packages named in ``packages`` (dotted name -> folder holding ``__init__.py``)."""

    def __init__(self, root: Path, packages: dict[str, Path]) -> None:
        self.root = root
        self.packages = packages

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        folder = self.packages.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


def mapped_packages(root: Path) -> dict[str, Path]:
    """The sub-packages of ``sparse3d`` that ``root/pyproject.toml`` maps to folders outside ``sparse3d/``.

    Empty when the file is missing, unreadable, not sparse3d's, or no TOML parser is available.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            return {}
    try:
        data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if data.get("project", {}).get("name") != PACKAGE:
        return {}
    dirs = data.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    mapping = {}
    for name, folder in dirs.items():
        path = root / folder
        if name.startswith(f"{PACKAGE}.") and path != root / PACKAGE and (path / "__init__.py").is_file():
            mapping[name] = path
    return mapping


def install(package_dir: Path) -> CheckoutFinder | None:
    """Map the checkout's sub-package folders when ``package_dir`` (the imported ``sparse3d/``) is a source folder.

    A source folder is one without ``models/`` whose parent holds sparse3d's pyproject.toml. Returns the
    finder (the one already installed for this checkout, if any), or None when nothing needs mapping.
    """
    if (package_dir / "models").is_dir():
        return None
    root = package_dir.parent
    for finder in sys.meta_path:
        if type(finder).__name__ == CheckoutFinder.__name__ and getattr(finder, "root", None) == root:
            return finder  # type: ignore[return-value]
    packages = mapped_packages(root)
    if not packages:
        return None
    finder = CheckoutFinder(root, packages)
    sys.meta_path.insert(0, finder)
    return finder
