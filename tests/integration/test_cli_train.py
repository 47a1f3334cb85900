"""End-to-end runs of the installed console scripts (``sparse3d-train``, ``-eval``, ``-data``).

A toy regression model lives in a temp module on ``PYTHONPATH`` and a user config dir is added with
``--config-dir`` — exactly how a user plugs in their own model while keeping the packaged groups.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

RunCli = Callable[..., subprocess.CompletedProcess[str]]


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nSTDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-3000:]}"
    return result


def _only_child(path: Path) -> Path:
    children = [p for p in path.iterdir() if p.is_dir()]
    assert len(children) == 1, f"expected one run dir in {path}, found {children}"
    return children[0]


def _user_error(result: subprocess.CompletedProcess[str], app: str, needle: str) -> None:
    assert result.returncode == 2, result.stderr
    assert f"{app}: error:" in result.stderr and needle in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture(scope="module")
def toy_run(run_cli: RunCli, toy_config_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One toy training run shared by the tests below (8 steps, checkpoints every 4)."""
    root = tmp_path_factory.mktemp("toy_run")
    result = _ok(run_cli([
        "sparse3d-train", "--config-dir", str(toy_config_dir), "experiment=toy",
        f"paths.output_root={root / 'outputs'}", f"paths.data_dir={root / 'data'}",
    ]))
    run_dir = _only_child(root / "outputs" / "train" / "toy")
    return {"root": root, "run_dir": run_dir, "result": result,
            "summary": json.loads((run_dir / "summary.json").read_text())}


def test_train_writes_run_dir(toy_run: dict[str, Any]) -> None:
    run_dir: Path = toy_run["run_dir"]
    summary = toy_run["summary"]
    assert (toy_run["root"] / "data" / "toy_regression" / "train.pt").is_file()  # generate_if_missing ran
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"last.ckpt", "step_0000004.ckpt", "step_0000008.ckpt"}
    assert {"config.yaml", "hydra.yaml", "overrides.yaml"} <= {p.name for p in (run_dir / ".hydra").iterdir()}
    assert (run_dir / "train.log").is_file() and list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert summary["experiment"] == "toy" and summary["task"] == "train"
    assert summary["steps"] == 8 and summary["world_size"] == 1 and summary["device"] == "cpu"
    assert summary["num_parameters"] == 4 and summary["model"]["target"] == "sparse3d_toy_models.LinearRegressor"
    assert "weight_norm" in summary["model"]  # from model.summary()
    assert summary["validation"]["mse"] > 0 and summary["wall_time_s"] > 0
    assert summary["final_train_loss"] < 5.0  # started near 7.3 (untrained fit of |w| ~ 2.5 targets)
    assert f"{toy_run['summary']['experiment']} finished 8 steps" in toy_run["result"].stdout

    # exported weights == checkpointed weights == what produced the summary's weight norm
    weights = load_file(str(run_dir / "model.safetensors"))
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["step"] == 8 and state["config"]["experiment_name"] == "toy"
    for key, value in weights.items():
        torch.testing.assert_close(value, state["model"][key])
    assert float(weights["linear.weight"].norm()) == pytest.approx(summary["model"]["weight_norm"], rel=1e-6)


def test_eval_reproduces_validation_metrics(run_cli: RunCli, toy_run: dict[str, Any]) -> None:
    """The eval app rebuilds the model from the checkpoint config; same weights + data -> same mse."""
    out = toy_run["root"] / "eval_outputs"
    result = _ok(run_cli(["sparse3d-eval", f"ckpt_path={toy_run['run_dir']}", f"paths.output_root={out}"]))
    eval_dir = _only_child(out / "eval" / "toy")
    results = json.loads((eval_dir / "results.json").read_text())
    assert results["evaluator"] == "validation" and results["step"] == 8 and results["num_samples"] == 16
    assert results["metrics"]["mse"] == pytest.approx(toy_run["summary"]["validation"]["mse"], rel=1e-6)
    assert "mse" in result.stdout


def test_eval_missing_checkpoint_is_a_clear_error(run_cli: RunCli, tmp_path: Path) -> None:
    result = run_cli(["sparse3d-eval", f"ckpt_path={tmp_path / 'nope'}", f"paths.output_root={tmp_path}"])
    _user_error(result, "sparse3d-eval", "checkpoint not found")
    result = run_cli(["sparse3d-eval", f"paths.output_root={tmp_path}"])
    _user_error(result, "sparse3d-eval", "ckpt_path is required")


def test_resume_true_continues_latest_run(run_cli: RunCli, toy_config_dir: Path, toy_run: dict[str, Any]) -> None:
    root: Path = toy_run["root"]
    result = _ok(run_cli([
        "sparse3d-train", "--config-dir", str(toy_config_dir), "experiment=toy", "resume=true",
        "trainer.max_steps=12", f"paths.output_root={root / 'outputs'}", f"paths.data_dir={root / 'data'}",
    ]))
    runs = sorted(p for p in (root / "outputs" / "train" / "toy").iterdir() if p.is_dir())
    new_run = next(p for p in runs if p != toy_run["run_dir"])
    summary = json.loads((new_run / "summary.json").read_text())
    assert summary["steps"] == 12
    assert summary["resumed_from"] == str(toy_run["run_dir"] / "checkpoints" / "last.ckpt")
    assert "resumed from" in (new_run / "train.log").read_text()
    assert result.returncode == 0


def test_user_config_dir_keeps_packaged_groups(run_cli: RunCli, toy_config_dir: Path, tmp_path: Path) -> None:
    """`--config-dir` adds user groups (model=my_model) next to packaged ones (optimizer=sgd, trainer)."""
    result = _ok(run_cli([
        "sparse3d-train", "--config-dir", str(toy_config_dir), "~experiment", "model=my_model",
        "data=my_data", "optimizer=sgd", "scheduler=cosine", "trainer=cpu", "trainer.max_steps=3",
        "trainer.progress=false", f"paths.output_root={tmp_path / 'o'}", f"paths.data_dir={tmp_path / 'd'}",
    ]))
    run_dir = _only_child(tmp_path / "o" / "train" / "default")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["model"]["target"].endswith("LinearRegressor")
    assert result.returncode == 0


def test_multirun_creates_numbered_job_dirs(run_cli: RunCli, toy_config_dir: Path, tmp_path: Path) -> None:
    _ok(run_cli([
        "sparse3d-train", "--config-dir", str(toy_config_dir), "-m", "experiment=toy", "trainer.seed=0,1",
        "trainer.max_steps=2", "trainer.ckpt_every=0", f"paths.output_root={tmp_path / 'o'}",
        f"paths.data_dir={tmp_path / 'd'}",
    ]))
    sweep = _only_child(tmp_path / "o" / "train" / "toy")
    assert sweep.name.startswith("multirun_") and (sweep / "multirun.yaml").is_file()
    summaries = [json.loads((sweep / str(n) / "summary.json").read_text()) for n in (0, 1)]
    assert [s["seed"] for s in summaries] == [0, 1]
    assert summaries[0]["final_train_loss"] != summaries[1]["final_train_loss"]  # different inits
    for n in (0, 1):
        assert (sweep / str(n) / "checkpoints" / "last.ckpt").is_file()


def test_user_mistakes_exit_cleanly(run_cli: RunCli, toy_config_dir: Path, tmp_path: Path) -> None:
    result = run_cli([
        "sparse3d-train", "--config-dir", str(toy_config_dir), "experiment=toy", "data.generate_if_missing=false",
        f"paths.output_root={tmp_path / 'o'}", f"paths.data_dir={tmp_path / 'missing'}",
    ])
    _user_error(result, "sparse3d-train", "does not exist")

    result = run_cli(["sparse3d-train", "trainer.max_steps=notanint", f"paths.output_root={tmp_path / 'o'}"])
    assert result.returncode != 0
    assert "trainer.max_steps" in result.stderr and "Traceback" not in result.stderr


def test_data_cli_positional_generator(run_cli: RunCli, toy_config_dir: Path, tmp_path: Path) -> None:
    result = _ok(run_cli([
        "sparse3d-data", "--config-dir", str(toy_config_dir), "toy", f"out_dir={tmp_path / 'gen'}",
        f"paths.output_root={tmp_path / 'o'}",
    ]))
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["train.pt", "valid.pt"]
    assert str(tmp_path / "gen") in result.stdout
    assert torch.load(tmp_path / "gen" / "train.pt")["x"].shape == (16, 3)


@pytest.mark.slow
def test_quickstart_default_experiment(run_cli: RunCli, tmp_path: Path) -> None:
    """`sparse3d-train` with no experiment argument runs the synthetic-LiDAR demo end to end, and it learns."""
    result = _ok(run_cli(
        ["sparse3d-train", f"paths.root_dir={tmp_path}", "trainer.device=cpu"], timeout=600,
    ))
    run_dir = _only_child(tmp_path / "outputs" / "train" / "quickstart")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] > 0 and summary["validation"]
    # 6 classes with road ~55 % of points: a model that learned nothing scores ~0.55 at best.
    assert summary["validation"]["accuracy"] > 0.85, summary["validation"]
    assert summary["validation"]["miou"] > 0.4, summary["validation"]
    assert (tmp_path / "data" / "synthetic_lidar").is_dir()
    assert "quickstart finished" in result.stdout
