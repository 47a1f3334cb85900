"""SparseFlex fitting from renders through the shared per-scene loop (``sparse3d-train experiment=sparseflex_fit``).

Oracles: the target mesh (F-score and Chamfer of the exported ``mesh.ply`` against it, in the input's
coordinates), the renders (mask and depth losses fall), the section rule (each step's cubes are inside the camera
frustum and hold about the requested share), and an uninterrupted run for the resumed one (same parameters).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse3d.datasets.meshes import load_mesh_scene
from sparse3d.datasets.synth.fit_shapes import write_fit_shapes
from sparse3d.io.mesh import read_mesh
from sparse3d.metrics.mesh import mesh_metrics
from sparse3d.models.sparseflex.fit import SparseFlexFit
from sparse3d.train.scene_trainer import SceneTrainer

RunCli = Callable[..., subprocess.CompletedProcess[str]]
FAST = ["data.num_views=8", "data.test_views=2", "data.width=48", "data.height=48", "method.resolution=24",
        "trainer.progress=false", "trainer.device=cpu", "trainer.log_every=5", "trainer.ckpt_every=5"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_fit_shapes(tmp_path_factory.mktemp("shapes"), ("sphere", "cavity"))


def test_cli_fit_writes_a_close_mesh_in_input_coordinates(shapes: dict[str, Path], tmp_path: Path,
                                                          run_cli: RunCli) -> None:
    # the target in other units: scaled and moved, so the normalisation round trip is checked too
    source = read_mesh(shapes["sphere"])
    from sparse3d.io.mesh import TriangleMesh, write_mesh

    moved = write_mesh(tmp_path / "moved.obj", TriangleMesh(source.vertices * 3.0 + np.array([1.0, -2.0, 0.5],
                                                                                               dtype=np.float32),
                                                            source.faces))
    result = run_cli(["sparse3d-train", "experiment=sparseflex_fit", f"data.mesh={moved}", "trainer.max_steps=10",
                      *FAST, f"paths.output_root={tmp_path / 'out'}", f"paths.data_dir={tmp_path / 'data'}"],
                     timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = list((tmp_path / "out").rglob("summary.json"))
    assert len(summaries) == 1
    run = summaries[0].parent
    summary = json.loads(summaries[0].read_text())
    info = summary["method_info"]
    assert info["boundary_edges"] == 0 and info["faces"] > 0
    fitted = read_mesh(run / "mesh.ply")
    target = read_mesh(moved)
    metrics = mesh_metrics(fitted, target, n_points=20_000, seed=0)
    assert metrics["fscore@0.01"] > 0.9, metrics
    assert abs(fitted.signed_volume() - target.signed_volume()) < 0.15 * target.signed_volume()
    with np.load(run / "field.npz") as field:
        assert int(field["resolution"]) == 24 and field["sdf"].ndim == 1 and field["cube_coords"].shape[1] == 3
    # the saved field gives back the exported mesh (sparse3d-mesh input=field.npz)
    from sparse3d.models.sparseflex.meshing import mesh_from_input

    again = mesh_from_input(run / "field.npz", 32)
    assert again.kind == "field" and again.resolution == 24
    np.testing.assert_array_equal(again.mesh.faces, fitted.faces)
    np.testing.assert_allclose(again.mesh.vertices, fitted.vertices, atol=1e-5)


def test_sections_stay_in_the_frustum_and_hold_the_share(shapes: dict[str, Path]) -> None:
    scene = load_mesh_scene(shapes["sphere"], num_views=6, test_views=0, width=40, height=40)
    method = SparseFlexFit(resolution=24, section_ratio=0.3)
    method.setup(scene.inputs, 4, mesh=scene.mesh, normalization=scene.normalization)
    total = len(method.cubes)
    for index in range(len(scene.inputs.cameras)):
        ids, near, far = method._section(index)
        assert near is not None and far is not None and near < far
        centres = (method.cubes[ids].float() + 0.5) / method.resolution - 0.5
        uv, z = scene.inputs.cameras[index].project(centres)
        z = z.reshape(-1)
        h = 1.0 / method.resolution
        assert bool((z >= near - h - 1e-6).all()) and bool((z <= far + h + 1e-6).all())
        assert 0.3 * total <= len(ids) <= 0.75 * total  # the window plus its one-voxel margins
    out = method.training_step(0)
    assert out["section_cubes"] < total and out["faces"] > 0


def test_cavity_is_kept_with_inside_cameras(shapes: dict[str, Path], tmp_path: Path) -> None:
    scene = load_mesh_scene(shapes["cavity"], num_views=8, test_views=0, inside_views=6, width=48, height=48)
    method = SparseFlexFit(resolution=32)
    SceneTrainer({"device": "cpu", "progress": False, "max_steps": 6, "log_every": 3, "tensorboard": False},
                 tmp_path / "run").fit(method, scene)
    fitted = read_mesh(tmp_path / "run" / "mesh.ply")
    radii = np.linalg.norm(fitted.vertices - scene.normalization.center, axis=1) / scene.normalization.scale
    # both shells are there: vertices near the outer radius and near the inner (cavity) radius
    target_r = np.linalg.norm(scene.mesh.vertices, axis=1)
    outer, inner = float(target_r.max()), float(target_r.min())
    assert (np.abs(radii - outer) < 0.05).sum() > 100 and (np.abs(radii - inner) < 0.05).sum() > 50


def test_resume_continues_the_same_run(shapes: dict[str, Path], tmp_path: Path) -> None:
    scene = load_mesh_scene(shapes["sphere"], num_views=6, test_views=0, width=40, height=40)
    cfg = {"device": "cpu", "progress": False, "log_every": 2, "ckpt_every": 3, "tensorboard": False, "seed": 3,
           "max_steps": 6}
    full = SparseFlexFit(resolution=24, seed=3)
    SceneTrainer(cfg, tmp_path / "full").fit(full, scene)
    mid = tmp_path / "full" / "checkpoints" / "step_0000003.ckpt"
    assert mid.is_file()
    resumed = SparseFlexFit(resolution=24, seed=3)
    summary = SceneTrainer(cfg, tmp_path / "resumed").fit(resumed, scene, resume=mid)
    assert summary["steps"] == 6 and summary["resumed_from"] == str(mid)
    for key in ("sdf", "deform", "beta", "alpha", "gamma"):
        torch.testing.assert_close(resumed.params[key], full.params[key], rtol=1e-5, atol=1e-7)
