"""Atomic output (sparse3d.io.atomic): whole files or none, with the permissions a plain open() gives."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sparse3d.io.atomic import atomic_path, atomic_write, atomic_write_json, default_file_mode


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_default_mode_follows_umask(tmp_path: Path) -> None:
    for mask in (0o022, 0o077, 0o002):
        old = os.umask(mask)
        try:
            plain = tmp_path / f"plain_{mask:o}"
            plain.write_text("x")
            assert default_file_mode() == _mode(plain) == 0o666 & ~mask
            atomic = atomic_write_json(tmp_path / f"atomic_{mask:o}.json", {"a": 1})
            assert _mode(atomic) == _mode(plain)
        finally:
            os.umask(old)


def test_success_replaces_and_leaves_no_temporary(tmp_path: Path, umask_022: None) -> None:
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(target, {"v": 1})
    atomic_write_json(target, {"v": 2, "arr": np.float32(1.5)})  # unknown types are written with str
    assert json.loads(target.read_text()) == {"v": 2, "arr": "1.5"}
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]
    assert _mode(target) == 0o644


def test_error_keeps_old_content_and_removes_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    def failing(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_temporary_keeps_the_suffix_for_format_sniffing_writers(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "image.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(".image.png.")
        tmp.write_bytes(b"data")
    assert (tmp_path / "image.png").read_bytes() == b"data"


def test_checkpoint_and_mesh_outputs_are_readable_by_others(tmp_path: Path, umask_022: None) -> None:
    from sparse3d.io.mesh import TriangleMesh, write_mesh
    from sparse3d.train.checkpoint import save_checkpoint

    ckpt = save_checkpoint({"step": 1}, tmp_path / "a.ckpt")
    mesh = TriangleMesh(vertices=np.eye(3, dtype=np.float32), faces=np.array([[0, 1, 2]], dtype=np.int64))
    ply = write_mesh(tmp_path / "m.ply", mesh)
    assert _mode(ckpt) == 0o644 and _mode(Path(ply)) == 0o644
