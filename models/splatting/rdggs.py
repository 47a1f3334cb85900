"""RDG-GS (Zhan et al., "RDG-GS: Relative Depth Guidance with Gaussian Splatting for Real-time Sparse-View 3D
Rendering", arXiv 2501.11102, 2025) as a per-scene method on top of plain 3DGS.

The paper names three components: refined depth priors, relative depth guidance (the similarity between
spatially correlated patches of depth and of images) and adaptive sampling for quick densification. Its
equations and hyper-parameters are not public (no official code), so each component below is **our design
choice**, stated exactly here and in ``configs/method/rdggs.yaml``:

1. **Refined depth prior** (:func:`refine_depth_prior`), computed once per scene from a per-view prior
   (:mod:`sparse3d.models.splatting.depth_priors`; the plane-sweep stereo prior by default):

   a. *global alignment*: when the scene has sparse points, the prior of every view is fitted to the points'
      camera-z depths it sees by a confidence-weighted least-squares scale and shift (``z = s * prior + t``;
      for a relative-disparity prior ``1 / z = s * disparity + t``), with one re-fit after dropping residuals
      above 3 median absolute deviations. Without points a metric prior is kept (s = 1, t = 0) and a
      relative-disparity prior is refused (it has no scale);
   b. *multi-view consistency*: every pixel is back-projected with its depth and projected into the other
      views; its confidence is multiplied by ``max_u exp(-(e_u / tau)^2)``, ``e_u`` the relative difference
      between the projected depth and view ``u``'s prior depth at the nearest pixel (0 where the point falls
      outside view ``u``, behind it, or on a pixel without evidence);
   c. *image-guided refinement*: ``iterations`` passes of a confidence-weighted joint bilateral filter
      (spatial Gaussian ``sigma_space`` px, colour Gaussian ``sigma_color`` on the input image) over a
      ``(2 radius + 1)^2`` window: depth and confidence become their filtered values, so holes in the stereo
      evidence are filled from similar-looking neighbours and depth edges follow image edges.

   The Gaussians are initialised from it: up to ``num_prior_points`` pixels with confidence >=
   ``init_min_confidence`` are back-projected (colour = pixel colour), together with the scene's own sparse
   points and ``num_random_points`` grey points in gs3d's random-initialisation cube (for the areas without
   stereo evidence), and handed to the 3DGS initialisation (k-NN scales, opacity ``opacity``).

2. **Relative depth guidance** (:func:`relative_depth_loss`): on the rendered expected depth of the training
   view, per non-overlapping ``P x P`` patch, every value is standardised (patch mean removed, divided by the
   patch standard deviation, floored at ``flat_eps`` x the image's weighted mean depth so a flat patch stays
   flat), giving the scale-invariant (and, above the floor, shift-invariant) relative depth ``d^``. The depth
   patch's similarity structure is ``D_ij = exp(-(d^_i - d^_j)^2 / (2 sigma^2))`` over all pixel pairs of
   the patch. Its target is ``F_ij = (1 - lambda) G_ij + lambda I_ij``: ``G`` the same similarity of the
   refined prior's patch (the image-guided prior of step 1c, which carries the image's edges) and ``I_ij =
   exp(-||c_i - c_j||^2 / (2 sigma_I^2))`` the similarity of the image patch's colours. The loss is
   ``sum_ij w_i w_j |D_ij - F_ij| / sum_ij w_i w_j`` over all patches, ``w`` = prior confidence x rendered
   alpha. Only relations inside a patch are supervised, never absolute depth. Default ``lambda = 0``: raw
   colour similarity also equates texture edges with depth edges (wrong on textured planes), so the image
   enters through the image-guided prior unless ``image_weight`` says otherwise.

3. **Adaptive sampling** (:func:`select_error_pixels`, :func:`backproject_pixels`, :func:`append_gaussians`): at
   scheduled steps, the pixels of the training view whose mean absolute colour error exceeds
   ``error_threshold`` and that have a trusted depth are sampled (all of them up to ``max_new``, else
   ``max_new`` drawn without replacement with probability proportional to the error). Trusted depth: the
   refined prior where its confidence >= ``min_confidence``; optionally (``render_depth``) the rendered depth
   where the render's alpha >= 0.5, and (``fallback_depth``) for any other pixel the camera-z depth of the point
   the input cameras look at (:func:`~sparse3d.models.splatting.gs3d.look_target`). Both options are off by
   default: Gaussians placed at a depth the stereo evidence does not support fit the input views but float in
   the novel ones. Each sampled pixel spawns a Gaussian at its back-projected point with the target colour, an
   isotropic scale of ``scale_px`` pixel footprints and opacity ``opacity``; the Adam moments of the new
   Gaussians start at zero. This adds Gaussians where the image is under-reconstructed and the geometry is
   known, without waiting for gradient statistics; the 3DGS densification (``densify``) still runs as in
   :class:`~sparse3d.models.splatting.gs3d.GaussianSplatting`.

Training objective per step: the 3DGS photometric loss plus ``rdg_weight`` x the relative depth loss (from
step ``rdg_start``). Everything else (learning rates, SH schedule, densification, export, checkpoints) is
:class:`~sparse3d.models.splatting.gs3d.GaussianSplatting`'s.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sparse3d.cameras import Cameras
from sparse3d.models.splatting.densify import append
from sparse3d.models.splatting.depth_priors import DepthPriorMaps, PlaneSweepDepthPrior
from sparse3d.models.splatting.gaussians import GaussianModel, rgb_to_sh0
from sparse3d.models.splatting.gs3d import GaussianSplatting, look_target
from sparse3d.models.splatting.losses import photometric_loss
from sparse3d.utils.errors import UserError
from sparse3d.views import PosedImages, ScenePoints

__all__ = [
    "RDGGaussianSplatting",
    "RefinedDepthPrior",
    "append_gaussians",
    "backproject_pixels",
    "patch_standardise",
    "refine_depth_prior",
    "relative_depth_loss",
    "select_error_pixels",
]

log = logging.getLogger("sparse3d.models.splatting.rdggs")


# ------------------------------------------------------------------------------------ relative depth loss
def _patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, N, p*p, C) non-overlapping patches of the top-left ``(H // p) p x (W // p) p`` crop."""
    b, h, w, c = x.shape
    hp, wp = h // p, w // p
    x = x[:, : hp * p, : wp * p]
    return x.reshape(b, hp, p, wp, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp * wp, p * p, c)


def patch_standardise(values: torch.Tensor, weight: torch.Tensor, patch_size: int,
                      flat_eps: float) -> torch.Tensor:
    """(B, N, P*P) standardised patches of (B, H, W) ``values``: weighted patch mean removed, divided by
    ``sqrt(var + (flat_eps * m)^2)`` with ``var`` the weighted patch variance and ``m`` the image's weighted
    mean of ``|values|`` (``weight`` (B, H, W) >= 0). Invariant to ``values -> a * values`` (a > 0); with
    ``flat_eps = 0`` also to ``values + b``."""
    v = _patches(values[..., None], patch_size)[..., 0]
    w = _patches(weight[..., None], patch_size)[..., 0]
    wsum = w.sum(-1, keepdim=True).clamp_min(1e-12)
    mean = (w * v).sum(-1, keepdim=True) / wsum
    var = (w * (v - mean) ** 2).sum(-1, keepdim=True) / wsum
    ref = (weight * values.abs()).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1e-12)
    floor = (flat_eps * ref)[:, None, None] ** 2
    return (v - mean) / (var + floor).clamp_min(1e-24).sqrt()


def relative_depth_loss(
    depth: torch.Tensor,
    guide: torch.Tensor | None,
    image: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    *,
    patch_size: int = 8,
    sigma: float = 1.0,
    image_weight: float = 0.0,
    image_sigma: float = 0.1,
    flat_eps: float = 0.01,
) -> torch.Tensor:
    """Patch-wise relative depth guidance (module docstring, item 2); scalar, differentiable in ``depth``.

    Args:
        depth: (H, W) or (B, H, W) rendered depth.
        guide: like ``depth``: the refined prior depth (may be None when ``image_weight == 1``).
        image: (H, W, 3) or (B, H, W, 3) colours, needed when ``image_weight > 0``.
        weight: like ``depth``, per-pixel weights >= 0 (default 1); a pair weighs ``w_i * w_j``.
        patch_size: P; the image is cropped to whole patches (top-left).
        sigma: width of the depth-similarity kernel on standardised depth.
        image_weight: lambda in ``F = (1 - lambda) G + lambda I``.
        image_sigma: width of the colour-similarity kernel.
        flat_eps: standard-deviation floor of a patch, relative to the image's mean depth.

    Returns 0 (still attached to ``depth``) when no pair has weight.
    """
    if depth.dim() == 2:
        depth = depth[None]
        guide = None if guide is None else guide[None]
        image = None if image is None else image[None]
        weight = None if weight is None else weight[None]
    if depth.dim() != 3:
        raise ValueError(f"depth must be (H, W) or (B, H, W), got {tuple(depth.shape)}")
    if int(patch_size) < 2 or min(depth.shape[1:]) < patch_size:
        raise ValueError(f"patch_size must be >= 2 and fit the image {tuple(depth.shape[1:])}, got {patch_size}")
    if not (sigma > 0 and image_sigma > 0 and 0.0 <= image_weight <= 1.0 and flat_eps >= 0):
        raise ValueError(f"need sigma > 0, image_sigma > 0, image_weight in [0, 1], flat_eps >= 0; got {sigma}, "
                         f"{image_sigma}, {image_weight}, {flat_eps}")
    if image_weight < 1.0 and (guide is None or guide.shape != depth.shape):
        raise ValueError(f"guide must have the depth's shape {tuple(depth.shape)}, got "
                         f"{None if guide is None else tuple(guide.shape)}")
    if image_weight > 0.0 and (image is None or image.shape[:3] != depth.shape):
        raise ValueError(f"image must be (..., H, W, C) matching depth {tuple(depth.shape)}, got "
                         f"{None if image is None else tuple(image.shape)}")
    w = torch.ones_like(depth) if weight is None else weight.to(depth).clamp_min(0.0)
    if w.shape != depth.shape:
        raise ValueError(f"weight must have the depth's shape {tuple(depth.shape)}, got {tuple(w.shape)}")
    p = int(patch_size)
    d = patch_standardise(depth, w, p, flat_eps)
    affinity = torch.exp(-(d[..., :, None] - d[..., None, :]) ** 2 / (2.0 * sigma**2))
    target = torch.zeros_like(affinity)
    if image_weight < 1.0:
        g = patch_standardise(guide.to(depth), w, p, flat_eps)  # type: ignore[union-attr]
        target = target + (1.0 - image_weight) * torch.exp(-(g[..., :, None] - g[..., None, :]) ** 2
                                                           / (2.0 * sigma**2))
    if image_weight > 0.0:
        c = _patches(image.to(depth), p)  # type: ignore[union-attr]
        dist2 = ((c[..., :, None, :] - c[..., None, :, :]) ** 2).sum(-1)
        target = target + image_weight * torch.exp(-dist2 / (2.0 * image_sigma**2))
    wp = _patches(w[..., None], p)[..., 0]
    pair = wp[..., :, None] * wp[..., None, :]
    total = pair.sum()
    if float(total) <= 0.0:
        return depth.sum() * 0.0
    return (pair * (affinity - target.detach()).abs()).sum() / total


# ------------------------------------------------------------------------------------ refined depth prior
@dataclass(frozen=True)
class RefinedDepthPrior:
    """Per-view metric depth after alignment, consistency check and image-guided refinement."""

    depth: torch.Tensor
    """(V, H, W) float32 camera-z depth (0 where there is none)."""
    confidence: torch.Tensor
    """(V, H, W) float32 in [0, 1]."""
    scale_shift: torch.Tensor
    """(V, 2) the fitted ``(s, t)`` per view ((1, 0) when not aligned)."""
    aligned_views: int
    """Views whose prior was fitted to sparse points."""

    def summary(self) -> dict[str, Any]:
        conf = self.confidence
        return {"prior_aligned_views": self.aligned_views,
                "prior_mean_confidence": float(conf.mean()) if conf.numel() else 0.0,
                "prior_confident_fraction": float((conf >= 0.2).float().mean()) if conf.numel() else 0.0}


def _pixel_grid(cameras: Cameras) -> torch.Tensor:
    """(H, W, 3) homogeneous pixel centres ``(j + 0.5, i + 0.5, 1)``."""
    j, i = torch.meshgrid(torch.arange(cameras.width, dtype=torch.float64) + 0.5,
                          torch.arange(cameras.height, dtype=torch.float64) + 0.5, indexing="xy")
    return torch.stack([j, i, torch.ones_like(j)], -1)


def backproject_pixels(cameras: Cameras, index: int, uv: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """(K, 3) world points at camera-z ``depth`` (K,) on the rays through continuous pixel coordinates ``uv``
    (K, 2) (x right, y down; pixel centres at +0.5) of camera ``index``; the inverse of :meth:`Cameras.project`."""
    K = cameras.K[index].double().cpu()
    c2w = cameras.c2w[index].double().cpu()
    homo = torch.cat([uv.double().cpu(), torch.ones(len(uv), 1, dtype=torch.float64)], -1)
    cam = (homo @ torch.linalg.inv(K).T) * depth.double().cpu()[:, None]
    world = cam @ c2w[:3, :3].T + c2w[:3, 3]
    return world.float().to(uv.device)


def _fit_scale_shift(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[float, float] | None:
    """Weighted least squares ``y ~ s x + t`` with one re-fit after dropping residuals > 3 MAD; None if
    fewer than 10 usable samples or a degenerate fit."""
    keep = w > 0
    for _ in range(2):
        if int(keep.sum()) < 10:
            return None
        xs, ys, ws = x[keep].double(), y[keep].double(), w[keep].double()
        A = torch.stack([xs, torch.ones_like(xs)], -1) * ws.sqrt()[:, None]
        sol = torch.linalg.lstsq(A, ys * ws.sqrt()).solution
        s, t = float(sol[0]), float(sol[1])
        res = (s * x.double() + t - y.double()).abs()
        mad = float(res[keep].median())
        keep = keep & (res <= 3.0 * max(mad, 1e-12))
    if not (math.isfinite(s) and math.isfinite(t)) or s <= 0:
        return None
    return s, t


def _align(prior: DepthPriorMaps, cameras: Cameras, points: ScenePoints | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    values = prior.values.float().cpu()
    v_n, h, w = values.shape
    scale_shift = torch.tensor([[1.0, 0.0]]).repeat(v_n, 1)
    if points is None or len(points) == 0:
        if prior.kind != "depth":
            raise UserError("method=rdggs: a relative-disparity depth prior (depth_prior=depth_anything) needs the "
                            "scene's sparse points to fix its scale; use the plane-sweep prior for scenes without them")
        return values.clone(), scale_shift, 0
    cams = cameras.to("cpu")
    uv, z = cams.project(points.xyz.cpu())
    out = torch.zeros_like(values)
    aligned = 0
    for v in range(v_n):
        col, row = uv[v, :, 0].floor().long(), uv[v, :, 1].floor().long()
        inside = (z[v] > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        px = values[v, row[inside], col[inside]]
        conf = prior.confidence[v].cpu()[row[inside], col[inside]]
        target = z[v, inside].float()
        if prior.kind == "depth":
            fit = _fit_scale_shift(px, target, conf)
        else:
            fit = _fit_scale_shift(px, 1.0 / target, conf)
        if fit is None:
            if prior.kind != "depth":
                raise UserError(f"method=rdggs: view {v} sees fewer than 10 sparse points; cannot fix the scale of "
                                "its relative-disparity prior")
            out[v] = values[v]
            continue
        s, t = fit
        scale_shift[v] = torch.tensor([s, t])
        aligned += 1
        if prior.kind == "depth":
            out[v] = (s * values[v] + t).clamp_min(0.0)
        else:
            inv = s * values[v] + t
            out[v] = torch.where(inv > 1e-8, 1.0 / inv.clamp_min(1e-8), torch.zeros_like(inv))
    return out, scale_shift, aligned


def _consistency(depth: torch.Tensor, conf: torch.Tensor, cameras: Cameras, tau: float) -> torch.Tensor:
    """(V, H, W) multi-view agreement factor in [0, 1] (module docstring, item 1b)."""
    v_n, h, w = depth.shape
    if v_n < 2:
        return torch.ones_like(depth)
    cams = cameras.to("cpu")
    grid = _pixel_grid(cams).reshape(-1, 3)
    factor = torch.zeros(v_n, h * w, dtype=torch.float64)
    for v in range(v_n):
        world = backproject_pixels(cams, v, grid[:, :2], depth[v].reshape(-1)).double()
        for u in range(v_n):
            if u == v:
                continue
            cam = world @ cams.R[u].double().T + cams.t[u].double()
            zu = cam[:, 2]
            pix = cam @ cams.K[u].double().T
            uvp = pix[:, :2] / zu.clamp_min(1e-12)[:, None]
            col, row = uvp[:, 0].floor().long(), uvp[:, 1].floor().long()
            ok = (zu > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h) & (depth[v].reshape(-1) > 0)
            du = torch.zeros_like(zu)
            cu = torch.zeros_like(zu)
            du[ok] = depth[u, row[ok], col[ok]].double()
            cu[ok] = conf[u, row[ok], col[ok]].double()
            ok = ok & (du > 0) & (cu > 0)
            err = (zu - du).abs() / zu.abs().clamp_min(1e-12)
            agree = torch.where(ok, torch.exp(-(err / tau) ** 2), torch.zeros_like(err))
            factor[v] = torch.maximum(factor[v], agree)
    return factor.reshape(v_n, h, w).float()


def _joint_bilateral(depth: torch.Tensor, conf: torch.Tensor, image: torch.Tensor, radius: int, sigma_space: float,
                     sigma_color: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One confidence-weighted joint bilateral pass (module docstring, item 1c) on (V, H, W) maps guided by
    (V, H, W, 3) images; returns the filtered depth and confidence."""
    k = 2 * radius + 1
    v_n, h, w = depth.shape

    def unfold(x: torch.Tensor) -> torch.Tensor:  # (V, C, H, W) -> (V, C, k*k, H, W), zero padded
        c = x.shape[1]
        return F.unfold(x, k, padding=radius).reshape(v_n, c, k * k, h, w)

    img = image.permute(0, 3, 1, 2).float()
    inside = unfold(torch.ones(v_n, 1, h, w))[:, 0]
    offsets = torch.arange(k, dtype=torch.float32) - radius
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    spatial = torch.exp(-(dx**2 + dy**2) / (2.0 * sigma_space**2)).reshape(1, k * k, 1, 1)
    colour = torch.exp(-((unfold(img) - img[:, :, None]) ** 2).sum(1) / (2.0 * sigma_color**2))
    base = spatial * colour * inside
    c_n = unfold(conf[:, None])[:, 0]
    d_n = unfold(depth[:, None])[:, 0]
    wd = base * c_n
    new_depth = (wd * d_n).sum(1) / wd.sum(1).clamp_min(1e-12)
    new_conf = wd.sum(1) / base.sum(1).clamp_min(1e-12)
    has = wd.sum(1) > 1e-12
    return torch.where(has, new_depth, torch.zeros_like(new_depth)), torch.where(has, new_conf, torch.zeros_like(new_conf))


def refine_depth_prior(
    prior: DepthPriorMaps,
    views: PosedImages,
    points: ScenePoints | None = None,
    *,
    consistency_tau: float = 0.02,
    radius: int = 3,
    sigma_space: float = 2.0,
    sigma_color: float = 0.1,
    iterations: int = 2,
) -> RefinedDepthPrior:
    """The refined depth prior of ``views`` (module docstring, item 1): alignment to ``points``, multi-view
    consistency (``consistency_tau``, ``consistency_tau <= 0`` skips it), then ``iterations`` joint bilateral
    passes (``radius``, ``sigma_space`` px, ``sigma_color``). Depth is camera-z in scene units, 0 where no view
    gives evidence; confidence in [0, 1]."""
    v_n, h, w = prior.values.shape
    if (v_n, h, w) != tuple(views.images.shape[:3]):
        raise ValueError(f"prior maps {tuple(prior.values.shape)} do not match the views {tuple(views.images.shape[:3])}")
    if int(radius) < 0 or int(iterations) < 0 or not (sigma_space > 0 and sigma_color > 0):
        raise ValueError(f"need radius >= 0, iterations >= 0, sigma_space > 0, sigma_color > 0; got {radius}, "
                         f"{iterations}, {sigma_space}, {sigma_color}")
    depth, scale_shift, aligned = _align(prior, views.cameras, points)
    conf = (prior.confidence.float().cpu().clamp(0.0, 1.0) * (depth > 0)).contiguous()
    if consistency_tau > 0:
        conf = conf * _consistency(depth, conf, views.cameras, float(consistency_tau))
    image = views.images.detach().float().cpu()
    for _ in range(int(iterations)):
        depth, conf = _joint_bilateral(depth, conf, image, int(radius), float(sigma_space), float(sigma_color))
    return RefinedDepthPrior(depth=depth.contiguous(), confidence=conf.clamp(0.0, 1.0).contiguous(),
                             scale_shift=scale_shift, aligned_views=aligned)


# ------------------------------------------------------------------------------------- adaptive sampling
def select_error_pixels(
    render: torch.Tensor,
    target: torch.Tensor,
    eligible: torch.Tensor,
    error_threshold: float,
    max_new: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(K, 2) long ``(row, col)`` of the pixels to spawn Gaussians at (module docstring, item 3).

    ``render``/``target`` (H, W, 3), ``eligible`` (H, W) bool. Candidates: eligible pixels whose mean absolute
    colour error exceeds ``error_threshold``; all of them when at most ``max_new``, else ``max_new`` drawn
    without replacement with probability proportional to the error. Rows come sorted (row-major order)."""
    if render.shape != target.shape or render.dim() != 3 or eligible.shape != render.shape[:2]:
        raise ValueError(f"render and target must be (H, W, 3) and eligible (H, W); got {tuple(render.shape)}, "
                         f"{tuple(target.shape)}, {tuple(eligible.shape)}")
    err = (render.detach() - target.detach()).abs().mean(-1)
    cand = eligible & (err > error_threshold)
    flat = torch.nonzero(cand.reshape(-1)).squeeze(1)
    if int(max_new) <= 0 or flat.numel() == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=render.device)
    if flat.numel() > int(max_new):
        probs = err.reshape(-1)[flat].float().cpu()
        pick = torch.multinomial(probs, int(max_new), replacement=False, generator=generator)
        flat = flat[pick.to(flat.device)].sort().values
    w = render.shape[1]
    return torch.stack([flat // w, flat % w], -1)


def append_gaussians(model: GaussianModel, optimizer: torch.optim.Optimizer, means: torch.Tensor, rgb: torch.Tensor,
                     scales: torch.Tensor, opacity: float) -> int:
    """Append ``len(means)`` isotropic Gaussians (means (K, 3), colours (K, 3) in [0, 1] as SH DC, higher SH
    bands 0, scales (K,), identity rotation, ``opacity``) after the existing ones; their Adam moments start at
    zero, the existing parameters and moments are unchanged. Returns K."""
    k = int(means.shape[0])
    if k == 0:
        return 0
    if means.shape != (k, 3) or rgb.shape != (k, 3) or scales.shape != (k,):
        raise ValueError(f"means (K, 3), rgb (K, 3) and scales (K,) expected, got {tuple(means.shape)}, "
                         f"{tuple(rgb.shape)}, {tuple(scales.shape)}")
    if not 0.0 < opacity < 1.0:
        raise ValueError(f"opacity must be in (0, 1), got {opacity}")
    dev = model.means.device
    quats = torch.zeros(k, 4, device=dev)
    quats[:, 0] = 1.0
    new = {
        "means": means.to(dev).float(),
        "log_scales": scales.to(dev).float().clamp_min(1e-8).log()[:, None].repeat(1, 3),
        "quats": quats,
        "opacity_logits": torch.full((k,), math.log(opacity / (1.0 - opacity)), device=dev),
        "sh0": rgb_to_sh0(rgb.to(dev).float())[:, None, :],
        "sh_rest": torch.zeros(k, model.sh_rest.shape[1], 3, device=dev),
    }
    return append(model, optimizer, new)


# ------------------------------------------------------------------------------------------------ method
DEFAULT_SAMPLING: dict[str, Any] = {"every": 50, "start": 50, "stop_fraction": 0.6, "max_new": 2000,
                                    "error_threshold": 0.1, "min_confidence": 0.2, "scale_px": 1.0,
                                    "opacity": 0.1, "render_depth": False,
                                    "fallback_depth": False}
DEFAULT_REFINE: dict[str, Any] = {"consistency_tau": 0.02, "radius": 3, "sigma_space": 2.0, "sigma_color": 0.1,
                                  "iterations": 2}
DEFAULT_RDG: dict[str, Any] = {"patch_size": 8, "sigma": 1.0, "image_weight": 0.0, "image_sigma": 0.1,
                               "flat_eps": 0.01}


def _merged(name: str, defaults: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    unknown = set(given or {}) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {name} keys {sorted(unknown)}; expected {sorted(defaults)}")
    return {**defaults, **dict(given or {})}


class RDGGaussianSplatting(GaussianSplatting):
    """RDG-GS on top of :class:`~sparse3d.models.splatting.gs3d.GaussianSplatting` (see the module docstring).

    Args (besides those of ``GaussianSplatting``, passed through ``**gs3d``):
        depth_prior: ``prior(views) -> DepthPriorMaps`` (default :class:`PlaneSweepDepthPrior` with its defaults).
        refine: keyword arguments of :func:`refine_depth_prior` (:data:`DEFAULT_REFINE`).
        prior_init: initialise from the refined prior (plus the scene's points); falls back to ``init`` when
            fewer than 100 pixels are confident.
        num_prior_points: most prior pixels back-projected for the initialisation.
        num_random_points: grey Gaussians added uniformly in gs3d's random-initialisation cube (``init_extent``)
            with the prior initialisation, for the regions the prior has no evidence in (textureless areas).
        init_min_confidence: refined confidence a pixel needs to seed a Gaussian.
        rdg_weight: weight of the relative depth loss (0 turns it off); ``rdg_start``: first step using it.
        rdg: keyword arguments of :func:`relative_depth_loss` (:data:`DEFAULT_RDG`).
        sampling: adaptive sampling (:data:`DEFAULT_SAMPLING`): at steps ``s >= start`` with
            ``s % every == 0`` and ``s < stop_fraction * max_steps``; ``None`` turns it off.
    """

    def __init__(
        self,
        depth_prior: Callable[[PosedImages], DepthPriorMaps] | None = None,
        refine: Mapping[str, Any] | None = None,
        prior_init: bool = True,
        num_prior_points: int = 20_000,
        num_random_points: int = 5_000,
        init_min_confidence: float = 0.2,
        rdg_weight: float = 0.1,
        rdg_start: int = 0,
        rdg: Mapping[str, Any] | None = None,
        sampling: Mapping[str, Any] | None = None,
        **gs3d: Any,
    ) -> None:
        super().__init__(**gs3d)
        if depth_prior is not None and not callable(depth_prior):
            raise ValueError(f"depth_prior must be callable (views -> DepthPriorMaps), got {type(depth_prior).__name__}")
        if int(num_prior_points) < 1 or not 0.0 <= init_min_confidence <= 1.0:
            raise ValueError(f"num_prior_points must be >= 1 and init_min_confidence in [0, 1], got "
                             f"{num_prior_points}, {init_min_confidence}")
        if rdg_weight < 0 or int(rdg_start) < 0:
            raise ValueError(f"rdg_weight and rdg_start must be >= 0, got {rdg_weight}, {rdg_start}")
        self.depth_prior = depth_prior if depth_prior is not None else PlaneSweepDepthPrior()
        self.refine = _merged("refine", DEFAULT_REFINE, refine)
        self.prior_init = bool(prior_init)
        if int(num_random_points) < 0:
            raise ValueError(f"num_random_points must be >= 0, got {num_random_points}")
        self.num_prior_points, self.init_min_confidence = int(num_prior_points), float(init_min_confidence)
        self.num_random_points = int(num_random_points)
        self.rdg_weight, self.rdg_start = float(rdg_weight), int(rdg_start)
        self.rdg = _merged("rdg", DEFAULT_RDG, rdg)
        relative_depth_loss(torch.zeros(self.rdg["patch_size"], self.rdg["patch_size"]),  # validates rdg values
                            torch.zeros(self.rdg["patch_size"], self.rdg["patch_size"]),
                            torch.zeros(self.rdg["patch_size"], self.rdg["patch_size"], 3), **self.rdg)
        self.sampling = None if sampling is None else _merged("sampling", DEFAULT_SAMPLING, sampling)
        if self.sampling is not None:
            s = self.sampling
            if int(s["every"]) < 1 or int(s["start"]) < 0 or int(s["max_new"]) < 0 or not (
                    s["scale_px"] > 0 and 0 < s["opacity"] < 1 and 0 <= s["stop_fraction"] <= 1):
                raise ValueError(f"sampling needs every >= 1, start >= 0, max_new >= 0, scale_px > 0, opacity in "
                                 f"(0, 1), stop_fraction in [0, 1]; got {dict(s)}")
        self.prior: RefinedDepthPrior | None = None
        self.num_sampled = 0
        self.sampling_events = 0

    # ------------------------------------------------------------------------------------------ set-up
    def setup(self, views: PosedImages, max_steps: int, points: ScenePoints | None = None) -> None:
        """Refined prior, then the 3DGS set-up seeded from it (and ``points``); see the module docstring."""
        raw = self.depth_prior(views)
        self.prior = refine_depth_prior(raw, views, points, **self.refine)
        seeds = points
        if self.prior_init:
            prior_points = self._prior_points(views)
            if prior_points is None:
                log.warning("the refined depth prior has fewer than 100 confident pixels; initialising as gs3d")
            else:
                parts = [prior_points] + ([points] if points is not None and len(points) > 0 else [])
                if self.num_random_points > 0:  # coverage where the prior has no evidence (textureless areas)
                    parts.append(self._random_points(views))
                seeds = ScenePoints(torch.cat([p.xyz.to(prior_points.xyz) for p in parts]),
                                    torch.cat([p.rgb.to(prior_points.xyz) for p in parts]),
                                    " + ".join(p.source for p in parts))
        super().setup(views, max_steps, points=seeds)
        self.num_sampled = 0
        self.sampling_events = 0

    def _prior_points(self, views: PosedImages) -> ScenePoints | None:
        prior = self._require_prior()
        conf = prior.confidence
        good = torch.nonzero((conf >= self.init_min_confidence) & (prior.depth > 0))  # (P, 3) view, row, col
        if len(good) < 100:
            return None
        if len(good) > self.num_prior_points:
            pick = torch.randperm(len(good))[: self.num_prior_points].sort().values
            good = good[pick]
        xyz, rgb = [], []
        images = views.images.detach().float().cpu()
        for v in range(len(views)):
            sel = good[good[:, 0] == v]
            if len(sel) == 0:
                continue
            uv = torch.stack([sel[:, 2].double() + 0.5, sel[:, 1].double() + 0.5], -1)
            xyz.append(backproject_pixels(views.cameras, v, uv, prior.depth[v, sel[:, 1], sel[:, 2]]))
            rgb.append(images[v, sel[:, 1], sel[:, 2]].clamp(0.0, 1.0))
        device = views.images.device
        return ScenePoints(torch.cat(xyz).float().to(device), torch.cat(rgb).float().to(device), "refined depth prior")

    def _random_points(self, views: PosedImages) -> ScenePoints:
        """``num_random_points`` grey points uniform in gs3d's random-initialisation cube (``init_extent``)."""
        device = views.images.device
        target = look_target(views.cameras).to(device)
        distance = float((views.cameras.centers.to(device).float() - target).norm(dim=-1).mean())
        half = self.init_extent * distance
        xyz = target + (torch.rand(self.num_random_points, 3, device=device) * 2 - 1) * half
        return ScenePoints(xyz.float(), torch.full_like(xyz, 0.5).float(), "random cube")

    def _require_prior(self) -> RefinedDepthPrior:
        if self.prior is None:
            raise RuntimeError("call setup() first")
        return self.prior

    # ---------------------------------------------------------------------------------------- training
    def _render_rgbd(self, camera: Cameras, step: int, meta: dict[str, Any] | None,
                     absgrad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(1, H, W, 3) colours, (1, H, W) expected depth and (1, H, W) alpha of one camera."""
        out, alphas = self.rasterize(camera, step, render_mode="RGB+ED", meta=meta, absgrad=absgrad)
        return out[..., :3], out[..., 3], alphas[..., 0]

    def training_step(self, step: int) -> dict[str, float]:
        model, optimizer, views = self._require()
        prior = self._require_prior()
        self.update_learning_rates(step)
        index = int(torch.randint(len(views), (1,)))
        target = views.images[index : index + 1]
        strategy = self.strategy
        meta: dict[str, Any] | None = None if strategy is None else {}
        t0 = time.perf_counter()
        rendered = self._render_rgbd(views.cameras[index], step, meta,
                                     absgrad=strategy is not None and strategy.absgrad)
        if strategy is not None and meta is not None:
            strategy.step_pre_backward(meta)
        t1 = time.perf_counter()
        # The losses see detached copies of the render, so their backward and the rasterizer's are timed apart.
        colors, depth, alpha = (x.detach().requires_grad_(i < 2) for i, x in enumerate(rendered))
        loss, parts = photometric_loss(colors, target, self.ssim_weight)
        if self.rdg_weight > 0 and step >= self.rdg_start:
            device = depth.device
            weight = prior.confidence[index].to(device)[None] * alpha.detach()
            rdg = relative_depth_loss(depth, prior.depth[index].to(device)[None], target, weight, **self.rdg)
            loss = loss + self.rdg_weight * rdg
            parts["rdg"] = float(rdg.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        grads = [(out, leaf.grad) for out, leaf in zip(rendered[:2], (colors, depth)) if leaf.grad is not None]
        torch.autograd.backward([g[0] for g in grads], [g[1] for g in grads])
        t3 = time.perf_counter()
        optimizer.step()
        if strategy is not None and meta is not None:
            strategy.step_post_backward(model, optimizer, step, meta)
        added = 0
        if self._is_sampling_step(step):
            added = self._adaptive_sample(index, colors[0].detach(), depth[0].detach(), alpha[0])
        self.add_timings(rasterizer=(t1 - t0) + (t3 - t2), losses=t2 - t1, update=time.perf_counter() - t3)
        self.step = step + 1
        return {"loss": float(loss.detach()), **parts, "num_gaussians": float(len(model)),
                "sampled": float(added)}

    def _is_sampling_step(self, step: int) -> bool:
        s = self.sampling
        if s is None:
            return False
        return step >= int(s["start"]) and step % int(s["every"]) == 0 and step < s["stop_fraction"] * self.max_steps

    @torch.no_grad()
    def _adaptive_sample(self, index: int, render: torch.Tensor, depth: torch.Tensor, alpha: torch.Tensor) -> int:
        """Spawn Gaussians at the badly reconstructed pixels of view ``index`` (module docstring, item 3)."""
        s = self.sampling
        assert s is not None
        model, optimizer, views = self._require()
        prior = self._require_prior()
        device = render.device
        pconf, pdepth = prior.confidence[index].to(device), prior.depth[index].to(device)
        use_prior = (pconf >= s["min_confidence"]) & (pdepth > 0)
        use_render = ~use_prior & (alpha >= 0.5) & torch.isfinite(depth) & (depth > 0) & bool(s["render_depth"])
        eligible = torch.ones_like(use_prior) if s["fallback_depth"] else use_prior | use_render
        pix = select_error_pixels(render, views.images[index], eligible, float(s["error_threshold"]),
                                  int(s["max_new"]))
        self.sampling_events += 1
        if len(pix) == 0:
            return 0
        rows, cols = pix[:, 0], pix[:, 1]
        z = torch.where(use_prior[rows, cols], pdepth[rows, cols], depth[rows, cols].detach())
        if s["fallback_depth"]:  # neither prior nor render has a depth: the look-at point's depth in this view
            cam = views.cameras[index]
            look = look_target(views.cameras).to(cam.viewmat)
            z_look = float(cam.viewmat[0, 2, :3] @ look + cam.viewmat[0, 2, 3])
            z = torch.where(use_prior[rows, cols] | use_render[rows, cols], z, torch.full_like(z, max(z_look, 1e-6)))
        uv = torch.stack([cols.double() + 0.5, rows.double() + 0.5], -1)
        means = backproject_pixels(views.cameras, index, uv, z)
        focal = float(views.cameras.K[index, 0, 0] + views.cameras.K[index, 1, 1]) / 2.0
        scales = z.float() / focal * float(s["scale_px"])
        added = append_gaussians(model, optimizer, means, views.images[index][rows, cols], scales, float(s["opacity"]))
        strategy = self.strategy
        if strategy is not None:  # the statistics cover the new Gaussians too, from zero
            strategy.extend(added)
        self.num_sampled += added
        return added

    # ------------------------------------------------------------------------------------------ output
    def render_depth(self, cameras: Cameras) -> torch.Tensor:
        """(N, H, W) expected camera-z depth of ``cameras`` (0 where nothing is rendered), one camera at a time."""
        model, _, _ = self._require()
        out = []
        with torch.no_grad():
            for i in range(len(cameras)):
                _, depth, alpha = self._render_rgbd(cameras[i].to(model.means.device), self.step, None, False)
                out.append(torch.where(alpha > 1e-4, depth, torch.zeros_like(depth)))
        return torch.cat(out) if out else torch.zeros(0, cameras.height, cameras.width)

    def summary(self) -> dict[str, Any]:
        info = super().summary()
        info.update({"adaptive_sampled": self.num_sampled, "sampling_events": self.sampling_events})
        if self.prior is not None:
            info.update(self.prior.summary())
        return info

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["rdggs"] = {"num_sampled": self.num_sampled, "sampling_events": self.sampling_events}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """As ``GaussianSplatting`` (the refined prior is rebuilt by ``setup``), plus the sampling counters."""
        super().load_state_dict(state)
        extra = state.get("rdggs", {})
        self.num_sampled = int(extra.get("num_sampled", 0))
        self.sampling_events = int(extra.get("sampling_events", 0))
