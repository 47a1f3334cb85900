"""Plain 3D Gaussian Splatting (Kerbl et al., SIGGRAPH 2023) as a per-scene method, optionally densifying.

The method is fitted by :class:`sparse3d.train.scene_trainer.SceneTrainer`: ``setup`` initialises the Gaussians
and one Adam per parameter kind (the 3DGS learning rates, positions scaled by the scene extent), each
``training_step`` renders one input view drawn at random and takes a step on ``(1 - w) L1 + w (1 - SSIM)``
(w = 0.2 as in 3DGS); the position learning rate decays exponentially to ``means_lr_final`` times its start
value over the run, and the SH degree grows by one every ``sh_increase_every`` steps. With ``densify`` (the
keyword arguments of :class:`~sparse3d.models.splatting.densify.DefaultDensification`), the 3DGS adaptive density
control (clone / split by screen-space gradient, pruning, opacity reset; gsplat's default strategy) runs after
each optimizer update, its schedule fitted to the run length; ``densify=None`` keeps the initial Gaussians.
The sparse-view regularisers are separate methods built on the same model.

Initialisation (``init``): ``points`` seeds one Gaussian per sparse scene point
(:class:`~sparse3d.views.ScenePoints`, e.g. COLMAP ``points3D``; a random subset of ``max_init_points`` when
there are more): mean at the point, SH DC colour from its RGB (higher SH bands zero), isotropic scale = RMS
distance to its 3 nearest neighbours (:mod:`sparse3d.kernels.knn`), opacity ``opacity`` (0.1), identity
rotation, as 3DGS initialises from COLMAP. ``random``: ``num_points`` Gaussians uniformly in a cube centred
where the input cameras look (the least-squares meeting point of their optical axes), with a half-size of
``init_extent`` times the mean camera distance to it, grey, with the same scale, opacity and rotation rules.
``auto`` (default): ``points`` when the scene has points, else ``random``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sparse3d.cameras import Cameras
from sparse3d.io.gaussian_ply import save_gaussian_ply
from sparse3d.io.spare import rig_target
from sparse3d.models.splatting.densify import DefaultDensification
from sparse3d.models.splatting.gaussians import DEFAULT_LRS, GaussianModel, make_adam
from sparse3d.models.splatting.losses import photometric_loss
from sparse3d.utils.errors import UserError
from sparse3d.views import PosedImages, ScenePoints

PLY_NAME = "point_cloud.ply"
INIT_MODES: tuple[str, ...] = ("auto", "points", "random")
TIMING_KEYS: tuple[str, ...] = ("rasterizer", "losses", "update")
"""Parts of a training step summed in ``timings`` (seconds; CoherentGS's keys less its decoder): the rasterizer's
forward and backward, the losses' forward and backward, the optimizer update with densification (``sparse3d-bench
splatting_methods`` reads them; the loop's own overhead is the rest of the step time)."""
log = logging.getLogger("sparse3d.models.splatting.gs3d")


def look_target(cameras: Cameras) -> torch.Tensor:
    """Where the cameras look: their optical axes' meeting point, or 1 unit in front of a single camera."""
    cpu = cameras.to("cpu")
    if len(cpu) < 2:
        return (cpu.centers[0] + cpu.R[0, 2, :]).float()
    return rig_target(cpu)


class GaussianSplatting:
    """3DGS fitted to the input views of one scene (see the module docstring).

    Args:
        default_steps: steps when the loop config does not set ``max_steps``.
        num_points: Gaussians of the random initialisation.
        init_extent: half-size of the initial cube, as a fraction of the mean camera distance to the target.
        sh_degree: final SH degree (0-3); ``sh_increase_every`` steps per degree.
        ssim_weight: weight of the D-SSIM term.
        opacity: initial opacity.
        lrs: learning-rate overrides (keys of :data:`~sparse3d.models.splatting.gaussians.DEFAULT_LRS`).
        means_lr_final: final / initial position learning rate.
        background: RGB the renders are composited over (SpaRe scenes sit in a black box).
        densify: keyword arguments of :class:`~sparse3d.models.splatting.densify.DefaultDensification`
            (``{}`` for gsplat's defaults), or None for a fixed set of Gaussians.
        init: ``auto`` | ``points`` | ``random`` (see the module docstring).
        max_init_points: most Gaussians seeded from scene points (a random subset beyond that).
    """

    def __init__(
        self,
        default_steps: int = 300,
        num_points: int = 20_000,
        init_extent: float = 0.3,
        sh_degree: int = 1,
        sh_increase_every: int = 100,
        ssim_weight: float = 0.2,
        opacity: float = 0.1,
        lrs: Mapping[str, float] | None = None,
        means_lr_final: float = 0.01,
        background: Sequence[float] = (0.0, 0.0, 0.0),
        densify: Mapping[str, Any] | None = None,
        init: str = "auto",
        max_init_points: int = 100_000,
    ) -> None:
        if init not in INIT_MODES or int(max_init_points) < 1:
            raise ValueError(f"init must be one of {INIT_MODES} and max_init_points >= 1, got {init!r}, "
                             f"{max_init_points}")
        if default_steps < 0 or num_points < 1 or not init_extent > 0 or sh_increase_every < 1:
            raise ValueError("default_steps >= 0, num_points >= 1, init_extent > 0 and sh_increase_every >= 1 are "
                             f"required, got {default_steps}, {num_points}, {init_extent}, {sh_increase_every}")
        if not 0 <= sh_degree <= 3 or not 0.0 <= ssim_weight <= 1.0 or not 0.0 < opacity < 1.0:
            raise ValueError(f"sh_degree must be 0-3, ssim_weight in [0, 1], opacity in (0, 1); got {sh_degree}, "
                             f"{ssim_weight}, {opacity}")
        if len(background) != 3 or not 0.0 < means_lr_final <= 1.0:
            raise ValueError(f"background needs 3 values and means_lr_final must be in (0, 1], got {list(background)}, "
                             f"{means_lr_final}")
        unknown = set(lrs or {}) - set(DEFAULT_LRS)
        if unknown:
            raise ValueError(f"unknown learning-rate keys {sorted(unknown)}; expected {sorted(DEFAULT_LRS)}")
        self.default_steps = int(default_steps)
        self.num_points, self.init_extent = int(num_points), float(init_extent)
        self.max_sh_degree, self.sh_increase_every = int(sh_degree), int(sh_increase_every)
        self.ssim_weight, self.opacity = float(ssim_weight), float(opacity)
        self.lrs = dict(lrs or {})
        self.means_lr_final = float(means_lr_final)
        self.background_rgb = tuple(float(v) for v in background)
        self.densify = None if densify is None else dict(densify)
        self.init, self.max_init_points = str(init), int(max_init_points)
        self.init_info: dict[str, Any] = {}
        if self.densify is not None:
            DefaultDensification(**self.densify)  # a bad key or value fails here, not at the first scene
        self.strategy: DefaultDensification | None = None
        self.model: GaussianModel | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.views: PosedImages | None = None
        self.scene_extent = 1.0
        self.max_steps = 0
        self.step = 0
        self._values_checked = False  # rasterizer value check done (first training step of this process)
        self.timings = {k: 0.0 for k in TIMING_KEYS}
        self.timed_steps = 0

    # ------------------------------------------------------------------------------------------ set-up
    def setup(self, views: PosedImages, max_steps: int, points: ScenePoints | None = None) -> None:
        """Gaussians from ``points`` or at random around the cameras' look-at point (``init``), and their Adam.

        ``init=points`` with no (or empty) ``points`` is a :class:`UserError`."""
        self.views = views
        self.max_steps = int(max_steps)
        device = views.images.device
        target = look_target(views.cameras).to(device)
        centres = views.cameras.centers.to(device).float()
        distance = float((centres - target).norm(dim=-1).mean())
        # 3DGS's scene extent: 1.1 x the largest camera distance from the cameras' mean centre (at least the
        # target distance, so a single or collocated camera still gets a sensible scale).
        self.scene_extent = 1.1 * max(float((centres - centres.mean(0)).norm(dim=-1).max()), distance)
        has_points = points is not None and len(points) > 0
        if self.init == "points" and not has_points:
            raise UserError(f"method.init=points but scene {views.scene!r} has no sparse points (COLMAP points3D, "
                            "LLFF sparse/0 or nerfstudio ply_file_path); use method.init=auto or random")
        if points is not None and has_points and self.init != "random":
            xyz, rgb = points.xyz.to(device), points.rgb.to(device)
            if len(points) > self.max_init_points:
                keep = torch.randperm(len(points))[: self.max_init_points].sort().values.to(device)
                xyz, rgb = xyz[keep], rgb[keep]
            self.model = GaussianModel.from_points(xyz, rgb, sh_degree=self.max_sh_degree, opacity=self.opacity)
            self.init_info = {"init": "points", "num_init_gaussians": len(self.model),
                              "num_scene_points": len(points), "points_source": points.source}
            log.info("initialised %d Gaussians from %s (%d scene points)", len(self.model),
                     points.source or "the scene points", len(points))
        else:
            half = self.init_extent * distance
            cube = target + (torch.rand(self.num_points, 3, device=device) * 2 - 1) * half
            self.model = GaussianModel.from_points(cube, sh_degree=self.max_sh_degree, opacity=self.opacity)
            self.init_info = {"init": "random", "num_init_gaussians": len(self.model)}
            log.info("initialised %d Gaussians at random around the cameras' look-at point", len(self.model))
        self.optimizer = make_adam(self.model, self.scene_extent, self.lrs)
        self.strategy = None if self.densify is None else DefaultDensification(**self.densify)
        if self.strategy is not None:
            self.strategy.configure(len(self.model), self.max_steps, self.scene_extent, device)
        self.step = 0
        self.timings = {k: 0.0 for k in TIMING_KEYS}
        self.timed_steps = 0

    # ---------------------------------------------------------------------------------------- training
    def _require(self) -> tuple[GaussianModel, torch.optim.Optimizer, PosedImages]:
        if self.model is None or self.optimizer is None or self.views is None:
            raise RuntimeError("call setup() first")
        return self.model, self.optimizer, self.views

    def active_sh_degree(self, step: int) -> int:
        return min(self.max_sh_degree, step // self.sh_increase_every)

    def _means_lr(self, step: int) -> float:
        start = DEFAULT_LRS["means"] if "means" not in self.lrs else self.lrs["means"]
        t = min(1.0, step / max(1, self.max_steps))
        return start * self.scene_extent * math.exp(t * math.log(self.means_lr_final))

    def training_step(self, step: int) -> dict[str, float]:
        model, optimizer, views = self._require()
        self.update_learning_rates(step)
        index = int(torch.randint(len(views), (1,)))
        target = views.images[index : index + 1]
        strategy = self.strategy
        meta: dict[str, Any] | None = None if strategy is None else {}
        # The rasterizer checks the values on the first step of this process only: afterwards they are the
        # optimiser's activated parameters (sigmoid, exp, normalised in the rasterizer), checked once.
        t0 = time.perf_counter()
        colors, _ = model.render(views.cameras[index], self._background(), sh_degree=self.active_sh_degree(step),
                                 absgrad=strategy is not None and strategy.absgrad, meta=meta,
                                 check_values=not self._values_checked)
        self._values_checked = True
        if strategy is not None and meta is not None:
            strategy.step_pre_backward(meta)
        t1 = time.perf_counter()
        # The loss sees a detached copy of the render, so its backward and the rasterizer's are timed apart.
        leaf = colors.detach().requires_grad_(True)
        loss, parts = photometric_loss(leaf, target, self.ssim_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        colors.backward(leaf.grad)
        t3 = time.perf_counter()
        optimizer.step()
        if strategy is not None and meta is not None:
            strategy.step_post_backward(model, optimizer, step, meta)  # after the update, as gsplat's trainer
        self.add_timings(rasterizer=(t1 - t0) + (t3 - t2), losses=t2 - t1, update=time.perf_counter() - t3)
        self.step = step + 1
        return {"loss": float(loss.detach()), **parts, "num_gaussians": float(len(model))}

    def add_timings(self, **seconds: float) -> None:
        """Add one training step's seconds per part (keys of :data:`TIMING_KEYS`) to ``timings``."""
        for key, value in seconds.items():
            self.timings[key] += float(value)
        self.timed_steps += 1

    def _background(self) -> torch.Tensor:
        model, _, _ = self._require()
        return torch.tensor(self.background_rgb, device=model.means.device)

    def update_learning_rates(self, step: int) -> None:
        """Set the learning rates of optimisation step ``step`` (the position rate's exponential decay)."""
        _, optimizer, _ = self._require()
        for group in optimizer.param_groups:
            if group["name"] == "means":
                group["lr"] = self._means_lr(step)

    def rasterize(self, cameras: Cameras, step: int, *, render_mode: str = "RGB", meta: dict[str, Any] | None = None,
                  absgrad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Render ``cameras`` as a training step does (for subclasses that need other render modes): the
        method's background, the SH degree of ``step``, and the rasterizer's value check only on the first call
        of the process. Returns the rasterizer's (C, H, W, channels) colours and (C, H, W, 1) alphas; ``meta``
        receives its meta (``means2d`` for the densification statistics)."""
        from sparse3d.render.gaussians import rasterize_gaussians

        model, _, _ = self._require()
        out, alphas, info = rasterize_gaussians(
            model.means, model.quats, model.scales, model.opacities, model.sh,
            cameras.viewmat.to(model.means), cameras.K.to(model.means), cameras.width, cameras.height,
            sh_degree=self.active_sh_degree(step),
            backgrounds=self._background()[None].expand(len(cameras), 3).contiguous(),
            render_mode=render_mode, absgrad=absgrad, check_values=not self._values_checked,
        )
        self._values_checked = True
        if meta is not None:
            meta.update(info)
        return out, alphas

    # ------------------------------------------------------------------------------------------ output
    def render(self, cameras: Cameras) -> torch.Tensor:
        model, _, _ = self._require()
        with torch.no_grad():
            colors, _ = model.render(cameras.to(model.means.device), self._background(),
                                     sh_degree=self.active_sh_degree(self.step))
        return colors[..., :3].clamp(0.0, 1.0)

    def render_depth(self, cameras: Cameras) -> torch.Tensor:
        """(C, H, W) camera-z depth of ``cameras``: per pixel, the depth of the Gaussian at which the accumulated
        opacity first reaches 1/2 (the rasterizer's median depth), 0 where it never does (empty pixels)."""
        model, _, _ = self._require()
        meta: dict[str, Any] = {}
        with torch.no_grad():
            model.render(cameras.to(model.means.device), self._background(),
                         sh_degree=self.active_sh_degree(self.step), meta=meta)
        return meta["median_depths"][..., 0].float()

    def export(self, out_dir: Path) -> list[Path]:
        """The Gaussians as a standard 3DGS PLY (SuperSplat, gsplat and the 3DGS viewers open it)."""
        model, _, _ = self._require()
        return [save_gaussian_ply(Path(out_dir) / PLY_NAME, model.to_cloud())]

    def summary(self) -> dict[str, Any]:
        model, _, _ = self._require()
        info: dict[str, Any] = {"num_gaussians": len(model), "sh_degree": self.active_sh_degree(self.step),
                                "scene_extent": self.scene_extent, **self.init_info}
        if self.strategy is not None:
            info["densify"] = self.strategy.summary()
        return info

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        model, optimizer, _ = self._require()
        state = {"gaussians": {k: v.detach().clone() for k, v in model.state_dict().items()},
                 "optimizer": optimizer.state_dict(), "step": self.step, "scene_extent": self.scene_extent}
        if self.strategy is not None:
            state["densify"] = self.strategy.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Rebuild the Gaussians with the saved count (densified runs differ from ``setup``'s) and their Adam."""
        _, _, views = self._require()
        g = state["gaussians"]
        device = views.images.device
        self.model = GaussianModel(g["means"].to(device), g["log_scales"].to(device), g["quats"].to(device),
                                   g["opacity_logits"].to(device), g["sh0"].to(device), g["sh_rest"].to(device))
        self.scene_extent = float(state["scene_extent"])
        self.optimizer = make_adam(self.model, self.scene_extent, self.lrs)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        if self.strategy is not None:
            if "densify" not in state:
                raise ValueError("the checkpoint was written without densification; set method.densify=null to "
                                 "resume it")
            self.strategy.load_state_dict(state["densify"])
            if self.strategy.grad2d.shape[0] != len(self.model):
                raise ValueError(f"densification statistics for {self.strategy.grad2d.shape[0]} Gaussians, "
                                 f"checkpoint has {len(self.model)}")
