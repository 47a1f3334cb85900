"""Plane-sweep stereo kernels (``sparse3d.kernels.plane_sweep``).

Oracles: the plain-torch reference (lift/project + ``grid_sample`` + ``unfold`` ZNCC, float64) on random small
scenes; analytic scenes (a textured plane, fronto-parallel or tilted, ray-traced exactly into three cameras with
known poses) whose true depth is known in closed form; degenerate inputs whose confidence must be 0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparse3d.cameras import Cameras, look_at
from sparse3d.kernels import KERNEL_MODULES
from sparse3d.kernels import plane_sweep as ps
from sparse3d.kernels.reference import plane_sweep as ref


def _rig(num: int, width: int, height: int, focal: float, baseline: float, seed: int, converge: float | None = None
         ) -> Cameras:
    """``num`` cameras near the origin looking down +y (world z up); camera 0 at the origin."""
    rng = np.random.default_rng(seed)
    K = np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
    Rs, ts = [], []
    for k in range(num):
        c = np.zeros(3) if k == 0 else np.array([baseline * math.cos(2.1 * k), 0.0, baseline * math.sin(2.1 * k)])
        c = c + (rng.normal(scale=0.02 * baseline, size=3) if k else 0.0)
        target = np.array([0.0, converge if converge else 1e3, 0.0]) + (rng.normal(scale=0.01, size=3) if k else 0.0)
        R = look_at(c, target)
        Rs.append(R)
        ts.append(-R @ c)
    return Cameras.from_Rt(np.repeat(K[None], num, 0), np.stack(Rs), np.stack(ts), width, height)


def _texture(p: np.ndarray) -> np.ndarray:
    """Smooth aperiodic solid texture in [0, 1] (sum of sinusoids with incommensurate wavelengths)."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    v = (np.sin(9.1 * x + 2.3 * z) + np.sin(6.7 * z - 3.1 * x + 1.0) + 0.7 * np.sin(13.3 * (x + z) + 0.5)
         + 0.5 * np.sin(4.1 * x * z + 17.0 * z) + 0.6 * np.sin(21.7 * x - 11.9 * z))
    return (0.5 + 0.13 * v + 0.0 * y).astype(np.float32)


def _render_plane(cams: Cameras, normal: np.ndarray, offset: float, textured: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images (V, H, W) of the plane ``normal . X = offset`` and camera-z depth maps (V, H, W)."""
    images, depths = [], []
    for v in range(len(cams)):
        o, d = cams.pixel_rays(v)
        o, d = o.numpy(), d.numpy()
        t = (offset - o @ normal) / (d @ normal)
        hit = o + t[..., None] * d
        img = _texture(hit) if textured else np.full(t.shape, 0.5, np.float32)
        z = (hit - cams.centers[v].double().numpy()) @ cams.R[v, 2].double().numpy()
        images.append(torch.from_numpy(img))
        depths.append(torch.from_numpy(z.astype(np.float32)))
    return torch.stack(images), torch.stack(depths)


def _sweep_args(cams: Cameras, images: torch.Tensor, r: int = 0) -> tuple:
    src = [i for i in range(len(cams)) if i != r]
    return images[r], images[src], cams.K[r], cams.viewmat[r], cams.K[src], cams.viewmat[src]


# ------------------------------------------------------------------------------------- Warp vs torch oracle
@pytest.mark.parametrize("seed, num_src, radius, top_k", [(0, 2, 2, 2), (1, 3, 1, 2), (2, 1, 1, 1), (3, 4, 3, 4), (4, 4, 2, 2)])
def test_cost_volume_matches_reference(seed: int, num_src: int, radius: int, top_k: int) -> None:
    torch.manual_seed(seed)
    w, h = 23, 17
    cams = _rig(num_src + 1, w, h, focal=20.0, baseline=0.4, seed=seed, converge=3.0)
    images = torch.rand(num_src + 1, h, w)
    images[:, :6, :7] = 0.25  # a flat corner: no-evidence windows around its first pixels
    depths = ps.depth_hypotheses(1.5, 8.0, 12)
    args = _sweep_args(cams, images)
    got = ps.plane_sweep_cost(*args, depths, radius=radius, top_k=top_k)
    want = ref.plane_sweep_cost(*args, depths, radius=radius, top_k=top_k)
    assert got.shape == (12, h, w)
    assert float((got - want).abs().max()) <= 1e-4
    # The volume holds no-evidence costs (flat corner, unseen points) and ordinary matches.
    assert bool((want[:, :2, :3] == ps.NO_EVIDENCE_COST).all())
    assert bool((want < 0.9).any()) and float(want.max()) <= ps.NO_EVIDENCE_COST
    depth, conf = ps.winner_take_all(got, 1.5, 8.0)
    depth_r, conf_r = ref.winner_take_all(got, 1.5, 8.0)
    torch.testing.assert_close(depth, depth_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conf, conf_r, atol=1e-5, rtol=0)


def test_winner_take_all_parabola_and_ties() -> None:
    near, far, nd = 1.0, 4.0, 7
    inv = np.linspace(1.0 / near, 1.0 / far, nd)
    cost = torch.ones(nd, 1, 4)
    cost[:, 0, 0] = torch.tensor([0.9, 0.8, 0.4, 0.2, 0.3, 0.8, 0.9])  # minimum at 3, parabola vertex at 3 + 1/6
    cost[:, 0, 1] = torch.tensor([0.1, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])  # minimum at the first plane: no refinement
    cost[:, 0, 2] = 0.5  # all equal: first plane wins, confidence 0
    cost[:, 0, 3] = torch.tensor([0.9, 0.2, 0.9, 0.9, 0.2, 0.9, 0.9])  # tie: the first minimum, confidence 0
    depth, conf = ps.winner_take_all(cost, near, far)
    delta = 0.5 * (0.4 - 0.3) / (0.4 - 2 * 0.2 + 0.3)
    step = inv[1] - inv[0]
    assert float(depth[0, 0]) == pytest.approx(1.0 / (inv[3] + delta * step), rel=1e-6)
    assert float(conf[0, 0]) == pytest.approx(1.0 - 0.2 / 0.8, abs=1e-6)  # second best two planes away: 0.8
    assert float(depth[0, 1]) == pytest.approx(near, rel=1e-6)
    assert float(conf[0, 1]) == pytest.approx(1.0 - 0.1 / 0.6, abs=1e-6)
    assert float(depth[0, 2]) == pytest.approx(near, rel=1e-6) and float(conf[0, 2]) == 0.0
    assert float(depth[0, 3]) == pytest.approx(1.0 / (inv[1] + 0.0), rel=1e-6) and float(conf[0, 3]) == 0.0
    ref_depth, ref_conf = ref.winner_take_all(cost, near, far)
    torch.testing.assert_close(depth, ref_depth)
    torch.testing.assert_close(conf, ref_conf)


def test_homography_maps_plane_points() -> None:
    cams = _rig(3, 40, 30, focal=35.0, baseline=0.5, seed=4, converge=3.0)
    depths = torch.tensor([1.7, 3.2, 9.0])
    homs = ps.plane_homographies(cams.K[0], cams.viewmat[0], cams.K[1:], cams.viewmat[1:], depths).double()
    pix = torch.tensor([[3.5, 4.5], [20.0, 15.0], [39.5, 29.5]], dtype=torch.float64)
    for di, z in enumerate(depths.tolist()):
        rays = torch.cat([pix, torch.ones(3, 1, dtype=torch.float64)], 1) @ torch.linalg.inv(cams.K[0].double()).T
        world = (rays * z) @ cams.c2w[0, :3, :3].double().T + cams.c2w[0, :3, 3].double()
        uv, _ = cams[1:].project(world.float())
        for s in range(2):
            q = torch.cat([pix, torch.ones(3, 1, dtype=torch.float64)], 1) @ homs[s, di].T
            torch.testing.assert_close(q[:, :2] / q[:, 2:], uv[s].double(), atol=2e-3, rtol=0)


# ----------------------------------------------------------------------------------------- analytic scenes
@pytest.mark.parametrize(
    "normal, offset", [((0.0, 1.0, 0.0), 3.1), ((0.35, 1.0, -0.25), 3.0)], ids=["fronto_parallel", "tilted"]
)
def test_analytic_plane_depth(normal: tuple[float, float, float], offset: float) -> None:
    n = np.asarray(normal) / np.linalg.norm(normal)
    cams = _rig(3, 64, 48, focal=60.0, baseline=0.35, seed=5)
    images, depths = _render_plane(cams, n, offset)
    truth = depths[0]
    assert float(truth.min()) > 2.0 and float(truth.max()) < 4.8
    res = ps.plane_sweep(*_sweep_args(cams, images), near=2.0, far=5.0, num_depths=64, radius=2, top_k=2)
    confident = res.confidence > 0.5
    assert float(confident.float().mean()) > 0.45
    rel = ((res.depth - truth).abs() / truth)[confident]
    assert float(rel.median()) < 0.004
    assert float((rel < 0.01).float().mean()) > 0.97
    # Confidence ranks errors: the least confident matched pixels are worse than the confident ones.
    unsure = (res.confidence > 0.0) & (res.confidence < 0.1)
    assert float(((res.depth - truth).abs() / truth)[unsure].median()) > 2 * float(rel.median())
    # Without the sub-hypothesis refinement the error is at the hypothesis spacing (~1/2 step), not below it.
    wta_only = ps.depth_hypotheses(2.0, 5.0, 64)[res.cost.argmin(0)]
    assert float(((wta_only - truth).abs() / truth)[confident].median()) > float(rel.median())


def test_textureless_image_has_no_confidence() -> None:
    cams = _rig(3, 40, 30, focal=40.0, baseline=0.35, seed=6)
    images, _ = _render_plane(cams, np.array([0.0, 1.0, 0.0]), 3.0, textured=False)
    res = ps.plane_sweep(*_sweep_args(cams, images), near=2.0, far=5.0, num_depths=32, radius=2, top_k=2)
    assert float(res.confidence.max()) == 0.0
    assert bool((res.cost == ps.NO_EVIDENCE_COST).all())


def test_single_source_view() -> None:
    cams = _rig(2, 64, 48, focal=60.0, baseline=0.35, seed=7)
    n = np.array([0.0, 1.0, 0.0])
    images, depths = _render_plane(cams, n, 3.0)
    res = ps.plane_sweep(*_sweep_args(cams, images), near=2.0, far=5.0, num_depths=64, radius=2, top_k=1)
    seen = res.cost.min(0).values < ps.NO_EVIDENCE_COST  # pixels the single source matches at some plane
    confident = res.confidence > 0.5
    assert float(confident.float().mean()) > 0.3
    rel = ((res.depth - depths[0]).abs() / depths[0])[confident]
    assert float(rel.median()) < 0.005
    # The textureless version of the same pair: nothing to match, confidence 0 everywhere.
    flat, _ = _render_plane(cams, n, 3.0, textured=False)
    res_flat = ps.plane_sweep(*_sweep_args(cams, flat), near=2.0, far=5.0, num_depths=64, radius=2, top_k=1)
    assert float(res_flat.confidence.max()) == 0.0 and bool(seen.any())


def test_pixels_no_source_sees_have_no_confidence() -> None:
    # The source looks the other way: every plane point is behind it or outside its image.
    K = np.array([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]])
    R0 = look_at(np.zeros(3), np.array([0.0, 1.0, 0.0]))
    R1 = look_at(np.array([0.2, 0.0, 0.0]), np.array([0.2, -1.0, 0.0]))
    cams = Cameras.from_Rt(np.stack([K, K]), np.stack([R0, R1]), np.stack([np.zeros(3), -R1 @ [0.2, 0, 0]]), 32, 24)
    images = torch.rand(2, 24, 32)
    res = ps.plane_sweep(*_sweep_args(cams, images), near=1.0, far=5.0, num_depths=16, radius=1, top_k=1)
    assert bool((res.cost == ps.NO_EVIDENCE_COST).all()) and float(res.confidence.max()) == 0.0


# ------------------------------------------------------------------------------------------------ contract
def test_validation_names_the_argument() -> None:
    cams = _rig(3, 16, 12, focal=15.0, baseline=0.3, seed=8)
    images = torch.rand(3, 12, 16)
    args = list(_sweep_args(cams, images))
    d = ps.depth_hypotheses(1.0, 4.0, 8)
    with pytest.raises(ValueError, match="ref_image"):
        ps.plane_sweep_cost(images[0].double(), *args[1:], d)
    with pytest.raises(ValueError, match="radius"):
        ps.plane_sweep_cost(*args, d, radius=0)
    with pytest.raises(ValueError, match="top_k"):
        ps.plane_sweep_cost(*args, d, top_k=3)
    with pytest.raises(ValueError, match="src_K"):
        ps.plane_sweep_cost(*args[:4], cams.K[1:2], args[5], d)
    with pytest.raises(ValueError, match="near"):
        ps.plane_sweep(*args, near=4.0, far=1.0)
    with pytest.raises(ValueError, match="num_depths"):
        ps.plane_sweep(*args, near=1.0, far=4.0, num_depths=2)
    with pytest.raises(ValueError, match="depths"):
        ps.plane_sweep_cost(*args, torch.tensor([1.0, -2.0]))
    with pytest.raises(ValueError, match="src_images"):
        ps.plane_sweep_cost(args[0], torch.rand(ps.MAX_SOURCES + 1, 12, 16), *args[2:], d)


def test_non_contiguous_inputs_and_hypotheses() -> None:
    cams = _rig(3, 20, 14, focal=18.0, baseline=0.3, seed=9, converge=3.0)
    images = torch.rand(3, 14, 40)[:, :, ::2]  # non-contiguous
    assert not images.is_contiguous()
    d = ps.depth_hypotheses(2.0, 6.0, 9)
    assert float(d[0]) == pytest.approx(2.0) and float(d[-1]) == pytest.approx(6.0)
    inv = 1.0 / d.double()
    torch.testing.assert_close(inv[1:] - inv[:-1], torch.full((8,), (1 / 6 - 1 / 2) / 8, dtype=torch.float64))
    args = _sweep_args(cams, images)
    got = ps.plane_sweep_cost(*args, d, radius=1, top_k=2)
    want = ref.plane_sweep_cost(*args, d, radius=1, top_k=2)
    assert float((got - want).abs().max()) <= 1e-4


def test_module_is_registered_for_aot() -> None:
    assert "sparse3d.kernels.plane_sweep" in KERNEL_MODULES
