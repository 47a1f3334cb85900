"""nerfstudio method plugin: sparse3d's per-scene splatting methods as ``ns-train sparse3d-<name>``.

What it does. nerfstudio (Tancik et al., SIGGRAPH 2023) finds methods through the ``nerfstudio.method_configs``
entry-point group; each entry point must load to a ``nerfstudio.plugins.types.MethodSpecification``. This module
lists the splatting methods from the packaged method configs (every ``configs/method/<name>.yaml`` whose
``_target_`` is a class of ``sparse3d.models.splatting``, so a new method appears as soon as its config exists)
and builds their specifications on attribute access (``sparse3d.integrations.nerfstudio:gs3d``). The
specification's trainer config starts sparse3d's own per-scene trainer, not nerfstudio's:
``ns-train sparse3d-gs3d --data DIR`` runs ``sparse3d-train experiment=gs3d_nerfstudio method=gs3d
data.root=DIR`` in a subprocess on DIR's ``transforms.json`` (read as written: ``data.scene.downscale=1``; split
and input views of ``configs/data/nerfstudio_scene.yaml``), for ``--max-num-iterations`` steps (default: the
method's ``default_steps``), with the run folder (checkpoints, ``tb/``, test renders, ``point_cloud.ply``,
``summary.json``) in nerfstudio's output folder. ``--sparse3d-overrides`` passes further Hydra overrides
(e.g. ``method.num_points=50000``).

What it does not do. There is no nerfstudio ``Pipeline`` or ``Model`` behind these methods: nerfstudio's viewer,
``ns-render``, ``ns-eval`` and ``ns-export`` cannot read the runs, and nerfstudio's pipeline, optimizer and
data-parser options are ignored. Look at a run with ``sparse3d-vis <run folder>``; the exported
``point_cloud.ply`` is a standard 3DGS file that other splat viewers open.

Importing this module never imports nerfstudio (nerfstudio loads every registered entry point when any of its
commands starts, so a failing import would break them all); building a specification without nerfstudio raises
one :class:`~sparse3d.utils.errors.UserError` naming the ``nerfstudio`` extra.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Type  # noqa: UP035 -- typing.Type, as nerfstudio annotates its config targets

from sparse3d.utils.errors import UserError

__all__ = [
    "EXTRA",
    "METHOD_PREFIX",
    "SPLATTING_PACKAGE",
    "SplattingMethod",
    "Sparse3dSceneRunner",
    "method_specification",
    "splatting_methods",
]

METHOD_PREFIX = "sparse3d-"
"""nerfstudio method names are ``sparse3d-<config name>``."""
EXTRA = "sparse3d[nerfstudio]"
SPLATTING_PACKAGE = "sparse3d.models.splatting."
"""Method configs whose ``_target_`` starts with this are registered."""
EXPERIMENT = "gs3d_nerfstudio"
"""The sparse3d experiment (nerfstudio data, per-scene trainer) the runs start from; ``method=`` replaces 3DGS."""


@dataclasses.dataclass(frozen=True)
class SplattingMethod:
    """One registered method: its config name, entry-point attribute, ``_target_``, description and step count."""

    name: str
    attribute: str
    target: str
    description: str
    default_steps: int | None

    @property
    def method_name(self) -> str:
        return METHOD_PREFIX + self.name


def _leading_comment(text: str) -> str:
    """The first paragraph of a YAML file's leading comment (stops at a blank comment, an indented usage example
    or the first key)."""
    words: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line[1:]
        if not body.strip() or body.startswith("  "):
            break
        words.append(body.strip())
    return " ".join(words)


def _method_node(folder: Any, name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keys of method config ``name`` with those of the sibling configs its ``defaults`` list names merged
    underneath (Hydra's order: defaults first, then the file itself), top level only; {} when unreadable."""
    import yaml

    entry = folder / f"{name}.yaml"
    if name in seen or not entry.is_file():
        return {}
    try:
        node = yaml.safe_load(entry.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return {}  # not ours to judge here; sparse3d-train reports a broken config when it is used
    if not isinstance(node, dict):
        return {}
    merged: dict[str, Any] = {}
    for parent in node.get("defaults") or []:
        if isinstance(parent, str) and parent != "_self_":
            merged.update(_method_node(folder, parent, (*seen, name)))
    merged.update({k: v for k, v in node.items() if k != "defaults"})
    return merged


def splatting_methods() -> dict[str, SplattingMethod]:
    """The splatting methods of the packaged ``configs/method/*.yaml``, by entry-point attribute (the config name
    with ``-`` as ``_``), sorted by name."""
    out: dict[str, SplattingMethod] = {}
    folder = resources.files("sparse3d.configs") / "method"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        text = entry.read_text(encoding="utf-8")
        node = _method_node(folder, entry.name[: -len(".yaml")])
        target = node.get("_target_")
        if not isinstance(target, str) or not target.startswith(SPLATTING_PACKAGE):
            continue
        name = entry.name[: -len(".yaml")]
        steps = node.get("default_steps")
        attribute = name.replace("-", "_")
        out[attribute] = SplattingMethod(name, attribute, target, _leading_comment(text),
                                         int(steps) if isinstance(steps, int) else None)
    return out


class Sparse3dSceneRunner:
    """The ``_target`` of the trainer config: built by nerfstudio's ``TrainerConfig.setup(local_rank=...,
    world_size=...)``; :meth:`train` runs ``sparse3d-train`` on the config's data folder (see the module
    docstring). One process only (sparse3d's per-scene trainer does not use several GPUs for one scene)."""

    def __init__(self, config: Any, local_rank: int = 0, world_size: int = 1, **_: Any) -> None:
        if world_size != 1:
            raise UserError(f"{config.method_name}: runs in one process; launch ns-train without several GPUs "
                            f"(got world size {world_size})")
        self.config = config
        self.local_rank = local_rank

    def data_folder(self) -> Path:
        """The ``--data`` folder (nerfstudio keeps it in the config or its pipeline's data manager)."""
        data = getattr(self.config, "data", None)
        if data is None:
            pipeline = getattr(self.config, "pipeline", None)
            data = getattr(getattr(pipeline, "datamanager", None), "data", None)
        if data is None:
            raise UserError(f"{self.config.method_name}: give the scene folder with --data DIR (it holds "
                            "transforms.json)")
        return Path(data)

    def command(self) -> list[str]:
        """The ``sparse3d-train`` command line this run executes."""
        cfg = self.config
        return [sys.executable, "-m", "sparse3d.cli.train", f"experiment={EXPERIMENT}",
                f"method={cfg.sparse3d_method}", f"data.root={self.data_folder()}", "data.generate_if_missing=false",
                "data.scene.downscale=1", f"trainer.max_steps={int(cfg.max_num_iterations)}",
                f"experiment_name={cfg.method_name}", f"hydra.run.dir={Path(cfg.get_base_dir())}",
                *cfg.sparse3d_overrides]

    def setup(self, test_mode: str = "val") -> None:
        """Check the data folder before anything runs."""
        folder = self.data_folder()
        if not (folder / "transforms.json").is_file() and not any(folder.glob("*/transforms.json")):
            raise UserError(f"--data {folder}: no transforms.json in it or in its sub-folders")

    def train(self) -> None:
        """Run sparse3d's per-scene trainer; a failed run is a :class:`UserError` with its exit status."""
        result = subprocess.run(self.command(), check=False)
        if result.returncode != 0:
            raise UserError(f"{self.config.method_name}: sparse3d-train exited with status {result.returncode}")


def _nerfstudio() -> tuple[type, type]:
    """(MethodSpecification, TrainerConfig) from nerfstudio, or a one-line UserError naming the extra."""
    try:
        from nerfstudio.engine.trainer import TrainerConfig
        from nerfstudio.plugins.types import MethodSpecification
    except ImportError as exc:
        raise UserError(f"the sparse3d nerfstudio methods need nerfstudio: pip install '{EXTRA}' "
                        f"({' '.join(str(exc).split())})") from None
    return MethodSpecification, TrainerConfig


_CONFIG_CLASSES: dict[type, type] = {}


def _config_class(trainer_config: type) -> type:
    """nerfstudio's ``TrainerConfig`` with the sparse3d fields and :class:`Sparse3dSceneRunner` as its target."""
    if trainer_config not in _CONFIG_CLASSES:
        cls = dataclasses.make_dataclass(
            "Sparse3dTrainerConfig",
            [("_target", Type, dataclasses.field(default_factory=lambda: Sparse3dSceneRunner)),  # noqa: UP006
             ("sparse3d_method", str, dataclasses.field(default="gs3d")),
             ("sparse3d_overrides", tuple[str, ...], dataclasses.field(default=()))],
            bases=(trainer_config,), namespace={"__doc__": "nerfstudio trainer config that runs sparse3d-train."},
        )
        cls.__module__ = __name__
        _CONFIG_CLASSES[trainer_config] = cls
    return _CONFIG_CLASSES[trainer_config]


def method_specification(name: str, overrides: Sequence[str] = ()) -> Any:
    """The nerfstudio ``MethodSpecification`` of splatting method ``name`` (config name or entry-point
    attribute); imports nerfstudio here (:class:`UserError` naming the extra without it)."""
    methods = splatting_methods()
    method = methods.get(name.replace("-", "_"))
    if method is None:
        raise UserError(f"no sparse3d splatting method {name!r}; one of {', '.join(m.name for m in methods.values())}")
    spec_cls, trainer_config = _nerfstudio()
    kwargs: dict[str, Any] = {"method_name": method.method_name, "sparse3d_method": method.name,
                              "sparse3d_overrides": tuple(overrides)}
    if method.default_steps is not None:
        kwargs["max_num_iterations"] = method.default_steps
    config = _config_class(trainer_config)(**kwargs)
    description = (f"sparse3d {method.name}: {method.description or method.target} Runs sparse3d-train on the "
                   "--data folder's transforms.json (no nerfstudio viewer or ns-render).")
    return spec_cls(config=config, description=description)


def __getattr__(attribute: str) -> Any:
    """Entry points ``sparse3d.integrations.nerfstudio:<method>`` load the method's specification here;
    ``Sparse3dTrainerConfig`` is the trainer config class (nerfstudio's saved ``config.yml`` names it)."""
    if attribute == "Sparse3dTrainerConfig":
        return _config_class(_nerfstudio()[1])
    if attribute.startswith("_") or attribute not in splatting_methods():
        raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
    return method_specification(attribute)
