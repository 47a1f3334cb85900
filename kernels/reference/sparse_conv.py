"""Dense-convolution oracles for sparse convolution: scatter to a dense grid, ``conv3d``, read active sites."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_dense(coords: torch.Tensor, feats: torch.Tensor, grid, batch: int) -> torch.Tensor:
    """(B, C, Z, Y, X) dense tensor with features at ``coords`` (batch, z, y, x), zeros elsewhere."""
    dense = torch.zeros(batch, feats.shape[1], grid[2], grid[1], grid[0], dtype=feats.dtype)
    c = coords.long()
    dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = feats
    return dense


def read_sites(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    c = coords.long()
    return dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]


def torch_weight(weight: torch.Tensor, kernel_size) -> torch.Tensor:
    """Our (K, C_in, C_out) weight as a Conv3d weight (C_out, C_in, kz, ky, kx)."""
    k, c_in, c_out = weight.shape
    return weight.reshape(*kernel_size, c_in, c_out).permute(4, 3, 0, 1, 2)


def conv_at_sites(in_coords, feats, weight, grid, kernel_size, out_coords, stride=1, padding=0, dilation=1, batch=None):
    """Dense conv3d (cross-correlation) evaluated at ``out_coords``: oracle of submanifold and strided conv."""
    batch = batch or int(in_coords[:, 0].max()) + 1
    dense = to_dense(in_coords, feats, grid, batch)
    out = F.conv3d(dense, torch_weight(weight, kernel_size), stride=stride, padding=padding, dilation=dilation)
    return read_sites(out, out_coords)


def inverse_conv_at_sites(down_coords, feats, weight, down_grid, kernel_size, stride, padding, out_coords, out_grid, batch=None):
    """Dense conv_transpose3d read at the original input sites: oracle of the inverse sparse conv."""
    batch = batch or int(out_coords[:, 0].max()) + 1
    dense = to_dense(down_coords, feats, down_grid, batch)
    k, c_in, c_out = weight.shape
    w = weight.reshape(*kernel_size, c_in, c_out).permute(3, 4, 0, 1, 2)  # (C_in, C_out, kz, ky, kx)
    # conv_transpose3d truncates the far border unless told the size: output_padding (< stride) restores it,
    # anything beyond that can only receive zeros and is padded.
    natural = [(down_grid[2 - a] - 1) * stride[a] - 2 * padding[a] + kernel_size[a] for a in range(3)]
    want = [out_grid[2 - a] for a in range(3)]
    extra = [max(0, w_ - n) for w_, n in zip(want, natural)]
    out_pad = [min(e, s - 1) for e, s in zip(extra, stride)]
    out = F.conv_transpose3d(dense, w, stride=stride, padding=padding, output_padding=out_pad)
    pad = [0, out_grid[0] - out.shape[4], 0, out_grid[1] - out.shape[3], 0, out_grid[2] - out.shape[2]]
    out = F.pad(out, [max(0, p) for p in pad])
    return read_sites(out, out_coords)


def conv_tiles_reference(nbr: torch.Tensor, block_rows: int, tile_rows: int) -> list[tuple[torch.Tensor, ...]]:
    """Per output block, the (inputs, outputs, offsets) tiles the CPU kernel expects, by plain indexing.

    Within a block: offsets ascending, each offset's active rows ascending, its last tile padded with input 0 and
    output ``M + block`` (the block's scratch row).
    """
    m, num_k = nbr.shape
    blocks = []
    for b, start in enumerate(range(0, m, block_rows)):
        rows = torch.arange(start, min(start + block_rows, m))
        ins, outs, offs = [], [], []
        for k in range(num_k):
            active = rows[nbr[rows, k] >= 0]
            pad = -active.numel() % tile_rows
            ins.append(torch.cat([nbr[active, k].long(), torch.zeros(pad, dtype=torch.long)]))
            outs.append(torch.cat([active, torch.full((pad,), m + b)]))
            offs.append(torch.full(((active.numel() + pad) // tile_rows,), k))
        blocks.append((torch.cat(ins).view(-1, tile_rows), torch.cat(outs).view(-1, tile_rows), torch.cat(offs)))
    return blocks
