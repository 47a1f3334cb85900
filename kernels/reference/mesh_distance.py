"""Plain-torch oracle for :mod:`sparse3d.kernels.mesh_distance`: brute force over every (point, triangle) pair.

* Closest point on a triangle by Voronoi regions (vertex, edge, face), as in Ericson, *Real-Time Collision
  Detection*, 2005, section 5.1.5; faces with ``|e0 x e1| / (|e0|^2 + |e1|^2 + |e2|^2) < 1e-6`` are ignored.
* Winding number as the sum of the triangles' signed solid angles over 4 pi (Van Oosterom and Strackee, IEEE
  TBME 1983); inside where it exceeds 1/2.
* Normal sign: the angle-weighted pseudo-normal (Baerentzen and Aanaes, IEEE TVCG 2005) of the faces whose
  distance is within ``1e-3 x`` the mean edge length of the minimum, each weighted by the interior angle when
  its closest point is at a vertex, pi on an edge and 2 pi inside the face; outside where its dot product with
  ``p - closest`` is positive.

Everything is computed in float64 and returned as float32 / int64, matching the Warp module's contract.
"""

from __future__ import annotations

import math

import torch

SLIVER_RATIO = 1.0e-6
FEATURE_EPS = 1.0e-3
_BLOCK_ELEMENTS = 2**20


def _closest_on_triangles(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Barycentrics (P, F, 3) of the closest point on each triangle (a, b, c: (F, 3)) to each point p (P, 3)."""
    p = p[:, None, :]
    ab, ac = (b - a)[None], (c - a)[None]
    ap, bp, cp = p - a[None], p - b[None], p - c[None]
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2

    def safe_div(n: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return n / torch.where(d == 0, torch.ones_like(d), d)

    denom = va + vb + vc
    v_in, w_in = safe_div(vb, denom), safe_div(vc, denom)
    bary = torch.stack((1 - v_in - w_in, v_in, w_in), -1)  # face interior

    def put(mask: torch.Tensor, value: torch.Tensor) -> None:
        nonlocal bary
        bary = torch.where(mask[..., None], value, bary)

    w_bc = safe_div(d4 - d3, (d4 - d3) + (d5 - d6))
    put((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), torch.stack((torch.zeros_like(w_bc), 1 - w_bc, w_bc), -1))
    w_ac = safe_div(d2, d2 - d6)
    put((vb <= 0) & (d2 >= 0) & (d6 <= 0), torch.stack((1 - w_ac, torch.zeros_like(w_ac), w_ac), -1))
    one, zero = torch.ones_like(d1), torch.zeros_like(d1)
    put((d6 >= 0) & (d5 <= d6), torch.stack((zero, zero, one), -1))
    v_ab = safe_div(d1, d1 - d3)
    put((vc <= 0) & (d1 >= 0) & (d3 <= 0), torch.stack((1 - v_ab, v_ab, zero), -1))
    put((d3 >= 0) & (d4 <= d3), torch.stack((zero, one, zero), -1))
    put((d1 <= 0) & (d2 <= 0), torch.stack((one, zero, zero), -1))
    return bary


def _angle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)).clamp_min(1e-300)
    return torch.arccos(cos.clamp(-1.0, 1.0))


def _line_dist_sq(c: torch.Tensor, a: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Squared distance of points c (P, F, 3) to the lines a + t e (a, e: (F, 3))."""
    d = c - a[None]
    ee = (e * e).sum(-1)[None]
    t = (d * e[None]).sum(-1)
    return ((d * d).sum(-1) * ee - t * t) / ee.clamp_min(1e-300)


def winding_numbers(vertices: torch.Tensor, faces: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Generalised winding number (P,) float64 of each point: sum of signed solid angles / (4 pi)."""
    v = vertices.to(torch.float64)
    f = faces.to(torch.int64)
    pts = points.to(torch.float64)
    a0, b0, c0 = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    out = torch.zeros(pts.shape[0], dtype=torch.float64)
    block = max(1, _BLOCK_ELEMENTS // max(1, f.shape[0]))
    for s in range(0, pts.shape[0], block):
        p = pts[s : s + block, None, :]
        a, b, c = a0[None] - p, b0[None] - p, c0[None] - p
        la, lb, lc = a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)
        num = (a * torch.cross(b, c, dim=-1)).sum(-1)
        den = la * lb * lc + (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
        out[s : s + block] = (2.0 * torch.atan2(num, den)).sum(-1) / (4.0 * math.pi)
    return out


def closest_points(
    vertices: torch.Tensor, faces: torch.Tensor, points: torch.Tensor, normal_sign: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Brute-force closest point of each point on the mesh.

    Returns ``(dist (P,) float64 unsigned, face (P,) int64, bary (P, 3) float64, outside (P,) bool)``;
    ``outside`` is the pseudo-normal sign when ``normal_sign`` is set (all True otherwise). Where every face is
    a sliver, dist is inf and face -1.
    """
    v = vertices.to(torch.float64)
    f = faces.to(torch.int64)
    pts = points.to(torch.float64)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    e0, e1, e2 = b - a, c - a, c - b
    cross = torch.cross(e0, e1, dim=-1)
    area2 = cross.norm(dim=-1)
    # Warp's sliver test, in float32 as there.
    e0f, e1f, e2f = e0.float(), e1.float(), e2.float()
    ratio = torch.cross(e0f, e1f, dim=-1).norm(dim=-1) / ((e0f * e0f).sum(-1) + (e1f * e1f).sum(-1) + (e2f * e2f).sum(-1))
    valid = ratio >= SLIVER_RATIO
    unit_n = cross / area2.clamp_min(1e-300)[:, None]
    eps = FEATURE_EPS * float((e0.norm(dim=-1) + e1.norm(dim=-1) + e2.norm(dim=-1)).sum() / (3 * f.shape[0]))
    angles = torch.stack((_angle(e0, e1), _angle(e2, -e0), _angle(-e1, -e2)), -1)  # (F, 3)

    n = pts.shape[0]
    dist = torch.full((n,), math.inf, dtype=torch.float64)
    face = torch.full((n,), -1, dtype=torch.int64)
    bary = torch.zeros((n, 3), dtype=torch.float64)
    outside = torch.ones(n, dtype=torch.bool)
    block = max(1, _BLOCK_ELEMENTS // max(1, f.shape[0]))
    for s in range(0, n, block):
        p = pts[s : s + block]
        bc = _closest_on_triangles(p, a, b, c)  # (B, F, 3)
        cp = bc[..., 0:1] * a[None] + bc[..., 1:2] * b[None] + bc[..., 2:3] * c[None]
        d = (cp - p[:, None, :]).norm(dim=-1)
        d = torch.where(valid[None], d, torch.full_like(d, math.inf))
        dmin, arg = d.min(dim=1)
        rows = torch.arange(p.shape[0])
        found = torch.isfinite(dmin)
        dist[s : s + block] = dmin
        face[s : s + block] = torch.where(found, arg, torch.full_like(arg, -1))
        bary[s : s + block] = torch.where(found[:, None], bc[rows, arg], torch.zeros_like(bc[rows, arg]))
        if normal_sign:
            near = d < dmin[:, None] + eps
            weight = torch.full_like(d, 2.0 * math.pi)
            on_edge = (
                (_line_dist_sq(cp, a, e0) < eps * eps)
                | (_line_dist_sq(cp, b, e2) < eps * eps)
                | (_line_dist_sq(cp, a, e1) < eps * eps)
            )
            weight = torch.where(on_edge, torch.full_like(d, math.pi), weight)
            for k, corner in ((2, c), (1, b), (0, a)):
                at = ((cp - corner[None]) ** 2).sum(-1) < eps * eps
                weight = torch.where(at, angles[None, :, k].expand_as(d), weight)
            weight = torch.where(near, weight, torch.zeros_like(weight))
            acc = (weight[..., None] * unit_n[None]).sum(1)
            closest = cp[rows, arg]
            outside[s : s + block] = ((acc * (p - closest)).sum(-1) > 0) | ~found
    return dist, face, bary, outside


def mesh_signed_distance(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    points: torch.Tensor,
    mode: str = "winding",
    max_distance: float = math.inf,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle of :func:`sparse3d.kernels.mesh_distance.mesh_signed_distance`: (dist (P,) float32, face (P,) int64)."""
    if mode not in ("winding", "normal", "none"):
        raise ValueError(f"mode must be one of winding, normal, none, got {mode!r}")
    dist, face, _, outside = closest_points(vertices, faces, points, normal_sign=mode == "normal")
    if mode == "winding":
        outside = winding_numbers(vertices, faces, points) <= 0.5
    signed = torch.where(outside, dist, -dist)
    miss = ~(dist < max_distance)
    signed[miss] = math.inf
    face = face.clone()
    face[miss] = -1
    return signed.to(torch.float32), face
