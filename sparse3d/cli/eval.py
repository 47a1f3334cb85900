"""``sparse3d-eval``: run one evaluator from ``configs/evaluator/`` and print its report.

Examples::

    sparse3d-eval ckpt_path=outputs/train/quickstart/2025-01-01_12-00-00          # evaluator=validation
    sparse3d-eval ckpt_path=.../checkpoints/step_0000030.ckpt device=cpu
    sparse3d-eval ckpt_path=<run> ++data.root=/other/data batch_size=4
    sparse3d-eval evaluator=render pred=submission.zip data_root=/data/spare split=Track1_split_development.json \
        lpips.backbone=/weights/alexnet-owt-7be5be79.pth lpips.heads=/weights/alex.pth

An evaluator is any class with ``run(output_dir) -> EvalReport`` (:mod:`sparse3d.train.evaluators`), named by a
YAML file in ``configs/evaluator/``; results go to ``<output_root>/eval/<experiment>/<timestamp>/results.json``.
The pre-0.2 spelling ``task=render`` / ``task=segmentation`` still works and prints a deprecation notice.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from sparse3d.cli import _hydra as H
from sparse3d.train.evaluators import EvalReport, Evaluator
from sparse3d.utils.errors import UserError

log = logging.getLogger("sparse3d.cli.eval")

APP = "sparse3d-eval"


def _run(cfg: DictConfig) -> EvalReport:
    evaluator = instantiate(cfg.evaluator)
    if not isinstance(evaluator, Evaluator):
        raise UserError(f"{cfg.evaluator.get('_target_')} is not an evaluator (it has no run(output_dir) method)")
    output_dir = H.hydra_output_dir()
    output_dir.mkdir(parents=True, exist_ok=True)
    return evaluator.run(output_dir)


@hydra.main(version_base=H.VERSION_BASE, config_path=H.CONFIG_PATH, config_name="eval")
@H.guarded(APP)
def _hydra_entry(cfg: DictConfig) -> None:
    report = _run(cfg)
    print(f"{APP}: {report.text}", flush=True)


def _rewrite_deprecated_task(argv: list[str]) -> list[str]:
    """``task=X`` (before 0.2) -> ``evaluator=<name>``, with a notice on stderr."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key == "task":
            name = "validation" if value == "segmentation" else value  # the old task names, one release more
            print(f"{APP}: `task={value}` is deprecated and will be removed in the next release; "
                  f"use `evaluator={name}`", file=sys.stderr, flush=True)
            arg = f"evaluator={name}"
        out.append(arg)
    return out


def main() -> None:
    """Console-script entry point."""
    sys.argv = _rewrite_deprecated_task(sys.argv)
    _hydra_entry()


if __name__ == "__main__":
    main()
