"""A training process killed with SIGKILL and resumed reproduces the uninterrupted run exactly.

``sparse3d-train experiment=quickstart`` (shrunk: 4 tiny generated scans, a 4-channel U-Net, augmentation on, two
batches per epoch so the kill can land mid-epoch) runs once straight through; a second process is killed at a
random step after its first checkpoint and continued with ``resume=true``. The oracle is the uninterrupted run:
every per-step TensorBoard scalar (loss, accuracy, voxel count, learning rate) after the resumed checkpoint, the
final validation metrics and the exported weights must be bit-identical on the CPU.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

MAX_STEPS = 24
CKPT_EVERY = 4
STEP_LINE = re.compile(r"\bstep (\d+)/\d+ ")


def _overrides(root: Path, data_dir: Path) -> list[str]:
    return [
        "experiment=quickstart", f"trainer.max_steps={MAX_STEPS}", f"trainer.ckpt_every={CKPT_EVERY}",
        "trainer.log_every=1", "trainer.progress=false", "model.backbone.base_channels=4", "data.batch_size=2",
        f"paths.output_root={root}", f"paths.data_dir={data_dir}",
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("SPARSE3D_OUTPUT_ROOT", "SPARSE3D_DATA_DIR", "SPARSE3D_ROOT", "HYDRA_FULL_ERROR",
                "WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


def _start(train: str, args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([train, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                            cwd=str(cwd))


def _finish(process: subprocess.Popen[str]) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, f"exit {process.returncode}\n{output[-5000:]}"
    return output


def _kill_after(process: subprocess.Popen[str], kill_after_step: int) -> tuple[int, str]:
    """SIGKILL a training process as soon as it logs ``kill_after_step``; return (last step seen, its output)."""
    seen, lines = 0, []
    assert process.stdout is not None
    try:
        for line in process.stdout:
            lines.append(line)
            match = STEP_LINE.search(line)
            if match:
                seen = int(match.group(1))
                if seen >= kill_after_step:
                    process.send_signal(signal.SIGKILL)
                    break
    finally:
        if process.poll() is None and seen < kill_after_step:
            process.kill()
        process.wait(timeout=60)
        process.stdout.close()
    output = "".join(lines)
    assert process.returncode == -signal.SIGKILL, f"the run ended before the kill (exit {process.returncode}):\n{output}"
    return seen, output


def _run_dir(root: Path) -> list[Path]:
    return sorted(p for p in (root / "train" / "quickstart").iterdir() if p.is_dir())


def _scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def kill_and_resume(train: str, tmp_path: Path, kill_after_step: int, extra: list[str] | None = None) -> dict[str, Any]:
    """Run straight and, at the same time, a run that is killed; resume the killed one; return what to compare."""
    from sparse3d.datasets.synth.lidar import generate_lidar_scenes

    data_dir, cwd = tmp_path / "data", tmp_path / "cwd"
    cwd.mkdir()
    # written once up front (the runs would otherwise race to generate it): 3 training scans, so an epoch is two
    # batches of 2 and 1 and kills land mid-epoch too
    generate_lidar_scenes(data_dir / "synthetic_lidar", num_scenes=4, val_scenes=1, num_beams=8, points_per_beam=256,
                          progress=False)
    straight_root, resumed_root = tmp_path / "straight", tmp_path / "killed"
    extra = extra or []
    started = time.monotonic()
    straight = _start(train, [*_overrides(straight_root, data_dir), *extra], cwd)
    seen, killed_log = _kill_after(_start(train, [*_overrides(resumed_root, data_dir), *extra], cwd), kill_after_step)
    _finish(straight)
    (killed_run,) = _run_dir(resumed_root)
    assert not (killed_run / "summary.json").exists()
    time.sleep(max(0.0, 1.1 - (time.monotonic() - started)))  # run directories are named by the second
    resumed_log = _finish(_start(train, [*_overrides(resumed_root, data_dir), *extra, "resume=true"], cwd))
    (straight_run,) = _run_dir(straight_root)
    resumed_run = next(run for run in _run_dir(resumed_root) if run != killed_run)
    return {
        "seen": seen, "killed_log": killed_log, "resumed_log": resumed_log,
        "straight_run": straight_run, "killed_run": killed_run, "resumed_run": resumed_run,
        "straight": json.loads((straight_run / "summary.json").read_text()),
        "resumed": json.loads((resumed_run / "summary.json").read_text()),
        "straight_scalars": _scalars(straight_run), "resumed_scalars": _scalars(resumed_run),
    }


def test_sigkilled_run_resumes_bit_identically(script: Callable[[str], str], tmp_path: Path) -> None:
    kill_after_step = random.Random().randint(CKPT_EVERY + 1, MAX_STEPS - 6)
    out = kill_and_resume(script("sparse3d-train"), tmp_path, kill_after_step)
    context = f"killed after step {out['seen']} (target {kill_after_step})"
    straight, resumed = out["straight"], out["resumed"]

    assert resumed["resumed_from"] is not None and Path(resumed["resumed_from"]).parent.parent == out["killed_run"]
    assert straight["steps"] == resumed["steps"] == MAX_STEPS
    loss = out["straight_scalars"]["train/loss"]
    resumed_loss = out["resumed_scalars"]["train/loss"]
    first = min(resumed_loss)
    # resumed from a periodic checkpoint the killed run wrote before it died
    assert (first - 1) % CKPT_EVERY == 0 and CKPT_EVERY < first <= out["seen"] + 1, context
    assert sorted(resumed_loss) == list(range(first, MAX_STEPS + 1)), context
    assert sorted(loss) == list(range(1, MAX_STEPS + 1))
    for tag in ("train/loss", "train/acc", "train/voxels", "train/lr"):
        expected = {step: value for step, value in out["straight_scalars"][tag].items() if step >= first}
        assert out["resumed_scalars"][tag] == expected, f"{tag} differs ({context})"
    # augmentation really varies between epochs: equal losses are not the trivial outcome of identical batches
    assert len(set(out["straight_scalars"]["train/voxels"].values())) > 2

    assert resumed["validation"] == straight["validation"] and straight["validation"], context
    assert resumed["final_train_loss"] == straight["final_train_loss"], context
    straight_weights = load_file(str(out["straight_run"] / "model.safetensors"))
    resumed_weights = load_file(str(out["resumed_run"] / "model.safetensors"))
    assert straight_weights.keys() == resumed_weights.keys()
    for key, value in straight_weights.items():
        assert torch.equal(value, resumed_weights[key]), f"{key} differs ({context})"


if __name__ == "__main__":  # manual check against another dataset target: python -m tests.integration.test_exact_resume
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        train_script = str(Path(sys.executable).parent / "sparse3d-train")
        result = kill_and_resume(train_script, Path(scratch), int(sys.argv[1]) if len(sys.argv) > 1 else 9, sys.argv[2:])
        print(result["seen"], result["straight"]["validation"], result["resumed"]["validation"])
