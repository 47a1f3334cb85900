"""Differentiable image losses of the splatting methods."""

from __future__ import annotations

import torch
from pytorch_msssim import ssim as _library_ssim

from sparse3d.metrics.image import SSIM_K, SSIM_SIGMA, SSIM_WINDOW


def photometric_loss(render: torch.Tensor, target: torch.Tensor, ssim_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """``(1 - w) L1 + w (1 - SSIM)`` of (N, H, W, 3) images, the 3DGS objective; also returns the two terms.

    SSIM uses the evaluation's window (11, sigma 1.5, K 0.01/0.03) so training and scoring agree.
    """
    if render.shape != target.shape:
        raise ValueError(f"render {tuple(render.shape)} and target {tuple(target.shape)} differ")
    l1 = (render - target).abs().mean()
    if ssim_weight <= 0:
        return l1, {"l1": float(l1.detach())}
    x = render.permute(0, 3, 1, 2)
    y = target.permute(0, 3, 1, 2)
    s = _library_ssim(x, y, data_range=1.0, size_average=True, win_size=SSIM_WINDOW, win_sigma=SSIM_SIGMA, K=SSIM_K)
    loss = (1.0 - ssim_weight) * l1 + ssim_weight * (1.0 - s)
    return loss, {"l1": float(l1.detach()), "ssim": float(s.detach())}
