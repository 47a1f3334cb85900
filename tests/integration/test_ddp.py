"""``torchrun --standalone --nproc_per_node=2`` on CPU (gloo): the toy model end to end, and hang diagnostics.

Oracle: DDP over 2 ranks with batch 4 each must follow the same trajectory as one process with batch 8
(the sampler gives rank r the elements r, r+2, ... of the same permutation and DDP averages gradients).

Every torchrun here runs with a short collective timeout and a hang deadline (``HANG_ENV``), so a rank that
hangs prints every thread's stack and exits well before the subprocess timeout, and the failure message shows
those stacks. (torchrun starts its ranks in their own sessions: a subprocess timeout kills torchrun alone and
the orphaned ranks keep its pipes open, so the ranks must end themselves.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
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

HANG_ENV = {"SPARSE3D_DIST_TIMEOUT_S": "60", "SPARSE3D_HANG_DUMP_S": "200"}
RUN_TIMEOUT_S = 280  # above SPARSE3D_HANG_DUMP_S: hung ranks exit (with their stacks) before this fires


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nSTDOUT:\n{result.stdout[-4000:]}\nSTDERR (stack dumps of hung ranks "
        f"included):\n{result.stderr[-30000:]}"
    )


def test_torchrun_two_ranks_share_one_run_and_match_single_process(
    run_cli: RunCli, script: Callable[[str], str], toy_config_dir: Path, tmp_path: Path
) -> None:
    common = ["--config-dir", str(toy_config_dir), "experiment=toy", "trainer.max_steps=8", "trainer.ckpt_every=4"]
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    _ok(run_cli([
        "torchrun", "--standalone", "--nproc_per_node=2", script("sparse3d-train"), *common,
        "data.batch_size=4", f"paths.output_root={ddp_out}",
        f"paths.data_dir={tmp_path / 'data_ddp'}",  # fresh: rank 0 generates while rank 1 waits
    ], timeout=RUN_TIMEOUT_S, extra_env=HANG_ENV))
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


# ------------------------------------------------------------------------------------------- hang diagnostics
def _torchrun_script(run_cli: RunCli, tmp_path: Path, source: str, env: dict[str, str]) -> tuple[
        subprocess.CompletedProcess[str], str]:
    """Run ``source`` as a 2-rank torchrun job; returns the result and the script's path."""
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    result = run_cli(["torchrun", "--standalone", "--nproc_per_node=2", str(path)], timeout=RUN_TIMEOUT_S,
                     extra_env=env)
    return result, str(path)


def _line_of(path: str, marker: str) -> int:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if marker in line)


def _dumped_at(stderr: str, path: str, line: int) -> bool:
    """True when a faulthandler stack in ``stderr`` has a frame at ``path:line``."""
    return re.search(rf'File "{re.escape(path)}", line {line} in ', stderr) is not None


def test_collective_one_rank_never_reaches_fails_at_the_timeout_and_the_other_rank_shows_its_stack(
    run_cli: RunCli, tmp_path: Path
) -> None:
    result, path = _torchrun_script(run_cli, tmp_path, """
        import time
        from sparse3d.train import distributed as D
        from sparse3d.train.session import process_session

        with process_session("cpu") as session:
            if session.dist.rank == 0:
                D.barrier("the barrier rank 1 skips")
            else:
                time.sleep(600)  # RANK1_STUCK
    """, {"SPARSE3D_DIST_TIMEOUT_S": "5", "SPARSE3D_HANG_DUMP_S": "200"})
    assert result.returncode != 0
    assert "rank 0/2: the barrier rank 1 skips failed" in result.stderr, result.stderr[-6000:]
    assert "SPARSE3D_DIST_TIMEOUT_S" in result.stderr
    # torchrun stopped rank 1 with SIGTERM once rank 0 failed; rank 1 printed where it was
    assert _dumped_at(result.stderr, path, _line_of(path, "RANK1_STUCK")), result.stderr[-6000:]


def test_ranks_stuck_outside_collectives_dump_every_stack_and_exit_at_the_deadline(
    run_cli: RunCli, tmp_path: Path
) -> None:
    result, path = _torchrun_script(run_cli, tmp_path, """
        import threading
        import time
        from sparse3d.train.session import process_session

        def helper():
            time.sleep(600)  # HELPER_THREAD

        with process_session("cpu") as session:
            threading.Thread(target=helper, daemon=True).start()
            if session.dist.rank == 0:
                time.sleep(600)  # RANK0_STUCK
            else:
                time.sleep(600)  # RANK1_STUCK
    """, {"SPARSE3D_DIST_TIMEOUT_S": "300", "SPARSE3D_HANG_DUMP_S": "4"})
    assert result.returncode != 0
    for marker in ("RANK0_STUCK", "RANK1_STUCK", "HELPER_THREAD"):
        assert _dumped_at(result.stderr, path, _line_of(path, marker)), f"no stack at {marker}:\n{result.stderr[-6000:]}"


def test_sigusr1_prints_every_thread_and_the_rank_keeps_running(tmp_path: Path) -> None:
    script = tmp_path / "usr1.py"
    script.write_text(textwrap.dedent("""
        import os, signal, threading, time
        from sparse3d.train import distributed as D

        D.install_hang_diagnostics()
        threading.Thread(target=lambda: time.sleep(30), daemon=True).start()  # OTHER_THREAD
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGUSR1)  # MAIN_THREAD
        print("still running")
        D.remove_hang_diagnostics()
    """), encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "still running"
    for marker in ("MAIN_THREAD", "OTHER_THREAD"):
        assert _dumped_at(result.stderr, str(script), _line_of(str(script), marker)), result.stderr


def test_a_late_rank_waits_for_the_data_rank_0_is_generating(run_cli: RunCli, tmp_path: Path) -> None:
    """A rank that reaches ``prepare`` after rank 0 created the data folder (a busy machine delays it) must
    still wait for the generation instead of reading a half-written folder and skipping the barrier."""
    (tmp_path / "slow_generator.py").write_text(textwrap.dedent("""
        import time
        from pathlib import Path

        def generate(root):
            Path(root).mkdir(parents=True)
            time.sleep(3)  # rank 0 is writing: the folder exists, the file not yet
            (Path(root) / "data.txt").write_text("ok")
    """), encoding="utf-8")
    root = tmp_path / "data"
    result, _ = _torchrun_script(run_cli, tmp_path, f"""
        import time
        from pathlib import Path
        from sparse3d.train import distributed as D
        from sparse3d.train.data_spec import DataSpec
        from sparse3d.train.session import process_session

        root = Path({str(root)!r})
        spec = DataSpec(root=str(root), generate_if_missing=True,
                        generator={{"_target_": "slow_generator.generate", "root": str(root)}})
        with process_session("cpu") as session:
            if session.dist.rank == 1:
                # arrive late: once rank 0 has created the folder, or after 5 s if rank 0 waits for this rank
                waited = 0.0
                while not root.exists() and waited < 5:
                    time.sleep(0.02)
                    waited += 0.02
            spec.prepare()
            print(f"rank {{session.dist.rank}} saw {{sorted(p.name for p in root.iterdir())}}", flush=True)
            D.barrier("after prepare")
    """, {"SPARSE3D_DIST_TIMEOUT_S": "60", "SPARSE3D_HANG_DUMP_S": "200"})
    assert "rank 1 saw ['data.txt']" in result.stdout, f"{result.stdout}\n{result.stderr[-4000:]}"
    _ok(result)
