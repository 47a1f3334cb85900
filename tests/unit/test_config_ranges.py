"""Value ranges of composed configs: one line naming the key, the value and the allowed range, before anything runs.

The oracle is the rule table written out by hand below (key, offending value, the words of the allowed range) and
the boundary values of each kind of bound; the shipped configs must all pass.
"""

from __future__ import annotations

import importlib.resources
import math
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from sparse3d.config_schema import (
    Bound,
    ConfigRangeError,
    Each,
    SceneTrainerConfig,
    TrainerConfig,
    check_components,
    check_writable_dir,
    validate_config,
)
from sparse3d.models.segmentation import PointClassifier, PointVoxelizer, SparseUNet
from sparse3d.train import Trainer
from sparse3d.utils.errors import UserError

Compose = Callable[..., DictConfig]
CONFIG_ROOT = importlib.resources.files("sparse3d.configs")


def _options(group: str) -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in CONFIG_ROOT.joinpath(group).iterdir()
                  if p.name.endswith(".yaml") and not p.name.startswith("base_"))


def _local(tmp_path: Path) -> list[str]:
    return [f"paths.output_root={tmp_path / 'outputs'}", f"paths.data_dir={tmp_path / 'data'}"]


# ------------------------------------------------------------------------------------------ the bounds


def test_bound_boundaries() -> None:
    at_least_one = Bound(int, 1)
    assert at_least_one.accepts(1) and at_least_one.accepts(10**9)
    assert not any(at_least_one.accepts(v) for v in (0, -1, 1.0, True, "2", None, math.inf))
    positive = Bound(float, 0, low_open=True)
    assert positive.accepts(1e-12) and positive.accepts(3)  # ints are fine where floats are expected
    assert not any(positive.accepts(v) for v in (0, 0.0, -1e-12, math.nan, math.inf, "abc", False))
    unit = Bound(float, 0, high=1, high_open=True, nullable=True)
    assert unit.accepts(0.0) and unit.accepts(0.999) and unit.accepts(None)
    assert not unit.accepts(1.0) and not unit.accepts(-0.1)
    assert at_least_one.describe() == "an integer >= 1"
    assert positive.describe() == "a finite number > 0"
    assert unit.describe() == "null or a finite number in [0, 1)"
    assert Bound(int, 0, note="0: keep all").describe() == "an integer >= 0 (0: keep all)"
    with pytest.raises(ConfigRangeError, match=r"^x.y=\[1, 0\] is out of range: expected a list of 2 values"):
        Each(positive, length=2)("x.y", [1, 0])
    Each(positive, length=2)("x.y", [1, 0.5])


def test_errors_are_user_errors_and_value_errors() -> None:
    with pytest.raises(UserError):
        Bound(int, 1)("a", 0)
    with pytest.raises(ValueError):
        Bound(int, 1)("a", 0)


# ------------------------------------------------------------------------------------ composed configs


BAD_OVERRIDES = [
    # (overrides, key named in the message, value as shown, words of the allowed range)
    (["model.voxelizer.voxel_size=[0,0,0]"], "model.voxelizer.voxel_size", "[0, 0, 0]", "each a finite number > 0"),
    (["optimizer.lr=-1"], "optimizer.lr", "-1", "a finite number > 0"),
    (["optimizer.lr=abc"], "optimizer.lr", "'abc'", "a finite number > 0"),
    (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay", "-0.1", "a finite number >= 0"),
    (["data.num_classes=0"], "data.num_classes", "0", "an integer >= 1"),
    (["data.num_workers=-1"], "data.num_workers", "-1", "an integer >= 0"),
    (["data.batch_size=0"], "data.batch_size", "0", "an integer >= 1"),
    (["model.backbone.base_channels=0"], "model.backbone.base_channels", "0", "an integer >= 1"),
    (["data.point_range=[-40,-40,-3,40,40,inf]"], "data.point_range", "inf", "6 finite numbers"),
    (["data.point_range=[0,0,0,1,1,-1]"], "data.point_range", "-1]", "each min < max"),
    (["trainer.max_steps=0"], "trainer.max_steps", "0", "max_epochs >= 1"),
    (["trainer.max_steps=-5"], "trainer.max_steps", "-5", "an integer >= 0 (0: until trainer.max_epochs)"),
    (["trainer.max_epochs=0"], "trainer.max_epochs", "0", "null or an integer >= 1"),
    (["trainer.ckpt_every=-1"], "trainer.ckpt_every", "-1", "(0: only last.ckpt at the end)"),
    (["trainer.ckpt_keep=-1"], "trainer.ckpt_keep", "-1", "(0: keep all)"),
    (["trainer.val_every=-3"], "trainer.val_every", "-3", "(0: only at the end)"),
    (["trainer.grad_clip=-1"], "trainer.grad_clip", "-1.0", "null or a finite number > 0 (null: no clipping)"),
    (["trainer.grad_clip=0"], "trainer.grad_clip", "0.0", "> 0"),
    (["trainer.log_every=0"], "trainer.log_every", "0", "an integer >= 1"),
    (["trainer.num_threads=0"], "trainer.num_threads", "0", "null or an integer >= 1"),
    (["trainer.amp_dtype=float8"], "trainer.amp_dtype", "'float8'", "one of float16, fp16, bfloat16, bf16"),
    (["scheduler=onecycle", "scheduler.pct_start=1.5"], "scheduler.pct_start", "1.5", "in [0, 1]"),
    (["scheduler=cosine", "trainer.max_steps=0", "trainer.max_epochs=2"], "scheduler.T_max", "0",
     "(the value comes from ${trainer.max_steps})"),
    (["experiment=gs3d_spare", "trainer.ckpt_keep=-2"], "trainer.ckpt_keep", "-2", "an integer >= 0"),
    (["experiment=gs3d_spare", "trainer.eval_every=-1"], "trainer.eval_every", "-1", "an integer >= 0"),
]


@pytest.mark.parametrize(("overrides", "key", "shown", "allowed"), BAD_OVERRIDES,
                         ids=[" ".join(case[0]) for case in BAD_OVERRIDES])
def test_out_of_range_values_name_key_value_and_range(
    hydra_compose: Compose, tmp_path: Path, overrides: list[str], key: str, shown: str, allowed: str
) -> None:
    cfg = hydra_compose("train", [*overrides, *_local(tmp_path)])
    with pytest.raises(ConfigRangeError) as info:
        validate_config(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{key}=") and shown in message and allowed in message, message


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_shipped_experiments_are_in_range(hydra_compose: Compose, tmp_path: Path, experiment: str) -> None:
    validate_config(hydra_compose("train", [f"experiment={experiment}", *_local(tmp_path)]))


@pytest.mark.parametrize("group", ["model", "data", "trainer", "optimizer", "scheduler"])
def test_shipped_group_options_are_in_range(hydra_compose: Compose, tmp_path: Path, group: str) -> None:
    for option in _options(group):
        per_scene = ["experiment=gs3d_spare"] if option == "scene" or option.endswith("_scene") else []
        validate_config(hydra_compose("train", [*per_scene, f"{group}={option}", *_local(tmp_path)]))


def test_documented_zero_values_stay_allowed(hydra_compose: Compose, tmp_path: Path) -> None:
    """``0`` keeps its documented meaning where a key documents one (and only there)."""
    cfg = hydra_compose("train", ["trainer.ckpt_every=0", "trainer.ckpt_keep=0", "trainer.val_every=0",
                                  "trainer.max_steps=0", "trainer.max_epochs=3", "data.num_workers=0",
                                  "trainer.grad_clip=null", *_local(tmp_path)])
    validate_config(cfg)
    scene = hydra_compose("train", ["experiment=gs3d_spare", "trainer.max_steps=0", "trainer.eval_every=0",
                                    "trainer.image_every=0", *_local(tmp_path)])
    validate_config(scene)


def test_output_root_must_be_writable(hydra_compose: Compose, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cfg = hydra_compose("train", [f"paths.output_root={blocker / 'outputs'}", f"paths.data_dir={tmp_path}"])
    with pytest.raises(ConfigRangeError, match=r"^paths.output_root=.*a_file/outputs' .*writable directory .*a_file is "
                                               r"not a directory"):
        validate_config(cfg)
    check_writable_dir("paths.output_root", tmp_path / "not" / "yet" / "there")  # creatable below tmp_path
    assert not (tmp_path / "not").exists() and list(tmp_path.iterdir()) == [blocker]  # the probe left nothing


def test_nested_lists_and_plain_mappings_are_walked() -> None:
    node = OmegaConf.create({"stages": [{"voxel_size": [0.1, 0.1, 0.1]}, {"inner": {"num_classes": -2}}]})
    with pytest.raises(ConfigRangeError, match=r"^model.stages\[1\].inner.num_classes=-2 "):
        check_components(node, "model")
    check_components({"lr": 0.1, "sub": {"batch_size": 4}}, "optimizer")


# ------------------------------------------------------------------------------- dataclasses and trainer


def test_dataclasses_check_ranges_on_construction() -> None:
    TrainerConfig(max_steps=0, max_epochs=2, ckpt_every=0, grad_clip=1.0)
    with pytest.raises(ConfigRangeError, match=r"^trainer.ckpt_keep=-1 is out of range"):
        TrainerConfig(ckpt_keep=-1)
    with pytest.raises(ConfigRangeError, match=r"^trainer.max_steps=0 means 'until trainer.max_epochs'"):
        TrainerConfig(max_steps=0)
    SceneTrainerConfig(max_steps=None, ckpt_keep=0)
    with pytest.raises(ConfigRangeError, match=r"^trainer.image_every=-1 is out of range"):
        SceneTrainerConfig(image_every=-1)


@pytest.mark.parametrize(("option", "value"), [("ckpt_every", -1), ("grad_clip", -0.5), ("max_epochs", 0),
                                               ("val_every", -1), ("log_every", 0)])
def test_trainer_rejects_out_of_range_options(tmp_path: Path, option: str, value: object) -> None:
    with pytest.raises(UserError, match=rf"^trainer.{option}={value} is out of range"):
        Trainer({"device": "cpu", option: value}, tmp_path)


# ---------------------------------------------------------------------------------------- model stages


def test_segmentation_stages_check_their_arguments() -> None:
    with pytest.raises(ValueError, match="voxel_size must be 3 finite values > 0"):
        PointVoxelizer([-1, -1, -1, 1, 1, 1], [0.1, 0.0, 0.1])
    with pytest.raises(ValueError, match="point_range must be 6 finite values"):
        PointVoxelizer([-1, -1, -1, 1, 1, math.inf], [0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="point_range must be 6 finite values"):
        PointVoxelizer([-1, -1, 1, 1, 1, 1], [0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="base_channels must be >= 1"):
        SparseUNet(4, 0)
    with pytest.raises(ValueError, match="in_channels must be >= 1"):
        PointClassifier(0, 3)
    assert PointVoxelizer([-1, -1, -1, 1, 1, 1], [0.5, 0.5, 0.5]).voxel_size == [0.5, 0.5, 0.5]


# ----------------------------------------------------------------------------------------------- the CLI


def test_cli_reports_one_line_before_generating_data(
    run_cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    result = run_cli(["sparse3d-train", "optimizer.lr=-1", *_local(tmp_path)])
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors == ["sparse3d-train: error: optimizer.lr=-1 is out of range: expected a finite number > 0"]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "data").exists()  # checked before the data set was generated
