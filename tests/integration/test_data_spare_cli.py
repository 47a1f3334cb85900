"""`sparse3d-data spare` through the console script, then the SpaRe reader on what it wrote."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from sparse3d.io.spare import (
    load_images,
    load_input_views,
    load_masks,
    load_scene,
    read_split,
    split_filename,
)

RunCli = Callable[..., subprocess.CompletedProcess[str]]


def test_data_spare_cli_writes_a_readable_dataset(run_cli: RunCli, tmp_path: Path) -> None:
    out = tmp_path / "spare"
    args = ["sparse3d-data", "spare", f"out_dir={out}", f"paths.output_root={tmp_path / 'o'}",
            "generator.num_scenes=2", "generator.width=40", "generator.height=30", "generator.lightings=[3]",
            "generator.progress=false"]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(out) in result.stdout
    t1 = read_split(out / split_filename(1, "development"))
    t2 = read_split(out / split_filename(2, "development"))
    assert list(t1) == list(t2) and {e.dataset for e in t1.values()} == {"Synthetic", "DTU"}
    for entry in t1.values():
        scene = load_scene(out, entry)
        assert load_images(scene, list(entry.test_views)).shape == (10, 30, 40, 3)
        masks = load_masks(scene, list(entry.test_views))
        assert masks is not None and bool(masks.any(dim=(1, 2)).all())
        views = load_input_views(scene, entry)
        assert views.images.shape == (3, 30, 40, 3) and views.scene == entry.scene

    again = run_cli(args)  # the root is not empty now: a one-line user error, no traceback
    assert again.returncode == 2
    assert "sparse3d-data: error:" in again.stderr and "not empty" in again.stderr
    assert "Traceback" not in again.stderr + again.stdout
