"""``sparse3d-eval evaluator=mesh`` end to end on generated meshes (an installed console script in a subprocess).

Oracle: the CLI's ``results.json`` must hold exactly what :func:`sparse3d.metrics.mesh.mesh_metrics` returns for
the same files and options (the metrics are deterministic for a seed), and the analytic values of the case
(concentric spheres of radii 1 and 1.1: Chamfer-L1 = 0.1 in input units, F-score 0 below 0.1 and 1 above).
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sparse3d.datasets.synth.shapes import superquadric_mesh
from sparse3d.io.mesh import TriangleMesh, read_mesh, write_mesh
from sparse3d.metrics.mesh import mesh_metrics

RunCli = Callable[..., subprocess.CompletedProcess[str]]

pytest.importorskip("trimesh")


@pytest.fixture()
def meshes(tmp_path: Path) -> dict[str, Path]:
    inner = TriangleMesh(*superquadric_mesh(1.0, 1.0, 1.0, 1.0, 1.0, rings=48, segments=96))
    outer = TriangleMesh(*superquadric_mesh(1.1, 1.1, 1.1, 1.0, 1.0, rings=48, segments=96))
    return {"pred": write_mesh(tmp_path / "pred.ply", inner), "gt": write_mesh(tmp_path / "gt" / "gt.glb", outer),
            "out": tmp_path / "out"}


def _only_run(out: Path) -> Path:
    runs = [p.parent for p in (out / "eval" / "mesh").rglob("results.json")]
    assert len(runs) == 1, runs
    return runs[0]


def test_mesh_eval_matches_the_api(run_cli: RunCli, meshes: dict[str, Path]) -> None:
    result = run_cli(["sparse3d-eval", "evaluator=mesh", f"pred={meshes['pred']}", f"gt={meshes['gt']}",
                      "n_points=20000", "seed=3", "normalize=none", "thresholds=[0.05,0.2]",
                      f"paths.output_root={meshes['out']}"])
    assert result.returncode == 0, f"STDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-3000:]}"
    run = _only_run(meshes["out"])
    saved = json.loads((run / "results.json").read_text())
    direct = mesh_metrics(read_mesh(meshes["pred"]), read_mesh(meshes["gt"]), n_points=20000, seed=3,
                          thresholds=(0.05, 0.2), normalize="none")
    for key, value in direct.items():
        if key not in ("convention", "notes"):
            assert saved["metrics"][key] == value, key
    assert saved["convention"] == json.loads(json.dumps(direct["convention"]))
    assert saved["notes"] == []
    assert saved["pred"] == str(meshes["pred"]) and saved["gt"] == str(meshes["gt"])
    assert saved["pred_mesh"]["watertight"] and saved["gt_mesh"]["faces"] == read_mesh(meshes["gt"]).num_faces
    # the analytic case: concentric spheres 0.1 apart
    assert abs(saved["metrics"]["chamfer_l1"] - 0.1) < 0.005
    assert saved["metrics"]["fscore@0.05"] == 0.0 and saved["metrics"]["fscore@0.2"] == 1.0
    # the table is printed and written as markdown
    assert "chamfer_l1" in result.stdout and "fscore@0.2" in result.stdout
    markdown = (run / "results.md").read_text()
    assert f"| chamfer_l1 | {direct['chamfer_l1']:.6g} |" in markdown and "squared" in markdown


def test_mesh_eval_defaults_normalise_by_the_gt_diagonal(run_cli: RunCli, meshes: dict[str, Path]) -> None:
    result = run_cli(["sparse3d-eval", "evaluator=mesh", f"pred={meshes['pred']}", f"gt={meshes['gt']}",
                      "n_points=5000", f"paths.output_root={meshes['out']}"])
    assert result.returncode == 0, f"STDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-3000:]}"
    saved = json.loads((_only_run(meshes["out"]) / "results.json").read_text())
    gt = read_mesh(meshes["gt"])
    diagonal = gt.diagonal()
    direct = mesh_metrics(read_mesh(meshes["pred"]), gt, n_points=5000, seed=0)
    assert saved["convention"]["normalize"] == "gt_diagonal" and saved["convention"]["seed"] == 0
    assert saved["metrics"]["scale"] == pytest.approx(diagonal)
    assert saved["metrics"]["chamfer_l1"] == direct["chamfer_l1"]
    assert saved["metrics"]["tau_abs@0.01"] == pytest.approx(0.01 * diagonal)
    assert math.isclose(saved["metrics"]["chamfer_l1"] * diagonal, 0.1, rel_tol=0.1)


def test_mesh_without_surface_gives_defined_values(tmp_path: Path, meshes: dict[str, Path]) -> None:
    """A prediction whose only triangle has zero area reads fine but has no surface: infinite Chamfer (null in
    JSON), F-score 0, and notes saying so; nothing raises."""
    from sparse3d.metrics.mesh_evaluator import MeshEvaluator

    flat = tmp_path / "flat.obj"
    flat.write_text("v 0 0 0\nv 1 1 1\nv 2 2 2\nf 1 2 3\n")
    report = MeshEvaluator(str(flat), str(meshes["gt"]), n_points=1000).run(tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(report.results))
    assert saved["metrics"]["chamfer_l1"] is None and saved["metrics"]["accuracy"] is None
    assert saved["metrics"]["fscore@0.01"] == 0.0 and saved["metrics"]["normal_consistency"] == 0.0
    assert any("no surface" in note for note in saved["notes"]) and any("null" in note for note in saved["notes"])
    assert "inf" in report.text and (tmp_path / "results.md").is_file()
