"""Full-reference image metrics on float images in [0, 1]: PSNR, masked PSNR, SSIM, SSIM in the mask's box.

Conventions (those the SpaRe benchmark evaluation uses, :mod:`sparse3d.spare.evaluation`; SSIM is that of Wang et
al., "Image Quality Assessment: From Error Visibility to Structural Similarity", IEEE TIP 2004):

* Images are HWC (one image) or NHWC (a batch), float in [0, 1], NumPy or torch. Functions return a
  float64 tensor of shape ``()`` for one image and ``(N,)`` for a batch: a batch's PSNR is a value *per
  image*, because averaging PSNRs and pooling MSEs differ and the benchmark averages per-image values.
* Sizes must match exactly; nothing is ever resized.
* PSNR of identical images is ``+inf`` (MSE 0), returned explicitly rather than through a division warning.
* SSIM uses ``pytorch_msssim`` (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range 1, float32),
  which filters *without padding*: the SSIM map covers only the "valid" (H-10) x (W-10) positions whose
  whole window lies inside the image, and the score is the mean of that map over positions and channels.
* SSIM-M crops both images to the GT mask's tight bounding box. A box thinner than the 11-pixel window is
  grown symmetrically to 11 pixels (shifted to stay inside the image) instead of failing or letting the
  library skip smoothing along that axis (it does so, with only a warning, for inputs smaller than the
  window).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from pytorch_msssim import ssim as _library_ssim

ArrayLike = np.ndarray | torch.Tensor
BBox = tuple[int, int, int, int]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K = (0.01, 0.03)
PSNR_MASK_MODES = ("mask_pixels", "masked_full")


def _as_image(x: ArrayLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach()
    if t.ndim not in (3, 4) or t.shape[-1] < 1:
        raise ValueError(f"{name} must be an HWC or NHWC image, got shape {tuple(t.shape)}")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty, shape {tuple(t.shape)}")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} must be in [0, 1] (data range 1), got values in [{lo:.4g}, {hi:.4g}]; clamp first"
        )
    return t


def _image_pair(pred: ArrayLike, gt: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    p, g = _as_image(pred, "pred"), _as_image(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(
            f"pred shape {tuple(p.shape)} differs from gt shape {tuple(g.shape)} (images are never resized)"
        )
    return p, g.to(p.device)


def _as_mask(mask: ArrayLike, image: torch.Tensor, name: str = "mask") -> torch.Tensor:
    m = (
        torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
        .detach()
        .to(image.device)
    )
    if tuple(m.shape) != tuple(image.shape[:-1]):
        raise ValueError(
            f"{name} shape {tuple(m.shape)} must equal the image shape without channels "
            f"{tuple(image.shape[:-1])}"
        )
    return m.to(torch.bool)


def _psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """``10 log10(1 / mse)`` with MSE 0 mapped to +inf explicitly."""
    safe = torch.where(mse > 0, mse, torch.ones_like(mse))
    return torch.where(mse > 0, -10.0 * torch.log10(safe), torch.full_like(mse, math.inf))


def psnr(pred: ArrayLike, gt: ArrayLike) -> torch.Tensor:
    """PSNR, data range 1, over all pixels and channels (per image for NHWC); identical images give +inf."""
    p, g = _image_pair(pred, gt)
    mse = ((p - g) ** 2).mean(dim=(-3, -2, -1))
    return _psnr_from_mse(mse)


def psnr_masked(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike, mode: str = "mask_pixels") -> torch.Tensor:
    """PSNR restricted to an object mask ((H, W) or (N, H, W), True = object).

    ``mask_pixels`` (default): MSE averaged over the mask pixels x channels only. ``masked_full``: both
    images are multiplied by the mask and the ordinary full-frame PSNR is taken (background counts as a
    perfect match; with errors only inside the mask it is higher by ``10 log10(1 / mask fraction)``).
    An empty mask is an error.
    """
    if mode not in PSNR_MASK_MODES:
        raise ValueError(f"mode must be one of {PSNR_MASK_MODES}, got {mode!r}")
    p, g = _image_pair(pred, gt)
    m = _as_mask(mask, p)
    count = m.sum(dim=(-2, -1))
    if bool((count == 0).any()):
        raise ValueError("mask has no object pixels; masked PSNR is undefined")
    weight = m.unsqueeze(-1).to(p.dtype)
    if mode == "masked_full":
        return psnr(p * weight, g * weight)
    sq_sum = (((p - g) ** 2) * weight).sum(dim=(-3, -2, -1))
    mse = sq_sum / (count.to(p.dtype) * p.shape[-1])
    return _psnr_from_mse(mse)


def mask_bbox(mask: ArrayLike) -> BBox:
    """Tight box ``(r0, r1, c0, c1)`` (inclusive rows and columns) around the True pixels of a mask."""
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).to(torch.bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {tuple(m.shape)}")
    rows = torch.nonzero(m.any(dim=1)).flatten()
    cols = torch.nonzero(m.any(dim=0)).flatten()
    if rows.numel() == 0:
        raise ValueError("mask has no object pixels; its bounding box is undefined")
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def grow_bbox(bbox: BBox, min_size: int, height: int, width: int) -> BBox:
    """Grow a box symmetrically to >= ``min_size`` rows and columns, shifted to stay inside the image."""

    def _grow(lo: int, hi: int, limit: int, axis: str) -> tuple[int, int]:
        if not 0 <= lo <= hi < limit:
            raise ValueError(f"bbox {axis} range [{lo}, {hi}] is not inside 0..{limit - 1}")
        if hi - lo + 1 >= min_size:
            return lo, hi
        if limit < min_size:
            raise ValueError(f"image {axis} size {limit} is smaller than the required {min_size} pixels")
        lo = lo - (min_size - (hi - lo + 1)) // 2
        lo = min(max(lo, 0), limit - min_size)
        return lo, lo + min_size - 1

    r0, r1 = _grow(bbox[0], bbox[1], height, "row")
    c0, c1 = _grow(bbox[2], bbox[3], width, "column")
    return r0, r1, c0, c1


def crop(image: ArrayLike, bbox: BBox) -> ArrayLike:
    """Crop an HWC or NHWC image (NumPy or torch, type kept) to an inclusive box ``(r0, r1, c0, c1)``."""
    r0, r1, c0, c1 = bbox
    if image.ndim not in (3, 4):
        raise ValueError(f"image must be HWC or NHWC, got shape {tuple(image.shape)}")
    return image[..., r0 : r1 + 1, c0 : c1 + 1, :]


def ssim(pred: ArrayLike, gt: ArrayLike) -> torch.Tensor:
    """SSIM (Gaussian window 11, sigma 1.5, K 0.01/0.03, data range 1), mean over the valid map and channels.

    Computed by ``pytorch_msssim`` in float32 on the inputs' device (it agrees with float64 to ~1e-7);
    returned as float64. Images must be at least 11 x 11 (the window must fit once).
    """
    p, g = _image_pair(pred, gt)
    height, width = p.shape[-3], p.shape[-2]
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {width}x{height}"
        )
    single = p.ndim == 3
    x = (p.unsqueeze(0) if single else p).permute(0, 3, 1, 2).to(torch.float32)
    y = (g.unsqueeze(0) if single else g).permute(0, 3, 1, 2).to(torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a skipped smoothing axis must never pass silently
        values = _library_ssim(
            x, y, data_range=1.0, size_average=False, win_size=SSIM_WINDOW, win_sigma=SSIM_SIGMA, K=SSIM_K
        )
    values = values.to(torch.float64)
    return values[0] if single else values


def ssim_bbox(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike) -> torch.Tensor:
    """SSIM-M: SSIM of both HWC images cropped to the tight bbox of the (H, W) GT mask (grown to >= 11 px)."""
    p, g = _image_pair(pred, gt)
    if p.ndim != 3:
        raise ValueError(f"ssim_bbox takes one HWC image pair, got shape {tuple(p.shape)}")
    m = _as_mask(mask, p)
    box = grow_bbox(mask_bbox(m), SSIM_WINDOW, p.shape[0], p.shape[1])
    return ssim(crop(p, box), crop(g, box))
