"""EWA projection of 3-D Gaussians into pinhole cameras in Warp, forward, hand-written backward, autograd.

EWA splatting (Zwicker et al., "EWA Splatting", IEEE TVCG 2002) as 3D Gaussian Splatting (Kerbl et al.,
SIGGRAPH 2023) uses it, with the rules of gsplat 1.5.3's fused projection (``ProjectionEWA3DGSFused.cu``;
gsplat, Ye et al. 2024). The plain-torch oracle is :func:`sparse3d.kernels.reference.gaussian_raster.project`.
One thread per Gaussian loops over the cameras, so the backward sums a Gaussian's gradients over cameras in
registers and never writes to a location another thread writes (no atomics; CPU launches split over the cores
by :func:`runtime.launch`). :func:`project_gaussians` is the differentiable entry point.

Per (camera c, Gaussian i), flattened as ``c * N + i``::

    p = W m + t,  z = p.z                        culled unless near <= z <= far
    J = [[fx/z, 0, -fx u/z], [0, fy/z, -fy v/z]] (u, v) = (x/z, y/z) clamped to 1.3x the half FoV
    Q = J W R(q) diag(s)                         2x3; Sigma2D = Q Q^T + eps2d I = [[a, b], [b, c]]
    conic = (c, -b, a) / (a c - b^2)             culled unless the determinant is > 0
    opacity' = o sqrt(det(Q Q^T) / det(Sigma2D)) antialiased mode only (compensation), 0 when culled
    radius = ceil(min(3.33, sqrt(2 ln(255 o'))) sqrt(diag Sigma2D)), culled if o' < 1/255, if both radii are
    <= radius_clip or if the box misses the image.

Culled entries have zero radii, means2d, depths and conics; their opacity is ``o`` in classic mode (gsplat
repeats the opacities) and 0 in antialiased mode (gsplat's compensation is 0 there).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import warp as wp

from sparse3d.kernels.runtime import (
    check_same_device,
    check_tensor,
    launch,
    serial_torch_ops,
    to_wp,
    wp_device,
)

wp.set_module_options({"enable_backward": False, "optimization_level": 3})

ALPHA_MIN = wp.constant(1.0 / 255.0)
EXTENT_MAX = wp.constant(3.33)
FOV_MARGIN = wp.constant(0.3)
INF32 = wp.constant(float("inf"))


@wp.func
def _rotmat(q: wp.vec4) -> wp.mat33:
    """Rotation of the unit wxyz quaternion ``q``: R = I + 2 w [v]x + 2 [v]x^2, entry by entry."""
    w = q[0]
    x = q[1]
    y = q[2]
    z = q[3]
    return wp.mat33(
        1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y),
        2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x),
        2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y),
    )


@wp.func
def _rotmat_vjp(q: wp.vec4, g: wp.mat33) -> wp.vec4:
    """d(sum(g * R(q)))/dq for the unit wxyz quaternion ``q`` (the partial derivatives of :func:`_rotmat`)."""
    w = q[0]
    x = q[1]
    y = q[2]
    z = q[3]
    vw = -z * g[0, 1] + y * g[0, 2] + z * g[1, 0] - x * g[1, 2] - y * g[2, 0] + x * g[2, 1]
    vx = (y * g[0, 1] + z * g[0, 2] + y * g[1, 0] - 2.0 * x * g[1, 1] - w * g[1, 2] + z * g[2, 0]
          + w * g[2, 1] - 2.0 * x * g[2, 2])
    vy = (-2.0 * y * g[0, 0] + x * g[0, 1] + w * g[0, 2] + x * g[1, 0] + z * g[1, 2] - w * g[2, 0]
          + z * g[2, 1] - 2.0 * y * g[2, 2])
    vz = (-2.0 * z * g[0, 0] - w * g[0, 1] + x * g[0, 2] + w * g[1, 0] - 2.0 * z * g[1, 1] + y * g[1, 2]
          + x * g[2, 0] + y * g[2, 1])
    return 2.0 * wp.vec4(vw, vx, vy, vz)


@wp.func
def _unit(q: wp.vec4) -> wp.vec4:
    """q / max(|q|, 1e-12), like torch.nn.functional.normalize."""
    return q / wp.max(wp.length(q), 1.0e-12)


@wp.func
def _minors(q0: wp.vec3, q1: wp.vec3) -> wp.vec3:
    """The three 2x2 minors of the 2x3 matrix [q0; q1] (columns (0,1), (1,2), (2,0)) = q0 x q1 permuted.

    det(Q Q^T) = sum of their squares (Cauchy-Binet): no cancellation for needle-like Gaussians."""
    return wp.vec3(q0[0] * q1[1] - q0[1] * q1[0], q0[1] * q1[2] - q0[2] * q1[1], q0[2] * q1[0] - q0[0] * q1[2])


@wp.func
def _fov_limits(size: float, f: float, cen: float) -> wp.vec2:
    """(low, high) of x/z (or y/z) at which the Jacobian is clamped: 1.3x the half field of view per side."""
    margin = FOV_MARGIN * (0.5 * size / f)
    return wp.vec2(-cen / f - margin, (size - cen) / f + margin)


@wp.struct
class _CameraTerms:
    """One Gaussian seen from one camera: what the forward uses and the backward differentiates."""

    rot: wp.mat33  # world-to-camera rotation W
    p: wp.vec3  # camera-space mean W m + t
    fx: float
    fy: float
    rz: float  # 1 / z
    lx: wp.vec2  # x/z clamp limits
    ly: wp.vec2  # y/z clamp limits
    u: float  # clamped x/z
    v: float  # clamped y/z
    a_mat: wp.mat33  # W R S
    j0: wp.vec3  # Jacobian rows
    j1: wp.vec3
    q0: wp.vec3  # rows of Q = J W R S
    q1: wp.vec3
    a: float  # Sigma2D = [[a, b], [b, c]] including the eps2d blur
    b: float
    c: float
    det: float


@wp.func
def _camera_terms(vm: wp.mat44, k: wp.mat33, m: wp.vec3, rs: wp.mat33, width: int, height: int,
                  eps2d: float) -> _CameraTerms:
    """The EWA terms of one (camera, Gaussian) pair (for z outside (0, inf) they are not meaningful)."""
    t = _CameraTerms()
    t.rot = wp.mat33(vm[0, 0], vm[0, 1], vm[0, 2], vm[1, 0], vm[1, 1], vm[1, 2], vm[2, 0], vm[2, 1], vm[2, 2])
    t.p = t.rot @ m + wp.vec3(vm[0, 3], vm[1, 3], vm[2, 3])
    t.fx = k[0, 0]
    t.fy = k[1, 1]
    t.rz = 1.0 / t.p[2]
    t.lx = _fov_limits(float(width), t.fx, k[0, 2])
    t.ly = _fov_limits(float(height), t.fy, k[1, 2])
    t.u = wp.clamp(t.p[0] * t.rz, t.lx[0], t.lx[1])
    t.v = wp.clamp(t.p[1] * t.rz, t.ly[0], t.ly[1])
    t.a_mat = t.rot @ rs
    t.j0 = wp.vec3(t.fx * t.rz, 0.0, -t.fx * t.rz * t.u)
    t.j1 = wp.vec3(0.0, t.fy * t.rz, -t.fy * t.rz * t.v)
    t.q0 = wp.transpose(t.a_mat) @ t.j0
    t.q1 = wp.transpose(t.a_mat) @ t.j1
    t.a = wp.dot(t.q0, t.q0) + eps2d
    t.b = wp.dot(t.q0, t.q1)
    t.c = wp.dot(t.q1, t.q1) + eps2d
    t.det = t.a * t.c - t.b * t.b
    return t


@wp.kernel
def _project_fwd_kernel(
    offset: int,
    means: wp.array(dtype=wp.vec3),
    quats: wp.array(dtype=wp.vec4),
    scales: wp.array(dtype=wp.vec3),
    opacities: wp.array(dtype=wp.float32),
    viewmats: wp.array(dtype=wp.mat44),
    Ks: wp.array(dtype=wp.mat33),
    n: int,
    n_cams: int,
    width: int,
    height: int,
    near: float,
    far: float,
    radius_clip: float,
    eps2d: float,
    antialiased: int,
    radii: wp.array(dtype=wp.vec2i),
    means2d: wp.array(dtype=wp.vec2),
    depths: wp.array(dtype=wp.float32),
    conics: wp.array(dtype=wp.vec3),
    opac_out: wp.array(dtype=wp.float32),
):
    i = wp.tid() + offset
    m = means[i]
    s = scales[i]
    o = opacities[i]
    rs = _rotmat(_unit(quats[i])) @ wp.diag(s)  # R S
    for c in range(n_cams):
        f = c * n + i
        radii[f] = wp.vec2i(0, 0)
        means2d[f] = wp.vec2(0.0, 0.0)
        depths[f] = 0.0
        conics[f] = wp.vec3(0.0, 0.0, 0.0)
        if antialiased != 0:
            opac_out[f] = 0.0
        else:
            opac_out[f] = o
        k = Ks[c]
        t = _camera_terms(viewmats[c], k, m, rs, width, height, eps2d)
        z = t.p[2]
        if z < near or z > far:
            continue
        if not (t.det > 0.0):
            continue
        op = o
        if antialiased != 0:
            ratio = wp.length_sq(_minors(t.q0, t.q1)) / t.det
            op = 0.0
            if ratio > 0.0:
                op = o * wp.sqrt(ratio)
        m2 = wp.vec2(t.fx * (t.p[0] * t.rz) + k[0, 2], t.fy * (t.p[1] * t.rz) + k[1, 2])
        ext = wp.min(wp.sqrt(2.0 * wp.log(wp.max(op, ALPHA_MIN) / ALPHA_MIN)), EXTENT_MAX)
        rx = wp.ceil(ext * wp.sqrt(t.a))
        ry = wp.ceil(ext * wp.sqrt(t.c))
        if op < ALPHA_MIN or (rx <= radius_clip and ry <= radius_clip):
            continue
        if m2[0] + rx <= 0.0 or m2[0] - rx >= float(width) or m2[1] + ry <= 0.0 or m2[1] - ry >= float(height):
            continue
        radii[f] = wp.vec2i(int(rx), int(ry))
        means2d[f] = m2
        depths[f] = z
        conics[f] = wp.vec3(t.c / t.det, -t.b / t.det, t.a / t.det)
        opac_out[f] = op


@wp.kernel
def _project_bwd_kernel(
    offset: int,
    means: wp.array(dtype=wp.vec3),
    quats: wp.array(dtype=wp.vec4),
    scales: wp.array(dtype=wp.vec3),
    opacities: wp.array(dtype=wp.float32),
    viewmats: wp.array(dtype=wp.mat44),
    Ks: wp.array(dtype=wp.mat33),
    n: int,
    n_cams: int,
    width: int,
    height: int,
    eps2d: float,
    antialiased: int,
    radii: wp.array(dtype=wp.vec2i),
    v_means2d: wp.array(dtype=wp.vec2),
    v_depths: wp.array(dtype=wp.float32),
    v_conics: wp.array(dtype=wp.vec3),
    v_opac_out: wp.array(dtype=wp.float32),
    want_view: int,
    v_means: wp.array(dtype=wp.vec3),
    v_quats: wp.array(dtype=wp.vec4),
    v_scales: wp.array(dtype=wp.vec3),
    v_opacities: wp.array(dtype=wp.float32),
    v_rot: wp.array(dtype=wp.mat33),
    v_trans: wp.array(dtype=wp.vec3),
):
    """Vector-Jacobian product of :func:`_project_fwd_kernel` (the forward is recomputed, nothing is stored).

    ``v_rot`` / ``v_trans`` (per camera and Gaussian, summed over Gaussians by the caller) are written only
    when ``want_view``: they are the gradient of the world-to-camera rotation and translation.
    """
    i = wp.tid() + offset
    m = means[i]
    s = scales[i]
    o = opacities[i]
    qn = _unit(quats[i])
    rq = _rotmat(qn)
    rs = rq @ wp.diag(s)
    g_m = wp.vec3(0.0, 0.0, 0.0)
    g_rs = wp.mat33(0.0)  # d/d(R S), summed over cameras
    g_o = wp.float32(0.0)
    for c in range(n_cams):
        f = c * n + i
        r = radii[f]
        if r[0] <= 0 or r[1] <= 0:
            # Culled: only the classic-mode opacity passes through (as ``o``); everything else is constant 0.
            if antialiased == 0:
                g_o += v_opac_out[f]
            if want_view != 0:
                v_rot[f] = wp.mat33(0.0)
                v_trans[f] = wp.vec3(0.0, 0.0, 0.0)
            continue
        t = _camera_terms(viewmats[c], Ks[c], m, rs, width, height, eps2d)
        xz = t.p[0] * t.rz
        yz = t.p[1] * t.rz
        inv_det = 1.0 / t.det
        vq = v_conics[f]
        # conic = (c, -b, a) / det with det = a c - b^2
        v_det = -(vq[0] * t.c - vq[1] * t.b + vq[2] * t.a) * inv_det * inv_det
        g_q0 = wp.vec3(0.0, 0.0, 0.0)
        g_q1 = wp.vec3(0.0, 0.0, 0.0)
        v_op = v_opac_out[f]
        if antialiased != 0:
            mn = _minors(t.q0, t.q1)
            mdet = wp.length_sq(mn)
            ratio = mdet * inv_det
            if ratio > 0.0:
                comp = wp.sqrt(ratio)
                g_o += v_op * comp
                v_ratio = v_op * o * 0.5 / comp
                v_det += -v_ratio * ratio * inv_det
                v_mdet = v_ratio * inv_det
                # d(sum of squared minors)/d(q0, q1) (minor k uses columns (k, k+1) cyclically)
                q0 = t.q0
                q1 = t.q1
                g_q0 += 2.0 * v_mdet * wp.vec3(
                    mn[0] * q1[1] - mn[2] * q1[2], mn[1] * q1[2] - mn[0] * q1[0], mn[2] * q1[0] - mn[1] * q1[1]
                )
                g_q1 += 2.0 * v_mdet * wp.vec3(
                    mn[2] * q0[2] - mn[0] * q0[1], mn[0] * q0[0] - mn[1] * q0[2], mn[1] * q0[1] - mn[2] * q0[0]
                )
        else:
            g_o += v_op
        v_a = vq[2] * inv_det + v_det * t.c
        v_b = -vq[1] * inv_det - 2.0 * t.b * v_det
        v_c = vq[0] * inv_det + v_det * t.a
        g_q0 += 2.0 * v_a * t.q0 + v_b * t.q1
        g_q1 += 2.0 * v_c * t.q1 + v_b * t.q0
        # Q rows q_r = A^T j_r
        g_a = wp.outer(t.j0, g_q0) + wp.outer(t.j1, g_q1)
        g_j0 = t.a_mat @ g_q0
        g_j1 = t.a_mat @ g_q1
        v_rz = t.fx * g_j0[0] - t.fx * t.u * g_j0[2] + t.fy * g_j1[1] - t.fy * t.v * g_j1[2]
        vm2 = v_means2d[f]
        g_xz = t.fx * vm2[0]
        g_yz = t.fy * vm2[1]
        if xz >= t.lx[0] and xz <= t.lx[1]:
            g_xz += -t.fx * t.rz * g_j0[2]
        if yz >= t.ly[0] and yz <= t.ly[1]:
            g_yz += -t.fy * t.rz * g_j1[2]
        v_rz += g_xz * t.p[0] + g_yz * t.p[1]
        g_p = wp.vec3(g_xz * t.rz, g_yz * t.rz, -v_rz * t.rz * t.rz + v_depths[f])
        g_m += wp.transpose(t.rot) @ g_p
        g_rs += wp.transpose(t.rot) @ g_a
        if want_view != 0:
            v_rot[f] = wp.outer(g_p, m) + g_a @ wp.transpose(rs)
            v_trans[f] = g_p
    v_means[i] = g_m
    v_opacities[i] = g_o
    # R S with S = diag(s): d/ds_k = sum_r g[r, k] R[r, k]; d/dR = g S
    v_scales[i] = wp.vec3(
        g_rs[0, 0] * rq[0, 0] + g_rs[1, 0] * rq[1, 0] + g_rs[2, 0] * rq[2, 0],
        g_rs[0, 1] * rq[0, 1] + g_rs[1, 1] * rq[1, 1] + g_rs[2, 1] * rq[2, 1],
        g_rs[0, 2] * rq[0, 2] + g_rs[1, 2] * rq[1, 2] + g_rs[2, 2] * rq[2, 2],
    )
    g_qn = _rotmat_vjp(qn, g_rs @ wp.diag(s))
    # q / |q|: the tangential part of the gradient, divided by |q|
    qlen = wp.max(wp.length(quats[i]), 1.0e-12)
    v_quats[i] = (g_qn - qn * wp.dot(qn, g_qn)) / qlen


@wp.kernel
def _first_bad_kernel(
    offset: int,
    means: wp.array2d(dtype=wp.float32),
    quats: wp.array2d(dtype=wp.float32),
    scales: wp.array2d(dtype=wp.float32),
    opacities: wp.array(dtype=wp.float32),
    colors: wp.array2d(dtype=wp.float32),
    codes: wp.array(dtype=wp.int32),
):
    """codes[i] = index of the first of (means, quats, scales, opacities, colors) whose row i breaks its rule
    (see :func:`first_bad_gaussian_argument`), or 5 when none does. NaN fails every comparison."""
    i = wp.tid() + offset
    code = wp.int32(5)
    for k in range(colors.shape[1]):
        x = colors[i, k]
        if not (x > -INF32 and x < INF32):
            code = 4
    o = opacities[i]
    if not (o >= 0.0 and o <= 1.0):
        code = 3
    for k in range(3):
        x = scales[i, k]
        if not (x > 0.0 and x < INF32):
            code = 2
    q_size = wp.float32(0.0)
    q_nan = wp.int32(0)
    for k in range(4):
        x = wp.abs(quats[i, k])
        if not (x == x):
            q_nan = 1
        q_size = wp.max(q_size, x)
    if q_nan != 0 or not (q_size > 0.0 and q_size < INF32):
        code = 1
    for k in range(3):
        x = means[i, k]
        if not (x > -INF32 and x < INF32):
            code = 0
    codes[i] = code


GAUSSIAN_ARGUMENTS = ("means", "quats", "scales", "opacities", "colors")


def first_bad_gaussian_argument(
    means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor, colors: torch.Tensor
) -> str | None:
    """Name of the first per-Gaussian argument with an invalid value, or None when all are valid.

    The rules: finite means and colours; quaternions finite with a non-zero largest |component|; finite scales
    > 0; opacities in [0, 1]. One pass over the Gaussians (split over the CPU cores) and one host
    synchronisation: torch's per-argument reductions cost several passes and run on one thread. Shapes are the
    caller's to check (N rows each; colours may have any trailing shape).
    """
    n = means.shape[0]
    if n == 0:
        return None
    codes = torch.empty(n, dtype=torch.int32, device=means.device)
    launch(
        _first_bad_kernel, n,
        [to_wp(means.detach().contiguous()), to_wp(quats.detach().contiguous()),
         to_wp(scales.detach().contiguous()), to_wp(opacities.detach().contiguous()),
         to_wp(colors.detach().reshape(n, -1).contiguous()), to_wp(codes)],
        wp_device(means),
    )
    first = int(codes.min())
    return GAUSSIAN_ARGUMENTS[first] if first < len(GAUSSIAN_ARGUMENTS) else None


# ------------------------------------------------------------------------------------------ torch API
class Projection(NamedTuple):
    radii: torch.Tensor  # (C, N, 2) int32, 0 = culled
    means2d: torch.Tensor  # (C, N, 2)
    depths: torch.Tensor  # (C, N) camera z
    conics: torch.Tensor  # (C, N, 3) upper triangle (a, b, c) of the inverse 2-D covariance
    opacities: torch.Tensor  # (C, N) times the antialiasing compensation in that mode


class ProjectionGrads(NamedTuple):
    means: torch.Tensor  # (N, 3)
    quats: torch.Tensor  # (N, 4)
    scales: torch.Tensor  # (N, 3)
    opacities: torch.Tensor  # (N,)
    viewmats: torch.Tensor | None  # (C, 4, 4), last row 0; None unless asked for


def check_projected(means2d: torch.Tensor, **others: torch.Tensor | None) -> tuple[int, int]:
    """(C, N) of ``means2d`` (C, N, 2) float32, after checking that every other given tensor starts with (C, N)
    and that all of them share its device: the layout of :class:`Projection`, which tiling and compositing read.
    """
    check_tensor("means2d", means2d, torch.float32, ndim=3, last_dim=2)
    c_n, n = means2d.shape[:2]
    for name, t in others.items():
        if t is None:
            continue
        check_tensor(name, t)
        if tuple(t.shape[:2]) != (c_n, n):
            raise ValueError(f"{name} must start with (C, N) = {(c_n, n)} like means2d, got {tuple(t.shape)}")
    check_same_device(means2d=means2d, **{k: v for k, v in others.items() if v is not None})
    return c_n, n


def _check_inputs(means, quats, scales, opacities, viewmats, Ks) -> tuple[int, int]:
    check_tensor("means", means, torch.float32, ndim=2, last_dim=3)
    n = means.shape[0]
    for name, t, shape in (("quats", quats, (n, 4)), ("scales", scales, (n, 3)), ("opacities", opacities, (n,))):
        check_tensor(name, t, torch.float32)
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    check_tensor("viewmats", viewmats, torch.float32, ndim=3)
    c_n = viewmats.shape[0]
    if tuple(viewmats.shape[1:]) != (4, 4):
        raise ValueError(f"viewmats must have shape (C, 4, 4), got {tuple(viewmats.shape)}")
    check_tensor("Ks", Ks, torch.float32, ndim=3)
    if tuple(Ks.shape) != (c_n, 3, 3):
        raise ValueError(f"Ks must have shape {(c_n, 3, 3)}, got {tuple(Ks.shape)}")
    check_same_device(means=means, quats=quats, scales=scales, opacities=opacities, viewmats=viewmats, Ks=Ks)
    return c_n, n


def _inputs(means, quats, scales, opacities, viewmats, Ks) -> list:
    return [
        to_wp(means.detach().contiguous(), wp.vec3), to_wp(quats.detach().contiguous(), wp.vec4),
        to_wp(scales.detach().contiguous(), wp.vec3), to_wp(opacities.detach().contiguous()),
        to_wp(viewmats.detach().contiguous(), wp.mat44), to_wp(Ks.detach().contiguous(), wp.mat33),
    ]


def project_fwd(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near_plane: float,
    far_plane: float,
    radius_clip: float,
    eps2d: float,
    antialiased: bool,
) -> Projection:
    """Project N Gaussians into C cameras (no autograd: :func:`project_gaussians` is the differentiable form)."""
    c_n, n = _check_inputs(means, quats, scales, opacities, viewmats, Ks)
    dev = means.device
    radii = torch.empty(c_n, n, 2, dtype=torch.int32, device=dev)
    means2d = torch.empty(c_n, n, 2, dtype=torch.float32, device=dev)
    depths = torch.empty(c_n, n, dtype=torch.float32, device=dev)
    conics = torch.empty(c_n, n, 3, dtype=torch.float32, device=dev)
    opac = torch.empty(c_n, n, dtype=torch.float32, device=dev)
    launch(
        _project_fwd_kernel, n,
        [*_inputs(means, quats, scales, opacities, viewmats, Ks), n, c_n, int(width), int(height),
         float(near_plane), float(far_plane), float(radius_clip), float(eps2d), int(antialiased),
         to_wp(radii.view(-1, 2), wp.vec2i), to_wp(means2d.view(-1, 2), wp.vec2), to_wp(depths.view(-1)),
         to_wp(conics.view(-1, 3), wp.vec3), to_wp(opac.view(-1))],
        wp_device(means),
    )
    return Projection(radii, means2d, depths, conics, opac)


def project_bwd(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    eps2d: float,
    antialiased: bool,
    radii: torch.Tensor,
    v_means2d: torch.Tensor,
    v_depths: torch.Tensor,
    v_conics: torch.Tensor,
    v_opacities: torch.Tensor,
    viewmats_grad: bool = False,
) -> ProjectionGrads:
    """Gradients of :func:`project_fwd`'s float outputs back to its inputs (``radii`` from that forward)."""
    c_n, n = _check_inputs(means, quats, scales, opacities, viewmats, Ks)
    dev = means.device

    def flat(t: torch.Tensor, *tail: int) -> torch.Tensor:
        return t.detach().float().reshape(c_n * n, *tail).contiguous()

    g_m = torch.empty(n, 3, dtype=torch.float32, device=dev)
    g_q = torch.empty(n, 4, dtype=torch.float32, device=dev)
    g_s = torch.empty(n, 3, dtype=torch.float32, device=dev)
    g_o = torch.empty(n, dtype=torch.float32, device=dev)
    rows = c_n * n if viewmats_grad else 1
    g_rot = torch.empty(rows, 3, 3, dtype=torch.float32, device=dev)
    g_t = torch.empty(rows, 3, dtype=torch.float32, device=dev)
    launch(
        _project_bwd_kernel, n,
        [*_inputs(means, quats, scales, opacities, viewmats, Ks), n, c_n, int(width), int(height), float(eps2d),
         int(antialiased), to_wp(radii.reshape(-1, 2).contiguous(), wp.vec2i), to_wp(flat(v_means2d, 2), wp.vec2),
         to_wp(flat(v_depths)), to_wp(flat(v_conics, 3), wp.vec3), to_wp(flat(v_opacities)), int(viewmats_grad),
         to_wp(g_m, wp.vec3), to_wp(g_q, wp.vec4), to_wp(g_s, wp.vec3), to_wp(g_o), to_wp(g_rot, wp.mat33),
         to_wp(g_t, wp.vec3)],
        wp_device(means),
    )
    g_view = None
    if viewmats_grad:
        g_view = torch.zeros(c_n, 4, 4, dtype=torch.float32, device=dev)
        g_view[:, :3, :3] = g_rot.reshape(c_n, n, 3, 3).sum(1)
        g_view[:, :3, 3] = g_t.reshape(c_n, n, 3).sum(1)
    return ProjectionGrads(g_m, g_q, g_s, g_o, g_view)


class _ProjectGaussians(torch.autograd.Function):
    """:func:`project_fwd` with :func:`project_bwd` as its backward.

    Gradients reach means, quats, scales, opacities and (when they require it) viewmats; Ks gets none, as in
    gsplat. The backward recomputes the per-camera quantities from the inputs instead of storing them.
    """

    @staticmethod
    def forward(ctx: Any, means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane,
                radius_clip, eps2d, antialiased):
        out = project_fwd(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane,
                          radius_clip, eps2d, antialiased)
        ctx.save_for_backward(means, quats, scales, opacities, viewmats, Ks, out.radii)
        ctx.dims = (width, height, eps2d, antialiased)
        ctx.mark_non_differentiable(out.radii)
        return tuple(out)

    @staticmethod
    @serial_torch_ops()
    def backward(ctx: Any, _v_radii, v_means2d, v_depths, v_conics, v_opacities):
        means, quats, scales, opacities, viewmats, Ks, radii = ctx.saved_tensors
        width, height, eps2d, antialiased = ctx.dims
        c_n, n = radii.shape[:2]

        def grad(v: torch.Tensor | None, *tail: int) -> torch.Tensor:
            return torch.zeros(c_n, n, *tail, device=means.device) if v is None else v

        g = project_bwd(
            means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, antialiased, radii,
            grad(v_means2d, 2), grad(v_depths), grad(v_conics, 3), grad(v_opacities),
            viewmats_grad=ctx.needs_input_grad[4],
        )
        return (g.means, g.quats, g.scales, g.opacities, g.viewmats) + (None,) * 8


def project_gaussians(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    antialiased: bool = False,
) -> dict[str, torch.Tensor]:
    """Differentiable pinhole EWA projection of N Gaussians into C cameras, gsplat 1.5.3 rules.

    Returns (C, N, ...) ``radii`` int32 (0 = culled), ``means2d``, ``depths`` (camera z), ``conics`` (a, b, c of
    the inverse 2-D covariance) and ``opacities`` (times the antialiasing compensation in that mode), the
    fields of :class:`Projection`; the formulas are in this module's docstring.
    """
    out = _ProjectGaussians.apply(
        means, quats, scales, opacities, viewmats, Ks, int(width), int(height), float(near_plane),
        float(far_plane), float(radius_clip), float(eps2d), bool(antialiased),
    )
    return dict(zip(Projection._fields, out))
