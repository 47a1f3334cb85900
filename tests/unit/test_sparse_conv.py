"""Sparse convolution (per-offset gather-GEMM-scatter, hand-written backward) vs dense ``conv3d`` /
``conv_transpose3d`` evaluated at the active sites (kernels/reference/sparse_conv.py), the per-offset pair lists,
the identity-offset shortcut, argument validation, and a short CPU training run.
"""

from __future__ import annotations

import pytest
import torch

import sparse3d.kernels.sparse_conv as SC
from sparse3d.kernels import kernel_map as KM
from sparse3d.kernels.kernel_map_types import triple
from sparse3d.kernels.reference import sparse_conv as RC
from sparse3d.kernels.sparse_conv import sparse_conv

GRID = (9, 7, 6)  # (X, Y, Z)


# ------------------------------------------------------------------------------------------------ helpers
def occupancy_coords(grid, batch: int, p: float, seed: int) -> torch.Tensor:
    occ = torch.rand(batch, grid[2], grid[1], grid[0], generator=torch.Generator().manual_seed(seed)) < p
    b, z, y, x = torch.nonzero(occ, as_tuple=True)
    c = torch.stack([b, z, y, x], 1).int()
    return c[torch.randperm(c.shape[0], generator=torch.Generator().manual_seed(seed + 1))]


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> None:
    """Max abs error <= tol, relative to the reference's magnitude when that exceeds 1."""
    assert a.shape == b.shape
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    err = float((a - b).abs().max()) if a.numel() else 0.0
    assert err <= tol * scale, f"max error {err} > {tol} * {scale}"


def check_against_oracle(map_, feats, weight, oracle_fn, seed: int, **conv_kwargs) -> None:
    """Values and gradients (features and weight) of sparse_conv vs a differentiable dense oracle."""
    f = feats.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    fr = feats.clone().requires_grad_(True)
    wr = weight.clone().requires_grad_(True)
    out = sparse_conv(f, w, map_.nbr, map_.nbr_t, **conv_kwargs)
    ref = oracle_fn(fr, wr)
    assert out.shape == ref.shape and out.dtype == torch.float32
    close(out, ref)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    gf, gw = torch.autograd.grad(out, (f, w), g)
    gfr, gwr = torch.autograd.grad(ref, (fr, wr), g)
    close(gf, gfr)
    close(gw, gwr)


def rand(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def coords():
    return occupancy_coords(GRID, 2, 0.3, seed=0)


# ------------------------------------------------------------------------------------------------ submanifold
@pytest.mark.parametrize("ks,dil", [(3, 1), (5, 1), (3, 2), ((3, 3, 1), 1), ((1, 3, 5), (1, 2, 1))])
def test_submanifold_conv_vs_dense(coords, ks, dil):
    kt, dt = triple(ks, "k"), triple(dil, "d")
    K = kt[0] * kt[1] * kt[2]
    km = KM.submanifold_map(coords, GRID, ks, dil)
    feats, weight = rand(coords.shape[0], 3, seed=1), rand(K, 3, 4, seed=2) * 0.3
    pad = tuple(k // 2 * d for k, d in zip(kt, dt))
    check_against_oracle(
        km,
        feats,
        weight,
        lambda f, w: RC.conv_at_sites(coords, f, w, GRID, kt, coords, padding=pad, dilation=dt),
        seed=3,
    )


# ---------------------------------------------------------------------------------------- strided and inverse
STRIDED = [(2, 2, 0), (3, 2, 1), ((3, 3, 1), (2, 2, 1), (1, 1, 0)), (3, 1, 1), (2, (1, 2, 3), (0, 1, 1))]


@pytest.mark.parametrize("ks,st,pad", STRIDED)
def test_strided_conv_vs_dense(coords, ks, st, pad):
    kt, stt, pt = triple(ks, "k"), triple(st, "s"), triple(pad, "p")
    K = kt[0] * kt[1] * kt[2]
    km = KM.strided_map(coords, GRID, ks, st, pad)
    feats, weight = rand(coords.shape[0], 3, seed=4), rand(K, 3, 5, seed=5) * 0.3
    check_against_oracle(
        km,
        feats,
        weight,
        lambda f, w: RC.conv_at_sites(coords, f, w, GRID, kt, km.out_coords, stride=stt, padding=pt),
        seed=6,
    )


@pytest.mark.parametrize("ks,st,pad", STRIDED)
def test_inverse_conv_vs_conv_transpose(coords, ks, st, pad):
    kt, stt, pt = triple(ks, "k"), triple(st, "s"), triple(pad, "p")
    K = kt[0] * kt[1] * kt[2]
    fwd = KM.strided_map(coords, GRID, ks, st, pad)
    inv = KM.inverse_map(fwd, coords, GRID)
    feats, weight = rand(fwd.out_coords.shape[0], 4, seed=7), rand(K, 4, 2, seed=8) * 0.3
    check_against_oracle(
        inv,
        feats,
        weight,
        lambda f, w: RC.inverse_conv_at_sites(fwd.out_coords, f, w, fwd.out_grid, kt, stt, pt, coords, GRID),
        seed=9,
    )


def test_hand_computed_submanifold():
    # two neighbouring voxels along x, 1 channel, 1x1x3 kernel (kx = -1, 0, +1) with weights 1, 10, 100
    coords = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.int32)
    km = KM.submanifold_map(coords, (2, 1, 1), (1, 1, 3))
    w = torch.tensor([1.0, 10.0, 100.0]).reshape(3, 1, 1)
    f = torch.tensor([[2.0], [3.0]], requires_grad=True)
    out = sparse_conv(f, w, km.nbr, km.nbr_t)
    # out0 = 10*f0 + 100*f1 ; out1 = 1*f0 + 10*f1  (cross-correlation, like Conv3d)
    assert out.tolist() == [[320.0], [32.0]]
    (g,) = torch.autograd.grad(out.sum(), f)
    assert g.tolist() == [[11.0], [110.0]]


def test_lazy_transpose_is_built_only_for_the_feature_gradient(coords):
    km = KM.submanifold_map(coords, GRID, 3)
    assert km.transposed is None and "nbr_t" not in vars(km)  # a submanifold map defers its transpose
    calls = []

    def nbr_t():
        calls.append(1)
        return km.nbr_t

    feats, weight = rand(coords.shape[0], 16, seed=12), rand(27, 16, 16, seed=13)
    with torch.no_grad():
        sparse_conv(feats, weight, km.nbr, nbr_t)
    w = weight.clone().requires_grad_(True)
    sparse_conv(feats, w, km.nbr, nbr_t).sum().backward()  # weight gradient only: pair lists, no transpose
    assert calls == []
    f = feats.clone().requires_grad_(True)
    (g_lazy,) = torch.autograd.grad(sparse_conv(f, weight, km.nbr, nbr_t).square().sum(), f)
    assert calls == [1]
    (g_eager,) = torch.autograd.grad(sparse_conv(f, weight, km.nbr, km.nbr_t.clone()).square().sum(), f)
    assert torch.equal(g_lazy, g_eager)
    ref = RC.conv_at_sites(coords, f, weight, GRID, (3, 3, 3), coords, padding=1)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), f)
    close(g_lazy, g_ref)
    with pytest.raises(ValueError, match="nbr_t"):  # a bad lazily built transpose is still rejected
        sparse_conv(f, weight, km.nbr, lambda: km.nbr_t.long()).sum().backward()


def test_gradient_only_for_features_or_only_for_weight(coords):
    km = KM.submanifold_map(coords, GRID, 3)
    feats, weight = rand(coords.shape[0], 2, seed=10), rand(27, 2, 3, seed=11)
    ref = lambda f, w: RC.conv_at_sites(coords, f, w, GRID, (3, 3, 3), coords, padding=1)  # noqa: E731
    f = feats.clone().requires_grad_(True)
    (gf,) = torch.autograd.grad(sparse_conv(f, weight, km.nbr, km.nbr_t).square().sum(), f)
    fr = feats.clone().requires_grad_(True)
    (gfr,) = torch.autograd.grad(ref(fr, weight).square().sum(), fr)
    close(gf, gfr)
    w = weight.clone().requires_grad_(True)
    (gw,) = torch.autograd.grad(sparse_conv(feats, w, km.nbr, km.nbr_t).square().sum(), w)
    wr = weight.clone().requires_grad_(True)
    (gwr,) = torch.autograd.grad(ref(feats, wr).square().sum(), wr)
    close(gw, gwr)


def test_empty_input():
    empty = torch.empty(0, 4, dtype=torch.int32)
    km = KM.submanifold_map(empty, GRID, 3)
    f = torch.empty(0, 2, requires_grad=True)
    w = torch.randn(27, 2, 3, requires_grad=True)
    out = sparse_conv(f, w, km.nbr, km.nbr_t)
    assert out.shape == (0, 3)
    gf, gw = torch.autograd.grad(out.sum(), (f, w), allow_unused=True)
    assert gf is None or gf.shape == (0, 2)
    assert gw is None or torch.equal(gw, torch.zeros(27, 2, 3))


# ------------------------------------------------------------------------------------------- Warp kernel path
# Channel counts that are multiples of SC.LANES run the output-stationary Warp kernel (forward when C_out is,
# feature gradient when C_in is); the others take the torch gather-GEMM-scatter path. Mixed pairs test both.
WARP_CHANNELS = [(16, 32), (32, 16), (16, 5), (3, 16), (48, 48)]


@pytest.mark.parametrize("c_in,c_out", WARP_CHANNELS)
def test_warp_path_submanifold_vs_dense(coords, c_in, c_out):
    km = KM.submanifold_map(coords, GRID, 3)
    feats, weight = rand(coords.shape[0], c_in, seed=21), rand(27, c_in, c_out, seed=22) * 0.1
    check_against_oracle(
        km, feats, weight, lambda f, w: RC.conv_at_sites(coords, f, w, GRID, (3, 3, 3), coords, padding=1), seed=23
    )


@pytest.mark.parametrize("c_in,c_out", WARP_CHANNELS[:3])
def test_warp_path_strided_and_inverse_vs_dense(coords, c_in, c_out):
    fwd = KM.strided_map(coords, GRID, 3, 2, 1)
    feats, weight = rand(coords.shape[0], c_in, seed=24), rand(27, c_in, c_out, seed=25) * 0.1
    check_against_oracle(
        fwd, feats, weight,
        lambda f, w: RC.conv_at_sites(coords, f, w, GRID, (3, 3, 3), fwd.out_coords, stride=(2, 2, 2), padding=(1, 1, 1)),
        seed=26,
    )
    inv = KM.inverse_map(fwd, coords, GRID)
    feats, weight = rand(fwd.out_coords.shape[0], c_in, seed=27), rand(27, c_in, c_out, seed=28) * 0.1
    check_against_oracle(
        inv, feats, weight,
        lambda f, w: RC.inverse_conv_at_sites(fwd.out_coords, f, w, fwd.out_grid, (3, 3, 3), (2, 2, 2), (1, 1, 1),
                                              coords, GRID),
        seed=29,
    )


@pytest.mark.parametrize("rows", [1, 2, 3, 7])
def test_warp_path_odd_row_counts_and_isolated_voxels(rows):
    # Threads own row pairs: an odd last row, and rows whose partner row is inactive at an offset, must be exact.
    coords = torch.tensor([[0, 0, 0, 2 * r] for r in range(rows)], dtype=torch.int32)  # isolated along x
    coords[-1, 3] = max(0, coords[-1, 3] - 1)  # the last voxel touches its neighbour (unless rows == 1)
    grid = (2 * rows + 1, 2, 2)
    km = KM.submanifold_map(coords, grid, 3)
    feats, weight = rand(rows, 16, seed=30), rand(27, 16, 16, seed=31) * 0.1
    check_against_oracle(
        km, feats, weight, lambda f, w: RC.conv_at_sites(coords, f, w, grid, (3, 3, 3), coords, padding=1), seed=32
    )


def test_kernel_map_pairs_are_built_lazily_and_cached(coords):
    km = KM.submanifold_map(coords, GRID, 3)
    assert "pairs" not in vars(km)  # the Warp forward reads nbr only
    with torch.no_grad():
        sparse_conv(rand(coords.shape[0], 16, seed=33), rand(27, 16, 16, seed=34), km.nbr, km.nbr_t,
                    pairs=lambda: km.pairs)
    assert "pairs" not in vars(km)
    assert km.pairs is km.pairs and km.pairs.identity == 13


# ------------------------------------------------------------------------------------ CPU tiles of a map
def test_conv_tiles_match_the_reference_layout():
    grid = (12, 10, 8)
    coords = occupancy_coords(grid, 2, 0.3, seed=40)
    sub = KM.submanifold_map(coords, grid, 3)
    strided = KM.strided_map(coords, grid, 3, 2, 1)
    for nbr in (sub.nbr, sub.nbr_t, strided.nbr, strided.nbr_t):
        for block_rows in (1, 5, 64, 100_000):
            t = SC.conv_tiles(nbr, block_rows)
            ref = RC.conv_tiles_reference(nbr, block_rows, SC.TILE_ROWS)
            assert t.num_blocks == len(ref) and t.num_outputs == nbr.shape[0] and t.max_input == int(nbr.max())
            for b, (r_in, r_out, r_k) in enumerate(ref):
                s, e = b * t.block_capacity, int(t.block_ends[b])
                assert e - s == r_k.numel() <= t.block_capacity
                assert torch.equal(t.inputs[s:e].long(), r_in)
                assert torch.equal(t.outputs[s:e].long(), r_out)
                assert torch.equal(t.offsets[s:e].long(), r_k)
            assert t.num_tiles == sum(r[2].numel() for r in ref)


def test_conv_tiles_of_empty_and_fully_inactive_maps():
    t = SC.conv_tiles(torch.empty(0, 27, dtype=torch.int32))
    assert t.num_blocks == 0 and t.num_tiles == 0 and t.max_input == -1
    t = SC.conv_tiles(torch.full((300, 27), -1, dtype=torch.int32), block_rows=128)
    assert t.num_blocks == 3 and t.num_tiles == 0
    out = SC.gather_conv(torch.randn(4, 16), torch.randn(27, 16, 16), torch.full((300, 27), -1, dtype=torch.int32), t)
    assert torch.equal(out, torch.zeros(300, 16))
    with pytest.raises(ValueError, match="block_rows"):
        SC.conv_tiles(torch.zeros(3, 27, dtype=torch.int32), block_rows=0)


TILED_CHANNELS = [(16, 16), (32, 32), (16, 48), (32, 64), (48, 16)]


@pytest.mark.parametrize("c_in,c_out", TILED_CHANNELS)
def test_tiled_kernel_over_many_blocks_vs_dense(c_in, c_out):
    # Small blocks give many blocks, partly filled tiles and padding in every group, forward and backward.
    grid = (12, 10, 8)
    coords = occupancy_coords(grid, 2, 0.35, seed=41)
    km = KM.submanifold_map(coords, grid, 3)
    feats, weight = rand(coords.shape[0], c_in, seed=42), rand(27, c_in, c_out, seed=43) * 0.1
    check_against_oracle(
        km, feats, weight, lambda f, w: RC.conv_at_sites(coords, f, w, grid, (3, 3, 3), coords, padding=1), seed=44,
        tiles=SC.conv_tiles(km.nbr, 5), tiles_t=lambda: SC.conv_tiles(km.nbr_t, 13),
    )
    fwd = KM.strided_map(coords, grid, 3, 2, 1)
    check_against_oracle(
        fwd, feats, weight,
        lambda f, w: RC.conv_at_sites(coords, f, w, grid, (3, 3, 3), fwd.out_coords, stride=(2, 2, 2), padding=(1, 1, 1)),
        seed=45, tiles=SC.conv_tiles(fwd.nbr, 3), tiles_t=SC.conv_tiles(fwd.nbr_t, 9),
    )


def test_tiled_kernel_on_a_fully_occupied_grid():
    # Every neighbour active: full tiles only, and outputs whose 27 inputs span three blocks.
    grid = (6, 5, 4)
    coords = occupancy_coords(grid, 1, 1.01, seed=46)
    km = KM.submanifold_map(coords, grid, 3)
    feats, weight = rand(coords.shape[0], 32, seed=47), rand(27, 32, 32, seed=48) * 0.1
    check_against_oracle(
        km, feats, weight, lambda f, w: RC.conv_at_sites(coords, f, w, grid, (3, 3, 3), coords, padding=1), seed=49,
        tiles=SC.conv_tiles(km.nbr, 40),
    )


def test_kernel_map_tiles_are_built_lazily_and_cached(coords):
    km = KM.submanifold_map(coords, GRID, 3)
    feats, weight = rand(coords.shape[0], 16, seed=50), rand(27, 16, 16, seed=51)
    with torch.no_grad():
        out = sparse_conv(feats, weight, km.nbr, lambda: km.nbr_t, tiles=lambda: km.tiles,
                          tiles_t=lambda: km.tiles_t)
    assert "tiles" in vars(km) and "tiles_t" not in vars(km) and "nbr_t" not in vars(km)
    assert km.tiles is km.tiles
    close(out, RC.conv_at_sites(coords, feats, weight, GRID, (3, 3, 3), coords, padding=1))


def test_tiles_of_another_map_are_rejected(coords):
    km = KM.submanifold_map(coords, GRID, 3)
    n = coords.shape[0]
    f, w = rand(n, 16, seed=52), rand(27, 16, 16, seed=53)
    other = SC.conv_tiles(km.nbr[: n - 1])
    with pytest.raises(ValueError, match="tiles"):
        sparse_conv(f, w, km.nbr, km.nbr_t, tiles=other)
    fewer = torch.where(km.nbr == n - 1, -1, km.nbr)  # the same outputs over one input row less
    with pytest.raises(ValueError, match="tiles"):  # the tiles would read the missing row
        sparse_conv(f[: n - 1], w, fewer, KM.transpose_map(fewer, n - 1), tiles=SC.conv_tiles(km.nbr))
    with pytest.raises(ValueError, match="ConvTiles"):
        sparse_conv(f, w, km.nbr, km.nbr_t, tiles=lambda: km.pairs)
    with pytest.raises(ValueError, match="tiles_t"):
        f2 = f.clone().requires_grad_(True)
        sparse_conv(f2, w, km.nbr, km.nbr_t, tiles_t=other).sum().backward()


# ------------------------------------------------------------------------------------------ weight gradient
# On the CPU the weight gradient runs the Warp reduction kernel when C_in is a multiple of SC.WGRAD_ROWS and
# C_out of SC.LANES (16- and 32-lane slices), else torch gather + GEMM; each path is forced against the oracle.
WGRAD_CHANNELS = [(8, 16), (8, 32), (16, 48), (24, 64), (32, 32)]


def _weight_grad(km, feats, weight, g, **conv_kwargs) -> torch.Tensor:
    w = weight.clone().requires_grad_(True)
    (gw,) = torch.autograd.grad(sparse_conv(feats, w, km.nbr, km.nbr_t, **conv_kwargs), w, g)
    return gw


def _dense_weight_grad(in_coords, feats, weight, g, grid, out_coords, **conv_args) -> torch.Tensor:
    w = weight.clone().requires_grad_(True)
    ref = RC.conv_at_sites(in_coords, feats, w, grid, (3, 3, 3), out_coords, **conv_args)
    (gw,) = torch.autograd.grad(ref, w, g)
    return gw


@pytest.mark.parametrize("force_torch", [False, True])
@pytest.mark.parametrize("c_in,c_out", WGRAD_CHANNELS)
def test_weight_gradient_paths_vs_dense(monkeypatch, c_in, c_out, force_torch):
    assert SC.wgrad_warp_path(torch.device("cpu"), c_in, c_out)
    if force_torch:
        monkeypatch.setattr(SC, "wgrad_warp_path", lambda *args: False)
    grid = (12, 10, 8)
    coords = occupancy_coords(grid, 2, 0.35, seed=60)
    feats, weight = rand(coords.shape[0], c_in, seed=61), rand(27, c_in, c_out, seed=62) * 0.1
    sub = KM.submanifold_map(coords, grid, 3)
    g = rand(coords.shape[0], c_out, seed=63)
    close(_weight_grad(sub, feats, weight, g), _dense_weight_grad(coords, feats, weight, g, grid, coords, padding=1))
    # A strided map has no identity offset: every offset goes through the reduction.
    fwd = KM.strided_map(coords, grid, 3, 2, 1)
    g = rand(fwd.out_coords.shape[0], c_out, seed=64)
    close(_weight_grad(fwd, feats, weight, g),
          _dense_weight_grad(coords, feats, weight, g, grid, fwd.out_coords, stride=(2, 2, 2), padding=(1, 1, 1)))


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_weight_gradient_chunks_split_offsets_anywhere(monkeypatch, chunk):
    # Tiny chunks: many chunks per offset, a partial last chunk in every offset, single-pair chunks.
    monkeypatch.setattr(SC, "WGRAD_CHUNK_PAIRS", chunk)
    grid = (9, 8, 7)
    coords = occupancy_coords(grid, 1, 0.4, seed=65)
    km = KM.submanifold_map(coords, grid, 3)
    feats, weight = rand(coords.shape[0], 16, seed=66), rand(27, 16, 32, seed=67) * 0.1
    g = rand(coords.shape[0], 32, seed=68)
    close(_weight_grad(km, feats, weight, g), _dense_weight_grad(coords, feats, weight, g, grid, coords, padding=1))


def test_weight_gradient_of_isolated_voxels_and_inactive_offsets():
    # Only the centre offset is active (every other offset has no pair), and a map that is entirely inactive.
    coords = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 4], [0, 4, 4, 0]], dtype=torch.int32)
    grid = (6, 6, 6)
    km = KM.submanifold_map(coords, grid, 3)
    feats, weight, g = rand(3, 8, seed=69), rand(27, 8, 16, seed=70), rand(3, 16, seed=71)
    gw = _weight_grad(km, feats, weight, g)
    expected = torch.zeros(27, 8, 16)
    expected[13] = feats.t() @ g
    close(gw, expected, 1e-5)
    empty = torch.full((3, 27), -1, dtype=torch.int32)
    w = weight.clone().requires_grad_(True)
    out = sparse_conv(feats, w, empty, KM.transpose_map(empty, 3))
    (gw,) = torch.autograd.grad(out, w, g)
    assert torch.equal(gw, torch.zeros(27, 8, 16))


def test_weight_gradient_of_a_large_map_matches_the_torch_path(monkeypatch):
    # Offsets with thousands of pairs (several default chunks each); the torch path is the reference here.
    grid = (40, 40, 12)
    coords = occupancy_coords(grid, 1, 0.3, seed=72)
    km = KM.submanifold_map(coords, grid, 3)
    assert max(b - a for a, b in zip(km.pairs.starts, km.pairs.starts[1:])) > 2 * SC.WGRAD_CHUNK_PAIRS
    feats, weight = rand(coords.shape[0], 32, seed=73), rand(27, 32, 32, seed=74) * 0.1
    g = rand(coords.shape[0], 32, seed=75)
    warp = _weight_grad(km, feats, weight, g, pairs=km.pairs)
    monkeypatch.setattr(SC, "wgrad_warp_path", lambda *args: False)
    close(warp, _weight_grad(km, feats, weight, g, pairs=km.pairs), 1e-5)


# ---------------------------------------------------------------------------------------------------- chunks
def test_pair_lists_group_active_entries_by_offset():
    grid = (12, 10, 8)
    coords = occupancy_coords(grid, 2, 0.3, seed=12)
    km = KM.submanifold_map(coords, grid, 3)
    pairs = SC.pair_lists(km.nbr, coords.shape[0], identity=13)
    assert km.pairs.identity == 13  # the centre of a 3x3x3 kernel maps every voxel onto itself
    assert km.pairs.starts == pairs.starts and torch.equal(km.pairs.inputs, pairs.inputs)
    with pytest.raises(ValueError, match="offset 12"):
        SC.pair_lists(km.nbr, coords.shape[0], identity=12)
    assert pairs.starts[0] == 0 and pairs.starts[-1] == int((km.nbr >= 0).sum())
    for k in range(27):
        s, e = pairs.starts[k], pairs.starts[k + 1]
        expected_out = torch.nonzero(km.nbr[:, k] >= 0).flatten()
        assert torch.equal(pairs.outputs[s:e].long(), expected_out)
        assert torch.equal(pairs.inputs[s:e], km.nbr[expected_out, k].long())
        assert pairs.outputs[s:e].unique().numel() == e - s  # no output repeats within an offset
    strided = KM.strided_map(coords, grid, 2, 2)
    assert SC.pair_lists(strided.nbr, coords.shape[0]).identity == -1


def test_precomputed_pairs_and_identity_path_match_oracle():
    grid = (20, 16, 16)
    coords = occupancy_coords(grid, 1, 0.5, seed=12)
    km = KM.submanifold_map(coords, grid, 3)
    feats, weight = rand(coords.shape[0], 4, seed=13), rand(27, 4, 3, seed=14) * 0.2
    g = rand(coords.shape[0], 3, seed=15)
    pairs = km.pairs
    no_identity = pairs._replace(identity=-1)  # forces the gather/scatter path for the centre offset too

    def run(p):
        f = feats.clone().requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        out = sparse_conv(f, w, km.nbr, km.nbr_t, pairs=p)
        return (out.detach(), *torch.autograd.grad(out, (f, w), g))

    with_id, without_id, default = run(pairs), run(no_identity), run(None)
    for a, b, c in zip(with_id, without_id, default):
        close(a, b, 1e-5)
        close(a, c, 1e-5)
    ref = RC.conv_at_sites(coords, feats, weight, grid, (3, 3, 3), coords, padding=1)
    close(with_id[0], ref)


# ---------------------------------------------------------------------------------------------------- errors
def test_sparse_conv_errors(coords):
    km = KM.submanifold_map(coords, GRID, 3)
    n = coords.shape[0]
    f, w = torch.randn(n, 3), torch.randn(27, 3, 4)
    with pytest.raises(ValueError, match="features"):
        sparse_conv(f.double(), w, km.nbr, km.nbr_t)
    with pytest.raises(ValueError, match="features"):
        sparse_conv(f[:, 0].contiguous(), w, km.nbr, km.nbr_t)
    with pytest.raises(ValueError, match="weight"):
        sparse_conv(f, w.reshape(27, 12), km.nbr, km.nbr_t)
    with pytest.raises(ValueError, match="weight"):
        sparse_conv(f, w.double(), km.nbr, km.nbr_t)
    with pytest.raises(ValueError, match="nbr"):
        sparse_conv(f, w, km.nbr.long(), km.nbr_t)
    with pytest.raises(ValueError, match="nbr_t"):
        sparse_conv(f, w, km.nbr, km.nbr_t.long())
    with pytest.raises(ValueError, match="channels"):
        sparse_conv(torch.randn(n, 2), w, km.nbr, km.nbr_t)
    with pytest.raises(ValueError, match="offsets"):
        sparse_conv(f, torch.randn(8, 3, 4), km.nbr, km.nbr_t)
    with pytest.raises(ValueError, match="offsets"):
        sparse_conv(f, w, km.nbr, km.nbr_t[:, :8].contiguous())
    with pytest.raises(ValueError, match="rows"):
        sparse_conv(f[:-1], w, km.nbr, km.nbr_t)


# -------------------------------------------------------------------------------------------------- training
def test_training_loop_reduces_loss():
    """30 Adam steps of one submanifold conv fit the outputs of a fixed random conv: loss falls > 10x."""
    torch.manual_seed(0)
    coords = occupancy_coords((10, 10, 8), 2, 0.3, seed=20)
    km = KM.submanifold_map(coords, (10, 10, 8), 3)
    feats = rand(coords.shape[0], 4, seed=21)
    w_true = rand(27, 4, 6, seed=22) * 0.2
    target = sparse_conv(feats, w_true, km.nbr, km.nbr_t).detach()
    w = torch.zeros(27, 4, 6, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.02)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = (sparse_conv(feats, w, km.nbr, km.nbr_t) - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, losses
