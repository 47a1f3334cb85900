"""``sparse3d-data``: write a synthetic data set with one of the generators in ``configs/generator/``.

Examples::

    sparse3d-data lidar                              # -> ${paths.data_dir}/synthetic_lidar
    sparse3d-data lidar out_dir=/tmp/lidar generator.num_scenes=4
    sparse3d-data generator=lidar out_dir=/tmp/lidar # the same, in plain Hydra syntax

The first bare argument is rewritten to ``generator=<name>`` because Hydra has no positional arguments.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from sparse3d.cli import _hydra as H
from sparse3d.train.data_spec import build
from sparse3d.utils.errors import UserError

log = logging.getLogger("sparse3d.cli.data")

APP = "sparse3d-data"


def run_data(cfg: DictConfig) -> Path:
    """Run the selected generator and return where the data went."""
    generator = cfg.get("generator")
    if generator is None or "_target_" not in generator:
        raise UserError("choose a generator: `sparse3d-data <name>` or generator=<name> (see configs/generator/)")
    result = build(generator)
    where = Path(str(result)) if isinstance(result, (str, Path)) else Path(str(cfg.get("out_dir", ".")))
    print(f"{APP}: wrote {cfg.get('experiment_name', 'data')} data to {where}", flush=True)
    return where


@hydra.main(version_base=H.VERSION_BASE, config_path=H.CONFIG_PATH, config_name="data")
@H.guarded(APP)
def _hydra_entry(cfg: DictConfig) -> None:
    run_data(cfg)


def _check_generator_choice(argv: list[str]) -> None:
    """``generator=null`` (or empty) is refused here: Hydra's own message for it does not name the group."""
    for token in argv[1:]:
        key, sep, value = token.partition("=")
        if sep and key.lstrip("+~") == "generator" and value.strip() in ("", "null"):
            print(f"{APP}: error: generator: choose a generator: `{APP} <name>` or generator=<name> "
                  "(see configs/generator/)", file=sys.stderr, flush=True)
            raise SystemExit(H.EXIT_USER_ERROR)


def main() -> None:
    """Console-script entry point (accepts ``sparse3d-data <generator> ...``)."""
    sys.argv = H.rewrite_positional_group(sys.argv, "generator")
    _check_generator_choice(sys.argv)
    _hydra_entry()


if __name__ == "__main__":
    main()
