"""A small sparse-conv U-Net backbone: submanifold blocks, two strided downsamplings and their inverse convs
with skip connections, back to the input voxels.

It exercises every sparse kernel the toolkit ships (submanifold, strided and inverse convolution, forward and
backward) and is the network stage of the quick-start segmentation task.
"""

from __future__ import annotations

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


class SparseUNet(nn.Module):
    """Sparse U-Net: ``in_channels`` voxel features in, ``base_channels`` features out on the same voxels."""

    def __init__(self, in_channels: int = 4, base_channels: int = 16) -> None:
        super().__init__()
        if in_channels < 1 or base_channels < 1:
            raise ValueError(f"in_channels and base_channels must be >= 1, got {in_channels}, {base_channels}")
        c = base_channels
        self.out_channels = c
        self.stem = SparseSequential(_block(in_channels, c, "s0"), _block(c, c, "s0"))
        self.down1 = SparseSequential(_down(c, 2 * c, "d1"), _block(2 * c, 2 * c, "s1"))
        self.down2 = SparseSequential(_down(2 * c, 4 * c, "d2"), _block(4 * c, 4 * c, "s2"))
        self.up2 = _up(4 * c, 2 * c, "d2")
        self.fuse1 = _block(4 * c, 2 * c, "s1")
        self.up1 = _up(2 * c, c, "d1")
        self.fuse0 = _block(2 * c, c, "s0")
        self.stats: dict[str, float] = {}

    def forward(self, x: SparseVoxelTensor) -> SparseVoxelTensor:
        x0 = self.stem(x)
        x1 = self.down1(x0)
        x2 = self.down2(x1)
        u1 = self.up2(x2)
        u1 = self.fuse1(u1.replace_features(torch.cat([u1.features, x1.features], dim=1)))
        u0 = self.up1(u1)
        u0 = self.fuse0(u0.replace_features(torch.cat([u0.features, x0.features], dim=1)))
        self.stats = {"voxels_stride2": float(x1.num_voxels), "voxels_stride4": float(x2.num_voxels)}
        return u0
