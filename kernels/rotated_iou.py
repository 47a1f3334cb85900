"""Rotated bird's-eye-view and 3-D IoU of boxes, and greedy rotated NMS, as Warp kernels.

Boxes are ``(x, y, z, dx, dy, dz, heading)`` rows in the LiDAR frame: ``(x, y, z)`` is the box centre, ``dx``
lies along the heading, ``heading`` is counter-clockwise from +x. The BEV footprint is the rotated rectangle
``(x, y, dx, dy, heading)``; the 3-D intersection is the footprints' intersection area times the overlap of the
z intervals ``[z - dz/2, z + dz/2]``.

How one pair is computed (one Warp thread, float64 throughout, inputs read as float32):

1. Boxes whose circumscribed circles are apart, or with a zero (or negative) ``dx``/``dy`` (``dz`` for 3-D),
   give 0 at once.
2. The corners of box ``a`` are written in the frame of box ``b`` (centre at the origin, axes along ``b``),
   built from the centre difference and the heading difference, so that large coordinates cancel before any
   rounding and ``b`` is the axis-aligned rectangle ``[-dx/2, dx/2] x [-dy/2, dy/2]``.
3. Sutherland-Hodgman clipping of that quadrilateral by the four lines ``x = +-dx/2``, ``y = +-dy/2``. A new
   vertex is made only on an edge whose end points are on opposite sides of a line, and it is put exactly on
   the line, so the clipped polygon -- and its shoelace area -- varies continuously with the input: vertices
   on edges, coincident or parallel edges and identical boxes need no special case.
4. IoU = inter / (area_a + area_b - inter) (volumes for 3-D); an intersection below ``1e-12`` of the smaller
   box's area (rounding noise of boxes that only touch) counts as 0.

Accuracy: the clipping is exact up to float64 rounding of the float32 inputs' differences, so against an exact
polygon clipper the IoU differs by about ``1e-12`` (the float32 rounding of the result, ``6e-8``, dominates).
What float32 inputs cannot express stays: two squares at headings 0 and ``pi/2`` (float32) differ by a
rotation of ``4e-8`` rad, so their IoU is ``1 - O(1e-7)``, not exactly 1.

NMS (:func:`nms_bev`) sorts the boxes by score, builds the "IoU > threshold" bitmask of every pair
``(i, j > i)`` with one Warp kernel (64-bit words, one thread per row and word) and sweeps it greedily on the
host. Every thread writes only its own outputs, so the CPU split over cores needs no atomics and results do
not depend on how a launch is split. No gradient is tracked.
"""

from __future__ import annotations

import numpy as np
import torch
import warp as wp

from sparse3d.kernels.runtime import check_same_device, check_tensor, init, launch, to_wp, wp_device

wp.set_module_options({"enable_backward": False, "optimization_level": 3})

BOX_DIM = 7
"""Columns of a box row: ``(x, y, z, dx, dy, dz, heading)``."""
TOUCH_REL = 1e-12
"""An intersection area below this fraction of the smaller box's area is rounding noise and counts as 0."""
SPLIT_MIN_PAIRS = 4096
"""Pairs from which a CPU launch is split over the cores (each pair clips a polygon)."""
_MAX_VERTS = 16
"""Capacity of the clipped polygon (a rectangle clipped by a rectangle has at most 8 vertices)."""

_vec16d = wp.types.vector(length=_MAX_VERTS, dtype=wp.float64)

_MODE_BEV = 0
_MODE_3D = 1


@wp.func
def _clip_le(u: _vec16d, v: _vec16d, n: int, h: wp.float64):
    """Clip the closed polygon ``(u[k], v[k])``, ``k < n``, to the half-plane ``u <= h``; new vertices lie on
    ``u = h``. Returns the clipped polygon's ``(u, v, n)``."""
    qu = _vec16d()
    qv = _vec16d()
    m = int(0)  # noqa: UP018 -- a Warp variable (a bare literal would be a constant)
    if n == 0:
        return qu, qv, m
    prev = n - 1
    d_prev = h - u[prev]
    for k in range(n):
        d_cur = h - u[k]
        cur_in = d_cur >= wp.float64(0.0)
        prev_in = d_prev >= wp.float64(0.0)
        if cur_in != prev_in and m < _MAX_VERTS:
            # d_prev and d_cur have opposite signs (one may be 0), so t lies in [0, 1]
            t = d_prev / (d_prev - d_cur)
            qu[m] = h
            qv[m] = v[prev] + t * (v[k] - v[prev])
            m += 1
        if cur_in and m < _MAX_VERTS:
            qu[m] = u[k]
            qv[m] = v[k]
            m += 1
        prev = k
        d_prev = d_cur
    return qu, qv, m


@wp.func
def _bev_intersection(
    ax: wp.float64, ay: wp.float64, adx: wp.float64, ady: wp.float64, ah: wp.float64,
    bx: wp.float64, by: wp.float64, bdx: wp.float64, bdy: wp.float64, bh: wp.float64,
) -> wp.float64:
    """Intersection area of two rotated rectangles of positive size (see the module docstring)."""
    half = wp.float64(0.5)
    # centre of a in b's frame
    cb = wp.cos(bh)
    sb = wp.sin(bh)
    ex = ax - bx
    ey = ay - by
    cx = cb * ex + sb * ey
    cy = -sb * ex + cb * ey
    # a's half-axes in b's frame
    dh = ah - bh
    cd = wp.cos(dh)
    sd = wp.sin(dh)
    ux = cd * adx * half
    uy = sd * adx * half
    vx = -sd * ady * half
    vy = cd * ady * half
    px = _vec16d()
    py = _vec16d()
    px[0] = cx + ux + vx
    py[0] = cy + uy + vy
    px[1] = cx - ux + vx
    py[1] = cy - uy + vy
    px[2] = cx - ux - vx
    py[2] = cy - uy - vy
    px[3] = cx + ux - vx
    py[3] = cy + uy - vy
    hx = bdx * half
    hy = bdy * half
    n = int(4)  # noqa: UP018
    px, py, n = _clip_le(px, py, n, hx)  # x <= hx
    nx, py, n = _clip_le(-px, py, n, hx)  # x >= -hx
    px = -nx
    py, px, n = _clip_le(py, px, n, hy)  # y <= hy
    ny, px, n = _clip_le(-py, px, n, hy)  # y >= -hy
    py = -ny
    area2 = wp.float64(0.0)
    if n >= 3:
        j = n - 1
        for k in range(n):
            area2 += px[j] * py[k] - px[k] * py[j]
            j = k
    return wp.abs(area2) * half


@wp.func
def _iou_pair(a: wp.array2d(dtype=wp.float32), i: int, b: wp.array2d(dtype=wp.float32), j: int, mode: int) -> float:
    """BEV (``mode`` 0) or 3-D (``mode`` 1) IoU of ``a[i]`` and ``b[j]`` as float32."""
    zero = wp.float64(0.0)
    half = wp.float64(0.5)
    adx = wp.float64(a[i, 3])
    ady = wp.float64(a[i, 4])
    bdx = wp.float64(b[j, 3])
    bdy = wp.float64(b[j, 4])
    if adx <= zero or ady <= zero or bdx <= zero or bdy <= zero:
        return 0.0
    zover = wp.float64(1.0)
    vol_a = adx * ady
    vol_b = bdx * bdy
    if mode == _MODE_3D:
        adz = wp.float64(a[i, 5])
        bdz = wp.float64(b[j, 5])
        if adz <= zero or bdz <= zero:
            return 0.0
        az = wp.float64(a[i, 2])
        bz = wp.float64(b[j, 2])
        zover = wp.min(az + adz * half, bz + bdz * half) - wp.max(az - adz * half, bz - bdz * half)
        if zover <= zero:
            return 0.0
        vol_a = vol_a * adz
        vol_b = vol_b * bdz
    ax = wp.float64(a[i, 0])
    ay = wp.float64(a[i, 1])
    bx = wp.float64(b[j, 0])
    by = wp.float64(b[j, 1])
    ex = ax - bx
    ey = ay - by
    reach = half * (wp.sqrt(adx * adx + ady * ady) + wp.sqrt(bdx * bdx + bdy * bdy))
    if ex * ex + ey * ey >= reach * reach:
        return 0.0
    inter = _bev_intersection(
        ax, ay, adx, ady, wp.float64(a[i, 6]), bx, by, bdx, bdy, wp.float64(b[j, 6])
    )
    inter = wp.min(inter, wp.min(adx * ady, bdx * bdy))
    if inter <= wp.float64(TOUCH_REL) * wp.min(adx * ady, bdx * bdy):
        return 0.0
    inter = inter * zover
    union = vol_a + vol_b - inter
    return float(inter / union)


@wp.kernel
def _iou_matrix_kernel(
    offset: int,
    a: wp.array2d(dtype=wp.float32),
    b: wp.array2d(dtype=wp.float32),
    mode: int,
    out: wp.array2d(dtype=wp.float32),
):
    t = wp.tid() + offset
    m = b.shape[0]
    i = t / m
    j = t - i * m
    out[i, j] = _iou_pair(a, i, b, j, mode)


@wp.kernel
def _iou_aligned_kernel(
    offset: int,
    a: wp.array2d(dtype=wp.float32),
    b: wp.array2d(dtype=wp.float32),
    mode: int,
    out: wp.array(dtype=wp.float32),
):
    i = wp.tid() + offset
    out[i] = _iou_pair(a, i, b, i, mode)


@wp.kernel
def _nms_mask_kernel(
    offset: int,
    boxes: wp.array2d(dtype=wp.float32),
    threshold: float,
    words: int,
    mask: wp.array2d(dtype=wp.int64),
):
    """Bit ``j % 64`` of ``mask[i, j / 64]`` is set when ``j > i`` and BEV IoU(i, j) > ``threshold``.

    Thread rows alternate between the front (long rows of the upper triangle) and the back of the matrix, so
    that the contiguous chunks of a split CPU launch get similar work.
    """
    t = wp.tid() + offset
    r = t / words
    w = t - r * words
    n = boxes.shape[0]
    i = r / 2
    if r % 2 == 1:
        i = n - 1 - r / 2
    bits = wp.int64(0)
    start = wp.max(i + 1, w * 64)
    stop = wp.min(n, w * 64 + 64)
    for j in range(start, stop):
        if _iou_pair(boxes, i, boxes, j, _MODE_BEV) > threshold:
            bits = bits | (wp.int64(1) << wp.int64(j - w * 64))
    mask[i, w] = bits


# ------------------------------------------------------------------------------------------------ torch API
def _check_boxes(name: str, boxes: torch.Tensor) -> torch.Tensor:
    check_tensor(name, boxes, torch.float32, ndim=2, last_dim=BOX_DIM)
    boxes = boxes.detach().contiguous()
    if boxes.numel() and not bool(torch.isfinite(boxes).all()):
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    return boxes


def _matrix(a: torch.Tensor, b: torch.Tensor, mode: int) -> torch.Tensor:
    a = _check_boxes("a", a)
    b = _check_boxes("b", b)
    check_same_device(a=a, b=b)
    n, m = a.shape[0], b.shape[0]
    if n * m >= 2**31:
        raise ValueError(f"a and b give {n} x {m} pairs; at most {2**31 - 1} are supported")
    out = torch.empty((n, m), dtype=torch.float32, device=a.device)
    if n and m:
        init()
        launch(_iou_matrix_kernel, n * m, [to_wp(a), to_wp(b), mode, to_wp(out)], wp_device(a),
               min_split=SPLIT_MIN_PAIRS)
    return out


def _aligned(a: torch.Tensor, b: torch.Tensor, mode: int) -> torch.Tensor:
    a = _check_boxes("a", a)
    b = _check_boxes("b", b)
    check_same_device(a=a, b=b)
    if b.shape[0] != a.shape[0]:
        raise ValueError(f"b must have as many rows as a ({a.shape[0]}), got shape {tuple(b.shape)}")
    n = a.shape[0]
    if n >= 2**31:
        raise ValueError(f"a has {n} rows; at most {2**31 - 1} are supported")
    out = torch.empty((n,), dtype=torch.float32, device=a.device)
    if n:
        init()
        launch(_iou_aligned_kernel, n, [to_wp(a), to_wp(b), mode, to_wp(out)], wp_device(a),
               min_split=SPLIT_MIN_PAIRS)
    return out


def boxes_iou_bev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) float32 BEV IoU of every box of ``a`` (N, 7) with every box of ``b`` (M, 7).

    Boxes are float32 ``(x, y, z, dx, dy, dz, heading)`` on the CPU or one CUDA device (any strides). Boxes with
    ``dx <= 0`` or ``dy <= 0`` have IoU 0 with everything. Raises ValueError (naming the argument) for a wrong
    shape, dtype or device, or non-finite values.
    """
    return _matrix(a, b, _MODE_BEV)


def boxes_iou_3d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) float32 3-D IoU: BEV intersection area times z-interval overlap over the union volume.

    As :func:`boxes_iou_bev`; boxes with a non-positive ``dx``, ``dy`` or ``dz`` have IoU 0.
    """
    return _matrix(a, b, _MODE_3D)


def boxes_iou_bev_aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) float32 BEV IoU of ``a[i]`` with ``b[i]`` (both (N, 7)); see :func:`boxes_iou_bev`."""
    return _aligned(a, b, _MODE_BEV)


def boxes_iou_3d_aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) float32 3-D IoU of ``a[i]`` with ``b[i]`` (both (N, 7)); see :func:`boxes_iou_3d`."""
    return _aligned(a, b, _MODE_3D)


def _check_count(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be None or an int >= 0, got {value!r}")
    return int(value)


def _greedy_sweep(mask: np.ndarray, n: int, limit: int | None) -> list[int]:
    """Rows kept by the greedy pass over the sorted bitmask ``mask`` (n, words) uint64."""
    removed = np.zeros(mask.shape[1], dtype=np.uint64)
    keep: list[int] = []
    for i in range(n):
        w = i >> 6
        if (int(removed[w]) >> (i & 63)) & 1:
            continue
        keep.append(i)
        if limit is not None and len(keep) >= limit:
            break
        removed[w:] |= mask[i, w:]
    return keep


def nms_bev(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    pre_max: int | None = None,
    post_max: int | None = None,
) -> torch.Tensor:
    """Greedy rotated NMS on BEV IoU: indices into ``boxes`` of the kept boxes, by descending score.

    ``boxes`` (N, 7) float32 and ``scores`` (N,) floating, on one device. Boxes are visited by descending score
    (ties: lower index first); a box is kept unless its BEV IoU with an already kept box is greater than
    ``iou_threshold``. ``pre_max`` keeps only the ``pre_max`` highest-scoring boxes before the sweep,
    ``post_max`` stops after that many are kept (None: no limit). Returns an int64 tensor on ``boxes``' device.
    """
    boxes = _check_boxes("boxes", boxes)
    check_tensor("scores", scores, (torch.float16, torch.bfloat16, torch.float32, torch.float64), ndim=1)
    check_same_device(boxes=boxes, scores=scores)
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"scores must have one entry per box ({boxes.shape[0]}), got shape {tuple(scores.shape)}")
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float, np.floating, np.integer)):
        raise ValueError(f"iou_threshold must be a float, got {iou_threshold!r}")
    threshold = float(iou_threshold)
    if not np.isfinite(threshold):
        raise ValueError(f"iou_threshold must be finite, got {iou_threshold!r}")
    pre_max = _check_count("pre_max", pre_max)
    post_max = _check_count("post_max", post_max)
    scores = scores.detach()
    if scores.numel() and not bool(torch.isfinite(scores).all()):
        raise ValueError("scores must be finite (found NaN or inf)")
    device = boxes.device
    order = torch.sort(scores, descending=True, stable=True).indices
    if pre_max is not None:
        order = order[:pre_max]
    n = order.shape[0]
    if n == 0 or post_max == 0:
        return torch.empty((0,), dtype=torch.int64, device=device)
    if n >= 2**25:
        raise ValueError(f"nms_bev supports at most {2**25 - 1} boxes after pre_max, got {n}")
    sorted_boxes = boxes[order].contiguous()
    words = (n + 63) // 64
    mask = torch.empty((n, words), dtype=torch.int64, device=device)
    init()
    launch(_nms_mask_kernel, n * words, [to_wp(sorted_boxes), threshold, words, to_wp(mask)], wp_device(boxes),
           min_split=SPLIT_MIN_PAIRS // 64)
    keep = _greedy_sweep(mask.cpu().numpy().view(np.uint64), n, post_max)
    return order[torch.tensor(keep, dtype=torch.int64, device=device)]
