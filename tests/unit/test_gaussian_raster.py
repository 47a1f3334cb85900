"""Warp Gaussian rasterizer vs the dense float64 torch oracle, analytic cases and the gsplat-compatible API.

The last section tests the Warp EWA projection alone against the oracle's ``project``: every output and every
gradient (means, quats, scales, opacities, viewmats) in both rasterize modes.

The oracle (``sparse3d.kernels.reference.gaussian_raster``) has its own projection, SH form and per-pixel
cumulative-product compositing over ALL Gaussians, so agreement checks projection, tiling, sorting, the
compositing rules and the hand-written backward together.
"""

from __future__ import annotations

import math

import pytest
import torch

from sparse3d.kernels import gaussian_composite as KC
from sparse3d.kernels import gaussian_projection as KP
from sparse3d.kernels import gaussian_tiles as KT
from sparse3d.kernels.gaussian_projection import project_gaussians
from sparse3d.kernels.reference import gaussian_raster as R
from sparse3d.kernels.runtime import serial_torch_ops
from sparse3d.render import rasterize_gaussians

W, H = 37, 29  # partial edge tiles with 16x16 tiles (3 x 2 grid)


def _rot_y(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _cameras(n_cams: int) -> tuple[torch.Tensor, torch.Tensor]:
    viewmats = torch.eye(4).repeat(n_cams, 1, 1)
    Ks = torch.tensor([[38.0, 0.0, W / 2], [0.0, 41.0, H / 2 - 1.5], [0.0, 0.0, 1.0]]).repeat(n_cams, 1, 1)
    if n_cams > 1:
        viewmats[1, :3, :3] = _rot_y(0.25)
        viewmats[1, :3, 3] = torch.tensor([0.4, -0.1, 0.3])
        Ks[1, 0, 0] = 45.0
    return viewmats, Ks


def _scene(seed: int, n: int = 70, sh_degree: int | None = None) -> dict[str, torch.Tensor]:
    """Random Gaussians in front of the cameras plus adversarial ones: behind the camera, outside the image,
    huge, tiny, zero opacity, duplicate depths."""
    g = torch.Generator().manual_seed(seed)
    means = torch.stack(
        [(torch.rand(n, generator=g) - 0.5) * 3.0, (torch.rand(n, generator=g) - 0.5) * 2.4,
         2.0 + 3.0 * torch.rand(n, generator=g)], 1
    )
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.01), math.log(0.25), generator=g))
    opac = 0.05 + 0.9 * torch.rand(n, generator=g)
    if n < 16:
        return _finish(g, n, sh_degree, means, quats, scales, opac)
    means[0] = torch.tensor([0.1, 0.0, -2.0])  # behind the camera
    means[1] = torch.tensor([25.0, 0.0, 3.0])  # far outside the image
    means[2] = torch.tensor([0.0, -0.2, 0.02])  # right in front of the camera lens (>1.3x FoV clamp for most)
    scales[3] = torch.tensor([2.0, 1.5, 1.0])  # huge
    scales[4] = torch.tensor([1e-3, 2e-3, 1e-3])  # tiny
    opac[5] = 0.0  # zero opacity
    opac[6] = 0.002  # below 1/255
    means[8:12, 2] = means[7, 2]  # duplicate depths (cam 0)
    means[12, :] = means[13, :]  # exact duplicate position
    means[14] = torch.tensor([-1.2, 0.9, 2.2])  # near the image corner
    scales[15] = torch.tensor([0.6, 0.003, 0.002])  # needle: a thin slanted line on screen
    return _finish(g, n, sh_degree, means, quats, scales, opac)


def _finish(g, n, sh_degree, means, quats, scales, opac) -> dict[str, torch.Tensor]:
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g)
    else:
        colors = 0.4 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g)
    return {"means": means, "quats": quats, "scales": scales, "opacities": opac, "colors": colors}


def _render(scene, viewmats, Ks, fn=rasterize_gaussians, dtype=torch.float32, **kw):
    cast = {k: v.to(dtype) for k, v in scene.items()}
    if kw.get("backgrounds") is not None:
        kw["backgrounds"] = kw["backgrounds"].to(dtype)
    if fn is rasterize_gaussians:
        kw.setdefault("backend", "warp")
    return fn(
        cast["means"], cast["quats"], cast["scales"], cast["opacities"], cast["colors"], viewmats.to(dtype),
        Ks.to(dtype), W, H, **kw,
    )


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------------ forward
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_cams", [1, 2])
@pytest.mark.parametrize("mode", ["RGB", "RGB+ED", "D"])
def test_forward_matches_reference(seed: int, n_cams: int, mode: str) -> None:
    scene = _scene(seed)
    vm, Ks = _cameras(n_cams)
    img, alpha, meta = _render(scene, vm, Ks, render_mode=mode)
    r_img, r_alpha, r_meta = _render(scene, vm, Ks, fn=R.rasterize_gaussians, dtype=torch.float64, render_mode=mode)
    assert img.shape == (n_cams, H, W, {"RGB": 3, "RGB+ED": 4, "D": 1}[mode])
    assert alpha.shape == (n_cams, H, W, 1)
    assert torch.equal(meta["radii"], r_meta["radii"])
    assert int((meta["radii"] > 0).all(-1).sum()) > 40 * n_cams  # the scene is not mostly culled
    assert float(alpha.max()) > 0.9 and float(alpha.min()) < 0.5  # dense and sparse regions
    _close(img, r_img)
    _close(alpha, r_alpha)
    _close(meta["median_depths"], r_meta["median_depths"])
    for key in ("means2d", "depths"):
        _close(meta[key], r_meta[key], 1e-4)
    _close(meta["conics"], r_meta["conics"], 1e-4)
    # culled: behind the camera, outside the image, zero / sub-threshold opacity
    assert (meta["radii"][:, [0, 1, 5, 6]] == 0).all()
    assert meta["radii"].dtype == torch.int32 and meta["isect_offsets"].shape == (n_cams, 2, 3)


def test_forward_tile_size_8_and_median_depth_is_real() -> None:
    scene = _scene(3)
    vm, Ks = _cameras(2)
    img, alpha, meta = _render(scene, vm, Ks, tile_size=8, render_mode="RGB+D")
    r_img, r_alpha, r_meta = _render(scene, vm, Ks, fn=R.rasterize_gaussians, dtype=torch.float64, tile_size=8,
                                     render_mode="RGB+D")
    _close(img, r_img)
    _close(alpha, r_alpha)
    med = meta["median_depths"]
    _close(med, r_meta["median_depths"])
    assert meta["isect_offsets"].shape == (2, 4, 5)
    assert bool(((med > 0) == (alpha >= 0.5)).all())  # a median exists exactly where alpha reaches 0.5
    assert not med.requires_grad


def test_depth_modes_are_consistent() -> None:
    scene = _scene(4)
    vm, Ks = _cameras(1)
    d, a, _ = _render(scene, vm, Ks, render_mode="D")
    ed, a2, _ = _render(scene, vm, Ks, render_mode="ED")
    rgbd, _, _ = _render(scene, vm, Ks, render_mode="RGB+D")
    rgb, _, _ = _render(scene, vm, Ks, render_mode="RGB")
    torch.testing.assert_close(ed, d / a.clamp(min=1e-10))
    torch.testing.assert_close(rgbd[..., :3], rgb)
    torch.testing.assert_close(rgbd[..., 3:], d)
    assert torch.equal(a, a2)


@pytest.mark.parametrize("mode", ["RGB", "RGB+D"])
def test_backgrounds(mode: str) -> None:
    scene = _scene(5)
    vm, Ks = _cameras(2)
    bg = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]])
    img, alpha, _ = _render(scene, vm, Ks, backgrounds=bg, render_mode=mode)
    plain, _, _ = _render(scene, vm, Ks, render_mode=mode)
    r_img, _, _ = _render(scene, vm, Ks, fn=R.rasterize_gaussians, dtype=torch.float64, backgrounds=bg,
                          render_mode=mode)
    _close(img, r_img)
    _close(img[..., :3], plain[..., :3] + (1 - alpha) * bg[:, None, None, :])
    if mode == "RGB+D":  # the depth channel gets a zero background, like gsplat
        torch.testing.assert_close(img[..., 3], plain[..., 3])


def test_antialiased_mode() -> None:
    scene = _scene(6)
    vm, Ks = _cameras(2)
    img, alpha, meta = _render(scene, vm, Ks, rasterize_mode="antialiased")
    r_img, r_alpha, r_meta = _render(scene, vm, Ks, fn=R.rasterize_gaussians, dtype=torch.float64,
                                     rasterize_mode="antialiased")
    _close(img, r_img)
    _close(alpha, r_alpha)
    assert torch.equal(meta["radii"], r_meta["radii"])
    # Analytic: an isotropic camera-facing Gaussian of screen std s px has compensation s^2 / (s^2 + eps2d).
    one = {
        "means": torch.tensor([[0.0, 0.0, 4.0]]), "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        "scales": torch.full((1, 3), 0.05), "opacities": torch.tensor([0.8]), "colors": torch.ones(1, 3),
    }
    vm1, k1 = torch.eye(4)[None], torch.tensor([[[40.0, 0, 18.5], [0, 40.0, 14.5], [0, 0, 1]]])
    _, _, m = _render(one, vm1, k1, rasterize_mode="antialiased")
    s2 = (40.0 * 0.05 / 4.0) ** 2
    torch.testing.assert_close(m["opacities"][0, 0], torch.tensor(0.8 * s2 / (s2 + 0.3)))
    _, _, m_classic = _render(one, vm1, k1)
    torch.testing.assert_close(m_classic["opacities"][0, 0], torch.tensor(0.8))


def test_early_termination_on_an_opaque_stack() -> None:
    """Eight o=0.8 Gaussians centred on one pixel centre: T = 0.2^k; the 6th would take T to 6.4e-5 <= 1e-4,
    so it and everything behind it are dropped whole."""
    n = 8
    depths = 2.0 + 0.1 * torch.arange(n, dtype=torch.float32)
    f, px, py = 50.0, 10.5, 7.5  # pixel (row 7, col 10)
    cx, cy = 18.0, 14.0
    means = torch.stack([(px - cx) * depths / f, (py - cy) * depths / f, depths], 1)
    colors = torch.rand(n, 3, generator=torch.Generator().manual_seed(0))
    scene = {"means": means, "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
             "scales": 0.02 * depths[:, None].repeat(1, 3), "opacities": torch.full((n,), 0.8), "colors": colors}
    vm, k = torch.eye(4)[None], torch.tensor([[[f, 0, cx], [0, f, cy], [0, 0, 1]]])
    img, alpha, meta = _render(scene, vm, k)
    weights = torch.tensor([0.8 * 0.2**i for i in range(5)])
    expect = (weights[:, None] * colors[:5]).sum(0)
    torch.testing.assert_close(img[0, 7, 10], expect, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alpha[0, 7, 10, 0], torch.tensor(1 - 0.2**5), rtol=1e-5, atol=1e-6)
    assert float(meta["median_depths"][0, 7, 10, 0]) == pytest.approx(float(depths[0]))
    r_img, _, _ = _render(scene, vm, k, fn=R.rasterize_gaussians, dtype=torch.float64)
    _close(img, r_img)


def test_empty_and_fully_culled_scenes() -> None:
    vm, Ks = _cameras(2)
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    empty = {"means": torch.zeros(0, 3), "quats": torch.zeros(0, 4), "scales": torch.zeros(0, 3),
             "opacities": torch.zeros(0), "colors": torch.zeros(0, 3)}
    img, alpha, meta = _render(empty, vm, Ks, backgrounds=bg)
    assert torch.equal(img, bg[:, None, None, :].expand(2, H, W, 3)) and not alpha.any()
    assert meta["isect_ids"].numel() == 0
    scene = _scene(0, n=20)
    scene["means"][:, 2] = -3.0  # all behind both cameras
    params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
    img, alpha, meta = _render(params, vm, Ks, backgrounds=bg)
    assert torch.equal(img, bg[:, None, None, :].expand(2, H, W, 3)) and not (meta["radii"] > 0).any()
    (img.sum() + alpha.sum()).backward()
    for p in params.values():
        assert p.grad is None or not p.grad.any()


# ----------------------------------------------------------------------------------------------- gradients
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def _grads(scene, vm, Ks, fn, dtype, weights_seed=11, bg=None, **kw):
    params = {k: v.to(dtype).clone().requires_grad_(True) for k, v in scene.items()}
    bgp = None if bg is None else bg.to(dtype).clone().requires_grad_(True)
    img, alpha, _ = _render(params, vm, Ks, fn=fn, dtype=dtype, backgrounds=bgp, **kw)
    g = torch.Generator().manual_seed(weights_seed)
    w_img = torch.randn(img.shape, generator=g, dtype=torch.float64).to(dtype)
    w_alpha = torch.randn(alpha.shape, generator=g, dtype=torch.float64).to(dtype)
    loss = (img * w_img).sum() + (alpha * w_alpha).sum()
    wrt = list(params.values()) + ([bgp] if bgp is not None else [])
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    names = list(params) + (["backgrounds"] if bgp is not None else [])
    return dict(zip(names, grads))


@pytest.mark.parametrize(
    ("seed", "n_cams", "sh_degree", "mode"),
    [(0, 1, None, "RGB"), (1, 2, None, "RGB"), (2, 2, 0, "RGB"), (3, 1, 1, "RGB+D"), (4, 2, 2, "RGB+ED"),
     (5, 2, 3, "RGB"), (6, 1, None, "D"), (7, 2, 3, "ED")],
)
def test_gradients_match_reference(seed: int, n_cams: int, sh_degree, mode: str) -> None:
    scene = _scene(seed, sh_degree=sh_degree)
    vm, Ks = _cameras(n_cams)
    bg = torch.rand(n_cams, 3, generator=torch.Generator().manual_seed(seed)) if seed % 2 else None
    ours = _grads(scene, vm, Ks, rasterize_gaussians, torch.float32, bg=bg, sh_degree=sh_degree, render_mode=mode)
    ref = _grads(scene, vm, Ks, R.rasterize_gaussians, torch.float64, bg=bg, sh_degree=sh_degree, render_mode=mode)
    for name, r in ref.items():
        if r is None:  # colours are unused in depth-only modes
            assert ours[name] is None or not ours[name].any(), name
            continue
        assert float(r.norm()) > 0, name
        assert _rel(ours[name], r) < 1e-4, (name, _rel(ours[name], r))


@pytest.mark.parametrize("mode", ["RGB", "RGB+D"])
def test_wide_feature_images_match_reference(mode: str) -> None:
    """Feature images wider than the unrolled channel count (KC.LOCAL_CH) take the kernels' generic channel
    loop: values, alpha and every gradient (backgrounds included) still match the oracle."""
    scene = _scene(8)
    g = torch.Generator().manual_seed(8)
    n_feat = int(KC.LOCAL_CH) + 2
    scene["colors"] = torch.rand(scene["means"].shape[0], n_feat, generator=g)
    bg = torch.rand(2, n_feat, generator=g)
    vm, Ks = _cameras(2)
    img, alpha, _ = _render(scene, vm, Ks, render_mode=mode, backgrounds=bg)
    r_img, r_alpha, _ = _render(scene, vm, Ks, fn=R.rasterize_gaussians, dtype=torch.float64, render_mode=mode,
                                backgrounds=bg)
    assert img.shape[-1] == n_feat + (mode == "RGB+D")
    _close(img, r_img)
    _close(alpha, r_alpha)
    ours = _grads(scene, vm, Ks, rasterize_gaussians, torch.float32, bg=bg, render_mode=mode)
    ref = _grads(scene, vm, Ks, R.rasterize_gaussians, torch.float64, bg=bg, render_mode=mode)
    for name, r in ref.items():
        assert float(r.norm()) > 0, name
        assert _rel(ours[name], r) < 1e-4, (name, _rel(ours[name], r))


def test_antialiased_gradients_match_reference() -> None:
    scene = _scene(8)
    vm, Ks = _cameras(2)
    ours = _grads(scene, vm, Ks, rasterize_gaussians, torch.float32, rasterize_mode="antialiased")
    ref = _grads(scene, vm, Ks, R.rasterize_gaussians, torch.float64, rasterize_mode="antialiased")
    for name, r in ref.items():
        assert _rel(ours[name], r) < 1e-4, (name, _rel(ours[name], r))


def test_screen_space_gradients_and_absgrad() -> None:
    scene = _scene(9)
    vm, Ks = _cameras(2)
    params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
    img, alpha, meta = _render(params, vm, Ks, absgrad=True)
    meta["means2d"].retain_grad()
    w = torch.randn(img.shape, generator=torch.Generator().manual_seed(1))
    ((img * w).sum() + alpha.sum()).backward()
    grad2d, absgrad = meta["means2d"].grad, meta["means2d"].absgrad
    assert grad2d.shape == absgrad.shape == (2, scene["means"].shape[0], 2)
    assert bool((absgrad >= grad2d.abs() * (1 - 1e-5) - 1e-9).all())
    assert float(absgrad.sum()) > float(grad2d.abs().sum()) * 1.01  # per-pixel signs do cancel somewhere
    assert not grad2d[meta["radii"].eq(0).any(-1)].any()
    # The screen-space gradient is what the reference gives for its own means2d (retain_grad there too).
    rp = {k: v.double().clone().requires_grad_(True) for k, v in scene.items()}
    r_img, r_alpha, r_meta = _render(rp, vm, Ks, fn=R.rasterize_gaussians, dtype=torch.float64)
    r_meta["means2d"].retain_grad()
    ((r_img * w.double()).sum() + r_alpha.sum()).backward()
    assert _rel(grad2d, r_meta["means2d"].grad) < 1e-4


def test_cpu_partitioning_does_not_change_results(monkeypatch) -> None:
    """Per-part gradient buffers summed afterwards give the same gradients for 1, 2 or 3 CPU parts."""
    scene = _scene(10)
    vm, Ks = _cameras(2)
    results = []
    for parts in (1, 2, 3):
        monkeypatch.setattr(KC, "cpu_threads", lambda p=parts: p)
        params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
        img, alpha, _ = _render(params, vm, Ks)
        (img.square().sum() + alpha.sum()).backward()
        results.append((img, *[p.grad for p in params.values()]))
    for other in results[1:]:
        assert torch.equal(results[0][0], other[0])
        for a, b in zip(results[0][1:], other[1:]):
            assert _rel(b, a) < 1e-6  # only the float summation order differs


def test_torch_glue_runs_serial_and_the_thread_count_comes_back(monkeypatch) -> None:
    """Inside the rasterizer (forward and backward) torch runs on one thread; the caller's count is restored
    afterwards, after nested use and after an error."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen: list[int] = []
        for name in ("rasterize_to_pixels_fwd", "rasterize_to_pixels_bwd"):
            real = getattr(KC, name)
            monkeypatch.setattr(KC, name, lambda *a, _f=real, **k: seen.append(torch.get_num_threads()) or _f(*a, **k))
        params = {k: v.clone().requires_grad_(True) for k, v in _scene(4).items()}
        img, alpha, _ = _render(params, *_cameras(1))
        assert torch.get_num_threads() == 2
        (img.sum() + alpha.sum()).backward()
        assert seen == [1, 1] and torch.get_num_threads() == 2
        with serial_torch_ops():
            with serial_torch_ops():
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="boom"), serial_torch_ops():
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_compositing_kernels_on_raw_2d_gaussians() -> None:
    """Kernel level, bypassing projection: random 2-D Gaussians incl. an indefinite conic (sigma < 0 somewhere,
    so no ellipse bound exists), a needle and opacity 1.0, against the dense reference compositor."""
    g = torch.Generator().manual_seed(21)
    c_n, n = 2, 40
    means2d = torch.rand(c_n, n, 2, generator=g) * torch.tensor([W + 10.0, H + 10.0]) - 5.0
    sx, sy = 0.5 + 6 * torch.rand(c_n, n, generator=g), 0.5 + 6 * torch.rand(c_n, n, generator=g)
    rho = 1.8 * torch.rand(c_n, n, generator=g) - 0.9
    cov = torch.stack([sx * sx, rho * sx * sy, sy * sy], -1)
    cov[0, 0] = torch.tensor([400.0, 19.9, 1.0])  # needle, condition number ~ 4e3
    det = cov[..., 0] * cov[..., 2] - cov[..., 1] ** 2
    conics = torch.stack([cov[..., 2], -cov[..., 1], cov[..., 0]], -1) / det[..., None]
    conics[1, 3] = torch.tensor([0.3, 0.5, 0.2])  # indefinite
    radii = torch.ceil(3.33 * torch.sqrt(torch.stack([cov[..., 0], cov[..., 2]], -1))).to(torch.int32)
    radii[1, 3] = torch.tensor([9, 9], dtype=torch.int32)
    depths = 1.0 + 5 * torch.rand(c_n, n, generator=g)
    opac = torch.rand(c_n, n, generator=g)
    opac[0, 1] = 1.0
    colors = torch.rand(c_n, n, 4, generator=g)
    isect = KT.intersect_tiles(means2d, radii, depths, 16, 3, 2)
    out = KC.rasterize_to_pixels_fwd(means2d, conics, colors, opac, depths, None, isect.isect_offsets,
                                    isect.flatten_ids, W, H, 16)
    ref = R.rasterize_pixels(means2d.double(), conics.double(), colors.double(), opac.double(), depths.double(),
                             radii, W, H, 16)
    _close(out.colors, ref[0])
    _close(out.alphas, ref[1])
    _close(out.median_depths, ref[2])
    _close(out.transmittance[..., None], 1 - ref[1])
    # The backward given the forward's records equals the one that rebuilds them; a wrong shape is refused.
    v_c, v_a = torch.rand(c_n, H, W, 4, generator=g), torch.rand(c_n, H, W, 1, generator=g)
    args = (means2d, conics, colors, opac, None, isect.isect_offsets, isect.flatten_ids, W, H, 16,
            out.transmittance, out.last_ids, v_c, v_a, True)
    rebuilt = KC.rasterize_to_pixels_bwd(*args)
    reused = KC.rasterize_to_pixels_bwd(*args, records=out.records)
    assert float(rebuilt[0].abs().sum()) > 0
    for a, b in zip(rebuilt, reused):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="records must have shape"):
        KC.rasterize_to_pixels_bwd(*args, records=out.records[:, :8])


# ------------------------------------------------------------------------------------------ intersections
def test_sort_keys_use_float_bits_on_adversarial_depths() -> None:
    """Keys sorted => (camera, tile, depth) ascending; an int cast of the depth would tie 1.0 and 1.0000001."""
    depth_vals = [1.0, 1.0000001, 1.5, 2.0**-20, 1e30, 1.0000001, 1.5]
    n = len(depth_vals)
    depths = torch.tensor([depth_vals, depth_vals[::-1]], dtype=torch.float32)
    assert depths[0, 0] != depths[0, 1]
    # Gaussians spread over a 4 x 3 tile grid (64 x 48 image), some spanning several tiles.
    means2d = torch.tensor([[5.0, 5.0], [20.0, 5.0], [8.0, 8.0], [40.0, 30.0], [12.0, 40.0], [50.0, 10.0],
                            [30.0, 20.0]]).repeat(2, 1, 1)
    radii = torch.tensor([[3, 3], [10, 4], [20, 20], [5, 5], [2, 2], [30, 3], [1, 1]], dtype=torch.int32)
    radii = radii.repeat(2, 1, 1)
    radii[1, 3] = 0  # culled in camera 1
    isect = KT.intersect_tiles(means2d, radii, depths, 16, 4, 3)
    keys, ids = isect.isect_ids, isect.flatten_ids.long()
    assert torch.equal(keys, torch.sort(keys).values)
    tile_bits = KT.tile_bits_for(12)
    cam = keys >> (32 + tile_bits)
    tile = (keys >> 32) & ((1 << tile_bits) - 1)
    assert torch.equal(cam, ids // n)
    assert torch.equal(keys & 0xFFFFFFFF, depths.reshape(-1)[ids].view(torch.int32).long() & 0xFFFFFFFF)
    # Independent expectation: every (camera, tile, depth, id) tuple, sorted with float comparisons.
    expected = []
    for c in range(2):
        for g in range(n):
            rx, ry = radii[c, g].tolist()
            if rx <= 0:
                continue
            mx, my = means2d[c, g].tolist()
            x0, x1 = max(0, math.floor((mx - rx) / 16)), min(4, math.ceil((mx + rx) / 16))
            y0, y1 = max(0, math.floor((my - ry) / 16)), min(3, math.ceil((my + ry) / 16))
            for ty in range(y0, y1):
                for tx in range(x0, x1):
                    expected.append((c, ty * 4 + tx, float(depths[c, g]), g))
    expected.sort()
    got = [(int(cam[i]), int(tile[i]), float(depths.reshape(-1)[ids[i]]), int(ids[i]) % n) for i in range(len(ids))]
    assert got == expected
    counts = torch.zeros(2 * n, dtype=torch.int32)
    counts.index_add_(0, ids, torch.ones_like(ids, dtype=torch.int32))
    assert torch.equal(isect.tiles_per_gauss.reshape(-1), counts)
    # Offsets: first index of each (camera, tile) run, independent via searchsorted.
    gtile = cam * 12 + tile
    want = torch.searchsorted(gtile, torch.arange(24)).to(torch.int32).reshape(2, 3, 4)
    assert torch.equal(isect.isect_offsets, want)


def test_tile_offsets_with_empty_leading_and_trailing_tiles() -> None:
    keys = torch.tensor([(0 << 36) | (5 << 32) | 7, (0 << 36) | (5 << 32) | 9, (1 << 36) | (2 << 32) | 1])
    offsets = KT.tile_offsets(keys, 2, 4, 2)  # 8 tiles -> tile_bits 4
    assert offsets.reshape(-1).tolist() == [0] * 6 + [2] * 5 + [3] * 5


# ------------------------------------------------------------------------------------------- API contract
def _args():
    s = _scene(0, n=6)
    vm, Ks = _cameras(1)
    return dict(means=s["means"], quats=s["quats"], scales=s["scales"], opacities=s["opacities"],
                colors=s["colors"], viewmats=vm, Ks=Ks, width=W, height=H)


@pytest.mark.parametrize(
    ("name", "value", "extra"),
    [
        ("means", torch.zeros(6, 2), {}),
        ("means", torch.zeros(6, 3, dtype=torch.float64), {}),
        ("quats", torch.zeros(5, 4), {}),
        ("scales", torch.zeros(6, 4), {}),
        ("opacities", torch.zeros(6, 1), {}),
        ("colors", torch.zeros(5, 3), {}),
        ("colors", torch.zeros(6, 3, 3), {"sh_degree": 2}),
        ("sh_degree", 4, {"colors": torch.zeros(6, 25, 3)}),
        ("viewmats", torch.zeros(1, 3, 4), {}),
        ("Ks", torch.zeros(2, 3, 3), {}),
        ("width", 0, {}),
        ("height", 2.5, {}),
        ("near_plane", 0.0, {}),
        ("far_plane", 0.001, {}),
        ("radius_clip", -1.0, {}),
        ("eps2d", -0.1, {}),
        ("backgrounds", torch.zeros(1, 4), {}),
        ("render_mode", "RGBD", {}),
        ("rasterize_mode", "fancy", {}),
        ("tile_size", 0, {}),
        ("absgrad", 1, {}),
        ("backend", "cuda", {}),
    ],
)
def test_validation_errors_name_the_argument(name: str, value, extra) -> None:
    args = _args()
    args.update(extra)
    args[name] = value
    with pytest.raises(ValueError, match=name):
        rasterize_gaussians(**args)


GSPLAT_POSITIONAL = ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks", "width", "height",
                     "near_plane", "far_plane", "radius_clip", "eps2d", "sh_degree")
GSPLAT_DEFAULTS = {"near_plane": 0.01, "far_plane": 1e10, "radius_clip": 0.0, "eps2d": 0.3, "sh_degree": None,
                   "tile_size": 16, "backgrounds": None, "render_mode": "RGB", "absgrad": False,
                   "rasterize_mode": "classic"}
"""gsplat 1.5.3 ``rasterization``: its first 14 positions and the defaults of the options we share."""


def test_one_signature_shared_and_gsplat_compatible() -> None:
    """The front-end, the oracle and the torch-tiles peer take RasterizeArgs' fields in order with its defaults;
    the front-end's names, positions and defaults are gsplat's (checked against an installed gsplat too)."""
    import inspect

    from sparse3d.bench.torch_tiles import rasterize_torch_tiles
    from sparse3d.kernels.gaussian_args import RasterizeArgs

    def params(fn) -> list[tuple[str, object, object]]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    fields = params(R.rasterize_gaussians)
    assert [name for name, _, _ in fields] == list(RasterizeArgs._fields)
    assert params(rasterize_torch_tiles) == fields
    ours = inspect.signature(rasterize_gaussians).parameters
    assert params(rasterize_gaussians)[: len(fields)] == fields
    assert list(ours)[len(fields) :] == ["absgrad", "backend", "check_values"]
    assert tuple(ours)[: len(GSPLAT_POSITIONAL)] == GSPLAT_POSITIONAL
    assert {k: ours[k].default for k in GSPLAT_DEFAULTS} == GSPLAT_DEFAULTS
    try:
        import gsplat
    except Exception:  # noqa: BLE001 -- any import failure means there is no gsplat to compare with
        gsplat = None
    if gsplat is not None:
        theirs = inspect.signature(gsplat.rasterization).parameters
        assert tuple(theirs)[: len(GSPLAT_POSITIONAL)] == GSPLAT_POSITIONAL
        shared = [k for k in ours if k not in ("backend", "check_values")]
        assert {k: theirs[k].default for k in shared} == {k: ours[k].default for k in shared}
    # Calls bind as for a plain function: positionally, by keyword, and TypeError on a wrong call.
    args = _args()
    by_kw, _, _ = rasterize_gaussians(**args, tile_size=8, backend="warp")
    by_pos, _, _ = rasterize_gaussians(*args.values(), 0.01, 1e10, 0.0, 0.3, None, None, "RGB", "classic", 8, False,
                                       "warp")
    assert torch.equal(by_kw, by_pos)
    with pytest.raises(TypeError):
        rasterize_gaussians(**args, bogus=1)
    with pytest.raises(TypeError):
        rasterize_gaussians(*args.values(), width=W)
    with pytest.raises(TypeError):
        R.rasterize_gaussians(**args, backend="warp")


def test_references_import_only_torch() -> None:
    """The oracle and the torch-tiles peer run without Warp: neither imports it, even indirectly."""
    import subprocess
    import sys

    code = ("import sys, sparse3d.kernels.reference.gaussian_raster, sparse3d.bench.torch_tiles; "
            "sys.exit('warp' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_backend_selection() -> None:
    args = _args()
    _, _, meta = rasterize_gaussians(**args, backend="warp")
    assert meta["backend"] == "warp"
    if not torch.cuda.is_available():
        _, _, meta = rasterize_gaussians(**args)  # auto
        assert meta["backend"] == "warp"
        with pytest.raises(ValueError, match="backend='gsplat' needs CUDA"):
            rasterize_gaussians(**args, backend="gsplat")


def test_auto_backend_picks_gsplat_only_on_cuda_with_gsplat(monkeypatch) -> None:
    from sparse3d.kernels import backends

    monkeypatch.setattr(backends.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backends, "module_importable", lambda name: name == "gsplat")
    assert backends.select_raster_backend("auto", torch.device("cuda")) == "gsplat"
    assert backends.select_raster_backend("gsplat", torch.device("cuda")) == "gsplat"
    assert backends.select_raster_backend("warp", torch.device("cuda")) == "warp"
    assert backends.select_raster_backend("auto", torch.device("cpu")) == "warp"
    monkeypatch.setattr(backends, "module_importable", lambda name: False)
    assert backends.select_raster_backend("auto", torch.device("cuda")) == "warp"
    with pytest.raises(ValueError, match="not importable"):
        backends.select_raster_backend("gsplat", torch.device("cuda"))


def test_gsplat_dispatch_passes_gsplat_arguments_and_adds_median_depth(monkeypatch) -> None:
    """The gsplat path on a CPU machine: a stand-in ``gsplat.rasterization`` that renders with our Warp backend
    (same outputs and meta layout as gsplat) checks the argument names against the installed gsplat's signature
    when there is one, and that the glue's median depth from gsplat's tile lists equals the Warp one."""
    import inspect
    import sys
    import types

    import sparse3d.render.gaussians as G

    real = sys.modules.get("gsplat")
    if real is None:
        try:
            import gsplat as real
        except Exception:
            real = None
    accepted = set(inspect.signature(real.rasterization).parameters) if real is not None else None
    calls = []

    def fake_rasterization(*args, **kw):
        calls.append(kw)
        if accepted is not None:
            assert set(kw) <= accepted, set(kw) - accepted
        assert kw["packed"] is False  # the glue reads gsplat's dense (C, N) meta
        warp_kw = {k: v for k, v in kw.items() if k != "packed"}
        colors, alphas, meta = rasterize_gaussians(*args, **warp_kw, backend="warp")
        meta = {k: v for k, v in meta.items() if k not in ("median_depths", "backend")}
        return colors, alphas, meta

    monkeypatch.setitem(sys.modules, "gsplat", types.SimpleNamespace(rasterization=fake_rasterization))
    monkeypatch.setattr(G, "select_raster_backend", lambda b, d: "warp" if b == "warp" else "gsplat")
    s = _scene(3, n=40)
    vm, Ks = _cameras(2)
    args = dict(means=s["means"], quats=s["quats"], scales=s["scales"], opacities=s["opacities"],
                colors=s["colors"], viewmats=vm, Ks=Ks, width=W, height=H, render_mode="RGB+ED")
    img_g, alpha_g, meta_g = rasterize_gaussians(**args)
    img_w, alpha_w, meta_w = rasterize_gaussians(**args, backend="warp")
    assert len(calls) == 1 and meta_g["backend"] == "gsplat"
    torch.testing.assert_close(img_g, img_w, rtol=0, atol=0)
    torch.testing.assert_close(alpha_g, alpha_w, rtol=0, atol=0)
    assert meta_w["median_depths"].abs().sum() > 0
    torch.testing.assert_close(meta_g["median_depths"], meta_w["median_depths"], rtol=0, atol=0)


def test_non_contiguous_inputs() -> None:
    s = _scene(12)
    vm, Ks = _cameras(2)
    img, alpha, _ = _render(s, vm, Ks)
    nc = {k: v.t().contiguous().t() if v.dim() == 2 else v for k, v in s.items()}
    assert not nc["means"].is_contiguous()
    img2, alpha2, _ = _render(nc, vm, Ks)
    assert torch.equal(img, img2) and torch.equal(alpha, alpha2)


def test_sh_and_projection_match_gsplat_torch_impl() -> None:
    impl = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat not installed")
    from sparse3d.kernels.gaussian_sh import eval_sh_colors

    g = torch.Generator().manual_seed(3)
    coeffs, dirs = torch.randn(300, 16, 3, generator=g), torch.randn(300, 3, generator=g)
    for degree in range(4):
        want = torch.clamp_min(impl._spherical_harmonics(degree, dirs, coeffs) + 0.5, 0.0)
        torch.testing.assert_close(eval_sh_colors(degree, dirs, coeffs), want, rtol=1e-5, atol=1e-5)
    s = _scene(13, n=300)
    vm, Ks = _cameras(2)
    rs = R.quat_to_rotmat(s["quats"]) * s["scales"][:, None, :]
    covars = rs @ rs.transpose(1, 2)
    radii, means2d, depths, conics, _ = impl._fully_fused_projection(s["means"], covars, vm, Ks, W, H)
    ours = project_gaussians(s["means"], s["quats"], s["scales"], torch.ones(300), vm, Ks, W, H, 0.01, 1e10, 0.0,
                             0.3, False)
    ok = (radii > 0).all(-1) & (ours["radii"] > 0).all(-1)
    assert int(ok.sum()) > 200
    torch.testing.assert_close(ours["means2d"][ok], means2d[ok], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ours["depths"][ok], depths[ok])
    torch.testing.assert_close(ours["conics"][ok], conics[ok], rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------- projection kernel alone
PROJ_OUTPUTS = ("means2d", "depths", "conics", "opacities")
PROJ_PARAMS = ("means", "quats", "scales", "opacities")


def _project_both(seed: int, n_cams: int, antialiased: bool, **kw):
    """(ours, oracle) outputs and gradients of one random weighting of all float outputs."""
    scene = _scene(seed, n=120)
    vm, Ks = _cameras(n_cams)
    results = []
    for dtype, fn in ((torch.float32, project_gaussians), (torch.float64, R.project)):
        leaves = {k: scene[k].to(dtype).clone().requires_grad_(True) for k in PROJ_PARAMS}
        vm_leaf = vm.to(dtype).clone().requires_grad_(True)
        out = fn(*(leaves[k] for k in PROJ_PARAMS), vm_leaf, Ks.to(dtype), W, H, antialiased=antialiased, **kw)
        g = torch.Generator().manual_seed(seed + 100)
        loss = sum((out[k] * torch.randn(out[k].shape, generator=g, dtype=torch.float64).to(dtype)).sum()
                   for k in PROJ_OUTPUTS)
        grads = torch.autograd.grad(loss, [*leaves.values(), vm_leaf])
        results.append((out, dict(zip([*PROJ_PARAMS, "viewmats"], grads))))
    return results


@pytest.mark.parametrize("antialiased", [False, True])
@pytest.mark.parametrize(("seed", "n_cams"), [(0, 1), (1, 2), (2, 2)])
def test_projection_matches_oracle(seed: int, n_cams: int, antialiased: bool) -> None:
    (ours, g_ours), (ref, g_ref) = _project_both(seed, n_cams, antialiased)
    assert torch.equal(ours["radii"], ref["radii"])
    visible = (ref["radii"] > 0).all(-1)
    assert 80 * n_cams < int(visible.sum()) < 120 * n_cams  # mostly visible, some culled
    assert (ours["radii"][:, [0, 1, 5, 6]] == 0).all()  # behind, outside, zero and sub-1/255 opacity
    for k in PROJ_OUTPUTS:
        torch.testing.assert_close(ours[k].double(), ref[k], rtol=1e-5, atol=1e-4 if k == "means2d" else 1e-5)
    for name, r in g_ref.items():
        assert float(r.norm()) > 0, name
        assert _rel(g_ours[name], r) < 1e-5, (name, _rel(g_ours[name], r))


def test_culled_entries_follow_gsplat() -> None:
    """Culled: zero geometry; opacity stays ``o`` in classic mode (repeated) and is 0 in antialiased mode."""
    scene = _scene(4, n=40)
    vm, Ks = _cameras(1)
    args = [scene[k] for k in PROJ_PARAMS] + [vm, Ks, W, H, 0.01, 1e10, 0.0, 0.3]
    for aa in (False, True):
        out = KP.project_fwd(*args, aa)
        culled = (out.radii == 0).all(-1)
        assert culled.any()
        for t in (out.means2d, out.conics):
            assert not t[culled].any()
        assert not out.depths[culled].any()
        want = torch.zeros_like(out.opacities[culled]) if aa else scene["opacities"][None].expand_as(culled)[culled]
        assert torch.equal(out.opacities[culled], want)


def test_near_far_and_radius_clip() -> None:
    scene = _scene(5, n=120)
    vm, Ks = _cameras(1)
    params = [scene[k] for k in PROJ_PARAMS]
    base = project_gaussians(*params, vm, Ks, W, H)
    z = (scene["means"] @ vm[0, :3, :3].T + vm[0, :3, 3])[:, 2]
    cut = project_gaussians(*params, vm, Ks, W, H, near_plane=3.0, far_plane=4.0)
    outside = (z < 3.0) | (z > 4.0)
    assert (cut["radii"][0, outside] == 0).all()
    assert torch.equal(cut["radii"][0, ~outside], base["radii"][0, ~outside])
    clipped = project_gaussians(*params, vm, Ks, W, H, radius_clip=3.0)
    small = (base["radii"][0] <= 3).all(-1)
    assert small.any() and (clipped["radii"][0, small] == 0).all()
    assert torch.equal(clipped["radii"][0, ~small], base["radii"][0, ~small])


def test_gradient_against_finite_differences() -> None:
    """An analytic check independent of the oracle: central differences in float64 of the float32 kernel's
    loss would be too noisy, so use the oracle's float64 graph only to confirm the direction's slope."""
    scene = _scene(6, n=30)
    vm, Ks = _cameras(2)
    leaves = {k: scene[k].clone().requires_grad_(True) for k in PROJ_PARAMS}
    out = project_gaussians(*leaves.values(), vm, Ks, W, H)
    loss = out["means2d"].sum() + out["conics"].sum() + out["depths"].sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    g = torch.Generator().manual_seed(0)
    direction = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in scene.items() if k in PROJ_PARAMS}
    slope = sum(float((gr.double() * direction[k]).sum()) for gr, k in zip(grads, PROJ_PARAMS))

    def f(eps: float) -> float:
        moved = [scene[k].double() + eps * direction[k] for k in PROJ_PARAMS]
        o = R.project(*moved, vm.double(), Ks.double(), W, H)
        return float(o["means2d"].sum() + o["conics"].sum() + o["depths"].sum())

    eps = 1e-6
    fd = (f(eps) - f(-eps)) / (2 * eps)
    assert abs(slope - fd) <= 1e-4 * max(1.0, abs(fd)), (slope, fd)


def test_bad_inputs_raise_clear_errors() -> None:
    scene = _scene(0, n=10)
    vm, Ks = _cameras(1)
    args = [scene[k] for k in PROJ_PARAMS] + [vm, Ks, W, H, 0.01, 1e10, 0.0, 0.3, False]
    bad = list(args)
    bad[1] = scene["quats"][:, :3]
    with pytest.raises(ValueError, match="quats must have shape"):
        KP.project_fwd(*bad)
    bad = list(args)
    bad[0] = scene["means"].double()
    with pytest.raises(ValueError, match="means"):
        KP.project_fwd(*bad)
    bad = list(args)
    bad[5] = Ks[:, :2]
    with pytest.raises(ValueError, match="Ks must have shape"):
        KP.project_fwd(*bad)


def test_compositing_records_follow_the_intersection_order() -> None:
    """The forward's records are one row per intersection, in the sorted order: row ``idx`` describes Gaussian
    ``flatten_ids[idx]`` (mean, conic, opacity, depth, colour)."""
    scene = _scene(4)
    vm, Ks = _cameras(2)
    with torch.no_grad():
        proj = project_gaussians(scene["means"], scene["quats"], scene["scales"], scene["opacities"], vm, Ks, W, H)
    c_n, n = proj["means2d"].shape[:2]
    colors = torch.rand(c_n, n, 3, generator=torch.Generator().manual_seed(5))
    isect = KT.intersect_tiles(proj["means2d"], proj["radii"], proj["depths"], 16, 3, 2)
    assert isect.flatten_ids.numel() > n  # some Gaussians cover several tiles
    out = KC.rasterize_to_pixels_fwd(proj["means2d"], proj["conics"], colors, proj["opacities"], proj["depths"],
                                    None, isect.isect_offsets, isect.flatten_ids, W, H, 16)
    ids = isect.flatten_ids.long()
    assert out.records.shape == (ids.numel(), KC.record_width(3))
    rec = out.records
    assert torch.equal(rec[:, KC.REC_MEAN:KC.REC_MEAN + 2], proj["means2d"].reshape(-1, 2)[ids])
    assert torch.equal(rec[:, KC.REC_CONIC:KC.REC_CONIC + 3], proj["conics"].reshape(-1, 3)[ids])
    assert torch.equal(rec[:, KC.REC_OPACITY], proj["opacities"].reshape(-1)[ids])
    assert torch.equal(rec[:, KC.REC_DEPTH], proj["depths"].reshape(-1)[ids])
    assert torch.equal(rec[:, KC.REC_COLOR:KC.REC_COLOR + 3], colors.reshape(-1, 3)[ids])
