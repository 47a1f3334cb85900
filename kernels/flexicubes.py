"""Sparse FlexiCubes isosurface extraction (Shen et al., "Flexible Isosurface Extraction for Gradient-Based Mesh
Optimization", ACM TOG 42(4), 2023), run only over a sparse set of active cubes (as in SparseFlex, He et al.,
arXiv 2503.21732), with gradients to the SDF, the deformation and the FlexiCubes weights.

Grid: R cubes per axis over [-0.5, 0.5]^3, vertex id ``(x*(R+1) + y)*(R+1) + z``, corner m of a cube at offset
``(m&1, (m>>1)&1, (m>>2)&1)``, ``s < 0`` inside. Per-corner values (SDF, deformation) live in the index space of
:func:`cube_corner_table` (one entry per distinct corner of the active cubes); per-cube weights follow the cubes.

Pipeline of :func:`extract_mesh` (no dense grid is ever allocated):

1. case id per cube (Warp); C16/C19 disambiguation: a flagged cube whose neighbour across its ambiguous face is
   active and flagged takes the complement's grouping, found by ``searchsorted`` over the sorted keys of the
   flagged cubes;
2. one row per (surface cube, crossing edge) (Warp), keyed by the 1-D edge key ``3*vid(lower endpoint) + axis``;
   one ``torch.unique`` gives every crossing edge and how many active cubes share it. An edge shared by four cubes
   becomes a quad; an edge with fewer (a border of the active set) emits nothing, so a band of cubes over part of
   a surface yields an open mesh;
3. dual vertices and ``L_dev`` per surface patch (Warp, one thread per cube; gradients by the kernel's adjoint);
4. quads are ordered around their edge from the cubes' positions and wound so that the normal points from the
   inside endpoint to the outside one (counter-clockwise = outward), then split into two triangles by gamma
   (inference) or four around a gamma-weighted centre (training).

The result does not depend on the order of the input cubes except for the order of vertices and faces.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import warp as wp

from sparse3d.kernels.flexicubes_tables import (
    CHECK_TABLE,
    CROSSING,
    DMC_TABLE,
    EDGE_AXIS,
    EDGE_CORNERS,
    EDGE_GROUP,
    EDGE_LOWER,
    NUM_VD,
)
from sparse3d.kernels.runtime import (
    check_same_device,
    check_tensor,
    init,
    launch,
    serial_torch_ops,
    to_wp,
    wp_device,
)

wp.set_module_options({"enable_backward": True, "optimization_level": 3})


def _check_resolution(resolution: int) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    if (resolution + 1) ** 3 * 3 >= 2**62:
        raise ValueError(f"resolution {resolution} is too large for int64 vertex keys")
    return resolution


def _check_coords(cube_coords: torch.Tensor, resolution: int) -> torch.Tensor:
    """Validated (N, 3) int64 copy of ``cube_coords`` (range checked; duplicates are checked by the callers)."""
    check_tensor("cube_coords", cube_coords, (torch.int32, torch.int64), ndim=2, last_dim=3)
    c = cube_coords.to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= resolution):
        raise ValueError(f"cube_coords must lie in [0, {resolution}) on every axis")
    return c


def _cube_keys(coords: torch.Tensor, resolution: int) -> torch.Tensor:
    """x-major linear cube keys ``(x*R + y)*R + z`` of (N, 3) int64 coordinates."""
    return (coords[:, 0] * resolution + coords[:, 1]) * resolution + coords[:, 2]


def _base_vids(coords: torch.Tensor, resolution: int) -> torch.Tensor:
    """Vertex id ``(x*(R+1) + y)*(R+1) + z`` of each cube's corner 0."""
    r1 = resolution + 1
    return (coords[:, 0] * r1 + coords[:, 1]) * r1 + coords[:, 2]


def _corner_offsets(resolution: int, device: torch.device) -> torch.Tensor:
    """Vertex-id offset of corner m (at (m&1, (m>>1)&1, (m>>2)&1)) from corner 0, m = 0..7."""
    r1 = resolution + 1
    m = torch.arange(8, device=device, dtype=torch.int64)
    return (m & 1) * r1 * r1 + ((m >> 1) & 1) * r1 + ((m >> 2) & 1)


def sort_cubes(cube_coords: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cube coordinates sorted by x-major key ``(x*R + y)*R + z`` and the permutation that sorts them.

    Returns ``(cube_coords[order], order)`` with ``order`` int64; the sort is stable.
    """
    resolution = _check_resolution(resolution)
    c = _check_coords(cube_coords, resolution)
    order = torch.sort(_cube_keys(c, resolution), stable=True).indices
    return cube_coords[order], order


def cube_corner_table(cube_coords: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared corners of a sparse set of cubes.

    ``cube_coords`` (N, 3) int32/int64 (x, y, z) in [0, R). Returns ``(corner_keys, cube_corners)``:
    ``corner_keys`` (V,) int64, the sorted unique vertex ids ``(x*(R+1) + y)*(R+1) + z`` of all cube corners;
    ``cube_corners`` (N, 8) int64 indices into ``corner_keys``, corner m at offset (m&1, (m>>1)&1, (m>>2)&1).
    Invariant: ``corner_keys[cube_corners[i, m]]`` is the vertex id of corner m of cube i.
    """
    resolution = _check_resolution(resolution)
    c = _check_coords(cube_coords, resolution)
    with serial_torch_ops():
        vids = _base_vids(c, resolution)[:, None] + _corner_offsets(resolution, c.device)[None, :]
        keys, inverse = torch.unique(vids.reshape(-1), sorted=True, return_inverse=True)
        del vids
    return keys, inverse.reshape(-1, 8)


def corner_positions(corner_keys: torch.Tensor, resolution: int) -> torch.Tensor:
    """Undeformed positions (V, 3) float32 in [-0.5, 0.5]^3 of vertex ids: ``(x, y, z) / R - 0.5``."""
    resolution = _check_resolution(resolution)
    check_tensor("corner_keys", corner_keys, (torch.int32, torch.int64), ndim=1)
    k = corner_keys.to(torch.int64)
    r1 = resolution + 1
    if k.numel() and (int(k.min()) < 0 or int(k.max()) >= r1**3):
        raise ValueError(f"corner_keys must lie in [0, {r1**3})")
    xyz = torch.stack((k // (r1 * r1), (k // r1) % r1, k % r1), dim=1)
    return xyz.to(torch.float32) / resolution - 0.5


# ------------------------------------------------------------------------------------------------ tables
_EDGE_A = torch.tensor([a for a, _ in EDGE_CORNERS], dtype=torch.int32)
_EDGE_B = torch.tensor([b for _, b in EDGE_CORNERS], dtype=torch.int32)
_EDGE_UPPER = torch.tensor([a + b - int(lo) for (a, b), lo in zip(EDGE_CORNERS, EDGE_LOWER.tolist())])


def _ring_slots() -> torch.Tensor:
    """Ring position (0..3) of a cube around its edge e, from where e sits in the cube.

    Around an edge along axis a, with (u, v) the two other axes ascending, the cube on side (su, sv) (0 = below
    the edge, 1 = above) holds the edge at its local offset (1 - su, 1 - sv); the ring visits sides
    (0,0) (0,1) (1,1) (1,0), whose right-hand normal is -(u x v): -x, +y, -z for a = x, y, z.
    """
    ring = {(0, 0): 0, (0, 1): 1, (1, 1): 2, (1, 0): 3}
    slots = []
    for e, lo in enumerate(EDGE_LOWER.tolist()):
        axis = int(EDGE_AXIS[e])
        off = [(lo >> i) & 1 for i in range(3)]
        u_off, v_off = (off[i] for i in range(3) if i != axis)
        slots.append(ring[(1 - u_off, 1 - v_off)])
    return torch.tensor(slots, dtype=torch.int64)


_RING_SLOT = _ring_slots()
_DEFORM_SCALE = 1.0 - 1e-8
DUAL_SPLIT_MIN = 4096
"""Surface cubes from which the dual-vertex launch is split over the CPU cores (each thread does a lot)."""


# ------------------------------------------------------------------------------------------------ kernels
@wp.kernel(enable_backward=False)
def _case_kernel(
    offset: int,
    sdf: wp.array(dtype=wp.float32),
    corners: wp.array2d(dtype=wp.int64),
    cases: wp.array(dtype=wp.int32),
):
    """Case id ``sum_m [s_m < 0] 2^m`` of cube ``i``."""
    i = wp.tid() + offset
    c = int(0)  # noqa: UP018 -- a Warp variable
    for m in range(8):
        if sdf[int(corners[i, m])] < 0.0:
            c = c | (1 << m)
    cases[i] = c


@wp.kernel(enable_backward=False)
def _edge_rows_kernel(
    offset: int,
    coords: wp.array2d(dtype=wp.int64),
    res1: wp.int64,
    case_tab: wp.array(dtype=wp.int32),
    row_base: wp.array(dtype=wp.int64),
    dv_base: wp.array(dtype=wp.int32),
    edge_group: wp.array2d(dtype=wp.int32),
    lower_vid_off: wp.array(dtype=wp.int64),
    edge_axis: wp.array(dtype=wp.int64),
    keys: wp.array(dtype=wp.int64),
    row_dv: wp.array(dtype=wp.int32),
    row_ce: wp.array(dtype=wp.int32),
):
    """Rows of surface cube ``i``: per crossing edge its key ``3*vid(lower end) + axis``, its dual vertex and
    ``12*i + edge``."""
    i = wp.tid() + offset
    c = int(case_tab[i])
    r = row_base[i]
    base = (coords[i, 0] * res1 + coords[i, 1]) * res1 + coords[i, 2]
    for e in range(12):
        g = edge_group[c, e]
        if g >= 0:
            keys[r] = (base + lower_vid_off[e]) * wp.int64(3) + edge_axis[e]
            row_dv[r] = dv_base[i] + g
            row_ce[r] = i * 12 + e
            r = r + wp.int64(1)


@wp.func
def _crossing(x0: wp.vec3, x1: wp.vec3, w0: float, w1: float) -> wp.vec3:
    """Zero of the linear interpolation between weighted values ``w0`` at ``x0`` and ``w1`` at ``x1``."""
    return (w1 * x0 - w0 * x1) / (w1 - w0)


@wp.kernel
def _dual_kernel(
    offset: int,
    surf: wp.array(dtype=wp.int32),
    corners: wp.array2d(dtype=wp.int64),
    pos: wp.array(dtype=wp.vec3),
    sdf: wp.array(dtype=wp.float32),
    alpha: wp.array2d(dtype=wp.float32),
    beta: wp.array2d(dtype=wp.float32),
    has_alpha: int,
    has_beta: int,
    case_tab: wp.array(dtype=wp.int32),
    dv_base: wp.array(dtype=wp.int32),
    dmc: wp.array3d(dtype=wp.int32),
    edge_a: wp.array(dtype=wp.int32),
    edge_b: wp.array(dtype=wp.int32),
    vd: wp.array(dtype=wp.vec3),
    ldev: wp.array(dtype=wp.float32),
):
    """Dual vertices of surface cube ``t``: beta-weighted mean of the alpha-weighted crossings of each patch, and
    the patch's L_dev (mean absolute deviation of the distances to the unweighted crossings)."""
    t = wp.tid() + offset
    ci = surf[t]
    c = int(case_tab[t])
    base = dv_base[t]
    for k in range(4):
        if dmc[c, k, 0] >= 0:
            acc = wp.vec3(0.0, 0.0, 0.0)
            wsum = float(0.0)  # noqa: UP018 -- a Warp variable
            for j in range(7):
                e = dmc[c, k, j]
                if e >= 0:
                    a = edge_a[e]
                    b = edge_b[e]
                    ia = int(corners[ci, a])
                    ib = int(corners[ci, b])
                    wa = sdf[ia]
                    wb = sdf[ib]
                    if has_alpha != 0:
                        wa = wa * alpha[ci, a]
                        wb = wb * alpha[ci, b]
                    w = float(1.0)  # noqa: UP018 -- a Warp variable
                    if has_beta != 0:
                        w = beta[ci, e]
                    acc = acc + w * _crossing(pos[ia], pos[ib], wa, wb)
                    wsum = wsum + w
            v = acc / wsum
            vd[base + k] = v
            dsum = float(0.0)  # noqa: UP018 -- a Warp variable
            n = float(0.0)  # noqa: UP018 -- a Warp variable
            for j in range(7):
                e = dmc[c, k, j]
                if e >= 0:
                    ia = int(corners[ci, edge_a[e]])
                    ib = int(corners[ci, edge_b[e]])
                    dsum = dsum + wp.length(v - _crossing(pos[ia], pos[ib], sdf[ia], sdf[ib]))
                    n = n + 1.0
            mean = dsum / n
            dev = float(0.0)  # noqa: UP018 -- a Warp variable
            for j in range(7):
                e = dmc[c, k, j]
                if e >= 0:
                    ia = int(corners[ci, edge_a[e]])
                    ib = int(corners[ci, edge_b[e]])
                    dev = dev + wp.abs(wp.length(v - _crossing(pos[ia], pos[ib], sdf[ia], sdf[ib])) - mean)
            ldev[base + k] = dev / n


_TABLE_CACHE: dict[str, dict[str, wp.array]] = {}
_TABLE_LOCK = threading.Lock()


def _device_tables(device: str, res1: int) -> dict[str, torch.Tensor]:
    """Case tables as torch tensors on the kernel device (cached per device), plus per-resolution offsets."""
    with _TABLE_LOCK:
        if device not in _TABLE_CACHE:
            tdev = torch.device(device)
            _TABLE_CACHE[device] = {
                "dmc": DMC_TABLE.to(tdev).contiguous(),
                "edge_group": EDGE_GROUP.to(tdev).contiguous(),
                "edge_a": _EDGE_A.to(tdev),
                "edge_b": _EDGE_B.to(tdev),
                "edge_axis": EDGE_AXIS.to(tdev, torch.int64),
                "num_vd": NUM_VD.to(tdev, torch.int64),
                "num_cross": CROSSING.sum(1).to(tdev, torch.int64),
                "check": CHECK_TABLE.to(tdev, torch.int64),
                "edge_lower": EDGE_LOWER.to(tdev, torch.int64),
                "edge_upper": _EDGE_UPPER.to(tdev),
                "ring_slot": _RING_SLOT.to(tdev),
            }
        tables = dict(_TABLE_CACHE[device])
    lo = tables["edge_lower"]
    tables["lower_vid_off"] = (lo & 1) * res1 * res1 + ((lo >> 1) & 1) * res1 + ((lo >> 2) & 1)
    return tables


# ------------------------------------------------------------------------------------------------ autograd
class _DualVertices(torch.autograd.Function):
    """Dual vertices and L_dev of the surface cubes: ``(pos (V,3), sdf (V,), alpha (N,8), beta (N,12)) -> (vd (D,3),
    l_dev (D,))``, alpha/beta already squashed or (0, k) when omitted. Backward runs the kernel's Warp adjoint,
    which scatters into the shared corners (one CPU launch; atomics on CUDA)."""

    @staticmethod
    def forward(ctx, pos, sdf, alpha, beta, plumbing):  # type: ignore[override]
        surf, corners, case_tab, dv_base, n_vd, tables, device = plumbing
        vd = torch.empty((n_vd, 3), dtype=torch.float32, device=pos.device)
        ldev = torch.empty(n_vd, dtype=torch.float32, device=pos.device)
        inputs = _dual_inputs(surf, corners, pos, sdf, alpha, beta, case_tab, dv_base, tables)
        launch(
            _dual_kernel,
            int(surf.shape[0]),
            [*inputs[1:], to_wp(vd, wp.vec3), to_wp(ldev)],
            device,
            min_split=DUAL_SPLIT_MIN,
        )
        ctx.plumbing = plumbing
        ctx.save_for_backward(pos, sdf, alpha, beta)
        return vd, ldev

    @staticmethod
    @serial_torch_ops()
    def backward(ctx, g_vd, g_ldev):  # type: ignore[override]
        pos, sdf, alpha, beta = ctx.saved_tensors
        surf, corners, case_tab, dv_base, n_vd, tables, device = ctx.plumbing
        if g_vd is None:
            g_vd = torch.zeros((n_vd, 3), dtype=torch.float32, device=pos.device)
        if g_ldev is None:
            g_ldev = torch.zeros(n_vd, dtype=torch.float32, device=pos.device)
        g_vd = g_vd.contiguous()
        g_ldev = g_ldev.contiguous()
        adj_pos = torch.zeros_like(pos)
        adj_sdf = torch.zeros_like(sdf)
        adj_alpha = torch.zeros_like(alpha)
        adj_beta = torch.zeros_like(beta)
        if surf.shape[0] == 0:
            return adj_pos, adj_sdf, adj_alpha, adj_beta, None
        vd = torch.empty((n_vd, 3), dtype=torch.float32, device=pos.device)
        ldev = torch.empty(n_vd, dtype=torch.float32, device=pos.device)
        inputs = _dual_inputs(surf, corners, pos, sdf, alpha, beta, case_tab, dv_base, tables)
        adj_inputs = [
            0,
            None,
            None,
            to_wp(adj_pos, wp.vec3),
            to_wp(adj_sdf),
            to_wp(adj_alpha),
            to_wp(adj_beta),
        ]
        adj_inputs += [0, 0, None, None, None, None, None]
        init()
        wp.launch(
            _dual_kernel,
            dim=int(surf.shape[0]),
            inputs=inputs,
            outputs=[to_wp(vd, wp.vec3), to_wp(ldev)],
            adj_inputs=adj_inputs,
            adj_outputs=[to_wp(g_vd, wp.vec3), to_wp(g_ldev)],
            device=device,
            adjoint=True,
        )
        return adj_pos, adj_sdf, adj_alpha, adj_beta, None


def _dual_inputs(surf, corners, pos, sdf, alpha, beta, case_tab, dv_base, tables) -> list:
    """Warp inputs of :func:`_dual_kernel` (offset 0 first)."""
    return [
        0,
        to_wp(surf),
        to_wp(corners),
        to_wp(pos.detach(), wp.vec3),
        to_wp(sdf.detach()),
        to_wp(alpha.detach()),
        to_wp(beta.detach()),
        int(alpha.shape[0] > 0),
        int(beta.shape[0] > 0),
        to_wp(case_tab),
        to_wp(dv_base),
        to_wp(tables["dmc"]),
        to_wp(tables["edge_a"]),
        to_wp(tables["edge_b"]),
    ]


# ------------------------------------------------------------------------------------------------ public API
@dataclass
class FlexiMesh:
    """A FlexiCubes mesh over a sparse set of cubes.

    ``vertices`` (M, 3) float32: the D dual vertices that some face uses, then (training) one centre per quad;
    ``faces`` (F, 3) int64, counter-clockwise seen from outside (s > 0); ``l_dev`` (D,) float32 per dual vertex
    (FlexiCubes Eq. 8); ``dual_cubes`` (D,) int64: the input cube each dual vertex belongs to; ``edges`` (E, 2) int64:
    every grid edge with a sign change inside the active cubes (counted once, whether or not it made a quad) as
    indices (lower end, upper end) into the corner index space, for :func:`sdf_sign_loss`.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    l_dev: torch.Tensor
    dual_cubes: torch.Tensor
    edges: torch.Tensor


def _check_float(name: str, t: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
    if t is None:
        return None
    check_tensor(name, t, torch.float32)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    return t


def extract_mesh(
    cube_coords: torch.Tensor,
    resolution: int,
    sdf: torch.Tensor,
    deform: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
    gamma: torch.Tensor | None = None,
    *,
    training: bool = False,
    corners: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> FlexiMesh:
    """FlexiCubes mesh of the active cubes ``cube_coords`` (N, 3) (x, y, z) in [0, R), no duplicates.

    ``sdf`` (V,) float32 per shared corner (index space of :func:`cube_corner_table`; s < 0 inside), ``deform``
    (V, 3) raw (squashed to less than half a voxel by tanh), ``beta`` (N, 12), ``alpha`` (N, 8), ``gamma`` (N,)
    raw per-cube weights (omitted: 1, plain Dual Marching Cubes). ``training`` selects the differentiable 4-triangle
    quad split. ``corners`` reuses a :func:`cube_corner_table` result for these cubes. Gradients reach sdf, deform,
    beta, alpha and gamma. Only grid edges shared by four active cubes produce faces.
    """
    # torch's own ops here are index glue between Warp launches: one thread each (see serial_torch_ops)
    with serial_torch_ops():
        return _extract_mesh(cube_coords, resolution, sdf, deform, beta, alpha, gamma, training, corners)


def _extract_mesh(
    cube_coords: torch.Tensor,
    resolution: int,
    sdf: torch.Tensor,
    deform: torch.Tensor | None,
    beta: torch.Tensor | None,
    alpha: torch.Tensor | None,
    gamma: torch.Tensor | None,
    training: bool,
    corners: tuple[torch.Tensor, torch.Tensor] | None,
) -> FlexiMesh:
    """The body of :func:`extract_mesh` (validation included)."""
    resolution = _check_resolution(resolution)
    coords = _check_coords(cube_coords, resolution)
    n = int(coords.shape[0])
    check_tensor("sdf", sdf, torch.float32, ndim=1)
    if corners is None:
        corner_keys, cube_corners = cube_corner_table(coords, resolution)
    else:
        if not isinstance(corners, tuple) or len(corners) != 2:
            raise ValueError("corners must be the (corner_keys, cube_corners) tuple of cube_corner_table")
        corner_keys, cube_corners = corners
        check_tensor("corners[0]", corner_keys, torch.int64, ndim=1)
        check_tensor("corners[1]", cube_corners, torch.int64, ndim=2, last_dim=8)
        if cube_corners.shape[0] != n:
            raise ValueError(f"corners[1] must have {n} rows (one per cube), got {cube_corners.shape[0]}")
    v = int(corner_keys.shape[0])
    if sdf.shape[0] != v:
        raise ValueError(f"sdf must have one value per corner ({v}), got {sdf.shape[0]}")
    _check_float("deform", deform, (v, 3))
    _check_float("beta", beta, (n, 12))
    _check_float("alpha", alpha, (n, 8))
    _check_float("gamma", gamma, (n,))
    given = {
        k: t
        for k, t in dict(
            cube_coords=cube_coords, sdf=sdf, deform=deform, beta=beta, alpha=alpha, gamma=gamma
        ).items()
        if t is not None
    }
    check_same_device(**given)
    if 12 * n >= 2**31:
        raise ValueError(f"cube_coords has too many cubes ({n}) for int32 row indices")
    keys = _cube_keys(coords, resolution)
    sorted_keys = torch.sort(keys).values
    if n > 1 and bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
        raise ValueError("cube_coords must not contain duplicate cubes")
    del sorted_keys
    device = wp_device(sdf)
    tables = _device_tables(device, resolution + 1)
    tdev = sdf.device
    cube_corners = cube_corners.contiguous()

    # 1. case ids and C16/C19 disambiguation
    case = torch.empty(n, dtype=torch.int32, device=tdev)
    launch(_case_kernel, n, [to_wp(sdf.detach().contiguous()), to_wp(cube_corners), to_wp(case)], device)
    case64 = case.long()
    flagged = torch.nonzero(tables["check"][:, 0][case64] == 1).squeeze(1)
    case_tab = case64
    if flagged.numel():
        fkeys = torch.sort(keys[flagged]).values
        nb = coords[flagged] + tables["check"][case64[flagged], 1:4]
        ok = ((nb >= 0) & (nb < resolution)).all(1)
        nkeys = _cube_keys(nb, resolution)
        at = torch.searchsorted(fkeys, nkeys).clamp(max=fkeys.shape[0] - 1)
        hit = ok & (fkeys[at] == nkeys)
        swap = flagged[hit]
        case_tab = case64.clone()
        case_tab[swap] = 255 - case_tab[swap]
    del keys

    # 2. surface cubes, crossing-edge rows, one unique over 1-D edge keys
    surf = torch.nonzero((case64 != 0) & (case64 != 255)).squeeze(1)
    ns = int(surf.shape[0])
    cs = case_tab[surf]
    nvd = tables["num_vd"][cs]
    ncross = tables["num_cross"][cs]
    dv_end = torch.cumsum(nvd, 0)
    row_end = torch.cumsum(ncross, 0)
    n_vd = int(dv_end[-1]) if ns else 0
    n_rows = int(row_end[-1]) if ns else 0
    dv_base = (dv_end - nvd).to(torch.int32)
    row_base = row_end - ncross
    del dv_end, row_end, ncross
    cs32 = cs.to(torch.int32)
    row_keys = torch.empty(n_rows, dtype=torch.int64, device=tdev)
    row_dv = torch.empty(n_rows, dtype=torch.int32, device=tdev)
    row_ce = torch.empty(n_rows, dtype=torch.int32, device=tdev)
    launch(
        _edge_rows_kernel,
        ns,
        [
            to_wp(coords[surf].contiguous()),
            resolution + 1,
            to_wp(cs32),
            to_wp(row_base),
            to_wp(dv_base),
            to_wp(tables["edge_group"]),
            to_wp(tables["lower_vid_off"]),
            to_wp(tables["edge_axis"]),
            to_wp(row_keys),
            to_wp(row_dv),
            to_wp(row_ce),
        ],
        device,
    )
    del row_base
    _, inv, counts = torch.unique(row_keys, sorted=True, return_inverse=True, return_counts=True)
    del row_keys
    n_edges = int(counts.shape[0])
    rep = torch.empty(n_edges, dtype=torch.int64, device=tdev)
    rep.scatter_(0, inv, torch.arange(n_rows, device=tdev))
    rep_ce = row_ce[rep].long()
    rep_cube = surf[rep_ce // 12]
    rep_e = rep_ce % 12
    edges = torch.stack(
        (
            cube_corners[rep_cube, tables["edge_lower"][rep_e]],
            cube_corners[rep_cube, tables["edge_upper"][rep_e]],
        ),
        1,
    )
    del rep, rep_ce, rep_cube, rep_e
    is_quad = counts == 4
    quad_of_edge = torch.cumsum(is_quad, 0) - 1
    n_quads = int(quad_of_edge[-1]) + 1 if n_edges else 0
    qrows = torch.nonzero(is_quad[inv]).squeeze(1)
    qid = quad_of_edge[inv[qrows]]
    del inv, counts, is_quad, quad_of_edge
    q_ce = row_ce[qrows].long()
    q_e = q_ce % 12
    slot = tables["ring_slot"][q_e]
    quad = torch.empty((n_quads, 4), dtype=torch.int64, device=tdev)
    quad[qid, slot] = row_dv[qrows].long()
    del row_dv, row_ce
    # winding from the ring's first cube: normal wanted along +axis when the lower end is inside
    first = slot == 0
    q_first = torch.empty(n_quads, dtype=torch.int64, device=tdev)
    q_first[qid[first]] = q_ce[first]
    del qrows, qid, q_ce, q_e, slot, first
    f_cube = surf[q_first // 12]
    f_e = q_first % 12
    lower_inside = sdf.detach()[cube_corners[f_cube, tables["edge_lower"][f_e]]] < 0
    flip = lower_inside != (tables["edge_axis"][f_e] == 1)
    del q_first, f_cube, f_e, lower_inside
    quad = torch.where(flip[:, None], quad[:, [0, 3, 2, 1]], quad)
    del flip

    # 3. dual vertices (differentiable)
    pos = corner_positions(corner_keys, resolution).to(tdev)
    if deform is not None:
        pos = pos + (_DEFORM_SCALE * 0.5 / resolution) * torch.tanh(deform)
    empty8 = torch.empty((0, 8), dtype=torch.float32, device=tdev)
    empty12 = torch.empty((0, 12), dtype=torch.float32, device=tdev)
    alpha_w = empty8 if alpha is None else (1.0 + 0.99 * torch.tanh(alpha)).contiguous()
    beta_w = empty12 if beta is None else (1.0 + 0.99 * torch.tanh(beta)).contiguous()
    surf32 = surf.to(torch.int32)
    plumbing = (surf32, cube_corners, cs32, dv_base, n_vd, tables, device)
    vd, ldev = _DualVertices.apply(pos.contiguous(), sdf.contiguous(), alpha_w, beta_w, plumbing)
    del pos

    # 4. keep used dual vertices, triangulate
    used = torch.zeros(n_vd, dtype=torch.bool, device=tdev)
    used[quad.reshape(-1)] = True
    remap = torch.cumsum(used, 0) - 1
    quad = remap[quad]
    del remap
    dual_cubes = torch.repeat_interleave(surf, nvd)[used]
    vd = vd[used]
    ldev = ldev[used]
    if gamma is None:
        g = torch.ones(vd.shape[0], dtype=torch.float32, device=tdev)
    else:
        g = (0.005 + 0.99 * torch.sigmoid(gamma))[dual_cubes]
    gq = g[quad]
    g02 = gq[:, 0] * gq[:, 2]
    g13 = gq[:, 1] * gq[:, 3]
    if not training:
        split02 = (g02 > g13)[:, None]
        tri_a = torch.where(split02, quad[:, [0, 1, 2]], quad[:, [0, 1, 3]])
        tri_b = torch.where(split02, quad[:, [0, 2, 3]], quad[:, [3, 1, 2]])
        faces = torch.stack((tri_a, tri_b), 1).reshape(-1, 3)
        return FlexiMesh(vd, faces, ldev, dual_cubes, edges)
    vq = vd[quad]
    m02 = (vq[:, 0] + vq[:, 2]) / 2
    m13 = (vq[:, 1] + vq[:, 3]) / 2
    centre = (g02[:, None] * m02 + g13[:, None] * m13) / (g02 + g13 + 1e-8)[:, None]
    c_id = vd.shape[0] + torch.arange(n_quads, device=tdev)
    faces = torch.stack([torch.stack((quad[:, i], quad[:, (i + 1) % 4], c_id), 1) for i in range(4)], 1)
    return FlexiMesh(torch.cat((vd, centre)), faces.reshape(-1, 3), ldev, dual_cubes, edges)


def sdf_sign_loss(mesh_or_edges: FlexiMesh | torch.Tensor, sdf: torch.Tensor) -> torch.Tensor:
    """FlexiCubes' SDF sign regulariser: over the sign-changing edges (a, b), the mean of
    ``BCE_logits(s_a, [s_b > 0]) + BCE_logits(s_b, [s_a > 0])`` (0 when there are none).

    ``mesh_or_edges``: a :class:`FlexiMesh` or its (E, 2) int64 ``edges``; ``sdf`` (V,) in the same corner space.
    """
    edges = mesh_or_edges.edges if isinstance(mesh_or_edges, FlexiMesh) else mesh_or_edges
    check_tensor("mesh_or_edges", edges, torch.int64, ndim=2, last_dim=2)
    check_tensor("sdf", sdf, (torch.float32, torch.float64), ndim=1)
    if edges.shape[0] == 0:
        return sdf.sum() * 0.0
    if int(edges.min()) < 0 or int(edges.max()) >= sdf.shape[0]:
        raise ValueError(f"mesh_or_edges indexes outside sdf (length {sdf.shape[0]})")
    s = sdf[edges]
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    return bce(s[:, 0], (s[:, 1] > 0).to(s.dtype)) + bce(s[:, 1], (s[:, 0] > 0).to(s.dtype))


def weight_l1(beta: torch.Tensor | None, alpha: torch.Tensor | None) -> torch.Tensor:
    """FlexiCubes' weight regulariser: mean absolute *raw* weight over all beta and alpha entries together
    (``(sum|beta| + sum|alpha|) / (numel(beta) + numel(alpha))``; gamma is not regularised). Omitted: 0."""
    total = None
    count = 0
    for name, w in (("beta", beta), ("alpha", alpha)):
        if w is not None:
            check_tensor(name, w, (torch.float32, torch.float64))
            term = w.abs().sum()
            total = term if total is None else total + term
            count += w.numel()
    if total is None:
        return torch.zeros(())
    return total / max(count, 1)
