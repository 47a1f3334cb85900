"""Unit tests of the shared trainer on a toy linear-regression model (fixture ``toy`` from conftest)."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import OrderedDict, namedtuple
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType

import pytest
import torch

from sparse3d.train import Trainer, load_weights, save_weights
from sparse3d.train.checkpoint import (
    find_latest_checkpoint,
    load_checkpoint,
    read_weights_metadata,
    resolve_resume,
    save_checkpoint,
)
from sparse3d.train.data import ResumableDistributedSampler, batches_per_epoch
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
