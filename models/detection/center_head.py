"""CenterPoint-style dense head with DSVT's IoU branch: heatmap + box regression on a BEV map.

Layout as OpenPCDet's ``CenterHead`` (one class group): a shared 3×3 conv, then one branch per output
(``center`` 2, ``center_z`` 1, ``dim`` 3, ``rot`` 2, ``iou`` 1, ``hm`` = classes), each ``num_conv - 1`` 3×3
conv-BN-ReLU layers and a final 3×3 conv. Losses: CenterNet focal loss on the heatmap, masked L1 on the box code
at object centres (× ``loc_weight``), L1 of the IoU branch against ``2·IoU3D(decoded box, gt) - 1``, and
``1 - DIoU`` of the decoded boxes (axis-aligned, as the official helper). Decoding: joint top-K over classes and
cells, score threshold, centre range, IoU rectification ``score^(1-α)·iou^α`` and per-class rotated NMS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sparse3d.kernels.rotated_iou import boxes_iou_3d_aligned, nms_bev
from sparse3d.models.detection.center_targets import BEVGrid, CenterTargets, decode_boxes

__all__ = ["CenterHead", "Detections", "focal_loss", "diou_loss_axis_aligned"]

HEAD_OUTPUTS = (("center", 2), ("center_z", 1), ("dim", 3), ("rot", 2))


@dataclass
class Detections:
    """Boxes of one frame after post-processing."""

    boxes: torch.Tensor
    """(K, 7) LiDAR-frame boxes."""
    scores: torch.Tensor
    """(K,) final (rectified) scores, descending."""
    labels: torch.Tensor
    """(K,) int64 class index."""


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet focal loss on sigmoid(logits) clamped to [1e-4, 1 - 1e-4], normalised by the positives."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_loss = -(torch.log(p) * (1 - p) ** 2 * pos).sum()
    neg_loss = -(torch.log(1 - p) * p**2 * (1 - target) ** 4 * neg).sum()
    num_pos = pos.sum()
    return (pos_loss + neg_loss) / num_pos.clamp_min(1.0)


def diou_loss_axis_aligned(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per pair ``1 - DIoU`` of (N, 7) boxes treated as axis-aligned cuboids (heading ignored)."""
    p_lo, p_hi = pred[:, :3] - pred[:, 3:6] / 2, pred[:, :3] + pred[:, 3:6] / 2
    g_lo, g_hi = gt[:, :3] - gt[:, 3:6] / 2, gt[:, :3] + gt[:, 3:6] / 2
    inter = (torch.minimum(p_hi, g_hi) - torch.maximum(p_lo, g_lo)).clamp_min(0).prod(dim=1)
    union = pred[:, 3:6].prod(dim=1) + gt[:, 3:6].prod(dim=1) - inter
    iou = inter / union.clamp_min(1e-6)
    centre = ((pred[:, :3] - gt[:, :3]) ** 2).sum(dim=1)
    diag = ((torch.maximum(p_hi, g_hi) - torch.minimum(p_lo, g_lo)) ** 2).sum(dim=1)
    return 1 - (iou - centre / diag.clamp_min(1e-6))


def _branch(in_channels: int, out_channels: int, num_conv: int, bias_fill: float | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_conv - 1):
        layers += [nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False),
                   nn.BatchNorm2d(in_channels), nn.ReLU()]
    final = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True)
    layers.append(final)
    for m in layers:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if bias_fill is not None:
        nn.init.constant_(final.bias, bias_fill)
    return nn.Sequential(*layers)


class CenterHead(nn.Module):
    """Dense head on the BEV map ``grid`` with ``num_classes`` heatmaps.

    Args:
        in_channels: channels of the BEV backbone output.
        num_classes: classes predicted (one heatmap each).
        grid: the map the head predicts on (origin, cell size, size); the task derives it from the VFE.
        shared_channels, num_conv: width of the shared conv and convs per branch.
        iou_branch: predict the IoU of each box with its object (used to rectify scores).
        loc_weight, iou_weight, iou_reg_weight: loss weights (hm weight 1).
        score_threshold, post_center_range: decoding filters; ``post_center_range`` = (xmin, ymin, zmin, xmax,
            ymax, zmax).
        rectifier: per class α of ``score^(1-α)·iou^α`` (empty = no rectification).
        nms_thresholds: per class rotated-BEV NMS IoU threshold; ``pre_max``/``post_max`` boxes around NMS.
    """

    def __init__(self, in_channels: int, num_classes: int, grid: BEVGrid, shared_channels: int = 64,
                 num_conv: int = 2, iou_branch: bool = True, loc_weight: float = 2.0, iou_weight: float = 1.0,
                 iou_reg_weight: float = 2.0, max_objects: int = 500, top_k: int = 500,
                 score_threshold: float = 0.1, post_center_range: Sequence[float] | None = None,
                 rectifier: Sequence[float] = (), nms_thresholds: Sequence[float] = (0.7,),
                 pre_max: int = 4096, post_max: int = 500) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1 or shared_channels < 1 or num_conv < 1:
            raise ValueError("num_classes, in_channels, shared_channels and num_conv must be positive")
        if len(nms_thresholds) not in (1, num_classes):
            raise ValueError(f"nms_thresholds needs 1 or {num_classes} values, got {list(nms_thresholds)}")
        if rectifier and len(rectifier) != num_classes:
            raise ValueError(f"rectifier needs {num_classes} values (one α per class), got {list(rectifier)}")
        self.num_classes, self.grid = int(num_classes), grid
        self.shared_conv = nn.Sequential(nn.Conv2d(in_channels, shared_channels, 3, padding=1, bias=True),
                                         nn.BatchNorm2d(shared_channels), nn.ReLU())
        outputs = [*HEAD_OUTPUTS, *((("iou", 1),) if iou_branch else ()), ("hm", num_classes)]
        self.heads = nn.ModuleDict({
            name: _branch(shared_channels, size, num_conv, -2.19 if name == "hm" else None) for name, size in outputs
        })
        self.iou_branch = bool(iou_branch)
        self.loc_weight, self.iou_weight, self.iou_reg_weight = float(loc_weight), float(iou_weight), float(iou_reg_weight)
        self.max_objects, self.top_k = int(max_objects), int(top_k)
        self.score_threshold = float(score_threshold)
        self.post_center_range = [float(v) for v in post_center_range] if post_center_range is not None else None
        self.rectifier = [float(a) for a in rectifier]
        self.nms_thresholds = [float(t) for t in nms_thresholds] * (num_classes if len(nms_thresholds) == 1 else 1)
        self.pre_max, self.post_max = int(pre_max), int(post_max)

    def forward(self, bev: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, ny, nx) -> per output name a (B, size, ny, nx) map."""
        if bev.shape[-2:] != (self.grid.ny, self.grid.nx):
            raise ValueError(f"BEV map is {tuple(bev.shape[-2:])} (ny, nx) but the head's grid is "
                             f"{(self.grid.ny, self.grid.nx)}: check point_range, voxel_size and the BEV strides")
        x = self.shared_conv(bev)
        return {name: head(x) for name, head in self.heads.items()}

    @staticmethod
    def _gather(pred: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(B, C, ny, nx) at flat cells (B, K) -> (B, K, C)."""
        b, c = pred.shape[:2]
        flat = pred.reshape(b, c, -1).permute(0, 2, 1)
        return flat.gather(1, index[..., None].expand(-1, -1, c))

    def _code(self, preds: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([preds["center"], preds["center_z"], preds["dim"], preds["rot"]], dim=1)

    def loss(self, preds: dict[str, torch.Tensor], targets: CenterTargets) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and its parts (floats, for logging)."""
        hm_loss = focal_loss(preds["hm"], targets.heatmap)
        code = self._gather(self._code(preds), targets.index)
        mask = targets.mask[..., None].float()
        num = targets.mask.sum().clamp_min(1).float()
        loc_loss = ((code - targets.code).abs() * mask).sum() / num
        total = hm_loss + self.loc_weight * loc_loss
        parts = {"hm_loss": float(hm_loss.detach()), "loc_loss": float(loc_loss.detach())}
        # Same keys and the same parameters in the graph on every call (frames without objects included), as
        # the trainer averages the parts over ranks and DDP expects every parameter to get a gradient.
        if self.iou_branch:
            parts["iou_loss"] = 0.0
            total = total + 0.0 * preds["iou"].sum()
        if self.iou_reg_weight > 0:
            parts["iou_reg_loss"] = 0.0
        if targets.mask.any():
            cells = torch.stack([targets.index % self.grid.nx, targets.index // self.grid.nx], dim=-1)
            boxes = decode_boxes(code, cells, self.grid)[targets.mask]
            gt = targets.boxes[targets.mask]
            if self.iou_branch:
                with torch.no_grad():
                    # early in training exp(log size) can overflow: the target only needs finite boxes
                    safe = torch.nan_to_num(boxes.detach().float(), nan=0.0, posinf=1e3, neginf=-1e3)
                    safe[:, 3:6] = safe[:, 3:6].clamp(1e-3, 1e3)
                    iou_target = 2 * boxes_iou_3d_aligned(safe, gt.float()) - 1
                iou_pred = self._gather(preds["iou"], targets.index)[targets.mask][:, 0]
                iou_loss = (iou_pred - iou_target).abs().sum() / num
                total = total + self.iou_weight * iou_loss
                parts["iou_loss"] = float(iou_loss.detach())
            if self.iou_reg_weight > 0:
                reg = diou_loss_axis_aligned(boxes, gt).sum() / num
                total = total + self.iou_reg_weight * reg
                parts["iou_reg_loss"] = float(reg.detach())
        return total, parts

    @torch.no_grad()
    def decode(self, preds: dict[str, torch.Tensor]) -> list[Detections]:
        """Post-processed detections per batch element."""
        hm = torch.sigmoid(preds["hm"])
        b, k, ny, nx = hm.shape
        code = self._code(preds).reshape(b, -1, ny * nx)
        iou = ((preds["iou"].reshape(b, ny * nx) + 1) / 2).clamp(0, 1) if self.iou_branch else None
        out: list[Detections] = []
        for i in range(b):
            scores, flat = hm[i].reshape(-1).topk(min(self.top_k, k * ny * nx))
            labels = flat // (ny * nx)
            cell_index = flat % (ny * nx)
            cells = torch.stack([cell_index % nx, cell_index // nx], dim=1)
            boxes = decode_boxes(code[i][:, cell_index].T, cells, self.grid)
            keep = scores > self.score_threshold
            if self.post_center_range is not None:
                lo = torch.tensor(self.post_center_range[:3], device=boxes.device)
                hi = torch.tensor(self.post_center_range[3:], device=boxes.device)
                keep &= ((boxes[:, :3] >= lo) & (boxes[:, :3] <= hi)).all(dim=1)
            boxes, scores, labels, cell_index = boxes[keep], scores[keep], labels[keep], cell_index[keep]
            if iou is not None and self.rectifier:
                alpha = torch.tensor(self.rectifier, device=scores.device)[labels]
                scores = scores.pow(1 - alpha) * iou[i][cell_index].pow(alpha)
            kept = []
            for c in range(k):
                idx = torch.nonzero(labels == c).flatten()
                if idx.numel():
                    sel = nms_bev(boxes[idx], scores[idx], self.nms_thresholds[c], self.pre_max, self.post_max)
                    kept.append(idx[sel])
            order = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.int64, device=boxes.device)
            order = order[scores[order].argsort(descending=True)][: self.post_max]
            out.append(Detections(boxes[order], scores[order], labels[order]))
        return out
