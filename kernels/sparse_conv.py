"""Sparse convolution on a kernel map, with a hand-written backward.

``out[o] = sum_k x[nbr[o, k]] @ W[k]`` over the active entries of the map (a 3x3x3 submanifold conv on LiDAR
voxels touches ~40 % of its 27 neighbours). Three implementations of the same sum:

* **Warp, tiled, on the CPU** (input channels in multiples of 16, output channels of :data:`LANES`): the map's
  active pairs are grouped once per map into :class:`ConvTiles` -- per block of 256 output rows, per offset,
  tiles of 8 pairs (:func:`conv_tiles`, cached on the kernel map). One thread owns a block and a 32- or 16-channel
  slice: per tile it keeps 8 rows' sums in registers while each weight row is loaded once for all 8, then adds
  them to the block's output rows, which stay in cache. A block's rows have one writer, so the split over cores
  needs no atomics and the sums do not depend on thread scheduling. Whether it beats the output-stationary
  kernel below depends on the CPU; the measurements are in BENCHMARKS.md (kernels suite).
* **Warp, output-stationary** (CUDA, and other input channel counts on the CPU): one thread owns two
  neighbouring output rows and one slice, keeps the slice's sums in registers and walks the rows' neighbour
  lists; when both rows are active at an offset, each weight row is loaded once for both. No scatter, no atomics.
* Backward to the features is the same convolution on the transposed map with transposed weights
  (``grad_x[i] = sum_k grad[nbr_t[i, k]] @ W[k]^T``), with the transpose's own tiles on the CPU.
* **Weight gradient** ``grad_W[k] = x[in_k]^T @ grad[out_k]``, a reduction over each offset's pairs: on the CPU
  (input channels in multiples of :data:`WGRAD_ROWS`, output channels of :data:`LANES`) a Warp kernel in which
  one thread sums a chunk of one offset's pairs for an 8-channel x 16/32-lane block in registers, the chunks'
  partial sums then added per offset (:func:`_weight_grad_kernel`), the identity offset of a submanifold map
  included.
* **torch gather -> GEMM -> scatter per offset** over the map's pair lists, in cache-sized blocks: the other
  channel counts, and the weight gradient on CUDA (where cuBLAS does the reduction well).
The CPU build of spconv (traveller59/spconv) cannot run its convolutions backward; this module trains on the CPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import warp as wp

from sparse3d.kernels.runtime import check_tensor, init, launch, to_wp, wp_device

# -ffp-contract=fast fuses the multiply-adds; 512-bit vectors hold a 16-channel slice in one register where the
# CPU has AVX-512 (elsewhere the flag is ignored). Part of Warp's cache key, so changing it recompiles.
wp.set_module_options(
    {
        "enable_backward": False,
        "optimization_level": 3,
        "cpu_compiler_flags": "-march=native -mprefer-vector-width=512 -ffp-contract=fast"
        " -mllvm=-inline-threshold=9000",
    }
)

LANES = 16
"""The Warp path needs output channels (and, for its backward, input channels) that are a multiple of this."""
_VECS = {n: wp.types.vector(length=n, dtype=wp.float32) for n in (32, 16)}
"""Channel slice per thread, widest first: 32 where it divides (each neighbour row read then feeds twice the
multiply-adds; chosen by benchmark, see BENCHMARKS.md)."""


@wp.func
def _pair_inputs(nbr: wp.array2d(dtype=wp.int32), o0: int, k: int):
    """Input rows that outputs ``o0`` and ``o0 + 1`` read through offset ``k``; -1 where inactive or past the end."""
    i1 = -1
    if o0 + 1 < nbr.shape[0]:
        i1 = nbr[o0 + 1, k]
    return nbr[o0, k], i1


@wp.kernel
def _gather_conv_kernel(
    offset: int,
    x: wp.array2d(dtype=wp.float32),
    w: wp.array3d(dtype=Any),
    nbr: wp.array2d(dtype=wp.int32),
    out: wp.array2d(dtype=Any),
):
    """out[o, j] = sum_k x[nbr[o, k]] @ w[k][:, j] for output rows o0 = 2t, o1 = 2t + 1 and channel slice j.

    ``w`` is (K, C_in, C_out / L) and ``out`` (M_out, C_out / L) of L-float vectors. Each (row, slice) has one
    writer.
    """
    e = wp.tid() + offset
    slices = out.shape[1]
    pair = e / slices
    j = e - pair * slices
    o0 = pair * 2
    o1 = o0 + 1
    rows = nbr.shape[0]
    c_in = x.shape[1]
    a = out.dtype()
    b = out.dtype()
    for k in range(nbr.shape[1]):
        i0, i1 = _pair_inputs(nbr, o0, k)
        if i0 >= 0 and i1 >= 0:
            for c in range(c_in):
                wv = w[k, c, j]
                a = a + x[i0, c] * wv
                b = b + x[i1, c] * wv
        elif i0 >= 0:
            for c in range(c_in):
                a = a + x[i0, c] * w[k, c, j]
        elif i1 >= 0:
            for c in range(c_in):
                b = b + x[i1, c] * w[k, c, j]
    out[o0, j] = a
    if o1 < rows:
        out[o1, j] = b


for _v in _VECS.values():
    wp.overload(
        _gather_conv_kernel,
        {
            "offset": int,
            "x": wp.array2d(dtype=wp.float32),
            "w": wp.array3d(dtype=_v),
            "nbr": wp.array2d(dtype=wp.int32),
            "out": wp.array2d(dtype=_v),
        },
    )


TILE_ROWS = 8
"""Pairs per tile of the CPU kernel: 8 output rows x 32 lanes fill 16 512-bit accumulator registers, and each
weight row loaded feeds 8 multiply-adds (with 2 rows per weight load the kernel is bound by loads)."""
TILE_ROWS_C = wp.constant(TILE_ROWS)
TILE_BLOCK_ROWS = 256
"""Output rows owned by one thread of the CPU kernel (their 32-lane sums stay in L1 between tiles)."""


class ConvTiles(NamedTuple):
    """A kernel map's active pairs in tiles of :data:`TILE_ROWS`, grouped by output block, then by offset.

    Tile ``t`` multiplies input rows ``inputs[t]`` by weight ``offsets[t]`` and adds them to output rows
    ``outputs[t]``. Output block ``b`` (rows ``b·block_rows`` up to the next block) owns tiles
    ``b·block_capacity`` up to ``block_ends[b]``: the capacity is the most a block can need, so every block is
    tiled in one pass without a global count (untouched capacity is never paged in). A tile never holds an output
    row twice (an output has at most one input per offset), and a group's last tile is padded with input 0 and
    output ``num_outputs + b``, a scratch row of block ``b`` that the convolution drops.
    """

    inputs: torch.Tensor
    """(num_blocks · block_capacity, TILE_ROWS) int32 input rows."""
    outputs: torch.Tensor
    """(num_blocks · block_capacity, TILE_ROWS) int32 output rows (scratch rows for padding)."""
    offsets: torch.Tensor
    """(num_blocks · block_capacity,) int32 kernel offset of each tile."""
    block_ends: torch.Tensor
    """(num_blocks,) int32 end of each block's tiles."""
    block_capacity: int
    block_rows: int
    num_outputs: int
    max_input: int
    """Largest input row the tiles read (-1 when there are none): checked against the features."""

    @property
    def num_blocks(self) -> int:
        return self.block_ends.shape[0]

    @property
    def num_tiles(self) -> int:
        """Tiles in use (the padding of each group's last tile included)."""
        starts = torch.arange(self.num_blocks, dtype=torch.int64, device=self.block_ends.device) * self.block_capacity
        return int((self.block_ends.to(torch.int64) - starts).sum())


@wp.kernel
def _tile_fill_kernel(
    offset: int,
    nbr: wp.array2d(dtype=wp.int32),
    block_rows: int,
    block_capacity: int,
    inputs: wp.array(dtype=wp.int32),
    outputs: wp.array(dtype=wp.int32),
    tile_offsets: wp.array(dtype=wp.int32),
    block_ends: wp.array(dtype=wp.int32),
    block_max: wp.array(dtype=wp.int32),
):
    """Tile output block b: per offset, its active rows in ascending order, the last tile padded.

    Offset-major within the block: the block's map rows (27 offsets x 256 rows, 27 KB) stay in L1 while each
    column is walked, and the slot cursor stays in a register (chosen by benchmark over a row-major walk with one
    cursor per offset in memory). Each block has one writer and is filled in ascending row order, so the tiles
    do not depend on thread scheduling.
    """
    b = wp.tid() + offset
    m = nbr.shape[0]
    o_end = wp.min(b * block_rows + block_rows, m)
    t = b * block_capacity
    top = int(-1)  # noqa: UP018 -- a Warp variable (a bare literal would be a constant)
    for k in range(nbr.shape[1]):
        s = t * TILE_ROWS_C
        for o in range(b * block_rows, o_end):
            i = nbr[o, k]
            if i >= 0:
                inputs[s] = i
                outputs[s] = o
                s += 1
                top = wp.max(top, i)
        t_end = (s + TILE_ROWS_C - 1) / TILE_ROWS_C
        for r in range(s, t_end * TILE_ROWS_C):
            inputs[r] = 0
            outputs[r] = m + b
        for u in range(t, t_end):
            tile_offsets[u] = k
        t = t_end
    block_ends[b] = t
    block_max[b] = top


def conv_tiles(nbr: torch.Tensor, block_rows: int = TILE_BLOCK_ROWS) -> ConvTiles:
    """Tile the active entries of an (M_out, K) int32 kernel map for :func:`gather_conv` on the CPU.

    One pass, one thread per output block. Build it once per map and share it between the layers on that map:
    :class:`~sparse3d.kernels.kernel_map_types.KernelMap` caches it (its cost is the ``conv tiles`` row of
    BENCHMARKS.md).
    """
    check_tensor("nbr", nbr, torch.int32, ndim=2)
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    nbr = nbr.contiguous()
    m, num_k = nbr.shape
    nb = (m + block_rows - 1) // block_rows
    capacity = num_k * ((block_rows + TILE_ROWS - 1) // TILE_ROWS)
    inputs = torch.empty(nb * capacity, TILE_ROWS, dtype=torch.int32, device=nbr.device)
    outputs = torch.empty_like(inputs)
    tile_offsets = torch.empty(nb * capacity, dtype=torch.int32, device=nbr.device)
    block_ends = torch.empty(nb, dtype=torch.int32, device=nbr.device)
    block_max = torch.full((nb,), -1, dtype=torch.int32, device=nbr.device)
    if nb and num_k:
        launch(_tile_fill_kernel, nb, [to_wp(nbr), block_rows, capacity, to_wp(inputs.view(-1)),
                                       to_wp(outputs.view(-1)), to_wp(tile_offsets), to_wp(block_ends),
                                       to_wp(block_max)], wp_device(nbr), min_split=2)
    else:
        block_ends.copy_(torch.arange(nb, dtype=torch.int32, device=nbr.device) * capacity)
    max_input = int(block_max.max()) if nb else -1
    return ConvTiles(inputs, outputs, tile_offsets, block_ends, capacity, block_rows, m, max_input)


_ROWS16 = {n: wp.types.matrix(shape=(16, n), dtype=wp.float32) for n in _VECS}
"""16 consecutive input channels of one output slice of a weight: ``w[q]`` is input channel q's row."""
_X16 = wp.types.vector(length=16, dtype=wp.float32)


@wp.kernel
def _tiled_conv_kernel(
    offset: int,
    x: wp.array2d(dtype=_X16),
    w: wp.array2d(dtype=Any),
    tile_inputs: wp.array2d(dtype=wp.int32),
    tile_outputs: wp.array2d(dtype=wp.int32),
    tile_offsets: wp.array(dtype=wp.int32),
    block_ends: wp.array(dtype=wp.int32),
    block_capacity: int,
    block_rows: int,
    num_rows: int,
    out: wp.array2d(dtype=Any),
):
    """The CPU convolution over :class:`ConvTiles`: one thread owns one output block and one channel slice.

    ``x`` is (M_in, C_in / 16) 16-float vectors, ``w`` (K · C_in / 16, C_out / L) 16 x L matrices (input
    channel q of the block is row q) and ``out`` (num_rows + num_blocks, C_out / L). Per tile the 8 rows' sums
    stay in registers while the weight block is read once, then are added to the block's output rows, which
    stay in cache. Reading the weights as one matrix lets the compiler address its 16 rows at constant offsets
    from one pointer.
    """
    e = wp.tid() + offset
    slices = out.shape[1]
    b = e / slices
    j = e - b * slices
    blocks = x.shape[1]
    zero = out.dtype()
    for o in range(b * block_rows, wp.min(b * block_rows + block_rows, num_rows)):
        out[o, j] = zero
    out[num_rows + b, j] = zero
    for t in range(b * block_capacity, block_ends[b]):
        kb = tile_offsets[t] * blocks
        q0 = tile_inputs[t, 0]
        q1 = tile_inputs[t, 1]
        q2 = tile_inputs[t, 2]
        q3 = tile_inputs[t, 3]
        q4 = tile_inputs[t, 4]
        q5 = tile_inputs[t, 5]
        q6 = tile_inputs[t, 6]
        q7 = tile_inputs[t, 7]
        a0 = out.dtype()
        a1 = out.dtype()
        a2 = out.dtype()
        a3 = out.dtype()
        a4 = out.dtype()
        a5 = out.dtype()
        a6 = out.dtype()
        a7 = out.dtype()
        for cb in range(blocks):
            x0 = x[q0, cb]
            x1 = x[q1, cb]
            x2 = x[q2, cb]
            x3 = x[q3, cb]
            x4 = x[q4, cb]
            x5 = x[q5, cb]
            x6 = x[q6, cb]
            x7 = x[q7, cb]
            wm = w[kb + cb, j]
            for c in range(16):
                wc = wm[c]
                a0 = a0 + x0[c] * wc
                a1 = a1 + x1[c] * wc
                a2 = a2 + x2[c] * wc
                a3 = a3 + x3[c] * wc
                a4 = a4 + x4[c] * wc
                a5 = a5 + x5[c] * wc
                a6 = a6 + x6[c] * wc
                a7 = a7 + x7[c] * wc
        p = tile_outputs[t, 0]
        out[p, j] = out[p, j] + a0
        p = tile_outputs[t, 1]
        out[p, j] = out[p, j] + a1
        p = tile_outputs[t, 2]
        out[p, j] = out[p, j] + a2
        p = tile_outputs[t, 3]
        out[p, j] = out[p, j] + a3
        p = tile_outputs[t, 4]
        out[p, j] = out[p, j] + a4
        p = tile_outputs[t, 5]
        out[p, j] = out[p, j] + a5
        p = tile_outputs[t, 6]
        out[p, j] = out[p, j] + a6
        p = tile_outputs[t, 7]
        out[p, j] = out[p, j] + a7


for _n, _v in _VECS.items():
    wp.overload(
        _tiled_conv_kernel,
        {
            "offset": int,
            "x": wp.array2d(dtype=_X16),
            "w": wp.array2d(dtype=_ROWS16[_n]),
            "tile_inputs": wp.array2d(dtype=wp.int32),
            "tile_outputs": wp.array2d(dtype=wp.int32),
            "tile_offsets": wp.array(dtype=wp.int32),
            "block_ends": wp.array(dtype=wp.int32),
            "block_capacity": int,
            "block_rows": int,
            "num_rows": int,
            "out": wp.array2d(dtype=_v),
        },
    )


def warp_path(c_out: int) -> bool:
    """Whether a convolution producing ``c_out`` channels runs on the Warp kernel."""
    return c_out > 0 and c_out % LANES == 0


def tiled_path(device: torch.device, c_in: int, c_out: int) -> bool:
    """Whether a ``c_in`` -> ``c_out`` convolution on ``device`` runs :func:`_tiled_conv_kernel` over tiles."""
    return device.type == "cpu" and c_in % 16 == 0 and warp_path(c_out)


def gather_conv(
    x: torch.Tensor, weight: torch.Tensor, nbr: torch.Tensor, tiles: ConvTiles | Callable[[], ConvTiles] | None = None
) -> torch.Tensor:
    """(M_out, C_out) = sum_k x[nbr[:, k]] @ weight[k] on the Warp kernels; C_out must be a multiple of LANES.

    On the CPU, input channels in multiples of 16 run :func:`_tiled_conv_kernel` over ``tiles`` (the map's
    :class:`ConvTiles`, or a callable returning them; built here when None). Elsewhere, and on CUDA, where a
    16 x L matrix per thread would live in spilled registers, the scalar-input :func:`_gather_conv_kernel`.
    """
    m_out, c_out = nbr.shape[0], weight.shape[2]
    lanes = next(n for n in _VECS if c_out % n == 0)
    vec, slices = _VECS[lanes], c_out // lanes
    num_k, c_in = weight.shape[0], weight.shape[1]
    if tiled_path(x.device, c_in, c_out):
        t = tiles() if callable(tiles) else tiles
        if t is None:
            t = conv_tiles(nbr)
        if t.num_outputs != m_out:
            raise ValueError(f"conv tiles are for {t.num_outputs} outputs but the map has {m_out}")
        out = torch.empty(m_out + t.num_blocks, c_out, dtype=torch.float32, device=x.device)
        if m_out == 0:
            return out[:0]
        blocks = c_in // 16
        w = weight.reshape(num_k, blocks, 16, slices, lanes).transpose(2, 3).contiguous()
        args = [
            to_wp(x.contiguous().view(x.shape[0], blocks, 16), dtype=_X16),
            to_wp(w.view(num_k * blocks, slices, 16, lanes), dtype=_ROWS16[lanes]),
            to_wp(t.inputs), to_wp(t.outputs), to_wp(t.offsets), to_wp(t.block_ends), t.block_capacity, t.block_rows,
            m_out,
            to_wp(out.view(out.shape[0], slices, lanes), dtype=vec),
        ]
        launch(_tiled_conv_kernel, t.num_blocks * slices, args, wp_device(x), min_split=2)
        return out[:m_out]
    out = torch.empty(m_out, c_out, dtype=torch.float32, device=x.device)
    if m_out == 0:
        return out
    out_wp = to_wp(out.view(m_out, slices, lanes), dtype=vec)
    w = weight.reshape(num_k, c_in, slices, lanes).contiguous()
    dim = (m_out + 1) // 2 * slices
    launch(_gather_conv_kernel, dim, [to_wp(x), to_wp(w, dtype=vec), to_wp(nbr), out_wp], wp_device(x))
    return out


class PairLists(NamedTuple):
    """Active (input, output) pairs of a kernel map grouped by offset: offset k owns ``starts[k]:starts[k+1]``."""

    inputs: torch.Tensor
    """(P,) int64 input rows."""
    outputs: torch.Tensor
    """(P,) int64 output rows."""
    starts: list[int]
    """K + 1 offsets into the pair arrays."""
    identity: int
    """Offset whose pairs are exactly (o, o) for every output (a submanifold centre), or -1."""


def pair_lists(nbr: torch.Tensor, num_inputs: int, identity: int = -1) -> PairLists:
    """Group the active entries of an (M_out, K) kernel map by offset.

    ``identity`` names an offset known to map every output onto the same input row (the centre of a
    submanifold kernel); it is checked, and its pairs are then skipped by the convolution.
    """
    m, num_k = nbr.shape
    cols = nbr.t().contiguous().view(-1)  # offset-major, so the nonzero scan yields pairs grouped by offset
    flat = torch.nonzero(cols >= 0).squeeze(1)
    inputs = cols[flat].to(torch.int64)
    outputs = flat % max(m, 1)
    counts = torch.bincount(flat // max(m, 1), minlength=num_k).tolist()
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + int(c))
    if identity >= 0:
        col = nbr[:, identity]
        if m != num_inputs or not torch.equal(col, torch.arange(m, dtype=col.dtype, device=col.device)):
            raise ValueError(f"offset {identity} does not map every output onto itself")
    return PairLists(inputs, outputs, starts, identity)


CHUNK_FLOATS = 2**20
"""Rows are gathered, multiplied and scattered in blocks of at most this many floats (4 MB), reusing two
buffers: the block stays in cache between gather, GEMM and scatter, and no large tensor is allocated (and
page-faulted) per call -- this, not arithmetic, bounds sparse conv speed on a CPU."""


def _blocks(pairs: PairLists, width: int, skip: int):
    """(k, start, stop) blocks over every offset except ``skip``."""
    step = max(1024, CHUNK_FLOATS // max(1, width))
    for k in range(len(pairs.starts) - 1):
        if k == skip:
            continue
        for s in range(pairs.starts[k], pairs.starts[k + 1], step):
            yield k, s, min(s + step, pairs.starts[k + 1])


def _accumulate(src: torch.Tensor, weight: torch.Tensor, gather_idx: torch.Tensor, scatter_idx: torch.Tensor,
                pairs: PairLists, num_out: int, transpose: bool) -> torch.Tensor:
    """Σ_k scatter(gather(src, gather_idx_k) @ W_k) -- or W_k^T when ``transpose`` (backward to inputs)."""
    c_in = src.shape[1]
    c_out = weight.shape[1] if transpose else weight.shape[2]
    ident = pairs.identity
    if ident >= 0:
        out = src @ (weight[ident].t() if transpose else weight[ident])  # centre offset: row o -> row o
    else:
        out = torch.zeros(num_out, c_out, dtype=torch.float32, device=src.device)
    width = max(c_in, c_out)
    step = max(1024, CHUNK_FLOATS // width)
    rows = min(step, pairs.starts[-1])
    gbuf = src.new_empty(rows, c_in)
    pbuf = src.new_empty(rows, c_out)
    for k, s, e in _blocks(pairs, width, ident):
        n = e - s
        w = weight[k].t() if transpose else weight[k]
        torch.index_select(src, 0, gather_idx[s:e], out=gbuf[:n])
        torch.mm(gbuf[:n], w, out=pbuf[:n])
        out.index_add_(0, scatter_idx[s:e], pbuf[:n])
    return out


WGRAD_CHUNK_PAIRS = 2048
"""Pairs per task of :func:`_weight_grad_kernel`: enough to amortise writing a partial sum, few enough that
every offset splits into tasks for all cores."""
WGRAD_ROWS = 8
"""Input channels per task of :func:`_weight_grad_kernel`: 8 rows x 32 lanes of sums fill 16 512-bit registers
(16 rows of 16 lanes, tried too, need a broadcast load per multiply-add; chosen by benchmark)."""
WGRAD_ROWS_C = wp.constant(WGRAD_ROWS)


@wp.kernel
def _weight_grad_kernel(
    offset: int,
    x: wp.array2d(dtype=wp.float32),
    g: wp.array2d(dtype=Any),
    inputs: wp.array(dtype=wp.int64),
    outputs: wp.array(dtype=wp.int64),
    chunk_start: wp.array(dtype=wp.int32),
    chunk_end: wp.array(dtype=wp.int32),
    partial: wp.array3d(dtype=Any),
):
    """partial[c, 8·cb + r, j] = sum over pairs p of chunk c of x[inputs[p], 8·cb + r] · g[outputs[p], j].

    ``x`` is (M_in, C_in) floats, ``g`` (M_out, C_out / L) and ``partial`` (chunks, C_in, C_out / L) of L-float
    vectors. One thread owns one chunk of one offset's pairs, a block of :data:`WGRAD_ROWS` input channels and
    one output slice, and keeps that 8 x L block of the sum in registers: per pair, one multiply-add of the
    pair's gradient slice per input channel. Each (chunk, block, slice) has one writer, so the split over cores
    needs no atomics and the sums do not depend on thread scheduling.
    """
    e = wp.tid() + offset
    blocks = x.shape[1] / WGRAD_ROWS_C
    slices = g.shape[1]
    c = e / (blocks * slices)
    rest = e - c * blocks * slices
    cb = rest / slices
    j = rest - cb * slices
    a0 = g.dtype()
    a1 = g.dtype()
    a2 = g.dtype()
    a3 = g.dtype()
    a4 = g.dtype()
    a5 = g.dtype()
    a6 = g.dtype()
    a7 = g.dtype()
    r = cb * WGRAD_ROWS_C
    for p in range(chunk_start[c], chunk_end[c]):
        i = int(inputs[p])
        gv = g[int(outputs[p]), j]
        a0 = a0 + x[i, r] * gv
        a1 = a1 + x[i, r + 1] * gv
        a2 = a2 + x[i, r + 2] * gv
        a3 = a3 + x[i, r + 3] * gv
        a4 = a4 + x[i, r + 4] * gv
        a5 = a5 + x[i, r + 5] * gv
        a6 = a6 + x[i, r + 6] * gv
        a7 = a7 + x[i, r + 7] * gv
    partial[c, r, j] = a0
    partial[c, r + 1, j] = a1
    partial[c, r + 2, j] = a2
    partial[c, r + 3, j] = a3
    partial[c, r + 4, j] = a4
    partial[c, r + 5, j] = a5
    partial[c, r + 6, j] = a6
    partial[c, r + 7, j] = a7


for _v in _VECS.values():
    wp.overload(
        _weight_grad_kernel,
        {
            "offset": int,
            "x": wp.array2d(dtype=wp.float32),
            "g": wp.array2d(dtype=_v),
            "inputs": wp.array(dtype=wp.int64),
            "outputs": wp.array(dtype=wp.int64),
            "chunk_start": wp.array(dtype=wp.int32),
            "chunk_end": wp.array(dtype=wp.int32),
            "partial": wp.array3d(dtype=_v),
        },
    )


def wgrad_warp_path(device: torch.device, c_in: int, c_out: int) -> bool:
    """Whether the weight gradient of a ``c_in`` -> ``c_out`` convolution on ``device`` runs
    :func:`_weight_grad_kernel` (on the CPU, ``c_in`` a multiple of :data:`WGRAD_ROWS` and ``c_out`` of
    :data:`LANES`); else torch gather + GEMM per offset, which BLAS does well on CUDA."""
    return device.type == "cpu" and c_in > 0 and c_in % WGRAD_ROWS == 0 and warp_path(c_out)


def _weight_grad_warp(feats: torch.Tensor, grad_out: torch.Tensor, pairs: PairLists, grad_w: torch.Tensor) -> None:
    """Add ``sum_pairs x[in]^T grad[out]`` of every offset to ``grad_w`` (K, C_in, C_out).

    The identity offset goes through the kernel like the others: one launch and no torch GEMM, whose OpenMP
    workers would otherwise compete with the kernel's threads (see :func:`~sparse3d.kernels.runtime.serial_torch_ops`).
    """
    starts, ends, owners = [], [], []
    for k in range(len(pairs.starts) - 1):
        for s in range(pairs.starts[k], pairs.starts[k + 1], WGRAD_CHUNK_PAIRS):
            starts.append(s)
            ends.append(min(s + WGRAD_CHUNK_PAIRS, pairs.starts[k + 1]))
            owners.append(k)
    if not starts:
        return
    c_in, c_out = grad_w.shape[1], grad_w.shape[2]
    lanes = next(n for n in _VECS if c_out % n == 0)
    vec, slices = _VECS[lanes], c_out // lanes
    dev = feats.device
    partial = torch.empty(len(starts), c_in, c_out, dtype=torch.float32, device=dev)
    args = [
        to_wp(feats),
        to_wp(grad_out.view(grad_out.shape[0], slices, lanes), dtype=vec),
        to_wp(pairs.inputs),
        to_wp(pairs.outputs),
        to_wp(torch.tensor(starts, dtype=torch.int32, device=dev)),
        to_wp(torch.tensor(ends, dtype=torch.int32, device=dev)),
        to_wp(partial.view(len(starts), c_in, slices, lanes), dtype=vec),
    ]
    launch(_weight_grad_kernel, len(starts) * (c_in // WGRAD_ROWS) * slices, args, wp_device(feats), min_split=2)
    grad_w.index_add_(0, torch.tensor(owners, dtype=torch.int64, device=dev), partial)


class SparseConvFunction(torch.autograd.Function):
    """features (M_in, C_in), weight (K, C_in, C_out), kernel map (nbr, nbr_t) and its pair lists -> (M_out, C_out).

    The ``get_*`` callables return the (possibly cached or lazily built) transpose, pair lists and CPU tiles of
    the map and of its transpose; only the paths that need them call them.
    """

    @staticmethod
    def forward(ctx, features, weight, nbr, get_nbr_t: Callable[[], torch.Tensor],  # type: ignore[override]
                get_pairs: Callable[[], PairLists], get_tiles: Callable[[], ConvTiles],
                get_tiles_t: Callable[[], ConvTiles]):
        feats = features.detach().contiguous()
        w = weight.detach().contiguous()
        if warp_path(w.shape[2]):
            out = gather_conv(feats, w, nbr, get_tiles)
        else:
            pairs = get_pairs()
            out = _accumulate(feats, w, pairs.inputs, pairs.outputs, pairs, nbr.shape[0], False)
        ctx.save_for_backward(feats, w)
        ctx.get_nbr_t = get_nbr_t
        ctx.get_pairs = get_pairs
        ctx.get_tiles_t = get_tiles_t
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        feats, w = ctx.saved_tensors
        get_pairs: Callable[[], PairLists] = ctx.get_pairs
        grad_out = grad_out.contiguous().to(torch.float32)
        grad_feats = grad_w = None
        if ctx.needs_input_grad[0]:
            if warp_path(w.shape[1]):
                grad_feats = gather_conv(grad_out, w.transpose(1, 2), ctx.get_nbr_t(), ctx.get_tiles_t)
            else:
                pairs = get_pairs()
                grad_feats = _accumulate(grad_out, w, pairs.outputs, pairs.inputs, pairs, feats.shape[0], True)
        if ctx.needs_input_grad[1]:
            pairs = get_pairs()
            grad_w = torch.zeros_like(w)
            if wgrad_warp_path(feats.device, w.shape[1], w.shape[2]):
                _weight_grad_warp(feats, grad_out, pairs, grad_w)
                return grad_feats, grad_w, None, None, None, None, None
            if pairs.identity >= 0:
                torch.mm(feats.t(), grad_out, out=grad_w[pairs.identity])
            width = max(w.shape[1], w.shape[2])
            rows = min(max(1024, CHUNK_FLOATS // width), pairs.starts[-1])
            xbuf, gbuf = feats.new_empty(rows, w.shape[1]), feats.new_empty(rows, w.shape[2])
            for k, s, e in _blocks(pairs, width, pairs.identity):
                n = e - s
                torch.index_select(feats, 0, pairs.inputs[s:e], out=xbuf[:n])
                torch.index_select(grad_out, 0, pairs.outputs[s:e], out=gbuf[:n])
                grad_w[k].addmm_(xbuf[:n].t(), gbuf[:n])
        return grad_feats, grad_w, None, None, None, None, None


def sparse_conv(
    features: torch.Tensor,
    weight: torch.Tensor,
    nbr: torch.Tensor,
    nbr_t: torch.Tensor | Callable[[], torch.Tensor],
    pairs: PairLists | Callable[[], PairLists] | None = None,
    tiles: ConvTiles | Callable[[], ConvTiles] | None = None,
    tiles_t: ConvTiles | Callable[[], ConvTiles] | None = None,
) -> torch.Tensor:
    """Apply a sparse convolution given its kernel map (see :mod:`sparse3d.kernels.kernel_map`).

    ``nbr_t`` is the transposed map or a callable returning it (e.g. ``lambda: kmap.nbr_t``, which a submanifold
    map builds on first use): only the feature gradient reads it. ``pairs`` (from :func:`pair_lists`), or a
    callable returning them (e.g. ``lambda: kmap.pairs``, which caches on the map), reuses the grouping across
    layers sharing a map; without it they are built when needed. ``tiles`` and ``tiles_t`` (from
    :func:`conv_tiles` on ``nbr`` and on the transpose, or callables such as ``lambda: kmap.tiles``) do the same
    for the CPU kernel's tiles of the forward and of the feature gradient.
    """
    check_tensor("features", features, torch.float32, ndim=2)
    check_tensor("weight", weight, torch.float32, ndim=3)
    check_tensor("nbr", nbr, torch.int32, ndim=2)
    k, c_in, _ = weight.shape
    if features.shape[1] != c_in:
        raise ValueError(f"features have {features.shape[1]} channels but the weight expects {c_in}")
    if nbr.shape[1] != k:
        raise ValueError(f"kernel map has {nbr.shape[1]} offsets but the weight has {k}")
    num_inputs, num_outputs = features.shape[0], nbr.shape[0]
    # Out-of-range map entries would make a kernel read outside the feature buffer. The tiled CPU kernel reads
    # only its tiles, whose largest input row is checked instead: a torch reduction over the map here would
    # leave OpenMP's worker spinning on a core the kernel needs (cost measured in BENCHMARKS.md, kernels notes).
    fwd_tiled = tiled_path(features.device, c_in, weight.shape[2])
    bwd_tiled = tiled_path(features.device, weight.shape[2], c_in)
    if not fwd_tiled and nbr.numel() and int(nbr.max()) >= num_inputs:
        raise ValueError(f"nbr refers to row {int(nbr.max())} but features have {num_inputs} rows")

    def checked_transpose(t: torch.Tensor) -> torch.Tensor:
        check_tensor("nbr_t", t, torch.int32, ndim=2)
        if t.shape[1] != k:
            raise ValueError(f"transposed map has {t.shape[1]} offsets but the weight has {k}")
        if t.shape[0] != num_inputs:
            raise ValueError(f"transposed map has {t.shape[0]} rows but features have {num_inputs}")
        if not bwd_tiled and t.numel() and int(t.max()) >= num_outputs:
            raise ValueError(f"nbr_t refers to output {int(t.max())} but nbr has {num_outputs} rows")
        return t.contiguous()

    if isinstance(nbr_t, torch.Tensor):
        nbr_t = checked_transpose(nbr_t)
        get_nbr_t: Callable[[], torch.Tensor] = lambda: nbr_t  # noqa: E731
    else:
        build_nbr_t = nbr_t
        get_nbr_t = functools.cache(lambda: checked_transpose(build_nbr_t()))  # the tiles_t build reads it too
    init()
    if isinstance(pairs, PairLists):
        get_pairs: Callable[[], PairLists] = lambda: pairs  # noqa: E731
    elif pairs is not None:
        get_pairs = pairs
    else:
        get_pairs = functools.cache(lambda: pair_lists(nbr, features.shape[0]))

    def checked_tiles(t: ConvTiles, num_outputs: int, num_reads: int, what: str) -> ConvTiles:
        if not isinstance(t, ConvTiles):
            raise ValueError(f"{what} must be ConvTiles (from conv_tiles), got {type(t).__name__}")
        if t.num_outputs != num_outputs or t.max_input >= num_reads:
            raise ValueError(f"{what} are for {t.num_outputs} outputs reading rows up to {t.max_input}, but the map "
                             f"has {num_outputs} outputs over {num_reads} rows")
        return t

    def tiles_getter(given, num_outputs: int, num_reads: int, what: str, source: Callable[[], torch.Tensor]):
        if given is None:
            return functools.cache(lambda: checked_tiles(conv_tiles(source()), num_outputs, num_reads, what))
        if isinstance(given, ConvTiles):
            checked = checked_tiles(given, num_outputs, num_reads, what)
            return lambda: checked
        return lambda: checked_tiles(given(), num_outputs, num_reads, what)

    get_tiles = tiles_getter(tiles, num_outputs, num_inputs, "tiles", lambda: nbr)
    get_tiles_t = tiles_getter(tiles_t, num_inputs, num_outputs, "tiles_t", get_nbr_t)
    return SparseConvFunction.apply(features, weight, nbr.contiguous(), get_nbr_t, get_pairs, get_tiles, get_tiles_t)
