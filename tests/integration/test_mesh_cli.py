"""``sparse3d-mesh`` end to end on generated shapes: remeshing a closed and an open mesh, an SDF volume and a point
cloud, and its errors.

Oracles: the input shape itself (F-score of the output against the input mesh, closed in → closed out, an open
sheet keeps boundary edges and gets no second shell: its area stays that of one sheet), the analytic sphere for
the SDF volume and the point cloud, and the one-line error contract.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sparse3d.datasets.synth.fit_shapes import write_fit_shapes
from sparse3d.io.mesh import read_mesh
from sparse3d.metrics.mesh import mesh_metrics
from sparse3d.models.sparseflex.meshing import detect_input_kind, mesh_from_input
from sparse3d.utils.errors import UserError

RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_fit_shapes(tmp_path_factory.mktemp("shapes"), ("sphere", "sheet", "bracket"))


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"STDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-3000:]}"


def test_remesh_closed_sphere_stays_closed_and_close(shapes: dict[str, Path], tmp_path: Path, run_cli: RunCli) -> None:
    out = tmp_path / "sphere_64.ply"
    result = run_cli(["sparse3d-mesh", f"input={shapes['sphere']}", "resolution=64", f"out={out}",
                      f"paths.output_root={tmp_path / 'outputs'}"])
    _ok(result)
    assert "0 open-boundary edges" in result.stdout
    mesh, source = read_mesh(out), read_mesh(shapes["sphere"])
    assert mesh.is_watertight() and mesh.signed_volume() > 0
    assert abs(mesh.signed_volume() - source.signed_volume()) < 0.03 * source.signed_volume()
    metrics = mesh_metrics(mesh, source, n_points=20_000, seed=0)
    assert metrics["fscore@0.01"] > 0.97, metrics


def test_remesh_open_sheet_stays_open_with_one_layer(shapes: dict[str, Path]) -> None:
    source = read_mesh(shapes["sheet"])
    result = mesh_from_input(shapes["sheet"], 64)
    assert result.kind == "mesh" and result.boundary_edges > 0
    # one layer: the area of the remeshed sheet is that of the input (a doubled shell would give about twice)
    assert abs(result.mesh.area() - source.area()) < 0.1 * source.area(), (result.mesh.area(), source.area())
    metrics = mesh_metrics(result.mesh, source, n_points=20_000, seed=0)
    assert metrics["fscore@0.01"] > 0.9, metrics


def test_remesh_cad_like_bracket_keeps_its_shape(shapes: dict[str, Path]) -> None:
    """Sharp edges and flat faces off the grid axes: closed in, closed out, same volume, surface within 1 % of the
    diagonal (dual vertices round a sharp edge by less than a voxel)."""
    source = read_mesh(shapes["bracket"])
    assert source.is_watertight() and source.signed_volume() == pytest.approx(0.07, rel=1e-5)  # 70 cells of 0.1³
    result = mesh_from_input(shapes["bracket"], 128)
    assert result.boundary_edges == 0 and result.mesh.is_watertight()
    assert result.mesh.signed_volume() == pytest.approx(source.signed_volume(), rel=0.02)
    metrics = mesh_metrics(result.mesh, source, n_points=20_000, seed=0, distance="surface")
    assert metrics["fscore@0.01"] > 0.99 and metrics["normal_consistency"] > 0.95, metrics


def test_sdf_volume_and_point_cloud_inputs(tmp_path: Path) -> None:
    lin = np.linspace(-0.5, 0.5, 33)
    x, y, z = np.meshgrid(lin, lin, lin, indexing="ij")
    volume = (np.sqrt(x * x + y * y + z * z) - 0.3).astype(np.float32)
    np.save(tmp_path / "sdf.npy", volume)
    assert detect_input_kind(tmp_path / "sdf.npy") == "sdf"
    from_volume = mesh_from_input(tmp_path / "sdf.npy", 32)
    radii = np.linalg.norm(from_volume.mesh.vertices, axis=1)
    assert from_volume.boundary_edges == 0 and np.abs(radii - 0.3).max() < 0.02

    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(20_000, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    np.save(tmp_path / "points.npy", np.concatenate([0.3 * dirs, dirs], axis=1).astype(np.float32))
    assert detect_input_kind(tmp_path / "points.npy") == "points"
    from_points = mesh_from_input(tmp_path / "points.npy", 32)
    radii = np.linalg.norm(from_points.mesh.vertices, axis=1)
    assert from_points.boundary_edges == 0 and np.abs(radii - 0.3).max() < 0.03


@pytest.mark.parametrize("args, needle", [
    (["resolution=64"], "input= is required"),
    (["input=/no/such/file.obj"], "file not found"),
    (["input={sphere}", "out={tmp}/mesh.xyz"], "out="),
    (["input={sphere}", "resolution=1"], "resolution=1"),
    (["input={sphere}", "type=volume"], "type="),
])
def test_errors_are_one_line(args: list[str], needle: str, shapes: dict[str, Path], tmp_path: Path,
                             run_cli: RunCli) -> None:
    args = [a.format(sphere=shapes["sphere"], tmp=tmp_path) for a in args]
    result = run_cli(["sparse3d-mesh", *args, f"paths.output_root={tmp_path / 'outputs'}"])
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("sparse3d-mesh: error:") and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mesh.xyz").exists()


def test_unknown_suffix_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "shape.step"
    bad.write_text("ISO-10303-21;\n")
    with pytest.raises(UserError, match="shape.step"):
        mesh_from_input(bad, 32)
