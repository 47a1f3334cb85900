"""Optical flow between input views and its forward-backward consistency mask (CoherentGS's flow prior).

CoherentGS (Paliwal et al., ECCV 2024) ties the per-pixel Gaussians of different input views together with
optical flow between every ordered pair of views, weighted by a forward-backward consistency confidence
``w_ab = exp(-0.5 * |warp(-F_ba, F_ab) - F_ab|_1)`` followed by a 5x5 erosion and binarised at 0.5. The official
code computes the flow with FlowFormer++; here it is OpenCV's DIS optical flow (Kroeger et al., ECCV 2016), which
runs offline on a CPU without weights.

Conventions: a flow ``F_ab`` is (H, W, 2) in pixels, ``(dx, dy)``; pixel ``p`` of image ``a`` corresponds to
``p + F_ab(p)`` in image ``b``. Pixel ``(row i, column j)`` has its centre at index coordinates ``(j, i)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["backward_warp", "consistency_weight", "consistency_mask", "dis_flow", "pairwise_flows", "DIS_PRESETS"]

DIS_PRESETS: tuple[str, ...] = ("ultrafast", "fast", "medium")


def _check_flow(name: str, flow: torch.Tensor) -> None:
    if not isinstance(flow, torch.Tensor) or flow.dim() not in (3, 4) or flow.shape[-1] != 2:
        shape = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
        raise ValueError(f"{name} must be an (H, W, 2) or (B, H, W, 2) tensor, got {shape}")


def backward_warp(source: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``source`` at ``p + flow(p)``: returns ``(warped, inside)``.

    ``source`` is (B, C, H', W') and ``flow`` (B, H, W, 2) in pixels of ``source`` (the output grid may be
    another size than ``source``'s only when the caller means it; usually both are H x W). Bilinear, with
    border clamping; ``inside`` (B, H, W) bool is False where the sample point lies outside ``source``'s pixel
    centres' hull extended by half a pixel. Differentiable in ``source`` and ``flow``.
    """
    _check_flow("flow", flow)
    if source.dim() != 4 or flow.dim() != 4 or source.shape[0] != flow.shape[0]:
        raise ValueError(f"source must be (B, C, H, W) and flow (B, H, W, 2) with the same B, got "
                         f"{tuple(source.shape)} and {tuple(flow.shape)}")
    b, h, w, _ = flow.shape
    sh, sw = source.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    x = xs + flow[..., 0]
    y = ys + flow[..., 1]
    grid = torch.stack([(x + 0.5) / sw * 2 - 1, (y + 0.5) / sh * 2 - 1], dim=-1)
    warped = F.grid_sample(source, grid.to(source.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    inside = (x >= -0.5) & (x <= sw - 0.5) & (y >= -0.5) & (y <= sh - 0.5)
    return warped, inside


def consistency_weight(flow_ab: torch.Tensor, flow_ba: torch.Tensor) -> torch.Tensor:
    """(H, W) forward-backward confidence ``exp(-0.5 |(-F_ba)(p + F_ab(p)) - F_ab(p)|_1)`` in [0, 1].

    1 where following ``F_ab`` and then ``F_ba`` returns to the start; 0 where ``F_ab`` leaves image ``b``.
    """
    _check_flow("flow_ab", flow_ab)
    _check_flow("flow_ba", flow_ba)
    if flow_ab.dim() != 3 or flow_ba.dim() != 3:
        raise ValueError("flow_ab and flow_ba must be single (H, W, 2) flows")
    back, inside = backward_warp((-flow_ba).permute(2, 0, 1)[None], flow_ab[None])
    err = (back[0].permute(1, 2, 0) - flow_ab).abs().sum(-1)
    return torch.exp(-0.5 * err) * inside[0].to(err.dtype)


def consistency_mask(flow_ab: torch.Tensor, flow_ba: torch.Tensor, erode: int = 5,
                     threshold: float = 0.5) -> torch.Tensor:
    """(H, W) bool: :func:`consistency_weight` eroded by an ``erode`` x ``erode`` minimum filter, above
    ``threshold``. ``erode`` must be odd (1 = no erosion); the filter ignores pixels outside the image."""
    if erode < 1 or erode % 2 == 0:
        raise ValueError(f"erode must be an odd number >= 1, got {erode}")
    w = consistency_weight(flow_ab, flow_ba)
    if erode > 1:
        w = -F.max_pool2d(-w[None, None], erode, stride=1, padding=erode // 2)[0, 0]
    return w > threshold


def _grey_u8(image: torch.Tensor) -> np.ndarray:
    rgb = image.detach().float().clamp(0, 1).cpu().numpy()
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.ascontiguousarray((grey * 255.0 + 0.5).astype(np.uint8))


def dis_flow(image_a: torch.Tensor, image_b: torch.Tensor, preset: str = "medium") -> torch.Tensor:
    """(H, W, 2) float32 DIS optical flow from ``image_a`` to ``image_b`` ((H, W, 3) floats in [0, 1])."""
    import cv2

    if preset not in DIS_PRESETS:
        raise ValueError(f"preset must be one of {DIS_PRESETS}, got {preset!r}")
    if image_a.shape != image_b.shape or image_a.dim() != 3 or image_a.shape[-1] != 3:
        raise ValueError(f"image_a and image_b must be (H, W, 3) of one size, got {tuple(image_a.shape)} and "
                         f"{tuple(image_b.shape)}")
    code = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
            "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}[preset]
    dis = cv2.DISOpticalFlow_create(code)
    flow = dis.calc(_grey_u8(image_a), _grey_u8(image_b), None)
    return torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32))


def pairwise_flows(images: torch.Tensor, preset: str = "medium", erode: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """DIS flow and consistency mask for every ordered pair of the (V, H, W, 3) ``images``.

    Returns ``flows`` (V, V, H, W, 2) float32 (``flows[a, b]`` = F_ab; zero on the diagonal) and ``masks``
    (V, V, H, W) bool (:func:`consistency_mask`; all True on the diagonal), on the CPU.
    """
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (V, H, W, 3), got {tuple(images.shape)}")
    v, h, w, _ = images.shape
    flows = torch.zeros(v, v, h, w, 2)
    masks = torch.ones(v, v, h, w, dtype=torch.bool)
    cpu = images.detach().cpu()
    for a in range(v):
        for b in range(v):
            if a != b:
                flows[a, b] = dis_flow(cpu[a], cpu[b], preset)
    for a in range(v):
        for b in range(v):
            if a != b:
                masks[a, b] = consistency_mask(flows[a, b], flows[b, a], erode)
    return flows, masks
