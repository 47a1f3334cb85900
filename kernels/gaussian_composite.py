"""Front-to-back alpha compositing of depth-sorted 2-D Gaussians per tile in Warp, forward and backward.

The rasterization step of 3D Gaussian Splatting (Kerbl et al., SIGGRAPH 2023) with the semantics of gsplat
1.5.3 (``RasterizeToPixels3DGS{Fwd,Bwd}.cu``; gsplat, Ye et al. 2024): per pixel, alpha = min(0.999,
o exp(-sigma)) with sigma the conic's quadratic form at the pixel centre, Gaussians with alpha < 1/255 or
sigma < 0 skipped, and the walk stopped before the transmittance would drop to 1e-4. Inputs are the projected
Gaussians of :mod:`sparse3d.kernels.gaussian_projection` and the per-tile lists of
:mod:`sparse3d.kernels.gaussian_tiles`; :func:`rasterize_to_pixels` is the differentiable entry point.

* Records: everything compositing reads about a Gaussian (mean, conic, opacity, colour, depth, the pixel box of
  its alpha >= 1/255 footprint) sits in one 64-byte row (:func:`_records_kernel`), copied once per
  intersection into the sorted intersection order (:func:`_gather_records_kernel`): a tile's list visits
  Gaussians in random memory order, and this way the forward and the backward walk their records
  sequentially.
* Compositing: one thread per tile, reading the tile's depth-sorted list once. Each Gaussian touches only the
  tile rows of its box and, per row, the pixels inside its ellipse (an exact float64 span with a safety
  margin), so the work is proportional to the splats' footprints rather than to (list length x 256); per pixel
  the arithmetic and its order are those of gsplat's per-pixel loop. Tiles are dealt round-robin to
  ``num_parts`` CPU threads (:func:`runtime.launch_partitioned`).
* Backward: gradients are written per INTERSECTION (each belongs to one tile, so no two threads write the same
  place and no atomics are needed, on CPU or CUDA) and ``index_add_`` sums them per Gaussian.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import warp as wp

from sparse3d.kernels.gaussian_projection import check_projected
from sparse3d.kernels.runtime import (
    check_tensor,
    cpu_threads,
    launch,
    launch_partitioned,
    serial_torch_ops,
    to_wp,
    wp_device,
)

wp.set_module_options({"enable_backward": False, "optimization_level": 3})

ALPHA_MIN = wp.constant(1.0 / 255.0)
ALPHA_MAX = wp.constant(0.999)
T_STOP = wp.constant(1.0e-4)
LOCAL_CH = wp.constant(4)
"""Images with at most this many channels (RGB + depth) run the per-pixel channel loops with this constant
bound, which Warp unrolls; wider feature images take a loop bounded by the runtime channel count."""
SPAN_MIN_COLS = wp.constant(8)
"""Rows of a box narrower than this are scanned whole: the exact float64 row span (a square root and two
divisions) costs more than the few sigma tests it saves on a small splat; wide splats still get it."""


@wp.func
def _span_sigma(s_max: float) -> wp.float64:
    """Sigma level of the boxes/spans: 1% + 0.01 above s_max covers float32 rounding of sigma in the kernels."""
    return wp.float64(s_max) * wp.float64(1.01) + wp.float64(0.01)


@wp.func
def _row_span(m: wp.vec2, q: wp.vec3, s_max: float, py: float, c0: int, c1: int) -> wp.vec2i:
    """Columns [c0, c1] of row centre ``py`` narrowed to where sigma <= s_max can hold (float64 quadratic).

    For fixed dy, sigma(dx) = a/2 dx^2 + b dy dx + c/2 dy^2 is a parabola in dx = mx - px; its sub-level set is
    an interval. Returns an empty span (x > y) when the row misses the ellipse.
    """
    qa = wp.float64(q[0])
    qb = wp.float64(q[1])
    qc = wp.float64(q[2])
    if qa * qc - qb * qb <= wp.float64(0.0) or qa <= wp.float64(0.0):
        return wp.vec2i(c0, c1)
    s = _span_sigma(s_max)
    dy = wp.float64(m[1]) - wp.float64(py)
    bdy = qb * dy
    disc = bdy * bdy - qa * (qc * dy * dy - wp.float64(2.0) * s)
    if disc < wp.float64(0.0):
        return wp.vec2i(1, 0)
    sq = wp.sqrt(disc)
    mx = wp.float64(m[0]) - wp.float64(0.5)
    big = wp.float64(1.0e9)
    lo = wp.max(wp.min(wp.ceil(mx - (sq - bdy) / qa), big), -big)
    hi = wp.max(wp.min(wp.floor(mx + (sq + bdy) / qa), big), -big)
    return wp.vec2i(wp.max(c0, int(lo)), wp.min(c1, int(hi)))


REC_MEAN = wp.constant(0)  # x, y
REC_CONIC = wp.constant(2)  # a, b, c
REC_OPACITY = wp.constant(5)
REC_SIGMA_MAX = wp.constant(6)
REC_DEPTH = wp.constant(7)
REC_BOX = wp.constant(8)  # x0, y0, x1, y1 (inclusive pixel box, as exact small floats)
REC_COLOR = wp.constant(12)
RECORD_ALIGN = 16
"""Per-Gaussian record: everything compositing reads about a Gaussian in one row of float32, padded to 16
floats (one 64-byte cache line for <= 4 channels), so that gathering it per intersection costs one memory
access per Gaussian rather than one per field."""


def record_width(n_ch: int) -> int:
    return -(-(12 + n_ch) // RECORD_ALIGN) * RECORD_ALIGN


@wp.kernel
def _records_kernel(
    offset: int,
    means2d: wp.array(dtype=wp.vec2),
    conics: wp.array(dtype=wp.vec3),
    opacities: wp.array(dtype=wp.float32),
    depths: wp.array(dtype=wp.float32),
    has_depths: int,
    colors: wp.array2d(dtype=wp.float32),
    width: int,
    height: int,
    records: wp.array2d(dtype=wp.float32),
):
    """Fill Gaussian ``i``'s record, including the pixel box outside which its alpha is below 1/255.

    alpha = min(0.999, o exp(-sigma)) >= 1/255  <=>  sigma <= s_max = ln(255 o) (+1e-3); the set {sigma <= s}
    is an ellipse whose x half-extent is sqrt(2 s Sigma_xx) with Sigma = conic^-1 (computed in float64, with
    s inflated by :func:`_span_sigma`), so skipping pixels outside the box changes nothing. The box is clipped
    to [-1, width] x [-1, height], which keeps it exact in float32.
    """
    i = wp.tid() + offset
    m = means2d[i]
    q = conics[i]
    o = opacities[i]
    records[i, REC_MEAN] = m[0]
    records[i, REC_MEAN + 1] = m[1]
    records[i, REC_CONIC] = q[0]
    records[i, REC_CONIC + 1] = q[1]
    records[i, REC_CONIC + 2] = q[2]
    records[i, REC_OPACITY] = o
    depth = wp.float32(0.0)
    if has_depths != 0:
        depth = depths[i]
    records[i, REC_DEPTH] = depth
    for k in range(colors.shape[1]):
        records[i, REC_COLOR + k] = colors[i, k]
    box = wp.vec4i(1, 1, 0, 0)  # empty
    s = wp.float32(-1.0)
    if o > 0.0:
        s = wp.log(255.0 * o) + 1.0e-3
        s_box = _span_sigma(s)
        qa = wp.float64(q[0])
        qb = wp.float64(q[1])
        qc = wp.float64(q[2])
        det = qa * qc - qb * qb
        if s_box >= wp.float64(0.0):
            if det <= wp.float64(0.0) or qa <= wp.float64(0.0):
                # Not positive definite: sigma can be < 0 anywhere, no ellipse bound; cover everything.
                box = wp.vec4i(-1, -1, width, height)
            else:
                hx = wp.sqrt(wp.float64(2.0) * s_box * qc / det)
                hy = wp.sqrt(wp.float64(2.0) * s_box * qa / det)
                mx = wp.float64(m[0]) - wp.float64(0.5)
                my = wp.float64(m[1]) - wp.float64(0.5)
                # Pixel col has centre col + 0.5: |col + 0.5 - m| <= h <=> ceil(m - 0.5 - h) <= col <= floor(m - 0.5 + h)
                lo_x = wp.float64(-1.0)
                lo_y = wp.float64(-1.0)
                hi_x = wp.float64(width)
                hi_y = wp.float64(height)
                box = wp.vec4i(
                    int(wp.max(wp.min(wp.ceil(mx - hx), hi_x), lo_x)),
                    int(wp.max(wp.min(wp.ceil(my - hy), hi_y), lo_y)),
                    int(wp.max(wp.min(wp.floor(mx + hx), hi_x), lo_x)),
                    int(wp.max(wp.min(wp.floor(my + hy), hi_y), lo_y)),
                )
    records[i, REC_SIGMA_MAX] = s
    for k in range(4):
        records[i, REC_BOX + k] = float(box[k])


_vec_record = wp.types.vector(length=RECORD_ALIGN, dtype=wp.float32)


@wp.kernel
def _gather_records_kernel(
    offset: int,
    records: wp.array2d(dtype=_vec_record),
    flatten_ids: wp.array(dtype=wp.int32),
    out: wp.array2d(dtype=_vec_record),
):
    """out[idx] = records[flatten_ids[idx]] (a record is ``records.shape[1]`` blocks of RECORD_ALIGN floats)."""
    idx = wp.tid() + offset
    g = int(flatten_ids[idx])
    for j in range(records.shape[1]):
        out[idx, j] = records[g, j]


@wp.func
def _tile_of(gtile: int, tile_size: int, tiles_x: int, n_tiles: int, width: int, height: int) -> wp.vec4i:
    """(first row, end row, first column, end column) of global tile ``gtile`` clipped to the image."""
    tile = gtile - (gtile // n_tiles) * n_tiles
    ty = tile // tiles_x
    tx = tile - ty * tiles_x
    row0 = ty * tile_size
    col0 = tx * tile_size
    return wp.vec4i(row0, wp.min(row0 + tile_size, height), col0, wp.min(col0 + tile_size, width))


@wp.func
def _box_in_tile(records: wp.array2d(dtype=wp.float32), r: int, row0: int, row1: int, col0: int,
                 col1: int) -> wp.vec4i:
    """(first row, last row, first column, last column) of record ``r``'s pixel box inside the tile (rows
    [row0, row1), columns [col0, col1)); empty when first > last."""
    return wp.vec4i(
        wp.max(row0, int(records[r, REC_BOX + 1])), wp.min(row1 - 1, int(records[r, REC_BOX + 3])),
        wp.max(col0, int(records[r, REC_BOX])), wp.min(col1 - 1, int(records[r, REC_BOX + 2])),
    )


@wp.func
def _fwd_channel(k: int, pix: int, idx: int, w: float, records: wp.array2d(dtype=wp.float32),
                 out_colors: wp.array2d(dtype=wp.float32)):
    """Channel ``k`` of one front-to-back step: out += colour * alpha * T."""
    out_colors[pix, k] = out_colors[pix, k] + records[idx, REC_COLOR + k] * w


@wp.func
def _bwd_channel(k: int, pix: int, idx: int, fac: float, trans: float, ra: float,
                 records: wp.array2d(dtype=wp.float32), v_out_colors: wp.array2d(dtype=wp.float32),
                 v_colors: wp.array2d(dtype=wp.float32), buffer: wp.array2d(dtype=wp.float32)) -> float:
    """Channel ``k`` of one back-to-front step: the colour gradient of intersection ``idx``, the running sum of
    the colours behind (``buffer``), and this channel's share of d(loss)/d(alpha)."""
    v_c = v_out_colors[pix, k]
    c = records[idx, REC_COLOR + k]
    v_colors[idx, k] = v_colors[idx, k] + fac * v_c
    v_alpha = (c * trans - buffer[pix, k] * ra) * v_c
    buffer[pix, k] = buffer[pix, k] + c * fac
    return v_alpha


@wp.kernel
def _raster_fwd_kernel(
    part: int,
    n_parts: int,
    records: wp.array2d(dtype=wp.float32),
    n_ch: int,
    backgrounds: wp.array2d(dtype=wp.float32),
    use_bg: int,
    offsets: wp.array(dtype=wp.int32),
    n_isects: int,
    width: int,
    height: int,
    tile_size: int,
    tiles_x: int,
    n_tiles: int,
    done: wp.array(dtype=wp.int32),
    row_left: wp.array(dtype=wp.int32),
    out_colors: wp.array2d(dtype=wp.float32),
    out_alphas: wp.array(dtype=wp.float32),
    out_trans: wp.array(dtype=wp.float32),
    last_ids: wp.array(dtype=wp.int32),
    median: wp.array(dtype=wp.float32),
):
    """One thread per tile; Gaussians front to back, each touching only the tile rows/columns in its box.

    The tile's list is read once (not once per row). Per pixel the arithmetic and its order are exactly a
    front-to-back per-pixel loop's (gsplat's ``RasterizeToPixels3DGSFwd.cu``): the box and row spans only skip pixels whose alpha is
    provably below 1/255. Pixel state lives in the output arrays; ``row_left`` (tile_size per tile) counts each
    tile row's pixels still compositing, so rows that are all saturated skip the span computation.
    """
    gtile = wp.tid()
    if gtile % n_parts != part:
        return
    tb = _tile_of(gtile, tile_size, tiles_x, n_tiles, width, height)
    row0 = tb[0]
    row1 = tb[1]
    col0 = tb[2]
    col1 = tb[3]
    if row1 <= row0 or col1 <= col0:
        return
    cam = gtile // n_tiles
    rbase = gtile * tile_size - row0  # row_left index of image row ``row`` is rbase + row
    for row in range(row0, row1):
        row_left[rbase + row] = col1 - col0
        pix0 = (cam * height + row) * width
        for col in range(col0, col1):
            pix = pix0 + col
            for k in range(n_ch):
                out_colors[pix, k] = 0.0
            out_trans[pix] = 1.0
            last_ids[pix] = -1
            median[pix] = 0.0
            done[pix] = 0
    start = int(offsets[gtile])
    end = n_isects
    if gtile + 1 < offsets.shape[0]:
        end = int(offsets[gtile + 1])
    active = (row1 - row0) * (col1 - col0)
    for idx in range(start, end):
        rc = _box_in_tile(records, idx, row0, row1, col0, col1)
        r0 = rc[0]
        r1 = rc[1]
        cl = rc[2]
        ch = rc[3]
        if r0 > r1 or cl > ch:
            continue
        m = wp.vec2(records[idx, REC_MEAN], records[idx, REC_MEAN + 1])
        q = wp.vec3(records[idx, REC_CONIC], records[idx, REC_CONIC + 1], records[idx, REC_CONIC + 2])
        o = records[idx, REC_OPACITY]
        s_max = records[idx, REC_SIGMA_MAX]
        for row in range(r0, r1 + 1):
            if row_left[rbase + row] == 0:
                continue
            py = float(row) + 0.5
            c0 = cl
            c1 = ch
            if ch - cl >= SPAN_MIN_COLS:
                span = _row_span(m, q, s_max, py, cl, ch)
                c0 = span[0]
                c1 = span[1]
                if c0 > c1:
                    continue
            pix0 = (cam * height + row) * width
            dy = m[1] - py
            for col in range(c0, c1 + 1):
                pix = pix0 + col
                if done[pix] != 0:
                    continue
                dx = m[0] - (float(col) + 0.5)
                sigma = 0.5 * (q[0] * dx * dx + q[2] * dy * dy) + q[1] * dx * dy
                if sigma < 0.0 or sigma > s_max:
                    continue
                alpha = wp.min(ALPHA_MAX, o * wp.exp(-sigma))
                if alpha < ALPHA_MIN:
                    continue
                trans = out_trans[pix]
                next_t = trans * (1.0 - alpha)
                if next_t <= T_STOP:
                    done[pix] = 1
                    active -= 1
                    row_left[rbase + row] = row_left[rbase + row] - 1
                    continue
                w = alpha * trans
                if n_ch <= LOCAL_CH:
                    for k in range(LOCAL_CH):  # constant bound: unrolled (see LOCAL_CH)
                        if k < n_ch:
                            _fwd_channel(k, pix, idx, w, records, out_colors)
                else:
                    for k in range(n_ch):
                        _fwd_channel(k, pix, idx, w, records, out_colors)
                if trans > 0.5 and next_t <= 0.5:
                    median[pix] = records[idx, REC_DEPTH]
                out_trans[pix] = next_t
                last_ids[pix] = idx
        if active == 0:
            break
    for row in range(row0, row1):
        pix0 = (cam * height + row) * width
        for col in range(col0, col1):
            pix = pix0 + col
            trans = out_trans[pix]
            if use_bg != 0:
                for k in range(n_ch):
                    out_colors[pix, k] = out_colors[pix, k] + trans * backgrounds[cam, k]
            out_alphas[pix] = 1.0 - trans


@wp.kernel
def _raster_bwd_kernel(
    part: int,
    n_parts: int,
    records: wp.array2d(dtype=wp.float32),
    n_ch: int,
    backgrounds: wp.array2d(dtype=wp.float32),
    use_bg: int,
    offsets: wp.array(dtype=wp.int32),
    n_isects: int,
    width: int,
    height: int,
    tile_size: int,
    tiles_x: int,
    n_tiles: int,
    trans_final: wp.array(dtype=wp.float32),
    last_ids: wp.array(dtype=wp.int32),
    v_out_colors: wp.array2d(dtype=wp.float32),
    v_out_alphas: wp.array(dtype=wp.float32),
    trans_cur: wp.array(dtype=wp.float32),
    row_last: wp.array(dtype=wp.int32),
    v_final: wp.array(dtype=wp.float32),
    buffer: wp.array2d(dtype=wp.float32),
    absgrad: int,
    v_means2d: wp.array(dtype=wp.vec2),
    v_means2d_abs: wp.array(dtype=wp.vec2),
    v_conics: wp.array(dtype=wp.vec3),
    v_colors: wp.array2d(dtype=wp.float32),
    v_opacities: wp.array(dtype=wp.float32),
):
    """One thread per tile, back to front over each pixel's contributors (ids <= last_ids).

    The vector-Jacobian product of :func:`_raster_fwd_kernel`, with the formulas of gsplat's
    ``RasterizeToPixels3DGSBwd.cu``.

    Gradients are per INTERSECTION (index ``idx`` of the sorted list, which belongs to exactly one tile): the
    tile's thread sums a Gaussian's pixels in registers and writes each of its intersections once, with no
    atomics and no per-thread buffers; the caller adds them up per Gaussian (``index_add_``). ``row_last``
    (tile_size per tile) holds each tile row's largest last id, so rows a Gaussian cannot reach are skipped.
    """
    gtile = wp.tid()
    if gtile % n_parts != part:
        return
    start = int(offsets[gtile])
    end = n_isects
    if gtile + 1 < offsets.shape[0]:
        end = int(offsets[gtile + 1])
    for idx in range(start, end):
        v_means2d[idx] = wp.vec2(0.0, 0.0)
        v_conics[idx] = wp.vec3(0.0, 0.0, 0.0)
        v_opacities[idx] = 0.0
        for k in range(n_ch):
            v_colors[idx, k] = 0.0
        if absgrad != 0:
            v_means2d_abs[idx] = wp.vec2(0.0, 0.0)
    tb = _tile_of(gtile, tile_size, tiles_x, n_tiles, width, height)
    row0 = tb[0]
    row1 = tb[1]
    col0 = tb[2]
    col1 = tb[3]
    if row1 <= row0 or col1 <= col0:
        return
    cam = gtile // n_tiles
    tile_last = wp.int32(-1)
    rbase = gtile * tile_size - row0  # row_last index of image row ``row`` is rbase + row
    for row in range(row0, row1):
        pix0 = (cam * height + row) * width
        r_last = wp.int32(-1)
        for col in range(col0, col1):
            pix = pix0 + col
            t_fin = trans_final[pix]
            trans_cur[pix] = t_fin
            bg_dot = wp.float32(0.0)
            if use_bg != 0:
                for k in range(n_ch):
                    bg_dot += backgrounds[cam, k] * v_out_colors[pix, k]
            # d(out)/d(alpha_i) carries T_final / (1 - alpha_i) * (v_alpha_out - bg . v_color_out)
            v_final[pix] = t_fin * (v_out_alphas[pix] - bg_dot)
            for k in range(n_ch):
                buffer[pix, k] = 0.0
            r_last = wp.max(r_last, last_ids[pix])
        row_last[rbase + row] = r_last
        tile_last = wp.max(tile_last, r_last)
    if tile_last < start:
        return
    for r in range(tile_last - start + 1):
        idx = tile_last - r
        rc = _box_in_tile(records, idx, row0, row1, col0, col1)
        r0 = rc[0]
        r1 = rc[1]
        cl = rc[2]
        ch = rc[3]
        if r0 > r1 or cl > ch:
            continue
        m = wp.vec2(records[idx, REC_MEAN], records[idx, REC_MEAN + 1])
        q = wp.vec3(records[idx, REC_CONIC], records[idx, REC_CONIC + 1], records[idx, REC_CONIC + 2])
        o = records[idx, REC_OPACITY]
        s_max = records[idx, REC_SIGMA_MAX]
        acc_xy = wp.vec2(0.0, 0.0)
        acc_abs = wp.vec2(0.0, 0.0)
        acc_q = wp.vec3(0.0, 0.0, 0.0)
        acc_o = wp.float32(0.0)
        for row in range(r0, r1 + 1):
            if idx > row_last[rbase + row]:
                continue
            py = float(row) + 0.5
            c0 = cl
            c1 = ch
            if ch - cl >= SPAN_MIN_COLS:
                span = _row_span(m, q, s_max, py, cl, ch)
                c0 = span[0]
                c1 = span[1]
                if c0 > c1:
                    continue
            pix0 = (cam * height + row) * width
            dy = m[1] - py
            for col in range(c0, c1 + 1):
                pix = pix0 + col
                if idx > last_ids[pix]:
                    continue
                dx = m[0] - (float(col) + 0.5)
                sigma = 0.5 * (q[0] * dx * dx + q[2] * dy * dy) + q[1] * dx * dy
                if sigma < 0.0 or sigma > s_max:
                    continue
                vis = wp.exp(-sigma)
                alpha = wp.min(ALPHA_MAX, o * vis)
                if alpha < ALPHA_MIN:
                    continue
                ra = 1.0 / (1.0 - alpha)
                trans = trans_cur[pix] * ra
                trans_cur[pix] = trans
                fac = alpha * trans
                v_alpha = wp.float32(0.0)
                if n_ch <= LOCAL_CH:
                    for k in range(LOCAL_CH):
                        if k < n_ch:
                            v_alpha += _bwd_channel(k, pix, idx, fac, trans, ra, records, v_out_colors, v_colors,
                                                    buffer)
                else:
                    for k in range(n_ch):
                        v_alpha += _bwd_channel(k, pix, idx, fac, trans, ra, records, v_out_colors, v_colors,
                                                buffer)
                v_alpha += ra * v_final[pix]
                if o * vis <= ALPHA_MAX:
                    v_sigma = -o * vis * v_alpha
                    acc_q += wp.vec3(0.5 * v_sigma * dx * dx, v_sigma * dx * dy, 0.5 * v_sigma * dy * dy)
                    v_xy = wp.vec2(v_sigma * (q[0] * dx + q[1] * dy), v_sigma * (q[1] * dx + q[2] * dy))
                    acc_xy += v_xy
                    acc_abs += wp.vec2(wp.abs(v_xy[0]), wp.abs(v_xy[1]))
                    acc_o += vis * v_alpha
        v_means2d[idx] = acc_xy
        v_conics[idx] = acc_q
        v_opacities[idx] = acc_o
        if absgrad != 0:
            v_means2d_abs[idx] = acc_abs


class RasterOutputs(NamedTuple):
    """Result of :func:`rasterize_to_pixels_fwd`, with what its backward needs."""

    colors: torch.Tensor  # (C, H, W, D)
    alphas: torch.Tensor  # (C, H, W, 1)
    transmittance: torch.Tensor  # (C, H, W) final T (kept separately: 1 - alpha loses precision near T = 0)
    last_ids: torch.Tensor  # (C, H, W) int32 index of the last contributing intersection, -1 if none
    median_depths: torch.Tensor  # (C, H, W, 1)
    records: torch.Tensor  # (M, record_width) records in intersection order; pass to the backward to skip rebuilding


def _build_records(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    depths: torch.Tensor | None,
    width: int,
    height: int,
    flatten_ids: torch.Tensor,
    shape: tuple[int, int],
) -> torch.Tensor:
    """The compositing record (:func:`_records_kernel`) of every intersection, in the sorted intersection order
    (row ``idx`` is that of Gaussian ``flatten_ids[idx]``); depth 0 when ``depths`` is None.

    Built once per Gaussian, then copied per intersection by :func:`_gather_records_kernel`: a tile's walk then
    reads its records sequentially instead of jumping to random Gaussians (one cache miss per list entry,
    which the compositing loop cannot hide), and the copy's independent loads overlap each other.
    """
    dev = means2d.device
    records = torch.empty(means2d.shape[0] * means2d.shape[1], shape[1], dtype=torch.float32, device=dev)
    d = depths if depths is not None else torch.zeros(1, dtype=torch.float32, device=dev)
    n_ch = colors.shape[-1]
    launch(
        _records_kernel, records.shape[0],
        [to_wp(means2d.detach().reshape(-1, 2).contiguous(), wp.vec2),
         to_wp(conics.detach().reshape(-1, 3).contiguous(), wp.vec3),
         to_wp(opacities.detach().reshape(-1).contiguous()), to_wp(d.detach().reshape(-1).contiguous()),
         int(depths is not None), to_wp(colors.detach().reshape(-1, n_ch).contiguous()), width, height,
         to_wp(records)],
        wp_device(means2d),
    )
    out = torch.empty(shape, dtype=torch.float32, device=dev)
    if shape[0]:
        launch(
            _gather_records_kernel, shape[0],
            [to_wp(records.view(records.shape[0], -1, RECORD_ALIGN), _vec_record),
             to_wp(flatten_ids.contiguous()), to_wp(out.view(shape[0], -1, RECORD_ALIGN), _vec_record)],
            wp_device(means2d),
        )
    return out


def _prep(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    depths: torch.Tensor | None,
    backgrounds: torch.Tensor | None,
    isect_offsets: torch.Tensor,
    flatten_ids: torch.Tensor,
    width: int,
    height: int,
    records: torch.Tensor | None = None,
) -> dict:
    """Validate the compositing inputs and build the records in intersection order (:func:`_build_records`)."""
    c_n, n = check_projected(means2d, conics=conics, colors=colors, opacities=opacities, depths=depths)
    check_tensor("conics", conics, torch.float32, ndim=3, last_dim=3)
    check_tensor("colors", colors, torch.float32, ndim=3)
    check_tensor("opacities", opacities, torch.float32, ndim=2)
    check_tensor("isect_offsets", isect_offsets, torch.int32, ndim=3)
    check_tensor("flatten_ids", flatten_ids, torch.int32, ndim=1)
    if depths is not None:
        check_tensor("depths", depths, torch.float32, ndim=2)
    n_ch = colors.shape[2]
    if n_ch < 1:
        raise ValueError(f"colors must have at least one channel, got shape {tuple(colors.shape)}")
    if isect_offsets.shape[0] != c_n:
        raise ValueError(f"isect_offsets must have {c_n} cameras, got shape {tuple(isect_offsets.shape)}")
    dev = means2d.device
    if backgrounds is not None:
        check_tensor("backgrounds", backgrounds, torch.float32, ndim=2)
        if tuple(backgrounds.shape) != (c_n, n_ch):
            raise ValueError(f"backgrounds must have shape {(c_n, n_ch)}, got {tuple(backgrounds.shape)}")
        bg = backgrounds.detach().contiguous()
    else:
        bg = torch.zeros(1, n_ch, dtype=torch.float32, device=dev)
    wdev = wp_device(means2d)
    shape = (flatten_ids.shape[0], record_width(n_ch))
    if records is not None:  # built by the forward pass of the same inputs
        check_tensor("records", records, torch.float32, ndim=2)
        if tuple(records.shape) != shape:
            raise ValueError(f"records must have shape {shape}, got {tuple(records.shape)}")
    else:
        records = _build_records(means2d, conics, colors, opacities, depths, width, height, flatten_ids, shape)
    tiles_y, tiles_x = isect_offsets.shape[1], isect_offsets.shape[2]
    dim = c_n * tiles_y * tiles_x  # one thread per tile
    return {
        "c_n": c_n,
        "n": n,
        "n_ch": n_ch,
        "gaussians": [to_wp(records), n_ch],
        "records": records,  # the tensor behind the Warp view
        "n_isects": flatten_ids.shape[0],
        "bg": to_wp(bg),
        "use_bg": int(backgrounds is not None),
        "offsets": to_wp(isect_offsets.reshape(-1).contiguous()),
        "tiles_x": tiles_x,
        "n_tiles": tiles_x * tiles_y,
        "dim": dim,
        # Tiles are dealt to parts by tile id; CPU launches always use every core (tiles are heavy).
        "parts": cpu_threads() if wdev == "cpu" else 1,
        "device": wdev,
        "torch_device": dev,
    }


def rasterize_to_pixels_fwd(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    depths: torch.Tensor,
    backgrounds: torch.Tensor | None,
    isect_offsets: torch.Tensor,
    flatten_ids: torch.Tensor,
    width: int,
    height: int,
    tile_size: int,
) -> RasterOutputs:
    """Front-to-back compositing of every pixel (no autograd: :func:`rasterize_to_pixels` is the differentiable
    form)."""
    check_tensor("depths", depths, torch.float32, ndim=2)
    a = _prep(means2d, conics, colors, opacities, depths, backgrounds, isect_offsets, flatten_ids, width, height)
    c_n, n_ch, dev = a["c_n"], a["n_ch"], a["torch_device"]
    n_pix = c_n * height * width

    def empty(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.empty(n_pix, *shape, dtype=dtype, device=dev)

    out_c, out_a, out_t, med = empty(n_ch), empty(), empty(), empty()
    last, done = empty(dtype=torch.int32), empty(dtype=torch.int32)
    row_left = torch.empty(a["dim"] * tile_size, dtype=torch.int32, device=dev)
    launch_partitioned(
        _raster_fwd_kernel,
        a["dim"],
        [*a["gaussians"], a["bg"], a["use_bg"], a["offsets"], a["n_isects"], width, height, tile_size, a["tiles_x"],
         a["n_tiles"], to_wp(done), to_wp(row_left), to_wp(out_c), to_wp(out_a), to_wp(out_t), to_wp(last),
         to_wp(med)],
        a["device"],
        parts=a["parts"],
    )
    shape = (c_n, height, width)
    return RasterOutputs(
        out_c.reshape(*shape, n_ch), out_a.reshape(*shape, 1), out_t.reshape(shape), last.reshape(shape),
        med.reshape(*shape, 1), a["records"],
    )


def rasterize_to_pixels_bwd(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    backgrounds: torch.Tensor | None,
    isect_offsets: torch.Tensor,
    flatten_ids: torch.Tensor,
    width: int,
    height: int,
    tile_size: int,
    transmittance: torch.Tensor,
    last_ids: torch.Tensor,
    v_colors: torch.Tensor,
    v_alphas: torch.Tensor,
    absgrad: bool = False,
    records: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients w.r.t. means2d (C,N,2), conics (C,N,3), colors (C,N,D), opacities (C,N) [+ |means2d| sums]."""
    a = _prep(means2d, conics, colors, opacities, None, backgrounds, isect_offsets, flatten_ids, width, height,
              records)
    c_n, n, n_ch, dev = a["c_n"], a["n"], a["n_ch"], a["torch_device"]
    m_isects = a["n_isects"]
    n_pix = c_n * height * width

    def per_isect(*shape: int) -> torch.Tensor:
        return torch.empty(m_isects, *shape, dtype=torch.float32, device=dev)

    g_m, g_q, g_c, g_o = per_isect(2), per_isect(3), per_isect(n_ch), per_isect()
    g_abs = per_isect(2) if absgrad else torch.zeros(1, 2, dtype=torch.float32, device=dev)
    trans_cur = torch.empty(n_pix, dtype=torch.float32, device=dev)
    row_last = torch.empty(a["dim"] * tile_size, dtype=torch.int32, device=dev)
    v_final = torch.empty(n_pix, dtype=torch.float32, device=dev)
    buffer = torch.empty(n_pix, n_ch, dtype=torch.float32, device=dev)
    launch_partitioned(
        _raster_bwd_kernel,
        a["dim"],
        [*a["gaussians"], a["bg"], a["use_bg"], a["offsets"], m_isects, width, height, tile_size, a["tiles_x"],
         a["n_tiles"], to_wp(transmittance.reshape(-1).contiguous()), to_wp(last_ids.reshape(-1).contiguous()),
         to_wp(v_colors.reshape(n_pix, n_ch).float().contiguous()),
         to_wp(v_alphas.reshape(n_pix).float().contiguous()),
         to_wp(trans_cur), to_wp(row_last), to_wp(v_final), to_wp(buffer), int(absgrad),
         to_wp(g_m, wp.vec2), to_wp(g_abs, wp.vec2), to_wp(g_q, wp.vec3), to_wp(g_c), to_wp(g_o)],
        a["device"],
        parts=a["parts"],
    )
    ids = flatten_ids.long()

    def fold(t: torch.Tensor, *shape: int) -> torch.Tensor:
        """Sum the per-intersection gradients of each Gaussian (every intersection row is written once)."""
        out = torch.zeros(c_n * n, *shape, dtype=torch.float32, device=dev)
        return out.index_add_(0, ids, t.reshape(m_isects, *shape)).reshape(c_n, n, *shape)

    return fold(g_m, 2), fold(g_q, 3), fold(g_c, n_ch), fold(g_o), (fold(g_abs, 2) if absgrad else None)


class _RasterizeToPixels(torch.autograd.Function):
    """:func:`rasterize_to_pixels_fwd` with :func:`rasterize_to_pixels_bwd` as its backward; gradients flow to
    means2d, conics, colors, opacities and backgrounds (the median depth has none)."""

    @staticmethod
    def forward(
        ctx: Any,
        means2d: torch.Tensor,
        conics: torch.Tensor,
        colors: torch.Tensor,
        opacities: torch.Tensor,
        backgrounds: torch.Tensor | None,
        depths: torch.Tensor,
        isect_offsets: torch.Tensor,
        flatten_ids: torch.Tensor,
        width: int,
        height: int,
        tile_size: int,
        absgrad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        colors = colors.contiguous()
        opacities = opacities.contiguous()
        out = rasterize_to_pixels_fwd(
            means2d, conics, colors, opacities, depths, backgrounds, isect_offsets, flatten_ids, width, height,
            tile_size,
        )
        ctx.save_for_backward(
            means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids, out.transmittance,
            out.last_ids, out.records,
        )
        ctx.dims = (width, height, tile_size, absgrad)
        ctx.mark_non_differentiable(out.median_depths)
        return out.colors, out.alphas, out.median_depths

    @staticmethod
    @serial_torch_ops()
    def backward(ctx: Any, v_colors: torch.Tensor, v_alphas: torch.Tensor, _v_median: torch.Tensor):
        means2d, conics, colors, opacities, backgrounds, offsets, flat_ids, trans, last_ids, records = ctx.saved_tensors
        width, height, tile_size, absgrad = ctx.dims
        c_n = means2d.shape[0]
        if v_colors is None:
            v_colors = torch.zeros(c_n, height, width, colors.shape[-1], device=means2d.device)
        if v_alphas is None:
            v_alphas = torch.zeros(c_n, height, width, 1, device=means2d.device)
        v_m, v_q, v_c, v_o, v_abs = rasterize_to_pixels_bwd(
            means2d, conics, colors, opacities, backgrounds, offsets, flat_ids, width, height, tile_size, trans,
            last_ids, v_colors, v_alphas, absgrad, records,
        )
        if absgrad:
            means2d.absgrad = v_abs  # AbsGS densification statistic, like gsplat
        v_bg = None
        if backgrounds is not None and ctx.needs_input_grad[4]:
            v_bg = (v_colors.float() * trans[..., None]).sum(dim=(1, 2))
        return v_m, v_q, v_c, v_o, v_bg, None, None, None, None, None, None, None


def rasterize_to_pixels(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    backgrounds: torch.Tensor | None,
    depths: torch.Tensor,
    isect_offsets: torch.Tensor,
    flatten_ids: torch.Tensor,
    width: int,
    height: int,
    tile_size: int,
    absgrad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Differentiable compositing of C images: (C, H, W, D) colours, (C, H, W, 1) alphas, (C, H, W, 1) median
    depths (the depth at which the accumulated alpha first reaches 0.5, 0 where it never does; no gradient).

    means2d, conics, colors (C, N, D), opacities, depths: per camera and Gaussian, as projected; isect_offsets
    and flatten_ids from :func:`sparse3d.kernels.gaussian_tiles.intersect_tiles`; backgrounds (C, D) or None.
    With ``absgrad``, the backward stores the per-Gaussian sum of |dL/dmeans2d| over pixels as
    ``means2d.absgrad`` (the AbsGS densification statistic, as gsplat does).
    """
    return _RasterizeToPixels.apply(
        means2d, conics, colors, opacities, backgrounds, depths, isect_offsets, flatten_ids, width, height,
        tile_size, absgrad,
    )
