"""Peer "torch-tiles": a tile-based 3D Gaussian rasterizer in plain PyTorch, the way pure-torch 3DGS ports do it.

This is the benchmark's stand-in for the CPU-runnable PyTorch rasterizers people use when gsplat's CUDA
kernels are unavailable (educational tile loops such as ``gsplat-pytorch`` / ``torch-splatting``): projection
and SH colours vectorised over all Gaussians, then a Python loop over 16×16 tiles that gathers the tile's
depth-sorted Gaussians and evaluates alpha for all of the tile's pixels at once (a ``(P, 256)`` tensor),
with transmittance from ``cumprod(1 - alpha)``. Backward is torch autograd through all of it -- which is what
makes such ports memory-hungry, and is exactly what the benchmark measures.

It is written independently of :mod:`sparse3d.render` (own projection, SH and binning) so agreement between
the two is evidence, not tautology. Semantics follow gsplat 1.5.3 "classic" RGB rendering: quaternions
(w, x, y, z), activated scales/opacities, the eps2d blur, gsplat's clamped-FoV Jacobian, the opacity-aware
3.33σ bounding box, alpha = min(0.999, o·exp(-σ)) skipped below 1/255, SH colours + 0.5 clamped at 0, and
gsplat's 1e-4 early stop. The early stop costs one mask here (transmittance is non-increasing, so "still
above 1e-4 after this Gaussian" selects exactly the Gaussians a front-to-back loop would composite). Many
ports omit it; that is not a 1e-4 effect: the Gaussian that would take T below 1e-4 is dropped whole, so
behind nearly opaque stacks pixels change by up to about T·alpha (~1e-2 in the unit test's opaque scene).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sparse3d.kernels.gaussian_args import RasterizeArgs, takes_rasterize_args

__all__ = ["rasterize_torch_tiles", "project_gaussians", "eval_sh", "quat_scale_to_covar"]

ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
TRANSMITTANCE_EPS = 1e-4
EXTEND_SIGMAS = 3.33

_SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
          -0.4570457994644658, 1.445305721320277, -0.5900435899266435)  # fmt: skip


def quat_scale_to_covar(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) world covariances R S Sᵀ Rᵀ from (w, x, y, z) quaternions (normalised here) and scales."""
    w, x, y, z = (quats / quats.norm(dim=-1, keepdim=True)).unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*quats.shape[:-1], 3, 3)  # fmt: skip
    m = rot * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def eval_sh(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Real SH of ``degree`` (0..3) at unit-normalised ``dirs`` (N, 3), coefficients (N, K, D) -> (N, D).

    The 3DGS/gsplat basis and sign convention; only the first (degree + 1)² coefficients are used.
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"sh_degree must be in 0..3, got {degree}")
    if coeffs.shape[-2] < (degree + 1) ** 2:
        raise ValueError(f"sh_degree {degree} needs {(degree + 1) ** 2} coefficients, colors has {coeffs.shape[-2]}")
    out = _SH_C0 * coeffs[:, 0]
    if degree == 0:
        return out
    x, y, z = (dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)).unbind(-1)
    basis = [-_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        basis += [_SH_C2[0] * x * y, _SH_C2[1] * y * z, _SH_C2[2] * (2 * zz - xx - yy), _SH_C2[3] * x * z,
                  _SH_C2[4] * (xx - yy)]
    if degree >= 3:
        basis += [_SH_C3[0] * y * (3 * xx - yy), _SH_C3[1] * x * y * z, _SH_C3[2] * y * (4 * zz - xx - yy),
                  _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _SH_C3[4] * x * (4 * zz - xx - yy),
                  _SH_C3[5] * z * (xx - yy), _SH_C3[6] * x * (xx - 3 * yy)]
    b = torch.stack(basis, dim=-1)  # (N, K - 1)
    return out + (b[:, :, None] * coeffs[:, 1 : len(basis) + 1]).sum(1)


def project_gaussians(
    means: torch.Tensor,
    covars: torch.Tensor,
    opacities: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
) -> dict[str, torch.Tensor]:
    """EWA projection of N Gaussians into one pinhole camera (gsplat 1.5.3 fused-projection rules).

    Returns ``means2d`` (N, 2), ``conics`` (N, 3) = (a, b, c) of the inverse 2-D covariance, ``depths`` (N,),
    ``radii`` (N, 2) int (0 = culled) and ``visible`` (N,) bool.
    """
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]
    mean_c = means @ rot.T + trans
    cov_c = rot @ covars @ rot.T
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tx, ty, tz = mean_c.unbind(-1)
    tz_safe = torch.where(tz.abs() > 1e-12, tz, torch.full_like(tz, 1e-12))  # culled below; avoid inf/NaN grads
    lim_x = ((width - cx) / fx + 0.15 * width / fx, cx / fx + 0.15 * width / fx)  # FoV + 30 % margin
    lim_y = ((height - cy) / fy + 0.15 * height / fy, cy / fy + 0.15 * height / fy)
    txc = tz_safe * torch.clamp(tx / tz_safe, min=-lim_x[1], max=lim_x[0])
    tyc = tz_safe * torch.clamp(ty / tz_safe, min=-lim_y[1], max=lim_y[0])
    zero = torch.zeros_like(tz)
    jac = torch.stack(
        [fx / tz_safe, zero, -fx * txc / tz_safe**2, zero, fy / tz_safe, -fy * tyc / tz_safe**2], dim=-1
    ).reshape(-1, 2, 3)
    cov2d = jac @ cov_c @ jac.transpose(-1, -2) + eps2d * torch.eye(2, dtype=means.dtype, device=means.device)
    means2d = torch.stack([fx * tx / tz_safe + cx, fy * ty / tz_safe + cy], dim=-1)
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)

    with torch.no_grad():
        o = opacities.detach()
        extend = torch.sqrt(2.0 * torch.log(o.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp(max=EXTEND_SIGMAS)
        rx = torch.ceil(extend * torch.sqrt(a.detach().clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.detach().clamp_min(0)))
        mx, my = means2d.detach().unbind(-1)
        visible = (
            (tz >= near_plane) & (tz <= far_plane) & (det > 0) & (o >= ALPHA_THRESHOLD)
            & ((rx > radius_clip) | (ry > radius_clip))
            & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        )  # fmt: skip
        radii = torch.stack([rx, ry], dim=-1).where(visible[:, None], 0).to(torch.int32)
    return {"means2d": means2d, "conics": conics, "depths": tz, "radii": radii, "visible": visible}


def _tile_pairs(
    means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor, visible: torch.Tensor,
    tiles_x: int, tiles_y: int, tile_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Gaussian id, tile id) of every overlap, sorted by tile then depth (front to back)."""
    ids = torch.nonzero(visible).squeeze(1)
    ids = ids[torch.sort(depths.detach()[ids], stable=True).indices]  # depth order first ...
    m = means2d.detach()[ids] / tile_size
    r = radii[ids].to(m.dtype) / tile_size
    x0 = torch.floor(m[:, 0] - r[:, 0]).clamp(0, tiles_x).long()
    x1 = torch.ceil(m[:, 0] + r[:, 0]).clamp(0, tiles_x).long()
    y0 = torch.floor(m[:, 1] - r[:, 1]).clamp(0, tiles_y).long()
    y1 = torch.ceil(m[:, 1] + r[:, 1]).clamp(0, tiles_y).long()
    w, h = x1 - x0, y1 - y0
    count = w * h
    pair_gauss = torch.repeat_interleave(torch.arange(ids.numel(), device=ids.device), count)
    start = torch.cumsum(count, 0) - count
    local = torch.arange(int(count.sum()), device=ids.device) - torch.repeat_interleave(start, count)
    wp = w[pair_gauss].clamp_min(1)
    tile = (y0[pair_gauss] + local // wp) * tiles_x + x0[pair_gauss] + local % wp
    order = torch.sort(tile, stable=True).indices  # ... then a stable sort by tile keeps depth order per tile
    return ids[pair_gauss[order]], tile[order]


@takes_rasterize_args
def rasterize_torch_tiles(a: RasterizeArgs) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Render C cameras; same inputs/outputs as :func:`sparse3d.render.rasterize_gaussians` (RGB, classic).

    ``colors`` is (N, D) or, with ``sh_degree``, SH coefficients (N, K, 3). Returns ``render_colors``
    (C, H, W, D), ``render_alphas`` (C, H, W, 1) and a meta dict (per-camera projections, pair counts).
    """
    means, quats, scales, opacities, colors, viewmats, Ks, width, height = a[:9]
    sh_degree, backgrounds, tile_size = a.sh_degree, a.backgrounds, a.tile_size
    if a.render_mode != "RGB" or a.rasterize_mode != "classic":
        raise ValueError(f"torch-tiles supports render_mode='RGB', rasterize_mode='classic' only, "
                         f"got {a.render_mode!r}, {a.rasterize_mode!r}")
    n = means.shape[0]
    if means.shape != (n, 3) or quats.shape != (n, 4) or scales.shape != (n, 3) or opacities.shape != (n,):
        raise ValueError(f"means/quats/scales/opacities must be (N,3)/(N,4)/(N,3)/(N,), got {tuple(means.shape)}, "
                         f"{tuple(quats.shape)}, {tuple(scales.shape)}, {tuple(opacities.shape)}")
    if sh_degree is None and (colors.dim() != 2 or colors.shape[0] != n):
        raise ValueError(f"colors must be (N, D) without sh_degree, got {tuple(colors.shape)}")
    if sh_degree is not None and (colors.dim() != 3 or colors.shape[0] != n or colors.shape[2] != 3):
        raise ValueError(f"colors must be SH coefficients (N, K, 3) with sh_degree, got {tuple(colors.shape)}")
    if viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4) or Ks.shape != (viewmats.shape[0], 3, 3):
        raise ValueError(f"viewmats must be (C, 4, 4) and Ks (C, 3, 3), got {tuple(viewmats.shape)}, {tuple(Ks.shape)}")

    covars = quat_scale_to_covar(quats, scales)
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    dim = colors.shape[-1]
    # Pixel index of every pixel in tile-major order, to put the per-tile results back in row-major order.
    tile_pixels: list[tuple[torch.Tensor, torch.Tensor]] = []  # (pixel centres (P, 2), flat pixel ids (P,))
    for ty in range(tiles_y):
        for tx in range(tiles_x):
            ys = torch.arange(ty * tile_size, min((ty + 1) * tile_size, height))
            xs = torch.arange(tx * tile_size, min((tx + 1) * tile_size, width))
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            centres = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1).to(means.dtype) + 0.5
            tile_pixels.append((centres.to(means.device), (yy * width + xx).reshape(-1)))
    inverse = torch.empty(width * height, dtype=torch.long)
    inverse[torch.cat([p for _, p in tile_pixels])] = torch.arange(width * height)
    inverse = inverse.to(means.device)

    images, alphas, metas = [], [], []
    for cam in range(viewmats.shape[0]):
        proj = project_gaussians(means, covars, opacities, viewmats[cam], Ks[cam], width, height,
                                 a.near_plane, a.far_plane, a.radius_clip, a.eps2d)
        if sh_degree is None:
            cols = colors
        else:
            campos = -viewmats[cam, :3, :3].T @ viewmats[cam, :3, 3]
            cols = torch.clamp_min(eval_sh(sh_degree, means - campos, colors) + 0.5, 0.0)
        gauss, tile = _tile_pairs(proj["means2d"], proj["radii"], proj["depths"], proj["visible"],
                                  tiles_x, tiles_y, tile_size)
        bounds = torch.searchsorted(tile, torch.arange(tiles_x * tiles_y + 1, device=tile.device)).tolist()
        out_c, out_t = [], []
        for t, (centres, _) in enumerate(tile_pixels):
            lo, hi = bounds[t], bounds[t + 1]
            if lo == hi:
                out_c.append(colors.new_zeros(centres.shape[0], dim))
                out_t.append(colors.new_ones(centres.shape[0]))
                continue
            g = gauss[lo:hi]
            d = proj["means2d"][g][:, None, :] - centres[None]  # (P, pixels, 2)
            con = proj["conics"][g]
            sigma = 0.5 * (con[:, None, 0] * d[..., 0] ** 2 + con[:, None, 2] * d[..., 1] ** 2) \
                + con[:, None, 1] * d[..., 0] * d[..., 1]
            alpha = torch.clamp_max(opacities[g][:, None] * torch.exp(-sigma), MAX_ALPHA)
            alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))
            t_after = torch.cumprod(1.0 - alpha, dim=0)
            keep = (t_after > TRANSMITTANCE_EPS).detach()  # gsplat's early stop (exclusive)
            t_before = torch.cat([torch.ones_like(t_after[:1]), t_after[:-1]], dim=0)
            weight = alpha * t_before * keep
            out_c.append(weight.T @ cols[g])
            out_t.append(torch.prod(1.0 - alpha * keep, dim=0))
        img = torch.cat(out_c)[inverse].reshape(height, width, dim)
        trans = torch.cat(out_t)[inverse].reshape(height, width, 1)
        if backgrounds is not None:
            img = img + trans * backgrounds[cam].reshape(1, 1, dim)
        images.append(img)
        alphas.append(1.0 - trans)
        metas.append({**{k: v for k, v in proj.items() if k != "visible"}, "n_isects": int(gauss.numel())})
    meta = {key: [m[key] for m in metas] for key in metas[0]} if metas else {}
    meta.update({"tile_size": tile_size, "tile_width": tiles_x, "tile_height": tiles_y})
    return torch.stack(images), torch.stack(alphas), meta
