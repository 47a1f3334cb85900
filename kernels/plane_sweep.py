"""Multi-view plane-sweep stereo: a per-pixel depth and confidence for one reference view from N source views.

Method (Collins, "A space-sweep approach to true multi-image matching", CVPR 1996; Gallup et al., "Real-time
plane-sweeping stereo with multiple sweeping directions", CVPR 2007), fronto-parallel planes only:

1. Hypotheses: ``D`` planes ``z_ref = d`` with ``d`` uniform in inverse depth from ``near`` to ``far``
   (:func:`depth_hypotheses`; index 0 is ``near``).
2. Each plane induces a homography from the reference to source ``s``,
   ``H = K_s (R + t n^T / d) K_ref^-1`` with ``n = (0, 0, 1)`` and ``(R, t)`` the reference-to-source motion
   (:func:`plane_homographies`); pixel coordinates are continuous, pixel (row i, col j) centred at
   ``(j + 0.5, i + 0.5)`` as in :class:`sparse3d.cameras.Cameras`. The third homogeneous coordinate of ``H p``
   is ``z_s / d``, so it is positive exactly when the plane point lies in front of the source camera.
3. Matching cost of pixel ``p``, plane ``d``, source ``s``: ``1 - max(ZNCC, 0)`` in [0, 1] between the
   reference window (``(2r+1)^2`` pixels around ``p``, pixels outside the reference image left out) and the
   source image sampled bilinearly (border-clamped, ``grid_sample(align_corners=False, padding_mode="border")``
   semantics) at ``H q`` for every window pixel ``q``. A source that does not see the plane point (``H p``
   outside ``[0, W_s] x [0, H_s]``, or a window point not in front of it) and a window whose reference or source
   variance (per pixel) is below ``var_eps`` both give :data:`NO_EVIDENCE_COST` = 1, the cost of uncorrelated
   windows, so neither can make a plane look better or worse than no match at all.
4. Per pixel and plane the ``top_k`` smallest source costs are averaged (occlusion handling by best-k
   selection, Kang et al., CVPR 2001) into the cost volume ``(D, H, W)``.
5. Winner-take-all: the first minimum ``b`` over the planes; sub-hypothesis refinement by the vertex of the
   parabola through costs ``b - 1, b, b + 1`` in hypothesis-index (= inverse-depth) space, clamped to
   ``±0.5`` and skipped at the ends or when the parabola is not convex. Confidence is the peak-ratio
   uniqueness ``clamp(1 - c_best / c_second, 0, 1)`` with ``c_second`` the smallest cost at least two
   hypotheses away from ``b`` (0 when there is none), so a flat or unmatched pixel has confidence 0.

Implementation: the planes are swept in chunks; per chunk one kernel resamples every source at ``H p`` of every
reference pixel ``p`` (NaN where the point is behind the source), and a second evaluates the windows on these
warped images, which equals sampling at ``H q`` per window pixel because one plane maps every pixel of the
window. Reference window sums are computed once per pixel.

Every thread writes only its own output element, so the CPU split over cores (:func:`runtime.launch`) needs no
atomics; CUDA runs the same kernels in one launch. The plain-torch oracle is
:mod:`sparse3d.kernels.reference.plane_sweep`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import warp as wp

from sparse3d.kernels.runtime import check_same_device, check_tensor, init, launch, to_wp, wp_device

wp.set_module_options({"enable_backward": False, "optimization_level": 3})

MAX_SOURCES = 16
"""Most source views per reference view (the per-pixel best-k selection keeps the costs in registers)."""
NO_EVIDENCE_COST = 1.0
"""Cost of an unseen plane point or a window with (almost) no texture (ZNCC taken as 0; also the largest cost)."""
SPLIT_MIN_ELEMENTS = 4096
"""Cost-volume elements from which a CPU launch is split over the cores (each element does a window per source)."""

WARP_CHUNK_ELEMENTS = 1 << 24
"""Most warped source samples held at once (the planes are swept in chunks of this many ``S * H * W``)."""

_CostVec = wp.types.vector(length=MAX_SOURCES, dtype=wp.float32)


@wp.func
def _bilinear(img: wp.array3d(dtype=wp.float32), s: int, x: float, y: float) -> float:
    """Image ``s`` at continuous pixel coordinates ``(x, y)`` (pixel centres at +0.5), clamped to the border."""
    h = img.shape[1]
    w = img.shape[2]
    fx = wp.clamp(x - 0.5, 0.0, float(w - 1))
    fy = wp.clamp(y - 0.5, 0.0, float(h - 1))
    x0 = int(wp.floor(fx))
    y0 = int(wp.floor(fy))
    x1 = wp.min(x0 + 1, w - 1)
    y1 = wp.min(y0 + 1, h - 1)
    ax = fx - float(x0)
    ay = fy - float(y0)
    top = (1.0 - ax) * img[s, y0, x0] + ax * img[s, y0, x1]
    bottom = (1.0 - ax) * img[s, y1, x0] + ax * img[s, y1, x1]
    return (1.0 - ay) * top + ay * bottom


@wp.kernel
def _warp_kernel(
    offset: int,
    d0: int,
    src: wp.array3d(dtype=wp.float32),
    homs: wp.array2d(dtype=wp.mat33),
    warped: wp.array4d(dtype=wp.float32),
):
    """Source ``s`` resampled at ``H_{s, d0 + dc}`` of every reference pixel: ``warped[s, dc, i, j]``, NaN where
    the plane point is not in front of the source camera."""
    e = wp.tid() + offset
    nc = warped.shape[1]
    h = warped.shape[2]
    w = warped.shape[3]
    s = e / (nc * h * w)
    r = e - s * nc * h * w
    dc = r / (h * w)
    p = r - dc * h * w
    i = p / w
    j = p - i * w
    q = homs[s, d0 + dc] * wp.vec3(float(j) + 0.5, float(i) + 0.5, 1.0)
    if q[2] > 0.0:
        warped[s, dc, i, j] = _bilinear(src, s, q[0] / q[2], q[1] / q[2])
    else:
        warped[s, dc, i, j] = wp.nan


@wp.kernel
def _ref_stats_kernel(offset: int, ref: wp.array2d(dtype=wp.float32), radius: int, stats: wp.array2d(dtype=wp.vec3)):
    """Window statistics of reference pixel ``(i, j)``, values shifted by the centre's: ``(n, sum a, n var a)``."""
    p = wp.tid() + offset
    h = ref.shape[0]
    w = ref.shape[1]
    i = p / w
    j = p - i * w
    a0 = ref[i, j]
    n = float(0.0)  # noqa: UP018 -- a Warp variable (a bare literal would be a constant)
    sa = float(0.0)  # noqa: UP018
    saa = float(0.0)  # noqa: UP018
    for ii in range(wp.max(i - radius, 0), wp.min(i + radius + 1, h)):
        for jj in range(wp.max(j - radius, 0), wp.min(j + radius + 1, w)):
            a = ref[ii, jj] - a0
            n += 1.0
            sa += a
            saa += a * a
    stats[i, j] = wp.vec3(n, sa, saa - sa * sa / n)


@wp.func
def _source_cost(
    ref: wp.array2d(dtype=wp.float32),
    ref_stats: wp.array2d(dtype=wp.vec3),
    warped: wp.array4d(dtype=wp.float32),
    s: int,
    dc: int,
    hm: wp.mat33,
    src_w: float,
    src_h: float,
    i: int,
    j: int,
    radius: int,
    var_eps: float,
) -> float:
    """``1 - ZNCC`` of the window around reference pixel ``(i, j)`` against source ``s`` warped by plane ``dc``."""
    h = ref.shape[0]
    w = ref.shape[1]
    q = hm * wp.vec3(float(j) + 0.5, float(i) + 0.5, 1.0)
    if q[2] <= 0.0:
        return NO_EVIDENCE_COST
    u = q[0] / q[2]
    v = q[1] / q[2]
    if u < 0.0 or u > src_w or v < 0.0 or v > src_h:
        return NO_EVIDENCE_COST
    # Sums of values shifted by the centre pixel's (less cancellation in the float32 variance).
    st = ref_stats[i, j]
    n = st[0]
    sa = st[1]
    var_a = st[2]
    a0 = ref[i, j]
    b0 = warped[s, dc, i, j]
    sb = float(0.0)  # noqa: UP018
    sbb = float(0.0)  # noqa: UP018
    sab = float(0.0)  # noqa: UP018
    for ii in range(wp.max(i - radius, 0), wp.min(i + radius + 1, h)):
        for jj in range(wp.max(j - radius, 0), wp.min(j + radius + 1, w)):
            bv = warped[s, dc, ii, jj]
            if wp.isnan(bv):
                return NO_EVIDENCE_COST
            b = bv - b0
            sb += b
            sbb += b * b
            sab += (ref[ii, jj] - a0) * b
    var_b = sbb - sb * sb / n
    if var_a < var_eps * n or var_b < var_eps * n:
        return NO_EVIDENCE_COST
    zncc = (sab - sa * sb / n) / wp.sqrt(var_a * var_b)
    return 1.0 - wp.clamp(zncc, 0.0, 1.0)


@wp.kernel
def _cost_kernel(
    offset: int,
    d0: int,
    ref: wp.array2d(dtype=wp.float32),
    ref_stats: wp.array2d(dtype=wp.vec3),
    warped: wp.array4d(dtype=wp.float32),
    homs: wp.array2d(dtype=wp.mat33),
    src_w: float,
    src_h: float,
    radius: int,
    top_k: int,
    var_eps: float,
    cost: wp.array3d(dtype=wp.float32),
):
    """Cost-volume element ``(d0 + dc, i, j)`` (flattened over the chunk): mean of the ``top_k`` smallest source
    costs."""
    e = wp.tid() + offset
    h = ref.shape[0]
    w = ref.shape[1]
    dc = e / (h * w)
    p = e - dc * h * w
    i = p / w
    j = p - i * w
    ns = warped.shape[0]
    c = _CostVec()
    for s in range(ns):
        c[s] = _source_cost(ref, ref_stats, warped, s, dc, homs[s, d0 + dc], src_w, src_h, i, j, radius, var_eps)
    total = float(0.0)  # noqa: UP018
    for m in range(top_k):
        best = m
        for s in range(m + 1, ns):
            if c[s] < c[best]:
                best = s
        v = c[best]
        c[best] = c[m]
        c[m] = v
        total += v
    cost[d0 + dc, i, j] = total / float(top_k)


@wp.kernel
def _wta_kernel(
    offset: int,
    cost: wp.array3d(dtype=wp.float32),
    inv_near: float,
    inv_step: float,
    depth: wp.array2d(dtype=wp.float32),
    confidence: wp.array2d(dtype=wp.float32),
):
    """Winner-take-all depth with parabola refinement and peak-ratio confidence of pixel ``(i, j)``."""
    p = wp.tid() + offset
    nd = cost.shape[0]
    w = cost.shape[2]
    i = p / w
    j = p - i * w
    b = int(0)  # noqa: UP018 -- a Warp variable (a bare literal would be a constant)
    cb = cost[0, i, j]
    for d in range(1, nd):
        if cost[d, i, j] < cb:
            cb = cost[d, i, j]
            b = d
    second = float(wp.inf)
    for d in range(nd):
        if wp.abs(d - b) >= 2:
            second = wp.min(second, cost[d, i, j])
    delta = float(0.0)  # noqa: UP018
    if b > 0 and b < nd - 1:
        cm = cost[b - 1, i, j]
        cp = cost[b + 1, i, j]
        den = cm - 2.0 * cb + cp
        if den > 1.0e-12:
            delta = wp.clamp(0.5 * (cm - cp) / den, -0.5, 0.5)
    depth[i, j] = 1.0 / (inv_near + (float(b) + delta) * inv_step)
    conf = float(0.0)  # noqa: UP018
    if second > 0.0 and second < float(wp.inf):
        conf = wp.clamp(1.0 - cb / second, 0.0, 1.0)
    confidence[i, j] = conf


@dataclass(frozen=True)
class PlaneSweepResult:
    """Output of :func:`plane_sweep` for one reference view."""

    depth: torch.Tensor
    """(H, W) float32 reference-camera z depth in ``[near, far]``."""
    confidence: torch.Tensor
    """(H, W) float32 in [0, 1]: peak-ratio uniqueness of the winning cost (0 = no evidence)."""
    cost: torch.Tensor
    """(D, H, W) float32 cost volume, ``D`` hypotheses from near to far."""


def depth_hypotheses(near: float, far: float, num: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(num,) float32 depths uniform in inverse depth, ``near`` first and ``far`` last."""
    _check_range(near, far, num)
    inv = torch.linspace(1.0 / float(near), 1.0 / float(far), int(num), dtype=torch.float64)
    return (1.0 / inv).to(torch.float32).to(device)


def plane_homographies(
    ref_K: torch.Tensor, ref_viewmat: torch.Tensor, src_K: torch.Tensor, src_viewmat: torch.Tensor, depths: torch.Tensor
) -> torch.Tensor:
    """(S, D, 3, 3) float32 homographies mapping reference pixels to source pixels via the plane ``z_ref = d``.

    Computed in float64: ``K_s (R + t n^T / d) K_ref^-1`` with ``[R | t] = viewmat_s viewmat_ref^-1``.
    """
    rel = src_viewmat.double() @ torch.linalg.inv(ref_viewmat.double())  # (S, 4, 4) ref camera -> src camera
    R, t = rel[:, :3, :3], rel[:, :3, 3]
    n = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64, device=rel.device)
    inv_d = 1.0 / depths.double()
    plane = R[:, None] + (t[:, None, :, None] * n) * inv_d[None, :, None, None]  # (S, D, 3, 3)
    Kr_inv = torch.linalg.inv(ref_K.double())
    return (src_K.double()[:, None] @ plane @ Kr_inv).to(torch.float32)


def _check_range(near: float, far: float, num: int) -> None:
    if not (float(near) > 0.0 and float(far) > float(near)) or not torch.isfinite(torch.tensor(float(far))):
        raise ValueError(f"need 0 < near < far < inf, got near={near!r}, far={far!r}")
    if isinstance(num, bool) or not isinstance(num, int) or num < 3:
        raise ValueError(f"num_depths must be an int >= 3, got {num!r}")


def _check_inputs(
    ref_image: torch.Tensor, src_images: torch.Tensor, ref_K: torch.Tensor, ref_viewmat: torch.Tensor,
    src_K: torch.Tensor, src_viewmat: torch.Tensor, radius: int, top_k: int, var_eps: float,
) -> None:
    check_tensor("ref_image", ref_image, torch.float32, ndim=2)
    check_tensor("src_images", src_images, torch.float32, ndim=3)
    check_tensor("ref_K", ref_K, (torch.float32, torch.float64), ndim=2)
    check_tensor("ref_viewmat", ref_viewmat, (torch.float32, torch.float64), ndim=2)
    check_tensor("src_K", src_K, (torch.float32, torch.float64), ndim=3)
    check_tensor("src_viewmat", src_viewmat, (torch.float32, torch.float64), ndim=3)
    check_same_device(ref_image=ref_image, src_images=src_images)
    if ref_image.shape[0] < 1 or ref_image.shape[1] < 1:
        raise ValueError(f"ref_image must be non-empty, got shape {tuple(ref_image.shape)}")
    ns = src_images.shape[0]
    if not 1 <= ns <= MAX_SOURCES:
        raise ValueError(f"src_images must hold 1 to {MAX_SOURCES} views, got {ns}")
    if src_images.shape[1] < 1 or src_images.shape[2] < 1:
        raise ValueError(f"src_images must be non-empty, got shape {tuple(src_images.shape)}")
    if tuple(ref_K.shape) != (3, 3) or tuple(ref_viewmat.shape) != (4, 4):
        raise ValueError(f"ref_K must be (3, 3) and ref_viewmat (4, 4), got {tuple(ref_K.shape)}, "
                         f"{tuple(ref_viewmat.shape)}")
    if tuple(src_K.shape) != (ns, 3, 3) or tuple(src_viewmat.shape) != (ns, 4, 4):
        raise ValueError(f"src_K must be ({ns}, 3, 3) and src_viewmat ({ns}, 4, 4), got {tuple(src_K.shape)}, "
                         f"{tuple(src_viewmat.shape)}")
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
        raise ValueError(f"radius must be an int >= 1 (a ZNCC window needs pixels around its centre), got {radius!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= ns:
        raise ValueError(f"top_k must be an int in [1, {ns}] (the number of source views), got {top_k!r}")
    if not float(var_eps) >= 0.0:
        raise ValueError(f"var_eps must be >= 0, got {var_eps!r}")


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
    """(D, H, W) float32 cost volume of ``ref_image`` (H, W) against ``src_images`` (S, H_s, W_s) (grey, float32).

    ``*_K`` are pinhole intrinsics ((3, 3) / (S, 3, 3)) and ``*_viewmat`` world-to-camera transforms
    ((4, 4) / (S, 4, 4), OpenCV axes); ``depths`` (D,) positive reference-camera depths of the planes. See the
    module docstring for the cost.
    """
    _check_inputs(ref_image, src_images, ref_K, ref_viewmat, src_K, src_viewmat, radius, top_k, var_eps)
    check_tensor("depths", depths, (torch.float32, torch.float64), ndim=1)
    if depths.shape[0] < 1 or not bool((depths > 0).all()) or not bool(torch.isfinite(depths).all()):
        raise ValueError("depths must be a non-empty vector of finite positive depths")
    init()
    dev = ref_image.device
    homs = plane_homographies(ref_K, ref_viewmat, src_K, src_viewmat, depths).to(dev).contiguous()
    h, w = ref_image.shape
    nd = depths.shape[0]
    cost = torch.empty((nd, h, w), dtype=torch.float32, device=dev)
    ns, src_h, src_w = src_images.shape
    chunk = max(1, min(nd, WARP_CHUNK_ELEMENTS // (ns * h * w)))
    warped = torch.empty((ns, chunk, h, w), dtype=torch.float32, device=dev)
    device = wp_device(ref_image)
    ref_wp = to_wp(ref_image.detach().contiguous())
    src_wp = to_wp(src_images.detach().contiguous())
    homs_wp = wp.from_torch(homs, dtype=wp.mat33, requires_grad=False)
    cost_wp = to_wp(cost)
    stats = torch.empty((h, w, 3), dtype=torch.float32, device=dev)
    stats_wp = to_wp(stats, wp.vec3)
    launch(_ref_stats_kernel, h * w, [ref_wp, int(radius), stats_wp], device)
    for d0 in range(0, nd, chunk):
        nc = min(chunk, nd - d0)
        part = warped[:, :nc].contiguous() if nc < chunk else warped
        part_wp = to_wp(part)
        launch(_warp_kernel, ns * nc * h * w, [d0, src_wp, homs_wp, part_wp], device)
        launch(
            _cost_kernel,
            nc * h * w,
            [d0, ref_wp, stats_wp, part_wp, homs_wp, float(src_w), float(src_h), int(radius), int(top_k), float(var_eps),
             cost_wp],
            device,
            min_split=SPLIT_MIN_ELEMENTS,
        )
    return cost


def winner_take_all(cost: torch.Tensor, near: float, far: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth and confidence (each (H, W) float32) from a (D, H, W) cost volume over :func:`depth_hypotheses`."""
    check_tensor("cost", cost, torch.float32, ndim=3)
    _check_range(near, far, int(cost.shape[0]))
    init()
    nd, h, w = cost.shape
    inv_near = 1.0 / float(near)
    inv_step = (1.0 / float(far) - inv_near) / (nd - 1)
    depth = torch.empty((h, w), dtype=torch.float32, device=cost.device)
    confidence = torch.empty((h, w), dtype=torch.float32, device=cost.device)
    launch(
        _wta_kernel,
        h * w,
        [to_wp(cost.detach().contiguous()), inv_near, inv_step, to_wp(depth), to_wp(confidence)],
        wp_device(cost),
    )
    return depth, confidence


def plane_sweep(
    ref_image: torch.Tensor,
    src_images: torch.Tensor,
    ref_K: torch.Tensor,
    ref_viewmat: torch.Tensor,
    src_K: torch.Tensor,
    src_viewmat: torch.Tensor,
    near: float,
    far: float,
    num_depths: int = 64,
    radius: int = 2,
    top_k: int = 2,
    var_eps: float = 1e-4,
) -> PlaneSweepResult:
    """Depth, confidence and cost volume of one reference view (see the module docstring and
    :func:`plane_sweep_cost` for the arguments); hypotheses from :func:`depth_hypotheses`."""
    depths = depth_hypotheses(near, far, num_depths, ref_image.device if isinstance(ref_image, torch.Tensor) else "cpu")
    cost = plane_sweep_cost(ref_image, src_images, ref_K, ref_viewmat, src_K, src_viewmat, depths, radius, top_k,
                            var_eps)
    depth, confidence = winner_take_all(cost, near, far)
    return PlaneSweepResult(depth=depth, confidence=confidence, cost=cost)
