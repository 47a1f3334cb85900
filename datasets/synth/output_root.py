"""The output-folder rule every synthetic data generator follows: write into a new or empty folder, or over an
existing one only when the user asks for it."""

from __future__ import annotations

from pathlib import Path

from sparse3d.utils.errors import UserError


def prepare_output_root(root: str | Path, overwrite: bool = False) -> Path:
    """Create ``root`` and return it; a file there, or a non-empty folder without ``overwrite``, is a
    :class:`UserError` naming it."""
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise UserError(f"output root {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"output root {path} is not empty; choose another out_dir or pass overwrite=true")
    path.mkdir(parents=True, exist_ok=True)
    return path
