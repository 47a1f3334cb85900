"""Plain-torch oracle for :mod:`sparse3d.kernels.ray_mesh`: brute-force Moller--Trumbore against every triangle.

Moller and Trumbore, "Fast, Minimum Storage Ray/Triangle Intersection", JGT 1997, evaluated in float64 for
every (ray, triangle) pair, without back-face culling. A pair whose determinant is (numerically) zero -- the ray
parallel to the triangle's plane, or a zero-area triangle -- does not hit. Hits on edges and vertices count
(``b1 >= 0, b2 >= 0, b1 + b2 <= 1``), and so do hits at ``t_min`` and ``t_max`` exactly. Ties in ``t`` go to the
lowest face index. Outputs follow the kernel's conventions: ``face`` int64 (-1 = miss), ``t`` float32 (inf on
misses), ``bary`` (R, 2) float32 with the hit point ``(1 - b1 - b2) v0 + b1 v1 + b2 v2`` (0 on misses).
"""

from __future__ import annotations

import math

import torch

_BLOCK_PAIRS = 1 << 20
"""Rays per block are chosen so that a block holds about this many (ray, triangle) pairs."""
_DET_EPS = 1e-300


def cast_rays(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    origins: torch.Tensor,
    directions: torch.Tensor,
    t_min: float | torch.Tensor = 0.0,
    t_max: float | torch.Tensor = math.inf,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest hit with ``t_min <= t <= t_max`` of every ray ``origins + t * directions`` (R, 3) with the mesh."""
    v = vertices.detach().to(torch.float64).cpu()
    f = faces.detach().to(torch.int64).cpu()
    o_all = origins.detach().to(torch.float64).cpu()
    d_all = directions.detach().to(torch.float64).cpu()
    rays = o_all.shape[0]
    lo_all = torch.as_tensor(t_min, dtype=torch.float64).cpu().reshape(-1).expand(rays)
    hi_all = torch.as_tensor(t_max, dtype=torch.float64).cpu().reshape(-1).expand(rays)
    face_out = torch.full((rays,), -1, dtype=torch.int64)
    t_out = torch.full((rays,), math.inf, dtype=torch.float64)
    bary_out = torch.zeros(rays, 2, dtype=torch.float64)
    v0, v1, v2 = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    e1, e2 = v1 - v0, v2 - v0  # (F, 3)
    block = max(1, _BLOCK_PAIRS // max(1, f.shape[0]))
    for start in range(0, rays, block):
        sl = slice(start, start + block)
        o, d = o_all[sl, None, :], d_all[sl, None, :]  # (B, 1, 3)
        p = torch.cross(d.expand(-1, e2.shape[0], -1), e2.expand(d.shape[0], -1, -1), dim=-1)  # (B, F, 3)
        det = (e1 * p).sum(-1)
        ok = det.abs() > _DET_EPS
        inv = 1.0 / torch.where(ok, det, torch.ones_like(det))
        s = o - v0
        b1 = (s * p).sum(-1) * inv
        q = torch.cross(s, e1.expand_as(s), dim=-1)
        b2 = (d * q).sum(-1) * inv
        t = (e2 * q).sum(-1) * inv
        lo, hi = lo_all[sl, None], hi_all[sl, None]
        hit = ok & (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1) & (t >= lo) & (t <= hi)
        t = torch.where(hit, t, torch.full_like(t, math.inf))
        best_t, best = t.min(dim=1)  # min returns the first index among ties
        found = torch.isfinite(best_t)
        rows = torch.arange(best.shape[0])
        face_out[sl] = torch.where(found, best, torch.full_like(best, -1))
        t_out[sl] = best_t
        bary_out[sl] = torch.where(
            found[:, None], torch.stack([b1[rows, best], b2[rows, best]], -1), torch.zeros(best.shape[0], 2, dtype=torch.float64)
        )
    device = origins.device
    return face_out.to(device), t_out.to(torch.float32).to(device), bary_out.to(torch.float32).to(device)
