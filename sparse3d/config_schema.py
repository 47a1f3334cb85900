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
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

# ------------------------------------------------------------------------------------------- schemas


@dataclass
class TrainerConfig:
    """Options of :class:`sparse3d.train.Trainer` (one training loop for every pipeline)."""

    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"; under torchrun cuda maps to LOCAL_RANK
    max_steps: int = 1000  # optimizer steps; <= 0 means "until max_epochs"
    max_epochs: int | None = None
    val_every: int = 0  # validate every N steps (0: only at the end, see val_at_end)
    val_at_end: bool = True
    log_every: int = 10  # steps between logger / TensorBoard lines (with ETA and running loss)
    ckpt_every: int = 0  # steps between step_XXXXXXX.ckpt files (0: only last.ckpt at the end)
    ckpt_keep: int = 0  # keep at most N step checkpoints (0: keep all); last.ckpt is always kept
    grad_clip: float | None = None  # max global grad norm
    amp: bool = False  # mixed precision; CUDA only (ignored with a warning on CPU)
    amp_dtype: str = "float16"  # "float16" (with GradScaler) | "bfloat16"
    seed: int = 0
    deterministic: bool = False
    progress: bool = True  # tqdm bar on rank 0 when stderr is a TTY
    shuffle: bool = True
    drop_last: bool = False
    num_threads: int | None = None  # torch.set_num_threads; None keeps torch's default
    find_unused_parameters: bool = False  # DDP option for models with branches unused in a step
    export_weights: bool = True  # write <output_dir>/model.safetensors at the end (rank 0)


@dataclass
class SceneTrainerConfig:
    """Options of :class:`sparse3d.train.scene_trainer.SceneTrainer` (the per-scene optimisation loop)."""

    device: str = "auto"
    max_steps: int | None = None  # null: the method's default_steps
    log_every: int = 50  # steps between log lines / TensorBoard scalars
    eval_every: int = 0  # test-view metrics every N steps (0: at the start and the end only)
    image_every: int = 0  # TensorBoard render|gt image every N steps (0: at the end only)
    ckpt_every: int = 0  # steps between step_XXXXXXX.ckpt files (0: only last.ckpt at the end)
    ckpt_keep: int = 2  # keep at most N step checkpoints (0: keep all)
    seed: int = 0
    progress: bool = True
    num_threads: int | None = None
    tensorboard: bool = True
    save_renders: bool = True  # renders/test/<view name> at the end
    export: bool = True  # the method's artefacts (e.g. point_cloud.ply) in the run dir


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
