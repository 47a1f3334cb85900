"""Sparse convolution layers on :class:`SparseVoxelTensor` (spconv-like names and arguments).

Weights are (K, C_in, C_out) with K enumerated z-major, i.e. ``torch.nn.Conv3d.weight`` permuted to
(kz, ky, kx, C_in, C_out) and flattened; :func:`conv3d_weight_from_torch` converts. Kernel maps are cached on the
tensor under ``indice_key`` (default: derived from the layer geometry), so stacked submanifold layers and an
inverse conv that undoes a strided conv reuse them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from sparse3d.kernels.kernel_map import inverse_map, strided_map, submanifold_map
from sparse3d.kernels.kernel_map_types import KernelMap, triple
from sparse3d.kernels.sparse_conv import sparse_conv
from sparse3d.sparse.tensor import SparseVoxelTensor


def conv3d_weight_from_torch(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, kz, ky, kx) Conv3d weight -> our (K, C_in, C_out)."""
    c_out, c_in = weight.shape[:2]
    return weight.permute(2, 3, 4, 1, 0).reshape(-1, c_in, c_out).contiguous()


class _SparseConvBase(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int], bias: bool) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = triple(kernel_size, "kernel_size")
        k = math.prod(self.kernel_size)
        self.weight = nn.Parameter(torch.empty(k, in_channels, out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        # Same fan-in scaling as torch's Conv3d default (kaiming-uniform with a = sqrt(5)).
        bound = 1.0 / math.sqrt(in_channels * k)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def _conv(self, x: SparseVoxelTensor, kmap: KernelMap) -> torch.Tensor:
        if x.features.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects {self.in_channels} channels, got {x.features.shape[1]}")
        out = sparse_conv(x.features.float(), self.weight, kmap.nbr, lambda: kmap.nbr_t, pairs=lambda: kmap.pairs,
                          tiles=lambda: kmap.tiles, tiles_t=lambda: kmap.tiles_t)
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"


class SubMConv3d(_SparseConvBase):
    """Submanifold convolution: outputs exist exactly at the input voxels (sparsity does not dilate)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        indice_key: str | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, bias)
        self.dilation = triple(dilation, "dilation")
        self.indice_key = indice_key or f"subm_k{self.kernel_size}_d{self.dilation}"

    def forward(self, x: SparseVoxelTensor) -> SparseVoxelTensor:
        key = f"{self.indice_key}@{x.grid_size}"
        kmap = x.cache.get(key)
        if kmap is None:
            kmap = submanifold_map(x.coords, x.grid_size, self.kernel_size, self.dilation)
            x.cache[key] = kmap
        return x.replace_features(self._conv(x, kmap))


class SparseConv3d(_SparseConvBase):
    """Strided (regular) sparse convolution: downsamples the voxel set; output sorted by (b, x, y, z)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 2,
        stride: int | Sequence[int] = 2,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        indice_key: str | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, bias)
        self.stride, self.padding = triple(stride, "stride"), triple(padding, "padding")
        self.dilation = triple(dilation, "dilation")
        self.indice_key = indice_key

    def forward(self, x: SparseVoxelTensor) -> SparseVoxelTensor:
        kmap = strided_map(x.coords, x.grid_size, self.kernel_size, self.stride, self.padding, self.dilation)
        if self.indice_key is not None:
            # Remembered for the matching SparseInverseConv3d: its outputs are these inputs.
            x.cache[f"down:{self.indice_key}"] = (kmap, x.coords, x.grid_size, x.voxel_size)
        # metric voxel size grows by the stride; (z, y, x) stride -> (x, y, z) size
        vs = tuple(v * s for v, s in zip(x.voxel_size, self.stride[::-1]))
        return SparseVoxelTensor(
            coords=kmap.out_coords,
            features=self._conv(x, kmap),
            grid_size=kmap.out_grid,
            batch_size=x.batch_size,
            voxel_size=vs,  # type: ignore[arg-type]
            origin=x.origin,
            cache=x.cache,
        )


class SparseInverseConv3d(_SparseConvBase):
    """Undo the :class:`SparseConv3d` registered under ``indice_key``: back to its input voxels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        indice_key: str,
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, bias)
        self.indice_key = indice_key

    def forward(self, x: SparseVoxelTensor) -> SparseVoxelTensor:
        entry = x.cache.get(f"down:{self.indice_key}")
        if entry is None:
            raise ValueError(
                f"no SparseConv3d with indice_key={self.indice_key!r} ran on this tensor's ancestry"
            )
        kmap, in_coords, in_grid, in_voxel_size = entry
        if kmap.nbr.shape[1] != self.weight.shape[0]:
            raise ValueError(
                f"kernel_size {self.kernel_size} does not match the strided conv under {self.indice_key!r}"
            )
        if kmap.out_coords.shape[0] != x.num_voxels:
            raise ValueError("input voxels differ from the outputs of the matching SparseConv3d")
        inv_key = f"inverse:{self.indice_key}"
        inv = x.cache.get(inv_key)
        if inv is None:  # shared by every inverse conv that undoes the same strided conv
            inv = x.cache[inv_key] = inverse_map(kmap, in_coords, in_grid)
        return SparseVoxelTensor(
            coords=in_coords,
            features=self._conv(x, inv),
            grid_size=in_grid,
            batch_size=x.batch_size,
            voxel_size=in_voxel_size,
            origin=x.origin,
            cache=x.cache,
        )


class SparseSequential(nn.Sequential):
    """Sequential over sparse layers; plain modules (BatchNorm1d, ReLU, Linear) act on the features."""

    def forward(self, x: SparseVoxelTensor) -> SparseVoxelTensor:  # type: ignore[override]
        for module in self:
            if isinstance(module, (_SparseConvBase, SparseSequential)):
                x = module(x)
            else:
                x = x.replace_features(module(x.features))
        return x
