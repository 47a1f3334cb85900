"""The torch-tiles benchmark peer computes the image gsplat's rules define.

Oracles: a closed-form single isotropic Gaussian; a per-pixel front-to-back loop over *all* Gaussians (no
tiles, no bounding boxes, its own quaternion and projection maths) on tiny scenes; SH orthonormality on the
sphere; and, when gsplat is importable, gsplat's own pure-torch projection and SH. The peer applies gsplat's
1e-4 early stop, so agreement is to float32 round-off (tolerances 1e-5), not the looser ~1e-4 a port
without the early stop would need.
"""

from __future__ import annotations

import math

import pytest
import torch

from sparse3d.bench.torch_tiles import eval_sh, project_gaussians, quat_scale_to_covar, rasterize_torch_tiles
from sparse3d.cameras import look_at

torch.set_default_dtype(torch.float32)


def _qmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


def _rot_by_conjugation(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices whose columns are q e_i q* (Hamilton product), a different route than the peer's."""
    q = q / q.norm(dim=-1, keepdim=True)
    conj = q * torch.tensor([1.0, -1, -1, -1], dtype=q.dtype)
    cols = []
    for i in range(3):
        e = torch.zeros(q.shape[0], 4, dtype=q.dtype)
        e[:, i + 1] = 1
        cols.append(_qmul(_qmul(q, e), conj)[:, 1:])
    return torch.stack(cols, -1)


def _look_at(eye: list[float], target: list[float]) -> torch.Tensor:
    """World-to-camera (OpenCV: x right, y down, z forward) looking from eye at target."""
    R = look_at(eye, target, up=(0.0, 1.0, 0.0))
    view = torch.eye(4, dtype=torch.float64)
    view[:3, :3] = torch.from_numpy(R)
    view[:3, 3] = -view[:3, :3] @ torch.tensor(eye, dtype=torch.float64)
    return view.float()


def _dense_loop(
    means, quats, scales, opac, colors, view, K, w, h, bg=None, early_stop: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel front-to-back compositing over every Gaussian in front of the camera (float64)."""
    means, scales, colors, opac = means.double(), scales.double(), colors.double(), opac.double()
    rot = _rot_by_conjugation(quats.double())
    cov = rot @ torch.diag_embed(scales**2) @ rot.transpose(1, 2)
    v = view.double()
    mc = means @ v[:3, :3].T + v[:3, 3]
    covc = v[:3, :3] @ cov @ v[:3, :3].T
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    img = torch.zeros(h, w, colors.shape[1], dtype=torch.float64)
    alpha_img = torch.zeros(h, w, 1, dtype=torch.float64)
    order = [int(i) for i in torch.argsort(mc[:, 2]) if mc[i, 2] > 0.01]
    gauss = []
    for i in order:
        x, y, z = mc[i].tolist()
        jac = torch.tensor([[fx / z, 0, -fx * x / z**2], [0, fy / z, -fy * y / z**2]], dtype=torch.float64)
        cov2 = jac @ covc[i] @ jac.T + 0.3 * torch.eye(2, dtype=torch.float64)
        gauss.append((fx * x / z + cx, fy * y / z + cy, torch.linalg.inv(cov2), i))
    for r in range(h):
        for c in range(w):
            t, acc = 1.0, torch.zeros(colors.shape[1], dtype=torch.float64)
            for mx, my, inv, i in gauss:
                d = torch.tensor([mx - (c + 0.5), my - (r + 0.5)], dtype=torch.float64)
                sigma = 0.5 * float(d @ inv @ d)
                a = min(0.999, float(opac[i]) * math.exp(-sigma))
                if sigma < 0 or a < 1 / 255:
                    continue
                if early_stop and t * (1 - a) <= 1e-4:
                    break
                acc += colors[i] * a * t
                t *= 1 - a
            img[r, c] = acc + (t * bg.double() if bg is not None else 0)
            alpha_img[r, c] = 1 - t
    return img.float(), alpha_img.float()


def _scene(n: int, seed: int, opacity_range=(0.05, 0.95), max_scale: float = 0.15) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    means = torch.stack([(torch.rand(n, generator=g) - 0.5) * 1.6, (torch.rand(n, generator=g) - 0.5) * 1.2,
                         2.0 + 2.0 * torch.rand(n, generator=g)], 1)
    quats = torch.randn(n, 4, generator=g)
    scales = 0.02 + max_scale * torch.rand(n, 3, generator=g)
    lo, hi = opacity_range
    opac = lo + (hi - lo) * torch.rand(n, generator=g)
    colors = torch.rand(n, 3, generator=g)
    return means, quats, scales, opac, colors


K_SMALL = torch.tensor([[40.0, 0, 18.5], [0, 42.0, 14.0], [0, 0, 1]])  # 37×29 image: partial edge tiles


def test_single_isotropic_gaussian_matches_closed_form() -> None:
    w, h, f, z, s, o = 40, 36, 50.0, 2.0, 0.1, 0.8
    K = torch.tensor([[f, 0, 20.0], [0, f, 18.0], [0, 0, 1]])
    color = torch.tensor([[0.2, 0.5, 0.9]])
    bg = torch.tensor([[0.1, 0.1, 0.1]])
    img, alpha, meta = rasterize_torch_tiles(
        torch.tensor([[0.0, 0.0, z]]), torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), s), torch.tensor([o]),
        color, torch.eye(4)[None], K[None], w, h, backgrounds=bg)
    var = (f * s / z) ** 2 + 0.3  # J Σ Jᵀ + eps2d at the optical axis
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    a = (o * torch.exp(-0.5 * ((xs - 20) ** 2 + (ys - 18) ** 2) / var)).clamp(max=0.999)
    a = torch.where(a >= 1 / 255, a, torch.zeros_like(a))
    torch.testing.assert_close(alpha[0, ..., 0], a, atol=1e-6, rtol=0)
    torch.testing.assert_close(img[0], a[..., None] * color + (1 - a[..., None]) * bg, atol=1e-6, rtol=0)
    assert meta["radii"][0].tolist() == [[math.ceil(math.sqrt(2 * math.log(o * 255)) * math.sqrt(var))] * 2]


@pytest.mark.parametrize("seed,opacity_range,max_scale", [(0, (0.05, 0.95), 0.15), (1, (0.99, 1.0), 0.4)])
def test_matches_dense_per_pixel_loop(seed: int, opacity_range: tuple[float, float], max_scale: float) -> None:
    """Includes Gaussians straddling tile borders and the image edge; large opaque ones trigger the early stop."""
    means, quats, scales, opac, colors = _scene(25, seed, opacity_range, max_scale)
    views = torch.stack([_look_at([0, 0, 0], [0, 0, 1]), _look_at([0.3, -0.2, -0.1], [0, 0, 3])])
    bgs = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.6, 0.9]])
    img, alpha, meta = rasterize_torch_tiles(means, quats, scales, opac, colors, views, K_SMALL.expand(2, 3, 3),
                                             37, 29, backgrounds=bgs)
    assert img.shape == (2, 29, 37, 3) and alpha.shape == (2, 29, 37, 1)
    for cam in range(2):
        ref_img, ref_alpha = _dense_loop(means, quats, scales, opac, colors, views[cam], K_SMALL, 37, 29, bgs[cam])
        torch.testing.assert_close(img[cam], ref_img, atol=1e-5, rtol=0)
        torch.testing.assert_close(alpha[cam], ref_alpha, atol=1e-5, rtol=0)
    if opacity_range[0] >= 0.99:  # the early stop was exercised: without it the image would differ
        no_stop, _ = _dense_loop(means, quats, scales, opac, colors, views[0], K_SMALL, 37, 29, bgs[0], False)
        assert float((no_stop - img[0]).abs().max()) > 1e-5
    assert all(n > 0 for n in meta["n_isects"])


def _dense_torch(means, quats, scales, opac, colors, view, K, w, h) -> torch.Tensor:
    """Differentiable dense oracle: all Gaussians × all pixels, cumprod transmittance, no tiles."""
    rot = _rot_by_conjugation(quats)
    cov = rot @ torch.diag_embed(scales**2) @ rot.transpose(1, 2)
    mc = means @ view[:3, :3].T + view[:3, 3]
    covc = view[:3, :3] @ cov @ view[:3, :3].T
    x, y, z = mc.unbind(-1)
    zero = torch.zeros_like(z)
    jac = torch.stack([K[0, 0] / z, zero, -K[0, 0] * x / z**2, zero, K[1, 1] / z, -K[1, 1] * y / z**2], -1)
    jac = jac.reshape(-1, 2, 3)
    inv = torch.linalg.inv(jac @ covc @ jac.transpose(1, 2) + 0.3 * torch.eye(2))
    m2 = torch.stack([K[0, 0] * x / z + K[0, 2], K[1, 1] * y / z + K[1, 2]], -1)
    order = torch.argsort(z.detach())
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)
    d = m2[order][:, None] - pix[None]
    sigma = 0.5 * torch.einsum("gpi,gij,gpj->gp", d, inv[order], d)
    a = (opac[order][:, None] * torch.exp(-sigma)).clamp(max=0.999)
    a = torch.where(a >= 1 / 255, a, torch.zeros_like(a))
    t_after = torch.cumprod(1 - a, 0)
    keep = (t_after > 1e-4).detach()
    t_before = torch.cat([torch.ones_like(t_after[:1]), t_after[:-1]])
    return ((a * t_before * keep).T @ colors[order]).reshape(h, w, -1)


def test_gradients_match_dense_autograd() -> None:
    params = [p.clone().requires_grad_(True) for p in _scene(12, 3)]
    view, K = _look_at([0.1, 0, 0], [0, 0, 3]), K_SMALL
    target = torch.rand(29, 37, 3, generator=torch.Generator().manual_seed(5))
    img, _, _ = rasterize_torch_tiles(*params, view[None], K[None], 37, 29)
    ((img[0] - target) ** 2).sum().backward()
    ours = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    ((_dense_torch(*params, view, K, 37, 29) - target) ** 2).sum().backward()
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), ours, [p.grad for p in params]):
        assert float(b.abs().max()) > 0, name
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-3, msg=name)


def test_sh_colours_degree_zero_and_orthonormal_basis() -> None:
    dc = torch.rand(4, 1, 3)
    torch.testing.assert_close(eval_sh(0, torch.randn(4, 3), dc), 0.28209479177387814 * dc[:, 0])
    # Fibonacci-lattice quadrature over the sphere: the 16 real SH basis functions are orthonormal.
    m = 200_000
    i = torch.arange(m, dtype=torch.float64) + 0.5
    zc = 1 - 2 * i / m
    phi = math.pi * (1 + 5**0.5) * i
    dirs = torch.stack([torch.sqrt(1 - zc**2) * torch.cos(phi), torch.sqrt(1 - zc**2) * torch.sin(phi), zc], 1)
    basis = torch.stack([eval_sh(3, dirs, torch.eye(16, dtype=torch.float64)[k].expand(m, 16)[..., None])[:, 0]
                         for k in range(16)], 1)
    gram = basis.T @ basis * (4 * math.pi / m)
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="sh_degree"):
        eval_sh(4, dirs[:2], torch.zeros(2, 25, 3))


def test_sh_and_projection_match_gsplat_torch_impl() -> None:
    impl = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat not installed")
    g = torch.Generator().manual_seed(7)
    n = 200
    coeffs = torch.randn(n, 16, 3, generator=g)
    dirs = torch.randn(n, 3, generator=g)
    for degree in range(4):
        torch.testing.assert_close(eval_sh(degree, dirs, coeffs), impl._spherical_harmonics(degree, dirs, coeffs),
                                   atol=1e-5, rtol=1e-5)
    means = torch.randn(n, 3, generator=g) * torch.tensor([3.0, 3.0, 1.0]) + torch.tensor([0, 0, 3.0])  # some off-FoV
    quats, scales = torch.randn(n, 4, generator=g), torch.rand(n, 3, generator=g) * 0.2 + 0.01
    covars = quat_scale_to_covar(quats, scales)
    view, K = _look_at([0.2, 0.1, -0.3], [0, 0, 3]), torch.tensor([[300.0, 0, 160], [0, 310.0, 120], [0, 0, 1]])
    radii, means2d, depths, conics, _ = impl._fully_fused_projection(means, covars, view[None], K[None], 320, 240)
    ours = project_gaussians(means, covars, torch.ones(n), view, K, 320, 240)
    ok = radii[0].gt(0).all(-1) & ours["visible"]
    assert int(ok.sum()) > 30
    torch.testing.assert_close(ours["means2d"][ok], means2d[0][ok], atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(ours["depths"][ok], depths[0][ok])
    torch.testing.assert_close(ours["conics"][ok], conics[0][ok], atol=1e-5, rtol=1e-4)
