"""Unit tests of the shared trainer on a toy linear-regression model (fixture ``toy`` from conftest)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import shutil
import time
from collections import OrderedDict, namedtuple
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from sparse3d.datasets.semantic_kitti import SemanticKittiDataset
from sparse3d.io.pointcloud import read_kitti_bin, write_kitti_bin, write_semantic_kitti_label
from sparse3d.train import Trainer, load_weights, save_weights
from sparse3d.train.checkpoint import (
    find_latest_checkpoint,
    load_checkpoint,
    read_weights_metadata,
    resolve_resume,
    save_checkpoint,
)
from sparse3d.train.data import ResumableDistributedSampler, batches_per_epoch
from sparse3d.train.monitor import ProgressReporter
from sparse3d.utils.device import move_to_device, resolve_device
from sparse3d.utils.errors import UserError


def _trainer_cfg(**overrides: object) -> dict[str, object]:
    cfg: dict[str, object] = {"device": "cpu", "progress": False, "log_every": 1, "max_steps": 10, "seed": 0}
    cfg.update(overrides)
    return cfg


def _fit(
    toy: ModuleType,
    out: Path,
    *,
    model: Callable[[], torch.nn.Module] | torch.nn.Module | None = None,
    init_seed: int = 123,
    train_samples: int = 12,
    batch_size: int = 4,
    lr: float = 0.1,
    resume: object = False,
    scheduler: object = None,
    val: bool = True,
    runs_root: Path | None = None,
    **cfg: object,
) -> tuple[Trainer, dict[str, float], torch.nn.Module]:
    torch.manual_seed(init_seed)  # before building the model: the init depends on it
    if model is None:
        model = toy.LinearRegressor()
    elif not isinstance(model, torch.nn.Module):
        model = model()
    trainer = Trainer(_trainer_cfg(**cfg), out, runs_root=runs_root)
    metrics = trainer.fit(
        model,
        toy.RegressionDataset(num_samples=train_samples, seed=0),
        toy.RegressionDataset(num_samples=8, seed=1) if val else None,
        optimizer=partial(torch.optim.SGD, lr=lr),
        scheduler=scheduler,
        batch_size=batch_size,
        resume=resume,
    )
    return trainer, metrics, model


def _losses(trainer: Trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.history]


def test_linear_regression_reaches_least_squares_optimum(toy: ModuleType, tmp_path: Path) -> None:
    """Full-batch gradient descent must approach the closed-form least-squares fit (the oracle)."""
    data = toy.RegressionDataset(num_samples=64, seed=0)
    design = torch.cat([data.x, torch.ones(len(data), 1)], dim=1)
    solution = torch.linalg.lstsq(design, data.y.unsqueeze(1)).solution.squeeze(1)
    optimum_mse = float(((design @ solution - data.y) ** 2).mean())

    trainer, metrics, model = _fit(
        toy, tmp_path / "run", train_samples=64, batch_size=64, lr=0.3, max_steps=150, val=False,
        log_every=10,
    )
    losses = _losses(trainer)
    assert len(losses) == 150
    assert losses[-1] < 0.1 * losses[0]
    assert losses[-1] == pytest.approx(optimum_mse, rel=1e-3, abs=1e-6)
    learned = torch.cat([model.linear.weight.detach().squeeze(0), model.linear.bias.detach()])
    torch.testing.assert_close(learned, solution, atol=1e-3, rtol=0)
    assert metrics["step"] == 150
    assert metrics["train/loss_last"] == pytest.approx(losses[-1])


def test_gradient_clipping_caps_global_norm(toy: ModuleType, tmp_path: Path) -> None:
    """The grad norm seen by the optimizer step never exceeds grad_clip; without clipping it does."""

    def record_norms(clip: float | None, out: Path) -> list[float]:
        torch.manual_seed(0)
        model = toy.LinearRegressor(scale=10.0)  # large inputs -> large gradients
        norms: list[float] = []

        def hook(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
            grads = [p.grad.detach().flatten() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norms.append(float(torch.cat(grads).norm()))

        original_factory = partial(torch.optim.SGD, lr=1e-4)

        def factory(params: object) -> torch.optim.Optimizer:
            opt = original_factory(params)
            opt.register_step_pre_hook(hook)
            return opt

        trainer = Trainer(_trainer_cfg(max_steps=5, grad_clip=clip), out)
        trainer.fit(model, toy.RegressionDataset(num_samples=16), optimizer=factory, batch_size=8)
        assert "grad_norm" in trainer.history[-1] or clip is None
        return norms

    clipped = record_norms(0.5, tmp_path / "clip")
    unclipped = record_norms(None, tmp_path / "noclip")
    assert len(clipped) == 5
    assert max(clipped) <= 0.5 + 1e-5
    assert min(unclipped) > 0.5  # the cap was actually binding


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save interrupted mid-write leaves the previous file intact and no temp file behind."""
    path = tmp_path / "checkpoints" / "last.ckpt"
    save_checkpoint({"step": 1, "weights": torch.ones(3)}, path)

    real_save = torch.save

    def exploding_save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        with open(f, "wb") as handle:  # type: ignore[arg-type]
            handle.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2, "weights": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)

    state = load_checkpoint(path)
    assert state["step"] == 1
    torch.testing.assert_close(state["weights"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_trainer_checkpoint_interrupted_keeps_previous_last(
    toy: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the step-4 checkpoint write dies, last.ckpt still holds the valid step-2 state."""
    real_save = torch.save
    calls = {"n": 0}

    def flaky_save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            with open(f, "wb") as handle:  # type: ignore[arg-type]
                handle.write(b"\x00" * 10)
            raise KeyboardInterrupt  # like Ctrl-C in the middle of writing
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(KeyboardInterrupt):
        _fit(toy, tmp_path / "run", max_steps=6, ckpt_every=2)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.ckpt", "step_0000002.ckpt"]
    assert load_checkpoint(ckpt_dir / "last.ckpt")["step"] == 2


def test_resume_reproduces_uninterrupted_run(toy: ModuleType, tmp_path: Path) -> None:
    """10 steps straight == 5 steps + resume 5 steps, bit for bit.

    Dropout (global RNG), shuffling (per-epoch order), a StepLR schedule and a mid-epoch stop
    (12 samples / batch 4 = 3 steps per epoch; step 5 is inside epoch 1) all have to be restored.
    """
    sched = partial(torch.optim.lr_scheduler.StepLR, step_size=3, gamma=0.5)

    def model() -> torch.nn.Module:
        return toy.LinearRegressor(dropout=0.3)

    full, full_metrics, full_model = _fit(toy, tmp_path / "full", model=model, max_steps=10, scheduler=sched)
    first, _, _ = _fit(toy, tmp_path / "first", model=model, max_steps=5, scheduler=sched)
    # different init seed: everything must come from the checkpoint
    second, second_metrics, second_model = _fit(
        toy, tmp_path / "second", model=model, init_seed=999, max_steps=10, scheduler=sched,
        resume=tmp_path / "first",
    )
    assert second.resumed_from == tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert [e["step"] for e in second.history] == [6, 7, 8, 9, 10]
    assert _losses(first) + _losses(second) == _losses(full)
    for a, b in zip(full_model.parameters(), second_model.parameters()):
        assert torch.equal(a, b)
    assert second_metrics["val/mse"] == full_metrics["val/mse"]


def test_validation_does_not_change_training(toy: ModuleType, tmp_path: Path) -> None:
    """Validating every step must not perturb the RNG streams that training uses."""
    def model() -> torch.nn.Module:
        return toy.LinearRegressor(dropout=0.5, random_validation=True)

    a, _, _ = _fit(toy, tmp_path / "a", model=model, max_steps=6, val_every=0)
    b, _, _ = _fit(toy, tmp_path / "b", model=model, max_steps=6, val_every=1)
    assert _losses(a) == _losses(b)


def test_resume_true_picks_newest_earlier_run(toy: ModuleType, tmp_path: Path) -> None:
    runs = tmp_path / "outputs" / "train" / "toy"
    with pytest.raises(UserError, match="no earlier run"):
        resolve_resume(True, runs, runs / "current")
    _fit(toy, runs / "run_a", max_steps=2, val=False)
    _fit(toy, runs / "run_b", max_steps=3, val=False)
    newest = runs / "run_b" / "checkpoints" / "last.ckpt"
    assert find_latest_checkpoint(runs) == newest
    # the current run's own directory never counts as "earlier"
    assert find_latest_checkpoint(runs, exclude=runs / "run_b") == runs / "run_a" / "checkpoints" / "last.ckpt"
    trainer, metrics, _ = _fit(toy, runs / "run_c", max_steps=5, val=False, resume=True, runs_root=runs)
    assert trainer.resumed_from == newest
    assert [e["step"] for e in trainer.history] == [4, 5]
    assert resolve_resume(False, runs, None) is None
    with pytest.raises(UserError, match="not found"):
        resolve_resume(str(tmp_path / "missing.ckpt"), runs, None)


def test_nan_loss_raises_naming_the_step(toy: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"non-finite training loss at step 3\b"):
        _fit(toy, tmp_path / "run", model=toy.LinearRegressor(nan_at_step=3), max_steps=6)


def test_tensorboard_scalars_written(toy: ModuleType, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _fit(toy, tmp_path / "run", max_steps=4, log_every=2, val_every=2)
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/mae", "train/lr", "val/mse"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    assert [e.step for e in events.Scalars("val/mse")] == [2, 4]


def test_checkpoint_contents_and_weights_export(toy: ModuleType, tmp_path: Path) -> None:
    trainer, _, model = _fit(toy, tmp_path / "run", max_steps=4, ckpt_every=2, ckpt_keep=1)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.ckpt", "step_0000004.ckpt"]  # pruned step 2
    state = load_checkpoint(ckpt_dir / "last.ckpt")
    assert state["step"] == 4
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "config", "trainer_config"} <= set(state)
    assert state["trainer_config"]["max_steps"] == 4
    for key, value in model.state_dict().items():
        torch.testing.assert_close(state["model"][key], value)

    exported = tmp_path / "run" / "model.safetensors"
    assert exported.is_file()
    fresh = toy.LinearRegressor()
    load_weights(fresh, exported)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert read_weights_metadata(exported)["step"] == "4"

    save_weights(model, tmp_path / "copy.safetensors", metadata={"note": "x"})
    assert read_weights_metadata(tmp_path / "copy.safetensors") == {"note": "x"}
    with pytest.raises(UserError, match="not found"):
        load_weights(fresh, tmp_path / "nope.safetensors")


def test_max_epochs_stops_training(toy: ModuleType, tmp_path: Path) -> None:
    trainer, metrics, _ = _fit(toy, tmp_path / "run", max_steps=0, max_epochs=2, val=False)
    assert metrics["step"] == 6  # 12 samples / batch 4 = 3 steps per epoch
    assert metrics["epoch"] == 2


def test_amp_on_cpu_is_ignored_with_warning(toy: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sparse3d.train"):
        trainer, _, _ = _fit(toy, tmp_path / "run", max_steps=2, amp=True, val=False)
    assert any("amp=true ignored" in r.getMessage() for r in caplog.records)
    assert trainer.scaler is None


def test_progress_is_logged_with_eta(toy: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sparse3d.train"):
        _fit(toy, tmp_path / "run", max_steps=4, log_every=2, val=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(lines) == 2
    assert lines[0].startswith("step 2/4 (50%)") and "loss" in lines[0] and "ETA" in lines[0]


def test_training_step_protocol_errors(toy: ModuleType, tmp_path: Path) -> None:
    class NoLoss(toy.LinearRegressor):  # type: ignore[misc, name-defined]
        def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {"mse": super().training_step(batch)["loss"]}

    with pytest.raises(TypeError, match="'loss'"):
        _fit(toy, tmp_path / "a", model=NoLoss(), max_steps=1)
    with pytest.raises(UserError, match="trainer.device"):
        Trainer(_trainer_cfg(device="tpu"), tmp_path / "b").fit(
            toy.LinearRegressor(), toy.RegressionDataset(num_samples=4)
        )
    with pytest.raises(UserError, match="invalid trainer config"):
        Trainer({"max_steps": "many"}, tmp_path / "c")
    with pytest.raises(UserError, match="invalid trainer config"):
        Trainer({"no_such_option": 1}, tmp_path / "d")


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_move_to_device_recurses() -> None:
    Pair = namedtuple("Pair", ["a", "b"])

    @dataclasses.dataclass
    class Holder:
        t: torch.Tensor
        name: str

    class HasTo:
        def __init__(self) -> None:
            self.moved_to: object = None

        def to(self, device: object) -> HasTo:
            self.moved_to = device
            return self

    batch = {
        "x": torch.ones(2),
        "nested": [torch.zeros(1), (torch.ones(1), "keep")],
        "pair": Pair(torch.ones(1), 3),
        "holder": Holder(torch.ones(1), "n"),
        "ordered": OrderedDict(z=torch.ones(1)),
        "custom": HasTo(),
        "path": Path("/x"),
    }
    moved = move_to_device(batch, torch.device("meta"))
    assert moved["x"].device.type == "meta"
    assert moved["nested"][0].device.type == "meta" and moved["nested"][1][1] == "keep"
    assert isinstance(moved["pair"], Pair) and moved["pair"].a.device.type == "meta" and moved["pair"].b == 3
    assert isinstance(moved["holder"], Holder) and moved["holder"].t.device.type == "meta"
    assert isinstance(moved["ordered"], OrderedDict) and moved["ordered"]["z"].device.type == "meta"
    assert moved["custom"].moved_to == torch.device("meta")
    assert moved["path"] == Path("/x")


def test_sampler_shards_like_one_big_batch() -> None:
    """Two ranks' batches of size B together equal the single-process batch of size 2B."""
    dataset = list(range(10))
    single = list(ResumableDistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=3))
    rank0 = ResumableDistributedSampler(dataset, num_replicas=2, rank=0, shuffle=True, seed=3)
    rank1 = ResumableDistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=3)
    assert sorted(single) == dataset
    r0, r1 = list(rank0), list(rank1)
    assert sorted(r0[:2] + r1[:2]) == sorted(single[:4])
    rank0.set_start(3)
    assert list(rank0) == r0[3:] and len(rank0) == len(r0) - 3
    assert batches_per_epoch(10, 4, 1, drop_last=False) == 3
    assert batches_per_epoch(10, 4, 1, drop_last=True) == 2
    assert batches_per_epoch(10, 2, 3, drop_last=False) == 2
    assert math.isclose(batches_per_epoch(9, 3, 3, drop_last=True), 1)


def test_sampler_orders_of_neighbouring_seeds_and_epochs_differ() -> None:
    """torch's own ``seed + epoch`` would make (seed 1, epoch 0) replay (seed 0, epoch 1)."""
    dataset = list(range(64))

    def order(seed: int, epoch: int) -> list[int]:
        sampler = ResumableDistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    orders = {(s, e): order(s, e) for s in range(3) for e in range(3)}
    assert len({tuple(o) for o in orders.values()}) == len(orders)
    assert all(sorted(o) == dataset for o in orders.values())
    assert order(1, 2) == orders[(1, 2)]  # deterministic
    assert ResumableDistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=5).seed == 5


# ------------------------------------------------------------------------------ resume=true run selection


def _hydra_run(run_dir: Path, started: float) -> Path:
    """A run directory as Hydra leaves it before training (``.hydra/config.yaml``), started at ``started``."""
    config = run_dir / ".hydra" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("task_name: train\n")
    os.utime(config, (started, started))
    return run_dir


def test_resume_true_says_when_the_newest_run_has_no_checkpoint(
    toy: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runs = tmp_path / "outputs" / "train" / "toy"
    _fit(toy, runs / "run_a", max_steps=2, val=False)
    with_ckpt = runs / "run_a" / "checkpoints" / "last.ckpt"
    now = time.time()
    os.utime(with_ckpt, (now - 100, now - 100))
    _hydra_run(runs / "killed_early", now - 50)  # newer, but stopped before its first checkpoint
    _hydra_run(runs / "old_failed", now - 500)  # older than run_a: not worth a mention
    with caplog.at_level(logging.WARNING, logger="sparse3d.train"):
        assert resolve_resume(True, runs, runs / "current") == with_ckpt
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(runs / "killed_early") in warnings[0] and str(runs / "run_a") in warnings[0]
    assert "old_failed" not in warnings[0]
    caplog.clear()
    # the checkpoint-less run is the current one: nothing to say
    with caplog.at_level(logging.WARNING, logger="sparse3d.train"):
        assert resolve_resume(True, runs, runs / "killed_early") == with_ckpt
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_resume_true_stops_when_no_earlier_run_has_a_checkpoint(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _hydra_run(runs / "first", time.time() - 10)
    with pytest.raises(UserError, match=r"no earlier run with checkpoints/last.ckpt .*the newest, .*first, stopped "
                                        r"before its first checkpoint"):
        resolve_resume(True, runs, runs / "current")


# --------------------------------------------------------------------------------------- speed reporting


def test_steady_rate_leaves_out_the_first_step() -> None:
    now = [100.0]
    reporter = ProgressReporter(10, 0, enabled=False, show_bar=False, first_step_notice_s=None, clock=lambda: now[0])
    assert reporter.steady_rate() is None and reporter.first_step_s() is None
    now[0] = 130.0  # the first step takes 30 s (kernel compilation)
    reporter.update(1, 1.0)
    assert reporter.steady_rate() is None and reporter.first_step_s() == 30.0
    for step in range(2, 6):  # then 0.5 s per step
        now[0] += 0.5
        reporter.update(step, 1.0)
    now[0] += 60.0  # final validation and checkpoint: not training speed
    assert reporter.steady_rate() == 2.0


def test_summary_speed_excludes_the_first_step(toy: ModuleType, tmp_path: Path) -> None:
    class SlowFirstStep(toy.LinearRegressor):  # type: ignore[misc, name-defined]
        def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            if self.calls == 0:
                time.sleep(0.6)  # stands in for the first run's kernel compilation
            return super().training_step(batch)

    _, metrics, _ = _fit(toy, tmp_path / "run", model=SlowFirstStep(), max_steps=6, val=False)
    assert metrics["time/first_step_s"] >= 0.6
    # counting the first step, 6 steps could not take less than 0.6 s, i.e. at most 10 steps/s
    assert metrics["time/steps_per_s"] > 20
    assert metrics["time/train_s"] >= 0.6  # the wall time still includes it
    _, one_step, _ = _fit(toy, tmp_path / "one", max_steps=1, val=False)
    assert "time/steps_per_s" not in one_step  # no step after the first: no speed to report


# ---------------------------------------------------------------------------------- per-epoch data seeds


def test_datasets_get_set_epoch_before_each_epoch_also_after_resume(toy: ModuleType, tmp_path: Path) -> None:
    class EpochAware(toy.RegressionDataset):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__(num_samples=12, seed=0)
            self.epochs: list[int] = []
            self.epoch = -1

        def set_epoch(self, epoch: int) -> None:
            self.epochs.append(epoch)
            self.epoch = epoch

        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            item = super().__getitem__(index)
            return {"x": item["x"] + self.epoch, "y": item["y"]}  # epoch-dependent "augmentation"

    def run(out: Path, max_steps: int, resume: object = False) -> tuple[Trainer, EpochAware]:
        torch.manual_seed(123)
        dataset = EpochAware()
        trainer = Trainer(_trainer_cfg(max_steps=max_steps), out)
        trainer.fit(toy.LinearRegressor(), dataset, optimizer=partial(torch.optim.SGD, lr=0.01), batch_size=4,
                    resume=resume)
        return trainer, dataset

    full, full_data = run(tmp_path / "full", 8)
    assert full_data.epochs == [0, 1, 2]  # 3 steps per epoch
    first, _ = run(tmp_path / "first", 4)
    second, second_data = run(tmp_path / "second", 8, resume=tmp_path / "first")
    assert second_data.epochs == [1, 2]  # resumed inside epoch 1
    assert _losses(first) + _losses(second) == _losses(full)


# ------------------------------------------------------------------ SemanticKITTI: epoch seeds and checks


@pytest.fixture(scope="module")
def lidar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sparse3d.datasets.synth.lidar import generate_lidar_scenes

    root = tmp_path_factory.mktemp("lidar") / "synthetic_lidar"
    return generate_lidar_scenes(root, num_scenes=4, val_scenes=1, num_beams=8, points_per_beam=256, progress=False)


def _kitti(root: Path, **kwargs: object) -> SemanticKittiDataset:
    options: dict[str, object] = {"split": "train", "point_range": [-40, -40, -3, 40, 40, 5], "augment": True,
                                  "seed": 5}
    options.update(kwargs)
    return SemanticKittiDataset(root, **options)  # type: ignore[arg-type]


def _same_item(a: dict, b: dict) -> bool:
    return torch.equal(a["points"], b["points"]) and torch.equal(a["labels"], b["labels"])


def test_augmentation_depends_only_on_seed_epoch_and_index(lidar_root: Path) -> None:
    first, second = _kitti(lidar_root), _kitti(lidar_root)
    first.set_epoch(3)
    second.set_epoch(3)
    reference = first[1]
    for index in (0, 2, 1, 1):  # reading other items (or the same one again) must not shift the draws
        second[index]
    assert _same_item(second[1], reference)
    second.set_epoch(4)
    assert not _same_item(second[1], reference)  # a new epoch, new augmentation
    assert not _same_item(_epoch(_kitti(lidar_root, seed=6), 3)[1], reference)  # another seed, another stream
    plain = _kitti(lidar_root, augment=False)
    before = plain[1]
    plain.set_epoch(9)
    assert _same_item(plain[1], before)  # without augmentation the epoch does not matter


def _epoch(dataset: SemanticKittiDataset, epoch: int) -> SemanticKittiDataset:
    dataset.set_epoch(epoch)
    return dataset


def test_dataloader_workers_reproduce_in_process_items(lidar_root: Path) -> None:
    """Items read by 2 worker processes equal the in-process reads of the same (seed, epoch, index)."""
    dataset = _epoch(_kitti(lidar_root), 2)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2, shuffle=False)
    through_workers = list(loader)
    assert len(through_workers) == len(dataset)
    for index, item in enumerate(through_workers):
        assert _same_item(item, dataset[index])


def _copy_tree(root: Path, dest: Path) -> Path:
    shutil.copytree(root, dest)
    return dest


def test_scan_with_nan_reflectance_is_named_when_the_dataset_is_built(lidar_root: Path, tmp_path: Path) -> None:
    root = _copy_tree(lidar_root, tmp_path / "copy")
    scan = sorted((root / "sequences" / "00" / "velodyne").glob("*.bin"))[1]
    points = read_kitti_bin(scan)
    points[[3, 7], 3] = np.nan
    points[11, :3] = np.nan  # a missing return (NaN coordinates) is dropped as documented, not an error
    write_kitti_bin(scan, points)
    finite = int(np.isfinite(points[:, :3]).all(axis=1).sum())
    with pytest.raises(UserError, match=rf"^{re.escape(str(scan))}: 2 of {finite} points .* NaN or "
                                        r"infinite reflectance"):
        _kitti(root)
    lazy = _kitti(root, check=False)  # the check then happens when the scan is read
    lazy[0]
    with pytest.raises(UserError, match="reflectance"):
        lazy[1]
    points[[3, 7], 3] = 0.5
    write_kitti_bin(scan, points)
    kept = _kitti(root, augment=False, point_range=None)[1]["points"]
    assert kept.shape[0] == int(np.isfinite(points[:, :3]).all(axis=1).sum()) < points.shape[0]


def test_scan_without_points_in_range_is_named(lidar_root: Path) -> None:
    far = [1000, 1000, 1000, 1001, 1001, 1001]
    first_scan = sorted((lidar_root / "sequences" / "00" / "velodyne").glob("*.bin"))[0]
    with pytest.raises(UserError, match=rf"^{re.escape(str(first_scan))}: no point inside point_range \[1000, 1000, "
                                        r"1000, 1001, 1001, 1001\] \(\d+ points, x in"):
        _kitti(lidar_root, point_range=far)


def test_scan_whose_labels_are_all_ignored_is_named(lidar_root: Path, tmp_path: Path) -> None:
    root = _copy_tree(lidar_root, tmp_path / "copy")
    label = sorted((root / "sequences" / "00" / "labels").glob("*.label"))[2]
    count = label.stat().st_size // 4
    write_semantic_kitti_label(label, np.zeros(count, dtype=np.int64))  # raw id 0: unlabelled -> ignore
    with pytest.raises(UserError, match=rf"^{re.escape(str(label))}: all \d+ points inside point_range have "
                                        r"training id 0 \(ignore\)"):
        _kitti(root)
    _kitti(root, split="valid")  # other sequences are untouched


def test_resuming_a_finished_run_says_there_is_nothing_to_train(
    toy: ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _fit(toy, tmp_path / "done", max_steps=3, val=False)
    with caplog.at_level(logging.WARNING, logger="sparse3d.train"):
        again, metrics, _ = _fit(toy, tmp_path / "again", max_steps=3, val=False, resume=tmp_path / "done")
    assert not again.history and metrics["step"] == 3
    assert any("at step 3 and the run plans 3 steps: nothing left to train" in r.getMessage() for r in caplog.records)


def test_summary_line_reports_speed_after_the_first_step(capsys: pytest.CaptureFixture[str]) -> None:
    from sparse3d.train.runs import print_summary

    print_summary("sparse3d-train", {"experiment": "x", "steps": 5, "wall_time_s": 9.0, "device": "cpu",
                                     "final_train_loss": 0.5, "steps_per_s": 35.25, "first_step_s": 61.5,
                                     "output_dir": "/o"})
    assert "35.2 steps/s after the first step, which took 61.5 s" in capsys.readouterr().out
