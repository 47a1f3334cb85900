"""Tile-based Gaussian splatting rasterizer in Warp: tile intersection, per-tile ranges, compositing fwd/bwd.

Semantics follow gsplat 1.5.3 (``IntersectTile.cu``, ``RasterizeToPixels3DGS{Fwd,Bwd}.cu``); design note
``sparse_view_gs.md`` section 4. Projection is :mod:`sparse3d.kernels.gaussian_projection`; compositing only
sees the projected 2-D Gaussians, flattened over cameras as ``flat = camera * N + gaussian``.

* Intersections: one (key, flat id) pair per (Gaussian, touched tile); ``key = camera << (32 + tile_bits) |
  tile << 32 | bits(depth)`` where ``bits`` is the raw IEEE-754 pattern of the float32 depth (monotone for
  positive floats; a numeric cast would truncate and mis-order Gaussians with close depths). A stable
  ``torch.sort`` orders them by (camera, tile, depth, Gaussian id), so each tile's list is one contiguous run.
* Records: everything compositing reads about a Gaussian (mean, conic, opacity, colour, depth, the pixel box of
  its alpha >= 1/255 footprint) sits in one 64-byte row, since a tile's list visits Gaussians in random memory
  order (:func:`_records_kernel`).
* Compositing: one thread per tile, reading the tile's depth-sorted list once. Each Gaussian touches only the
  tile rows of its box and, per row, the pixels inside its ellipse (an exact float64 span with a safety
  margin), so the work is proportional to the splats' footprints rather than to (list length x 256); per pixel
  the arithmetic and its order are those of gsplat's per-pixel loop. Tiles are dealt round-robin to
  ``num_parts`` CPU threads (:func:`runtime.launch_partitioned`). The backward writes gradients per
  INTERSECTION (each belongs to one tile, so no two threads write the same place and no atomics are needed,
  on CPU or CUDA) and ``index_add_`` sums them per Gaussian.
* SH colours (:func:`sh_colors_fwd` / :func:`sh_colors_bwd`): one thread per Gaussian over all cameras, the same
  basis as ``sparse3d.render.gaussians.eval_sh_colors``, with a hand-written vector-Jacobian product.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import warp as wp

from sparse3d.kernels.runtime import (
    check_same_device,
    check_tensor,
    cpu_threads,
    launch,
    launch_partitioned,
    to_wp,
    wp_device,
)

wp.set_module_options({"enable_backward": False, "optimization_level": 3})

ALPHA_MIN = wp.constant(1.0 / 255.0)
ALPHA_MAX = wp.constant(0.999)
T_STOP = wp.constant(1.0e-4)
LOCAL_CH = wp.constant(4)
"""Images with at most this many channels (RGB + depth) run the per-pixel channel loops with this constant
bound, which Warp unrolls; a loop bounded by the runtime channel count made each pixel visit ~15 % slower."""
SPAN_MIN_COLS = wp.constant(8)
"""Rows of a box narrower than this are scanned whole: the exact float64 row span (a square root and two
divisions) costs more than the few sigma tests it saves on a small splat; wide splats still get it."""
"""o * exp(-sigma) < 1/255 for any o <= 1 once sigma > ln(255) ~ 5.54: such pairs are skipped before the exp."""


# ------------------------------------------------------------------------------------------ intersection
@wp.func
def _tile_rect(m: wp.vec2, r: wp.vec2i, tile_size: int, tiles_x: int, tiles_y: int) -> wp.vec4i:
    """Tiles touched by the radius box: (x0, y0, x1, y1), min inclusive, max exclusive, clamped to the grid."""
    ts = float(tile_size)
    cx = m[0] / ts
    cy = m[1] / ts
    rx = float(r[0]) / ts
    ry = float(r[1]) / ts
    x0 = wp.clamp(int(wp.floor(cx - rx)), 0, tiles_x)
    y0 = wp.clamp(int(wp.floor(cy - ry)), 0, tiles_y)
    x1 = wp.clamp(int(wp.ceil(cx + rx)), 0, tiles_x)
    y1 = wp.clamp(int(wp.ceil(cy + ry)), 0, tiles_y)
    return wp.vec4i(x0, y0, x1, y1)


@wp.kernel
def _count_tiles_kernel(
    offset: int,
    means2d: wp.array(dtype=wp.vec2),
    radii: wp.array(dtype=wp.vec2i),
    tile_size: int,
    tiles_x: int,
    tiles_y: int,
    counts: wp.array(dtype=wp.int32),
):
    i = wp.tid() + offset
    r = radii[i]
    if r[0] <= 0 or r[1] <= 0:
        counts[i] = 0
        return
    b = _tile_rect(means2d[i], r, tile_size, tiles_x, tiles_y)
    counts[i] = (b[2] - b[0]) * (b[3] - b[1])


@wp.kernel
def _write_isects_kernel(
    offset: int,
    means2d: wp.array(dtype=wp.vec2),
    radii: wp.array(dtype=wp.vec2i),
    depth_keys: wp.array(dtype=wp.int64),
    starts: wp.array(dtype=wp.int64),
    n_per_camera: int,
    tile_size: int,
    tiles_x: int,
    tiles_y: int,
    tile_bits: int,
    keys: wp.array(dtype=wp.int64),
    ids: wp.array(dtype=wp.int32),
):
    i = wp.tid() + offset
    r = radii[i]
    if r[0] <= 0 or r[1] <= 0:
        return
    b = _tile_rect(means2d[i], r, tile_size, tiles_x, tiles_y)
    cam_key = wp.int64(i // n_per_camera) << wp.int64(32 + tile_bits)
    dk = depth_keys[i]
    cur = starts[i]
    for ty in range(b[1], b[3]):
        for tx in range(b[0], b[2]):
            keys[cur] = cam_key | (wp.int64(ty * tiles_x + tx) << wp.int64(32)) | dk
            ids[cur] = i
            cur = cur + wp.int64(1)


@wp.func
def _global_tile(key: wp.int64, tile_bits: int, n_tiles: int) -> int:
    hi = key >> wp.int64(32)
    cam = int(hi >> wp.int64(tile_bits))
    tile = int(hi & ((wp.int64(1) << wp.int64(tile_bits)) - wp.int64(1)))
    return cam * n_tiles + tile


@wp.kernel
def _tile_offsets_kernel(
    offset: int,
    keys: wp.array(dtype=wp.int64),
    n_isects: int,
    tile_bits: int,
    n_tiles: int,
    total_tiles: int,
    offsets: wp.array(dtype=wp.int32),
):
    """offsets[t] = first sorted index of tile t (for an empty tile: that of the next non-empty one)."""
    i = wp.tid() + offset
    # Clamped so that malformed keys can never write outside ``offsets``.
    cur = wp.clamp(_global_tile(keys[i], tile_bits, n_tiles), -1, total_tiles - 1)
    prev = -1
    if i > 0:
        prev = wp.clamp(_global_tile(keys[i - 1], tile_bits, n_tiles), -1, total_tiles - 1)
    for t in range(prev + 1, cur + 1):
        offsets[t] = i
    if i == n_isects - 1:
        for t in range(cur + 1, total_tiles):
            offsets[t] = n_isects


# ------------------------------------------------------------------------------------------ compositing
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
floats (one 64-byte cache line for <= 4 channels), so a tile's walk through its depth-sorted list costs one
memory access per Gaussian rather than one per field (the list visits Gaussians in random memory order)."""


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
def _box_in_tile(records: wp.array2d(dtype=wp.float32), g: int, row0: int, row1: int, col0: int,
                 col1: int) -> wp.vec4i:
    """(first row, last row, first column, last column) of Gaussian ``g``'s pixel box inside the tile (rows
    [row0, row1), columns [col0, col1)); empty when first > last."""
    return wp.vec4i(
        wp.max(row0, int(records[g, REC_BOX + 1])), wp.min(row1 - 1, int(records[g, REC_BOX + 3])),
        wp.max(col0, int(records[g, REC_BOX])), wp.min(col1 - 1, int(records[g, REC_BOX + 2])),
    )


@wp.func
def _fwd_channel(k: int, pix: int, g: int, w: float, records: wp.array2d(dtype=wp.float32),
                 out_colors: wp.array2d(dtype=wp.float32)):
    """Channel ``k`` of one front-to-back step: out += colour * alpha * T."""
    out_colors[pix, k] = out_colors[pix, k] + records[g, REC_COLOR + k] * w


@wp.func
def _bwd_channel(k: int, pix: int, idx: int, g: int, fac: float, trans: float, ra: float,
                 records: wp.array2d(dtype=wp.float32), v_out_colors: wp.array2d(dtype=wp.float32),
                 v_colors: wp.array2d(dtype=wp.float32), buffer: wp.array2d(dtype=wp.float32)) -> float:
    """Channel ``k`` of one back-to-front step: the colour gradient of intersection ``idx``, the running sum of
    the colours behind (``buffer``), and this channel's share of d(loss)/d(alpha)."""
    v_c = v_out_colors[pix, k]
    c = records[g, REC_COLOR + k]
    v_colors[idx, k] = v_colors[idx, k] + fac * v_c
    v_alpha = (c * trans - buffer[pix, k] * ra) * v_c
    buffer[pix, k] = buffer[pix, k] + c * fac
    return v_alpha


@wp.kernel
def _raster_fwd_kernel(
    part: int,
    n_parts: int,
    records: wp.array2d(dtype=wp.float32),
    flatten_ids: wp.array(dtype=wp.int32),
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
    front-to-back per-pixel loop's (design note 4.3): the box and row spans only skip pixels whose alpha is
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
        g = int(flatten_ids[idx])
        rc = _box_in_tile(records, g, row0, row1, col0, col1)
        r0 = rc[0]
        r1 = rc[1]
        cl = rc[2]
        ch = rc[3]
        if r0 > r1 or cl > ch:
            continue
        m = wp.vec2(records[g, REC_MEAN], records[g, REC_MEAN + 1])
        q = wp.vec3(records[g, REC_CONIC], records[g, REC_CONIC + 1], records[g, REC_CONIC + 2])
        o = records[g, REC_OPACITY]
        s_max = records[g, REC_SIGMA_MAX]
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
                            _fwd_channel(k, pix, g, w, records, out_colors)
                else:
                    for k in range(n_ch):
                        _fwd_channel(k, pix, g, w, records, out_colors)
                if trans > 0.5 and next_t <= 0.5:
                    median[pix] = records[g, REC_DEPTH]
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
    flatten_ids: wp.array(dtype=wp.int32),
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
    """One thread per tile, back to front over each pixel's contributors (ids <= last_ids), note 4.4 formulas.

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
        g = int(flatten_ids[idx])
        rc = _box_in_tile(records, g, row0, row1, col0, col1)
        r0 = rc[0]
        r1 = rc[1]
        cl = rc[2]
        ch = rc[3]
        if r0 > r1 or cl > ch:
            continue
        m = wp.vec2(records[g, REC_MEAN], records[g, REC_MEAN + 1])
        q = wp.vec3(records[g, REC_CONIC], records[g, REC_CONIC + 1], records[g, REC_CONIC + 2])
        o = records[g, REC_OPACITY]
        s_max = records[g, REC_SIGMA_MAX]
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
                            v_alpha += _bwd_channel(k, pix, idx, g, fac, trans, ra, records, v_out_colors, v_colors,
                                                    buffer)
                else:
                    for k in range(n_ch):
                        v_alpha += _bwd_channel(k, pix, idx, g, fac, trans, ra, records, v_out_colors, v_colors,
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


# ------------------------------------------------------------------------------------------ SH colours
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


# ------------------------------------------------------------------------------------------ torch API
class Intersections(NamedTuple):
    tiles_per_gauss: torch.Tensor  # (C, N) int32
    isect_ids: torch.Tensor  # (M,) int64, sorted
    flatten_ids: torch.Tensor  # (M,) int32, index into the flattened C * N
    isect_offsets: torch.Tensor  # (C, tiles_y, tiles_x) int32


class RasterOutputs(NamedTuple):
    colors: torch.Tensor  # (C, H, W, D)
    alphas: torch.Tensor  # (C, H, W, 1)
    transmittance: torch.Tensor  # (C, H, W) final T (kept separately: 1 - alpha loses precision near T = 0)
    last_ids: torch.Tensor  # (C, H, W) int32 index of the last contributing intersection, -1 if none
    median_depths: torch.Tensor  # (C, H, W, 1)
    records: torch.Tensor  # (C * N, record_width) per-Gaussian records; pass to the backward to skip rebuilding


def tile_bits_for(n_tiles: int) -> int:
    """floor(log2(n_tiles)) + 1 bits for the tile id in a key (gsplat's rule)."""
    return int(n_tiles).bit_length()


def _check_projected(means2d: torch.Tensor, **others: torch.Tensor) -> tuple[int, int]:
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


def intersect_tiles(
    means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor, tile_size: int, tiles_x: int, tiles_y: int
) -> Intersections:
    """(Gaussian, tile) pairs sorted by (camera, tile, depth, id), and each tile's start offset."""
    c_n, n = _check_projected(means2d, radii=radii, depths=depths)
    check_tensor("radii", radii, torch.int32, ndim=3, last_dim=2)
    check_tensor("depths", depths, torch.float32, ndim=2)
    n_tiles = tiles_x * tiles_y
    tile_bits, cam_bits = tile_bits_for(n_tiles), int(c_n).bit_length()
    if tile_bits + cam_bits > 32:
        raise ValueError(f"{c_n} cameras x {n_tiles} tiles do not fit the 32 key bits above the depth")
    dev = means2d.device
    flat_m = means2d.reshape(-1, 2).contiguous()
    flat_r = radii.reshape(-1, 2).contiguous()
    counts = torch.empty(c_n * n, dtype=torch.int32, device=dev)
    wdev = wp_device(means2d)
    m_wp, r_wp = to_wp(flat_m, wp.vec2), to_wp(flat_r, wp.vec2i)
    launch(_count_tiles_kernel, c_n * n, [m_wp, r_wp, tile_size, tiles_x, tiles_y, to_wp(counts)], wdev)
    cum = torch.cumsum(counts, 0, dtype=torch.int64)
    n_isects = int(cum[-1]) if cum.numel() else 0
    if n_isects >= 2**31:
        raise ValueError(f"{n_isects} tile intersections exceed the int32 offset range; lower the resolution")
    starts = (cum - counts).contiguous()
    # Raw float32 bit pattern, zero-extended: monotone in the depth for positive floats.
    depth_keys = (depths.reshape(-1).contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF).contiguous()
    keys = torch.empty(n_isects, dtype=torch.int64, device=dev)
    ids = torch.empty(n_isects, dtype=torch.int32, device=dev)
    if n_isects:
        launch(
            _write_isects_kernel,
            c_n * n,
            [m_wp, r_wp, to_wp(depth_keys), to_wp(starts), n, tile_size, tiles_x, tiles_y, tile_bits,
             to_wp(keys), to_wp(ids)],
            wdev,
        )
    keys_sorted, perm = torch.sort(keys, stable=True)
    ids_sorted = ids[perm].contiguous()
    offsets = tile_offsets(keys_sorted, c_n, tiles_x, tiles_y)
    return Intersections(counts.reshape(c_n, n), keys_sorted, ids_sorted, offsets)


def tile_offsets(isect_ids: torch.Tensor, n_cameras: int, tiles_x: int, tiles_y: int) -> torch.Tensor:
    """(C, tiles_y, tiles_x) int32 start of each tile's run in the sorted intersection list."""
    check_tensor("isect_ids", isect_ids, torch.int64, ndim=1)
    n_tiles = tiles_x * tiles_y
    total = n_cameras * n_tiles
    offsets = torch.zeros(total, dtype=torch.int32, device=isect_ids.device)
    m = isect_ids.shape[0]
    if m:
        launch(
            _tile_offsets_kernel,
            m,
            [to_wp(isect_ids.contiguous()), m, tile_bits_for(n_tiles), n_tiles, total, to_wp(offsets)],
            wp_device(isect_ids),
        )
    return offsets.reshape(n_cameras, tiles_y, tiles_x)


def _build_records(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    colors: torch.Tensor,
    opacities: torch.Tensor,
    depths: torch.Tensor | None,
    width: int,
    height: int,
    shape: tuple[int, int],
) -> torch.Tensor:
    """Every Gaussian's compositing record (:func:`_records_kernel`); depth 0 when ``depths`` is None."""
    dev = means2d.device
    records = torch.empty(shape, dtype=torch.float32, device=dev)
    d = depths if depths is not None else torch.zeros(1, dtype=torch.float32, device=dev)
    n_ch = colors.shape[-1]
    launch(
        _records_kernel, shape[0],
        [to_wp(means2d.detach().reshape(-1, 2).contiguous(), wp.vec2),
         to_wp(conics.detach().reshape(-1, 3).contiguous(), wp.vec3),
         to_wp(opacities.detach().reshape(-1).contiguous()), to_wp(d.detach().reshape(-1).contiguous()),
         int(depths is not None), to_wp(colors.detach().reshape(-1, n_ch).contiguous()), width, height,
         to_wp(records)],
        wp_device(means2d),
    )
    return records


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
    """Validate the compositing inputs and build every Gaussian's record (:func:`_records_kernel`)."""
    c_n, n = _check_projected(means2d, conics=conics, colors=colors, opacities=opacities, depths=depths)
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
    shape = (c_n * n, record_width(n_ch))
    if records is not None:  # built by the forward pass of the same inputs
        check_tensor("records", records, torch.float32, ndim=2)
        if tuple(records.shape) != shape:
            raise ValueError(f"records must have shape {shape}, got {tuple(records.shape)}")
    else:
        records = _build_records(means2d, conics, colors, opacities, depths, width, height, shape)
    tiles_y, tiles_x = isect_offsets.shape[1], isect_offsets.shape[2]
    dim = c_n * tiles_y * tiles_x  # one thread per tile
    return {
        "c_n": c_n,
        "n": n,
        "n_ch": n_ch,
        "gaussians": [to_wp(records), to_wp(flatten_ids.contiguous()), n_ch],
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
    """Front-to-back compositing of every pixel (no autograd; see ``rasterize_gaussians`` for that)."""
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
