"""CenterPoint training targets and box coding on a BEV feature map.

CenterPoint (Yin et al., "Center-based 3D Object Detection and Tracking", CVPR 2021), as DSVT trains it. A
box (x, y, z, dx, dy, dz, heading) in the LiDAR frame sits at continuous cell ``c = (x - xmin) / (vx·stride),
(y - ymin) / (vy·stride)``; its integer cell is ``floor(c)``. The regression code is
``(c - floor(c), z, log dx, log dy, log dz, cos heading, sin heading)``; the heatmap of the box's class gets a
Gaussian at the integer cell whose radius comes from CornerNet's rule (the largest centre shift that keeps an
IoU of ``overlap`` with the box's footprint), with the conventional formula of the CenterPoint code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["BEVGrid", "CenterTargets", "build_targets", "decode_boxes", "encode_boxes", "gaussian_radius"]

CODE_SIZE = 8  # dx_cell, dy_cell, z, log dx, log dy, log dz, cos, sin


@dataclass(frozen=True)
class BEVGrid:
    """The map a head predicts on: origin, cell size in metres, and size in cells (nx columns, ny rows)."""

    x_min: float
    y_min: float
    cell_x: float
    cell_y: float
    nx: int
    ny: int

    @classmethod
    def from_range(cls, point_range: Sequence[float], voxel_size: Sequence[float], grid_size: Sequence[int],
                   stride: float) -> BEVGrid:
        """The head's grid from the detector's range, voxel size, voxel grid (X, Y, Z) and feature stride."""
        nx, ny = math.ceil(int(grid_size[0]) / stride), math.ceil(int(grid_size[1]) / stride)
        return cls(float(point_range[0]), float(point_range[1]), float(voxel_size[0]) * stride,
                   float(voxel_size[1]) * stride, int(nx), int(ny))


def gaussian_radius(height: torch.Tensor, width: torch.Tensor, overlap: float = 0.1) -> torch.Tensor:
    """CornerNet's radius for boxes of ``height`` × ``width`` cells (CenterPoint's form of the three cases)."""
    a1 = 1.0
    b1 = height + width
    c1 = width * height * (1 - overlap) / (1 + overlap)
    r1 = (b1 + torch.sqrt((b1 * b1 - 4 * a1 * c1).clamp_min(0))) / 2
    a2 = 4.0
    b2 = 2 * (height + width)
    c2 = (1 - overlap) * width * height
    r2 = (b2 + torch.sqrt((b2 * b2 - 4 * a2 * c2).clamp_min(0))) / 2
    a3 = 4 * overlap
    b3 = -2 * overlap * (height + width)
    c3 = (overlap - 1) * width * height
    r3 = (b3 + torch.sqrt((b3 * b3 - 4 * a3 * c3).clamp_min(0))) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def _draw_gaussian(heatmap: torch.Tensor, cx: int, cy: int, radius: int) -> None:
    """Element-wise max of ``heatmap`` (ny, nx) with a Gaussian of diameter 2r+1, σ = diameter / 6, at (cx, cy)."""
    diameter = 2 * radius + 1
    sigma = diameter / 6
    ys = torch.arange(-radius, radius + 1, dtype=torch.float32, device=heatmap.device)
    g = torch.exp(-(ys[:, None] ** 2 + ys[None, :] ** 2) / (2 * sigma * sigma))
    g[g < torch.finfo(torch.float32).eps * g.max()] = 0
    ny, nx = heatmap.shape
    left, right = min(cx, radius), min(nx - cx, radius + 1)
    top, bottom = min(cy, radius), min(ny - cy, radius + 1)
    region = heatmap[cy - top: cy + bottom, cx - left: cx + right]
    patch = g[radius - top: radius + bottom, radius - left: radius + right]
    torch.maximum(region, patch, out=region)


def encode_boxes(boxes: torch.Tensor, grid: BEVGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, 7) boxes -> (M, 8) regression code and (M, 2) int64 integer cells (x, y)."""
    cx = (boxes[:, 0] - grid.x_min) / grid.cell_x
    cy = (boxes[:, 1] - grid.y_min) / grid.cell_y
    cell = torch.stack([cx.floor(), cy.floor()], dim=1)
    code = torch.stack([
        cx - cell[:, 0], cy - cell[:, 1], boxes[:, 2],
        boxes[:, 3].clamp_min(1e-6).log(), boxes[:, 4].clamp_min(1e-6).log(), boxes[:, 5].clamp_min(1e-6).log(),
        torch.cos(boxes[:, 6]), torch.sin(boxes[:, 6]),
    ], dim=1)
    return code, cell.to(torch.int64)


def decode_boxes(code: torch.Tensor, cells: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """Inverse of :func:`encode_boxes`: (..., 8) code at (..., 2) cells (x, y) -> (..., 7) boxes."""
    x = (cells[..., 0].to(code.dtype) + code[..., 0]) * grid.cell_x + grid.x_min
    y = (cells[..., 1].to(code.dtype) + code[..., 1]) * grid.cell_y + grid.y_min
    dims = code[..., 3:6].exp()
    heading = torch.atan2(code[..., 7], code[..., 6])
    return torch.cat([x[..., None], y[..., None], code[..., 2:3], dims, heading[..., None]], dim=-1)


@dataclass
class CenterTargets:
    """Targets of one batch: heatmaps (B, K, ny, nx), and per object slot the code, flat cell, mask, class."""

    heatmap: torch.Tensor
    code: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor


def build_targets(gt_boxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor], num_classes: int,
                  grid: BEVGrid, max_objects: int = 500, overlap: float = 0.1, min_radius: int = 2) -> CenterTargets:
    """Targets for a batch: ``gt_boxes[b]`` (M_b, 7) with ``gt_labels[b]`` (M_b,) in 0..num_classes-1.

    Boxes whose centre falls outside the map, or beyond ``max_objects`` per frame, are left out (the mask
    says which slots hold an object). Labels < 0 mark boxes to skip (e.g. ignored classes).
    """
    batch = len(gt_boxes)
    dev = gt_boxes[0].device if batch else torch.device("cpu")
    heatmap = torch.zeros(batch, num_classes, grid.ny, grid.nx, device=dev)
    code = torch.zeros(batch, max_objects, CODE_SIZE, device=dev)
    index = torch.zeros(batch, max_objects, dtype=torch.int64, device=dev)
    mask = torch.zeros(batch, max_objects, dtype=torch.bool, device=dev)
    boxes_out = torch.zeros(batch, max_objects, 7, device=dev)
    labels_out = torch.full((batch, max_objects), -1, dtype=torch.int64, device=dev)
    for b in range(batch):
        boxes = gt_boxes[b].to(torch.float32)
        labels = gt_labels[b].to(torch.int64)
        if boxes.numel() == 0:
            continue
        keep = (labels >= 0) & (labels < num_classes) & (boxes[:, 3:6] > 0).all(dim=1)
        boxes, labels = boxes[keep], labels[keep]
        c, cell = encode_boxes(boxes, grid)
        inside = (cell[:, 0] >= 0) & (cell[:, 0] < grid.nx) & (cell[:, 1] >= 0) & (cell[:, 1] < grid.ny)
        boxes, labels, c, cell = boxes[inside], labels[inside], c[inside], cell[inside]
        radius = gaussian_radius(boxes[:, 3] / grid.cell_x, boxes[:, 4] / grid.cell_y, overlap)
        radius = radius.floor().to(torch.int64).clamp_min(min_radius)
        count = min(int(boxes.shape[0]), max_objects)
        for k in range(count):
            _draw_gaussian(heatmap[b, int(labels[k])], int(cell[k, 0]), int(cell[k, 1]), int(radius[k]))
        code[b, :count] = c[:count]
        index[b, :count] = cell[:count, 1] * grid.nx + cell[:count, 0]
        mask[b, :count] = True
        boxes_out[b, :count] = boxes[:count]
        labels_out[b, :count] = labels[:count]
    return CenterTargets(heatmap, code, index, mask, boxes_out, labels_out)
