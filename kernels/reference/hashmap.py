"""Plain-torch oracle for :mod:`sparse3d.kernels.hashmap`: a sorted key list searched with ``searchsorted``."""

from __future__ import annotations

import torch


class VoxelHashTable:
    """Reference table: maps each key to the smallest row index at which it occurs."""

    def __init__(self, keys: torch.Tensor) -> None:
        valid = keys >= 0
        rows = torch.arange(keys.shape[0], dtype=torch.int64, device=keys.device)[valid]
        k = keys[valid]
        order = torch.argsort(k, stable=True)  # stable: first occurrence of a key comes first
        k, rows = k[order], rows[order]
        first = torch.ones_like(k, dtype=torch.bool)
        if k.numel() > 1:
            first[1:] = k[1:] != k[:-1]
        self.keys = k[first]
        self.rows = rows[first]

    def query(self, keys: torch.Tensor) -> torch.Tensor:
        if self.keys.numel() == 0:
            return torch.full(keys.shape, -1, dtype=torch.int32, device=keys.device)
        pos = torch.searchsorted(self.keys, keys).clamp(max=self.keys.numel() - 1)
        hit = (self.keys[pos] == keys) & (keys >= 0)
        return torch.where(hit, self.rows[pos], torch.full_like(pos, -1)).to(torch.int32)


def unique_keys_with_inverse(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.unique`` over the non-negative keys; negative keys get inverse -1."""
    valid = keys >= 0
    uniq, inv, counts = torch.unique(keys[valid], sorted=True, return_inverse=True, return_counts=True)
    inverse = torch.full(keys.shape, -1, dtype=torch.int64, device=keys.device)
    inverse[valid] = inv
    return uniq, inverse, counts.to(torch.int32)
