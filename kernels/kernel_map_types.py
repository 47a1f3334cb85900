"""The kernel-map type and conv-geometry helpers shared by :mod:`sparse3d.kernels.kernel_map` and its oracle.

:class:`KernelMap` is what both the Warp map builders and :mod:`sparse3d.kernels.reference.kernel_map` return;
:func:`triple`, :func:`kernel_offsets` and :func:`conv_output_grid` are the argument rules and geometry both
apply. This module imports only torch at module level, so that the oracle stays independent of the kernels:
the map's lazily built tables (pair lists, conv tiles) import their Warp-side builders inside the properties.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sparse3d.kernels.sparse_conv import ConvTiles, PairLists


@dataclass(eq=False)
class KernelMap:
    """Neighbour tables of one sparse convolution."""

    out_coords: torch.Tensor
    """(M_out, 4) int32 output coords (batch, z, y, x)."""
    out_grid: tuple[int, int, int]
    """Output grid size (X, Y, Z)."""
    nbr: torch.Tensor
    """(M_out, K) int32: input row feeding output o through offset k, or -1."""
    transposed: torch.Tensor | None = None
    """(M_in, K) transpose when it was built with the map; ``None`` for a submanifold map, whose transpose is
    ``nbr`` with the offset axis reversed and is built by :attr:`nbr_t` on first use (inference never needs it)."""
    identity: int = -1
    """Offset that maps every output onto the same input row (a submanifold centre), or -1."""

    @cached_property
    def nbr_t(self) -> torch.Tensor:
        """(M_in, K) int32: output row fed by input i through offset k, or -1."""
        if self.transposed is not None:
            return self.transposed
        # Input i reaches output j through offset k iff j reaches i through the mirrored offset K-1-k.
        return self.nbr.flip(1).contiguous()

    @cached_property
    def pairs(self) -> PairLists:
        """Active (input, output) pairs grouped by offset, built on first use and shared by every layer on this map.

        The Warp convolution reads ``nbr`` directly; only the weight gradient and the torch fallback for channel
        counts that are not a multiple of 16 iterate over pairs, so inference never pays for them.
        """
        from sparse3d.kernels.sparse_conv import pair_lists  # lazy: keeps this module free of Warp

        return pair_lists(self.nbr, self.num_inputs, identity=self.identity)

    @cached_property
    def tiles(self) -> ConvTiles:
        """:attr:`nbr` tiled for the CPU convolution kernel, built on first use and shared by every layer."""
        from sparse3d.kernels.sparse_conv import conv_tiles  # lazy: keeps this module free of Warp

        return conv_tiles(self.nbr)

    @cached_property
    def tiles_t(self) -> ConvTiles:
        """:attr:`nbr_t` tiled for the CPU kernel of the feature gradient, built on first use."""
        from sparse3d.kernels.sparse_conv import conv_tiles  # lazy: keeps this module free of Warp

        return conv_tiles(self.nbr_t)

    @property
    def num_inputs(self) -> int:
        """Input voxels (rows of :attr:`nbr_t`), known without building the transpose."""
        return self.nbr.shape[0] if self.transposed is None else self.transposed.shape[0]


def triple(v: int | Sequence[int], name: str) -> tuple[int, int, int]:
    """Normalise an int or 3-sequence given in (z, y, x) order, like torch Conv3d arguments."""
    t = (int(v),) * 3 if isinstance(v, int) else tuple(int(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"{name} must be an int or 3 ints (z, y, x), got {v!r}")
    return t  # type: ignore[return-value]


def kernel_offsets(kernel_size: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """(K, 3) int32 raw kernel indices (kz, ky, kx), z-major -- the flattening of a Conv3d weight."""
    kz, ky, kx = kernel_size
    grid = torch.stack(
        torch.meshgrid(torch.arange(kz), torch.arange(ky), torch.arange(kx), indexing="ij"), dim=-1
    )
    return grid.reshape(-1, 3).to(torch.int32).to(device)


def conv_output_grid(
    grid: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]
) -> tuple[int, int, int]:
    """Output grid (X, Y, Z) of a strided conv on ``grid`` (X, Y, Z); kernel args in (z, y, x) like Conv3d."""
    out = []
    for axis_xyz in range(3):
        a = 2 - axis_xyz  # (z, y, x) index of this (x, y, z) axis
        size = (grid[axis_xyz] + 2 * padding[a] - dilation[a] * (kernel_size[a] - 1) - 1) // stride[a] + 1
        if size < 1:
            raise ValueError(f"convolution output would be empty along axis {'xyz'[axis_xyz]} (grid {list(grid)})")
        out.append(size)
    return out[0], out[1], out[2]
