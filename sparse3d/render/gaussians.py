"""Gaussian splatting rasterization with gsplat 1.5.3's ``rasterization`` API, on CPU (Warp) or CUDA.

Pipeline (design note ``sparse_view_gs.md`` section 4):

1. EWA projection in Warp (:mod:`sparse3d.kernels.gaussian_projection`, one thread per Gaussian over all
   cameras, hand-written backward to means, quats, scales, opacities and viewmats; :class:`_ProjectGaussians`).
   SH colours: :func:`eval_sh_colors` in torch (public), and on the Warp backend one Warp pass each way
   (:class:`_ShColors`, hand-written backward to the coefficients and the view directions). Both replace
   dozens of small torch ops whose forward and autograd backward dominated the non-compositing time.
2. Tile intersection, key sort and per-tile ranges: :mod:`sparse3d.kernels.gaussian_raster`.
3. Front-to-back compositing in Warp with a hand-written backward, bridged by :class:`_RasterizeToPixels`.

``backend="auto"`` uses gsplat's CUDA kernels when the tensors are on CUDA and gsplat imports, otherwise Warp
(see :mod:`sparse3d.kernels.backends`). All float inputs are float32.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from sparse3d.kernels import gaussian_projection as KP
from sparse3d.kernels import gaussian_raster as K
from sparse3d.kernels.backends import RASTER_BACKENDS, select_raster_backend
from sparse3d.kernels.runtime import check_same_device, check_tensor, serial_torch_ops

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
RASTERIZE_MODES = ("classic", "antialiased")
MAX_SH_DEGREE = 3


# ----------------------------------------------------------------------------------------------- projection
class _ProjectGaussians(torch.autograd.Function):
    """Warp EWA projection (:mod:`sparse3d.kernels.gaussian_projection`) with its hand-written backward.

    Gradients reach means, quats, scales, opacities and (when they require it) viewmats; Ks gets none, as in
    gsplat. The backward recomputes the per-camera quantities from the inputs instead of storing them.
    """

    @staticmethod
    def forward(ctx: Any, means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane,
                radius_clip, eps2d, antialiased):
        out = KP.project_fwd(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane,
                             radius_clip, eps2d, antialiased)
        ctx.save_for_backward(means, quats, scales, opacities, viewmats, Ks, out.radii)
        ctx.dims = (width, height, eps2d, antialiased)
        ctx.mark_non_differentiable(out.radii)
        return tuple(out)

    @staticmethod
    @serial_torch_ops()
    def backward(ctx: Any, _v_radii, v_means2d, v_depths, v_conics, v_opacities):
        means, quats, scales, opacities, viewmats, Ks, radii = ctx.saved_tensors
        width, height, eps2d, antialiased = ctx.dims
        c_n, n = radii.shape[:2]

        def grad(v: torch.Tensor | None, *tail: int) -> torch.Tensor:
            return torch.zeros(c_n, n, *tail, device=means.device) if v is None else v

        g = KP.project_bwd(
            means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, antialiased, radii,
            grad(v_means2d, 2), grad(v_depths), grad(v_conics, 3), grad(v_opacities),
            viewmats_grad=ctx.needs_input_grad[4],
        )
        return (g.means, g.quats, g.scales, g.opacities, g.viewmats) + (None,) * 8


def project_gaussians(
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
    """Differentiable pinhole EWA projection into every camera, gsplat 1.5.3 rules (Warp kernels).

    Returns (C, N, ...) ``radii`` int32 (0 = culled), ``means2d``, ``depths`` (camera z), ``conics`` (a, b, c of
    the inverse 2-D covariance) and ``opacities`` (times the antialiasing compensation in that mode). The
    formulas are in :mod:`sparse3d.kernels.gaussian_projection`; the float64 oracle is
    :func:`sparse3d.kernels.reference.gaussian_raster.project`.
    """
    out = _ProjectGaussians.apply(
        means, quats, scales, opacities, viewmats, Ks, int(width), int(height), float(near_plane),
        float(far_plane), float(radius_clip), float(eps2d), bool(antialiased),
    )
    return dict(zip(KP.Projection._fields, out))


# ---------------------------------------------------------------------------------------------- SH colours
def eval_sh_colors(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Real SH (Sloan's recurrence form, gsplat's constants) of bands 0..degree, + 0.5, clamped at 0.

    dirs (..., 3), any length (normalised here); coeffs (..., K, 3) broadcastable against dirs' batch shape,
    K >= (degree + 1)^2. The basis is stacked once and contracted with one matmul (few ops, see above).
    """
    bases = [torch.full_like(dirs[..., 0], 0.2820947917738781)]
    if degree >= 1:
        x, y, z = F.normalize(dirs, dim=-1).unbind(-1)
        bases += [-0.48860251190292 * y, 0.48860251190292 * z, -0.48860251190292 * x]
        if degree >= 2:
            z2 = z * z
            c1, s1 = x * x - y * y, 2 * x * y
            t0 = -1.092548430592079 * z
            bases += [0.5462742152960395 * s1, t0 * y, 0.9461746957575601 * z2 - 0.3153915652525201, t0 * x,
                      0.5462742152960395 * c1]
            if degree >= 3:
                c2, s2 = x * c1 - y * s1, x * s1 + y * c1
                t0c = -2.285228997322329 * z2 + 0.4570457994644658
                t1b = 1.445305721320277 * z
                bases += [-0.5900435899266435 * s2, t1b * s1, t0c * y,
                          z * (1.865881662950577 * z2 - 1.119528997770346), t0c * x, t1b * c1,
                          -0.5900435899266435 * c2]
    basis = torch.stack(bases, dim=-1)[..., None, :]  # (..., 1, B)
    out = torch.matmul(basis, coeffs[..., : len(bases), :])[..., 0, :]
    return torch.clamp_min(out + 0.5, 0.0)


# --------------------------------------------------------------------------------------- autograd bridge
class _ShColors(torch.autograd.Function):
    """:func:`eval_sh_colors` as one Warp pass each way (dozens of small torch ops and their backward
    otherwise dominate the non-compositing time); gradients flow to the directions and the coefficients."""

    @staticmethod
    def forward(ctx: Any, degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
        dirs = dirs.detach().contiguous()
        coeffs = coeffs.detach().contiguous()
        ctx.save_for_backward(dirs, coeffs)
        ctx.degree = degree
        return K.sh_colors_fwd(degree, dirs, coeffs)

    @staticmethod
    @serial_torch_ops()
    def backward(ctx: Any, v_colors: torch.Tensor):
        dirs, coeffs = ctx.saved_tensors
        v_dirs, v_coeffs = K.sh_colors_bwd(ctx.degree, dirs, coeffs, v_colors)
        return None, (v_dirs if ctx.needs_input_grad[1] else None), (v_coeffs if ctx.needs_input_grad[2] else None)


class _RasterizeToPixels(torch.autograd.Function):
    """Warp compositing forward/backward; gradients flow to means2d, conics, colors, opacities, backgrounds."""

    @staticmethod
    def forward(
        ctx: Any,
        means2d: torch.Tensor,
        conics: torch.Tensor,
        colors: torch.Tensor,
        opacities: torch.Tensor,
        backgrounds: torch.Tensor | None,
        depths: torch.Tensor,
        isect_offsets: torch.Tensor,
        flatten_ids: torch.Tensor,
        width: int,
        height: int,
        tile_size: int,
        absgrad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        colors = colors.contiguous()
        opacities = opacities.contiguous()
        out = K.rasterize_to_pixels_fwd(
            means2d, conics, colors, opacities, depths, backgrounds, isect_offsets, flatten_ids, width, height,
            tile_size,
        )
        ctx.save_for_backward(
            means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, out.transmittance,
            out.last_ids, out.records,
        )
        ctx.dims = (width, height, tile_size, absgrad)
        ctx.mark_non_differentiable(out.median_depths)
        return out.colors, out.alphas, out.median_depths

    @staticmethod
    @serial_torch_ops()
    def backward(ctx: Any, v_colors: torch.Tensor, v_alphas: torch.Tensor, _v_median: torch.Tensor):
        means2d, conics, colors, opacities, backgrounds, offsets, flat_ids, trans, last_ids, records = ctx.saved_tensors
        width, height, tile_size, absgrad = ctx.dims
        c_n = means2d.shape[0]
        if v_colors is None:
            v_colors = torch.zeros(c_n, height, width, colors.shape[-1], device=means2d.device)
        if v_alphas is None:
            v_alphas = torch.zeros(c_n, height, width, 1, device=means2d.device)
        v_m, v_q, v_c, v_o, v_abs = K.rasterize_to_pixels_bwd(
            means2d, conics, colors, opacities, backgrounds, offsets, flat_ids, width, height, tile_size, trans,
            last_ids, v_colors, v_alphas, absgrad, records,
        )
        if absgrad:
            means2d.absgrad = v_abs  # AbsGS densification statistic, like gsplat
        v_bg = None
        if backgrounds is not None and ctx.needs_input_grad[4]:
            v_bg = (v_colors.float() * trans[..., None]).sum(dim=(1, 2))
        return v_m, v_q, v_c, v_o, v_bg, None, None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------- public API
def _check_float(name: str, t: Any, shape: tuple[int | None, ...]) -> torch.Tensor:
    check_tensor(name, t, torch.float32, ndim=len(shape))
    for dim, (got, want) in enumerate(zip(t.shape, shape)):
        if want is not None and got != want:
            want_s = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want_s}, got {tuple(t.shape)} (dimension {dim})")
    return t


def _validate(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane, radius_clip,
    eps2d, sh_degree, backgrounds, render_mode, rasterize_mode, tile_size, absgrad, backend,
) -> int:
    """Check every argument; return the number of colour channels before any depth channel."""
    _check_float("means", means, (None, 3))
    n = means.shape[0]
    _check_float("quats", quats, (n, 4))
    _check_float("scales", scales, (n, 3))
    _check_float("opacities", opacities, (n,))
    _check_float("viewmats", viewmats, (None, 4, 4))
    c_n = viewmats.shape[0]
    if c_n < 1:
        raise ValueError("viewmats must hold at least one camera, got shape (0, 4, 4)")
    _check_float("Ks", Ks, (c_n, 3, 3))
    for name, v in (("width", width), ("height", height), ("tile_size", tile_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not (isinstance(near_plane, (int, float)) and near_plane > 0):
        raise ValueError(f"near_plane must be a positive number, got {near_plane!r}")
    if not (isinstance(far_plane, (int, float)) and far_plane > near_plane):
        raise ValueError(f"far_plane must be a number > near_plane ({near_plane}), got {far_plane!r}")
    if not (isinstance(radius_clip, (int, float)) and radius_clip >= 0):
        raise ValueError(f"radius_clip must be a number >= 0, got {radius_clip!r}")
    if not (isinstance(eps2d, (int, float)) and eps2d >= 0):
        raise ValueError(f"eps2d must be a number >= 0, got {eps2d!r}")
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if rasterize_mode not in RASTERIZE_MODES:
        raise ValueError(f"rasterize_mode must be one of {RASTERIZE_MODES}, got {rasterize_mode!r}")
    if not isinstance(absgrad, bool):
        raise ValueError(f"absgrad must be a bool, got {absgrad!r}")
    if backend not in RASTER_BACKENDS:
        raise ValueError(f"backend must be one of {RASTER_BACKENDS}, got {backend!r}")
    if sh_degree is None:
        _check_float("colors", colors, (n, None))
        n_ch = colors.shape[1]
        if n_ch < 1:
            raise ValueError(f"colors must have at least one channel, got shape {tuple(colors.shape)}")
    else:
        if isinstance(sh_degree, bool) or not isinstance(sh_degree, int) or not 0 <= sh_degree <= MAX_SH_DEGREE:
            raise ValueError(f"sh_degree must be None or an int in [0, {MAX_SH_DEGREE}], got {sh_degree!r}")
        _check_float("colors", colors, (n, None, 3))
        need = (sh_degree + 1) ** 2
        if colors.shape[1] < need:
            raise ValueError(
                f"colors must hold at least (sh_degree + 1)^2 = {need} SH coefficients for sh_degree="
                f"{sh_degree}, got shape {tuple(colors.shape)}"
            )
        n_ch = 3
    tensors = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors,
               "viewmats": viewmats, "Ks": Ks}
    if backgrounds is not None:
        _check_float("backgrounds", backgrounds, (c_n, n_ch))
        tensors["backgrounds"] = backgrounds
    check_same_device(**tensors)
    return n_ch


def rasterize_gaussians(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    backgrounds: torch.Tensor | None = None,
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
    tile_size: int = 16,
    absgrad: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Render N 3-D Gaussians into C cameras (argument meaning and layouts of ``gsplat.rasterization`` 1.5.3).

    Args:
        means (N, 3) world; quats (N, 4) wxyz, any norm; scales (N, 3) activated; opacities (N,) in [0, 1];
        colors (N, D) post-activation, or SH coefficients (N, K, 3) when ``sh_degree`` is set;
        viewmats (C, 4, 4) world-to-camera (OpenCV axes); Ks (C, 3, 3); backgrounds (C, D) or None.
        render_mode: "RGB", "D" (accumulated depth), "ED" (expected depth = D / alpha), "RGB+D", "RGB+ED".
        rasterize_mode: "classic" or "antialiased" (opacity x sqrt(det(Sigma2D) / det(Sigma2D + eps2d I))).
        absgrad: after backward, ``meta["means2d"].absgrad`` holds the per-pixel sum of |dL/dmeans2d|.
        backend: "auto" (gsplat on CUDA when importable, else Warp), "warp" or "gsplat".

    Returns:
        render_colors (C, H, W, D'), render_alphas (C, H, W, 1), meta (gsplat's keys plus
        ``median_depths`` (C, H, W, 1): depth of the Gaussian at which the accumulated alpha first reaches 0.5,
        0 where it never does; no gradient). ``meta["means2d"]`` is the tensor whose ``.grad`` receives the
        screen-space gradients (call ``retain_grad()`` on it before backward).
    """
    n_ch = _validate(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane, radius_clip,
        eps2d, sh_degree, backgrounds, render_mode, rasterize_mode, tile_size, absgrad, backend,
    )
    args = (means, quats, scales, opacities, colors, viewmats, Ks, width, height)
    opts = dict(
        near_plane=float(near_plane), far_plane=float(far_plane), radius_clip=float(radius_clip),
        eps2d=float(eps2d), sh_degree=sh_degree, backgrounds=backgrounds, render_mode=render_mode,
        rasterize_mode=rasterize_mode, tile_size=tile_size, absgrad=absgrad,
    )
    if select_raster_backend(backend, means.device) == "gsplat":
        return _rasterize_gsplat(*args, **opts)
    return _rasterize_warp(*args, n_ch=n_ch, **opts)


@serial_torch_ops()  # torch glue between Warp launches: see serial_torch_ops
def _rasterize_warp(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, *, near_plane, far_plane, radius_clip,
    eps2d, sh_degree, backgrounds, render_mode, rasterize_mode, tile_size, absgrad, n_ch,
):
    c_n = viewmats.shape[0]
    proj = project_gaussians(
        means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane, radius_clip, eps2d,
        rasterize_mode == "antialiased",
    )
    depths = proj["depths"]
    if sh_degree is not None:
        rot, trans = viewmats[:, :3, :3], viewmats[:, :3, 3]
        campos = -torch.einsum("cji,cj->ci", rot, trans)  # camera centre -R^T t
        dirs = means[None, :, :] - campos[:, None, :]
        cols = _ShColors.apply(sh_degree, dirs, colors)
    else:
        cols = colors[None].expand(c_n, *colors.shape)
    bg = backgrounds
    if render_mode in ("RGB+D", "RGB+ED"):
        cols = torch.cat([cols, depths[..., None]], dim=-1)
        if bg is not None:
            bg = torch.cat([bg, torch.zeros_like(bg[:, :1])], dim=-1)
    elif render_mode in ("D", "ED"):
        cols = depths[..., None]
        if bg is not None:
            bg = torch.zeros(c_n, 1, dtype=torch.float32, device=means.device)
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    isect = K.intersect_tiles(
        proj["means2d"].detach(), proj["radii"], depths.detach(), tile_size, tiles_x, tiles_y
    )
    render_colors, render_alphas, median = _RasterizeToPixels.apply(
        proj["means2d"], proj["conics"], cols, proj["opacities"], bg, depths.detach(), isect.isect_offsets,
        isect.flatten_ids, width, height, tile_size, absgrad,
    )
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1
        )
    meta = {
        **proj,
        "tile_width": tiles_x,
        "tile_height": tiles_y,
        "tiles_per_gauss": isect.tiles_per_gauss,
        "isect_ids": isect.isect_ids,
        "flatten_ids": isect.flatten_ids,
        "isect_offsets": isect.isect_offsets,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_cameras": c_n,
        "median_depths": median,
        "backend": "warp",
    }
    return render_colors, render_alphas, meta


def _rasterize_gsplat(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, *, near_plane, far_plane, radius_clip,
    eps2d, sh_degree, backgrounds, render_mode, rasterize_mode, tile_size, absgrad,
):
    """gsplat's CUDA kernels; the median depth comes from our Warp forward kernel on gsplat's own tile lists."""
    import gsplat

    render_colors, render_alphas, meta = gsplat.rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane=near_plane,
        far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d, sh_degree=sh_degree, packed=False,
        tile_size=tile_size, backgrounds=backgrounds, render_mode=render_mode, rasterize_mode=rasterize_mode,
        absgrad=absgrad,
    )
    with torch.no_grad():
        m2d = meta["means2d"].detach().float()
        out = K.rasterize_to_pixels_fwd(
            m2d, meta["conics"].detach().float(), torch.zeros(*m2d.shape[:2], 1, device=m2d.device),
            meta["opacities"].detach().float().contiguous(), meta["depths"].detach().float(), None,
            meta["isect_offsets"].to(torch.int32), meta["flatten_ids"].to(torch.int32), width, height, tile_size,
        )
    meta["median_depths"] = out.median_depths
    meta["backend"] = "gsplat"
    return render_colors, render_alphas, meta
