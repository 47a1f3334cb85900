"""Plain-torch oracle for :mod:`sparse3d.kernels.rotated_iou`: rotated BEV / 3-D IoU and greedy rotated NMS.

A different construction from the kernels' polygon clipping, vectorised over box pairs in float64: the
intersection of two rectangles is the convex hull of the corners of each that lie in the other and of the
crossings of their edges. All of those candidate points (4 + 4 + 16) are found with an inclusive tolerance, the
valid ones are sorted by angle around their mean and the area is the shoelace sum over that cycle (points at
the same place contribute nothing, so duplicates from vertices on edges or coincident edges are harmless).
"""

from __future__ import annotations

import torch

BOX_DIM = 7
"""Columns of a box row: ``(x, y, z, dx, dy, dz, heading)``."""
TOUCH_REL = 1e-12
"""An intersection area below this fraction of the smaller box's area counts as 0 (as in the kernels)."""
_INSIDE_TOL = 1e-9
"""Inclusive tolerance of the point-in-rectangle and edge-parameter tests, relative to the edge lengths."""
_PAIRS_PER_BLOCK = 65_536


def _corners(x: torch.Tensor, y: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """(P, 4, 2) counter-clockwise corners of rectangles centred at (x, y)."""
    c, s = torch.cos(h), torch.sin(h)
    sx = torch.tensor([0.5, -0.5, -0.5, 0.5], dtype=x.dtype, device=x.device)
    sy = torch.tensor([0.5, 0.5, -0.5, -0.5], dtype=x.dtype, device=x.device)
    lx = sx * dx[:, None]
    ly = sy * dy[:, None]
    return torch.stack([x[:, None] + c[:, None] * lx - s[:, None] * ly, y[:, None] + s[:, None] * lx + c[:, None] * ly], -1)


def _inside(pts: torch.Tensor, x: torch.Tensor, y: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """(P, K) whether each of ``pts`` (P, K, 2) lies in the rectangle, boundary and tolerance included."""
    c, s = torch.cos(h)[:, None], torch.sin(h)[:, None]
    ex = pts[..., 0] - x[:, None]
    ey = pts[..., 1] - y[:, None]
    lx = c * ex + s * ey
    ly = -s * ex + c * ey
    tol = _INSIDE_TOL * (dx + dy)[:, None]
    return (lx.abs() <= dx[:, None] / 2 + tol) & (ly.abs() <= dy[:, None] / 2 + tol)


def intersection_area(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P,) float64 area of the intersection of the BEV rectangles of box rows ``a[p]`` and ``b[p]`` (P, 7).

    Rectangles with a non-positive side give 0.
    """
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    # work relative to a's centre so that large coordinates cancel first
    ox, oy = a[:, 0], a[:, 1]
    ax, ay = torch.zeros_like(ox), torch.zeros_like(oy)
    bx, by = b[:, 0] - ox, b[:, 1] - oy
    adx, ady, ah = a[:, 3], a[:, 4], a[:, 6]
    bdx, bdy, bh = b[:, 3], b[:, 4], b[:, 6]
    ca = _corners(ax, ay, adx, ady, ah)
    cb = _corners(bx, by, bdx, bdy, bh)
    a_in_b = _inside(ca, bx, by, bdx, bdy, bh)
    b_in_a = _inside(cb, ax, ay, adx, ady, ah)

    # edge k of a runs from ca[k] to ca[k+1]; all 4 x 4 edge pairs
    p = ca[:, :, None, :]
    r = (ca.roll(-1, 1) - ca)[:, :, None, :]
    q = cb[:, None, :, :]
    s = (cb.roll(-1, 1) - cb)[:, None, :, :]
    den = r[..., 0] * s[..., 1] - r[..., 1] * s[..., 0]
    qp = q - p
    num_t = qp[..., 0] * s[..., 1] - qp[..., 1] * s[..., 0]
    num_u = qp[..., 0] * r[..., 1] - qp[..., 1] * r[..., 0]
    norm = r.norm(dim=-1) * s.norm(dim=-1)
    crossing = den.abs() > 1e-12 * norm
    safe = torch.where(crossing, den, torch.ones_like(den))
    t = num_t / safe
    u = num_u / safe
    crossing &= (t >= -_INSIDE_TOL) & (t <= 1 + _INSIDE_TOL) & (u >= -_INSIDE_TOL) & (u <= 1 + _INSIDE_TOL)
    cross_pts = p + t[..., None] * r

    pts = torch.cat([ca, cb, cross_pts.reshape(-1, 16, 2)], 1)  # (P, 24, 2)
    valid = torch.cat([a_in_b, b_in_a, crossing.reshape(-1, 16)], 1)
    count = valid.sum(1)
    w = valid.to(pts.dtype)
    centre = (pts * w[..., None]).sum(1) / count.clamp(min=1)[:, None].to(pts.dtype)
    rel = pts - centre[:, None, :]
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, 10.0))  # invalid points sort last
    order = angle.argsort(1)
    rel = torch.gather(rel, 1, order[..., None].expand(-1, -1, 2))
    valid = torch.gather(valid, 1, order)
    rel = torch.where(valid[..., None], rel, rel[:, :1, :])  # invalid -> the first valid point (adds nothing)
    nxt = rel.roll(-1, 1)
    area = 0.5 * (rel[..., 0] * nxt[..., 1] - rel[..., 1] * nxt[..., 0]).sum(1).abs()
    smaller = torch.minimum(adx * ady, bdx * bdy)
    positive = (adx > 0) & (ady > 0) & (bdx > 0) & (bdy > 0)
    area = torch.minimum(area, smaller)
    keep = positive & (count >= 3) & (area > TOUCH_REL * smaller)
    return torch.where(keep, area, torch.zeros_like(area))


def _pairs_iou(a: torch.Tensor, b: torch.Tensor, three_d: bool) -> torch.Tensor:
    """(P,) float64 IoU of aligned rows, computed in blocks of pairs."""
    out = []
    for start in range(0, a.shape[0], _PAIRS_PER_BLOCK):
        ab = a[start : start + _PAIRS_PER_BLOCK].to(torch.float64)
        bb = b[start : start + _PAIRS_PER_BLOCK].to(torch.float64)
        # only pairs whose circumscribed circles meet can intersect
        reach = 0.5 * (torch.hypot(ab[:, 3], ab[:, 4]) + torch.hypot(bb[:, 3], bb[:, 4]))
        near = torch.hypot(ab[:, 0] - bb[:, 0], ab[:, 1] - bb[:, 1]) < reach
        inter = torch.zeros(ab.shape[0], dtype=torch.float64)
        inter[near] = intersection_area(ab[near], bb[near])
        vol_a = ab[:, 3] * ab[:, 4]
        vol_b = bb[:, 3] * bb[:, 4]
        ok = (ab[:, 3] > 0) & (ab[:, 4] > 0) & (bb[:, 3] > 0) & (bb[:, 4] > 0)
        if three_d:
            top = torch.minimum(ab[:, 2] + ab[:, 5] / 2, bb[:, 2] + bb[:, 5] / 2)
            bottom = torch.maximum(ab[:, 2] - ab[:, 5] / 2, bb[:, 2] - bb[:, 5] / 2)
            inter = inter * (top - bottom).clamp(min=0)
            vol_a = vol_a * ab[:, 5]
            vol_b = vol_b * bb[:, 5]
            ok &= (ab[:, 5] > 0) & (bb[:, 5] > 0)
        union = torch.where(ok, vol_a + vol_b - inter, torch.ones_like(inter))
        out.append(torch.where(ok & (inter > 0), inter / union, torch.zeros_like(inter)))
    if not out:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat(out)


def _matrix(a: torch.Tensor, b: torch.Tensor, three_d: bool) -> torch.Tensor:
    n, m = a.shape[0], b.shape[0]
    a = a.detach().cpu()
    b = b.detach().cpu()
    ia = torch.arange(n).repeat_interleave(m)
    ib = torch.arange(m).repeat(n)
    return _pairs_iou(a[ia], b[ib], three_d).reshape(n, m).to(torch.float32)


def boxes_iou_bev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) float32 BEV IoU of rotated rectangles ``(x, y, dx, dy, heading)`` of box rows (N, 7), (M, 7)."""
    return _matrix(a, b, False)


def boxes_iou_3d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) float32 3-D IoU: BEV intersection area x z-interval overlap / union volume."""
    return _matrix(a, b, True)


def boxes_iou_bev_aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) float32 BEV IoU of ``a[i]`` with ``b[i]``."""
    return _pairs_iou(a.detach().cpu(), b.detach().cpu(), False).to(torch.float32)


def boxes_iou_3d_aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) float32 3-D IoU of ``a[i]`` with ``b[i]``."""
    return _pairs_iou(a.detach().cpu(), b.detach().cpu(), True).to(torch.float32)


def nms_bev(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    pre_max: int | None = None,
    post_max: int | None = None,
) -> torch.Tensor:
    """Greedy NMS on BEV IoU (suppress when IoU > ``iou_threshold``), kept indices by descending score (ties:
    lower index first); ``pre_max`` boxes enter the sweep, at most ``post_max`` are kept. int64 on the CPU."""
    order = torch.sort(scores.detach().cpu(), descending=True, stable=True).indices
    if pre_max is not None:
        order = order[:pre_max]
    iou = boxes_iou_bev(boxes[order], boxes[order]) if order.numel() else torch.zeros(0, 0)
    suppressed = torch.zeros(order.shape[0], dtype=torch.bool)
    keep: list[int] = []
    for i in range(order.shape[0]):
        if post_max is not None and len(keep) >= post_max:
            break
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.int64)]
