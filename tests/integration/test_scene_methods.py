"""Per-scene methods end to end on a tiny generated SpaRe scene: plain 3DGS through the shared loop, a killed run
resumed from its checkpoint, and `sparse3d-spare submit` fitting the same method config per scene.

Oracles: test-view PSNR of the first render (step 0) versus the end, computed by the loop on held-out views the
method never sees; an uninterrupted run of the same seed for the resumed one; the method config composed by
``sparse3d-train`` versus the one composed by ``sparse3d-spare``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sparse3d.datasets.spare import load_spare_scene
from sparse3d.datasets.synth.spare_scenes import generate_spare_scenes
from sparse3d.io.gaussian_ply import load_gaussian_ply
from sparse3d.io.spare import read_split
from sparse3d.models.splatting.gs3d import GaussianSplatting
from sparse3d.train.scene_trainer import SceneTrainer, method_factory

SPLIT = "Track1_split_development.json"
FAST = ["method.num_points=3000", "trainer.log_every=10", "trainer.progress=false", "trainer.device=cpu"]


@pytest.fixture(scope="module")
def tiny_spare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spare") / "data"
    return generate_spare_scenes(root, num_scenes=2, width=64, height=48, lightings=[3], naming="Synthetic",
                                 progress=False)


def test_gs3d_through_the_shared_loop_improves_test_views(tiny_spare: Path, tmp_path: Path, hydra_compose) -> None:
    scene = load_spare_scene(tiny_spare, SPLIT)
    assert scene.test is not None and len(scene.inputs) == 3 and len(scene.test) == 10
    cfg = hydra_compose("train", ["experiment=gs3d_spare", "method.num_points=3000"])
    method = method_factory(cfg.method)()  # the shipped configs/method/gs3d.yaml
    assert isinstance(method, GaussianSplatting)
    summary = SceneTrainer({"device": "cpu", "progress": False, "max_steps": 80, "log_every": 20},
                           tmp_path / "run").fit(method, scene)
    start, end = summary["test_initial"], summary["test"]
    assert end["psnr"] > start["psnr"] + 3.0, (start, end)
    assert end["psnr_m"] > start["psnr_m"] and end["ssim"] > start["ssim"], (start, end)
    assert summary["steps"] == 80 and summary["final_train_loss"] < 0.5
    renders = sorted(p.name for p in (tmp_path / "run" / "renders" / "test").iterdir())
    assert renders == sorted(scene.test.view_names())
    cloud = load_gaussian_ply(tmp_path / "run" / "point_cloud.ply")
    assert cloud.means.shape == (3000, 3)
    torch.testing.assert_close(cloud.means, method.model.means.detach())


def _train_cmd(tiny: Path, out: Path, *extra: str) -> list[str]:
    script = Path(sys.executable).parent / "sparse3d-train"
    return [str(script), "experiment=gs3d_spare", f"data.root={tiny}", f"paths.output_root={out}", *FAST, *extra]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SPARSE3D_OUTPUT_ROOT", "HYDRA_FULL_ERROR")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(tiny_spare: Path, tmp_path: Path) -> None:
    steps = ["trainer.max_steps=60", "trainer.ckpt_every=10", "trainer.seed=3"]
    full = subprocess.run(_train_cmd(tiny_spare, tmp_path / "full", *steps), capture_output=True, text=True,
                          timeout=600, env=_env())
    assert full.returncode == 0, full.stderr[-3000:]
    full_summary = json.loads(next((tmp_path / "full").rglob("summary.json")).read_text())

    proc = subprocess.Popen(_train_cmd(tiny_spare, tmp_path / "killed", *steps), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env())
    deadline = time.monotonic() + 600
    try:
        while not list((tmp_path / "killed").rglob("step_0000020.ckpt")):
            assert proc.poll() is None, "the run ended before its second checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_run = next((tmp_path / "killed").rglob("checkpoints")).parent
    assert not (killed_run / "summary.json").exists()

    resumed = subprocess.run(_train_cmd(tiny_spare, tmp_path / "killed", *steps, "resume=true"),
                             capture_output=True, text=True, timeout=600, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "killed").rglob("summary.json")]
    assert len(summaries) == 1
    summary = summaries[0]
    assert summary["resumed_from"].startswith(str(killed_run / "checkpoints"))
    assert summary["steps"] == 60
    assert summary["test_initial"] == full_summary["test_initial"]  # carried over from the killed run
    for key, value in full_summary["test"].items():
        assert summary["test"][key] == pytest.approx(value, rel=1e-5, abs=1e-5), key


def test_spare_submit_fits_the_same_method_config_per_scene(
    tiny_spare: Path, tmp_path: Path, hydra_compose
) -> None:
    train_cfg = hydra_compose("train", ["experiment=gs3d_spare"])
    spare_cfg = hydra_compose("spare", ["command=submit", "method=gs3d"])
    assert OmegaConf.to_container(train_cfg.method) == OmegaConf.to_container(spare_cfg.method)

    script = Path(sys.executable).parent / "sparse3d-spare"
    out = tmp_path / "sub.zip"
    result = subprocess.run(
        [str(script), "submit", f"data_root={tiny_spare}", f"split={SPLIT}", "method=gs3d", f"out={out}",
         "width=64", "height=48", "method.num_points=500", "trainer.max_steps=5", "trainer.progress=false",
         f"paths.output_root={tmp_path / 'outputs'}"],
        capture_output=True, text=True, timeout=600, env=_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "valid submission" in result.stdout
    states = sorted((tmp_path / "sub_render" / ".method_state").iterdir())
    assert [p.name for p in states] == sorted(read_split(tiny_spare / SPLIT))
    for state in states:  # the shared loop ran each scene: its checkpoint holds 5 steps of this method
        ckpt = torch.load(state / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["step"] == 5 and ckpt["kind"] == "scene" and ckpt["method"]["gaussians"]["means"].shape == (500, 3)


def test_gs3d_densifying_fit_grows_the_gaussians_and_improves_test_views(
    tiny_spare: Path, tmp_path: Path, hydra_compose
) -> None:
    """gsplat's default strategy through the shared loop, its schedule written for this 80-step run: refinements
    at steps 25, 50 and 75 change the count (clones + children - pruned), the fit still beats the first render."""
    scene = load_spare_scene(tiny_spare, SPLIT)
    schedule = {"refine_every": 25, "refine_start": 20, "refine_stop": 80, "reset_every": 1000, "schedule_steps": 80}
    cfg = hydra_compose("train", ["experiment=gs3d_spare", "method.num_points=3000",
                                  *(f"method.densify.{k}={v}" for k, v in schedule.items())])
    method = method_factory(cfg.method)()
    summary = SceneTrainer({"device": "cpu", "progress": False, "max_steps": 80, "log_every": 20},
                           tmp_path / "run").fit(method, scene)
    start, end = summary["test_initial"], summary["test"]
    assert end["psnr"] > start["psnr"] + 3.0 and end["psnr_m"] > start["psnr_m"], (start, end)
    info = summary["method_info"]
    densify = info["densify"]
    assert densify["refinements"] == 3 and densify["opacity_resets"] == 0
    assert densify["cloned"] + densify["split"] > 0
    assert info["num_gaussians"] == 3000 + densify["cloned"] + densify["split"] - densify["pruned"] != 3000
    cloud = load_gaussian_ply(tmp_path / "run" / "point_cloud.ply")
    assert cloud.means.shape == (info["num_gaussians"], 3)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["method"]["densify"]["grad2d"].shape == (info["num_gaussians"],)


@pytest.mark.slow
def test_killed_densifying_run_resumes_from_its_checkpoint(
    tiny_spare: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resume test above with densification firing around its checkpoints: the statistics accumulated before
    the step-20 checkpoint decide the refinement at step 20; refinements at 30 and 40, an opacity reset at 30."""
    schedule = {"refine_every": 10, "refine_start": 10, "refine_stop": 50, "reset_every": 30, "schedule_steps": 60}
    monkeypatch.setattr(sys.modules[__name__], "FAST", [*FAST, *(f"method.densify.{k}={v}" for k, v in schedule.items())])
    test_killed_run_resumes_from_its_checkpoint(tiny_spare, tmp_path)
    full, resumed = (json.loads(next((tmp_path / run).rglob("summary.json")).read_text())["method_info"]
                     for run in ("full", "killed"))
    assert full["densify"]["refinements"] == 3 and full["densify"]["opacity_resets"] == 1
    assert full["num_gaussians"] != 3000 and resumed == full
