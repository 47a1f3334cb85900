"""Plain-torch oracle for :mod:`sparse3d.kernels.flexicubes`: FlexiCubes on a dense grid (every cube active).

Written from Shen et al., "Flexible Isosurface Extraction for Gradient-Based Mesh Optimization" (ACM TOG 2023):

* grid: R cubes per axis, (R+1)^3 vertices, vertex id ``(x*(R+1) + y)*(R+1) + z``, position
  ``x' = v/R - 0.5 + (1 - 1e-8) * (h/2) * tanh(delta)`` with h = 1/R;
* weights: ``beta, alpha = 1 + 0.99 tanh(w)``, ``gamma = 0.005 + 0.99 sigmoid(w)`` (all 1 when omitted: plain DMC);
* crossing of edge (x0, x1): ``u = (s1 a1 x0 - s0 a0 x1) / (s1 a1 - s0 a0)``; dual vertex = beta-weighted mean of
  the crossings of its patch; ``L_dev`` = mean over the patch's edges of ``|d_e - mean(d)|`` with ``d_e`` the distance
  from the dual vertex to the unweighted (alpha = 1) crossing;
* every grid edge with a sign change and four cubes around it gives a quad of their dual vertices, ordered around the
  edge and wound so that its normal points from the inside endpoint to the outside one; inference splits it into
  two triangles along the diagonal with the larger gamma product, training into four around a gamma-weighted centre.

Unlike the production code this walks every grid edge of the dense grid and finds its four cubes arithmetically.
Dual vertices that no face uses are dropped (order kept); ``l_dev`` follows the kept dual vertices.
"""

from __future__ import annotations

import torch

from sparse3d.kernels.flexicubes_tables import CHECK_TABLE, EDGE_CORNERS, EDGE_GROUP, NUM_VD


def _local_edge(axis: int, u_off: int, v_off: int) -> int:
    """Cube edge along ``axis`` whose position in the two other axes (ascending) is (u_off, v_off)."""
    for e, (a, b) in enumerate(EDGE_CORNERS):
        oa = [(a >> i) & 1 for i in range(3)]
        ob = [(b >> i) & 1 for i in range(3)]
        if oa[axis] != ob[axis]:
            others = [oa[i] for i in range(3) if i != axis]
            if others == [u_off, v_off]:
                return e
    raise AssertionError("unreachable")


def flexicubes_dense(
    sdf: torch.Tensor,
    resolution: int,
    deform: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
    gamma: torch.Tensor | None = None,
    training: bool = False,
    active: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mesh ``(vertices (M, 3), faces (F, 3) int64, l_dev (D,))`` of a dense FlexiCubes grid.

    ``sdf`` ((R+1)^3,), ``deform`` ((R+1)^3, 3) raw, ``beta`` (R^3, 12), ``alpha`` (R^3, 8), ``gamma`` (R^3,) raw, cubes
    in x-major order. Vertices are the D used dual vertices (in cube order, then patch order) followed, in training
    mode, by one centre per quad. Differentiable in every float input.

    ``active`` (R^3,) bool (default all): cubes left out have no dual vertices, are no neighbour for the C16/C19
    rule and make every quad around their edges disappear, as in a sparse extraction over the active cubes.
    """
    r = resolution
    r1 = r + 1
    dev = sdf.device
    dtype = sdf.dtype
    ar = torch.arange(r1, device=dev)
    gx, gy, gz = torch.meshgrid(ar, ar, ar, indexing="ij")
    grid = torch.stack((gx, gy, gz), -1).reshape(-1, 3).to(dtype)
    pos = grid / r - 0.5
    if deform is not None:
        pos = pos + (1 - 1e-8) * (0.5 / r) * torch.tanh(deform)
    ac = torch.arange(r, device=dev)
    cx, cy, cz = torch.meshgrid(ac, ac, ac, indexing="ij")
    cubes = torch.stack((cx, cy, cz), -1).reshape(-1, 3)
    n_cubes = cubes.shape[0]
    m = torch.arange(8, device=dev)
    corner_xyz = cubes[:, None, :] + torch.stack((m & 1, (m >> 1) & 1, (m >> 2) & 1), -1)[None]
    corners = (corner_xyz[..., 0] * r1 + corner_xyz[..., 1]) * r1 + corner_xyz[..., 2]  # (N, 8)

    inside = sdf < 0
    case = (inside[corners].long() << m).sum(1)
    if active is not None:
        case = torch.where(active, case, torch.zeros_like(case))
    check = CHECK_TABLE.to(dev).long()
    flagged = check[case, 0] == 1
    step = check[case, 1:4]
    nb = cubes + step
    in_range = ((nb >= 0) & (nb < r)).all(1)
    nb_index = ((nb[:, 0] * r + nb[:, 1]) * r + nb[:, 2]).clamp(0, n_cubes - 1)
    swap = flagged & in_range & flagged[nb_index]
    case = torch.where(swap, 255 - case, case)

    num_vd = NUM_VD.to(dev).long()[case]
    vd_base = torch.cumsum(num_vd, 0) - num_vd
    edge_group = EDGE_GROUP.to(dev).long()

    # crossings, one row per (cube, crossing edge)
    cube_i, edge_i = torch.nonzero(edge_group[case] >= 0, as_tuple=True)
    vd_of_row = vd_base[cube_i] + edge_group[case[cube_i], edge_i]
    ec = torch.tensor(EDGE_CORNERS, device=dev)
    c0 = corners[cube_i, ec[edge_i, 0]]
    c1 = corners[cube_i, ec[edge_i, 1]]
    s0, s1 = sdf[c0], sdf[c1]
    x0, x1 = pos[c0], pos[c1]
    a0 = torch.ones_like(s0)
    a1 = torch.ones_like(s1)
    if alpha is not None:
        aw = 1 + 0.99 * torch.tanh(alpha)
        a0 = aw[cube_i, ec[edge_i, 0]]
        a1 = aw[cube_i, ec[edge_i, 1]]
    w = torch.ones_like(s0) if beta is None else (1 + 0.99 * torch.tanh(beta))[cube_i, edge_i]
    u = ((s1 * a1)[:, None] * x0 - (s0 * a0)[:, None] * x1) / (s1 * a1 - s0 * a0)[:, None]
    n_vd = int(num_vd.sum())
    num = torch.zeros((n_vd, 3), dtype=dtype, device=dev).index_add(0, vd_of_row, w[:, None] * u)
    den = torch.zeros(n_vd, dtype=dtype, device=dev).index_add(0, vd_of_row, w)
    vd = num / den[:, None]
    u_plain = (s1[:, None] * x0 - s0[:, None] * x1) / (s1 - s0)[:, None]
    d = torch.linalg.vector_norm(vd[vd_of_row] - u_plain, dim=1)
    n_e = torch.zeros(n_vd, dtype=dtype, device=dev).index_add(0, vd_of_row, torch.ones_like(d))
    mean_d = torch.zeros(n_vd, dtype=dtype, device=dev).index_add(0, vd_of_row, d) / n_e
    l_dev = (
        torch.zeros(n_vd, dtype=dtype, device=dev).index_add(0, vd_of_row, (d - mean_d[vd_of_row]).abs())
        / n_e
    )

    # quads: walk every grid edge with a sign change and four cubes around it
    quads = []
    flips = []
    for axis in range(3):
        u_ax, v_ax = [i for i in range(3) if i != axis]
        lo = grid.long()
        ok = lo[:, axis] < r
        lo = lo[ok]
        lo_id = (lo[:, 0] * r1 + lo[:, 1]) * r1 + lo[:, 2]
        hi = lo.clone()
        hi[:, axis] += 1
        hi_id = (hi[:, 0] * r1 + hi[:, 1]) * r1 + hi[:, 2]
        crossing = inside[lo_id] != inside[hi_id]
        ring = []
        valid = crossing.clone()
        for su, sv in ((0, 0), (0, 1), (1, 1), (1, 0)):
            cube = lo.clone()
            cube[:, u_ax] += su - 1
            cube[:, v_ax] += sv - 1
            inside_grid = ((cube >= 0) & (cube < r)).all(1)
            valid &= inside_grid
            if active is not None:
                cid = ((cube[:, 0] * r + cube[:, 1]) * r + cube[:, 2]).clamp(0, n_cubes - 1)
                valid &= active[cid]
            ring.append((cube, _local_edge(axis, 1 - su, 1 - sv)))
        dv = []
        for cube, e in ring:
            cid = (cube[valid, 0] * r + cube[valid, 1]) * r + cube[valid, 2]
            g = edge_group[case[cid], e]
            assert bool((g >= 0).all())
            dv.append(vd_base[cid] + g)
        quads.append(torch.stack(dv, 1))
        # ring normal: -(u x v) for (u, v) the other axes ascending; wanted: +axis when the lower end is inside
        ring_sign = 1 if axis == 1 else -1
        want_plus = inside[lo_id[valid]]
        flips.append(want_plus != (ring_sign > 0))
    quad = torch.cat(quads)
    flip = torch.cat(flips)
    quad = torch.where(flip[:, None], quad[:, [0, 3, 2, 1]], quad)

    used = torch.zeros(n_vd, dtype=torch.bool, device=dev)
    used[quad.reshape(-1)] = True
    remap = torch.cumsum(used.long(), 0) - 1
    quad = remap[quad]
    vd = vd[used]
    l_dev = l_dev[used]
    owner = torch.repeat_interleave(torch.arange(n_cubes, device=dev), num_vd)[used]
    g = torch.ones(vd.shape[0], dtype=dtype, device=dev)
    if gamma is not None:
        g = (0.005 + 0.99 * torch.sigmoid(gamma))[owner]
    gq = g[quad]
    g02 = gq[:, 0] * gq[:, 2]
    g13 = gq[:, 1] * gq[:, 3]
    if not training:
        split02 = g02 > g13
        t02 = torch.cat((quad[:, [0, 1, 2]], quad[:, [0, 2, 3]]), 1)
        t13 = torch.cat((quad[:, [0, 1, 3]], quad[:, [3, 1, 2]]), 1)
        faces = torch.where(split02[:, None], t02, t13).reshape(-1, 3)
        return vd, faces, l_dev
    vq = vd[quad]
    m02 = (vq[:, 0] + vq[:, 2]) / 2
    m13 = (vq[:, 1] + vq[:, 3]) / 2
    centre = (g02[:, None] * m02 + g13[:, None] * m13) / (g02 + g13 + 1e-8)[:, None]
    c_id = vd.shape[0] + torch.arange(quad.shape[0], device=dev)
    faces = torch.stack(
        [torch.stack((quad[:, i], quad[:, (i + 1) % 4], c_id), 1) for i in range(4)], 1
    ).reshape(-1, 3)
    return torch.cat((vd, centre)), faces, l_dev
