"""Plain-torch oracle for :mod:`sparse3d.kernels.plane_sweep`: plane-sweep cost volume and winner-take-all.

Written independently of the Warp kernels, in float64: every reference pixel centre is lifted to the plane
``z_ref = d`` and projected into each source camera (no homography), the source is resampled with
``torch.nn.functional.grid_sample`` (bilinear, ``align_corners=False``, border padding), and the windowed ZNCC is
evaluated with ``unfold`` over the whole warped image (window pixels outside the reference image masked out).
The cost and WTA rules are those of the Warp module's docstring; meant for small sizes only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NO_EVIDENCE_COST = 1.0


def depth_hypotheses(near: float, far: float, num: int) -> torch.Tensor:
    """(num,) float64 depths uniform in inverse depth, ``near`` first."""
    return 1.0 / torch.linspace(1.0 / near, 1.0 / far, num, dtype=torch.float64)


def _windows(x: torch.Tensor, radius: int) -> torch.Tensor:
    """(H, W) -> (H, W, (2r+1)^2) values of each pixel's window, zero outside the image."""
    h, w = x.shape
    k = 2 * radius + 1
    cols = F.unfold(x[None, None], kernel_size=k, padding=radius)  # (1, k*k, H*W)
    return cols[0].T.reshape(h, w, k * k)


def plane_sweep_cost(
    ref_image: torch.Tensor,
    src_images: torch.Tensor,
    ref_K: torch.Tensor,
    ref_viewmat: torch.Tensor,
    src_K: torch.Tensor,
    src_viewmat: torch.Tensor,
    depths: torch.Tensor,
    radius: int = 2,
    top_k: int = 2,
    var_eps: float = 1e-4,
) -> torch.Tensor:
    """(D, H, W) float32 cost volume, same contract as the Warp ``plane_sweep_cost``."""
    ref = ref_image.detach().double().cpu()
    src = src_images.detach().double().cpu()
    h, w = ref.shape
    ns, hs, ws = src.shape
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5,
                                torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij")
    pix = torch.stack([cols, rows, torch.ones_like(cols)], -1).reshape(-1, 3)  # (P, 3)
    rays = pix @ torch.linalg.inv(ref_K.double().cpu()).T  # z = 1
    c2w = torch.linalg.inv(ref_viewmat.double().cpu())
    inside = _windows(torch.ones(h, w, dtype=torch.float64), radius) > 0  # (H, W, k*k)
    n = inside.sum(-1).double()
    ref_win = _windows(ref, radius)
    a = torch.where(inside, ref_win - ref[..., None], 0.0)
    out = torch.empty(len(depths), h, w, dtype=torch.float64)
    for di, d in enumerate(depths.double().cpu()):
        pts_cam = rays * d
        pts_world = pts_cam @ c2w[:3, :3].T + c2w[:3, 3]
        costs = []
        for s in range(ns):
            vm = src_viewmat[s].double().cpu()
            cam = pts_world @ vm[:3, :3].T + vm[:3, 3]
            z = cam[:, 2]
            uvw = cam @ src_K[s].double().cpu().T
            u = uvw[:, 0] / uvw[:, 2]
            v = uvw[:, 1] / uvw[:, 2]
            grid = torch.stack([2.0 * u / ws - 1.0, 2.0 * v / hs - 1.0], -1).reshape(1, h, w, 2)
            grid = torch.nan_to_num(grid, nan=0.0, posinf=0.0, neginf=0.0)
            warped = F.grid_sample(src[s][None, None], grid, mode="bilinear", padding_mode="border",
                                   align_corners=False)[0, 0]
            front = (z > 0).reshape(h, w).double()
            all_front = (torch.where(inside, _windows(front, radius), 1.0) > 0.5).all(-1)
            in_image = ((u >= 0) & (u <= ws) & (v >= 0) & (v <= hs)).reshape(h, w)
            seen = (front > 0.5) & in_image & all_front
            b = torch.where(inside, _windows(warped, radius) - warped[..., None], 0.0)
            sa, sb = a.sum(-1), b.sum(-1)
            var_a = (a * a).sum(-1) - sa * sa / n
            var_b = (b * b).sum(-1) - sb * sb / n
            cov = (a * b).sum(-1) - sa * sb / n
            flat = (var_a < var_eps * n) | (var_b < var_eps * n)
            zncc = (cov / torch.sqrt((var_a * var_b).clamp_min(1e-300))).clamp(0.0, 1.0)
            cost = torch.where(flat, NO_EVIDENCE_COST, 1.0 - zncc)
            costs.append(torch.where(seen, cost, NO_EVIDENCE_COST))
        stacked = torch.stack(costs)  # (S, H, W)
        out[di] = torch.topk(stacked, top_k, dim=0, largest=False).values.mean(0)
    return out.to(torch.float32)


def winner_take_all(cost: torch.Tensor, near: float, far: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth and confidence from a (D, H, W) cost volume, same rules as the Warp ``winner_take_all``."""
    c = cost.detach().double().cpu()
    nd = c.shape[0]
    best = torch.argmin(c, dim=0)  # first minimum
    cb = torch.gather(c, 0, best[None])[0]
    idx = torch.arange(nd)[:, None, None]
    far_enough = (idx - best[None]).abs() >= 2
    second = torch.where(far_enough, c, float("inf")).min(0).values
    cm = torch.gather(c, 0, (best - 1).clamp_min(0)[None])[0]
    cp = torch.gather(c, 0, (best + 1).clamp_max(nd - 1)[None])[0]
    den = cm - 2.0 * cb + cp
    interior = (best > 0) & (best < nd - 1) & (den > 1e-12)
    delta = torch.where(interior, (0.5 * (cm - cp) / torch.where(interior, den, 1.0)).clamp(-0.5, 0.5), 0.0)
    inv_near = 1.0 / near
    inv_step = (1.0 / far - inv_near) / (nd - 1)
    depth = 1.0 / (inv_near + (best.double() + delta) * inv_step)
    ok = torch.isfinite(second) & (second > 0)
    conf = torch.where(ok, (1.0 - cb / torch.where(ok, second, 1.0)).clamp(0.0, 1.0), 0.0)
    return depth.to(torch.float32), conf.to(torch.float32)
