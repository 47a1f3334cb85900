"""Adaptive density control of 3D Gaussians: clone, split, prune and opacity reset (the 3DGS default strategy).

Written from the 3DGS paper (Kerbl et al., "3D Gaussian Splatting for Real-Time Radiance Field Rendering",
SIGGRAPH 2023, Sec. 5.2) and the documented behaviour of gsplat's ``DefaultStrategy`` (Ye et al. 2024,
https://docs.gsplat.studio/main/apis/strategy.html, gsplat 1.5.3), whose defaults it keeps:

* **Statistics** (every step before ``refine_stop``): for every Gaussian visible in the rendered camera (both
  radii > 0), the norm of its screen-space mean gradient, with the x and y components multiplied by
  ``width / 2 * n_cameras`` and ``height / 2 * n_cameras`` (gsplat's normalisation to [-1, 1] screen
  coordinates), is added to ``grad2d`` and 1 to ``count``. With ``absgrad`` (AbsGS, Ye et al. 2024,
  arXiv 2404.10484) the per-pixel sum of absolute gradients is used instead, so opposite pixel gradients no
  longer cancel; it needs a larger ``grow_grad2d`` (gsplat suggests 8e-4) and a render with ``absgrad=True``.
* **Refinement** at every step ``s`` with ``s > refine_start`` and ``s % refine_every == 0`` (and
  ``s < refine_stop``): Gaussians whose mean statistic ``grad2d / max(count, 1)`` exceeds ``grow_grad2d`` grow:

  - *clone* (under-reconstruction) when their largest scale is ``<= grow_scale3d * scene_extent``: an exact
    copy is appended;
  - *split* (over-reconstruction) otherwise: the parent is replaced by 2 children whose means are drawn from
    the parent's Gaussian ``N(mu, R S S^T R^T)`` and whose scales are the parent's divided by 1.6; all other
    parameters are copied. Clones made in the same refinement are not split.

  Then Gaussians with opacity ``< prune_opa`` are pruned, and, once the step is past the first opacity reset
  (``s > reset_every``), also those whose largest scale exceeds ``prune_scale3d * scene_extent``. The
  statistics restart from zero after every refinement.
* **Opacity reset** at every ``s > 0`` with ``s % reset_every == 0`` (and ``s < refine_stop``): opacities are
  clamped to at most ``2 * prune_opa`` (0.01 with the defaults, the value of the 3DGS code), after the
  refinement of that step.

``step`` is the 0-based index of the optimisation step whose backward and optimizer update just ran (gsplat's
trainer calls its strategy after the optimizer step).

Optimizer state follows the surgery (:func:`duplicate`, :func:`split`, :func:`remove`, :func:`reset_opacity`),
as in the 3DGS and gsplat code: every per-Gaussian optimizer state tensor (Adam's ``exp_avg`` and
``exp_avg_sq``) is indexed like its parameter, new Gaussians (clones and split children alike) start with zero
moments, removed ones lose theirs, an opacity reset zeroes the opacity moments of every Gaussian, and scalar
state (Adam's per-group ``step``) is kept. Parameters are replaced by new ``nn.Parameter`` objects in the model
and in their optimizer groups; nothing else in the groups changes (names, learning rates).

Schedule for short runs: the four schedule values are gsplat's for a ``schedule_steps`` = 30 000 step run. A
run of ``max_steps < schedule_steps`` scales each by ``max_steps / schedule_steps`` (rounded) and then raises
it to its floor in ``min_schedule`` (see :func:`scale_schedule`); longer runs keep the values as given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from sparse3d.models.splatting.gaussians import GaussianModel

__all__ = [
    "DensifySchedule",
    "DefaultDensification",
    "scale_schedule",
    "append",
    "duplicate",
    "split",
    "remove",
    "reset_opacity",
    "quat_rotation_matrices",
]

SPLIT_SCALE_DIVISOR = 1.6
"""Children of a split get the parent's scales divided by this (3DGS: 0.8 N with N = 2)."""


@dataclass(frozen=True)
class DensifySchedule:
    """When refinement and opacity resets happen (step indices, 0-based; see the module docstring)."""

    refine_every: int = 100
    refine_start: int = 500
    refine_stop: int = 15_000
    reset_every: int = 3_000

    def __post_init__(self) -> None:
        values = asdict(self)
        bad = {k: v for k, v in values.items() if isinstance(v, bool) or not isinstance(v, int)
               or v < (1 if k in ("refine_every", "reset_every") else 0)}
        if bad:
            raise ValueError(f"densification schedule: refine_every and reset_every must be integers >= 1, "
                             f"refine_start and refine_stop integers >= 0; got {bad}")

    def is_refine_step(self, step: int) -> bool:
        return self.refine_start < step < self.refine_stop and step % self.refine_every == 0

    def is_reset_step(self, step: int) -> bool:
        return 0 < step < self.refine_stop and step % self.reset_every == 0


def scale_schedule(schedule: DensifySchedule, max_steps: int, schedule_steps: int,
                   min_schedule: Mapping[str, int] | None = None) -> DensifySchedule:
    """``schedule`` (written for a ``schedule_steps`` run) fitted to a run of ``max_steps``.

    Runs at least ``schedule_steps`` long keep it. Shorter runs multiply every value by
    ``max_steps / schedule_steps``, round to the nearest integer and raise it to ``min_schedule[key]`` (default
    floor: 1 for ``refine_every`` and ``reset_every``, 0 otherwise), so the refinements keep their place in the
    run while each window still holds enough steps to average gradients over.
    """
    if schedule_steps < 1 or max_steps < 0:
        raise ValueError(f"schedule_steps must be >= 1 and max_steps >= 0, got {schedule_steps}, {max_steps}")
    floors = dict(min_schedule or {})
    unknown = set(floors) - set(asdict(schedule))
    if unknown:
        raise ValueError(f"unknown min_schedule keys {sorted(unknown)}; expected {sorted(asdict(schedule))}")
    if max_steps >= schedule_steps:
        return schedule
    factor = max_steps / schedule_steps
    values = {k: max(int(floors.get(k, 0)), int(round(v * factor))) for k, v in asdict(schedule).items()}
    values["refine_every"] = max(1, values["refine_every"])
    values["reset_every"] = max(1, values["reset_every"])
    return DensifySchedule(**values)


# ------------------------------------------------------------------------------------------------ surgery
def quat_rotation_matrices(quats: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotations of (N, 4) quaternions ``(w, x, y, z)`` of any non-zero norm (normalised first)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(-1, 3, 3)


def _per_gaussian(value: Any, n: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n


@torch.no_grad()
def _replace_parameters(
    model: GaussianModel,
    optimizer: torch.optim.Optimizer,
    new_value: Callable[[str, torch.Tensor], torch.Tensor],
    new_state: Callable[[str, torch.Tensor], torch.Tensor],
    names: tuple[str, ...] | None = None,
) -> None:
    """Swap the model's Gaussian parameters (all, or ``names``) for ``new_value(name, old)`` and carry their
    optimizer state over: per-Gaussian state tensors become ``new_state(key, old_state)``, the rest is kept."""
    n = len(model)
    where = {id(p): (group, i) for group in optimizer.param_groups for i, p in enumerate(group["params"])}
    for name, old in list(model.named_parameters(recurse=False)):
        if names is not None and name not in names:
            continue
        new = nn.Parameter(new_value(name, old.detach()).contiguous(), requires_grad=old.requires_grad)
        setattr(model, name, new)
        if id(old) not in where:
            continue
        group, i = where[id(old)]
        group["params"][i] = new
        state = optimizer.state.pop(old, None)
        if state is not None:
            optimizer.state[new] = {k: new_state(k, v) if _per_gaussian(v, n) else v for k, v in state.items()}


def _check_mask(model: GaussianModel, mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype != torch.bool or mask.shape != (len(model),):
        raise ValueError(f"mask must be a bool tensor of shape ({len(model)},), got {mask.dtype} "
                         f"{tuple(mask.shape)}")
    return mask.to(model.means.device)


def append(model: GaussianModel, optimizer: torch.optim.Optimizer, values: Mapping[str, torch.Tensor]) -> int:
    """Append ``K`` new Gaussians given by raw parameter values (``values[name]`` of shape ``(K, ...)`` for every
    parameter of the model: ``means``, ``log_scales``, ``quats``, ``opacity_logits``, ``sh0``, ``sh_rest``) after
    the existing ones; their optimizer moments start at zero, the existing parameters and moments are unchanged.
    Returns K. Used by methods that add Gaussians outside the 3DGS densification (e.g. RDG-GS's sampling)."""
    names = [name for name, _ in model.named_parameters(recurse=False)]
    if set(values) != set(names):
        raise ValueError(f"append needs exactly the parameters {sorted(names)}, got {sorted(values)}")
    k = int(values["means"].shape[0])
    for name, p in model.named_parameters(recurse=False):
        if tuple(values[name].shape) != (k, *p.shape[1:]):
            raise ValueError(f"append: {name} must have shape {(k, *p.shape[1:])}, got {tuple(values[name].shape)}")
    if k == 0:
        return 0
    _replace_parameters(model, optimizer, lambda name, p: torch.cat([p, values[name].to(p)]),
                        lambda _, v: torch.cat([v, v.new_zeros((k, *v.shape[1:]))]))
    return k


def duplicate(model: GaussianModel, optimizer: torch.optim.Optimizer, mask: torch.Tensor) -> int:
    """Append an exact copy of every Gaussian in ``mask`` (clones come last, in index order); their optimizer
    moments start at zero. Returns the number of clones."""
    sel = torch.nonzero(_check_mask(model, mask)).squeeze(1)
    _replace_parameters(
        model, optimizer,
        lambda _, p: torch.cat([p, p[sel]]),
        lambda _, v: torch.cat([v, v.new_zeros((len(sel), *v.shape[1:]))]),
    )
    return int(sel.numel())


def split(model: GaussianModel, optimizer: torch.optim.Optimizer, mask: torch.Tensor,
          generator: torch.Generator | None = None) -> int:
    """Replace every Gaussian in ``mask`` by 2 children: means ``mu + R (s * z)``, z ~ N(0, I) (samples of the
    parent's Gaussian), log-scales ``log(s / 1.6)``, everything else copied. Survivors keep their order and
    come first, then all first children, then all second children (each in parent order); children's
    optimizer moments start at zero. Returns the number of split parents."""
    mask = _check_mask(model, mask)
    sel = torch.nonzero(mask).squeeze(1)
    rest = torch.nonzero(~mask).squeeze(1)
    k = int(sel.numel())
    with torch.no_grad():
        scales = model.log_scales[sel].exp()
        rot = quat_rotation_matrices(model.quats[sel])
        draw_on = generator.device if generator is not None else scales.device
        z = torch.randn(2, k, 3, generator=generator, device=draw_on).to(scales.device)
        offsets = torch.einsum("nij,bnj->bni", rot, scales[None] * z)  # (2, k, 3)

    def value(name: str, p: torch.Tensor) -> torch.Tensor:
        if name == "means":
            children = (p[sel][None] + offsets).reshape(-1, 3)
        elif name == "log_scales":
            children = (scales / SPLIT_SCALE_DIVISOR).log().repeat(2, 1)
        else:
            children = p[sel].repeat(2, *([1] * (p.dim() - 1)))
        return torch.cat([p[rest], children])

    _replace_parameters(
        model, optimizer, value,
        lambda _, v: torch.cat([v[rest], v.new_zeros((2 * k, *v.shape[1:]))]),
    )
    return k


def remove(model: GaussianModel, optimizer: torch.optim.Optimizer, mask: torch.Tensor) -> int:
    """Delete the Gaussians in ``mask`` with their optimizer state; the others keep their order."""
    keep = torch.nonzero(~_check_mask(model, mask)).squeeze(1)
    removed = len(model) - int(keep.numel())
    _replace_parameters(model, optimizer, lambda _, p: p[keep], lambda _, v: v[keep])
    return removed


def reset_opacity(model: GaussianModel, optimizer: torch.optim.Optimizer, value: float) -> None:
    """Clamp every opacity to at most ``value`` (in (0, 1)) and zero the opacity optimizer moments."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"the reset opacity must be in (0, 1), got {value}")
    logit = math.log(value / (1.0 - value))
    _replace_parameters(model, optimizer, lambda _, p: p.clamp(max=logit), lambda _, v: torch.zeros_like(v),
                        names=("opacity_logits",))


# ----------------------------------------------------------------------------------------------- strategy
class DefaultDensification:
    """The 3DGS / gsplat default densification strategy with its running statistics (module docstring).

    Args:
        grow_grad2d: mean normalised screen-space gradient above which a Gaussian grows (gsplat 2e-4; use a
            larger value, e.g. 8e-4, with ``absgrad``).
        grow_scale3d: largest scale, as a fraction of the scene extent, up to which a growing Gaussian is
            cloned rather than split (0.01).
        prune_opa: opacity below which a Gaussian is pruned; opacity resets clamp to twice this (0.005).
        prune_scale3d: largest scale, as a fraction of the scene extent, above which a Gaussian is pruned after
            the first opacity reset (0.1).
        refine_every, refine_start, refine_stop, reset_every: the schedule of a ``schedule_steps`` run
            (100, 500, 15 000, 3 000 for 30 000 steps), fitted to the run by :func:`scale_schedule`.
        absgrad: accumulate AbsGS absolute gradients (render with ``absgrad=True``).
        schedule_steps: the run length the schedule values are written for.
        min_schedule: floors of the scaled schedule values (keys of :class:`DensifySchedule`).

    Invariants: after :meth:`configure`, ``grad2d`` and ``count`` have one entry per Gaussian of the model
    passed to :meth:`step_post_backward`; the ``num_*`` counters total the surgery done so far. Everything
    that changes during a run is in :meth:`state_dict`, so a resumed run repeats an uninterrupted one.
    """

    def __init__(
        self,
        grow_grad2d: float = 2e-4,
        grow_scale3d: float = 0.01,
        prune_opa: float = 0.005,
        prune_scale3d: float = 0.1,
        refine_every: int = 100,
        refine_start: int = 500,
        refine_stop: int = 15_000,
        reset_every: int = 3_000,
        absgrad: bool = False,
        schedule_steps: int = 30_000,
        min_schedule: Mapping[str, int] | None = None,
    ) -> None:
        if not (grow_grad2d > 0 and grow_scale3d > 0 and prune_scale3d > 0 and 0 < prune_opa < 0.5):
            raise ValueError("grow_grad2d, grow_scale3d and prune_scale3d must be > 0 and prune_opa in (0, 0.5), "
                             f"got {grow_grad2d}, {grow_scale3d}, {prune_scale3d}, {prune_opa}")
        if not isinstance(absgrad, bool):
            raise ValueError(f"absgrad must be a bool, got {absgrad!r}")
        self.grow_grad2d, self.grow_scale3d = float(grow_grad2d), float(grow_scale3d)
        self.prune_opa, self.prune_scale3d = float(prune_opa), float(prune_scale3d)
        self.absgrad = absgrad
        self.base_schedule = DensifySchedule(int(refine_every), int(refine_start), int(refine_stop), int(reset_every))
        self.schedule_steps = int(schedule_steps)
        self.min_schedule = dict(min_schedule or {})
        scale_schedule(self.base_schedule, 0, self.schedule_steps, self.min_schedule)  # validates the floors
        self.schedule = self.base_schedule
        self.scene_extent = 1.0
        self.grad2d = torch.zeros(0)
        self.count = torch.zeros(0)
        self.num_cloned = self.num_split = self.num_pruned = self.num_resets = self.num_refines = 0

    @property
    def reset_value(self) -> float:
        return 2.0 * self.prune_opa

    def configure(self, num_gaussians: int, max_steps: int, scene_extent: float,
                  device: torch.device | str = "cpu") -> None:
        """Fit the schedule to a ``max_steps`` run and start empty statistics for ``num_gaussians``."""
        self.schedule = scale_schedule(self.base_schedule, max_steps, self.schedule_steps, self.min_schedule)
        self.scene_extent = float(scene_extent)
        self.grad2d = torch.zeros(num_gaussians, device=device)
        self.count = torch.zeros(num_gaussians, device=device)
        self.num_cloned = self.num_split = self.num_pruned = self.num_resets = self.num_refines = 0

    # ------------------------------------------------------------------------------------------ hooks
    def step_pre_backward(self, meta: Mapping[str, Any]) -> None:
        """Keep the screen-space mean gradient of this render (call between render and backward)."""
        meta["means2d"].retain_grad()

    def step_post_backward(self, model: GaussianModel, optimizer: torch.optim.Optimizer, step: int,
                           meta: Mapping[str, Any]) -> dict[str, int]:
        """Statistics, refinement and opacity reset for optimisation step ``step`` (after its optimizer
        update). Returns this step's ``cloned``, ``split``, ``pruned`` counts and ``reset`` (0 or 1)."""
        done = {"cloned": 0, "split": 0, "pruned": 0, "reset": 0}
        if step >= self.schedule.refine_stop:
            return done
        self.update_statistics(meta, len(model))
        if self.schedule.is_refine_step(step):
            done.update(self.refine(model, optimizer, step))
        if self.schedule.is_reset_step(step):
            reset_opacity(model, optimizer, self.reset_value)
            self.num_resets += 1
            done["reset"] = 1
        return done

    def extend(self, count: int) -> None:
        """Start zero statistics for ``count`` Gaussians appended after the existing ones outside :meth:`refine`
        (e.g. by :func:`append`), keeping the invariant of one entry per Gaussian."""
        if int(count) < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self.grad2d = torch.cat([self.grad2d, self.grad2d.new_zeros(int(count))])
        self.count = torch.cat([self.count, self.count.new_zeros(int(count))])

    @torch.no_grad()
    def update_statistics(self, meta: Mapping[str, Any], num_gaussians: int) -> None:
        """Add this render's normalised screen-space gradient norms of the visible Gaussians (module docstring)."""
        means2d = meta["means2d"]
        grads = getattr(means2d, "absgrad", None) if self.absgrad else means2d.grad
        if grads is None:
            raise RuntimeError("no screen-space gradient: call step_pre_backward before backward"
                               + (" and render with absgrad=True" if self.absgrad else ""))
        if self.grad2d.shape != (num_gaussians,):
            raise RuntimeError(f"densification statistics hold {self.grad2d.shape[0]} Gaussians, the model "
                               f"{num_gaussians}; call configure() after building the model")
        cams = int(meta["n_cameras"])
        scale = torch.tensor([meta["width"] / 2.0 * cams, meta["height"] / 2.0 * cams], device=grads.device)
        visible = (meta["radii"] > 0).all(dim=-1)  # (C, N)
        ids = torch.nonzero(visible)[:, 1]
        norms = (grads.detach()[visible] * scale).norm(dim=-1)
        self.grad2d.index_add_(0, ids, norms.to(self.grad2d))
        self.count.index_add_(0, ids, torch.ones_like(norms, dtype=self.count.dtype))

    @torch.no_grad()
    def refine(self, model: GaussianModel, optimizer: torch.optim.Optimizer, step: int) -> dict[str, int]:
        """Clone, split, then prune (module docstring); the statistics restart at zero."""
        high = self.grad2d / self.count.clamp_min(1.0) > self.grow_grad2d
        small = model.log_scales.exp().amax(dim=-1) <= self.grow_scale3d * self.scene_extent
        n_clone = duplicate(model, optimizer, high & small) if bool((high & small).any()) else 0
        to_split = torch.cat([high & ~small, torch.zeros(n_clone, dtype=torch.bool, device=high.device)])
        n_split = split(model, optimizer, to_split) if bool(to_split.any()) else 0
        prune = model.opacities < self.prune_opa
        if step > self.schedule.reset_every:
            prune |= model.log_scales.exp().amax(dim=-1) > self.prune_scale3d * self.scene_extent
        n_prune = remove(model, optimizer, prune) if bool(prune.any()) else 0
        self.grad2d = torch.zeros(len(model), device=self.grad2d.device)
        self.count = torch.zeros(len(model), device=self.count.device)
        self.num_cloned += n_clone
        self.num_split += n_split
        self.num_pruned += n_prune
        self.num_refines += 1
        return {"cloned": n_clone, "split": n_split, "pruned": n_prune}

    # ------------------------------------------------------------------------------------------- state
    def summary(self) -> dict[str, Any]:
        """Totals so far and the schedule in use."""
        return {"cloned": self.num_cloned, "split": self.num_split, "pruned": self.num_pruned,
                "refinements": self.num_refines, "opacity_resets": self.num_resets, "absgrad": self.absgrad,
                "schedule": asdict(self.schedule)}

    def state_dict(self) -> dict[str, Any]:
        return {"grad2d": self.grad2d.detach().clone(), "count": self.count.detach().clone(),
                "num_cloned": self.num_cloned, "num_split": self.num_split, "num_pruned": self.num_pruned,
                "num_resets": self.num_resets, "num_refines": self.num_refines, "scene_extent": self.scene_extent,
                "schedule": asdict(self.schedule)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (statistics keep the device they are configured on)."""
        grad2d, count = state["grad2d"], state["count"]
        if grad2d.dim() != 1 or grad2d.shape != count.shape:
            raise ValueError(f"densification statistics must be two (N,) tensors, got {tuple(grad2d.shape)} and "
                             f"{tuple(count.shape)}")
        device = self.grad2d.device
        self.grad2d, self.count = grad2d.float().to(device).clone(), count.float().to(device).clone()
        self.num_cloned, self.num_split = int(state["num_cloned"]), int(state["num_split"])
        self.num_pruned, self.num_resets = int(state["num_pruned"]), int(state["num_resets"])
        self.num_refines = int(state["num_refines"])
        self.scene_extent = float(state["scene_extent"])
        self.schedule = DensifySchedule(**{k: int(v) for k, v in state["schedule"].items()})
