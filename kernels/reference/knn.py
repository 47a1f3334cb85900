"""Plain-torch oracle for :mod:`sparse3d.kernels.knn`: brute-force k nearest neighbours within a point set."""

from __future__ import annotations

import torch

_BLOCK_ELEMENTS = 2**22
"""Query rows per block are chosen so that a block's (rows, N) distance matrix has about this many entries."""


def knn_distances(
    points: torch.Tensor, k: int, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances (ascending) and indices of the ``k`` nearest other points of each query row.

    Every query is compared with every point: float32 ``dx*dx + dy*dy + dz*dz``, the query itself masked out
    by index, the ``k`` smallest kept; entries beyond the ``N - 1`` other points are ``inf`` and ``-1``.
    ``rows`` (int64 indices) restricts the queries to those points (default: all), giving (len(rows), k).
    """
    pts = points.detach().to(torch.float32)
    n = pts.shape[0]
    query = torch.arange(n) if rows is None else rows.to(torch.int64)
    q_count = query.shape[0]
    out_d = torch.full((q_count, k), float("inf"), dtype=torch.float32)
    out_i = torch.full((q_count, k), -1, dtype=torch.int64)
    kk = min(k, n - 1)
    if q_count == 0 or kk <= 0:
        return out_d, out_i
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    block = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, q_count, block):
        qi = query[start : start + block]
        q = pts[qi]
        d2 = (q[:, 0:1] - x).square_()
        d2 += (q[:, 1:2] - y).square_()
        d2 += (q[:, 2:3] - z).square_()
        d2[torch.arange(qi.shape[0]), qi] = float("inf")
        best = torch.topk(d2, kk, dim=1, largest=False, sorted=True)
        out_d[start : start + block, :kk] = best.values
        out_i[start : start + block, :kk] = best.indices
    return out_d, out_i
