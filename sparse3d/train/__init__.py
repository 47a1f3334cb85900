"""The shared training loop, checkpoints, distributed helpers and progress logging.

Public API: :class:`Trainer` (``fit``), :func:`evaluate`, :func:`save_weights` / :func:`load_weights`
(safetensors export), checkpoint helpers and the distributed utilities.
"""

from sparse3d.train.checkpoint import (
    find_latest_checkpoint,
    load_checkpoint,
    load_weights,
    resolve_checkpoint_path,
    resolve_resume,
    save_checkpoint,
    save_weights,
)
from sparse3d.train.distributed import DistInfo, TrainingStepAdapter, dist_info_from_env, unwrap_model
from sparse3d.train.trainer import WEIGHTS_NAME, Trainer, as_trainer_config, evaluate
from sparse3d.train.validation import default_aggregate, run_validation

__all__ = [
    "WEIGHTS_NAME",
    "DistInfo",
    "Trainer",
    "TrainingStepAdapter",
    "as_trainer_config",
    "default_aggregate",
    "dist_info_from_env",
    "evaluate",
    "find_latest_checkpoint",
    "load_checkpoint",
    "load_weights",
    "resolve_checkpoint_path",
    "resolve_resume",
    "run_validation",
    "save_checkpoint",
    "save_weights",
    "unwrap_model",
]
