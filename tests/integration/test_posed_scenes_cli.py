"""The LLFF / COLMAP paths through the console scripts: `sparse3d-train experiment=gs3d_llff` generates its scene,
fits plain 3DGS and scores the LLFF-protocol test views; `sparse3d-data colmap` writes a scene the COLMAP reader
loads and refuses to write into a non-empty folder."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from sparse3d.datasets.posed_scenes import load_colmap_scene

RunCli = Callable[..., subprocess.CompletedProcess[str]]


def test_gs3d_llff_runs_end_to_end_on_a_generated_scene(run_cli: RunCli, tmp_path: Path) -> None:
    result = run_cli([
        "sparse3d-train", "experiment=gs3d_llff", f"paths.output_root={tmp_path / 'out'}",
        f"paths.data_dir={tmp_path / 'data'}", "data.generator.width=96", "data.generator.height=72",
        "data.generator.num_points=200", "data.generator.progress=false", "trainer.max_steps=20",
        "method.num_points=500", "trainer.progress=false", "trainer.device=cpu", "trainer.tensorboard=false",
    ], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "data" / "llff_demo").is_dir()
    summary_path = next((tmp_path / "out").rglob("summary.json"))
    summary = json.loads(summary_path.read_text())
    assert summary["experiment"] == "gs3d_llff" and summary["steps"] == 20
    assert summary["num_input_views"] == 3 and summary["num_test_views"] == 3  # 20 views, i % 8 == 0 held out
    for key in ("test_initial", "test"):
        assert 0.0 < summary[key]["psnr"] < 100.0
    renders = sorted(p.name for p in (summary_path.parent / "renders" / "test").iterdir())
    assert renders == ["image_000.png", "image_008.png", "image_016.png"]


def test_data_cli_writes_a_colmap_scene_the_loader_reads(run_cli: RunCli, tmp_path: Path) -> None:
    out = tmp_path / "colmap"
    args = ["sparse3d-data", "colmap", f"out_dir={out}", f"paths.output_root={tmp_path / 'o'}",
            "generator.width=40", "generator.height=30", "generator.num_views=12", "generator.factors=[2]",
            "generator.num_points=100", "generator.progress=false"]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(out) in result.stdout
    views = load_colmap_scene(out, image_dir="images_2")
    assert views.test is not None and views.inputs.images.shape == (3, 15, 20, 3)
    assert views.test.names == ("image_000.png", "image_008.png")
    again = run_cli(args)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr
