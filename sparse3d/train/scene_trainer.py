"""The one per-scene optimisation loop: 3DGS, CoherentGS, RDG-GS, baselines and single-shape fits run on it.

Method protocol (:class:`SceneMethod`)
--------------------------------------
* ``setup(views, max_steps)``: build parameters and optimizers from the input views (a method owns its
  optimizers, because densification changes parameter counts), on the device of ``views.images``. A method
  whose ``setup`` also takes a ``points`` keyword receives the scene's sparse
  :class:`~sparse3d.views.ScenePoints` (on that device) when the scene has them; others are called as before.
* ``training_step(step) -> dict``: one optimisation step, backward and optimizer updates included; returns
  scalars with a ``"loss"`` entry. Not called when the run has 0 steps (e.g. a warping baseline).
* ``render(cameras) -> (N, H, W, 3)`` float images in [0, 1].
* ``state_dict()`` / ``load_state_dict(state)``: everything needed to continue bit-for-bit (parameters,
  optimizer moments, schedule position); only tensors, numbers, strings and containers.
* ``export(out_dir) -> list[Path]``: artefacts for other tools (e.g. a 3DGS ``.ply``).
* ``default_steps``: the step count used when the loop config leaves ``max_steps`` null.

:class:`SceneTrainer` adds what every method needs: seeding, a progress bar with ETA and log lines,
TensorBoard scalars and images (render | ground truth, plus depth when the method has ``render_depth``),
test-view metrics at the start and the end, periodic atomic checkpoints with exact resume (RNG states included),
and artefacts in the run directory: ``renders/test/<view name>``, the method's exports, ``summary.json``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from omegaconf import DictConfig, OmegaConf

import sparse3d
from sparse3d.cameras import Cameras
from sparse3d.config_schema import SceneTrainerConfig, check_scene_trainer_config
from sparse3d.io.atomic import atomic_path, atomic_write_json
from sparse3d.io.images import write_png
from sparse3d.metrics.image import psnr, psnr_masked, ssim
from sparse3d.train.checkpoint import (
    LAST_NAME,
    RunDirectory,
    capture_rng_state,
    load_checkpoint,
    preserved_rng_state,
    resolve_resume,
    restore_rng_state,
    write_run_checkpoint,
)
from sparse3d.train.data_spec import build
from sparse3d.train.monitor import ProgressReporter, ScalarWriter
from sparse3d.train.session import process_session
from sparse3d.train.validation import is_scalar
from sparse3d.utils.errors import UserError
from sparse3d.utils.seed import seed_everything
from sparse3d.views import PosedImages, SceneViews

log = logging.getLogger("sparse3d.train.scene")

SUMMARY_NAME = "summary.json"
RENDER_DIR = "renders"


@runtime_checkable
class SceneMethod(Protocol):
    """A method fitted to one scene by :class:`SceneTrainer` (see the module docstring)."""

    default_steps: int

    def setup(self, views: PosedImages, max_steps: int) -> None: ...

    def training_step(self, step: int) -> Mapping[str, Any]: ...

    def render(self, cameras: Cameras) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def export(self, out_dir: Path) -> list[Path]: ...


def method_factory(node: Any) -> Callable[[], SceneMethod]:
    """A ``method`` config node (``configs/method/<name>.yaml``, ``_partial_: true``) as a factory that builds a
    fresh method per scene; a node without ``_partial_`` is refused, since one object cannot serve two scenes."""
    built = build(node)
    if not isinstance(built, functools.partial):
        raise UserError(f"the method config ({_target(node)}) must set `_partial_: true` so a fresh method can be "
                        "built for every scene (see configs/method/)")
    return built


def _target(node: Any) -> str:
    return str(node.get("_target_") if hasattr(node, "get") else node)


def as_scene_trainer_config(cfg: Any) -> DictConfig:
    """Validate a loop config (DictConfig, dict or None) against :class:`SceneTrainerConfig`."""
    schema = OmegaConf.structured(SceneTrainerConfig)
    if cfg is None:
        return schema
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    try:
        merged = OmegaConf.merge(schema, cfg)
    except Exception as exc:
        raise UserError(f"invalid per-scene trainer config: {exc}") from exc
    check_scene_trainer_config(merged)
    return merged  # type: ignore[return-value]


def render_views(method: SceneMethod, cameras: Cameras) -> torch.Tensor:
    """(N, H, W, 3) renders, one camera at a time (bounded memory), checked for shape and finiteness."""
    out = []
    with torch.no_grad():
        for i in range(len(cameras)):
            image = method.render(cameras[i])
            if not isinstance(image, torch.Tensor) or tuple(image.shape) != (1, cameras.height, cameras.width, 3):
                shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
                raise ValueError(f"{type(method).__name__}.render returned {shape}, expected "
                                 f"(1, {cameras.height}, {cameras.width}, 3)")
            if not bool(torch.isfinite(image).all()):
                raise ValueError(f"{type(method).__name__}.render produced NaN or inf values (camera {i})")
            out.append(image.detach().float().clamp(0.0, 1.0).cpu())
    return torch.cat(out) if out else torch.zeros(0, cameras.height, cameras.width, 3)


def score_views(renders: torch.Tensor, views: PosedImages) -> dict[str, float]:
    """Mean PSNR and SSIM of ``renders`` against ``views``; PSNR-M too when every view has a non-empty mask."""
    gt = views.images.detach().float().cpu()
    metrics = {"psnr": float(psnr(renders, gt).mean()), "ssim": float(ssim(renders, gt).mean())}
    if views.masks is not None and bool(views.masks.flatten(1).any(1).all()):
        metrics["psnr_m"] = float(psnr_masked(renders, gt, views.masks.cpu()).mean())
    return metrics


class SceneTrainer(RunDirectory):
    """Run a :class:`SceneMethod` on one scene and leave its artefacts in ``output_dir``.

    Args:
        cfg: loop options (:class:`sparse3d.config_schema.SceneTrainerConfig`).
        output_dir: the run directory (checkpoints, ``tb/``, ``renders/``, exports, ``summary.json``).
        full_config: the resolved app config, stored in checkpoints.
        runs_root: where ``resume=true`` looks for earlier runs (default: ``output_dir.parent``).
    """

    def __init__(
        self,
        cfg: Any,
        output_dir: str | Path,
        *,
        full_config: DictConfig | Mapping[str, Any] | None = None,
        runs_root: str | Path | None = None,
    ) -> None:
        super().__init__(output_dir, full_config, runs_root)
        self.cfg = as_scene_trainer_config(cfg)
        self.step = 0
        self.resumed_from: Path | None = None
        self.initial_metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.exports: list[str] = []
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------------------------ public API
    def fit(self, method: SceneMethod, scene: SceneViews, resume: bool | str | Path | None = False) -> dict[str, Any]:
        """Fit ``method`` on ``scene.inputs`` and score it on ``scene.test``; returns the summary (also on disk).

        ``resume``: ``False``, ``True`` (newest earlier run under ``runs_root``), ``"auto"`` (this run
        directory's own ``last.ckpt`` if present, else a fresh start), or a checkpoint file / run directory.
        """
        cfg = self.cfg
        with process_session(cfg.device) as session:
            self.device = session.device
            if session.dist.enabled:
                raise UserError("per-scene methods run in one process; launch without torchrun "
                                "(sweep scenes with `sparse3d-spare submit -m ...` instead)")
            if cfg.num_threads:
                torch.set_num_threads(int(cfg.num_threads))
            start_time = time.perf_counter()
            seed_everything(cfg.seed)
            inputs = _to_device(scene.inputs, session.device)
            test = _to_device(scene.test, session.device) if scene.test is not None else None
            max_steps = int(method.default_steps if cfg.max_steps is None else cfg.max_steps)
            if max_steps < 0:
                raise UserError(f"trainer.max_steps must be >= 0, got {max_steps}")
            method.setup(inputs, max_steps, **setup_extras(method, scene, session.device))
            writer = ScalarWriter(self.output_dir / "tb" if cfg.tensorboard else None)
            try:
                ckpt = self._resume_path(resume)
                if ckpt is not None:
                    self._load(method, ckpt)
                elif test is not None:
                    self.initial_metrics = self._evaluate(method, test, writer, tag="test")
                    log.info("scene %s, step 0: %s", scene.name, _fmt(self.initial_metrics))
                start_step = self.step
                train_time = self._loop(method, inputs, test, max_steps, writer)
                if self.resumed_from is None or self.step > start_step:
                    self._save(method, periodic=False)
                final = self._finish(method, inputs, test, writer)
            finally:
                writer.close()
            summary = self._summary(method, scene, max_steps, final, train_time, time.perf_counter() - start_time,
                                    session.device)
            atomic_write_json(self.output_dir / SUMMARY_NAME, summary)
            return summary

    # ------------------------------------------------------------------------------------- internals
    def _resume_path(self, resume: Any) -> Path | None:
        if isinstance(resume, str) and resume.strip().lower() == "auto":
            own = self.ckpt_dir / LAST_NAME
            return own if own.is_file() else None
        return resolve_resume(resume, self.runs_root, self.output_dir)

    def _loop(self, method: SceneMethod, inputs: PosedImages, test: PosedImages | None, max_steps: int,
              writer: ScalarWriter) -> float:
        cfg = self.cfg
        if self.step >= max_steps:
            return 0.0
        reporter = ProgressReporter(max_steps, self.step, enabled=True, show_bar=bool(cfg.progress))
        sums: dict[str, float] = {}
        count = 0
        start = time.perf_counter()
        try:
            with reporter.logging_redirect():
                while self.step < max_steps:
                    scalars = _scalars(method.training_step(self.step), type(method).__name__, self.step + 1)
                    self.step += 1
                    self.history.append({"step": float(self.step), **scalars})
                    for key, value in scalars.items():
                        sums[key] = sums.get(key, 0.0) + value
                    count += 1
                    reporter.update(self.step, scalars["loss"])
                    if cfg.log_every > 0 and (self.step % cfg.log_every == 0 or self.step == max_steps):
                        means = {k: v / count for k, v in sums.items()}
                        reporter.log_line(self.step, 0, means, None)
                        writer.add_scalars("train", means, self.step)
                        sums, count = {}, 0
                    if test is not None and cfg.eval_every > 0 and self.step % cfg.eval_every == 0 \
                            and self.step < max_steps:
                        log.info("step %d: %s", self.step, _fmt(self._evaluate(method, test, writer, tag="test")))
                    if cfg.image_every > 0 and self.step % cfg.image_every == 0 and self.step < max_steps:
                        self._log_images(method, test or inputs, writer)
                    if cfg.ckpt_every > 0 and self.step % cfg.ckpt_every == 0 and self.step < max_steps:
                        self._save(method, periodic=True)
        finally:
            reporter.close()
        return time.perf_counter() - start

    def _evaluate(self, method: SceneMethod, views: PosedImages, writer: ScalarWriter, tag: str) -> dict[str, float]:
        with preserved_rng_state():
            metrics = score_views(render_views(method, views.cameras), views)
        writer.add_scalars(tag, metrics, self.step)
        return metrics

    def _log_images(self, method: SceneMethod, views: PosedImages, writer: ScalarWriter) -> None:
        """TensorBoard image of the first view: render | ground truth, and ``| depth`` (tag ``render|gt|depth``)
        when the method has the optional ``render_depth(cameras) -> (1, H, W)`` (camera-z depth, 0 where empty),
        drawn with :func:`sparse3d.vis.colors.depth_colors` (near = bright, empty = black)."""
        camera = views.cameras[0]
        with preserved_rng_state():
            render = render_views(method, camera)[0]
            render_depth = getattr(method, "render_depth", None)
            depth = None
            if callable(render_depth):
                with torch.no_grad():
                    depth = render_depth(camera)
        panels = [render, views.images[0].detach().float().cpu()]
        if depth is None:
            writer.add_image("render|gt", torch.cat(panels, dim=1), self.step)
            return
        from sparse3d.vis.colors import depth_colors

        if not isinstance(depth, torch.Tensor) or tuple(depth.shape) != (1, camera.height, camera.width):
            shape = tuple(depth.shape) if isinstance(depth, torch.Tensor) else type(depth).__name__
            raise ValueError(f"{type(method).__name__}.render_depth returned {shape}, expected "
                             f"(1, {camera.height}, {camera.width})")
        panels.append(torch.from_numpy(depth_colors(depth[0].detach().float().cpu().numpy())))
        writer.add_image("render|gt|depth", torch.cat(panels, dim=1), self.step)

    def _finish(self, method: SceneMethod, inputs: PosedImages, test: PosedImages | None,
                writer: ScalarWriter) -> dict[str, float]:
        """Final test metrics, test renders on disk, the method's exports."""
        cfg = self.cfg
        final: dict[str, float] = {}
        if test is not None:
            with preserved_rng_state():
                renders = render_views(method, test.cameras)
            final = score_views(renders, test)
            writer.add_scalars("test", final, self.step)
            if cfg.save_renders:
                folder = self.output_dir / RENDER_DIR / "test"
                folder.mkdir(parents=True, exist_ok=True)
                for image, name in zip(renders, test.view_names(), strict=True):
                    with atomic_path(folder / name, fsync=False) as tmp:
                        write_png(tmp, image.numpy())
        self._log_images(method, test or inputs, writer)
        if cfg.export:
            self.exports = [str(p) for p in method.export(self.output_dir)]
        writer.flush()
        return final

    def _save(self, method: SceneMethod, periodic: bool) -> None:
        state = {
            "kind": "scene",
            "method": method.state_dict(),
            "step": self.step,
            "initial_metrics": dict(self.initial_metrics),
            "rng": capture_rng_state(),
            "config": self.full_config,
            "trainer_config": OmegaConf.to_container(self.cfg, resolve=True),
            "versions": {"torch": str(torch.__version__), "sparse3d": str(sparse3d.__version__)},
        }
        write_run_checkpoint(state, self.ckpt_dir, self.step, periodic, int(self.cfg.ckpt_keep))

    def _load(self, method: SceneMethod, path: Path) -> None:
        state = load_checkpoint(path, map_location="cpu")
        if state.get("kind") != "scene" or "method" not in state:
            raise UserError(f"{path} is not a per-scene checkpoint (it has no method state)")
        try:
            method.load_state_dict(state["method"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise UserError(f"checkpoint {path} does not match {type(method).__name__}: {exc}") from exc
        self.step = int(state["step"])
        self.initial_metrics = dict(state.get("initial_metrics") or {})
        if state.get("rng") is not None:
            restore_rng_state(state["rng"])
        self.resumed_from = path
        log.info("resumed from %s at step %d", path, self.step)

    def _summary(self, method: SceneMethod, scene: SceneViews, max_steps: int, final: dict[str, float],
                 train_time: float, wall_time: float, device: torch.device) -> dict[str, Any]:
        extra = getattr(method, "summary", None)
        last = self.history[-1] if self.history else {}
        config = self.full_config or {}
        return {
            "task": config.get("task_name"),
            "experiment": config.get("experiment_name"),
            "scene": scene.name,
            "method": type(method).__qualname__,
            "output_dir": str(self.output_dir),
            "steps": self.step,
            "max_steps": max_steps,
            "final_train_loss": last.get("loss"),
            "test_initial": self.initial_metrics,
            "test": final,
            "num_input_views": len(scene.inputs),
            "num_test_views": len(scene.test) if scene.test is not None else 0,
            "train_time_s": train_time,
            "wall_time_s": wall_time,
            "device": str(device),
            "seed": int(self.cfg.seed),
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "checkpoint": str(self.ckpt_dir / LAST_NAME) if (self.ckpt_dir / LAST_NAME).is_file() else None,
            "exports": list(self.exports),
            "method_info": extra() if callable(extra) else {},
        }


def setup_extras(method: SceneMethod, scene: SceneViews, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The optional keyword arguments of ``method.setup`` that ``scene`` can give: ``points`` (sparse scene points,
    on ``device``) and ``mesh`` with its ``normalization`` (a scene made from a mesh), each only when the method's
    ``setup`` accepts it."""
    extras: dict[str, Any] = {}
    if scene.points is not None and _accepts(method, "points"):
        extras["points"] = scene.points.to(device)
    if scene.mesh is not None and _accepts(method, "mesh"):
        extras["mesh"] = scene.mesh
        if _accepts(method, "normalization"):
            extras["normalization"] = scene.normalization
    return extras


def _accepts(method: SceneMethod, keyword: str) -> bool:
    """Whether ``method.setup`` takes ``keyword``: the optional extensions ``points`` (sparse scene points) and
    ``mesh`` (the target surface of a scene made from a mesh)."""
    try:
        params = inspect.signature(method.setup).parameters
    except (TypeError, ValueError):
        return False
    return keyword in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _to_device(views: PosedImages, device: torch.device) -> PosedImages:
    return PosedImages(
        images=views.images.to(device), cameras=views.cameras.to(device),
        masks=views.masks.to(device) if views.masks is not None else None, scene=views.scene, names=views.names,
    )


def _scalars(out: Any, owner: str, step: int) -> dict[str, float]:
    """Float scalars of a ``training_step`` result; a missing or non-finite loss is an error naming the step."""
    if isinstance(out, torch.Tensor):
        out = {"loss": out}
    if not isinstance(out, Mapping) or "loss" not in out:
        raise TypeError(f"{owner}.training_step must return a dict with a 'loss' entry")
    scalars = {str(k): float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
               for k, v in out.items() if is_scalar(v)}
    if not math.isfinite(scalars["loss"]):
        raise RuntimeError(f"non-finite training loss at step {step}: {scalars['loss']}; lower the learning rates "
                           "or check the input views")
    return scalars


def _fmt(metrics: Mapping[str, float]) -> str:
    return " | ".join(f"{k} {v:.4g}" for k, v in metrics.items()) or "no test views"
