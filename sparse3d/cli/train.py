"""``sparse3d-train``: train a dataset-trained model, or fit a per-scene method to one scene.

Examples::

    sparse3d-train                                   # quick-start demo (experiment=quickstart)
    sparse3d-train experiment=quickstart trainer.max_steps=200 trainer.device=cpu
    sparse3d-train experiment=gs3d_spare             # plain 3DGS on one generated SpaRe scene
    sparse3d-train -m trainer.seed=0,1,2             # sweep
    sparse3d-train resume=true                       # continue the newest run of this experiment
    torchrun --standalone --nproc_per_node=2 $(which sparse3d-train) trainer.device=cpu

A config names either ``model`` (a task module, run by :class:`sparse3d.train.Trainer`) or ``method`` (a
per-scene method, run by :class:`sparse3d.train.scene_trainer.SceneTrainer`). Both write
``<run dir>/summary.json``, ``checkpoints/`` and ``tb/``.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig

from sparse3d.cli import _hydra as H
from sparse3d.config_schema import validate_config
from sparse3d.train.data_spec import DataSpec
from sparse3d.train.runs import print_summary, train_model
from sparse3d.train.scene_trainer import SceneTrainer, method_factory
from sparse3d.train.session import process_session
from sparse3d.utils.errors import UserError

log = logging.getLogger("sparse3d.cli.train")

APP = "sparse3d-train"


def _run(cfg: DictConfig) -> dict[str, Any]:
    has_model, has_method = cfg.get("model") is not None, cfg.get("method") is not None
    if has_model == has_method:
        raise UserError("a training config names exactly one of model=<task module> or method=<per-scene method> "
                        f"(got {'both' if has_model else 'neither'}); see configs/experiment/")
    validate_config(cfg)  # range checks of every section, before any data is generated or read
    output_dir = H.hydra_output_dir()
    data = DataSpec.from_config(cfg.get("data"))
    if has_model:
        return train_model(cfg, data, output_dir, H.runs_root(cfg), on_session=_configure_ranks)
    with process_session(cfg.trainer.device):
        data.prepare()
        scene = data.build_scene()
        method = method_factory(cfg.method)()
        trainer = SceneTrainer(cfg.trainer, output_dir, full_config=cfg, runs_root=H.runs_root(cfg))
        return trainer.fit(method, scene, resume=cfg.resume)


def _configure_ranks(info: Any) -> None:
    H.quiet_console_on_worker_ranks(info)
    H.warn_if_rank_dirs_may_split(info)


@hydra.main(version_base=H.VERSION_BASE, config_path=H.CONFIG_PATH, config_name="train")
@H.guarded(APP)
def _hydra_entry(cfg: DictConfig) -> float | None:
    summary = _run(cfg)
    print_summary(APP, summary)
    loss = summary.get("final_train_loss")
    return float(loss) if isinstance(loss, (int, float)) else None  # sweepers may optimise it


def main() -> None:
    """Console-script entry point."""
    _hydra_entry()


if __name__ == "__main__":
    main()
