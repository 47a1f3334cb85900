"""A small sparse-conv U-Net for per-point LiDAR semantic segmentation (the quick-start model).

Points are voxelised inside the model (dynamic voxelisation, mean-pooled point features), run through
submanifold blocks, two strided downsamplings and their inverse convs with skip connections, and the voxel
logits are read back at every point through the point -> voxel map. It exercises every sparse kernel the
toolkit ships, forward and backward, on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sparse3d.sparse import (
    SparseConv3d,
    SparseInverseConv3d,
    SparseSequential,
    SparseVoxelTensor,
    SubMConv3d,
)


def _block(c_in: int, c_out: int, key: str) -> SparseSequential:
    return SparseSequential(
        SubMConv3d(c_in, c_out, 3, bias=False, indice_key=key),
        nn.BatchNorm1d(c_out, eps=1e-3, momentum=0.01),
        nn.ReLU(inplace=True),
    )


def _down(c_in: int, c_out: int, key: str) -> SparseSequential:
    return SparseSequential(
        SparseConv3d(c_in, c_out, 2, stride=2, bias=False, indice_key=key),
        nn.BatchNorm1d(c_out, eps=1e-3, momentum=0.01),
        nn.ReLU(inplace=True),
    )


def _up(c_in: int, c_out: int, key: str) -> SparseSequential:
    return SparseSequential(
        SparseInverseConv3d(c_in, c_out, 2, indice_key=key, bias=False),
        nn.BatchNorm1d(c_out, eps=1e-3, momentum=0.01),
        nn.ReLU(inplace=True),
    )


class SparseUNetSegmenter(nn.Module):
    """Per-point classifier: voxelise -> sparse U-Net -> voxel logits gathered back to points."""

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 6,
        point_range: Sequence[float] = (-40.0, -40.0, -3.0, 40.0, 40.0, 5.0),
        voxel_size: Sequence[float] = (0.4, 0.4, 0.4),
        base_channels: int = 16,
        ignore_index: int = 0,
    ) -> None:
        super().__init__()
        if in_channels < 3:
            raise ValueError(f"in_channels must be >= 3 (x, y, z first), got {in_channels}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.point_range = [float(v) for v in point_range]
        self.voxel_size = [float(v) for v in voxel_size]
        self.ignore_index = ignore_index
        c = base_channels
        lo = torch.tensor(self.point_range[:3])
        hi = torch.tensor(self.point_range[3:])
        self.register_buffer("xyz_center", (lo + hi) / 2, persistent=False)
        self.register_buffer("xyz_scale", (hi - lo) / 2, persistent=False)
        self.stem = SparseSequential(_block(in_channels, c, "s0"), _block(c, c, "s0"))
        self.down1 = SparseSequential(_down(c, 2 * c, "d1"), _block(2 * c, 2 * c, "s1"))
        self.down2 = SparseSequential(_down(2 * c, 4 * c, "d2"), _block(4 * c, 4 * c, "s2"))
        self.up2 = _up(4 * c, 2 * c, "d2")
        self.fuse1 = _block(4 * c, 2 * c, "s1")
        self.up1 = _up(2 * c, c, "d1")
        self.fuse0 = _block(2 * c, c, "s0")
        self.head = nn.Linear(c, num_classes)
        self._stats: dict[str, float] = {}

    def _point_features(self, points: torch.Tensor) -> torch.Tensor:
        """x, y, z normalised to [-1, 1] over the range; remaining columns (e.g. reflectance) as given."""
        xyz = (points[:, :3] - self.xyz_center) / self.xyz_scale
        return torch.cat([xyz, points[:, 3 : self.in_channels]], dim=1)

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-point logits (N, num_classes) and the point -> voxel map (-1 = outside the range)."""
        points = batch["points"]
        if points.dim() != 2 or points.shape[1] < self.in_channels:
            raise ValueError(f"points must be (N, >= {self.in_channels}), got {tuple(points.shape)}")
        x, vox = SparseVoxelTensor.from_points(
            points,
            self.voxel_size,
            self.point_range,
            batch_idx=batch.get("batch_idx"),
            features=self._point_features(points),
            batch_size=int(batch.get("batch_size", 1)),
        )
        x0 = self.stem(x)
        x1 = self.down1(x0)
        x2 = self.down2(x1)
        u1 = self.up2(x2)
        u1 = self.fuse1(u1.replace_features(torch.cat([u1.features, x1.features], dim=1)))
        u0 = self.up1(u1)
        u0 = self.fuse0(u0.replace_features(torch.cat([u0.features, x0.features], dim=1)))
        voxel_logits = self.head(u0.features)
        p2v = vox.point_to_voxel
        logits = voxel_logits[p2v.clamp(min=0)]
        self._stats = {
            "points": float(points.shape[0]),
            "voxels": float(x.num_voxels),
            "voxels_stride2": float(x1.num_voxels),
            "voxels_stride4": float(x2.num_voxels),
            "dropped_points": float(vox.num_nonfinite + vox.num_out_of_range),
        }
        return logits, p2v

    def _targets(self, batch: dict[str, Any], p2v: torch.Tensor) -> torch.Tensor:
        labels = batch["labels"].clone()
        labels[p2v < 0] = self.ignore_index
        return labels

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits, p2v = self(batch)
        labels = self._targets(batch, p2v)
        loss = nn.functional.cross_entropy(logits, labels, ignore_index=self.ignore_index)
        valid = labels != self.ignore_index
        acc = (logits.argmax(1)[valid] == labels[valid]).float().mean() if valid.any() else loss.new_zeros(())
        return {"loss": loss, "acc": acc.detach(), "voxels": torch.tensor(self._stats["voxels"])}

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Confusion matrix (num_classes x num_classes, rows = truth) over labelled points."""
        logits, p2v = self(batch)
        labels = self._targets(batch, p2v)
        valid = labels != self.ignore_index
        k = self.num_classes
        idx = labels[valid] * k + logits.argmax(1)[valid]
        return {"confusion": torch.bincount(idx, minlength=k * k).reshape(k, k)}

    def aggregate_validation(self, outputs: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Overall accuracy and mean IoU over the classes present (the ignore class excluded)."""
        conf = torch.stack([o["confusion"].cpu() for o in outputs]).sum(0).double()
        tp = conf.diag()
        iou = tp / (conf.sum(0) + conf.sum(1) - tp).clamp(min=1)
        present = conf.sum(1) > 0
        present[self.ignore_index] = False
        result = {"accuracy": float(tp.sum() / conf.sum().clamp(min=1))}
        result["miou"] = float(iou[present].mean()) if present.any() else 0.0
        for c in range(self.num_classes):
            if present[c]:
                result[f"iou_{c}"] = float(iou[c])
        return result

    def summary(self) -> dict[str, float]:
        """Voxel statistics of the last forward pass (for the run summary)."""
        return dict(self._stats)
