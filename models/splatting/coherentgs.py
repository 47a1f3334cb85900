"""CoherentGS (Paliwal et al., "CoherentGS: Sparse Novel View Synthesis with Coherent 3D Gaussians", ECCV 2024)
as a per-scene method.

Representation. One Gaussian per pixel of every input view, on a grid subsampled by ``stride`` (1 = every
pixel, as in the paper; each Gaussian sits at the centre of its ``stride x stride`` block and takes the block's
mean colour). A Gaussian can only slide along its pixel's ray: world position ``= centre_v + z * ray``, with
``z = z_init + depth_gain * z_ref * tanh(D_xyz)[layer]``, where ``D_xyz`` is the output of an implicit
convolutional decoder (:class:`~sparse3d.models.splatting.decoder.ImplicitDecoder`, one code per input view),
decoded at ``1 / decoder_downsample`` of the grid and upsampled bilinearly, and ``[layer]`` reads the channel of
the pixel's own depth layer (so offsets are not smoothed across depth discontinuities). Opacity
``= sigmoid(logit(base_opacity) + opacity_gain * tanh(D_opacity)[layer])`` from a second decoder. The SH DC
colour is the pixel colour and is never optimised; higher SH bands, scales and rotations are learned. Scales
start isotropic at the pixel footprint ``scale_factor * stride * z / (2 f_y)`` and are reset to it (at the
current depth) every ``scale_reset_every`` steps during the first ``scale_reset_until`` fraction of the main
stage. No densification, no pruning. ``z_ref`` is the median initial depth, which makes gains and losses
independent of the scene's units.

Pre-processing (in ``setup``, deterministic): a depth prior (default
:class:`~sparse3d.models.splatting.depth_priors.PlaneSweepDepthPrior`); metric depth is blended with a
push-pull fill where its confidence is low and median-filtered; relative disparity (Depth Anything) becomes
``z_ref / (disp / max(disp) + 0.2)`` as in the paper. Optional ``support_plane`` (our addition for tabletop scenes
such as SpaRe/DTU, where the object stands on a textureless platform that stereo cannot match and the push-pull
fill would scatter platform Gaussians in front of the object in other views): a plane is fitted by RANSAC to the
confident stereo points (:func:`fit_support_plane`: cameras on one side, few points behind it); its confident
inliers and the low-confidence pixels whose plane point is photo-consistent with another input view
(:func:`photo_consistent`) take the plane's depth, the remaining pixels are push-pull filled from the other
confident pixels only (so an object's textureless parts are filled from the object, not the floor), and every
depth is clamped to lie in front of the plane (nothing visible lies behind a support plane). Depth layers: 1-D k-means of each view's disparity into
``num_layers`` bins (the paper uses agglomerative clustering). Flow: OpenCV DIS between every ordered pair of
input views with the forward-backward consistency mask (:mod:`sparse3d.models.splatting.flow`).

Losses. Photometric ``0.8 ML1 + 0.2 (1 - SSIM)`` (ML1: L1 over 5 levels of 2x average pooling with weights
1, 1/4, 1/8, 1/16, 1/32; the paper's VGG term is not used: it needs ImageNet weights). Flow loss: for a random
reference view ``i`` and every other view ``j``, ``mean |M_ij * (warp(XYZ_j, F_ij) - XYZ_i)| / z_ref``: pixels
that the flow matches must hold Gaussians at the same 3-D point. Layer-aware total variation of the rendered
disparity ``1 / (d / z_ref + 1)`` with ``d = D / (alpha + 1e-6)`` (:func:`layered_tv`), ``gamma`` rising from
``tv_gamma_start`` to 1 over the main stage.

Schedule (``training_step``): the first ``align_steps`` steps fit a per-view scale and shift of the initial
depth (``z = s_v z_init + o_v``) by the flow loss alone (Adam, cosine-annealed), which is then baked into
``z_init``; the remaining steps optimise the full loss, one random input view rendered per step. Decoders use
AdamW with a ``triangular2`` cyclic learning rate, as the official code.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sparse3d.cameras import Cameras
from sparse3d.io.gaussian_ply import GaussianCloud, save_gaussian_ply
from sparse3d.models.splatting.decoder import DEFAULT_WIDTHS, ImplicitDecoder
from sparse3d.models.splatting.depth_priors import DepthPriorMaps, PlaneSweepDepthPrior
from sparse3d.models.splatting.flow import backward_warp, pairwise_flows
from sparse3d.models.splatting.gaussians import rgb_to_sh0
from sparse3d.models.splatting.gs3d import PLY_NAME, look_target
from sparse3d.models.splatting.losses import photometric_loss
from sparse3d.views import PosedImages

__all__ = ["CoherentGS", "layered_tv", "flow_loss", "multiscale_l1", "depth_layers", "fill_depth",
           "fit_support_plane", "plane_depth", "photo_consistent", "BASE_OPACITY", "XYZ_NGF", "OPACITY_NGF",
           "SUPPORT_PLANE_DEFAULTS"]

log = logging.getLogger("sparse3d.models.splatting.coherentgs")

BASE_OPACITY: dict[int, float] = {2: 0.6, 3: 0.5, 4: 0.35}
"""The official code's fixed base opacity per input-view count (0.5 for other counts)."""
XYZ_NGF: dict[int, int] = {2: 10, 3: 15, 4: 18}
OPACITY_NGF: dict[int, int] = {2: 6, 3: 10, 4: 12}
ML1_WEIGHTS: tuple[float, ...] = (1.0, 1 / 4, 1 / 8, 1 / 16, 1 / 32)
TIMING_KEYS: tuple[str, ...] = ("decoder", "rasterizer", "losses", "update")
SUPPORT_PLANE_DEFAULTS: dict[str, Any] = {"inlier_tol": 0.01, "min_confidence": 0.5, "photo_tol": 0.04,
                                          "iterations": 256, "min_inliers": 50}
"""Defaults of the ``support_plane`` option (see :class:`CoherentGS`)."""


# ------------------------------------------------------------------------------------------- losses
def multiscale_l1(render: torch.Tensor, target: torch.Tensor, weights: Sequence[float] = ML1_WEIGHTS) -> torch.Tensor:
    """``sum_k w_k mean|pool^k(render) - pool^k(target)|`` of (N, H, W, C) images, ``pool`` = 2x2 average pooling
    (levels stop once a side would drop below 1)."""
    if render.shape != target.shape or render.dim() != 4:
        raise ValueError(f"render and target must be (N, H, W, C) of one shape, got {tuple(render.shape)} and "
                         f"{tuple(target.shape)}")
    x, y = render.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)
    total = render.new_zeros(())
    for k, w in enumerate(weights):
        if k > 0:
            if min(x.shape[-2:]) < 2:
                break
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        total = total + w * (x - y).abs().mean()
    return total


def layered_tv(disparity: torch.Tensor, layers: torch.Tensor | None, gamma: float) -> torch.Tensor:
    """``gamma * TV_layer(d) + (1 - gamma) * TV(d)`` of (B, H, W) maps.

    ``TV(d) = mean|d[:, :, 1:] - d[:, :, :-1]| + mean|d[:, 1:] - d[:, :-1]|`` (mean absolute first difference in
    x plus in y); ``TV_layer`` counts only differences between neighbours of the same depth layer (``layers``
    (B, H, W) integer labels), still divided by all neighbour pairs, so a discontinuity between layers costs
    nothing. ``layers=None`` is plain TV.
    """
    if disparity.dim() != 3:
        raise ValueError(f"disparity must be (B, H, W), got {tuple(disparity.shape)}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    dx = (disparity[:, :, 1:] - disparity[:, :, :-1]).abs()
    dy = (disparity[:, 1:] - disparity[:, :-1]).abs()
    plain = dx.mean() + dy.mean()
    if layers is None or gamma == 0.0:
        return plain
    if layers.shape != disparity.shape:
        raise ValueError(f"layers {tuple(layers.shape)} must match disparity {tuple(disparity.shape)}")
    same_x = (layers[:, :, 1:] == layers[:, :, :-1]).to(dx.dtype)
    same_y = (layers[:, 1:] == layers[:, :-1]).to(dy.dtype)
    layered = (dx * same_x).mean() + (dy * same_y).mean()
    return gamma * layered + (1.0 - gamma) * plain


def flow_loss(xyz: torch.Tensor, flows: torch.Tensor, masks: torch.Tensor, ref: int) -> torch.Tensor:
    """``sum_{j != ref} mean |M_ref,j * (warp(XYZ_j, F_ref,j) - XYZ_ref)|`` (mean over pixels and coordinates).

    ``xyz`` (V, H, W, 3) per-pixel world positions; ``flows`` (V, V, H, W, 2) in pixels of this grid; ``masks``
    (V, V, H, W) bool. Samples that fall outside view ``j`` count as masked out.
    """
    v = xyz.shape[0]
    if flows.shape[:4] != (v, v, *xyz.shape[1:3]) or masks.shape != flows.shape[:4]:
        raise ValueError(f"flows {tuple(flows.shape)} and masks {tuple(masks.shape)} do not match xyz "
                         f"{tuple(xyz.shape)}")
    others = [j for j in range(v) if j != ref]
    if not others:
        return xyz.new_zeros(())
    src = xyz[others].permute(0, 3, 1, 2)
    warped, inside = backward_warp(src, flows[ref, others])
    m = (masks[ref, others] & inside).to(xyz.dtype)[:, None]
    diff = (warped - xyz[ref].permute(2, 0, 1)[None]).abs() * m
    return diff.mean(dim=(1, 2, 3)).sum()


# --------------------------------------------------------------------------------------- pre-processing
def fill_depth(depth: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    """(H, W) depth where low-confidence pixels take the confidence-weighted push-pull interpolation of the rest:
    ``c * depth + (1 - c) * fill`` with ``c`` = confidence clamped to [0, 1]. Without any confidence the result
    is the plain mean of ``depth``."""
    c = confidence.clamp(0.0, 1.0).float()
    d = depth.float()
    if not bool((c > 0).any()):
        return torch.full_like(d, float(d.mean()))
    return _push_pull(d[None, None], c[None, None])[0, 0]


def _push_pull(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    h, wd = v.shape[-2:]
    if h <= 1 and wd <= 1:
        return torch.where(w > 0, v, torch.zeros_like(v))
    vw = F.avg_pool2d(v * w, 2, ceil_mode=True)
    cw = F.avg_pool2d(w, 2, ceil_mode=True)
    coarse = _push_pull(torch.where(cw > 0, vw / cw.clamp_min(1e-12), torch.zeros_like(vw)), cw.clamp(0, 1))
    up = F.interpolate(coarse, size=(h, wd), mode="bilinear", align_corners=False)
    return w * v + (1 - w) * up


def depth_layers(disparity: torch.Tensor, num_layers: int = 5, iters: int = 20) -> torch.Tensor:
    """(H, W) int64 layer labels 0..num_layers-1 of one disparity map, ordered far (0) to near: 1-D k-means
    (Lloyd, centres initialised at evenly spaced quantiles). Fewer distinct values give fewer used labels."""
    if disparity.dim() != 2 or num_layers < 1:
        raise ValueError(f"disparity must be (H, W) and num_layers >= 1, got {tuple(disparity.shape)}, {num_layers}")
    x = disparity.reshape(-1).double()
    q = (torch.arange(num_layers, dtype=torch.float64) + 0.5) / num_layers
    centres = torch.quantile(x, q)
    for _ in range(iters):
        labels = (x[:, None] - centres[None]).abs().argmin(1)
        sums = torch.zeros(num_layers, dtype=torch.float64).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=num_layers).double()
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    order = torch.argsort(centres)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(num_layers)
    labels = rank[(x[:, None] - centres[None]).abs().argmin(1)]
    return labels.reshape(disparity.shape)


def fit_support_plane(points: torch.Tensor, centres: torch.Tensor, inlier_tol: float, iterations: int = 256,
                      min_inliers: int = 50, generator: torch.Generator | None = None) -> torch.Tensor | None:
    """The dominant *support* plane of (N, 3) ``points`` seen from cameras at (V, 3) ``centres``: ``(a, b, c, d)``
    with unit normal ``(a, b, c)`` facing the cameras (``n . x + d > 0`` at every centre), or None.

    RANSAC over 3-point planes that have every camera on one side; a plane scores its inliers
    (``|n . x + d| <= inlier_tol``) minus twice the points farther than ``inlier_tol`` behind it (a support plane
    has nothing visible behind it, so an object's side face loses to the floor it stands on). The winner is
    re-fitted by least squares (SVD) to its inliers; None when it has fewer than ``min_inliers``.
    """
    if points.dim() != 2 or points.shape[-1] != 3 or centres.dim() != 2 or centres.shape[-1] != 3:
        raise ValueError(f"points (N, 3) and centres (V, 3) expected, got {tuple(points.shape)}, {tuple(centres.shape)}")
    x = points.double()
    c = centres.double()
    n_pts = x.shape[0]
    if n_pts < max(3, min_inliers):
        return None
    picks = torch.randint(n_pts, (int(iterations), 3), generator=generator)
    a, b, cc = x[picks[:, 0]], x[picks[:, 1]], x[picks[:, 2]]
    normal = torch.linalg.cross(b - a, cc - a)
    length = normal.norm(dim=-1, keepdim=True)
    ok = length[:, 0] > 1e-12
    normal = normal / length.clamp_min(1e-12)
    d = -(normal * a).sum(-1)
    side = c @ normal.T + d  # (V, iterations)
    flip = torch.where(side[0] < 0, -1.0, 1.0).to(x)
    normal, d, side = normal * flip[:, None], d * flip, side * flip
    ok &= (side > 0).all(0)
    dist = x @ normal.T + d  # (N, iterations)
    score = (dist.abs() <= inlier_tol).sum(0) - 2 * (dist < -inlier_tol).sum(0)
    score = torch.where(ok, score, torch.full_like(score, -(n_pts * 3) - 1))
    best = int(score.argmax())
    if not bool(ok[best]):
        return None
    inliers = x[dist[:, best].abs() <= inlier_tol]
    if inliers.shape[0] < max(3, min_inliers):
        return None
    mean = inliers.mean(0)
    normal_ls = torch.linalg.svd(inliers - mean, full_matrices=False).Vh[-1]
    d_ls = -float(normal_ls @ mean)
    if float((c @ normal_ls + d_ls).min()) < 0 and float((c @ normal_ls + d_ls).max()) <= 0:
        normal_ls, d_ls = -normal_ls, -d_ls
    if not bool(((c @ normal_ls + d_ls) > 0).all()):  # the refit tilted through a camera: keep the sample plane
        normal_ls, d_ls = normal[best], float(d[best])
    return torch.cat([normal_ls, torch.tensor([d_ls], dtype=torch.float64)]).float()


def plane_depth(plane: torch.Tensor, centres: torch.Tensor, rays: torch.Tensor) -> torch.Tensor:
    """(V, H, W) camera-z depth where the rays ``centres[v] + z * rays[v, i, j]`` ((V, 3) and (V, H, W, 3), rays
    scaled to camera z = 1) meet ``plane`` ``(a, b, c, d)``; 0 where they do not meet it in front of the camera."""
    n, d = plane[:3].double(), float(plane[3])
    num = -(centres.double() @ n + d)  # (V,)
    den = rays.double() @ n  # (V, H, W)
    z = num[:, None, None] / torch.where(den.abs() > 1e-12, den, torch.full_like(den, 1e-12))
    return torch.where((z > 0) & (den.abs() > 1e-12), z, torch.zeros_like(z)).float()


def photo_consistent(images: torch.Tensor, cameras: Cameras, centres: torch.Tensor, rays: torch.Tensor,
                     depth: torch.Tensor, tol: float, max_unseen_depth: float | None = None) -> torch.Tensor:
    """(V, H, W) bool: the point at ``depth`` on each pixel's ray (``centres``, ``rays`` as :func:`plane_depth`)
    has, in at least one other view that sees it in front of the camera and inside the image, a 3x3-mean colour
    within ``tol`` (mean absolute difference over channels) of the pixel's own 3x3-mean colour; also True where
    no other view sees the point (no evidence against it) and ``depth <= max_unseen_depth`` (None: any depth),
    False where ``depth <= 0``. The bound keeps rays that graze past a tall object, and meet the plane far behind
    it where no other view looks, from counting as plane pixels."""
    v_n, h, w, _ = images.shape
    blur = F.avg_pool2d(images.permute(0, 3, 1, 2).float(), 3, stride=1, padding=1, count_include_pad=False)
    world = centres[:, None, None, :].double() + depth[..., None].double() * rays.double()
    agree = torch.zeros(v_n, h, w, dtype=torch.bool)
    seen = torch.zeros(v_n, h, w, dtype=torch.bool)
    cams = cameras.to("cpu")
    for v in range(v_n):
        for u in range(v_n):
            if u == v:
                continue
            uv, zu = cams[u].project(world[v].reshape(-1, 3))
            uv, zu = uv[0].reshape(h, w, 2), zu[0].reshape(h, w)
            inside = (zu > 0) & (uv[..., 0] >= 0) & (uv[..., 0] <= w) & (uv[..., 1] >= 0) & (uv[..., 1] <= h)
            grid = torch.stack([uv[..., 0] / w * 2 - 1, uv[..., 1] / h * 2 - 1], -1).float()
            sample = F.grid_sample(blur[u : u + 1], grid[None], mode="bilinear", padding_mode="border",
                                   align_corners=False)[0]
            diff = (sample - blur[v]).abs().mean(0)
            seen[v] |= inside
            agree[v] |= inside & (diff <= tol)
    unseen_ok = ~seen if max_unseen_depth is None else ~seen & (depth <= max_unseen_depth)
    return (agree | unseen_ok) & (depth > 0)


def _world_rays(K: torch.Tensor, viewmat: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """(V, len(ys), len(xs), 3) float64 world offsets of one unit of camera z along the rays through pixel
    coordinates ``xs`` x ``ys`` (pixel centres at +0.5) of cameras ``K`` (V, 3, 3), ``viewmat`` (V, 4, 4)."""
    uu, vv = torch.meshgrid(xs.double(), ys.double(), indexing="xy")
    cam_dirs = torch.stack([(uu[None] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None],
                            (vv[None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None],
                            torch.ones(len(K), *uu.shape, dtype=torch.float64)], dim=-1)
    return torch.einsum("vji,vhwj->vhwi", viewmat[:, :3, :3].double(), cam_dirs)  # R^T d


def _median5(depth: torch.Tensor) -> torch.Tensor:
    import cv2

    return torch.from_numpy(cv2.medianBlur(np.ascontiguousarray(depth.numpy(), dtype=np.float32), 5))


def _pool_min(x: torch.Tensor, s: int) -> torch.Tensor:
    return -F.max_pool2d(-x, s, ceil_mode=True) if s > 1 else x


def _pool_mean(x: torch.Tensor, s: int) -> torch.Tensor:
    return F.avg_pool2d(x, s, ceil_mode=True) if s > 1 else x


# ------------------------------------------------------------------------------------------------ method
class CoherentGS:
    """CoherentGS fitted to the input views of one scene (see the module docstring).

    Args:
        default_steps: total steps (alignment + main) when the loop config leaves ``max_steps`` unset.
        align_steps: steps of the scale/shift alignment stage (at most half the run).
        stride: pixel stride of the Gaussian grid (1: one Gaussian per pixel).
        decoder_downsample: the decoders' output is ``grid / decoder_downsample`` (then upsampled).
        num_layers: depth layers (decoder output channels).
        xyz_ngf, opacity_ngf: decoder base widths; None: the official values for 2/3/4 views.
        decoder_widths: per-level width multipliers of the decoders.
        num_freqs: positional-encoding frequencies of the camera codes.
        depth_gain: depth offset range, ``z_ref * depth_gain`` (``tanh`` saturates there).
        opacity_gain: opacity-logit offset range.
        base_opacity: fixed base opacity; None: the official value for the view count.
        scale_factor: initial scale = ``scale_factor`` x half the (strided) pixel footprint.
        scale_reset_every, scale_reset_until: scale resets in the main stage (until that fraction of it).
        sh_degree: final SH degree; ``sh_increase_at``: fractions of the main stage where it grows by one.
        ssim_weight: weight of ``1 - SSIM`` in the photometric loss (ML1 gets ``1 - ssim_weight``).
        flow_weight_align, flow_weight: flow-loss weights in the alignment and main stages.
        tv_weight, tv_gamma_start: layer-aware TV weight and the start of ``gamma``.
        decoder_lr_base, xyz_lr_max, opacity_lr_max, xyz_lr_period, opacity_lr_period: cyclic learning rates
            of the decoders; periods (``step_size_up``) as fractions of the main stage.
        lrs: Adam rates of the per-Gaussian parameters (``shN``, ``scales``, ``quats``).
        align_lr_scale, align_lr_shift: alignment Adam rates (shift rate x ``z_ref``).
        background: RGB behind the Gaussians.
        background_tol: None (the paper) or a tolerance: grid Gaussians whose colour is within it of
            ``background`` (max over channels) are left out; they would render as the background in their own
            view, and without depth evidence they only occlude other views (e.g. SpaRe's black box).
        depth_prior: a depth-prior callable (``PosedImages -> DepthPriorMaps``); None: plane sweep.
        flow_preset: OpenCV DIS preset (``ultrafast``, ``fast``, ``medium``); ``flow_erode``: consistency erosion.
        support_plane: None (the paper) or options of the support-plane completion of a metric prior (module
            docstring; keys and defaults :data:`SUPPORT_PLANE_DEFAULTS`): ``inlier_tol`` (RANSAC inlier distance
            as a fraction of the median confident depth), ``min_confidence`` (stereo confidence of the points
            fitted), ``photo_tol`` (colour tolerance of the photo-consistency check), ``iterations``,
            ``min_inliers``.
    """

    def __init__(
        self,
        default_steps: int = 300,
        align_steps: int = 30,
        stride: int = 2,
        decoder_downsample: int = 2,
        num_layers: int = 5,
        xyz_ngf: int | None = None,
        opacity_ngf: int | None = None,
        decoder_widths: Sequence[int] = DEFAULT_WIDTHS,
        num_freqs: int = 10,
        depth_gain: float = 0.5,
        opacity_gain: float = 5.0,
        base_opacity: float | None = None,
        scale_factor: float = 1.2,
        scale_reset_every: int = 100,
        scale_reset_until: float = 0.615,
        sh_degree: int = 1,
        sh_increase_at: Sequence[float] = (0.615, 0.692, 0.769),
        ssim_weight: float = 0.2,
        flow_weight_align: float = 1.0,
        flow_weight: float = 0.01,
        tv_weight: float = 5.0,
        tv_gamma_start: float = 0.35,
        decoder_lr_base: float = 1e-6,
        xyz_lr_max: float = 1e-4,
        opacity_lr_max: float = 1e-5,
        xyz_lr_period: float = 0.077,
        opacity_lr_period: float = 0.154,
        lrs: Mapping[str, float] | None = None,
        align_lr_scale: float = 1.0,
        align_lr_shift: float = 5.0,
        background: Sequence[float] = (0.0, 0.0, 0.0),
        depth_prior: Callable[[PosedImages], DepthPriorMaps] | None = None,
        flow_preset: str = "medium",
        flow_erode: int = 5,
        background_tol: float | None = None,
        support_plane: Mapping[str, Any] | None = None,
    ) -> None:
        if default_steps < 0 or align_steps < 0 or stride < 1 or decoder_downsample < 1 or num_layers < 1:
            raise ValueError("default_steps, align_steps >= 0 and stride, decoder_downsample, num_layers >= 1 are "
                             f"required, got {default_steps}, {align_steps}, {stride}, {decoder_downsample}, "
                             f"{num_layers}")
        if not 0 <= sh_degree <= 3 or len(sh_increase_at) < sh_degree or not 0.0 <= ssim_weight <= 1.0:
            raise ValueError(f"sh_degree must be 0-3 with that many sh_increase_at fractions and ssim_weight in "
                             f"[0, 1]; got {sh_degree}, {list(sh_increase_at)}, {ssim_weight}")
        if base_opacity is not None and not 0.0 < base_opacity < 1.0:
            raise ValueError(f"base_opacity must be in (0, 1) or null, got {base_opacity}")
        if len(background) != 3 or not 0.0 <= tv_gamma_start <= 1.0 or scale_reset_every < 1:
            raise ValueError(f"background needs 3 values, tv_gamma_start in [0, 1], scale_reset_every >= 1; got "
                             f"{list(background)}, {tv_gamma_start}, {scale_reset_every}")
        rates = {"shN": 5e-5, "scales": 1e-4, "quats": 1e-5}
        unknown = set(lrs or {}) - set(rates)
        if unknown:
            raise ValueError(f"unknown learning-rate keys {sorted(unknown)}; expected {sorted(rates)}")
        self.default_steps, self.align_steps = int(default_steps), int(align_steps)
        self.stride, self.decoder_downsample, self.num_layers = int(stride), int(decoder_downsample), int(num_layers)
        self.xyz_ngf, self.opacity_ngf = xyz_ngf, opacity_ngf
        self.decoder_widths, self.num_freqs = tuple(int(w) for w in decoder_widths), int(num_freqs)
        self.depth_gain, self.opacity_gain = float(depth_gain), float(opacity_gain)
        self.base_opacity = base_opacity
        self.scale_factor = float(scale_factor)
        self.scale_reset_every, self.scale_reset_until = int(scale_reset_every), float(scale_reset_until)
        self.max_sh_degree, self.sh_increase_at = int(sh_degree), tuple(float(f) for f in sh_increase_at)
        self.ssim_weight = float(ssim_weight)
        self.flow_weight_align, self.flow_weight = float(flow_weight_align), float(flow_weight)
        self.tv_weight, self.tv_gamma_start = float(tv_weight), float(tv_gamma_start)
        self.decoder_lr_base, self.xyz_lr_max, self.opacity_lr_max = (float(decoder_lr_base), float(xyz_lr_max),
                                                                      float(opacity_lr_max))
        self.xyz_lr_period, self.opacity_lr_period = float(xyz_lr_period), float(opacity_lr_period)
        self.lrs = {**rates, **(lrs or {})}
        self.align_lr_scale, self.align_lr_shift = float(align_lr_scale), float(align_lr_shift)
        self.background_rgb = tuple(float(v) for v in background)
        self.depth_prior = depth_prior
        self.flow_preset, self.flow_erode = str(flow_preset), int(flow_erode)
        if background_tol is not None and not background_tol >= 0:
            raise ValueError(f"background_tol must be >= 0 or null, got {background_tol}")
        self.background_tol = None if background_tol is None else float(background_tol)
        unknown = set(support_plane or {}) - set(SUPPORT_PLANE_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown support_plane keys {sorted(unknown)}; expected {sorted(SUPPORT_PLANE_DEFAULTS)}")
        self.support_plane = None if support_plane is None else {**SUPPORT_PLANE_DEFAULTS, **dict(support_plane)}
        if self.support_plane is not None:
            sp = self.support_plane
            if not (sp["inlier_tol"] > 0 and 0 <= sp["min_confidence"] <= 1 and sp["photo_tol"] >= 0
                    and int(sp["iterations"]) >= 1 and int(sp["min_inliers"]) >= 3):
                raise ValueError(f"support_plane needs inlier_tol > 0, min_confidence in [0, 1], photo_tol >= 0, "
                                 f"iterations >= 1, min_inliers >= 3; got {sp}")
        self.views: PosedImages | None = None
        self.max_steps = 0
        self.step = 0
        self.aligned = False
        self.timings = {k: 0.0 for k in TIMING_KEYS}
        """Seconds summed per part over the main-stage steps (``timed_steps`` of them)."""
        self.timed_steps = 0
        self.align_seconds = 0.0
        """Seconds of the alignment-stage steps, kept apart so ``timings / timed_steps`` is per main step."""
        self.info: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------ set-up
    def setup(self, views: PosedImages, max_steps: int) -> None:
        """Depth prior, depth layers, flows and masks, rays and colours of the Gaussian grid; parameters and
        optimizers. Deterministic given the views and the torch seed (decoder initialisation)."""
        self.views, self.max_steps, self.step, self.aligned = views, int(max_steps), 0, False
        device = views.images.device
        v, h, w = len(views), views.cameras.height, views.cameras.width
        s = self.stride
        self.align_total = min(self.align_steps, self.max_steps // 2)
        self.main_total = max(1, self.max_steps - self.align_total)

        K = views.cameras.K.double().cpu()
        vm = views.cameras.viewmat.double().cpu()
        centres = -torch.einsum("vji,vj->vi", vm[:, :3, :3], vm[:, :3, 3])

        # --- depth prior -> initial depth (full resolution), reference scale, depth layers
        prior = (self.depth_prior or PlaneSweepDepthPrior())(views)
        self.info = {}
        if prior.kind == "depth":
            values, conf = prior.values.float().cpu(), prior.confidence.float().cpu().clamp(0.0, 1.0)
            plane = self._support_plane_prior(views, values, conf, K, vm, centres) if self.support_plane else None
            if plane is None:
                depth = torch.stack([_median5(fill_depth(values[i], conf[i])) for i in range(v)])
            else:  # plane pixels take the plane's depth; the rest is filled from the other confident pixels only
                on_plane, plane_z = plane
                src = torch.where(on_plane, torch.zeros_like(conf), conf)
                filled = torch.stack([fill_depth(values[i], src[i]) for i in range(v)])
                depth = torch.stack([_median5(d) for d in torch.where(on_plane, plane_z, filled)])
                limit = plane_z * (1.0 + self.support_plane["inlier_tol"])
                depth = torch.where(plane_z > 0, torch.minimum(depth, limit), depth)  # nothing lies behind it
            depth = depth.clamp_min(1e-3 * float(depth.median().clamp_min(1e-6)))
        else:
            disp = prior.values.float().clamp_min(0)
            disp_n = disp / disp.flatten(1).amax(1).clamp_min(1e-12)[:, None, None] + 0.2
            dist = float((views.cameras.centers.cpu() - look_target(views.cameras).cpu()).norm(dim=-1).mean())
            depth = dist / disp_n
        self.z_ref = float(depth.median())
        layers_full = torch.stack([depth_layers(1.0 / depth[i], self.num_layers) for i in range(v)])

        # --- Gaussian grid: rays, colours, layers, initial depth, flows
        hg, wg = math.ceil(h / s), math.ceil(w / s)
        self.grid = (hg, wg)
        ys = torch.arange(hg, dtype=torch.float64) * s + torch.clamp(h - torch.arange(hg) * s, max=s).double() / 2
        xs = torch.arange(wg, dtype=torch.float64) * s + torch.clamp(w - torch.arange(wg) * s, max=s).double() / 2
        rays = _world_rays(K, vm, xs, ys)
        self.rays = rays.float().to(device)
        self.centres = centres.float().to(device)
        self.focal_y = K[:, 1, 1].float().to(device)
        img = views.images.detach().float().cpu().permute(0, 3, 1, 2)
        colours = _pool_mean(img, s).permute(0, 2, 3, 1)
        self.sh0 = rgb_to_sh0(colours.reshape(-1, 3))[:, None, :].contiguous().to(device)
        if self.background_tol is None:
            self.active = torch.ones(colours.shape[:3], dtype=torch.bool).reshape(-1).to(device)
        else:
            bg = torch.tensor(self.background_rgb)
            self.active = ((colours - bg).abs().amax(-1) > self.background_tol).reshape(-1).to(device)
        self.layers_full = layers_full.to(device)
        self.layers_grid = layers_full[:, ::s, ::s].contiguous().to(device)
        self.z_init = _pool_mean(depth[:, None], s)[:, 0].contiguous().to(device)
        flows, masks = pairwise_flows(views.images.detach().cpu(), self.flow_preset, self.flow_erode)
        fl = flows.reshape(v * v, h, w, 2).permute(0, 3, 1, 2)
        self.flows = (_pool_mean(fl, s) / s).permute(0, 2, 3, 1).reshape(v, v, hg, wg, 2).contiguous().to(device)
        self.flow_masks = (_pool_min(masks.reshape(v * v, 1, h, w).float(), s) > 0.5).reshape(v, v, hg, wg).to(device)
        off = ~torch.eye(v, dtype=torch.bool)
        self.info.update({
            "num_gaussians": int(self.active.sum()), "grid_gaussians": v * hg * wg, "grid": [hg, wg], "stride": s, "z_ref": self.z_ref,
            "prior_kind": prior.kind, "prior_confident_fraction": float((prior.confidence > 0.5).float().mean()),
            "flow_valid_fraction": float(masks[off].float().mean()) if v > 1 else 0.0,
        })

        # --- parameters
        n = v * hg * wg
        base = self.base_opacity if self.base_opacity is not None else BASE_OPACITY.get(v, 0.5)
        self.base_logit = math.log(base / (1 - base))
        dsize = (max(1, hg // self.decoder_downsample), max(1, wg // self.decoder_downsample))
        xyz_ngf = self.xyz_ngf if self.xyz_ngf is not None else XYZ_NGF.get(v, 15)
        opa_ngf = self.opacity_ngf if self.opacity_ngf is not None else OPACITY_NGF.get(v, 10)
        self.xyz_decoder = ImplicitDecoder(v, dsize, xyz_ngf, self.num_layers, self.num_freqs,
                                           self.decoder_widths).to(device)
        self.opacity_decoder = ImplicitDecoder(v, dsize, opa_ngf, self.num_layers, self.num_freqs,
                                               self.decoder_widths).to(device)
        k = (self.max_sh_degree + 1) ** 2
        self.sh_rest = torch.zeros(n, k - 1, 3, device=device, requires_grad=True)
        self.log_scales = self._footprint(self.z_init).log().reshape(n, 1).repeat(1, 3).requires_grad_(True)
        quats = torch.zeros(n, 4, device=device)
        quats[:, 0] = 1.0
        self.quats = quats.requires_grad_(True)
        self.align_scale = torch.ones(v, device=device, requires_grad=True)
        self.align_shift = torch.zeros(v, device=device, requires_grad=True)
        self._make_optimizers()

    def _support_plane_prior(self, views: PosedImages, values: torch.Tensor, conf: torch.Tensor, K: torch.Tensor,
                             vm: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The scene's support plane in the input views (module docstring, ``support_plane``): (V, H, W) bool
        pixels that lie on it and (V, H, W) its depth (0 where a ray misses it); None when no plane is found."""
        cfg = self.support_plane
        assert cfg is not None
        v, h, w = values.shape
        rays = _world_rays(K, vm, torch.arange(w, dtype=torch.float64) + 0.5, torch.arange(h, dtype=torch.float64) + 0.5)
        sure = (conf >= cfg["min_confidence"]) & (values > 0)
        if int(sure.sum()) < 3:
            self.info["support_plane"] = None
            return None
        z_sure = float(values[sure].median())
        pts = (centres[:, None, None, :] + values[..., None].double() * rays)[sure]
        gen = torch.Generator().manual_seed(0)
        plane = fit_support_plane(pts, centres, cfg["inlier_tol"] * z_sure, int(cfg["iterations"]),
                                  int(cfg["min_inliers"]), gen)
        if plane is None:
            self.info["support_plane"] = None
            return None
        pz = plane_depth(plane, centres, rays)
        sure_z = values[sure].float().sort().values  # (torch.quantile refuses more than 2^24 values)
        z_far = float(sure_z[int(0.99 * (sure_z.numel() - 1))]) * (1.0 + cfg["inlier_tol"])
        ok = photo_consistent(views.images.detach().float().cpu(), views.cameras, centres, rays, pz,
                              float(cfg["photo_tol"]), max_unseen_depth=z_far)
        inlier = sure & ((values - pz).abs() <= cfg["inlier_tol"] * pz)
        on_plane = (inlier | (ok & ~sure)) & (pz > 0)
        self.info["support_plane"] = [float(x) for x in plane]
        self.info["support_plane_fraction"] = float(on_plane.float().mean())
        return on_plane, pz

    def _make_optimizers(self) -> None:
        self.gauss_opt = torch.optim.Adam([
            {"params": [self.sh_rest], "lr": self.lrs["shN"], "name": "shN"},
            {"params": [self.log_scales], "lr": self.lrs["scales"], "name": "scales"},
            {"params": [self.quats], "lr": self.lrs["quats"], "name": "quats"},
        ], eps=1e-15)
        self.xyz_opt = torch.optim.AdamW(self.xyz_decoder.parameters(), lr=self.decoder_lr_base)
        self.opa_opt = torch.optim.AdamW(self.opacity_decoder.parameters(), lr=self.decoder_lr_base)
        up_xyz = max(1, round(self.xyz_lr_period * self.main_total))
        up_opa = max(1, round(self.opacity_lr_period * self.main_total))
        self.xyz_sched = torch.optim.lr_scheduler.CyclicLR(
            self.xyz_opt, self.decoder_lr_base, self.xyz_lr_max, step_size_up=up_xyz, mode="triangular2",
            cycle_momentum=False)
        self.opa_sched = torch.optim.lr_scheduler.CyclicLR(
            self.opa_opt, self.decoder_lr_base, self.opacity_lr_max, step_size_up=up_opa, mode="triangular2",
            cycle_momentum=False)
        self.align_opt = torch.optim.Adam([
            {"params": [self.align_scale], "lr": self.align_lr_scale},
            {"params": [self.align_shift], "lr": self.align_lr_shift * self.z_ref},
        ])
        self.align_sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.align_opt, max(1, self.align_total))

    # ----------------------------------------------------------------------------------- parameterisation
    def _require(self) -> PosedImages:
        if self.views is None:
            raise RuntimeError("call setup() first")
        return self.views

    def _footprint(self, z: torch.Tensor) -> torch.Tensor:
        """Isotropic scale of a grid Gaussian at depth ``z`` (V, hg, wg): ``scale_factor * stride * z / (2 f_y)``."""
        return (self.scale_factor * self.stride * z / (2.0 * self.focal_y[:, None, None])).clamp_min(1e-8)

    def _layer_gather(self, raw: torch.Tensor) -> torch.Tensor:
        """(V, L, hd, wd) decoder output -> (V, hg, wg) ``tanh`` of each grid pixel's own layer channel."""
        up = F.interpolate(raw, size=self.grid, mode="bilinear", align_corners=False) if raw.shape[-2:] != self.grid \
            else raw
        return torch.tanh(up).gather(1, self.layers_grid[:, None]).squeeze(1)

    def _decode(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Current depth (V, hg, wg) and opacity-logit offset (V, hg, wg)."""
        z = self.z_init + self.depth_gain * self.z_ref * self._layer_gather(self.xyz_decoder())
        dlogit = self.opacity_gain * self._layer_gather(self.opacity_decoder())
        return z, dlogit

    def _positions(self, z: torch.Tensor) -> torch.Tensor:
        """(V, hg, wg, 3) world positions of grid Gaussians at camera depths ``z``."""
        return self.centres[:, None, None, :] + z[..., None] * self.rays

    def active_sh_degree(self, step: int) -> int:
        t = (step - self.align_total) / self.main_total
        return sum(1 for f in self.sh_increase_at[: self.max_sh_degree] if t >= f)

    def _rasterize(self, z: torch.Tensor, dlogit: torch.Tensor, cameras: Cameras, sh_degree: int,
                   mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        from sparse3d.render.gaussians import rasterize_gaussians

        keep = self.active
        means = self._positions(z).reshape(-1, 3)[keep]
        opac = torch.sigmoid(self.base_logit + dlogit.reshape(-1)[keep])
        sh = torch.cat([self.sh0, self.sh_rest], dim=1)[keep]
        c = len(cameras)
        bg = torch.tensor(self.background_rgb, device=means.device).expand(c, 3).contiguous()
        colors, alphas, _ = rasterize_gaussians(
            means, self.quats[keep], self.log_scales[keep].exp(), opac, sh, cameras.viewmat.to(means), cameras.K.to(means),
            cameras.width, cameras.height, sh_degree=sh_degree, backgrounds=bg, render_mode=mode,
            check_values=False,
        )
        return colors, alphas

    # ---------------------------------------------------------------------------------------- training
    def training_step(self, step: int) -> dict[str, float]:
        self._require()
        if step < self.align_total:
            return self._align_step(step)
        if not self.aligned:
            self._bake_alignment()
        return self._main_step(step)

    def _align_step(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        z = self.align_scale[:, None, None] * self.z_init + self.align_shift[:, None, None]
        ref = int(torch.randint(len(self._require()), (1,)))
        loss = self.flow_weight_align * flow_loss(self._positions(z), self.flows, self.flow_masks, ref) / self.z_ref
        self.align_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.align_opt.step()
        self.align_sched.step()
        self.step = step + 1
        self.align_seconds += time.perf_counter() - t0
        return {"loss": float(loss.detach()), "flow": float(loss.detach()), "stage": 0.0}

    def _bake_alignment(self) -> None:
        """Fold the per-view scale/shift into ``z_init`` and reset the scales to the footprint there."""
        with torch.no_grad():
            self.z_init = (self.align_scale[:, None, None] * self.z_init + self.align_shift[:, None, None]).clamp_min(
                1e-3 * self.z_ref)
            self.log_scales.copy_(self._footprint(self.z_init).log().reshape(-1, 1).expand_as(self.log_scales))
            self.info["align_scale"] = [float(x) for x in self.align_scale]
            self.info["align_shift"] = [float(x) for x in self.align_shift]
        self.aligned = True

    def _main_step(self, step: int) -> dict[str, float]:
        views = self._require()
        main_step = step - self.align_total
        progress = main_step / self.main_total
        t0 = time.perf_counter()
        z, dlogit = self._decode()
        t1 = time.perf_counter()
        z_leaf, dl_leaf = z.detach().requires_grad_(True), dlogit.detach().requires_grad_(True)
        if main_step % self.scale_reset_every == 0 and progress < self.scale_reset_until:
            with torch.no_grad():
                self.log_scales.copy_(self._footprint(z_leaf).log().reshape(-1, 1).expand_as(self.log_scales))
        index = int(torch.randint(len(views), (1,)))
        colors, alphas = self._rasterize(z_leaf, dl_leaf, views.cameras[index], self.active_sh_degree(step), "RGB+D")
        t2 = time.perf_counter()
        col_leaf, alpha_leaf = colors.detach().requires_grad_(True), alphas.detach().requires_grad_(True)
        rgb = col_leaf[..., :3]
        target = views.images[index : index + 1]
        ml1 = multiscale_l1(rgb, target)
        dssim, _ = photometric_loss(rgb, target, 1.0) if self.ssim_weight > 0 else (rgb.new_zeros(()), {})
        photo = (1 - self.ssim_weight) * ml1 + self.ssim_weight * dssim
        depth = col_leaf[..., 3] / (alpha_leaf[..., 0] + 1e-6)
        disparity = 1.0 / (depth / self.z_ref + 1.0)
        gamma = self.tv_gamma_start + (1.0 - self.tv_gamma_start) * progress
        tv = layered_tv(disparity, self.layers_full[index : index + 1], gamma)
        ref = int(torch.randint(len(views), (1,)))
        fl = flow_loss(self._positions(z_leaf), self.flows, self.flow_masks, ref) / self.z_ref
        loss = photo + self.tv_weight * tv + self.flow_weight * fl
        loss.backward()
        t3 = time.perf_counter()
        torch.autograd.backward([colors, alphas], [col_leaf.grad, alpha_leaf.grad])
        t4 = time.perf_counter()
        torch.autograd.backward([z, dlogit], [z_leaf.grad, dl_leaf.grad])
        t5 = time.perf_counter()
        for opt in (self.gauss_opt, self.xyz_opt, self.opa_opt):
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.xyz_sched.step()
        self.opa_sched.step()
        t6 = time.perf_counter()
        for key, dt in (("decoder", (t1 - t0) + (t5 - t4)), ("rasterizer", (t2 - t1) + (t4 - t3)),
                        ("losses", t3 - t2), ("update", t6 - t5)):
            self.timings[key] += dt
        self.timed_steps += 1
        self.step = step + 1
        return {"loss": float(loss.detach()), "photo": float(photo.detach()), "tv": float(tv.detach()),
                "flow": float(fl.detach()), "stage": 1.0}

    # ------------------------------------------------------------------------------------------ output
    def _current(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.aligned and self.step > 0:
            z = (self.align_scale[:, None, None] * self.z_init + self.align_shift[:, None, None]).detach()
            return z, self._decode()[1].detach()
        z, dlogit = self._decode()
        return z.detach(), dlogit.detach()

    def render(self, cameras: Cameras) -> torch.Tensor:
        self._require()
        with torch.no_grad():
            z, dlogit = self._current()
            colors, _ = self._rasterize(z, dlogit, cameras.to(z.device), self.active_sh_degree(self.step), "RGB")
        return colors[..., :3].clamp(0.0, 1.0)

    def render_depth(self, cameras: Cameras) -> torch.Tensor:
        """(N, H, W) expected depth ``D / (alpha + 1e-6)`` of ``cameras``."""
        self._require()
        with torch.no_grad():
            z, dlogit = self._current()
            colors, alphas = self._rasterize(z, dlogit, cameras.to(z.device), 0, "RGB+D")
        return colors[..., 3] / (alphas[..., 0] + 1e-6)

    def to_cloud(self) -> GaussianCloud:
        """The current Gaussians (activated values), as the PLY exporter takes them."""
        self._require()
        with torch.no_grad():
            z, dlogit = self._current()
            k = self.active
            return GaussianCloud(self._positions(z).reshape(-1, 3)[k].clone(),
                                 F.normalize(self.quats.detach()[k], dim=-1), self.log_scales.detach()[k].exp(),
                                 torch.sigmoid(self.base_logit + dlogit.reshape(-1)[k]),
                                 torch.cat([self.sh0, self.sh_rest.detach()], dim=1)[k])

    def export(self, out_dir: Path) -> list[Path]:
        """The Gaussians as a standard 3DGS PLY."""
        return [save_gaussian_ply(Path(out_dir) / PLY_NAME, self.to_cloud())]

    def summary(self) -> dict[str, Any]:
        self._require()
        per_step = {k: v / self.timed_steps for k, v in self.timings.items()} if self.timed_steps else {}
        return {**self.info, "sh_degree": self.active_sh_degree(self.step), "align_steps": self.align_total,
                "main_steps_done": self.timed_steps, "seconds_per_main_step": per_step,
                "align_seconds": self.align_seconds}

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        self._require()
        return {
            "step": self.step, "aligned": self.aligned, "z_init": self.z_init.detach().clone(),
            "sh_rest": self.sh_rest.detach().clone(), "log_scales": self.log_scales.detach().clone(),
            "quats": self.quats.detach().clone(), "align_scale": self.align_scale.detach().clone(),
            "align_shift": self.align_shift.detach().clone(),
            "xyz_decoder": self.xyz_decoder.state_dict(), "opacity_decoder": self.opacity_decoder.state_dict(),
            "gauss_opt": self.gauss_opt.state_dict(), "xyz_opt": self.xyz_opt.state_dict(),
            "opa_opt": self.opa_opt.state_dict(), "align_opt": self.align_opt.state_dict(),
            "xyz_sched": self.xyz_sched.state_dict(), "opa_sched": self.opa_sched.state_dict(),
            "align_sched": self.align_sched.state_dict(), "info": dict(self.info),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` taken from a method set up on the same views."""
        self._require()
        if tuple(state["z_init"].shape) != tuple(self.z_init.shape):
            raise ValueError(f"checkpoint grid {tuple(state['z_init'].shape)} differs from this set-up's "
                             f"{tuple(self.z_init.shape)} (stride or image size changed)")
        with torch.no_grad():
            self.z_init = state["z_init"].to(self.z_init)
            for name in ("sh_rest", "log_scales", "quats", "align_scale", "align_shift"):
                getattr(self, name).copy_(state[name])
        self.xyz_decoder.load_state_dict(state["xyz_decoder"])
        self.opacity_decoder.load_state_dict(state["opacity_decoder"])
        for name in ("gauss_opt", "xyz_opt", "opa_opt", "align_opt", "xyz_sched", "opa_sched", "align_sched"):
            getattr(self, name).load_state_dict(state[name])
        self.step, self.aligned = int(state["step"]), bool(state["aligned"])
        self.info.update(state.get("info", {}))
