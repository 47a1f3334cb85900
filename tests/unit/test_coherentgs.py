"""Pieces of CoherentGS: flow warping and its forward-backward consistency mask, DIS flow, the losses (layer-aware
TV, multi-scale L1, flow loss), depth layers and fill, and the implicit decoder.

Oracles: constructed flows whose consistent / occluded pixels are known exactly, an image shifted by a known
amount, hand-computed loss values, slicing for integer warps, and finite checks of shapes and gradients.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparse3d.cameras import Cameras, look_at
from sparse3d.models.splatting.coherentgs import (
    depth_layers,
    fill_depth,
    fit_support_plane,
    flow_loss,
    layered_tv,
    multiscale_l1,
    photo_consistent,
    plane_depth,
)
from sparse3d.models.splatting.decoder import ImplicitDecoder, positional_encoding
from sparse3d.models.splatting.flow import (
    backward_warp,
    consistency_mask,
    consistency_weight,
    dis_flow,
    pairwise_flows,
)


def _const_flow(h: int, w: int, dx: float, dy: float = 0.0) -> torch.Tensor:
    f = torch.zeros(h, w, 2)
    f[..., 0], f[..., 1] = dx, dy
    return f


# ------------------------------------------------------------------------------------------------ warping
def test_backward_warp_by_an_integer_shift_is_slicing() -> None:
    src = torch.rand(1, 3, 10, 12)
    warped, inside = backward_warp(src, _const_flow(10, 12, 2.0, 1.0)[None])
    torch.testing.assert_close(warped[0, :, :9, :10], src[0, :, 1:, 2:])
    assert bool(inside[0, :9, :10].all()) and not bool(inside[0, 9:].any()) and not bool(inside[0, :, 10:].any())


def test_consistent_shift_is_valid_wherever_it_stays_in_the_image() -> None:
    h, w, shift = 16, 32, 3.0
    fwd, bwd = _const_flow(h, w, shift), _const_flow(h, w, -shift)
    weight = consistency_weight(fwd, bwd)
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[:, : w - 3] = True  # x + 3 <= w - 0.5
    assert torch.equal(weight[inside], torch.ones(int(inside.sum())))
    assert torch.equal(weight[~inside], torch.zeros(int((~inside).sum())))
    assert torch.equal(consistency_mask(fwd, bwd, erode=1), inside)
    eroded = torch.zeros(h, w, dtype=torch.bool)
    eroded[:, : w - 5] = True  # a 5x5 minimum filter eats 2 more columns
    assert torch.equal(consistency_mask(fwd, bwd, erode=5), eroded)
    # a consistent sub-pixel shift is consistent too (bilinear sampling of a constant field)
    assert bool(consistency_mask(_const_flow(h, w, 1.5), _const_flow(h, w, -1.5), erode=1)[:, : w - 2].all())


def test_occluded_region_is_invalid() -> None:
    """A square moves 4 px right over a static background: the background strip it covers in image b has no
    correspondence (F_ab = 0 there, but b's flow there points back by -4)."""
    h, w = 28, 32
    fab = torch.zeros(h, w, 2)
    fab[10:18, 10:18, 0] = 4.0
    fba = torch.zeros(h, w, 2)
    fba[10:18, 14:22, 0] = -4.0
    expected = torch.ones(h, w, dtype=torch.bool)
    expected[10:18, 18:22] = False
    assert torch.equal(consistency_mask(fab, fba, erode=1), expected)
    weight = consistency_weight(fab, fba)
    torch.testing.assert_close(weight[10:18, 18:22], torch.full((8, 4), math.exp(-2.0)))


def test_mask_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="erode"):
        consistency_mask(_const_flow(4, 4, 0), _const_flow(4, 4, 0), erode=4)
    with pytest.raises(ValueError, match="flow_ab"):
        consistency_weight(torch.zeros(4, 4, 3), _const_flow(4, 4, 0))


def test_dis_flow_recovers_a_known_shift() -> None:
    rng = np.random.default_rng(0)
    base = torch.from_numpy(rng.random((60, 90, 3), dtype=np.float32))
    base = torch.nn.functional.avg_pool2d(base.permute(2, 0, 1)[None], 3, 1, 1)[0].permute(1, 2, 0)  # some smoothness
    a = base[:, 10:80]
    b = base[:, 7:77]  # content of a appears 3 px to the right in b
    flow = dis_flow(a, b)
    assert flow.shape == (60, 70, 2) and flow.dtype == torch.float32
    interior = flow[8:-8, 8:-8]
    assert abs(float(interior[..., 0].median()) - 3.0) < 0.25 and abs(float(interior[..., 1].median())) < 0.25
    flows, masks = pairwise_flows(torch.stack([a, b]))
    assert torch.equal(flows[0, 1], flow) and bool(masks[0, 0].all())
    assert float(masks[0, 1, 8:-8, 8:-8].float().mean()) > 0.9


# ------------------------------------------------------------------------------------------------- losses
def test_layered_tv_analytic_cases() -> None:
    step = torch.ones(1, 4, 6)
    step[:, :, 3:] = 2.0  # one jump of 1 between columns 2 and 3: mean |dx| = 1/5, dy = 0
    layers = (step > 1.5).long()
    assert float(layered_tv(step, None, 0.0)) == pytest.approx(1 / 5)
    assert float(layered_tv(step, layers, 1.0)) == pytest.approx(0.0)
    assert float(layered_tv(step, layers, 0.25)) == pytest.approx(0.75 / 5)
    ramp = torch.arange(5.0)[None, :, None].expand(1, 5, 7) * 0.5  # rows rise by 0.5: TV = 0 + 0.5
    assert float(layered_tv(ramp, torch.zeros(1, 5, 7, dtype=torch.long), 0.6)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="gamma"):
        layered_tv(step, layers, 1.5)


def test_multiscale_l1_of_a_constant_offset() -> None:
    x = torch.rand(1, 32, 32, 3)
    assert float(multiscale_l1(x + 0.1, x)) == pytest.approx(0.1 * (1 + 1 / 4 + 1 / 8 + 1 / 16 + 1 / 32), rel=1e-5)


def test_flow_loss_is_the_masked_distance_of_corresponding_points() -> None:
    xyz = torch.rand(2, 6, 8, 3)
    flows = torch.zeros(2, 2, 6, 8, 2)
    masks = torch.ones(2, 2, 6, 8, dtype=torch.bool)
    assert float(flow_loss(xyz, flows, masks, 0)) == pytest.approx(float((xyz[1] - xyz[0]).abs().mean()))
    # view 1 is view 0 shifted by one column; the flow says so: zero loss on the columns that match
    xyz1 = torch.roll(xyz[:1], 1, dims=2)
    flows[0, 1, ..., 0] = 1.0
    masks[0, 1, :, 7] = False  # sample beyond the right edge
    pair = torch.cat([xyz[:1], xyz1])
    assert float(flow_loss(pair, flows, masks, 0)) == pytest.approx(0.0, abs=1e-7)
    masks[0, 1] = False
    assert float(flow_loss(xyz, flows, masks, 0)) == 0.0


# --------------------------------------------------------------------------------------- pre-processing
def test_depth_layers_order_far_to_near() -> None:
    disp = torch.tensor([0.1, 0.5, 0.3, 0.9, 0.7]).repeat_interleave(20).reshape(10, 10)
    labels = depth_layers(disp, 5)
    for value, label in ((0.1, 0), (0.3, 1), (0.5, 2), (0.7, 3), (0.9, 4)):
        assert bool((labels[disp == value] == label).all())


def test_fill_depth_keeps_confident_depth_and_fills_the_rest() -> None:
    depth = torch.full((16, 20), 7.0)
    depth[:, 10:] = 123.0  # garbage where there is no evidence
    conf = torch.zeros(16, 20)
    conf[:, :10] = 1.0
    filled = fill_depth(depth, conf)
    torch.testing.assert_close(filled, torch.full((16, 20), 7.0))
    torch.testing.assert_close(fill_depth(depth, torch.ones(16, 20)), depth)


# ------------------------------------------------------------------------------------------ support plane
def _floor_scene(n_floor: int = 400, n_box: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Points on the floor z = 0.3 (x, y in [-1, 1]) plus a box standing on it (its side faces hold more points
    than the floor's tolerance band), and 3 camera centres above the floor."""
    g = torch.Generator().manual_seed(seed)
    floor = torch.cat([torch.rand(n_floor, 2, generator=g) * 2 - 1, torch.full((n_floor, 1), 0.3)], 1)
    box = torch.rand(n_box, 3, generator=g) * torch.tensor([0.4, 0.4, 0.5]) + torch.tensor([-0.2, -0.2, 0.3])
    box[: n_box // 2, 0] = 0.2  # half the box points on one side face x = 0.2 (a plane with floor points behind it)
    centres = torch.tensor([[2.0, 0.0, 1.5], [0.0, 2.0, 1.8], [-1.5, -1.5, 2.0]])
    return torch.cat([floor, box]), centres


def test_support_plane_is_the_floor_not_an_object_face() -> None:
    points, centres = _floor_scene()
    plane = fit_support_plane(points, centres, inlier_tol=0.01, iterations=300,
                              generator=torch.Generator().manual_seed(1))
    assert plane is not None
    torch.testing.assert_close(plane, torch.tensor([0.0, 0.0, 1.0, -0.3]), atol=1e-4, rtol=0)  # faces the cameras
    # noisy floor: still the floor, within the noise
    noisy = points + torch.randn(points.shape, generator=torch.Generator().manual_seed(2)) * 0.002
    plane = fit_support_plane(noisy, centres, inlier_tol=0.01, generator=torch.Generator().manual_seed(3))
    assert plane is not None and float(plane[2]) > 0.999 and abs(float(plane[3]) + 0.3) < 0.003
    # too few points, or a "plane" with cameras on both sides, gives None
    assert fit_support_plane(points[:20], centres, 0.01) is None
    both_sides = torch.cat([centres, torch.tensor([[0.0, 0.0, -1.0]])])
    assert fit_support_plane(points[:400], both_sides, 0.01, generator=torch.Generator().manual_seed(4)) is None


def _two_cameras(width: int = 40, height: int = 30) -> Cameras:
    K = np.array([[40.0, 0, width / 2], [0, 40.0, height / 2], [0, 0, 1]])
    Rs, ts = [], []
    for centre in (np.array([0.0, -2.0, 1.0]), np.array([1.6, -1.6, 1.0])):
        R = look_at(centre, np.array([0.0, 0.0, 0.6]), roll=0.0)  # looking slightly down: floor and horizon
        Rs.append(R)
        ts.append(-R @ centre)
    return Cameras.from_Rt(np.repeat(K[None], 2, axis=0), np.stack(Rs), np.stack(ts), width, height)


def _rays(cams: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    origins, dirs = zip(*(cams.pixel_rays(i) for i in range(len(cams))))
    dirs = torch.stack(dirs).double()
    forward = cams.R.double()[:, 2, :]
    rays = dirs / torch.einsum("vhwk,vk->vhw", dirs, forward)[..., None]  # scaled to camera z = 1
    return cams.centers.double(), rays


def test_plane_depth_meets_the_plane_and_photo_consistency_finds_it() -> None:
    cams = _two_cameras()
    centres, rays = _rays(cams)
    plane = torch.tensor([0.0, 0.0, 1.0, 0.0])  # the floor z = 0
    z = plane_depth(plane, centres, rays)
    hit = z > 0
    assert bool(hit.any()) and not bool(hit.all())  # the upper rows look above the horizon
    points = centres[:, None, None] + z[..., None].double() * rays
    assert float(points[..., 2][hit].abs().max()) < 1e-4
    # images of a textured floor (colour = f(x, y)), black above the horizon: the floor depth is consistent
    def shade(p: torch.Tensor) -> torch.Tensor:
        return torch.stack([0.5 + 0.4 * torch.sin(4 * p[..., 0]), 0.5 + 0.4 * torch.cos(3 * p[..., 1]),
                            0.5 + 0.2 * torch.sin(2 * (p[..., 0] + p[..., 1]))], -1)
    images = torch.where(hit[..., None], shade(points).float(), torch.zeros(2, cams.height, cams.width, 3))
    ok = photo_consistent(images, cams, centres, rays, z, tol=0.05)
    assert not bool(ok[~hit].any())  # no depth, never consistent
    # pixels at least 3 px from the horizon and the image border (3x3 means there mix in black)
    interior = -torch.nn.functional.max_pool2d(-hit[:, None].float(), 7, stride=1, padding=3)[:, 0] > 0.5
    interior[:, :, :3] = interior[:, :, -3:] = False
    interior[:, -3:] = False
    # far floor points (near the horizon) shrink to sub-pixel texture; keep the near half of the floor
    interior &= z < z[hit].median()
    assert float(ok[interior].float().mean()) > 0.9
    # the same points 40% nearer are not where the other view sees that colour
    assert float(photo_consistent(images, cams, centres, rays, z * 0.6, tol=0.05)[interior].float().mean()) < 0.5


def test_photo_consistency_counts_unseen_points_only_up_to_the_bound() -> None:
    """A point no other view sees is consistent (no evidence against it) only at depths <= max_unseen_depth."""
    cams = _two_cameras()
    centres, rays = _rays(cams)
    images = torch.rand(2, cams.height, cams.width, 3, generator=torch.Generator().manual_seed(0))
    # points 1e4 units along each camera's rays fall outside (or behind) the other camera's image for some pixels
    far = torch.full((2, cams.height, cams.width), 1e4)
    unbounded = photo_consistent(images, cams, centres, rays, far, tol=0.0)
    bounded_out = photo_consistent(images, cams, centres, rays, far, tol=0.0, max_unseen_depth=10.0)
    bounded_in = photo_consistent(images, cams, centres, rays, far, tol=0.0, max_unseen_depth=2e4)
    assert bool(unbounded.any())  # some far points are seen by no other view
    assert torch.equal(bounded_in, unbounded)
    assert not bool(bounded_out.any())  # tol=0 with random colours: only the unseen rule could make them True


# ------------------------------------------------------------------------------------------------ decoder
def test_positional_encoding_values() -> None:
    enc = positional_encoding(torch.tensor([0.0, 0.5]), 3)
    expected = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 0, 0, 0, -1, 1]], dtype=torch.float32)
    torch.testing.assert_close(enc, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [(1, 1), (37, 50), (75, 100), (48, 33)])
def test_decoder_output_size_and_gradients(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    dec = ImplicitDecoder(3, size, ngf=2, out_channels=5)
    out = dec()
    assert out.shape == (3, 5, *size) and bool(torch.isfinite(out).all())
    assert float(out.abs().max()) < 0.5  # N(0, 0.02) weights: offsets start near zero
    if size != (1, 1):
        assert not torch.allclose(out[0], out[1])  # the camera codes differ
    (out * torch.randn_like(out)).sum().backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
