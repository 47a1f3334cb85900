"""The data contract: what a ``data`` config node provides to ``sparse3d-train``, ``sparse3d-eval`` and
``sparse3d-spare``.

A data node is YAML with ``_target_`` sub-nodes; :class:`DataSpec` reads the keys the apps use, checks them
once, and builds the objects. Two kinds of pipeline read it:

* dataset-trained models use ``train`` (a ``torch.utils.data.Dataset``), optional ``val`` and
  ``collate_fn``, ``batch_size`` and ``num_workers``;
* per-scene methods use ``scene`` (a callable returning :class:`sparse3d.views.SceneViews`).

``root`` / ``generate_if_missing`` / ``generator`` let a data set be written on first use. Other keys in the
node (``num_classes``, ``point_range``...) are facts for interpolation into model configs and are ignored here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sparse3d.train import distributed as D
from sparse3d.utils.errors import UserError

log = logging.getLogger("sparse3d.train.data")


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with plain python containers for list/dict arguments."""
    return instantiate(node, _convert_="all", **kwargs)


def _get(node: Any, key: str) -> Any:
    if node is None:
        return None
    if isinstance(node, DictConfig):
        return OmegaConf.select(node, key, default=None)
    if isinstance(node, Mapping):
        return node.get(key)
    return getattr(node, key, None)


def _int(node: Any, key: str, default: int, minimum: int) -> int:
    value = _get(node, key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            raise UserError(f"data.{key} must be an integer, got {value!r}") from None
    if value < minimum:
        raise UserError(f"data.{key} must be >= {minimum}, got {value}")
    return int(value)


@dataclass(frozen=True)
class DataSpec:
    """The typed view of a ``data`` node (sub-nodes stay config nodes until built)."""

    train: Any = None
    val: Any = None
    collate_fn: Any = None
    scene: Any = None
    batch_size: int = 1
    num_workers: int = 0
    root: str | None = None
    generate_if_missing: bool = False
    generator: Any = None

    @classmethod
    def from_config(cls, node: Any) -> DataSpec:
        """Read and check a ``data`` node; errors name the key (``data.batch_size must be >= 1``)."""
        if node is None:
            raise UserError("no data config: choose one with data=<name> (see configs/data/)")
        root = _get(node, "root")
        generate = _get(node, "generate_if_missing")
        if generate is not None and not isinstance(generate, bool):
            raise UserError(f"data.generate_if_missing must be true or false, got {generate!r}")
        return cls(
            train=_get(node, "train"),
            val=_get(node, "val"),
            collate_fn=_get(node, "collate_fn"),
            scene=_get(node, "scene"),
            batch_size=_int(node, "batch_size", 1, 1),
            num_workers=_int(node, "num_workers", 0, 0),
            root=None if root is None else str(root),
            generate_if_missing=bool(generate),
            generator=_get(node, "generator"),
        )

    def prepare(self) -> None:
        """Generate the data set when ``generate_if_missing`` is set and ``root`` does not exist yet.

        Rank 0 generates; the other ranks wait at a barrier so nobody reads half-written files. Whether to
        generate is rank 0's decision, shared with every rank: a rank that looked at the folder itself a few
        milliseconds later would find the one rank 0 is writing, skip the barrier and leave the ranks' collectives
        out of step (a half-read data set, or a hang until the collective timeout).
        """
        if self.root is None:
            return
        root = Path(self.root)
        if D.broadcast_object(root.exists()):
            return
        if not self.generate_if_missing or self.generator is None:
            raise UserError(
                f"data root {root} does not exist; generate it (see `sparse3d-data --help`), point data.root / "
                "paths.data_dir at your data, or set data.generate_if_missing=true"
            )
        if D.current_dist_info().is_main:
            log.info("data root %s is missing: generating it with %s", root, _get(self.generator, "_target_"))
            build(self.generator)
        D.barrier("data generation")
        if not root.exists():
            raise UserError(f"the data generator finished but {root} still does not exist")

    def build_train(self) -> Any:
        """The training dataset (``data.train``)."""
        if self.train is None:
            raise UserError("the data config has no 'train' node (a _target_ building the training dataset)")
        return build(self.train)

    def build_val(self) -> Any | None:
        """The validation dataset, or None when ``data.val`` is absent."""
        return build(self.val) if self.val is not None else None

    def build_collate(self) -> Callable[[list[Any]], Any] | None:
        """The batch collation function, or None for torch's default."""
        return build(self.collate_fn) if self.collate_fn is not None else None

    def build_scene(self) -> Any:
        """The scene of a per-scene run (``data.scene``: a :class:`sparse3d.views.SceneViews`)."""
        if self.scene is None:
            raise UserError("the data config has no 'scene' node; per-scene methods need a scene data config "
                            "(e.g. data=spare_scene)")
        return build(self.scene)
