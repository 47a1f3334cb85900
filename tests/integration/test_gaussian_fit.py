"""Fitting 3D Gaussians to images rendered by an independent renderer (Open3D ray casting of a textured mesh).

The slow test (250 Adam steps) is the end-to-end check of the splatting stack (projection, SH, Warp compositing and its
hand-written backward, the parameterisation and Adam set-up): if any gradient were wrong, 20k Gaussians
initialised on the surface with albedo colours would not reach 25 dB on the shaded training views. The target
images come from :mod:`sparse3d.render.mesh_raycast` (Blinn-Phong shading of a procedural object from
:mod:`sparse3d.datasets.synth.shapes`), which shares no code with the rasterizer.
The fast tests pin down the pieces of :mod:`sparse3d.models.splatting.gaussians` on analytic cases.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse3d.cameras import Cameras, look_at
from sparse3d.io.gaussian_ply import load_gaussian_ply, save_gaussian_ply
from sparse3d.models.splatting.gaussians import (
    DEFAULT_LRS,
    SH_C0,
    GaussianModel,
    knn_mean_distance,
    make_adam,
    rgb_to_sh0,
)


def _l1_step(model: GaussianModel, opt: torch.optim.Optimizer, cams: Cameras, images: torch.Tensor) -> float:
    """One Adam step on the L1 loss of all ``cams`` at once (the rasterizer's gradients, nothing else)."""
    opt.zero_grad(set_to_none=True)
    rendered, _ = model.render(cams)
    loss = (rendered - images).abs().mean()
    loss.backward()
    opt.step()
    return float(loss.detach())


# ----------------------------------------------------------------------------------------------- fast tests
def test_knn_distance_on_a_grid_is_the_spacing() -> None:
    spacing = 0.25
    g = torch.arange(6, dtype=torch.float32) * spacing
    grid = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    d = knn_mean_distance(grid, k=3, chunk=50)  # chunked: crosses chunk borders
    torch.testing.assert_close(d, torch.full_like(d, spacing), rtol=1e-5, atol=1e-6)  # every point has >= 3 at 0.25
    pts = torch.tensor([[0.0, 0, 0], [3.0, 0, 0], [0.0, 4, 0]])
    # point 0: neighbours at 3 and 4 -> sqrt((9 + 16) / 2)
    assert float(knn_mean_distance(pts, k=3)[0]) == pytest.approx(math.sqrt(12.5))


def test_from_points_activations_and_ply_round_trip(tmp_path: Path) -> None:
    pts = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 2, 0], [0.0, 0, 3]])
    rgb = torch.tensor([[1.0, 0, 0], [0.0, 1, 0], [0.0, 0, 1], [0.5, 0.5, 0.5]])
    model = GaussianModel.from_points(pts, rgb, sh_degree=2, opacity=0.1)
    assert len(model) == 4 and model.sh_degree == 2 and model.sh.shape == (4, 9, 3)
    torch.testing.assert_close(model.opacities, torch.full((4,), 0.1))
    torch.testing.assert_close(SH_C0 * model.sh[:, 0] + 0.5, rgb)  # DC renders the given colour
    torch.testing.assert_close(rgb_to_sh0(torch.full((1, 3), 0.5)), torch.zeros(1, 3))
    torch.testing.assert_close(model.scales[:, 0], knn_mean_distance(pts))
    assert (model.scales == model.scales[:, :1]).all()  # isotropic
    torch.testing.assert_close(model.unit_quats, torch.tensor([[1.0, 0, 0, 0]] * 4))
    back = GaussianModel.from_cloud(load_gaussian_ply(save_gaussian_ply(tmp_path / "m.ply", model.to_cloud())))
    torch.testing.assert_close(back.means, model.means)
    torch.testing.assert_close(back.scales, model.scales)
    torch.testing.assert_close(back.opacities, model.opacities)
    torch.testing.assert_close(back.sh[:, :9], model.sh)  # the file is padded to degree 3
    with pytest.raises(ValueError, match="points"):
        GaussianModel.from_points(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="colors"):
        GaussianModel.from_points(pts, rgb[:2])


def test_adam_groups_use_3dgs_rates_and_a_step_lowers_the_loss() -> None:
    model = GaussianModel.from_points(torch.tensor([[0.0, 0, 2], [0.05, 0, 2], [0.0, 0.05, 2]]), sh_degree=0,
                                      opacity=0.5, scale_multiplier=0.5)
    opt = make_adam(model, scene_extent=2.0, lrs={"sh0": 0.05})
    rates = {g["name"]: g["lr"] for g in opt.param_groups}
    assert rates["means"] == pytest.approx(DEFAULT_LRS["means"] * 2.0) and rates["sh0"] == 0.05
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="unknown learning-rate"):
        make_adam(model, lrs={"colour": 1.0})
    K = torch.tensor([[[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]]])
    cams = Cameras(K=K, viewmat=torch.eye(4)[None], width=32, height=32)
    target = torch.zeros(1, 32, 32, 3)
    target[..., 0] = 1.0  # red everywhere: the grey Gaussians must turn red
    losses = [_l1_step(model, opt, cams, target) for _ in range(15)]
    assert losses[-1] < losses[0]
    sh0 = model.sh0.detach()
    assert float(sh0[:, 0, 0].min()) > 0 > float(sh0[:, 0, 1].max())


# ----------------------------------------------------------------------------------------------- the fit
def _viewmat(R: np.ndarray, centre: np.ndarray) -> np.ndarray:
    view = np.eye(4)
    view[:3, :3], view[:3, 3] = R, -R @ centre
    return view


def _sample_surface(parts, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Area-uniform points on the meshes with barycentrically interpolated vertex albedo (an SfM-like init)."""
    rng = np.random.default_rng(seed)
    tri = np.concatenate([p.vertices.astype(np.float64)[p.faces] for p in parts])
    col = np.concatenate([p.colors.astype(np.float64)[p.faces] for p in parts])
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    idx = rng.choice(len(tri), n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    bary = np.stack([1 - u - v, u, v], 1)[:, :, None]
    return (torch.tensor((tri[idx] * bary).sum(1), dtype=torch.float32),
            torch.tensor((col[idx] * bary).sum(1), dtype=torch.float32))


@pytest.mark.slow  # ~2-6 min on 2 shared cores
def test_fit_20k_gaussians_to_four_raycast_views() -> None:
    from sparse3d.datasets.synth.shapes import random_object
    from sparse3d.metrics.image import psnr
    from sparse3d.render.mesh_raycast import PointLight, render_meshes

    size = 96
    obj = random_object(3, family="blob", size=0.3)
    centre = obj.center
    eyes = [centre + 0.55 * np.array([math.cos(a) * math.cos(0.4), math.sin(a) * math.cos(0.4), math.sin(0.4)])
            for a in 0.3 + np.arange(4) * math.pi / 2]
    K = np.array([[1.2 * size, 0, size / 2], [0, 1.2 * size, size / 2], [0, 0, 1.0]])
    cams = Cameras.from_c2w(np.stack([K] * 4), np.stack([np.linalg.inv(_viewmat(look_at(e, centre), e)) for e in eyes]), size, size)
    light = PointLight(tuple(centre + np.array([0.5, -0.5, 1.0])), 0.8)
    renders = render_meshes(list(obj.parts), cams, [light], ambient=0.3)  # black background
    targets = torch.from_numpy(np.stack([r.rgb for r in renders]))
    assert all(0.2 < r.mask.mean() < 0.6 for r in renders)  # the object fills a good part of every view

    points, albedo = _sample_surface(obj.parts, 20_000, seed=0)
    torch.manual_seed(0)
    model = GaussianModel.from_points(points, albedo, sh_degree=1)
    opt = make_adam(model, scene_extent=obj.bounding_radius)
    with torch.no_grad():
        start = psnr(model.render(cams)[0], targets)
    for _ in range(250):
        _l1_step(model, opt, cams, targets)
    with torch.no_grad():
        end = psnr(model.render(cams)[0], targets)
    assert float(end.mean()) > 25.0, f"training-view PSNR {end.tolist()} (start {start.tolist()})"
    assert float(end.min()) > 23.0 and float(end.mean()) > float(start.mean()) + 3.0
