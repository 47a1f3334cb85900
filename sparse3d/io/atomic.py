"""Atomic file output: every file the toolkit writes appears whole or not at all.

A writer fills a temporary file in the target's own folder and renames it over the target with one
``os.replace``, so readers (TensorBoard, a polling script, a resumed run) see the old file or the new one, never a
half-written one, and a crash or an error leaves no partial output behind. The temporary file is created with
``tempfile.mkstemp`` (mode 0600); it is given the permissions a plain ``open(path, "w")`` would have given
(0666 less the umask) before the rename, so outputs stay readable by other users and tools.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "default_file_mode"]


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, move it over ``path``.

    ``suffix`` is the temporary file's suffix (default ``path``'s own, so writers that pick a format from the
    extension, such as OpenCV or trimesh, still work). The parent folder is created. On any exception the
    temporary file is removed and the exception propagates; ``path`` keeps its old content. With ``fsync`` the
    data reaches the disk before the rename, so a power cut cannot leave an empty file under the final name.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix if suffix is None else suffix,
                                    dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if fsync and tmp.exists():
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Run ``writer(tmp_path)`` and atomically move the result to ``path``; returns ``path``."""
    target = Path(path)
    with atomic_path(target, suffix=".tmp") as tmp:
        writer(tmp)
    return target


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically (JSON summaries that other tools poll, reports, label files)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (values JSON does not know are written with ``str``)."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
