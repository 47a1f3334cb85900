"""RDG-GS pieces on constructed cases: the relative depth loss (zero on identical structure, a hand-computed value,
scale/shift invariance, gradient), the refined depth prior (alignment to points, consistency, hole filling) and
adaptive sampling (which pixels, where the new Gaussians land, optimizer state of the appended ones).

Oracles: analytic values worked out by hand in the comments, exact projections with :meth:`Cameras.project`,
and the untouched parameters / Adam moments of the existing Gaussians.
"""

from __future__ import annotations

import math

import pytest
import torch

from sparse3d.cameras import Cameras
from sparse3d.models.splatting.depth_priors import DepthPriorMaps
from sparse3d.models.splatting.gaussians import GaussianModel, make_adam
from sparse3d.models.splatting.rdggs import (
    append_gaussians,
    backproject_pixels,
    refine_depth_prior,
    relative_depth_loss,
    select_error_pixels,
)
from sparse3d.views import PosedImages, ScenePoints


def _cameras(n: int = 1, width: int = 16, height: int = 12, baseline: float = 0.2) -> Cameras:
    """``n`` cameras along x looking down +z (OpenCV), focal 20 px, principal point at the image centre."""
    K = torch.tensor([[20.0, 0.0, width / 2], [0.0, 20.0, height / 2], [0.0, 0.0, 1.0]]).repeat(n, 1, 1)
    vm = torch.eye(4).repeat(n, 1, 1)
    vm[:, 0, 3] = -baseline * torch.arange(n, dtype=torch.float32)  # centre at x = baseline * i
    return Cameras(K=K, viewmat=vm, width=width, height=height)


# -------------------------------------------------------------------------------------- relative depth loss
def test_identical_structure_gives_zero_loss_whatever_the_scale_and_shift() -> None:
    torch.manual_seed(0)
    prior = torch.rand(16, 24) + 1.0
    depth = 3.0 * prior + 0.7  # same relative structure, other scale and shift
    loss = relative_depth_loss(depth, prior, patch_size=8, flat_eps=0.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_analytic_value_on_a_two_by_two_patch() -> None:
    # depth patch [[0, 0], [1, 1]] standardises to (-1, -1, 1, 1); prior [[0, 1], [0, 1]] to (-1, 1, -1, 1).
    # Similarity exp(-(a - b)^2 / 2) is 1 for equal values and e^-2 for a difference of 2. The two similarity
    # matrices differ (by 1 - e^-2) on 8 of the 16 ordered pairs: {01, 02, 13, 23} both ways.
    depth = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    prior = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    loss = relative_depth_loss(depth, prior, patch_size=2, sigma=1.0, flat_eps=0.0)
    assert float(loss) == pytest.approx(0.5 * (1.0 - math.exp(-2.0)), rel=1e-6)
    # The image variant (image_weight 1: the target is the colour similarity I alone, image_sigma 0.5): colours
    # black, black, blue, red -> I = 1 on the diagonal and pair 01, exp(-1 / 0.5) = e^-2 between black and a
    # colour (02, 03, 12, 13) and exp(-2 / 0.5) = e^-4 for blue-red (23). D = 1 on the diagonal, 01 and 23,
    # e^-2 elsewhere: they differ on pair 23 only (2 of 16 ordered pairs), by 1 - e^-4.
    image = torch.tensor([[[0.0] * 3, [0.0] * 3], [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
    loss_img = relative_depth_loss(depth, None, image, patch_size=2, sigma=1.0, image_weight=1.0, image_sigma=0.5,
                                   flat_eps=0.0)
    assert float(loss_img) == pytest.approx(2.0 / 16.0 * (1.0 - math.exp(-4.0)), rel=1e-6)


def test_loss_is_scale_invariant_and_shift_invariant_above_the_floor() -> None:
    torch.manual_seed(1)
    depth, prior = torch.rand(2, 16, 16) + 0.5, torch.rand(2, 16, 16) + 0.5
    weight = torch.rand(2, 16, 16)
    base = relative_depth_loss(depth, prior, weight=weight, patch_size=4)
    assert float(base) > 0.05
    scaled = relative_depth_loss(5.0 * depth, 0.2 * prior, weight=weight, patch_size=4)
    assert float(scaled) == pytest.approx(float(base), rel=1e-5)
    no_floor = relative_depth_loss(depth, prior, weight=weight, patch_size=4, flat_eps=0.0)
    shifted = relative_depth_loss(depth + 10.0, prior - 0.3, weight=weight, patch_size=4, flat_eps=0.0)
    assert float(shifted) == pytest.approx(float(no_floor), rel=1e-4)


def test_zero_weight_pixels_do_not_count_and_the_gradient_reaches_depth() -> None:
    depth = torch.tensor([[0.0, 0.0], [1.0, 1.0]], requires_grad=True)
    prior = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert relative_depth_loss(depth, prior, weight=torch.zeros(2, 2), patch_size=2).item() == 0.0
    torch.manual_seed(2)
    noisy = (torch.rand(8, 8) + 1.0).requires_grad_(True)
    loss = relative_depth_loss(noisy, torch.rand(8, 8) + 1.0, patch_size=4)
    loss.backward()
    assert noisy.grad is not None and bool(noisy.grad.abs().sum() > 0)
    # The weights only select pixels: a zero-weight pixel neither counts nor receives a gradient.
    weight = torch.ones(8, 8)
    weight[0, 0] = 0.0
    noisy.grad = None
    relative_depth_loss(noisy, torch.rand(8, 8) + 1.0, weight=weight, patch_size=4).backward()
    assert noisy.grad is not None and noisy.grad[0, 0].item() == 0.0
    with pytest.raises(ValueError, match="guide"):
        relative_depth_loss(depth, prior[:1], patch_size=2)
    with pytest.raises(ValueError, match="patch_size"):
        relative_depth_loss(depth, prior, patch_size=4)


# -------------------------------------------------------------------------------------- refined depth prior
def test_prior_is_aligned_to_sparse_points() -> None:
    cams = _cameras(1)
    true_depth = (1.5 + 0.05 * torch.arange(16.0)).expand(1, 12, 16).clone()  # depth grows to the right
    raw = DepthPriorMaps(values=(true_depth - 0.4) / 2.0, confidence=torch.ones(1, 12, 16), kind="depth")
    # Sparse points at the true depth of every other pixel: the fit must find z = 2 * prior + 0.4.
    ij = torch.stack(torch.meshgrid(torch.arange(0, 12, 2), torch.arange(0, 16, 2), indexing="ij"), -1).reshape(-1, 2)
    uv = torch.stack([ij[:, 1].double() + 0.5, ij[:, 0].double() + 0.5], -1)
    pts = backproject_pixels(cams, 0, uv, true_depth[0, ij[:, 0], ij[:, 1]])
    views = PosedImages(images=torch.full((1, 12, 16, 3), 0.5), cameras=cams)
    refined = refine_depth_prior(raw, views, ScenePoints(pts, torch.full_like(pts, 0.5)), consistency_tau=0.0,
                                 iterations=0)
    assert refined.aligned_views == 1
    torch.testing.assert_close(refined.scale_shift[0], torch.tensor([2.0, 0.4]), atol=1e-4, rtol=0)
    torch.testing.assert_close(refined.depth, true_depth, atol=1e-4, rtol=0)


def test_relative_disparity_prior_is_aligned_in_inverse_depth() -> None:
    cams = _cameras(1)
    true_depth = (1.5 + 0.05 * torch.arange(16.0)).expand(1, 12, 16).clone()
    disparity = (1.0 / true_depth - 0.1) / 0.5  # 1 / z = 0.5 * disparity + 0.1
    ij = torch.stack(torch.meshgrid(torch.arange(0, 12, 2), torch.arange(0, 16, 2), indexing="ij"), -1).reshape(-1, 2)
    uv = torch.stack([ij[:, 1].double() + 0.5, ij[:, 0].double() + 0.5], -1)
    pts = backproject_pixels(cams, 0, uv, true_depth[0, ij[:, 0], ij[:, 1]])
    views = PosedImages(images=torch.full((1, 12, 16, 3), 0.5), cameras=cams)
    refined = refine_depth_prior(DepthPriorMaps(disparity, torch.ones(1, 12, 16), "relative_disparity"), views,
                                 ScenePoints(pts, torch.full_like(pts, 0.5)), consistency_tau=0.0, iterations=0)
    torch.testing.assert_close(refined.scale_shift[0], torch.tensor([0.5, 0.1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(refined.depth, true_depth, atol=1e-3, rtol=0)


def test_image_guided_refinement_fills_holes_within_a_colour_region_only() -> None:
    # Left half grey at depth 2, right half white at depth 3; a hole (confidence 0) on each side of the edge.
    depth = torch.full((1, 12, 16), 2.0)
    depth[..., 8:] = 3.0
    image = torch.full((1, 12, 16, 3), 0.3)
    image[:, :, 8:] = 1.0
    conf = torch.ones(1, 12, 16)
    conf[0, 5:7, 6:8] = 0.0
    conf[0, 5:7, 8:10] = 0.0
    depth[0, 5:7, 6:10] = 0.0  # no value either
    views = PosedImages(images=image, cameras=_cameras(1))
    refined = refine_depth_prior(DepthPriorMaps(depth, conf, "depth"), views, consistency_tau=0.0, radius=3,
                                 sigma_color=0.05, iterations=1)
    # exp(-0.49 / 0.005) ~ 1e-43: nothing leaks across the colour edge, so each hole takes its own side's depth.
    torch.testing.assert_close(refined.depth[0, 5:7, 6:8], torch.full((2, 2), 2.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(refined.depth[0, 5:7, 8:10], torch.full((2, 2), 3.0), atol=1e-5, rtol=0)
    assert float(refined.confidence[0, 5:7, 6:10].min()) > 0.5  # most of each window is confident


def test_multi_view_consistency_keeps_agreeing_depth_and_drops_a_wrong_view() -> None:
    cams = _cameras(2, baseline=0.1)
    depth = torch.full((2, 12, 16), 2.0)  # a fronto-parallel plane at z = 2 in both cameras: consistent
    views = PosedImages(images=torch.full((2, 12, 16, 3), 0.5), cameras=cams)
    good = refine_depth_prior(DepthPriorMaps(depth, torch.ones(2, 12, 16), "depth"), views, iterations=0)
    # Pixels whose ray reaches the other view's image agree exactly (factor 1).
    assert float(good.confidence[0, :, 8:].min()) == pytest.approx(1.0)
    bad = depth.clone()
    bad[1] = 3.0  # view 1 disagrees by 33 % everywhere: exp(-(err / 0.02)^2) ~ 0
    wrong = refine_depth_prior(DepthPriorMaps(bad, torch.ones(2, 12, 16), "depth"), views, iterations=0)
    assert float(wrong.confidence.max()) < 1e-6


def test_relative_disparity_prior_without_points_is_refused() -> None:
    from sparse3d.utils.errors import UserError

    views = PosedImages(images=torch.zeros(1, 12, 16, 3), cameras=_cameras(1))
    with pytest.raises(UserError, match="sparse points"):
        refine_depth_prior(DepthPriorMaps(torch.ones(1, 12, 16), torch.ones(1, 12, 16), "relative_disparity"), views)


# ---------------------------------------------------------------------------------------- adaptive sampling
def test_sampling_picks_exactly_the_badly_rendered_eligible_pixels() -> None:
    target = torch.zeros(12, 16, 3)
    render = target.clone()
    render[2:5, 3:7] = 0.5  # error 0.5 in a 3 x 4 block
    render[9, 1] = 0.05  # error below the threshold
    eligible = torch.ones(12, 16, dtype=torch.bool)
    eligible[2, 3] = False
    pix = select_error_pixels(render, target, eligible, error_threshold=0.1, max_new=100)
    expected = [(r, c) for r in range(2, 5) for c in range(3, 7) if (r, c) != (2, 3)]
    assert [tuple(p) for p in pix.tolist()] == expected
    few = select_error_pixels(render, target, eligible, 0.1, max_new=4, generator=torch.Generator().manual_seed(0))
    assert len(few) == 4 and all(tuple(p) in expected for p in few.tolist())
    assert len(select_error_pixels(render, target, eligible, 0.6, 100)) == 0


def test_spawned_gaussians_land_on_the_pixel_rays_at_the_given_depth_with_fresh_adam_state() -> None:
    cams = _cameras(2)
    pix = torch.tensor([[2, 3], [4, 6], [11, 15]])  # (row, col)
    uv = torch.stack([pix[:, 1].double() + 0.5, pix[:, 0].double() + 0.5], -1)
    z = torch.tensor([1.0, 2.5, 4.0])
    pts = backproject_pixels(cams, 1, uv, z)
    proj, depth = cams.project(pts)
    torch.testing.assert_close(proj[1].double(), uv, atol=1e-4, rtol=0)
    torch.testing.assert_close(depth[1], z, atol=1e-5, rtol=0)

    torch.manual_seed(0)
    model = GaussianModel.from_points(torch.rand(5, 3), sh_degree=1)
    opt = make_adam(model)
    model.render(cams[0])[0].sum().backward()
    opt.step()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    moments = {n: opt.state[p]["exp_avg"].clone() for n, p in model.named_parameters()}
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.3, 0.4]])
    assert append_gaussians(model, opt, pts, rgb, torch.tensor([0.1, 0.2, 0.3]), opacity=0.25) == 3
    assert len(model) == 8
    for name, p in model.named_parameters():
        torch.testing.assert_close(p[:5].detach(), before[name])
        torch.testing.assert_close(opt.state[p]["exp_avg"][:5], moments[name])
        assert bool((opt.state[p]["exp_avg"][5:] == 0).all()) and bool((opt.state[p]["exp_avg_sq"][5:] == 0).all())
    torch.testing.assert_close(model.means[5:].detach(), pts)
    torch.testing.assert_close(model.opacities[5:].detach(), torch.full((3,), 0.25))
    torch.testing.assert_close(model.scales[5:].detach(), torch.tensor([0.1, 0.2, 0.3])[:, None].repeat(1, 3))
    from sparse3d.models.splatting.gaussians import SH_C0

    torch.testing.assert_close((model.sh0[5:, 0] * SH_C0 + 0.5).detach(), rgb)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
