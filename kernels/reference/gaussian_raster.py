"""Dense plain-torch oracle of the Gaussian rasterizer (:func:`sparse3d.render.rasterize_gaussians` and the
Warp modules behind it: ``gaussian_projection``, ``gaussian_sh``, ``gaussian_tiles``, ``gaussian_composite``).

The rules are those of 3D Gaussian Splatting (Kerbl et al., SIGGRAPH 2023) with EWA projection (Zwicker et al.
2002), as gsplat 1.5.3 implements them (gsplat, Ye et al. 2024; its ``_torch_impl.py`` plays the same role).
Written independently of the fast path, in float64: full-matrix projection (rotation matrix, 2x3 Jacobian,
``torch.linalg.inv``), the classic 3DGS polynomial form of the real SH bands, and per-pixel compositing over ALL
Gaussians of a camera sorted by depth, with the tile membership, the 1/255 / 0.999 / sigma < 0 skips and the
``T <= 1e-4`` stop expressed through cumulative products, so that autograd gives the reference gradients.
Memory is O(C * H * W * N): small images and scenes only.
"""

from __future__ import annotations

import math

import torch

from sparse3d.kernels.gaussian_args import RasterizeArgs, takes_rasterize_args

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_STOP = 1e-4

# Real SH constants in the 3DGS polynomial form (band 0..3).
_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """(N, 4) wxyz (any norm) -> (N, 3, 3) rotation matrices."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def eval_sh(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Colour (..., 3) from SH coefficients (..., K, 3) at directions (..., 3) (normalised here), + 0.5, >= 0."""
    out = _C0 * coeffs[..., 0, :]
    if degree >= 1:
        d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # the kernel's (and F.normalize's) clamp
        x, y, z = (d[..., i : i + 1] for i in range(3))
        out = out + _C1 * (-y * coeffs[..., 1, :] + z * coeffs[..., 2, :] - x * coeffs[..., 3, :])
        if degree >= 2:
            xx, yy, zz = x * x, y * y, z * z
            band2 = (x * y, y * z, 2 * zz - xx - yy, x * z, xx - yy)
            for i, (c, b) in enumerate(zip(_C2, band2)):
                out = out + c * b * coeffs[..., 4 + i, :]
            if degree >= 3:
                band3 = (
                    y * (3 * xx - yy),
                    x * y * z,
                    y * (4 * zz - xx - yy),
                    z * (2 * zz - 3 * xx - 3 * yy),
                    x * (4 * zz - xx - yy),
                    z * (xx - yy),
                    x * (xx - 3 * yy),
                )
                for i, (c, b) in enumerate(zip(_C3, band3)):
                    out = out + c * b * coeffs[..., 9 + i, :]
    return torch.clamp_min(out + 0.5, 0.0)


def project(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    antialiased: bool = False,
) -> dict[str, torch.Tensor]:
    """EWA projection of every Gaussian into every camera; culled entries get radius 0 (and zero geometry)."""
    c_n = viewmats.shape[0]
    rot = quat_to_rotmat(quats)
    cov = rot @ torch.diag_embed(scales * scales) @ rot.transpose(-1, -2)  # (N, 3, 3)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("means2d", "conics", "depths", "radii", "opacities")}
    for c in range(c_n):
        r_w, t_w = viewmats[c, :3, :3], viewmats[c, :3, 3]
        fx, fy, cx, cy = Ks[c, 0, 0], Ks[c, 1, 1], Ks[c, 0, 2], Ks[c, 1, 2]
        p = means @ r_w.T + t_w
        z = p[:, 2]
        in_depth = (z >= near_plane) & (z <= far_plane)
        zs = torch.where(in_depth, z, torch.ones_like(z))
        # Jacobian evaluated at the view-frustum-clamped point (1.3x the half FoV margin, as gsplat does).
        lim_xp = (width - cx) / fx + 0.3 * (0.5 * width / fx)
        lim_xn = cx / fx + 0.3 * (0.5 * width / fx)
        lim_yp = (height - cy) / fy + 0.3 * (0.5 * height / fy)
        lim_yn = cy / fy + 0.3 * (0.5 * height / fy)
        u = torch.minimum(torch.maximum(p[:, 0] / zs, -lim_xn), lim_xp)
        v = torch.minimum(torch.maximum(p[:, 1] / zs, -lim_yn), lim_yp)
        zero = torch.zeros_like(zs)
        jac = torch.stack(
            [
                torch.stack([fx / zs, zero, -fx * u / zs], dim=-1),
                torch.stack([zero, fy / zs, -fy * v / zs], dim=-1),
            ],
            dim=-2,
        )  # (N, 2, 3)
        cov_cam = r_w @ cov @ r_w.T
        cov2d_raw = jac @ cov_cam @ jac.transpose(-1, -2)
        cov2d = cov2d_raw + eps2d * torch.eye(2, dtype=means.dtype)
        det = torch.linalg.det(cov2d)
        ok = in_depth & (det > 0)
        safe = torch.where(ok[:, None, None], cov2d, torch.eye(2, dtype=means.dtype).expand_as(cov2d))
        conic_m = torch.linalg.inv(safe)
        opac = opacities
        if antialiased:
            ratio = torch.linalg.det(cov2d_raw) / torch.where(ok, det, torch.ones_like(det))
            comp = torch.sqrt(torch.where(ratio > 0, ratio, torch.ones_like(ratio))) * (ratio > 0)
            opac = opacities * comp
        m2d = torch.stack([fx * p[:, 0] / zs + cx, fy * p[:, 1] / zs + cy], dim=-1)
        # Opacity-aware 3.33-sigma box per axis (gsplat 1.5.3); not differentiable.
        with torch.no_grad():
            o = opac.detach()
            ext = torch.sqrt(2.0 * torch.log(torch.clamp(o, min=ALPHA_MIN) / ALPHA_MIN)).clamp(max=3.33)
            rx = torch.ceil(ext * safe[:, 0, 0].detach().sqrt())
            ry = torch.ceil(ext * safe[:, 1, 1].detach().sqrt())
            ok = ok & (o >= ALPHA_MIN) & ~((rx <= radius_clip) & (ry <= radius_clip))
            mx, my = m2d[:, 0].detach(), m2d[:, 1].detach()
            ok = ok & ~((mx + rx <= 0) | (mx - rx >= width) | (my + ry <= 0) | (my - ry >= height))
        radii = torch.where(ok[:, None], torch.stack([rx, ry], -1), torch.zeros(1, dtype=rx.dtype))
        if antialiased:  # gsplat leaves the compensation of culled Gaussians at 0
            opac = torch.where(ok, opac, 0.0)
        keep = ok[:, None]
        out["means2d"].append(torch.where(keep, m2d, 0.0))
        conic = torch.stack([conic_m[:, 0, 0], conic_m[:, 0, 1], conic_m[:, 1, 1]], dim=-1)
        out["conics"].append(torch.where(keep, conic, 0.0))
        out["depths"].append(torch.where(ok, z, 0.0))
        out["radii"].append(radii.to(torch.int32))
        out["opacities"].append(opac)
    return {k: torch.stack(v) for k, v in out.items()}


def rasterize_pixels(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    depths: torch.Tensor,
    radii: torch.Tensor,
    width: int,
    height: int,
    tile_size: int = 16,
    backgrounds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense front-to-back compositing per camera: colours (C,H,W,D), alphas (C,H,W,1), median depth (C,H,W,1)."""
    c_n = means2d.shape[0]
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    jj, ii = torch.meshgrid(torch.arange(width), torch.arange(height), indexing="xy")
    px = (jj.reshape(-1) + 0.5).to(means2d.dtype)
    py = (ii.reshape(-1) + 0.5).to(means2d.dtype)
    pix_tx, pix_ty = jj.reshape(-1) // tile_size, ii.reshape(-1) // tile_size
    imgs, alphas, medians = [], [], []
    for c in range(c_n):
        order = torch.sort(depths[c].detach(), stable=True).indices
        visible = (radii[c, order] > 0).all(-1)
        order = order[visible]
        m, q, o = means2d[c, order], conics[c, order], opacities[c, order]
        col, z = colors[c, order], depths[c, order].detach()
        # Tile rectangle of each Gaussian (tile_min inclusive, tile_max exclusive), clamped to the grid.
        r = radii[c, order].to(means2d.dtype)
        mt, rt = m.detach() / tile_size, r / tile_size
        x0 = torch.floor(mt[:, 0] - rt[:, 0]).clamp(0, tiles_x)
        x1 = torch.ceil(mt[:, 0] + rt[:, 0]).clamp(0, tiles_x)
        y0 = torch.floor(mt[:, 1] - rt[:, 1]).clamp(0, tiles_y)
        y1 = torch.ceil(mt[:, 1] + rt[:, 1]).clamp(0, tiles_y)
        member = (
            (pix_tx[:, None] >= x0) & (pix_tx[:, None] < x1) & (pix_ty[:, None] >= y0) & (pix_ty[:, None] < y1)
        )  # (P, G)
        dx = m[None, :, 0] - px[:, None]
        dy = m[None, :, 1] - py[:, None]
        sigma = 0.5 * (q[None, :, 0] * dx * dx + q[None, :, 2] * dy * dy) + q[None, :, 1] * dx * dy
        alpha = torch.clamp(o[None, :] * torch.exp(-sigma), max=ALPHA_MAX)
        valid = member & (sigma >= 0) & (alpha >= ALPHA_MIN)
        a_eff = torch.where(valid, alpha, torch.zeros_like(alpha))
        one_minus = 1.0 - a_eff
        t_after = torch.cumprod(one_minus, dim=1)  # transmittance after each Gaussian, nothing dropped
        included = valid & (t_after.detach() > T_STOP)
        a_inc = torch.where(included, a_eff, torch.zeros_like(a_eff))
        t_after_inc = torch.cumprod(1.0 - a_inc, dim=1)
        t_before = torch.cat([torch.ones_like(t_after_inc[:, :1]), t_after_inc[:, :-1]], dim=1)
        w = a_inc * t_before  # (P, G)
        img = w @ col
        t_final = t_after_inc[:, -1] if t_after_inc.shape[1] else torch.ones_like(px)
        if backgrounds is not None:
            img = img + t_final[:, None] * backgrounds[c][None, :]
        acc = 1.0 - t_after_inc.detach()
        reach = included & (acc >= 0.5)
        has = reach.any(dim=1)
        if reach.shape[1] == 0:  # no Gaussian reaches this camera: background only, median depth 0
            med = torch.zeros_like(px)
        else:
            first = torch.argmax(reach.to(torch.int8), dim=1)
            med = torch.where(has, z[first], torch.zeros_like(px))
        imgs.append(img.reshape(height, width, -1))
        alphas.append((1.0 - t_final).reshape(height, width, 1))
        medians.append(med.reshape(height, width, 1))
    return torch.stack(imgs), torch.stack(alphas), torch.stack(medians)


@takes_rasterize_args
def rasterize_gaussians(a: RasterizeArgs) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Whole pipeline (projection, SH, render modes, compositing); same outputs as the public function."""
    means, colors, viewmats = a.means, a.colors, a.viewmats
    proj = project(
        means, a.quats, a.scales, a.opacities, viewmats, a.Ks, a.width, a.height, a.near_plane, a.far_plane,
        a.radius_clip, a.eps2d, a.rasterize_mode == "antialiased",
    )
    c_n = viewmats.shape[0]
    if a.sh_degree is not None:
        centres = -torch.einsum("cji,cj->ci", viewmats[:, :3, :3], viewmats[:, :3, 3])  # -R^T t
        dirs = means[None] - centres[:, None]
        cols = eval_sh(a.sh_degree, dirs, colors[None].expand(c_n, *colors.shape))
    else:
        cols = colors[None].expand(c_n, *colors.shape)
    depth_col = proj["depths"][..., None]
    bg = a.backgrounds
    if a.render_mode in ("RGB+D", "RGB+ED"):
        cols = torch.cat([cols, depth_col], dim=-1)
        if bg is not None:
            bg = torch.cat([bg, torch.zeros_like(bg[:, :1])], dim=-1)
    elif a.render_mode in ("D", "ED"):
        cols = depth_col
        if bg is not None:
            bg = torch.zeros_like(bg[:, :1])
    img, alpha, med = rasterize_pixels(
        proj["means2d"], proj["conics"], cols, proj["opacities"], proj["depths"], proj["radii"],
        a.width, a.height, a.tile_size, bg,
    )
    if a.render_mode in ("ED", "RGB+ED"):
        img = torch.cat([img[..., :-1], img[..., -1:] / alpha.clamp(min=1e-10)], dim=-1)
    meta = dict(proj)
    meta["median_depths"] = med
    return img, alpha, meta
