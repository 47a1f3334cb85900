"""The packaged Hydra config tree: composition, schemas, instantiation, run-dir layout, CLI helpers.

Everything composes through ``pkg://sparse3d.configs`` (``initialize_config_module``), i.e. the
installed package, never through repo-relative paths.
"""

from __future__ import annotations

import importlib
import importlib.resources
import inspect
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from sparse3d.cli._hydra import rewrite_positional_group
from sparse3d.config_schema import SceneTrainerConfig, TrainerConfig
from sparse3d.train.data_spec import DataSpec
from sparse3d.train.evaluators import merge_saved_config
from sparse3d.train.scene_trainer import method_factory, setup_extras
from sparse3d.views import SceneViews

Compose = Callable[..., DictConfig]

CONFIG_ROOT = importlib.resources.files("sparse3d.configs")
PRIMARY_CONFIGS = sorted(p.name[: -len(".yaml")] for p in CONFIG_ROOT.iterdir() if p.name.endswith(".yaml"))
EXPERIMENTS = sorted(
    p.name[: -len(".yaml")] for p in CONFIG_ROOT.joinpath("experiment").iterdir() if p.name.endswith(".yaml")
)
METHODS = sorted(p.name[: -len(".yaml")] for p in CONFIG_ROOT.joinpath("method").iterdir() if p.name.endswith(".yaml"))


def _group_options(group: str) -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in CONFIG_ROOT.joinpath(group).iterdir() if p.name.endswith(".yaml"))


DETECTION_MODELS = {"dsvt_pillar", "dsvt_voxel", "pointpillars"}


def _local_overrides(tmp_path: Path) -> list[str]:
    return [f"paths.output_root={tmp_path / 'outputs'}", f"paths.data_dir={tmp_path / 'data'}"]


def _shrink_generator(node: DictConfig) -> None:
    """Make a data generator tiny for tests, touching only arguments its target actually takes."""
    params = inspect.signature(get_method(node._target_)).parameters
    small = {"num_scenes": 3, "val_scenes": 1, "num_beams": 8, "points_per_beam": 256, "progress": False,
             "num_samples": 8, "val_samples": 4, "width": 64, "height": 48, "num_frames": 4, "num_azimuth": 512}
    with open_dict(node):
        for key, value in small.items():
            if key in params:
                node[key] = value


def test_expected_primary_configs_are_packaged() -> None:
    assert {"train", "eval", "data", "bench"} <= set(PRIMARY_CONFIGS)
    assert {"quickstart", "gs3d_spare"} <= set(EXPERIMENTS)
    assert {"gs3d", "reprojection"} <= set(METHODS)
    for group in ("model", "method", "data", "trainer", "paths", "hydra", "optimizer", "scheduler", "generator",
                  "evaluator", "suite"):
        assert _group_options(group), f"config group {group}/ is empty"


def test_importing_config_package_registers_schemas() -> None:
    importlib.import_module("sparse3d.configs")
    repo = ConfigStore.instance().repo
    assert "train_schema.yaml" in repo
    assert {"base_trainer.yaml", "base_scene_trainer.yaml"} <= set(repo["trainer"]) and "base_paths.yaml" in repo["paths"]
    for name in ("sparse3d.run_stamp", "sparse3d.rank_suffix", "sparse3d.rank_zero_or_null", "sparse3d.cwd"):
        assert OmegaConf.has_resolver(name)


@pytest.mark.parametrize("config_name", PRIMARY_CONFIGS)
def test_primary_config_composes_and_resolves(hydra_compose: Compose, config_name: str, tmp_path: Path) -> None:
    overrides = _local_overrides(tmp_path)
    if config_name == "eval":
        overrides.append(f"ckpt_path={tmp_path / 'run'}")
    cfg = hydra_compose(config_name, overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    assert cfg.task_name == config_name
    run_dir = Path(cfg.hydra.run.dir)
    assert run_dir.parent == tmp_path / "outputs" / config_name / str(cfg.experiment_name)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}", run_dir.name)
    sweep = Path(cfg.hydra.sweep.dir)
    assert sweep.parent == run_dir.parent and sweep.name.startswith("multirun_")
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(hydra_compose: Compose, experiment: str, tmp_path: Path) -> None:
    """Compose the experiment, generate its (tiny) data, build data and model or method, take one step."""
    cfg = hydra_compose("train", [f"experiment={experiment}", *_local_overrides(tmp_path)])
    assert cfg.experiment_name == experiment
    assert (cfg.get("model") is None) != (cfg.get("method") is None), "an experiment names a model or a method"
    if cfg.data.get("generator") is not None:
        _shrink_generator(cfg.data.generator)
    data = DataSpec.from_config(cfg.data)
    data.prepare()
    if cfg.get("method") is not None:
        SceneTrainerConfig(**OmegaConf.to_container(cfg.trainer, resolve=True))  # values fit the schema
        scene = data.build_scene()
        assert isinstance(scene, SceneViews) and len(scene.inputs) > 0
        method = method_factory(cfg.method)()
        torch.manual_seed(0)
        method.setup(scene.inputs, max(1, method.default_steps), **setup_extras(method, scene))
        if method.default_steps > 0:
            assert torch.isfinite(torch.tensor(method.training_step(0)["loss"]))
        image = method.render(scene.inputs.cameras[0])
        assert image.shape == (1, scene.inputs.cameras.height, scene.inputs.cameras.width, 3)
        return
    TrainerConfig(**OmegaConf.to_container(cfg.trainer, resolve=True))  # values fit the schema
    train_ds, val_ds, collate = data.build_train(), data.build_val(), data.build_collate()
    model = instantiate(cfg.model, _convert_="all")
    assert len(train_ds) > 0
    assert val_ds is None or len(val_ds) > 0
    items = [train_ds[i] for i in range(min(2, len(train_ds)))]
    batch = collate(items) if collate is not None else torch.utils.data.default_collate(items)
    torch.manual_seed(0)
    out = model.training_step(batch)
    loss = out["loss"] if isinstance(out, dict) else out
    assert loss.numel() == 1 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_method_config_builds_a_fresh_scene_method_per_call(hydra_compose: Compose, method: str, tmp_path: Path) -> None:
    cfg = hydra_compose("train", ["experiment=gs3d_spare", f"method={method}", *_local_overrides(tmp_path)])
    factory = method_factory(cfg.method)
    first, second = factory(), factory()
    assert first is not second
    for name in ("setup", "training_step", "render", "state_dict", "load_state_dict", "export"):
        assert callable(getattr(first, name)), f"{method} has no {name}()"
    assert isinstance(first.default_steps, int) and first.default_steps >= 0


@pytest.mark.parametrize("group", ["model", "method", "data", "trainer", "optimizer", "scheduler"])
def test_every_group_option_composes(hydra_compose: Compose, group: str, tmp_path: Path) -> None:
    for option in _group_options(group):
        if option.startswith("base_"):
            continue
        # per-scene options go with a per-scene experiment (quickstart sets dataset-trainer keys)
        per_scene = ["experiment=gs3d_spare"] if (group, option) in {("trainer", "scene"), ("data", "spare_scene")} else []
        # detection models read detection data facts (class names, point features): pair them with KITTI data
        detection = ["data=synthetic_kitti"] if group == "model" and option in DETECTION_MODELS else []
        cfg = hydra_compose("train", [*per_scene, *detection, f"{group}={option}", *_local_overrides(tmp_path)])
        node = cfg[group]
        OmegaConf.to_container(node, resolve=True)
        if group in ("optimizer", "scheduler"):
            param = torch.nn.Parameter(torch.zeros(2))
            optimizer = instantiate(cfg.optimizer)([param]) if group == "optimizer" else torch.optim.SGD([param], lr=0.1)
            assert isinstance(optimizer, torch.optim.Optimizer)
            if group == "scheduler":
                scheduler = instantiate(node)(optimizer)
                optimizer.step()
                scheduler.step()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.max_steps=notanint", "trainer.max_steps"),
        ("trainer.grad_clip=strong", "trainer.grad_clip"),
        ("trainer.amp=maybe", "trainer.amp"),
        ("trainer.no_such_option=1", "no_such_option"),
        ("seed=abc", "seed"),
        ("paths.unknown_dir=/x", "unknown_dir"),
    ],
)
def test_wrong_types_fail_at_compose_time(hydra_compose: Compose, override: str, key: str) -> None:
    with pytest.raises(ConfigCompositionException) as info:
        hydra_compose("train", [override])
    text = f"{info.value} {info.value.__cause__}"
    assert key in text


def test_values_are_coerced_to_schema_types(hydra_compose: Compose) -> None:
    cfg = hydra_compose("train", ["trainer.max_steps=7", "trainer.grad_clip=1", "seed=3", "resume=/some/run"])
    assert cfg.trainer.max_steps == 7 and isinstance(cfg.trainer.grad_clip, float)
    assert cfg.trainer.seed == 3  # interpolated from the top-level seed
    assert cfg.resume == "/some/run"
    assert hydra_compose("train", ["resume=true"]).resume is True


def test_default_experiment_is_quickstart(hydra_compose: Compose) -> None:
    cfg = hydra_compose("train")
    assert cfg.experiment_name == "quickstart"
    assert cfg.model._target_.endswith("SegmentationTask")
    assert cfg.data.root.endswith("synthetic_lidar")
    assert cfg.trainer.max_steps <= 500  # the demo must stay around a minute on 2 CPU cores
    assert cfg.model.head.num_classes == cfg.data.num_classes == cfg.model.metrics.num_classes


def test_output_root_from_environment(hydra_compose: Compose, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPARSE3D_OUTPUT_ROOT", str(tmp_path / "elsewhere"))
    cfg = hydra_compose("train", return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    assert Path(cfg.hydra.run.dir).parent == tmp_path / "elsewhere" / "train" / "quickstart"
    monkeypatch.delenv("SPARSE3D_OUTPUT_ROOT")
    cfg = hydra_compose("train")
    assert Path(cfg.paths.output_root) == Path.cwd() / "outputs"


def test_torchrun_ranks_share_one_run_dir(hydra_compose: Compose, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job42")
    monkeypatch.setenv("WORLD_SIZE", "2")
    dirs, names, subdirs = [], [], []
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        cfg = hydra_compose("train", return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        dirs.append(cfg.hydra.run.dir)
        names.append(cfg.hydra.job.name)
        subdirs.append(cfg.hydra.output_subdir)
    assert dirs[0] == dirs[1] and dirs[0].endswith("/train/quickstart/torchrun_job42")
    assert names == ["train_rank0", "train_rank1"]
    assert subdirs == [".hydra", None]  # only rank 0 writes .hydra/


def test_single_process_job_name(hydra_compose: Compose, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(key, raising=False)
    cfg = hydra_compose("train", return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    assert cfg.hydra.job.name == "train" and cfg.hydra.output_subdir == ".hydra"


def test_eval_experiment_name_comes_from_the_run(hydra_compose: Compose, tmp_path: Path) -> None:
    run = tmp_path / "outputs" / "train" / "myexp" / "2025-01-01_00-00-00"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("experiment_name: myexp\n")
    cfg = hydra_compose("eval", [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    assert cfg.experiment_name == "myexp"
    assert hydra_compose("eval", [f"ckpt_path={run}"]).experiment_name == "myexp"
    assert hydra_compose("eval", ["ckpt_path=/does/not/exist.ckpt"]).experiment_name == "default"
    assert hydra_compose("eval", ["evaluator=render", "pred=/p", "data_root=/d", "split=s.json"]).experiment_name == "render"
    assert hydra_compose("eval").ckpt_path is None  # required by the validation evaluator, which says so


def test_eval_merges_overrides_onto_saved_config(hydra_compose: Compose, tmp_path: Path) -> None:
    saved: dict[str, Any] = {
        "model": {"_target_": "pkg.Model", "width": 8, "depth": 2},
        "data": {"root": "/saved/data", "val": {"_target_": "pkg.Data", "root": "/saved/data"}, "batch_size": 4},
    }
    cfg = hydra_compose("eval", ["ckpt_path=/x", "++model.width=16", "++data.batch_size=1"])
    merged = merge_saved_config(saved, {"model": cfg.model, "data": cfg.data}, cfg.paths)
    assert merged.model == {"_target_": "pkg.Model", "width": 16, "depth": 2}
    assert merged.data.batch_size == 1 and merged.data.root == "/saved/data"
    # a different _target_ replaces the saved node; its interpolations resolve against the merged config
    cfg = hydra_compose("eval", ["ckpt_path=/x", "model=sparse_unet", *_local_overrides(tmp_path)])
    merged = merge_saved_config({**saved, "data": {**saved["data"], "num_classes": 3, "point_range": [0, 0, 0, 1, 1, 1]}},
                                {"model": cfg.model, "data": cfg.data}, cfg.paths)
    assert merged.model._target_.endswith("SegmentationTask") and merged.model.head.num_classes == 3
    assert "depth" not in merged.model


def test_positional_generator_argument() -> None:
    assert rewrite_positional_group(["prog", "lidar", "out_dir=/x"], "generator") == ["prog", "generator=lidar", "out_dir=/x"]
    assert rewrite_positional_group(["prog", "--config-dir", "/c", "toy", "a=1"], "generator") == [
        "prog", "--config-dir", "/c", "generator=toy", "a=1"]
    assert rewrite_positional_group(["prog", "-m", "lidar,toy"], "generator") == ["prog", "-m", "generator=lidar,toy"]
    assert rewrite_positional_group(["prog", "generator=lidar"], "generator") == ["prog", "generator=lidar"]
    # -m after the name and among overrides is hoisted in front of them (Hydra's argparse needs that).
    assert rewrite_positional_group(["prog", "lidar", "a=1", "-m", "seed=0,1"], "generator") == [
        "prog", "-m", "generator=lidar", "a=1", "seed=0,1"]
    assert rewrite_positional_group(["prog", "--info", "searchpath"], "generator") == ["prog", "--info", "searchpath"]
    assert rewrite_positional_group(["prog"], "generator") == ["prog"]


def test_data_generator_options_target_callables(hydra_compose: Compose) -> None:
    for option in _group_options("generator"):
        cfg = hydra_compose("data", [f"generator={option}"])
        assert cfg.generator._target_
        assert Path(cfg.out_dir).is_absolute()
        assert callable(get_method(cfg.generator._target_))


def test_info_searchpath_lists_package(script: Callable[[str], str]) -> None:
    result = subprocess.run([script("sparse3d-train"), "--info", "searchpath"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r"main\s*\|\s*pkg://sparse3d\.configs", result.stdout)
