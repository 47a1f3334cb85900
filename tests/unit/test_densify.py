"""Densification (3DGS adaptive density control, gsplat's default strategy) on constructed cases.

Oracles: hand-computed statistics, masks and counts on a 6-Gaussian model with chosen gradients, scales and
opacities; the split children's means re-derived from the same random draws; Adam moments indexed by hand;
the sample covariance of many split children against the parent's covariance; a state round trip.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from sparse3d.datasets.spare import load_spare_scene
from sparse3d.datasets.synth.spare_scenes import generate_spare_scenes
from sparse3d.models.splatting.densify import (
    DefaultDensification,
    DensifySchedule,
    append,
    duplicate,
    quat_rotation_matrices,
    remove,
    reset_opacity,
    scale_schedule,
    split,
)
from sparse3d.models.splatting.gaussians import GaussianModel, make_adam
from sparse3d.models.splatting.gs3d import GaussianSplatting

W, H = 100, 50  # screen-space gradients are scaled by (W / 2, H / 2) = (50, 25)
PARAM_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh0", "sh_rest")


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _model() -> GaussianModel:
    """6 Gaussians: 0 small, 1 large (rotated, anisotropic), 2 small, 3 large and nearly transparent, 4 small,
    5 large (rotated); scene extent 1, so "small" means a largest scale <= grow_scale3d = 0.01."""
    torch.manual_seed(0)
    scales = torch.tensor([[0.005, 0.004, 0.003], [0.05, 0.02, 0.01], [0.002] * 3, [0.2, 0.2, 0.2],
                           [0.01, 0.001, 0.001], [0.03, 0.06, 0.02]])
    quats = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.3, -0.2, 0.1], [1.0, 0, 0, 0], [1.0, 0, 0, 0],
                          [0.5, 0.5, 0.5, 0.5], [0.2, -0.7, 0.4, 0.5]])
    opacity = torch.tensor([_logit(p) for p in (0.5, 0.8, 0.3, 0.001, 0.6, 0.9)])
    return GaussianModel(torch.randn(6, 3), scales.log(), quats, opacity, torch.randn(6, 1, 3),
                         torch.randn(6, 3, 3))


def _meta(grad: torch.Tensor, radii: torch.Tensor, absgrad: torch.Tensor | None = None) -> dict:
    """A rasterizer meta of one camera whose means2d carries the given gradient (pixel units)."""
    means2d = torch.zeros(1, grad.shape[0], 2, requires_grad=True)
    means2d.grad = grad[None].clone()
    if absgrad is not None:
        means2d.absgrad = absgrad[None].clone()
    return {"means2d": means2d, "radii": radii[None], "width": W, "height": H, "n_cameras": 1}


def _pixel_grad(normalised: list[float]) -> torch.Tensor:
    """Pixel-space gradients whose normalised norm is the given value (all along x: divide by W / 2)."""
    return torch.tensor([[v / (W / 2), 0.0] for v in normalised])


VISIBLE = torch.full((6, 2), 3, dtype=torch.int32)


def _with_adam_moments(model: GaussianModel) -> torch.optim.Adam:
    """Adam after one step on a loss touching every parameter, so every moment is non-zero."""
    optimizer = make_adam(model)
    loss = sum((p * torch.linspace(1, 2, p.numel()).reshape(p.shape)).sum() for p in model.parameters())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def _strategy(**kwargs) -> DefaultDensification:
    strategy = DefaultDensification(**kwargs)
    strategy.configure(6, max_steps=30_000, scene_extent=1.0)
    return strategy


def _accumulate(strategy: DefaultDensification) -> None:
    """Two steps of statistics. Normalised norms (step A, step B), '-' = invisible:
    0: 5e-4, 3e-4 -> 4e-4 high | 1: 3e-4, 3e-4 high | 2: 1e-4, 1e-4 low | 3: 1e-4, - low
    4: 3e-4, - (huge but invisible) -> 3e-4 high (averaging over 2 steps would give 1.5e-4) | 5: 1e-4, 4e-4 -> 2.5e-4."""
    strategy.update_statistics(_meta(_pixel_grad([5e-4, 3e-4, 1e-4, 1e-4, 3e-4, 1e-4]), VISIBLE), 6)
    radii_b = VISIBLE.clone()
    radii_b[3] = 0
    radii_b[4, 1] = 0  # one zero radius is enough to count as culled
    strategy.update_statistics(_meta(_pixel_grad([3e-4, 3e-4, 1e-4, 50.0, 50.0, 4e-4]), radii_b), 6)


# ------------------------------------------------------------------------------------------- statistics
def test_statistics_normalise_by_half_the_image_size_and_average_over_visible_steps() -> None:
    strategy = _strategy()
    _accumulate(strategy)
    torch.testing.assert_close(strategy.count, torch.tensor([2.0, 2, 2, 1, 1, 2]))
    expected_mean = torch.tensor([4e-4, 3e-4, 1e-4, 1e-4, 3e-4, 2.5e-4])
    torch.testing.assert_close(strategy.grad2d / strategy.count, expected_mean)
    # y is scaled by H / 2 and both components enter the norm: (3, 4) pixel gradient -> norm of (150, 100)
    strategy = _strategy()
    grad = torch.zeros(6, 2)
    grad[0] = torch.tensor([3.0, 4.0])
    strategy.update_statistics(_meta(grad, VISIBLE), 6)
    assert float(strategy.grad2d[0]) == pytest.approx(math.hypot(3 * W / 2, 4 * H / 2), rel=1e-6)


def test_absgrad_switch_reads_the_absolute_gradient() -> None:
    grad = _pixel_grad([1e-4] * 6)  # signed sum: small, below the threshold
    absolute = _pixel_grad([9e-4] * 6)  # per-pixel absolute sum: large
    plain, absgs = _strategy(), _strategy(absgrad=True, grow_grad2d=8e-4)
    plain.update_statistics(_meta(grad, VISIBLE, absolute), 6)
    absgs.update_statistics(_meta(grad, VISIBLE, absolute), 6)
    torch.testing.assert_close(plain.grad2d, torch.full((6,), 1e-4))
    torch.testing.assert_close(absgs.grad2d, torch.full((6,), 9e-4))
    with pytest.raises(RuntimeError, match="absgrad=True"):
        absgs.update_statistics(_meta(grad, VISIBLE), 6)


def test_absgrad_statistics_from_a_real_render_backward() -> None:
    """Through the rasterizer: the statistic is the scaled norm of means2d.absgrad (>= that of the grad)."""
    from sparse3d.cameras import Cameras

    model = GaussianModel.from_points(torch.randn(40, 3) * 0.3 + torch.tensor([0.0, 0.0, 3.0]), sh_degree=0,
                                      opacity=0.5)
    K = torch.tensor([[[60.0, 0, W / 2], [0, 60.0, H / 2], [0, 0, 1]]])
    camera = Cameras(K=K, viewmat=torch.eye(4)[None], width=W, height=H)
    stats = {}
    for absgrad in (False, True):
        meta: dict = {}
        colors, _ = model.render(camera, absgrad=absgrad, meta=meta)
        strategy = _strategy(absgrad=absgrad)
        strategy.configure(len(model), 30_000, 1.0)
        strategy.step_pre_backward(meta)
        ((colors - 0.3) ** 2).mean().backward()
        strategy.update_statistics(meta, len(model))
        visible = (meta["radii"][0] > 0).all(-1)
        assert bool(visible.any())
        source = meta["means2d"].absgrad if absgrad else meta["means2d"].grad
        expected = (source[0] * torch.tensor([W / 2, H / 2])).norm(dim=-1) * visible
        torch.testing.assert_close(strategy.grad2d, expected)
        stats[absgrad] = strategy.grad2d
    assert bool((stats[True] >= stats[False] * (1 - 1e-5)).all()) and float(stats[True].sum()) > float(stats[False].sum())


# ------------------------------------------------------------------------------------------- refinement
def test_refine_clones_small_splits_large_prunes_transparent() -> None:
    model = _model()
    optimizer = _with_adam_moments(model)
    before = {name: getattr(model, name).detach().clone() for name in PARAM_NAMES}
    moments = {g["name"]: {k: v.clone() for k, v in optimizer.state[g["params"][0]].items()}
               for g in optimizer.param_groups}
    strategy = _strategy()
    _accumulate(strategy)
    torch.manual_seed(7)
    done = strategy.refine(model, optimizer, step=600)
    torch.manual_seed(7)
    z = torch.randn(2, 2, 3)  # the split's draws: (child, parent in index order [1, 5], xyz)

    assert done == {"cloned": 2, "split": 2, "pruned": 1}
    assert len(model) == 6 + 2 + 2 - 1
    # order: survivors [0, 2, 4], clones of [0, 4], first children of [1, 5], second children of [1, 5]
    origin = [0, 2, 4, 0, 4, 1, 5, 1, 5]
    for name in ("quats", "opacity_logits", "sh0", "sh_rest"):
        torch.testing.assert_close(getattr(model, name).detach(), before[name][origin], rtol=0, atol=0)
    torch.testing.assert_close(model.means.detach()[:5], before["means"][[0, 2, 4, 0, 4]], rtol=0, atol=0)
    torch.testing.assert_close(model.log_scales.detach()[:5], before["log_scales"][[0, 2, 4, 0, 4]], rtol=0, atol=0)
    parents = torch.tensor([1, 5])
    scales = before["log_scales"][parents].exp()
    torch.testing.assert_close(model.log_scales.detach()[5:], (scales / 1.6).log().repeat(2, 1))
    rot = quat_rotation_matrices(before["quats"][parents])
    expected_means = before["means"][parents][None] + torch.einsum("nij,bnj->bni", rot, scales[None] * z)
    torch.testing.assert_close(model.means.detach()[5:], expected_means.reshape(-1, 3))
    # children lie within their parent's Gaussian: Mahalanobis distance |z| of a 3-D standard normal draw
    offsets = (model.means.detach()[5:] - before["means"][parents].repeat(2, 1)).reshape(2, 2, 3)
    local = torch.einsum("nji,bnj->bni", rot, offsets) / scales[None]
    torch.testing.assert_close(local, z)
    assert float(local.norm(dim=-1).max()) < 5.0

    # Adam: every group follows; survivors keep their moments, clones and children start at zero
    for group in optimizer.param_groups:
        (param,) = group["params"]
        assert any(param is p for p in model.parameters())
        state = optimizer.state[param]
        old = moments[group["name"]]
        assert float(state["step"]) == float(old["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[key].shape == param.shape
            torch.testing.assert_close(state[key][:3], old[key][[0, 2, 4]], rtol=0, atol=0)
            assert not bool(state[key][3:].any())
    assert len(optimizer.state) == len(PARAM_NAMES)
    assert not bool(strategy.grad2d.any()) and strategy.grad2d.shape == (9,) and strategy.count.shape == (9,)
    # the replaced parameters train: one more step moves them
    loss = model.means.sum() + model.opacity_logits.sum()
    loss.backward()
    means = model.means.detach().clone()
    optimizer.step()
    assert not torch.equal(means, model.means.detach())


def test_scale_pruning_starts_after_the_first_opacity_reset() -> None:
    for step, expected_pruned in ((3000, 1), (3100, 2)):  # Gaussian 3 (0.2 > 0.1 extent) goes after step 3000
        model = _model()
        model.opacity_logits.data[3] = _logit(0.5)
        model.opacity_logits.data[0] = _logit(0.001)
        strategy = _strategy()
        done = strategy.refine(model, make_adam(model), step=step)  # no statistics: nothing grows
        assert done == {"cloned": 0, "split": 0, "pruned": expected_pruned}
        assert len(model) == 6 - expected_pruned


def test_split_children_sample_the_parent_covariance() -> None:
    n = 4000
    parent = _model()
    keep = 5
    model = GaussianModel(parent.means.detach()[keep].repeat(n, 1), parent.log_scales.detach()[keep].repeat(n, 1),
                          parent.quats.detach()[keep].repeat(n, 1), parent.opacity_logits.detach()[keep].repeat(n),
                          parent.sh0.detach()[keep].repeat(n, 1, 1), parent.sh_rest.detach()[keep].repeat(n, 1, 1))
    optimizer = make_adam(model)
    generator = torch.Generator().manual_seed(3)
    assert split(model, optimizer, torch.ones(n, dtype=torch.bool), generator) == n
    offsets = model.means.detach().double() - parent.means.detach()[keep].double()
    rot = quat_rotation_matrices(parent.quats.detach()[keep][None])[0].double()
    scales = parent.log_scales.detach()[keep].exp().double()
    covariance = rot @ torch.diag(scales**2) @ rot.T
    sample = offsets.T @ offsets / offsets.shape[0]
    assert float((sample - covariance).abs().max()) < 0.08 * float(scales.max() ** 2)
    assert len(model) == 2 * n and all(optimizer.state.get(p) is None for p in model.parameters())


def test_surgery_ops_keep_every_group_consistent() -> None:
    model = _model()
    optimizer = _with_adam_moments(model)
    mask = torch.tensor([True, False, True, False, False, False])
    assert duplicate(model, optimizer, mask) == 2 and len(model) == 8
    assert remove(model, optimizer, torch.tensor([False] * 7 + [True])) == 1 and len(model) == 7
    for group in optimizer.param_groups:
        (param,) = group["params"]
        for key in ("exp_avg", "exp_avg_sq"):
            assert optimizer.state[param][key].shape == param.shape
    with pytest.raises(ValueError, match="mask"):
        remove(model, optimizer, torch.ones(3, dtype=torch.bool))


def test_append_adds_gaussians_with_zero_moments_and_keeps_the_rest() -> None:
    model = _model()
    optimizer = _with_adam_moments(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters(recurse=False)}
    moments = {name: optimizer.state[p]["exp_avg"].clone() for name, p in model.named_parameters(recurse=False)}
    new = {name: torch.randn(2, *p.shape[1:]) for name, p in model.named_parameters(recurse=False)}
    assert append(model, optimizer, new) == 2 and len(model) == 8
    for name, p in model.named_parameters(recurse=False):
        torch.testing.assert_close(p.detach(), torch.cat([before[name], new[name]]))
        state = optimizer.state[p]
        torch.testing.assert_close(state["exp_avg"], torch.cat([moments[name], torch.zeros_like(new[name])]))
        assert state["exp_avg_sq"].shape == p.shape and not bool(state["exp_avg_sq"][6:].any())
        assert any(p is q for group in optimizer.param_groups for q in group["params"])
    strategy = DefaultDensification()
    strategy.configure(6, 1000, 1.0)
    strategy.grad2d += 1.0
    strategy.extend(2)
    assert strategy.grad2d.tolist() == [1.0] * 6 + [0.0] * 2 and strategy.count.shape == (8,)
    with pytest.raises(ValueError, match="exactly the parameters"):
        append(model, optimizer, {"means": torch.zeros(1, 3)})
    with pytest.raises(ValueError, match="shape"):
        append(model, optimizer, {**new, "sh0": torch.zeros(2, 3)})


def test_opacity_reset_clamps_to_twice_prune_opa_and_zeroes_its_moments() -> None:
    model = _model()
    optimizer = _with_adam_moments(model)
    other = {g["name"]: optimizer.state[g["params"][0]]["exp_avg"].clone() for g in optimizer.param_groups}
    strategy = _strategy(prune_opa=0.005)
    assert strategy.reset_value == pytest.approx(0.01)
    expected = model.opacities.detach().clamp(max=0.01)  # 0.001 (after one Adam step) stays, the rest 0.01
    assert int((expected < 0.01).sum()) == 1
    reset_opacity(model, optimizer, strategy.reset_value)
    torch.testing.assert_close(model.opacities.detach(), expected)
    for group in optimizer.param_groups:
        state = optimizer.state[group["params"][0]]
        if group["name"] == "opacities":
            assert not bool(state["exp_avg"].any()) and not bool(state["exp_avg_sq"].any())
        else:
            torch.testing.assert_close(state["exp_avg"], other[group["name"]], rtol=0, atol=0)


def test_schedule_decides_refine_and_reset_steps() -> None:
    schedule = DensifySchedule(refine_every=10, refine_start=20, refine_stop=100, reset_every=30)
    refine = [s for s in range(150) if schedule.is_refine_step(s)]
    reset = [s for s in range(150) if schedule.is_reset_step(s)]
    assert refine == [30, 40, 50, 60, 70, 80, 90] and reset == [30, 60, 90]
    strategy = DefaultDensification(refine_every=10, refine_start=20, refine_stop=100, reset_every=30,
                                    schedule_steps=100)
    model = _model()
    optimizer = make_adam(model)
    strategy.configure(len(model), max_steps=100, scene_extent=1.0)
    events = {s: strategy.step_post_backward(model, optimizer, s, _meta(_pixel_grad([0.0] * len(model)),
                                                                         torch.full((len(model), 2), 3)))
              for s in (29, 30, 100)}
    assert events[29] == {"cloned": 0, "split": 0, "pruned": 0, "reset": 0}
    assert events[30] == {"cloned": 0, "split": 0, "pruned": 1, "reset": 1}  # Gaussian 3 (opacity 0.001) goes
    assert events[100]["reset"] == 0 and strategy.num_resets == 1 and strategy.num_refines == 1
    assert float(model.opacities.max()) == pytest.approx(0.01)


def test_schedule_scales_to_short_runs_with_floors() -> None:
    gsplat = DensifySchedule()
    assert asdict(gsplat) == {"refine_every": 100, "refine_start": 500, "refine_stop": 15_000, "reset_every": 3000}
    assert scale_schedule(gsplat, 30_000, 30_000) == gsplat and scale_schedule(gsplat, 60_000, 30_000) == gsplat
    assert scale_schedule(gsplat, 3000, 30_000) == DensifySchedule(10, 50, 1500, 300)
    floors = {"refine_every": 25, "refine_start": 50, "reset_every": 100}
    assert scale_schedule(gsplat, 300, 30_000, floors) == DensifySchedule(25, 50, 150, 100)
    assert scale_schedule(gsplat, 30, 30_000) == DensifySchedule(1, 0, 15, 3)
    with pytest.raises(ValueError, match="min_schedule"):
        scale_schedule(gsplat, 300, 30_000, {"refine_evry": 3})
    with pytest.raises(ValueError, match="refine_every"):
        DensifySchedule(refine_every=0)


# ------------------------------------------------------------------------------------------------ state
def test_strategy_state_round_trips() -> None:
    strategy = _strategy(min_schedule={"refine_every": 7})
    strategy.configure(6, max_steps=300, scene_extent=2.5)
    _accumulate(strategy)
    model = _model()
    strategy.refine(model, make_adam(model), step=600)
    strategy.update_statistics(_meta(_pixel_grad([2e-4] * len(model)), torch.full((len(model), 2), 3)), len(model))
    state = strategy.state_dict()
    restored = DefaultDensification()
    restored.configure(1, max_steps=30_000, scene_extent=1.0)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.grad2d, strategy.grad2d, rtol=0, atol=0)
    torch.testing.assert_close(restored.count, strategy.count, rtol=0, atol=0)
    assert restored.summary() == strategy.summary() and restored.scene_extent == 2.5
    assert restored.schedule == DensifySchedule(7, 5, 150, 30)
    state["grad2d"].fill_(1.0)  # the restored statistics are a copy
    assert not bool((restored.grad2d == 1.0).all())


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory: pytest.TempPathFactory):
    root = generate_spare_scenes(tmp_path_factory.mktemp("spare") / "d", num_scenes=1, width=32, height=24,
                                 lightings=[3], naming="Synthetic", progress=False)
    return load_spare_scene(Path(root), "Track1_split_development.json")


def test_method_resumes_a_densifying_run_exactly(tiny_scene) -> None:
    """Save the method mid-run (statistics half-accumulated, Gaussians already refined), restore it into a
    fresh method with the same RNG state: the next steps, refinement and reset included, are identical."""
    densify = {"refine_every": 4, "refine_start": 4, "refine_stop": 30, "reset_every": 12, "schedule_steps": 30,
               "grow_grad2d": 1e-4}

    def fresh() -> GaussianSplatting:
        method = GaussianSplatting(num_points=300, densify=densify, sh_increase_every=5)
        method.setup(tiny_scene.inputs, 30)
        return method

    torch.manual_seed(0)
    a = fresh()
    for step in range(10):
        a.training_step(step)
    buffer = io.BytesIO()  # through bytes, as a checkpoint: optimizer.state_dict() shares the live moments
    torch.save(a.state_dict(), buffer)
    rng = torch.get_rng_state()
    assert a.strategy is not None and a.strategy.num_refines == 1 and bool(a.strategy.count.any())
    for step in range(10, 20):
        a.training_step(step)
    b = fresh()
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    torch.set_rng_state(rng)
    for step in range(10, 20):
        b.training_step(step)
    assert a.strategy.num_refines == 3 and a.strategy.num_resets == 1 and len(a.model) != 300
    assert len(a.model) == len(b.model) and a.strategy.summary() == b.strategy.summary()
    for name in PARAM_NAMES:
        torch.testing.assert_close(getattr(b.model, name), getattr(a.model, name), rtol=0, atol=0)
    torch.testing.assert_close(b.strategy.grad2d, a.strategy.grad2d, rtol=0, atol=0)
    assert a.summary()["num_gaussians"] == len(a.model) and a.summary()["densify"]["refinements"] == 3


def test_method_validates_densify_options_up_front() -> None:
    with pytest.raises(TypeError, match="grow_grad"):
        GaussianSplatting(densify={"grow_grad": 1e-3})
    with pytest.raises(ValueError, match="prune_opa"):
        GaussianSplatting(densify={"prune_opa": 0.7})
