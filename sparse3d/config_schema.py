"""Structured-config schemas for the sparse3d Hydra apps, plus the OmegaConf resolvers they use.

The YAML tree under ``sparse3d.configs`` names these schemas as the first entry of its defaults lists
(``train_schema``, ``trainer/base_trainer``, ``trainer/base_scene_trainer``, ``paths/base_paths``). Hydra then merges
every YAML value and command-line override *into* a typed node, so ``trainer.max_steps=notanint`` fails
at compose time with the key and the expected type instead of crashing an hour into training.

:func:`register` must run before composition. It is called when ``sparse3d.configs`` is imported (Hydra
imports that package to read ``pkg://sparse3d.configs``) and by the console scripts, and is idempotent.
"""

from __future__ import annotations

import datetime
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sparse3d.utils.errors import UserError

# ------------------------------------------------------------------------------------------- schemas


@dataclass
class TrainerConfig:
    """Options of :class:`sparse3d.train.Trainer` (one training loop for every pipeline)."""

    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"; under torchrun cuda maps to LOCAL_RANK
    max_steps: int = 1000  # optimizer steps, >= 0; 0 means "until max_epochs" (which must then be set)
    max_epochs: int | None = None  # >= 1, or null: no epoch limit
    val_every: int = 0  # validate every N steps (0: only at the end, see val_at_end)
    val_at_end: bool = True
    log_every: int = 10  # steps between logger / TensorBoard lines (with ETA and running loss), >= 1
    ckpt_every: int = 0  # steps between step_XXXXXXX.ckpt files (0: only last.ckpt at the end)
    ckpt_keep: int = 0  # keep at most N step checkpoints (0: keep all); last.ckpt is always kept
    grad_clip: float | None = None  # max global grad norm, > 0 (null: no clipping)
    amp: bool = False  # mixed precision; CUDA only (ignored with a warning on CPU)
    amp_dtype: str = "float16"  # "float16" (with GradScaler) | "bfloat16"
    seed: int = 0
    deterministic: bool = False
    progress: bool = True  # tqdm bar on rank 0 when stderr is a TTY
    shuffle: bool = True
    drop_last: bool = False
    num_threads: int | None = None  # torch.set_num_threads, >= 1; None keeps torch's default
    find_unused_parameters: bool = False  # DDP option for models with branches unused in a step
    export_weights: bool = True  # write <output_dir>/model.safetensors at the end (rank 0)

    def __post_init__(self) -> None:
        check_trainer_config(self, "trainer")


@dataclass
class SceneTrainerConfig:
    """Options of :class:`sparse3d.train.scene_trainer.SceneTrainer` (the per-scene optimisation loop)."""

    device: str = "auto"
    max_steps: int | None = None  # >= 0 (0: evaluate without optimising); null: the method's default_steps
    log_every: int = 50  # steps between log lines / TensorBoard scalars, >= 1
    eval_every: int = 0  # test-view metrics every N steps (0: at the start and the end only)
    image_every: int = 0  # TensorBoard render|gt image every N steps (0: at the end only)
    ckpt_every: int = 0  # steps between step_XXXXXXX.ckpt files (0: only last.ckpt at the end)
    ckpt_keep: int = 2  # keep at most N step checkpoints (0: keep all)
    seed: int = 0
    progress: bool = True
    num_threads: int | None = None  # >= 1; None keeps torch's default
    tensorboard: bool = True
    save_renders: bool = True  # renders/test/<view name> at the end
    export: bool = True  # the method's artefacts (e.g. point_cloud.ply) in the run dir

    def __post_init__(self) -> None:
        check_scene_trainer_config(self, "trainer")


@dataclass
class PathsConfig:
    """Where data and outputs live. Values may use ``${oc.env:...}`` so sites can set them once."""

    root_dir: str = "${oc.env:SPARSE3D_ROOT,${sparse3d.cwd:}}"
    data_dir: str = "${oc.env:SPARSE3D_DATA_DIR,${paths.root_dir}/data}"
    output_root: str = "${oc.env:SPARSE3D_OUTPUT_ROOT,${paths.root_dir}/outputs}"


@dataclass
class TrainConfig:
    """Top level of ``train.yaml``: naming, seed, resume and the component nodes."""

    task_name: str = "train"
    experiment_name: str = "default"
    seed: int = 0
    resume: Any = False  # false | true (newest earlier run of task/experiment) | path to .ckpt or run dir
    tags: list[str] = field(default_factory=list)
    model: Any = None  # a dataset-trained model (task module) ...
    method: Any = None  # ... or a per-scene method (_partial_: true); exactly one of the two
    data: Any = MISSING
    optimizer: Any = None  # _partial_: true; called with the model's parameters
    scheduler: Any = None  # _partial_: true; called with the optimizer; stepped every optimizer step
    # typed by the group file's own schema: trainer/base_trainer (Trainer) or trainer/base_scene_trainer
    trainer: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)


# ------------------------------------------------------------------------------------------ value ranges
#
# The schemas above check types when Hydra composes; the rules below check ranges. `validate_config` runs them on a
# composed app config (every message is one line: key, value, allowed range), the dataclasses run the trainer rules
# in `__post_init__`, and `sparse3d.train.Trainer` runs them on whatever trainer config it is given.


class ConfigRangeError(UserError, ValueError):
    """A config value outside its allowed range. The message is one line naming the key, the value and the range."""


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class Bound:
    """The allowed values of one numeric key: ``kind`` (int or float), an optional lower and upper bound, whether
    null is allowed, and a note on what special values mean (e.g. ``0: keep all``)."""

    kind: type = float
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    nullable: bool = False
    note: str = ""

    def describe(self) -> str:
        """``an integer >= 1``, ``null or a finite number > 0``, ``a finite number in [0, 1]``..."""
        text = "an integer" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text += f" in {left}{self.low:g}, {self.high:g}{right}"
        elif self.low is not None:
            text += f" {'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            text += f" {'<' if self.high_open else '<='} {self.high:g}"
        if self.nullable:
            text = "null or " + text
        return text + (f" ({self.note})" if self.note else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __call__(self, key: str, value: Any) -> None:
        if not self.accepts(value):
            raise ConfigRangeError(f"{key}={_show(value)} is out of range: expected {self.describe()}")


@dataclass(frozen=True)
class Each:
    """Every entry of a list value must satisfy ``bound`` (and the list must hold ``length`` entries if given)."""

    bound: Bound
    length: int | None = None

    def __call__(self, key: str, value: Any) -> None:
        count = f"{self.length} " if self.length is not None else ""
        if not isinstance(value, (list, tuple)) or (self.length is not None and len(value) != self.length):
            raise ConfigRangeError(f"{key}={_show(value)} is out of range: expected a list of {count}values, each "
                                   f"{self.bound.describe()}")
        for item in value:
            if not self.bound.accepts(item):
                raise ConfigRangeError(f"{key}={_show(value)} is out of range: expected a list of {count}values, "
                                       f"each {self.bound.describe()}")


def _check_point_range(key: str, value: Any) -> None:
    """``[xmin, ymin, zmin, xmax, ymax, zmax]``: six finite numbers with each min below its max."""
    expected = "expected 6 finite numbers [xmin, ymin, zmin, xmax, ymax, zmax] with each min < max"
    finite = Bound(float)
    if not isinstance(value, (list, tuple)) or len(value) != 6 or not all(finite.accepts(v) for v in value):
        raise ConfigRangeError(f"{key}={_show(value)} is out of range: {expected}")
    if not all(value[i] < value[i + 3] for i in range(3)):
        raise ConfigRangeError(f"{key}={_show(value)} is out of range: {expected}")


def _choice(*allowed: str) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        if value not in allowed:
            raise ConfigRangeError(f"{key}={_show(value)} is out of range: expected one of {', '.join(allowed)}")

    return check


Rule = Callable[[str, Any], None]

_COUNT = Bound(int, 1)
_NON_NEGATIVE_COUNT = Bound(int, 0)
_THREADS = Bound(int, 1, nullable=True, note="null: torch's default")

TRAINER_RULES: dict[str, Rule] = {
    "max_steps": Bound(int, 0, note="0: until trainer.max_epochs"),
    "max_epochs": Bound(int, 1, nullable=True, note="null: no epoch limit"),
    "val_every": Bound(int, 0, note="0: only at the end"),
    "log_every": _COUNT,
    "ckpt_every": Bound(int, 0, note="0: only last.ckpt at the end"),
    "ckpt_keep": Bound(int, 0, note="0: keep all"),
    "grad_clip": Bound(float, 0, low_open=True, nullable=True, note="null: no clipping"),
    "amp_dtype": _choice("float16", "fp16", "bfloat16", "bf16"),
    "num_threads": _THREADS,
}
"""Ranges of :class:`TrainerConfig` keys (the dataset trainer)."""

SCENE_TRAINER_RULES: dict[str, Rule] = {
    "max_steps": Bound(int, 0, nullable=True, note="null: the method's default_steps"),
    "log_every": _COUNT,
    "eval_every": Bound(int, 0, note="0: at the start and the end only"),
    "image_every": Bound(int, 0, note="0: at the end only"),
    "ckpt_every": Bound(int, 0, note="0: only last.ckpt at the end"),
    "ckpt_keep": Bound(int, 0, note="0: keep all"),
    "num_threads": _THREADS,
}
"""Ranges of :class:`SceneTrainerConfig` keys (the per-scene loop)."""

COMPONENT_RULES: dict[str, Rule] = {
    # optimizers and schedulers
    "lr": Bound(float, 0, low_open=True),
    "max_lr": Bound(float, 0, low_open=True),
    "weight_decay": Bound(float, 0),
    "momentum": Bound(float, 0, high=1),
    "eps": Bound(float, 0, low_open=True),
    "betas": Each(Bound(float, 0, high=1, high_open=True), length=2),
    "eta_min": Bound(float, 0),
    "T_max": _COUNT,
    "total_steps": _COUNT,
    "pct_start": Bound(float, 0, high=1),
    # data and model geometry, sizes and counts
    "point_range": _check_point_range,
    "voxel_size": Each(Bound(float, 0, low_open=True)),
    "batch_size": _COUNT,
    "num_workers": Bound(int, 0, note="0: load in the training process"),
    "num_classes": _COUNT,
    "in_channels": _COUNT,
    "out_channels": _COUNT,
    "base_channels": _COUNT,
    "max_points": Bound(int, 1, nullable=True, note="null: keep every point"),
    "num_scenes": _COUNT,
    "val_scenes": _NON_NEGATIVE_COUNT,
    "num_beams": _COUNT,
    "points_per_beam": _COUNT,
    "max_range": Bound(float, 0, low_open=True),
    "noise_std": Bound(float, 0),
}
"""Ranges of keys that mean the same wherever they appear below ``model``, ``data``, ``optimizer`` and
``scheduler`` (``optimizer.lr``, ``data.num_workers``, ``model.backbone.base_channels``...)."""

COMPONENT_NODES = ("data", "optimizer", "scheduler", "model")  # model last: it interpolates data keys


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def _section_items(section: Any) -> Iterator[tuple[str, Any]]:
    """(key, value) pairs of a dataclass, mapping or DictConfig section; values that do not resolve are skipped
    (whatever uses them reports that error)."""
    if isinstance(section, DictConfig):
        for key in section:
            try:
                yield str(key), section[key]
            except OmegaConfBaseException:
                continue
    elif isinstance(section, Mapping):
        yield from ((str(k), v) for k, v in section.items())
    else:
        yield from ((f.name, getattr(section, f.name)) for f in fields(section))


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException:
            return None
    return value


def _check_section(section: Any, prefix: str, rules: Mapping[str, Rule]) -> dict[str, Any]:
    values = {}
    for key, value in _section_items(section):
        if key in rules and not _is_interpolation(value):
            value = _plain(value)
            rules[key](f"{prefix}.{key}", value)
            values[key] = value
    return values


def check_trainer_config(section: Any, prefix: str = "trainer") -> None:
    """Range-check a dataset-trainer section (:data:`TRAINER_RULES`); raises :class:`ConfigRangeError`."""
    values = _check_section(section, prefix, TRAINER_RULES)
    if values.get("max_steps") == 0 and "max_epochs" in values and values["max_epochs"] is None:
        raise ConfigRangeError(f"{prefix}.max_steps=0 means 'until {prefix}.max_epochs' but {prefix}.max_epochs is "
                               "null: expected max_steps >= 1 or max_epochs >= 1")


def check_scene_trainer_config(section: Any, prefix: str = "trainer") -> None:
    """Range-check a per-scene-loop section (:data:`SCENE_TRAINER_RULES`); raises :class:`ConfigRangeError`."""
    _check_section(section, prefix, SCENE_TRAINER_RULES)


def check_components(node: Any, prefix: str) -> None:
    """Apply :data:`COMPONENT_RULES` to every matching key below ``node`` (nested nodes and lists included).

    A node's own keys are checked before its children, so a value interpolated into a child (``data.point_range``
    into ``data.train.point_range``) is reported under the key the user sets.
    """
    if isinstance(node, (DictConfig, Mapping)):
        children = []
        for key, value in _section_items(node):
            path = f"{prefix}.{key}"
            if key in COMPONENT_RULES and not _is_interpolation(value):
                try:
                    COMPONENT_RULES[key](path, _plain(value))
                except ConfigRangeError as exc:
                    if isinstance(node, DictConfig) and OmegaConf.is_interpolation(node, key):
                        source = OmegaConf.to_container(node, resolve=False)[key]  # type: ignore[index]
                        raise ConfigRangeError(f"{exc} (the value comes from {source})") from None
                    raise
            elif isinstance(value, (DictConfig, ListConfig, Mapping, list, tuple)):
                children.append((value, path))
        for value, path in children:
            check_components(value, path)
    elif isinstance(node, (ListConfig, list, tuple)):
        for index in range(len(node)):
            try:
                item = node[index]
            except OmegaConfBaseException:
                continue
            check_components(item, f"{prefix}[{index}]")


def check_writable_dir(key: str, value: Any) -> None:
    """``value`` is a directory this process can create files in, or can be created below a writable one."""
    path = Path(str(value)).expanduser()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigRangeError(f"{key}={_show(str(value))} is out of range: expected a writable directory "
                               f"({probe} is not a directory)")
    try:  # os.access says yes to root even on read-only file systems and /proc: try it
        os.rmdir(tempfile.mkdtemp(prefix=".sparse3d-write-test-", dir=probe))
    except OSError as exc:
        raise ConfigRangeError(f"{key}={_show(str(value))} is out of range: expected a writable directory "
                               f"({probe} is not writable: {exc.strerror})") from None


def validate_config(cfg: DictConfig) -> None:
    """Range-check a composed app config: the trainer section (by its kind), the component nodes and
    ``paths.output_root``. Raises :class:`ConfigRangeError` with one line for the first bad value.

    Call it right after composition, before anything is built or written.
    """
    trainer = cfg.get("trainer") if isinstance(cfg, DictConfig) else None
    if trainer is not None:
        if cfg.get("method") is not None:
            check_scene_trainer_config(trainer)
        else:
            check_trainer_config(trainer)
    for name in COMPONENT_NODES:
        node = cfg.get(name)
        if node is not None:
            check_components(node, name)
    output_root = OmegaConf.select(cfg, "paths.output_root", default=None, throw_on_resolution_failure=False)
    if output_root is not None:
        check_writable_dir("paths.output_root", output_root)


# ----------------------------------------------------------------------------------------- resolvers

_STAMPS: dict[str, str] = {}


def _run_stamp(fmt: str = "%Y-%m-%d_%H-%M-%S") -> str:
    """Timestamp for run directories, or ``torchrun_<run id>`` under torchrun.

    Every torchrun rank composes its own config; wall-clock stamps differ between ranks by
    milliseconds, so each rank would create its own run dir. ``TORCHELASTIC_RUN_ID`` is identical on
    all ranks of a job (``--standalone`` makes a fresh uuid; multi-node jobs pass ``--rdzv-id``).
    """
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id:
        return f"torchrun_{run_id}"
    if fmt not in _STAMPS:
        _STAMPS[fmt] = datetime.datetime.now().strftime(fmt)
    return _STAMPS[fmt]


def _rank_suffix() -> str:
    """``""`` in a single process, ``_rank<R>`` under torchrun (per-rank log file names)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"_rank{int(os.environ.get('RANK', '0'))}"
    return ""


def _rank_zero_or_null(value: Any) -> Any:
    """``value`` on rank 0 and ``None`` elsewhere: lets only rank 0 write ``.hydra/``."""
    return value if int(os.environ.get("RANK", "0")) == 0 else None


def _cwd() -> str:
    """The launch directory (Hydra does not chdir with version_base>=1.2; this makes paths absolute)."""
    return os.getcwd()


def _ckpt_experiment(ckpt_path: Any, no_checkpoint: Any = "default") -> str:
    """Experiment name of the run a checkpoint came from, for naming ``sparse3d-eval`` output dirs.

    Reads ``<run>/.hydra/config.yaml`` (cheap) instead of the checkpoint itself; falls back to
    ``"default"`` when the checkpoint is not inside a Hydra run directory, and to ``no_checkpoint`` (the task
    name, e.g. ``render``) when there is no checkpoint at all.
    """
    if not ckpt_path:
        return str(no_checkpoint)
    path = Path(str(ckpt_path)).expanduser()
    run_dir = path if path.is_dir() else path.parent.parent
    config_file = run_dir / ".hydra" / "config.yaml"
    if config_file.is_file():
        try:
            saved = OmegaConf.load(config_file)
            name = OmegaConf.select(saved, "experiment_name", default=None, throw_on_resolution_failure=False)
            if isinstance(name, str) and name:
                return name
        except Exception:  # an unreadable YAML must not stop evaluation; the name is cosmetic
            pass
    return "default"


_RESOLVERS = {
    "sparse3d.run_stamp": (_run_stamp, True),
    "sparse3d.rank_suffix": (_rank_suffix, False),
    "sparse3d.rank_zero_or_null": (_rank_zero_or_null, False),
    "sparse3d.cwd": (_cwd, True),
    "sparse3d.ckpt_experiment": (_ckpt_experiment, True),
}


def register_resolvers() -> None:
    """Register the ``sparse3d.*`` OmegaConf resolvers (idempotent)."""
    for name, (fn, use_cache) in _RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=use_cache)


def register() -> None:
    """Register schemas in Hydra's ConfigStore and the resolvers; safe to call repeatedly."""
    register_resolvers()
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(group="trainer", name="base_trainer", node=TrainerConfig)
    store.store(group="trainer", name="base_scene_trainer", node=SceneTrainerConfig)
    store.store(group="paths", name="base_paths", node=PathsConfig)
