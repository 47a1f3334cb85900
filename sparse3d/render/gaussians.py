"""Gaussian splatting rasterization with gsplat 1.5.3's ``rasterization`` API, on CPU (Warp) or CUDA.

The public front-end: it validates the arguments, picks the backend and assembles the render modes. The Warp
pipeline is that of 3D Gaussian Splatting (Kerbl et al., SIGGRAPH 2023) as gsplat (Ye et al. 2024) implements
it, each step differentiable with a hand-written backward:

1. EWA projection (Zwicker et al. 2002) of every Gaussian into every camera:
   :func:`sparse3d.kernels.gaussian_projection.project_gaussians`.
2. View-dependent colours from SH coefficients: :func:`sparse3d.kernels.gaussian_sh.eval_sh_colors`.
3. Tile intersection, depth sort and per-tile ranges: :func:`sparse3d.kernels.gaussian_tiles.intersect_tiles`.
4. Front-to-back compositing: :func:`sparse3d.kernels.gaussian_composite.rasterize_to_pixels`.

``backend="auto"`` uses gsplat's CUDA kernels when the tensors are on CUDA and gsplat imports, otherwise Warp
(see :mod:`sparse3d.kernels.backends`). All float inputs are float32. The float64 oracle is
:func:`sparse3d.kernels.reference.gaussian_raster.rasterize_gaussians`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sparse3d.kernels.backends import RASTER_BACKENDS, select_raster_backend
from sparse3d.kernels.gaussian_args import RasterizeArgs, takes_rasterize_args
from sparse3d.kernels.gaussian_composite import rasterize_to_pixels, rasterize_to_pixels_fwd
from sparse3d.kernels.gaussian_projection import first_bad_gaussian_argument, project_gaussians
from sparse3d.kernels.gaussian_sh import MAX_SH_DEGREE, eval_sh_colors
from sparse3d.kernels.gaussian_tiles import intersect_tiles
from sparse3d.kernels.runtime import check_same_device, check_tensor, serial_torch_ops

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
RASTERIZE_MODES = ("classic", "antialiased")


# ---------------------------------------------------------------------------------------------- validation
def _check_float(name: str, t: Any, shape: tuple[int | None, ...]) -> torch.Tensor:
    check_tensor(name, t, torch.float32, ndim=len(shape))
    for dim, (got, want) in enumerate(zip(t.shape, shape)):
        if want is not None and got != want:
            want_s = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want_s}, got {tuple(t.shape)} (dimension {dim})")
    return t


def _validate(a: RasterizeArgs, absgrad: Any, backend: Any) -> None:
    """Check every argument up front, so that errors name the argument rather than surface in a kernel."""
    means, colors, sh_degree, backgrounds = a.means, a.colors, a.sh_degree, a.backgrounds
    _check_float("means", means, (None, 3))
    n = means.shape[0]
    _check_float("quats", a.quats, (n, 4))
    _check_float("scales", a.scales, (n, 3))
    _check_float("opacities", a.opacities, (n,))
    _check_float("viewmats", a.viewmats, (None, 4, 4))
    c_n = a.viewmats.shape[0]
    if c_n < 1:
        raise ValueError("viewmats must hold at least one camera, got shape (0, 4, 4)")
    _check_float("Ks", a.Ks, (c_n, 3, 3))
    for name, v in (("width", a.width), ("height", a.height), ("tile_size", a.tile_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    near_plane, far_plane = a.near_plane, a.far_plane
    if not (isinstance(near_plane, (int, float)) and near_plane > 0):
        raise ValueError(f"near_plane must be a positive number, got {near_plane!r}")
    if not (isinstance(far_plane, (int, float)) and far_plane > near_plane):
        raise ValueError(f"far_plane must be a number > near_plane ({near_plane}), got {far_plane!r}")
    if not (isinstance(a.radius_clip, (int, float)) and a.radius_clip >= 0):
        raise ValueError(f"radius_clip must be a number >= 0, got {a.radius_clip!r}")
    if not (isinstance(a.eps2d, (int, float)) and a.eps2d >= 0):
        raise ValueError(f"eps2d must be a number >= 0, got {a.eps2d!r}")
    if a.render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {a.render_mode!r}")
    if a.rasterize_mode not in RASTERIZE_MODES:
        raise ValueError(f"rasterize_mode must be one of {RASTERIZE_MODES}, got {a.rasterize_mode!r}")
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
    tensors = {"means": means, "quats": a.quats, "scales": a.scales, "opacities": a.opacities, "colors": colors,
               "viewmats": a.viewmats, "Ks": a.Ks}
    if backgrounds is not None:
        _check_float("backgrounds", backgrounds, (c_n, n_ch))
        tensors["backgrounds"] = backgrounds
    check_same_device(**tensors)


def _bad_rows(t: torch.Tensor, bad: torch.Tensor) -> int:
    """Number of leading-dimension entries (Gaussians or cameras) of ``t`` with at least one bad element."""
    return int(bad.reshape(t.shape[0], -1).any(dim=1).sum())


def _check_values(a: RasterizeArgs) -> None:
    """Reject values the kernels would turn into black or NaN pixels without a word.

    The per-Gaussian arguments are checked by one Warp pass (:func:`first_bad_gaussian_argument`, one host
    synchronisation); the few camera values by one min/max reduction each and one more synchronisation: NaN
    propagates through ``aminmax``, so "min > lower bound and max < upper bound" fails for NaN as well as for
    values out of range. Only when a check fails are the offending entries counted, for the message.
    """
    bad = first_bad_gaussian_argument(a.means, a.quats, a.scales, a.opacities, a.colors)
    if bad is not None:
        raise ValueError(_describe_bad_values(a, bad))
    ks = a.Ks
    focal = torch.minimum(ks[:, 0, 0], ks[:, 1, 1])
    # (name, tensor whose min/max are tested, lower bound, lower inclusive, upper bound, upper inclusive)
    bounds: list[tuple[str, torch.Tensor, float, bool, float, bool]] = [
        ("viewmats", a.viewmats, -math.inf, False, math.inf, False),
        ("Ks", ks, -math.inf, False, math.inf, False),
        ("Ks", focal, 0.0, False, math.inf, False),
    ]
    if a.backgrounds is not None:
        bounds.append(("backgrounds", a.backgrounds, -math.inf, False, math.inf, False))
    bounds = [b for b in bounds if b[1].numel() > 0]
    if not bounds:
        return
    with torch.no_grad():
        extremes = torch.stack([v for b in bounds for v in b[1].detach().aminmax()]).tolist()  # one sync
    failed: list[str] = []
    for i, (name, _, lo, lo_incl, hi, hi_incl) in enumerate(bounds):
        low, high = extremes[2 * i], extremes[2 * i + 1]
        ok = (low >= lo if lo_incl else low > lo) and (high <= hi if hi_incl else high < hi)
        if not ok and name not in failed:
            failed.append(name)
    if failed:
        raise ValueError(_describe_bad_values(a, failed[0]))


def _describe_bad_values(a: RasterizeArgs, name: str) -> str:
    """The message for the first argument that failed :func:`_check_values`: which entries, how many."""
    with torch.no_grad():
        if name in ("means", "colors"):
            t = getattr(a, name).detach()
            what, bad = "non-finite (NaN or inf) values", ~torch.isfinite(t)
        elif name == "quats":
            t = a.quats.detach()
            finite = torch.isfinite(t).all(dim=1)
            bad = ~finite | (t.abs().amax(dim=1) == 0)
            what = "zero-length or non-finite quaternions"
        elif name == "scales":
            t = a.scales.detach()
            what, bad = "scales that are NaN, inf or <= 0 (they must be finite and > 0)", ~(torch.isfinite(t) & (t > 0))
        elif name == "opacities":
            t = a.opacities.detach()
            what, bad = "opacities outside [0, 1] or NaN", ~((t >= 0) & (t <= 1))
        elif name == "viewmats":
            t = a.viewmats.detach()
            what, bad = "non-finite (NaN or inf) entries", ~torch.isfinite(t)
        elif name == "Ks":
            t = a.Ks.detach()
            focal_ok = (t[:, 0, 0] > 0) & (t[:, 1, 1] > 0)
            bad = ~(torch.isfinite(t).reshape(t.shape[0], -1).all(dim=1) & focal_ok)
            what = "invalid intrinsics (non-finite entries or focal lengths fx, fy <= 0)"
        else:
            t = a.backgrounds.detach()  # type: ignore[union-attr]
            what, bad = "non-finite (NaN or inf) values", ~torch.isfinite(t)
        count = _bad_rows(t, bad)
    unit = "cameras" if name in ("viewmats", "Ks", "backgrounds") else "Gaussians"
    return f"{name}: {count} of {t.shape[0]} {unit} have {what}"


# ---------------------------------------------------------------------------------------------- public API
@takes_rasterize_args
def rasterize_gaussians(
    a: RasterizeArgs, absgrad: bool = False, backend: str = "auto", check_values: bool = True
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Render N 3-D Gaussians into C cameras (argument meaning and layouts of ``gsplat.rasterization`` 1.5.3).

    Args:
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
            radius_clip, eps2d, sh_degree, backgrounds, render_mode, rasterize_mode, tile_size: the fields of
            :class:`sparse3d.kernels.gaussian_args.RasterizeArgs`, in that order, with those defaults.
        absgrad: after backward, ``meta["means2d"].absgrad`` holds the per-pixel sum of |dL/dmeans2d|.
        backend: "auto" (gsplat on CUDA when importable, else Warp), "warp" or "gsplat".
        check_values: also check the values (one reduction per argument and one host synchronisation):
            finite means, colors, viewmats and backgrounds; finite, non-zero quaternions; finite scales > 0;
            opacities in [0, 1]; finite ``Ks`` with focal lengths > 0. Pass False in a loop whose values
            were checked once and cannot go bad (e.g. activated parameters of an optimiser that is watched).

    Returns:
        render_colors (C, H, W, D'), render_alphas (C, H, W, 1), meta (gsplat's keys plus
        ``median_depths`` (C, H, W, 1): depth of the Gaussian at which the accumulated alpha first reaches 0.5,
        0 where it never does; no gradient). ``meta["means2d"]`` is the tensor whose ``.grad`` receives the
        screen-space gradients (call ``retain_grad()`` on it before backward).

    Raises:
        ValueError: naming the argument, for any wrong type, shape, dtype, device or value (for values:
            also how many Gaussians or cameras are bad).
    """
    _validate(a, absgrad, backend)
    if not isinstance(check_values, bool):
        raise ValueError(f"check_values must be a bool, got {check_values!r}")
    if check_values:
        with serial_torch_ops():  # small reductions: see serial_torch_ops
            _check_values(a)
    a = a._replace(
        near_plane=float(a.near_plane), far_plane=float(a.far_plane), radius_clip=float(a.radius_clip),
        eps2d=float(a.eps2d),
    )
    if select_raster_backend(backend, a.means.device) == "gsplat":
        return _rasterize_gsplat(a, absgrad)
    return _rasterize_warp(a, absgrad)


@serial_torch_ops()  # torch glue between Warp launches: see serial_torch_ops
def _rasterize_warp(a: RasterizeArgs, absgrad: bool) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    means, colors, viewmats, width, height, tile_size = a.means, a.colors, a.viewmats, a.width, a.height, a.tile_size
    c_n = viewmats.shape[0]
    proj = project_gaussians(
        means, a.quats, a.scales, a.opacities, viewmats, a.Ks, width, height, a.near_plane, a.far_plane,
        a.radius_clip, a.eps2d, a.rasterize_mode == "antialiased",
    )
    depths = proj["depths"]
    if a.sh_degree is not None:
        rot, trans = viewmats[:, :3, :3], viewmats[:, :3, 3]
        campos = -torch.einsum("cji,cj->ci", rot, trans)  # camera centre -R^T t
        dirs = means[None, :, :] - campos[:, None, :]
        cols = eval_sh_colors(a.sh_degree, dirs, colors)
    else:
        cols = colors[None].expand(c_n, *colors.shape)
    bg = a.backgrounds
    if a.render_mode in ("RGB+D", "RGB+ED"):
        cols = torch.cat([cols, depths[..., None]], dim=-1)
        if bg is not None:
            bg = torch.cat([bg, torch.zeros_like(bg[:, :1])], dim=-1)
    elif a.render_mode in ("D", "ED"):
        cols = depths[..., None]
        if bg is not None:
            bg = torch.zeros(c_n, 1, dtype=torch.float32, device=means.device)
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    isect = intersect_tiles(proj["means2d"].detach(), proj["radii"], depths.detach(), tile_size, tiles_x, tiles_y)
    render_colors, render_alphas, median = rasterize_to_pixels(
        proj["means2d"], proj["conics"], cols, proj["opacities"], bg, depths.detach(), isect.isect_offsets,
        isect.flatten_ids, width, height, tile_size, absgrad,
    )
    if a.render_mode in ("ED", "RGB+ED"):
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


def _rasterize_gsplat(a: RasterizeArgs, absgrad: bool) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """gsplat's CUDA kernels; the median depth comes from our Warp forward kernel on gsplat's own tile lists."""
    import gsplat

    width, height, tile_size = a.width, a.height, a.tile_size
    render_colors, render_alphas, meta = gsplat.rasterization(
        *a[:9], near_plane=a.near_plane, far_plane=a.far_plane, radius_clip=a.radius_clip, eps2d=a.eps2d,
        sh_degree=a.sh_degree, packed=False, tile_size=tile_size, backgrounds=a.backgrounds,
        render_mode=a.render_mode, rasterize_mode=a.rasterize_mode, absgrad=absgrad,
    )
    with torch.no_grad():
        m2d = meta["means2d"].detach().float()
        out = rasterize_to_pixels_fwd(
            m2d, meta["conics"].detach().float(), torch.zeros(*m2d.shape[:2], 1, device=m2d.device),
            meta["opacities"].detach().float().contiguous(), meta["depths"].detach().float(), None,
            meta["isect_offsets"].to(torch.int32), meta["flatten_ids"].to(torch.int32), width, height, tile_size,
        )
    meta["median_depths"] = out.median_depths
    meta["backend"] = "gsplat"
    return render_colors, render_alphas, meta
