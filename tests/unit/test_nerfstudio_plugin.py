"""The nerfstudio method plugin, without nerfstudio: entry points declared and resolvable, a clear error without
nerfstudio, and the specification built against a stand-in ``nerfstudio`` module tree."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from sparse3d.utils.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
GROUP = "nerfstudio.method_configs"


def _declared() -> dict[str, str]:
    """The ``[project.entry-points."nerfstudio.method_configs"]`` table of pyproject.toml (``name = "value"``
    lines; read by hand, as tomllib needs Python 3.11)."""
    out: dict[str, str] = {}
    inside = False
    for line in (ROOT / "pyproject.toml").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("["):
            inside = line in (f'[project.entry-points."{GROUP}"]', f"[project.entry-points.'{GROUP}']")
        elif inside and "=" in line and not line.startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip().strip('"')] = value.strip().strip('"')
    return out


def _splatting_configs() -> dict[str, dict[str, Any]]:
    """Oracle: the method configs whose target is a splatting class, read straight from configs/method/."""
    out = {}
    for path in sorted((ROOT / "configs" / "method").glob("*.yaml")):
        node = yaml.safe_load(path.read_text(encoding="utf-8"))
        if str(node.get("_target_", "")).startswith("sparse3d.models.splatting."):
            out[path.stem] = node
    return out


@pytest.fixture
def no_nerfstudio(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import nerfstudio`` fail, as when the extra is not installed."""
    for name in [m for m in sys.modules if m == "nerfstudio" or m.startswith("nerfstudio.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nerfstudio", None)


def test_every_splatting_config_has_a_declared_entry_point() -> None:
    from sparse3d.integrations import nerfstudio as plugin

    declared = _declared()
    configs = _splatting_configs()
    assert "gs3d" in configs
    assert {f"sparse3d-{name}" for name in configs} == set(declared), \
        "each configs/method/<splatting>.yaml needs a line `sparse3d-<name> = ...:<name>` in pyproject.toml"
    for ep_name, value in declared.items():
        module, _, attribute = value.partition(":")
        assert module == plugin.__name__ and ep_name == f"sparse3d-{attribute.replace('_', '-')}"
    assert sorted(plugin.splatting_methods()) == sorted(name.replace("-", "_") for name in configs)
    for ep in importlib.metadata.entry_points(group=GROUP):  # an installed copy (pip install -e .) points here too
        assert ep.value.startswith(f"{plugin.__name__}:")


def test_import_never_needs_nerfstudio_and_loading_names_the_extra(no_nerfstudio: None) -> None:
    sys.modules.pop("sparse3d.integrations.nerfstudio", None)
    plugin = importlib.import_module("sparse3d.integrations.nerfstudio")  # the import itself works
    for value in _declared().values():
        entry = importlib.metadata.EntryPoint(name="x", value=value, group=GROUP)
        with pytest.raises(UserError) as info:
            entry.load()  # what nerfstudio does for every registered method
        message = str(info.value)
        assert "\n" not in message and "pip install 'sparse3d[nerfstudio]'" in message
    with pytest.raises(AttributeError):
        plugin.not_a_method  # noqa: B018 -- other attributes stay ordinary AttributeErrors
    with pytest.raises(UserError, match="no sparse3d splatting method 'reprojection'"):
        plugin.method_specification("reprojection")  # a baseline, not a splatting method


def _fake_nerfstudio(monkeypatch: pytest.MonkeyPatch) -> tuple[type, type]:
    """A stand-in for nerfstudio's module tree: ``TrainerConfig`` (a dataclass whose ``setup`` builds its
    ``_target``) and ``MethodSpecification``, as their public fields are documented."""

    @dataclasses.dataclass
    class TrainerConfig:
        method_name: str | None = None
        max_num_iterations: int = 1_000_000
        data: Path | None = None
        output_dir: Path = Path("outputs")
        _target: type = object

        def setup(self, **kwargs: Any) -> Any:
            return self._target(self, **kwargs)

        def get_base_dir(self) -> Path:
            return self.output_dir / "exp" / str(self.method_name) / "stamp"

    @dataclasses.dataclass
    class MethodSpecification:
        config: TrainerConfig
        description: str

    tree = {name: types.ModuleType(name) for name in
            ("nerfstudio", "nerfstudio.engine", "nerfstudio.engine.trainer", "nerfstudio.plugins",
             "nerfstudio.plugins.types")}
    tree["nerfstudio.engine.trainer"].TrainerConfig = TrainerConfig  # type: ignore[attr-defined]
    tree["nerfstudio.plugins.types"].MethodSpecification = MethodSpecification  # type: ignore[attr-defined]
    for name, module in tree.items():
        monkeypatch.setitem(sys.modules, name, module)
    return TrainerConfig, MethodSpecification


def test_specification_with_a_stand_in_nerfstudio(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    trainer_config, spec_cls = _fake_nerfstudio(monkeypatch)
    gs3d_yaml = (ROOT / "configs" / "method" / "gs3d.yaml").read_text(encoding="utf-8")
    first_line = gs3d_yaml.splitlines()[0].lstrip("# ").strip()
    (value,) = [v for k, v in _declared().items() if k == "sparse3d-gs3d"]
    spec = importlib.metadata.EntryPoint(name="sparse3d-gs3d", value=value, group=GROUP).load()
    assert isinstance(spec, spec_cls) and isinstance(spec.config, trainer_config)
    assert spec.config.method_name == "sparse3d-gs3d"
    assert spec.description.startswith(f"sparse3d gs3d: {first_line}")
    assert "transforms.json" in spec.description
    assert spec.config.max_num_iterations == yaml.safe_load(gs3d_yaml)["default_steps"]

    from sparse3d.integrations import nerfstudio as plugin
    from sparse3d.integrations.nerfstudio import Sparse3dSceneRunner

    assert type(spec.config) is plugin.Sparse3dTrainerConfig  # importable by name, as a saved config.yml needs
    assert spec.config.__class__.__module__ == plugin.__name__

    spec.config.data = tmp_path
    spec.config.output_dir = tmp_path / "out"
    runner = spec.config.setup(local_rank=0, world_size=1)
    assert isinstance(runner, Sparse3dSceneRunner)
    with pytest.raises(UserError, match="no transforms.json"):
        runner.setup()
    (tmp_path / "transforms.json").write_text("{}")
    runner.setup()
    command = runner.command()
    assert command[:3] == [sys.executable, "-m", "sparse3d.cli.train"]
    assert f"data.root={tmp_path}" in command and "method=gs3d" in command
    assert f"hydra.run.dir={tmp_path / 'out' / 'exp' / 'sparse3d-gs3d' / 'stamp'}" in command
    with pytest.raises(UserError, match="one process"):
        spec.config.setup(local_rank=0, world_size=2)

    # the overrides compose into the sparse3d training config they claim (nerfstudio data, gs3d, step count)
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    overrides = [a for a in command[3:] if not a.startswith("hydra.")]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(version_base="1.3", config_module="sparse3d.configs"):
            cfg = compose("train", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()
    assert cfg.method._target_ == "sparse3d.models.splatting.gs3d.GaussianSplatting"
    assert cfg.data.root == str(tmp_path) and cfg.data.scene.downscale == 1 and not cfg.data.generate_if_missing
    assert cfg.data.scene._target_.endswith("load_nerfstudio_scene")
    assert cfg.trainer.max_steps == spec.config.max_num_iterations


def test_every_declared_method_builds_with_its_composed_step_count(monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    _, spec_cls = _fake_nerfstudio(monkeypatch)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(version_base="1.3", config_module="sparse3d.configs"):
            for ep_name, value in _declared().items():
                spec = importlib.metadata.EntryPoint(name=ep_name, value=value, group=GROUP).load()
                name = ep_name.removeprefix("sparse3d-")
                assert isinstance(spec, spec_cls) and spec.config.method_name == ep_name
                assert spec.config.sparse3d_method == name
                first_line = (ROOT / "configs" / "method" / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
                assert spec.description.startswith(f"sparse3d {name}: {first_line.strip()}")
                # Hydra resolves the config's defaults (inherited keys): the step count must agree with it
                method = compose("train", overrides=["experiment=gs3d_nerfstudio", f"method={name}"]).method
                assert spec.config.max_num_iterations == method.default_steps
    finally:
        GlobalHydra.instance().clear()
