"""``sparse3d-spare`` end to end on tiny generated scenes: submit → check, broken zips, errors, a 2-scene
multirun with the local (joblib) launcher, collect, and the launcher configs."""

from __future__ import annotations

import csv
import importlib.util
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from sparse3d.cli import spare as spare_cli
from sparse3d.datasets.synth.spare_scenes import generate_spare_scenes
from sparse3d.io.images import read_image
from sparse3d.io.spare import image_filename, read_split

SPLIT = "Track1_split_development.json"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two generated scenes (one Synthetic, one DTU-named) at 64x48, lighting 3 only."""
    root = tmp_path_factory.mktemp("spare_data") / "spare"
    return generate_spare_scenes(root, num_scenes=2, width=64, height=48, seed=3, lightings=[3], progress=False)


def _common(tmp_path: Path) -> list[str]:
    return [f"paths.output_root={tmp_path / 'outputs'}", "progress=false"]


def test_submit_then_check_is_valid(run_cli: Callable, data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub.zip"
    size = ["width=160", "height=120"]  # 1600x1200 output is covered by tests/unit/test_spare_submission.py
    res = run_cli(["sparse3d-spare", "submit", f"data_root={data_root}", f"split={SPLIT}", "method=reprojection",
                   f"out={out}", *size, *_common(tmp_path)])
    assert res.returncode == 0, res.stderr
    assert "valid submission" in res.stdout
    entries = read_split(data_root / SPLIT)
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        image = cv2.imdecode(np.frombuffer(archive.read(names[0]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert len(names) == 10 * len(entries) and image.shape == (120, 160, 3)
    assert {n.split("/")[0] for n in names} == set(entries)
    res = run_cli(["sparse3d-spare", "check", f"zip={out}", f"split={data_root / SPLIT}", *size, *_common(tmp_path)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid submission" in res.stdout
    res = run_cli(["sparse3d-spare", "check", f"zip={out}", f"split={data_root / SPLIT}", *_common(tmp_path)])
    assert res.returncode == 1 and res.stdout.count("[wrong_size]") == len(names)  # default size is 1600x1200


def test_check_broken_zip_lists_every_problem(run_cli: Callable, data_root: Path, tmp_path: Path) -> None:
    entries = list(read_split(data_root / SPLIT).values())
    good = np.zeros((1200, 1600, 3), np.uint8)
    rgba = np.zeros((1200, 1600, 4), np.uint8)
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        for entry in entries:
            for i, view in enumerate(entry.test_views):
                if entry is entries[0] and i == 0:
                    continue  # missing
                data = rgba if (entry is entries[1] and i == 0) else good
                archive.writestr(f"{entry.scene}/{image_filename(entry.dataset, view)}",
                                 cv2.imencode(".png", data)[1].tobytes())
        archive.writestr("__MACOSX/._x", b"")
    res = run_cli(["sparse3d-spare", "check", f"zip={bad}", f"data_root={data_root}", f"split={SPLIT}",
                   *_common(tmp_path)])
    assert res.returncode == 1, res.stdout + res.stderr
    assert "3 problem(s)" in res.stdout
    first = f"{entries[0].scene}/{image_filename(entries[0].dataset, entries[0].test_views[0])}"
    assert f"[missing] {first}" in res.stdout and "[not_rgb8]" in res.stdout and "[macos_metadata]" in res.stdout


def _main_in_process(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Run ``sparse3d-spare`` in this process (error paths are cheap; a subprocess costs a torch import each)."""
    monkeypatch.setattr(sys, "argv", ["sparse3d-spare", *args])
    GlobalHydra.instance().clear()
    try:
        spare_cli.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        GlobalHydra.instance().clear()
    return code, capsys.readouterr().err


def test_user_errors_exit_2_with_one_line(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty" / "0").mkdir(parents=True)
    (tmp_path / "empty" / "0" / "results.json").write_text('{"method": "m", "scenes": {}}')
    broken = tmp_path / "broken.json"
    broken.write_text('{"scan1": {"input_views": [0, 1], "test_views": [], "dataset": "DTU"}}')
    cases = [
        (["submit", f"data_root={tmp_path / 'nope'}", f"split={SPLIT}"], "data_root not found"),
        (["submit", f"data_root={data_root}", f"split={broken}"], "broken.json: scene 'scan1'"),
        (["submit", f"data_root={data_root}", "split=missing.json"], "split file not found"),
        (["check", f"zip={tmp_path / 'none.zip'}", f"split={broken}"], "zip not found"),
        (["submit", f"data_root={data_root}", f"split={SPLIT}", "scene=Nope"], "not in the split"),
        (["collect", f"runs={tmp_path / 'outputs'}"], "no results.json"),
        (["collect", f"runs={tmp_path / 'empty'}"], "no evaluated scenes"),
        ([], "choose a command"),
        (["submit", f"data_root={data_root}", f"split={SPLIT}", "~method._partial_"], "_partial_: true"),
    ]
    for args, message in cases:
        code, err = _main_in_process([*args, *_common(tmp_path)], monkeypatch, capsys)
        assert code == 2, (args, err)
        assert message in err and "Traceback" not in err, (args, err)
        assert err.startswith("sparse3d-spare: error:") and len(err.strip().splitlines()) == 2  # + the hint line


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


@pytest.mark.slow  # two joblib worker processes each import torch: ~20-40 s on 2 cores
def test_multirun_per_scene_then_collect(run_cli: Callable, data_root: Path, tmp_path: Path) -> None:
    entries = read_split(data_root / SPLIT)
    scenes = sorted(entries)
    res = run_cli(["sparse3d-spare", "submit", "-m", f"data_root={data_root}", f"split={SPLIT}",
                   f"scene={','.join(scenes)}", *_common(tmp_path)])
    assert res.returncode == 0, res.stdout + res.stderr
    (sweep,) = (tmp_path / "outputs" / "spare" / "submit").glob("multirun_*")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    for job, scene in zip(jobs, scenes):
        assert [p.name for p in (job / "render").iterdir() if p.name != ".method_state"] == [scene]  # its scene only
        assert [p.name for p in (job / "render" / ".method_state").iterdir()] == [scene]  # fitted by the shared loop
        assert (job / "results.json").is_file()
    res = run_cli(["sparse3d-spare", "collect", f"runs={sweep}", *_common(tmp_path)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert all(f"| {s} |" in res.stdout for s in scenes)
    with (sweep / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    by_scene = {r["scene"]: r for r in rows if r["scene"] != "mean"}
    assert set(by_scene) == set(scenes) and (sweep / "summary.md").is_file()
    assert sorted(r["dataset"] for r in rows if r["scene"] == "mean") == ["DTU", "Synthetic"]
    # Independent oracle: per-image PSNR from the rendered and ground-truth PNGs, averaged over the scene.
    for job, scene in zip(jobs, scenes):
        entry = entries[scene]
        values = []
        for view in entry.test_views:
            name = image_filename(entry.dataset, view)
            values.append(_psnr(read_image(job / "render" / scene / name), read_image(data_root / scene / name)))
        assert float(by_scene[scene]["psnr"]) == pytest.approx(np.mean(values), abs=1e-6)


def test_launcher_configs_compose(hydra_compose: Callable, tmp_path: Path) -> None:
    cfg = hydra_compose("spare", ["command=sweep", f"paths.output_root={tmp_path}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2
    assert cfg.method._target_.endswith("NearestViewReprojection") and cfg.experiment_name == "sweep"
    HydraConfig.instance().set_config(cfg)
    assert Path(cfg.hydra.sweep.dir).parent == tmp_path / "spare" / "sweep"
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        pytest.skip("hydra-submitit-launcher (extra `cluster`) is not installed")
    cfg = hydra_compose("spare", ["command=sweep", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                        return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.gpus_per_node == 1
