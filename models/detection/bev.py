"""Bird's-eye-view stages of a LiDAR detector: sparse voxels -> dense BEV map -> multi-scale 2-D features.

``BEVScatter`` is OpenPCDet's ``map_to_bev`` for DSVT (``PointPillarScatter3d``): voxel (b, z, y, x) goes to flat
index ``z·ny·nx + y·nx + x`` of a (B, C, nz·ny·nx) buffer viewed as (B, C·nz, ny, nx), so rows are y and columns
x. ``ResidualBEVBackbone`` is OpenPCDet's ``BaseBEVResBackbone``: per level one strided residual block with a 1×1
projection shortcut plus ``layer_nums`` plain residual blocks, each level upsampled back (transposed conv with
kernel = stride) and concatenated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BEVScatter", "ResidualBEVBackbone"]


def _bn2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class BEVScatter(nn.Module):
    """Scatter voxel features onto the dense BEV grid ``grid_size`` (X, Y, Z); empty cells are zero."""

    def __init__(self, grid_size: Sequence[int], in_channels: int) -> None:
        super().__init__()
        if len(grid_size) != 3 or min(int(v) for v in grid_size) < 1:
            raise ValueError(f"grid_size must be three positive voxel counts (X, Y, Z), got {list(grid_size)}")
        self.nx, self.ny, self.nz = (int(v) for v in grid_size)
        self.in_channels = int(in_channels)
        self.out_channels = self.in_channels * self.nz

    def forward(self, features: torch.Tensor, coords: torch.Tensor, batch_size: int) -> torch.Tensor:
        if features.shape[0] != coords.shape[0] or features.shape[1] != self.in_channels:
            raise ValueError(f"features must be (N, {self.in_channels}) matching coords (N, 4), got "
                             f"{tuple(features.shape)} and {tuple(coords.shape)}")
        c = coords.to(torch.int64)
        if c.numel() and (int(c[:, 1].max()) >= self.nz or int(c[:, 2].max()) >= self.ny or int(c[:, 3].max()) >= self.nx):
            raise ValueError(f"voxel coords exceed the BEV grid (X, Y, Z) = {(self.nx, self.ny, self.nz)}")
        cells = self.nz * self.ny * self.nx
        flat = c[:, 0] * cells + c[:, 1] * (self.ny * self.nx) + c[:, 2] * self.nx + c[:, 3]
        dense = features.new_zeros(batch_size * cells, self.in_channels)
        dense = dense.index_copy(0, flat, features)
        dense = dense.view(batch_size, cells, self.in_channels).permute(0, 2, 1)
        return dense.reshape(batch_size, self.in_channels * self.nz, self.ny, self.nx)


class _BasicBlock(nn.Module):
    """3×3 conv -> BN -> ReLU -> 3×3 conv -> BN, plus the (projected when strided) input, -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, downsample: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _bn2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = _bn2d(out_channels)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), _bn2d(out_channels))
            if downsample else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return torch.relu(out + identity)


class ResidualBEVBackbone(nn.Module):
    """Multi-scale residual 2-D backbone; output = concatenated upsampled levels at ``out_stride``.

    Args:
        in_channels: BEV channels from the scatter.
        layer_nums, layer_strides, num_filters: per level (e.g. [1, 2, 2], [1, 2, 2], [128, 128, 256]).
        upsample_strides, num_upsample_filters: per level; a stride s < 1 is a strided 1/s conv (down).
    """

    def __init__(self, in_channels: int, layer_nums: Sequence[int], layer_strides: Sequence[int],
                 num_filters: Sequence[int], upsample_strides: Sequence[float],
                 num_upsample_filters: Sequence[int]) -> None:
        super().__init__()
        levels = len(layer_nums)
        for name, value in (("layer_strides", layer_strides), ("num_filters", num_filters),
                            ("upsample_strides", upsample_strides), ("num_upsample_filters", num_upsample_filters)):
            if len(value) != levels:
                raise ValueError(f"{name} must have one entry per level ({levels}), got {list(value)}")
        if any(int(n) < 0 for n in layer_nums) or any(int(s) < 1 for s in layer_strides):
            raise ValueError(f"layer_nums must be >= 0 and layer_strides >= 1, got {list(layer_nums)}, {list(layer_strides)}")
        if any(int(f) < 1 for f in [*num_filters, *num_upsample_filters]) or any(float(s) <= 0 for s in upsample_strides):
            raise ValueError("filter counts and upsample strides must be positive")
        inputs = [int(in_channels), *[int(f) for f in num_filters[:-1]]]
        self.blocks = nn.ModuleList()
        self.deblocks = nn.ModuleList()
        total_stride = 1
        self.out_strides: list[float] = []
        for i in range(levels):
            layers: list[nn.Module] = [_BasicBlock(inputs[i], int(num_filters[i]), int(layer_strides[i]), True)]
            layers += [_BasicBlock(int(num_filters[i]), int(num_filters[i])) for _ in range(int(layer_nums[i]))]
            self.blocks.append(nn.Sequential(*layers))
            total_stride *= int(layer_strides[i])
            up = float(upsample_strides[i])
            if up >= 1:
                k = int(round(up))
                deblock: nn.Module = nn.ConvTranspose2d(int(num_filters[i]), int(num_upsample_filters[i]), k,
                                                        stride=k, bias=False)
            else:
                k = int(round(1 / up))
                deblock = nn.Conv2d(int(num_filters[i]), int(num_upsample_filters[i]), k, stride=k, bias=False)
            self.deblocks.append(nn.Sequential(deblock, _bn2d(int(num_upsample_filters[i])), nn.ReLU()))
            self.out_strides.append(total_stride / up)
        if len(set(self.out_strides)) != 1:
            raise ValueError(f"every level must come back to one stride, got {self.out_strides} "
                             "(layer_strides cumulated / upsample_strides)")
        self.out_stride = self.out_strides[0]
        self.out_channels = sum(int(f) for f in num_upsample_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ups = []
        for block, deblock in zip(self.blocks, self.deblocks):
            x = block(x)
            ups.append(deblock(x))
        # Odd grids (e.g. 469 cells at stride 2) come back one cell larger; crop to the first level's size.
        h, w = ups[0].shape[-2:]
        return torch.cat([u[..., :h, :w] for u in ups], dim=1)
