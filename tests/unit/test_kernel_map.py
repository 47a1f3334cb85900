"""Kernel maps (Warp hash-table probing) vs the dense index-volume oracle in kernels/reference/kernel_map.py,
plus properties checked from the definitions: the submanifold centre maps a row to itself, ``nbr_t`` is the
transpose of ``nbr``, batches never mix, and every map entry satisfies the conv geometry.
"""

from __future__ import annotations

import pytest
import torch

import sparse3d.kernels.runtime as runtime
from sparse3d.kernels import kernel_map as KM
from sparse3d.kernels.hashmap import VoxelHashTable
from sparse3d.kernels.kernel_map_types import KernelMap, conv_output_grid, kernel_offsets, triple
from sparse3d.kernels.reference import kernel_map as R


# ------------------------------------------------------------------------------------------------ helpers
def random_coords(n: int, grid: tuple[int, int, int], batches: list[int], seed: int) -> torch.Tensor:
    """``n`` distinct voxels (batch, z, y, x) in random order; ``grid`` is (X, Y, Z)."""
    X, Y, Z = grid
    g = torch.Generator().manual_seed(seed)
    per = X * Y * Z
    lin = torch.randperm(len(batches) * per, generator=g)[:n]
    b = torch.tensor(batches, dtype=torch.int64)[lin // per]
    r = lin % per
    x, y, z = r // (Y * Z), (r // Z) % Y, r % Z
    return torch.stack([b, z, y, x], dim=1).to(torch.int32)


def assert_maps_equal(a: KernelMap, b: KernelMap) -> None:
    assert tuple(a.out_grid) == tuple(b.out_grid)
    for name in ("out_coords", "nbr", "nbr_t"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert ta.dtype == tb.dtype == torch.int32, name
        assert ta.shape == tb.shape, name
        assert torch.equal(ta, tb), name


def dense_transpose(nbr: torch.Tensor, m_in: int) -> torch.Tensor:
    """Transpose by plain Python loops (independent of both implementations)."""
    t = [[-1] * nbr.shape[1] for _ in range(m_in)]
    for o, row in enumerate(nbr.tolist()):
        for k, i in enumerate(row):
            if i >= 0:
                assert t[i][k] == -1, "two outputs read one input through the same offset"
                t[i][k] = o
    return torch.tensor(t, dtype=torch.int32).reshape(m_in, nbr.shape[1])


def check_geometry(km: KernelMap, in_coords, ks, stride, padding, dilation) -> None:
    """nbr[o, k] = i  =>  same batch and in.zyx == out.zyx * stride - padding + offset_k * dilation."""
    ks, st, pad, dil = (torch.tensor(triple(v, "v")) for v in (ks, stride, padding, dilation))
    offs = kernel_offsets(tuple(ks.tolist()), torch.device("cpu")).long()
    o, k = torch.nonzero(km.nbr >= 0, as_tuple=True)
    i = km.nbr[o, k].long()
    oc, ic = km.out_coords[o].long(), in_coords[i].long()
    assert torch.equal(oc[:, 0], ic[:, 0]), "a map entry mixes batch elements"
    assert torch.equal(ic[:, 1:], oc[:, 1:] * st - pad + offs[k] * dil)


def check_submanifold_properties(km: KernelMap, coords, ks, dilation) -> None:
    kt = triple(ks, "k")
    m, K = coords.shape[0], kt[0] * kt[1] * kt[2]
    assert km.nbr.shape == (m, K) and km.nbr_t.shape == (m, K)
    assert torch.equal(km.out_coords, coords)
    centre = (kt[0] // 2) * kt[1] * kt[2] + (kt[1] // 2) * kt[2] + kt[2] // 2
    assert torch.equal(km.nbr[:, centre], torch.arange(m, dtype=torch.int32))
    assert torch.equal(km.nbr_t, dense_transpose(km.nbr, m))
    dt = triple(dilation, "dilation")
    check_geometry(km, coords, ks, 1, tuple(k // 2 * d for k, d in zip(kt, dt)), dilation)
    # symmetric kernel: j is i's neighbour through offset k iff i is j's through the mirrored offset
    assert torch.equal(km.nbr.flip(1), km.nbr_t)


GRID = (9, 7, 6)  # (X, Y, Z)


@pytest.fixture(scope="module")
def coords():
    occ = torch.rand(2, GRID[2], GRID[1], GRID[0], generator=torch.Generator().manual_seed(0)) < 0.3
    b, z, y, x = torch.nonzero(occ, as_tuple=True)
    c = torch.stack([b, z, y, x], 1).int()
    return c[torch.randperm(c.shape[0], generator=torch.Generator().manual_seed(1))]


# ------------------------------------------------------------------------------------------------ submanifold
@pytest.mark.parametrize("index", ["dense", "hash"])
@pytest.mark.parametrize("ks,dil", [(3, 1), (5, 1), (3, 2), ((3, 3, 1), 1), ((1, 3, 5), (1, 2, 1)), (1, 1)])
def test_submanifold_vs_reference(coords, ks, dil, index):
    got = KM.submanifold_map(coords, GRID, ks, dil, index=index)
    want = R.submanifold_map(coords, GRID, ks, dil)
    assert_maps_equal(got, want)
    assert tuple(got.out_grid) == GRID
    check_submanifold_properties(got, coords, ks, dil)


def test_submanifold_with_prebuilt_table(coords):
    table = VoxelHashTable(KM.coords_to_keys(coords, GRID))
    assert_maps_equal(KM.submanifold_map(coords, GRID, 3, table=table), R.submanifold_map(coords, GRID, 3))


def test_submanifold_index_choice():
    # small grid, many voxels: dense volume; a huge grid or a very sparse one: hash table
    dense_coords = random_coords(500, (20, 20, 10), [0], seed=3)
    assert KM.use_dense_index(dense_coords, (20, 20, 10))
    assert not KM.use_dense_index(dense_coords, (2000, 2000, 40))  # 160M cells
    assert not KM.use_dense_index(dense_coords[:10], (100, 100, 40))  # 40k cells per voxel
    assert not KM.use_dense_index(dense_coords[:0], (20, 20, 10))
    with pytest.raises(ValueError, match="index must be"):
        KM.submanifold_map(dense_coords, (20, 20, 10), 3, index="volume")


def test_submanifold_dense_duplicate_coords():
    # duplicates are invalid sparse tensors but must not crash: every copy sees the first copy's neighbours
    c = random_coords(200, (8, 8, 8), [0, 1], seed=5)
    dup = torch.cat([c, c[:50]])
    got = KM.submanifold_map(dup, (8, 8, 8), 3, index="dense")
    want = R.submanifold_map(c, (8, 8, 8), 3).nbr
    assert torch.equal(got.nbr[:200], want)
    not_centre = torch.arange(27) != 13
    assert torch.equal(got.nbr[200:, not_centre], want[:50, not_centre])
    assert torch.equal(got.nbr[:, 13], torch.arange(250, dtype=torch.int32))
    assert torch.equal(got.nbr_t, got.nbr.flip(1))


@pytest.mark.parametrize("index", ["dense", "hash"])
def test_submanifold_hand_computed(index):
    coords = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 1], [1, 0, 0, 1]], dtype=torch.int32)
    km = KM.submanifold_map(coords, (3, 3, 1), (1, 3, 3), index=index)  # 2-D 3x3 kernel in (y, x); offsets k = 3*dy + dx
    # row 0 (x=0,y=0): itself at centre 4, row 1 at (dy=0, dx=+1) -> k=5, row 2 at (dy=+1, dx=+1) -> k=8
    assert km.nbr[0].tolist() == [-1, -1, -1, -1, 0, 1, -1, -1, 2]
    # row 3 is alone in batch 1 although (0, 0, 1) exists in batch 0
    assert km.nbr[3].tolist() == [-1, -1, -1, -1, 3, -1, -1, -1, -1]
    assert km.nbr[1].tolist() == [-1, -1, -1, 0, 1, -1, -1, 2, -1]


def test_submanifold_multibatch_never_mixes():
    # identical spatial sites in 3 batch elements (ids 0, 1, 3): maps per batch equal the single-batch map
    single = random_coords(120, (6, 5, 4), [0], seed=2)
    multi = torch.cat([single, single.clone(), single.clone()])
    multi[120:240, 0] = 1
    multi[240:, 0] = 3
    km1 = KM.submanifold_map(single, (6, 5, 4), 3)
    km = KM.submanifold_map(multi, (6, 5, 4), 3)
    assert_maps_equal(km, R.submanifold_map(multi, (6, 5, 4), 3))
    for j in range(3):
        part = km.nbr[120 * j : 120 * (j + 1)]
        shifted = torch.where(km1.nbr >= 0, km1.nbr + 120 * j, km1.nbr)
        assert torch.equal(part, shifted)
    check_submanifold_properties(km, multi, 3, 1)


def test_submanifold_large_split_path(monkeypatch):
    grid = (24, 20, 12)
    c = random_coords(1800, grid, [0, 1], seed=3)
    assert c.shape[0] * 27 >= runtime.SPLIT_MIN_ELEMENTS
    want = R.submanifold_map(c, grid, 3)
    assert_maps_equal(KM.submanifold_map(c, grid, 3), want)
    monkeypatch.setattr(runtime, "cpu_threads", lambda: 3)
    assert_maps_equal(KM.submanifold_map(c, grid, 3), want)


@pytest.mark.parametrize("threads", [2, 3])
def test_submanifold_partitioned_hash_table(monkeypatch, threads):
    """>= SPLIT_MIN_ELEMENTS voxels: the table itself is split into sub-tables that the probe kernel must find."""
    monkeypatch.setattr(runtime, "cpu_threads", lambda: threads)
    grid = (40, 36, 16)
    c = random_coords(runtime.SPLIT_MIN_ELEMENTS + 1000, grid, [0, 2], seed=6)
    table = VoxelHashTable(KM.coords_to_keys(c, grid))
    assert table.num_parts == threads
    got = KM.submanifold_map(c, grid, (1, 3, 3), table=table)
    assert_maps_equal(got, R.submanifold_map(c, grid, (1, 3, 3)))
    assert torch.equal(got.nbr[:, 4], torch.arange(c.shape[0], dtype=torch.int32))


# ---------------------------------------------------------------------------------------------------- strided
STRIDED = [
    (2, 2, 0, 1),
    (3, 2, 1, 1),
    ((3, 3, 1), (2, 2, 1), (1, 1, 0), 1),
    (3, 1, 1, 1),  # stride 1 regular conv: outputs dilate the input set
    (3, 2, 0, 1),
    (2, (1, 2, 3), (0, 1, 1), 1),
    (3, 1, 2, 2),  # dilated
]


@pytest.mark.parametrize("ks,st,pad,dil", STRIDED)
def test_strided_vs_reference(coords, ks, st, pad, dil):
    got = KM.strided_map(coords, GRID, ks, st, pad, dil)
    want = R.strided_map(coords, GRID, ks, st, pad, dil)
    assert_maps_equal(got, want)
    kt, stt, pt, dt = (triple(v, "v") for v in (ks, st, pad, dil))
    assert got.out_grid == conv_output_grid(GRID, kt, stt, pt, dt)
    m_out, K = got.out_coords.shape[0], kt[0] * kt[1] * kt[2]
    assert got.nbr.shape == (m_out, K) and got.nbr_t.shape == (coords.shape[0], K)
    # properties: transpose, geometry, outputs sorted by (b, x, y, z) and unique, every output has an input
    assert torch.equal(got.nbr_t, dense_transpose(got.nbr, coords.shape[0]))
    check_geometry(got, coords, ks, st, pad, dil)
    oc = got.out_coords.long()
    X, Y, Z = got.out_grid
    key = ((oc[:, 0] * X + oc[:, 3]) * Y + oc[:, 2]) * Z + oc[:, 1]
    assert bool((key[1:] > key[:-1]).all())
    assert bool(((got.nbr >= 0).any(1)).all())
    assert bool((oc[:, 1] < Z).all() and (oc[:, 2] < Y).all() and (oc[:, 3] < X).all() and (oc >= 0).all())


def test_strided_k2s2_hand_computed():
    coords = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 0], [0, 3, 2, 1], [1, 0, 0, 0]], dtype=torch.int32)
    km = KM.strided_map(coords, (4, 4, 4), 2, 2, 0)
    assert km.out_grid == (2, 2, 2)
    # outputs (b, z, y, x): b0 (0,0,0) gets rows 1 (offset 0) and 0 (offset 4*1+2*1+1 = 7);
    # b0 (1,1,0) gets row 2 = (3,2,1) through offset (kz,ky,kx) = (1,0,1) -> 5; b1 (0,0,0) gets row 3
    assert km.out_coords.tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [1, 0, 0, 0]]
    assert km.nbr.tolist() == [[1, -1, -1, -1, -1, -1, -1, 0], [-1] * 5 + [2, -1, -1], [3] + [-1] * 7]
    assert km.nbr_t.tolist() == [[-1] * 7 + [0], [0] + [-1] * 7, [-1] * 5 + [1, -1, -1], [2] + [-1] * 7]


def test_strided_multibatch_never_mixes():
    grid = (8, 8, 4)
    single = random_coords(90, grid, [0], seed=4)
    multi = torch.cat([single, single.clone()])
    multi[90:, 0] = 2
    km1 = KM.strided_map(single, grid, 3, 2, 1)
    km = KM.strided_map(multi, grid, 3, 2, 1)
    assert_maps_equal(km, R.strided_map(multi, grid, 3, 2, 1))
    m1 = km1.out_coords.shape[0]
    assert km.out_coords.shape[0] == 2 * m1
    assert torch.equal(km.out_coords[:m1], km1.out_coords)
    assert torch.equal(km.out_coords[m1:, 1:], km1.out_coords[:, 1:])
    assert bool((km.out_coords[m1:, 0] == 2).all())
    check_geometry(km, multi, 3, 2, 1, 1)


def test_strided_large_split_path(monkeypatch):
    grid = (24, 20, 12)
    c = random_coords(4500, grid, [0, 1], seed=5)
    assert c.shape[0] * 8 >= runtime.SPLIT_MIN_ELEMENTS
    want = R.strided_map(c, grid, 2, 2, 0)
    assert_maps_equal(KM.strided_map(c, grid, 2, 2, 0), want)
    monkeypatch.setattr(runtime, "cpu_threads", lambda: 4)
    assert_maps_equal(KM.strided_map(c, grid, 2, 2, 0), want)


def test_inverse_map_swaps_roles(coords):
    fwd = KM.strided_map(coords, GRID, 3, 2, 1)
    inv = KM.inverse_map(fwd, coords, GRID)
    assert torch.equal(inv.out_coords, coords) and tuple(inv.out_grid) == GRID
    assert torch.equal(inv.nbr, fwd.nbr_t) and torch.equal(inv.nbr_t, fwd.nbr)


# ------------------------------------------------------------------------------------------ empty and errors
def test_empty_coords():
    empty = torch.empty(0, 4, dtype=torch.int32)
    km = KM.submanifold_map(empty, GRID, 3)
    assert km.nbr.shape == (0, 27) and km.nbr_t.shape == (0, 27) and km.out_coords.shape == (0, 4)
    km = KM.strided_map(empty, GRID, (3, 3, 1), (2, 2, 1), (1, 1, 0))
    assert km.nbr.shape == (0, 9) and km.nbr_t.shape == (0, 9) and km.out_coords.shape == (0, 4)
    assert km.out_coords.dtype == torch.int32 and km.nbr.dtype == torch.int32
    assert km.out_grid == (9, 4, 3)  # x untouched (kx=1, sx=1), y/z halved


@pytest.mark.parametrize("fn", [KM.submanifold_map, KM.strided_map])
def test_errors(fn, coords):
    bad = coords.clone()
    bad[0, 3] = GRID[0]  # x == X
    with pytest.raises(ValueError, match="coords"):
        fn(bad, GRID)
    bad = coords.clone()
    bad[0, 1] = -1
    with pytest.raises(ValueError, match="coords"):
        fn(bad, GRID)
    bad = coords.clone()
    bad[0, 0] = -1
    with pytest.raises(ValueError, match="coords"):
        fn(bad, GRID)
    bad = coords.clone()
    bad[0, 1] = GRID[2]  # z == Z (the grid is (X, Y, Z), coords (b, z, y, x))
    with pytest.raises(ValueError, match="coords"):
        fn(bad, GRID)
    with pytest.raises(ValueError, match="coords"):
        fn(coords.long(), GRID)
    with pytest.raises(ValueError, match="coords"):
        fn(coords[:, :3].contiguous(), GRID)
    with pytest.raises(ValueError, match="grid"):
        fn(coords, (9, 7))
    with pytest.raises(ValueError, match="kernel_size"):
        fn(coords, GRID, (3, 3))


def test_submanifold_even_kernel_raises(coords):
    with pytest.raises(ValueError, match="kernel_size"):
        KM.submanifold_map(coords, GRID, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        KM.submanifold_map(coords, GRID, (3, 3, 2))


def test_strided_bad_geometry_raises(coords):
    with pytest.raises(ValueError):
        KM.strided_map(coords, GRID, 3, 0, 1)
    with pytest.raises(ValueError):
        KM.strided_map(coords, GRID, 3, 2, -1)
    with pytest.raises(ValueError):
        KM.strided_map(coords, (2, 2, 2), 5, 1, 0)  # empty output
