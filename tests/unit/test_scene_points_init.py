"""Sparse-point initialisation of 3DGS (``GaussianSplatting(init=...)``) and its path through the scene trainer.

Oracles: the scene points themselves (means), the SH DC mapping ``colour = SH_C0 * dc + 0.5`` (colours), a
brute-force numpy k-nearest-neighbour search (scales = RMS distance to the 3 nearest other points), the 3DGS
constants (opacity 0.1, identity rotation), and a generated COLMAP scene fitted through the scene trainer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sparse3d.cameras import Cameras, look_at
from sparse3d.datasets.posed_scenes import load_colmap_scene
from sparse3d.datasets.synth.posed_scenes import generate_posed_scenes
from sparse3d.models.baselines.reprojection import NearestViewReprojection
from sparse3d.models.splatting.gaussians import SH_C0
from sparse3d.models.splatting.gs3d import GaussianSplatting
from sparse3d.train.scene_trainer import SceneTrainer
from sparse3d.utils.errors import UserError
from sparse3d.views import PosedImages, ScenePoints, SceneViews

W, H = 32, 24


def _views(n: int = 3) -> PosedImages:
    centres = np.array([[x, -4.0, 0.5] for x in np.linspace(-1.0, 1.0, n)])
    R = np.stack([look_at(c, np.zeros(3)) for c in centres])
    t = -np.einsum("nij,nj->ni", R, centres)
    K = np.array([[30.0, 0.0, W / 2], [0.0, 30.0, H / 2], [0.0, 0.0, 1.0]])
    cams = Cameras.from_Rt(np.repeat(K[None], n, 0), R, t, W, H)
    return PosedImages(torch.rand(n, H, W, 3), cams, scene="toy")


def _points(n: int = 200, seed: int = 0) -> ScenePoints:
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(n, 3)) * [0.5, 0.3, 0.4]
    xyz[5] = xyz[4]  # a duplicate: its neighbour at distance 0
    return ScenePoints.from_numpy(xyz, rng.uniform(size=(n, 3)), "points3D (test)")


def _knn_rms_numpy(xyz: np.ndarray, k: int = 3) -> np.ndarray:
    d2 = ((xyz[:, None, :].astype(np.float64) - xyz[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    return np.sqrt(np.sort(d2, axis=1)[:, :k].mean(1))


def test_points_init_places_gaussians_at_the_points_with_their_colours_and_knn_scales() -> None:
    pts = _points()
    method = GaussianSplatting(init="points", sh_degree=2, opacity=0.1)
    method.setup(_views(), 10, points=pts)
    model = method.model
    assert model is not None and len(model) == len(pts)
    torch.testing.assert_close(model.means.detach(), pts.xyz, rtol=0, atol=0)
    torch.testing.assert_close(SH_C0 * model.sh0.detach()[:, 0] + 0.5, pts.rgb, rtol=0, atol=1e-6)
    assert bool((model.sh_rest == 0).all()) and model.sh_rest.shape[1] == 8
    expected = np.maximum(_knn_rms_numpy(pts.xyz.numpy()), 1e-7)
    np.testing.assert_allclose(model.scales.detach().numpy(), np.repeat(expected[:, None], 3, 1), rtol=1e-5,
                               atol=1e-9)
    # a duplicate pair shares its other neighbours
    assert float(model.scales[4, 0].detach()) == float(model.scales[5, 0].detach())
    torch.testing.assert_close(model.opacities.detach(), torch.full((len(pts),), 0.1), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.unit_quats.detach(), torch.tensor([1.0, 0, 0, 0]).expand(len(pts), 4))
    info = method.summary()
    assert info["init"] == "points" and info["num_init_gaussians"] == len(pts) == info["num_scene_points"]
    assert info["points_source"] == "points3D (test)"


def test_points_beyond_max_init_points_are_a_random_subset() -> None:
    pts = _points(300)
    torch.manual_seed(3)
    method = GaussianSplatting(init="auto", max_init_points=50)
    method.setup(_views(), 10, points=pts)
    assert method.model is not None and len(method.model) == 50
    means = method.model.means.detach()
    match = (means[:, None, :] == pts.xyz[None]).all(-1)  # (50, 300): which point each Gaussian sits on
    assert bool(match.any(1).all())
    rows = match.float().argmax(1)
    assert len(set(rows.tolist())) == 50 and int(rows.max()) > 100  # distinct points, not just the first 50
    torch.testing.assert_close(SH_C0 * method.model.sh0.detach()[:, 0] + 0.5, pts.rgb[rows], rtol=0, atol=1e-6)
    expected = np.maximum(_knn_rms_numpy(pts.xyz[rows].numpy()), 1e-7)  # neighbours among the kept points
    np.testing.assert_allclose(method.model.scales.detach()[:, 0].numpy(), expected, rtol=1e-5, atol=1e-9)


def test_init_modes_choose_between_points_and_random() -> None:
    pts = _points()
    auto_without = GaussianSplatting(init="auto", num_points=77)
    auto_without.setup(_views(), 10)
    assert len(auto_without.model) == 77 and auto_without.summary()["init"] == "random"  # type: ignore[arg-type]
    empty = ScenePoints.from_numpy(np.zeros((0, 3)), np.zeros((0, 3)))
    auto_empty = GaussianSplatting(init="auto", num_points=77)
    auto_empty.setup(_views(), 10, points=empty)
    assert auto_empty.summary()["init"] == "random"
    forced_random = GaussianSplatting(init="random", num_points=77)
    forced_random.setup(_views(), 10, points=pts)
    assert len(forced_random.model) == 77 and forced_random.summary()["init"] == "random"  # type: ignore[arg-type]
    assert not bool((forced_random.model.means.detach()[:, None] == pts.xyz[None]).all(-1).any())  # type: ignore[union-attr]
    with pytest.raises(UserError, match="method.init=points but scene 'toy' has no sparse points"):
        GaussianSplatting(init="points").setup(_views(), 10)
    with pytest.raises(ValueError, match="init must be one of"):
        GaussianSplatting(init="sfm")
    with pytest.raises(ValueError, match="max_init_points >= 1"):
        GaussianSplatting(max_init_points=0)


def test_scene_points_validate_and_transform() -> None:
    pts = ScenePoints.from_numpy(np.array([[1.0, 2.0, 3.0]]), np.array([[1.5, -0.1, 0.5]]))
    assert pts.rgb.tolist() == [[1.0, 0.0, 0.5]]  # clipped into [0, 1]
    T = np.array([[0.0, -2.0, 0.0, 1.0], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, -1.0], [0.0, 0.0, 0.0, 1.0]])
    assert pts.transformed(T).xyz.tolist() == [[-3.0, 2.0, 5.0]]  # hand-computed A x + b
    with pytest.raises(ValueError, match="rgb must be in"):
        ScenePoints(torch.zeros(1, 3), torch.full((1, 3), 2.0))
    with pytest.raises(ValueError, match="xyz must be a"):
        ScenePoints(torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="xyz must be finite"):
        ScenePoints(torch.full((1, 3), float("nan")), torch.zeros(1, 3))


def test_scene_trainer_hands_points_only_to_methods_that_take_them(tmp_path: Path) -> None:
    root = generate_posed_scenes(tmp_path / "colmap", format="colmap", num_views=9, width=W, height=H, factors=[2],
                                 num_points=150, progress=False)
    scene = load_colmap_scene(root, image_dir="images", with_test=True)
    assert scene.points is not None
    cfg = {"device": "cpu", "progress": False, "max_steps": 3, "tensorboard": False}
    summary = SceneTrainer(cfg, tmp_path / "gs").fit(GaussianSplatting(), scene)
    info = summary["method_info"]
    assert info["init"] == "points" and info["num_init_gaussians"] == len(scene.points)
    assert info["points_source"].startswith("points3D (") and np.isfinite(summary["test"]["psnr"])
    # a method whose setup has no `points` keyword is called as before
    baseline = SceneTrainer({**cfg, "max_steps": 0}, tmp_path / "rp").fit(NearestViewReprojection(), scene)
    assert np.isfinite(baseline["test"]["psnr"])
    # the same scene without points: random init
    no_points = SceneViews(scene.inputs, scene.test)
    info = SceneTrainer(cfg, tmp_path / "gs_random").fit(GaussianSplatting(num_points=64), no_points)["method_info"]
    assert info["init"] == "random" and info["num_init_gaussians"] == 64
