"""View-dependent colours from real spherical harmonics in Warp, forward, hand-written backward, autograd.

colour = max(sum_b Y_b(d / |d|) c_b + 0.5, 0) over the SH bands 0..degree (degree <= 3), the colour model of
3D Gaussian Splatting (Kerbl et al., SIGGRAPH 2023), with the basis in the order, sign convention and
recurrence form (Sloan's) of gsplat 1.5.3's ``spherical_harmonics`` (gsplat, Ye et al. 2024). ``d`` is the
direction from the camera centre to the Gaussian. One thread per Gaussian loops over the cameras, so the
backward sums a Gaussian's coefficient gradients over cameras in registers and no two threads write the same
location. :func:`eval_sh_colors` is the differentiable entry point; the float64 oracle is
:func:`sparse3d.kernels.reference.gaussian_raster.eval_sh` (the polynomial form of the same basis).
"""

from __future__ import annotations

from typing import Any

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

MAX_SH_DEGREE = 3
"""The kernels hold the basis of bands 0..3 (16 functions) in one vector."""

_vec16 = wp.types.vector(length=16, dtype=wp.float32)


@wp.func
def _sh_basis(x: float, y: float, z: float, degree: int) -> _vec16:
    """Real SH basis of bands 0..degree at unit (x, y, z), gsplat's constants and order (unused entries 0)."""
    b = _vec16()
    b[0] = 0.2820947917738781
    if degree >= 1:
        b[1] = -0.48860251190292 * y
        b[2] = 0.48860251190292 * z
        b[3] = -0.48860251190292 * x
    if degree >= 2:
        z2 = z * z
        c1 = x * x - y * y
        s1 = 2.0 * x * y
        t0 = -1.092548430592079 * z
        b[4] = 0.5462742152960395 * s1
        b[5] = t0 * y
        b[6] = 0.9461746957575601 * z2 - 0.3153915652525201
        b[7] = t0 * x
        b[8] = 0.5462742152960395 * c1
        if degree >= 3:
            c2 = x * c1 - y * s1
            s2 = x * s1 + y * c1
            t0c = -2.285228997322329 * z2 + 0.4570457994644658
            t1b = 1.445305721320277 * z
            b[9] = -0.5900435899266435 * s2
            b[10] = t1b * s1
            b[11] = t0c * y
            b[12] = z * (1.865881662950577 * z2 - 1.119528997770346)
            b[13] = t0c * x
            b[14] = t1b * c1
            b[15] = -0.5900435899266435 * c2
    return b


@wp.func
def _sh_basis_vjp(x: float, y: float, z: float, degree: int, vb: _vec16) -> wp.vec3:
    """d(vb . basis)/d(x, y, z) at unit (x, y, z): the chain rule through every basis polynomial."""
    gx = -0.48860251190292 * vb[3]
    gy = -0.48860251190292 * vb[1]
    gz = 0.48860251190292 * vb[2]
    if degree >= 2:
        k4 = 0.5462742152960395
        k5 = -1.092548430592079
        gx += k4 * 2.0 * y * vb[4] + k5 * z * vb[7] + k4 * 2.0 * x * vb[8]
        gy += k4 * 2.0 * x * vb[4] + k5 * z * vb[5] - k4 * 2.0 * y * vb[8]
        gz += k5 * y * vb[5] + 2.0 * 0.9461746957575601 * z * vb[6] + k5 * x * vb[7]
        if degree >= 3:
            z2 = z * z
            c1 = x * x - y * y
            s1 = 2.0 * x * y
            t0c = -2.285228997322329 * z2 + 0.4570457994644658
            t1b = 1.445305721320277 * z
            k9 = -0.5900435899266435
            dt0c = -2.0 * 2.285228997322329 * z
            gx += (k9 * 6.0 * x * y * vb[9] + t1b * 2.0 * y * vb[10] + t0c * vb[13] + t1b * 2.0 * x * vb[14]
                   + k9 * 3.0 * c1 * vb[15])
            gy += (k9 * 3.0 * c1 * vb[9] + t1b * 2.0 * x * vb[10] + t0c * vb[11] - t1b * 2.0 * y * vb[14]
                   - k9 * 6.0 * x * y * vb[15])
            gz += (1.445305721320277 * s1 * vb[10] + dt0c * y * vb[11]
                   + (3.0 * 1.865881662950577 * z2 - 1.119528997770346) * vb[12] + dt0c * x * vb[13]
                   + 1.445305721320277 * c1 * vb[14])
    return wp.vec3(gx, gy, gz)


@wp.kernel
def _sh_fwd_kernel(
    offset: int,
    dirs: wp.array(dtype=wp.vec3),
    coeffs: wp.array3d(dtype=wp.float32),
    degree: int,
    n: int,
    n_cams: int,
    out: wp.array(dtype=wp.vec3),
):
    """colour = max(sum_b basis_b(dir / |dir|) coeffs[b] + 0.5, 0) for every camera of Gaussian ``i``."""
    i = wp.tid() + offset
    nb = (degree + 1) * (degree + 1)
    for c in range(n_cams):
        f = c * n + i
        d = dirs[f]
        u = d / wp.max(wp.length(d), 1.0e-12)
        b = _sh_basis(u[0], u[1], u[2], degree)
        acc = wp.vec3(0.0, 0.0, 0.0)
        for k in range(16):  # constant bound: unrolled, so b[k] is a register (bands past ``degree`` skipped)
            if k < nb:
                acc += b[k] * wp.vec3(coeffs[i, k, 0], coeffs[i, k, 1], coeffs[i, k, 2])
        acc += wp.vec3(0.5, 0.5, 0.5)
        out[f] = wp.vec3(wp.max(acc[0], 0.0), wp.max(acc[1], 0.0), wp.max(acc[2], 0.0))


@wp.kernel
def _sh_bwd_kernel(
    offset: int,
    dirs: wp.array(dtype=wp.vec3),
    coeffs: wp.array3d(dtype=wp.float32),
    v_colors: wp.array(dtype=wp.vec3),
    degree: int,
    n: int,
    n_cams: int,
    v_coeffs: wp.array3d(dtype=wp.float32),
    v_dirs: wp.array(dtype=wp.vec3),
):
    """Gradients of :func:`_sh_fwd_kernel`; one thread per Gaussian sums its cameras (no write conflicts)."""
    i = wp.tid() + offset
    nb = (degree + 1) * (degree + 1)
    for c in range(n_cams):
        f = c * n + i
        d = dirs[f]
        nrm = wp.length(d)
        u = d / wp.max(nrm, 1.0e-12)
        b = _sh_basis(u[0], u[1], u[2], degree)
        acc = wp.vec3(0.0, 0.0, 0.0)
        for k in range(16):
            if k < nb:
                acc += b[k] * wp.vec3(coeffs[i, k, 0], coeffs[i, k, 1], coeffs[i, k, 2])
        acc += wp.vec3(0.5, 0.5, 0.5)
        # clamp_min(x, 0) passes the gradient where x >= 0 (torch's rule).
        vc = v_colors[f]
        g0 = wp.where(acc[0] >= 0.0, vc[0], 0.0)
        g1 = wp.where(acc[1] >= 0.0, vc[1], 0.0)
        g2 = wp.where(acc[2] >= 0.0, vc[2], 0.0)
        vb = _vec16()
        for k in range(16):
            if k >= nb:
                continue
            if c == 0:  # the first camera writes (the output is not zero-filled), later ones add
                v_coeffs[i, k, 0] = b[k] * g0
                v_coeffs[i, k, 1] = b[k] * g1
                v_coeffs[i, k, 2] = b[k] * g2
            else:
                v_coeffs[i, k, 0] = v_coeffs[i, k, 0] + b[k] * g0
                v_coeffs[i, k, 1] = v_coeffs[i, k, 1] + b[k] * g1
                v_coeffs[i, k, 2] = v_coeffs[i, k, 2] + b[k] * g2
            vb[k] = coeffs[i, k, 0] * g0 + coeffs[i, k, 1] * g1 + coeffs[i, k, 2] * g2
        if degree >= 1:
            vu = _sh_basis_vjp(u[0], u[1], u[2], degree, vb)
            if nrm > 1.0e-12:
                v_dirs[f] = (vu - u * wp.dot(u, vu)) / nrm
            else:
                v_dirs[f] = vu / 1.0e-12
        else:
            v_dirs[f] = wp.vec3(0.0, 0.0, 0.0)


def sh_colors_fwd(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """(C, N, 3) colours of SH bands 0..degree: dirs (C, N, 3) any length, coeffs (N, K, 3) with K >= (d+1)^2."""
    c_n, n = dirs.shape[:2]
    out = torch.empty(c_n, n, 3, dtype=torch.float32, device=dirs.device)
    launch(_sh_fwd_kernel, n, [to_wp(dirs.reshape(-1, 3).contiguous(), wp.vec3), to_wp(coeffs.contiguous()),
                               degree, n, c_n, to_wp(out.reshape(-1, 3), wp.vec3)], wp_device(dirs))
    return out


def sh_colors_bwd(
    degree: int, dirs: torch.Tensor, coeffs: torch.Tensor, v_colors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (v_dirs (C, N, 3), v_coeffs (N, K, 3)) of :func:`sh_colors_fwd`."""
    c_n, n = dirs.shape[:2]
    v_co = torch.empty(coeffs.shape, dtype=torch.float32, device=dirs.device)  # the kernel writes bands <= degree
    v_co[:, (degree + 1) ** 2 :] = 0.0
    v_d = torch.empty(c_n, n, 3, dtype=torch.float32, device=dirs.device)
    launch(
        _sh_bwd_kernel, n,
        [to_wp(dirs.reshape(-1, 3).contiguous(), wp.vec3), to_wp(coeffs.contiguous()),
         to_wp(v_colors.reshape(-1, 3).float().contiguous(), wp.vec3), degree, n, c_n, to_wp(v_co), to_wp(v_d.reshape(-1, 3), wp.vec3)],
        wp_device(dirs),
    )
    return v_d, v_co


class _ShColors(torch.autograd.Function):
    """:func:`sh_colors_fwd` with :func:`sh_colors_bwd` as its backward, one Warp pass each way instead of a
    graph of small torch ops; gradients flow to the directions and the coefficients."""

    @staticmethod
    def forward(ctx: Any, degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
        dirs = dirs.detach().contiguous()
        coeffs = coeffs.detach().contiguous()
        ctx.save_for_backward(dirs, coeffs)
        ctx.degree = degree
        return sh_colors_fwd(degree, dirs, coeffs)

    @staticmethod
    @serial_torch_ops()
    def backward(ctx: Any, v_colors: torch.Tensor):
        dirs, coeffs = ctx.saved_tensors
        v_dirs, v_coeffs = sh_colors_bwd(ctx.degree, dirs, coeffs, v_colors)
        return None, (v_dirs if ctx.needs_input_grad[1] else None), (v_coeffs if ctx.needs_input_grad[2] else None)


def eval_sh_colors(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Differentiable SH colours: max(SH bands 0..degree at dirs / |dirs| . coeffs + 0.5, 0).

    dirs (C, N, 3) or (N, 3) float32, any length (normalised here); coeffs (N, K, 3) float32 with
    K >= (degree + 1)^2 (later coefficients are ignored). Returns colours shaped like ``dirs``; gradients reach
    ``dirs`` and ``coeffs``.
    """
    if isinstance(degree, bool) or not isinstance(degree, int) or not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"degree must be an int in [0, {MAX_SH_DEGREE}], got {degree!r}")
    check_tensor("dirs", dirs, torch.float32, last_dim=3)
    if dirs.dim() not in (2, 3):
        raise ValueError(f"dirs must have shape (C, N, 3) or (N, 3), got {tuple(dirs.shape)}")
    check_tensor("coeffs", coeffs, torch.float32, ndim=3, last_dim=3)
    n, need = dirs.shape[-2], (degree + 1) ** 2
    if coeffs.shape[0] != n or coeffs.shape[1] < need:
        raise ValueError(
            f"coeffs must have shape (N, K, 3) with N = {n} like dirs and K >= (degree + 1)^2 = {need}, "
            f"got {tuple(coeffs.shape)}"
        )
    check_same_device(dirs=dirs, coeffs=coeffs)
    if dirs.dim() == 2:
        return _ShColors.apply(degree, dirs[None], coeffs)[0]
    return _ShColors.apply(degree, dirs, coeffs)
