"""Plain-torch oracles for kernel maps: a dense index volume of the grid, probed at shifted coordinates."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparse3d.kernels.kernel_map_types import KernelMap, conv_output_grid, kernel_offsets, triple


def _index_volume(coords: torch.Tensor, grid: Sequence[int], batch: int) -> torch.Tensor:
    vol = torch.full((batch, grid[2], grid[1], grid[0]), -1, dtype=torch.int64)
    c = coords.long()
    vol[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = torch.arange(coords.shape[0])
    return vol


def _probe(vol: torch.Tensor, b: torch.Tensor, zyx: torch.Tensor) -> torch.Tensor:
    _, gz, gy, gx = vol.shape
    ok = (zyx >= 0).all(-1) & (zyx[..., 0] < gz) & (zyx[..., 1] < gy) & (zyx[..., 2] < gx)
    z = zyx.clamp(min=0)
    res = vol[b, z[..., 0].clamp(max=gz - 1), z[..., 1].clamp(max=gy - 1), z[..., 2].clamp(max=gx - 1)]
    return torch.where(ok, res, torch.full_like(res, -1)).to(torch.int32)


def _transpose(nbr: torch.Tensor, m_in: int) -> torch.Tensor:
    nbr_t = torch.full((m_in, nbr.shape[1]), -1, dtype=torch.int32)
    o, k = torch.nonzero(nbr >= 0, as_tuple=True)
    nbr_t[nbr[o, k].long(), k] = o.to(torch.int32)
    return nbr_t


def submanifold_map(coords, grid, kernel_size=3, dilation=1) -> KernelMap:
    ks, dil = triple(kernel_size, "kernel_size"), triple(dilation, "dilation")
    batch = int(coords[:, 0].max()) + 1 if coords.shape[0] else 1
    vol = _index_volume(coords, grid, batch)
    off = (kernel_offsets(ks, torch.device("cpu")) - torch.tensor([k // 2 for k in ks], dtype=torch.int32)) * torch.tensor(dil, dtype=torch.int32)
    zyx = coords[:, None, 1:].long() + off[None].long()
    nbr = _probe(vol, coords[:, None, 0].long().expand(-1, off.shape[0]), zyx)
    return KernelMap(coords, tuple(grid), nbr, _transpose(nbr, coords.shape[0]))


def strided_map(coords, grid, kernel_size=2, stride=2, padding=0, dilation=1) -> KernelMap:
    ks, st = triple(kernel_size, "kernel_size"), triple(stride, "stride")
    pad, dil = triple(padding, "padding"), triple(dilation, "dilation")
    out_grid = conv_output_grid(grid, ks, st, pad, dil)
    batch = int(coords[:, 0].max()) + 1 if coords.shape[0] else 1
    # Active outputs: dense conv of the occupancy with an all-ones kernel.
    occ = torch.zeros(batch, 1, grid[2], grid[1], grid[0])
    c = coords.long()
    occ[c[:, 0], 0, c[:, 1], c[:, 2], c[:, 3]] = 1.0
    hit = torch.nn.functional.conv3d(occ, torch.ones(1, 1, *ks), stride=st, padding=pad, dilation=dil)[:, 0] > 0
    b, z, y, x = torch.nonzero(hit, as_tuple=True)
    key = ((b * out_grid[0] + x) * out_grid[1] + y) * out_grid[2] + z
    order = torch.argsort(key)
    out_coords = torch.stack([b, z, y, x], dim=1)[order].to(torch.int32)
    vol = _index_volume(coords, grid, batch)
    off = kernel_offsets(ks, torch.device("cpu")).long()
    zyx = out_coords[:, None, 1:].long() * torch.tensor(st) - torch.tensor(pad) + off[None] * torch.tensor(dil)
    nbr = _probe(vol, out_coords[:, None, 0].long().expand(-1, off.shape[0]), zyx)
    return KernelMap(out_coords, out_grid, nbr, _transpose(nbr, coords.shape[0]))
