"""``torchrun --standalone --nproc_per_node=2 sparse3d-train`` on CPU (gloo) with the toy model.

Oracle: DDP over 2 ranks with batch 4 each must follow the same trajectory as one process with batch 8
(the sampler gives rank r the elements r, r+2, ... of the same permutation and DDP averages gradients).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

RunCli = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nSTDOUT:\n{result.stdout[-4000:]}\nSTDERR:\n{result.stderr[-4000:]}"


def test_torchrun_two_ranks_share_one_run_and_match_single_process(
    run_cli: RunCli, script: Callable[[str], str], toy_config_dir: Path, tmp_path: Path
) -> None:
    common = ["--config-dir", str(toy_config_dir), "experiment=toy", "trainer.max_steps=8", "trainer.ckpt_every=4"]
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    _ok(run_cli([
        "torchrun", "--standalone", "--nproc_per_node=2", script("sparse3d-train"), *common,
        "data.batch_size=4", f"paths.output_root={ddp_out}",
        f"paths.data_dir={tmp_path / 'data_ddp'}",  # fresh: rank 0 generates while rank 1 waits
    ], timeout=300))
    _ok(run_cli([
        "sparse3d-train", *common, "data.batch_size=8", f"paths.output_root={single_out}",
        f"paths.data_dir={tmp_path / 'data_single'}",
    ]))

    runs = [p for p in (ddp_out / "train" / "toy").iterdir()]
    assert len(runs) == 1, f"ranks created several run dirs: {runs}"
    run = runs[0]
    assert run.name.startswith("torchrun_")
    assert (run / "train_rank0.log").is_file() and (run / "train_rank1.log").is_file()
    assert "rank 1/2" in (run / "train_rank1.log").read_text()
    assert not list(run.glob("train.log"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step_0000004.ckpt", "step_0000008.ckpt"]
    assert len(list(run.rglob("*.ckpt"))) == 3 and len(list((run / "tb").iterdir())) == 1
    assert (run / ".hydra" / "config.yaml").is_file()

    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 8
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # every rank's RNG stream is saved

    single_run = next((single_out / "train" / "toy").iterdir())
    ddp_weights = load_file(str(run / "model.safetensors"))
    single_weights = load_file(str(single_run / "model.safetensors"))
    assert ddp_weights.keys() == single_weights.keys()
    for key in ddp_weights:
        torch.testing.assert_close(ddp_weights[key], single_weights[key], atol=1e-5, rtol=0)
    single_summary = json.loads((single_run / "summary.json").read_text())
    assert summary["final_train_loss"] == pytest.approx(single_summary["final_train_loss"], abs=1e-5)
    assert summary["validation"]["mse"] == pytest.approx(single_summary["validation"]["mse"], abs=1e-5)
