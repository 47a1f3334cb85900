"""DSVT window / dynamic set partition: Warp kernels vs the torch oracle, plus properties of the partition.

DSVT: Wang et al., "DSVT: Dynamic Sparse Voxel Transformer with Rotated Sets", CVPR 2023 (official code
``github.com/Haiyang-W/DSVT``). The property checks are written in plain Python from the paper and the official
code (window key formula, paper Eq. 3 in float64, lexicographic orderings), so they test the reference as much
as the kernels.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparse3d.kernels.runtime as runtime
from sparse3d.kernels import set_partition as K
from sparse3d.kernels.reference import set_partition as R
from sparse3d.kernels.set_partition_types import SetPartition, WindowPartition

CUDA = torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------ helpers
def random_coords(
    n: int, shape: tuple[int, int, int], batches: list[int], seed: int, device: str = "cpu"
) -> torch.Tensor:
    """``n`` distinct voxels (batch, z, y, x) in random order, batch ids drawn from ``batches``."""
    X, Y, Z = shape
    g = torch.Generator().manual_seed(seed)
    per = X * Y * Z
    lin = torch.randperm(len(batches) * per, generator=g)[:n]
    b = torch.tensor(batches, dtype=torch.int64)[lin // per]
    r = lin % per
    x, y, z = r // (Y * Z), (r // Z) % Y, r % Z
    return torch.stack([b, z, y, x], dim=1).to(torch.int32).to(device)


def assert_windows_equal(a: WindowPartition, b: WindowPartition) -> None:
    assert a.num_windows == b.num_windows
    assert a.window_shape == b.window_shape and a.shift == b.shift
    for name in ("win_id", "coords_in_win", "window_key", "voxels_per_window"):
        ta, tb = getattr(a, name).cpu(), getattr(b, name).cpu()
        assert ta.dtype == tb.dtype, name
        assert ta.shape == tb.shape, name
        assert torch.equal(ta, tb), name


def assert_sets_equal(a: SetPartition, b: SetPartition) -> None:
    for name in ("set_voxel_inds", "set_voxel_mask", "set_window"):
        ta, tb = getattr(a, name).cpu(), getattr(b, name).cpu()
        assert ta.dtype == tb.dtype, name
        assert ta.shape == tb.shape, name
        assert torch.equal(ta, tb), name
    assert_windows_equal(a.windows, b.windows)


def both(coords, shape, win, shift, tau):
    """Warp result, after checking it equals the reference bit for bit."""
    got = K.dynamic_set_partition(coords, shape, win, shift, tau)
    want = R.dynamic_set_partition(coords.cpu(), shape, win, shift, tau)
    assert_sets_equal(got, want)
    assert_windows_equal(K.window_partition(coords, shape, win, shift), want.windows)
    return got


def check_properties(coords, shape, win, shift, tau, part: SetPartition) -> None:
    """The partition's properties checked from first principles (no call into either implementation): window
    keys and in-window coords, every voxel in exactly one set per ordering, Eq. 3 ranks, masks marking repeats,
    and lexicographic order inside each window."""
    X, Y, Z = shape
    wx, wy, wz = win
    sx, sy, sz = shift
    if Z == wz:
        sz = 0
    nwx, nwy, nwz = math.ceil(X / wx) + 1, math.ceil(Y / wy) + 1, math.ceil(Z / wz) + 1
    rows = coords.cpu().tolist()
    n_vox = len(rows)
    raw, local = [], []
    for b, z, y, x in rows:
        xs, ys, zs = x + sx, y + sy, z + sz
        raw.append(b * nwx * nwy * nwz + (xs // wx) * nwy * nwz + (ys // wy) * nwz + zs // wz)
        local.append((zs % wz, ys % wy, xs % wx))
    wpart = part.windows
    # windows: renumbered in ascending raw-key order, in-window coords by the formula
    keys = sorted(set(raw))
    assert wpart.num_windows == len(keys)
    assert wpart.window_key.tolist() == keys
    key_to_id = {k: i for i, k in enumerate(keys)}
    assert wpart.win_id.tolist() == [key_to_id[k] for k in raw]
    assert [tuple(r) for r in wpart.coords_in_win.tolist()] == local
    members = defaultdict(list)
    for i, k in enumerate(raw):
        members[key_to_id[k]].append(i)
    assert wpart.voxels_per_window.tolist() == [len(members[w]) for w in range(len(keys))]

    inds = part.set_voxel_inds.cpu().tolist()
    mask = part.set_voxel_mask.cpu().tolist()
    set_window = part.set_window.cpu().tolist()
    n_sets = len(set_window)
    assert part.set_voxel_inds.shape == (2, n_sets, tau)
    assert part.set_voxel_mask.shape == (2, n_sets, tau)
    # sets per window == ceil(n / τ), ordered by window
    assert set_window == sorted(set_window)
    for w in range(len(keys)):
        assert set_window.count(w) == -(-len(members[w]) // tau)
    first_set = {}
    for s, w in enumerate(set_window):
        first_set.setdefault(w, s)

    def lex(o: int, i: int) -> tuple[int, int, int, int]:
        lz, ly, lx = local[i]
        return (ly, lx, lz, i) if o == 0 else (lx, ly, lz, i)  # voxel index breaks ties (stable)

    for o in range(2):
        seen = []
        per_window_unmasked = defaultdict(list)
        for s in range(n_sets):
            w = set_window[s]
            row, mrow = inds[o][s], mask[o][s]
            # sets never cross windows
            assert all(raw[i] == keys[w] for i in row)
            # mask == "equals left neighbour"; slot 0 never masked
            assert mrow[0] is False
            assert all(mrow[k] == (row[k] == row[k - 1]) for k in range(1, tau))
            # duplicates are adjacent: every voxel occupies one contiguous run of slots
            runs = [row[k] for k in range(tau) if k == 0 or row[k] != row[k - 1]]
            assert len(runs) == len(set(runs))
            # Eq. 3 in float64 (the official evaluation) against the window sorted lexicographically
            ordered = sorted(members[w], key=lambda i, o=o: lex(o, i))
            n = len(ordered)
            n_w_sets = -(-n // tau)
            j = s - first_set[w]
            for k in range(tau):
                rank = math.floor((j * tau + k) * n / (n_w_sets * tau))
                assert rank == ((j * tau + k) * n) // (n_w_sets * tau)
                assert row[k] == ordered[rank]
            unmasked = [row[k] for k in range(tau) if not mrow[k]]
            seen.extend(unmasked)
            per_window_unmasked[w].extend(unmasked)
        # each voxel exactly once among unmasked slots
        assert sorted(seen) == list(range(n_vox))
        # within a window the unmasked order is lexicographic (y,x,z) / (x,y,z)
        for seq in per_window_unmasked.values():
            lexed = [lex(o, i) for i in seq]
            assert lexed == sorted(lexed)
    if n_sets:
        assert part.set_voxel_mask[0].equal(part.set_voxel_mask[1])


# ------------------------------------------------------------------------------------------------ reference parity
RANDOM_CASES = [
    # shape (X, Y, Z), window, shift, τ, batches, voxels
    ((40, 36, 1), (12, 12, 1), (0, 0, 0), 36, [0, 1], 900),
    ((40, 36, 1), (24, 24, 1), (6, 6, 0), 36, [0, 1, 2], 1500),
    ((30, 28, 8), (6, 6, 4), (3, 3, 2), 20, [0, 1], 2500),
    ((30, 28, 8), (12, 12, 8), (6, 6, 4), 48, [0], 2000),  # Z == wz: z shift forced to 0
    ((21, 17, 6), (5, 4, 3), (5, 4, 3), 7, [0, 1, 2, 3], 1200),  # shift == window, odd sizes
    ((25, 25, 3), (4, 4, 2), (1, 2, 1), 1, [1], 700),  # τ = 1: one set per voxel
    ((25, 25, 3), (4, 4, 2), (2, 2, 1), 100, [0, 1], 1600),  # τ > window volume: one padded set
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", RANDOM_CASES, ids=[f"case{i}" for i in range(len(RANDOM_CASES))])
def test_matches_reference_random(case, seed):
    shape, win, shift, tau, batches, n = case
    coords = random_coords(n, shape, batches, seed)
    both(coords, shape, win, shift, tau)


def test_matches_reference_waymo_like():
    """DSVT-P stage geometry at a scale with many multi-set windows (clusters of dense pillars)."""
    g = torch.Generator().manual_seed(7)
    shape = (200, 200, 1)
    centres = torch.randint(0, 200, (40, 2), generator=g)
    pts = centres.repeat_interleave(150, 0) + torch.randint(-8, 9, (6000, 2), generator=g)
    pts = pts.clamp(0, 199)
    lin = torch.unique(pts[:, 0] * 200 + pts[:, 1])
    lin = lin[torch.randperm(lin.numel(), generator=g)]
    coords = torch.stack([torch.zeros_like(lin), torch.zeros_like(lin), lin % 200, lin // 200], 1).int()
    s0, s1 = K.dsvt_stage_partitions(coords, shape, (12, 12, 1), (6, 6, 0), 36)
    r0, r1 = R.dsvt_stage_partitions(coords, shape, (12, 12, 1), (6, 6, 0), 36)
    assert_sets_equal(s0, r0)
    assert_sets_equal(s1, r1)
    assert int(s0.windows.voxels_per_window.max()) > 36  # some windows really hold several sets


# ------------------------------------------------------------------------------------------------ adversarial
def test_single_voxel():
    coords = torch.tensor([[0, 0, 5, 7]], dtype=torch.int32)
    part = both(coords, (16, 16, 1), (12, 12, 1), (0, 0, 0), 36)
    assert part.set_voxel_inds.shape == (2, 1, 36)
    assert torch.all(part.set_voxel_inds == 0)
    assert not part.set_voxel_mask[:, 0, 0].any() and part.set_voxel_mask[:, 0, 1:].all()
    check_properties(coords, (16, 16, 1), (12, 12, 1), (0, 0, 0), 36, part)


@pytest.mark.parametrize("extra", [-1, 0, 1, 35, 36, 37])
def test_window_sizes_around_tau(extra):
    """n_w = τ-1, τ, τ+1, 2τ-1, 2τ, 2τ+1 voxels in one window (τ = 36, window 12×12 holds 144)."""
    tau = 36
    n = tau + extra
    g = torch.Generator().manual_seed(n)
    lin = torch.randperm(144, generator=g)[:n]
    coords = torch.stack([torch.zeros_like(lin), torch.zeros_like(lin), lin // 12, lin % 12], 1).int()
    part = both(coords, (12, 12, 1), (12, 12, 1), (0, 0, 0), tau)
    assert part.set_voxel_inds.shape[1] == -(-n // tau)
    assert int(part.set_voxel_mask.sum()) == 2 * (part.set_voxel_inds.shape[1] * tau - n)
    check_properties(coords, (12, 12, 1), (12, 12, 1), (0, 0, 0), tau, part)


@pytest.mark.parametrize("tau", [36, 48, 50])
def test_full_window(tau):
    """Every voxel of a 12×12×2 window present, in reverse order: ranks cover the whole window."""
    z, y, x = torch.meshgrid(torch.arange(2), torch.arange(12), torch.arange(12), indexing="ij")
    coords = torch.stack([torch.zeros(288, dtype=torch.int64), z.flatten(), y.flatten(), x.flatten()], 1)
    coords = coords.flip(0).int()
    part = both(coords, (12, 12, 2), (12, 12, 2), (0, 0, 0), tau)
    assert part.windows.num_windows == 1
    check_properties(coords, (12, 12, 2), (12, 12, 2), (0, 0, 0), tau, part)
    # ordering 0 walks y slowest: its first unmasked voxel is (y, x, z) = (0, 0, 0), the next (0, 0, 1)
    first = part.set_voxel_inds[0, 0, 0]
    assert coords[first].tolist() == [0, 0, 0, 0]


def test_empty_batch_element():
    """Batch ids 0 and 2 only: batch 1 contributes no window and batch 2's keys stay in its own range."""
    shape, win = (30, 30, 1), (12, 12, 1)
    coords = random_coords(800, shape, [0, 2], seed=3)
    part = both(coords, shape, win, (6, 6, 0), 36)
    check_properties(coords, shape, win, (6, 6, 0), 36, part)
    per_batch = 4 * 4 * 2  # nwx · nwy · nwz
    batch_of_window = (part.windows.window_key // per_batch).unique().tolist()
    assert batch_of_window == [0, 2]


def test_non_contiguous_coords():
    base = random_coords(1000, (40, 36, 4), [0, 1], seed=5)
    wide = torch.zeros((1000, 7), dtype=torch.int32)
    wide[:, 1:5] = base
    view = wide[:, 1:5]
    assert not view.is_contiguous()
    transposed = base.t().contiguous().t()
    assert not transposed.is_contiguous()
    want = R.dynamic_set_partition(base, (40, 36, 4), (8, 8, 2), (4, 4, 1), 24)
    for coords in (view, transposed, base[::2]):
        got = K.dynamic_set_partition(coords, (40, 36, 4), (8, 8, 2), (4, 4, 1), 24)
        if coords.shape[0] == base.shape[0]:
            assert_sets_equal(got, want)
        else:
            assert_sets_equal(got, R.dynamic_set_partition(coords, (40, 36, 4), (8, 8, 2), (4, 4, 1), 24))


def test_duplicate_voxels_tie_break_by_index():
    """Repeated coords are not deduplicated; ties keep input order in both implementations."""
    coords = random_coords(300, (20, 20, 1), [0], seed=11)
    coords = torch.cat([coords, coords[:50], coords[10:20]])
    part = both(coords, (20, 20, 1), (6, 6, 1), (3, 3, 0), 10)
    check_properties(coords, (20, 20, 1), (6, 6, 1), (3, 3, 0), 10, part)


@pytest.mark.parametrize("impl", [K, R], ids=["warp", "reference"])
def test_empty_input(impl):
    coords = torch.zeros((0, 4), dtype=torch.int32)
    wpart = impl.window_partition(coords, (10, 10, 1), (4, 4, 1), (2, 2, 0))
    assert wpart.num_windows == 0
    assert wpart.win_id.shape == (0,) and wpart.win_id.dtype == torch.int64
    assert wpart.coords_in_win.shape == (0, 3) and wpart.coords_in_win.dtype == torch.int32
    assert wpart.window_key.shape == (0,) and wpart.voxels_per_window.shape == (0,)
    s0, s1 = impl.dsvt_stage_partitions(coords, (10, 10, 1), (4, 4, 1), (2, 2, 0), 9)
    for part in (s0, s1):
        assert part.set_voxel_inds.shape == (2, 0, 9) and part.set_voxel_inds.dtype == torch.int64
        assert part.set_voxel_mask.shape == (2, 0, 9) and part.set_voxel_mask.dtype == torch.bool
        assert part.set_window.shape == (0,) and part.set_window.dtype == torch.int64
    assert s1.windows.window_shape == (8, 8, 1)


# ------------------------------------------------------------------------------------------------ properties
@st.composite
def partition_cases(draw):
    X, Y, Z = draw(st.integers(1, 24)), draw(st.integers(1, 24)), draw(st.integers(1, 5))
    wx, wy = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    wz = draw(st.sampled_from(sorted({Z, 1, 2, 3, 7})))
    shift = (draw(st.integers(0, wx)), draw(st.integers(0, wy)), draw(st.integers(0, wz)))
    tau = draw(st.integers(1, 40))
    batches = draw(st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True))
    total = len(batches) * X * Y * Z
    n = draw(st.integers(0, min(total, 250)))
    seed = draw(st.integers(0, 2**20))
    return (X, Y, Z), (wx, wy, wz), shift, tau, sorted(batches), n, seed


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(partition_cases())
def test_properties_random(case):
    shape, win, shift, tau, batches, n, seed = case
    coords = random_coords(n, shape, batches, seed)
    part = both(coords, shape, win, shift, tau)
    check_properties(coords, shape, win, shift, tau, part)


def test_stage_shifts_large_window_and_offset():
    """Shift 1 uses (2wx, 2wy, wz) windows moved by the offset; sets stay inside those windows."""
    shape = (40, 36, 1)
    coords = random_coords(1200, shape, [0, 1], seed=2)
    s0, s1 = K.dsvt_stage_partitions(coords, shape, (12, 12, 1), (6, 6, 0), 36)
    assert s0.windows.window_shape == (12, 12, 1) and s0.windows.shift == (0, 0, 0)
    assert s1.windows.window_shape == (24, 24, 1) and s1.windows.shift == (6, 6, 0)
    check_properties(coords, shape, (12, 12, 1), (0, 0, 0), 36, s0)
    check_properties(coords, shape, (24, 24, 1), (6, 6, 0), 36, s1)
    b, _, y, x = coords.long().unbind(1)
    assert torch.equal(s1.windows.coords_in_win[:, 1].long(), (y + 6) % 24)
    assert torch.equal(s1.windows.coords_in_win[:, 2].long(), (x + 6) % 24)
    # a shift-1 window spans more than one shift-0 window in x and y, and the windows are offset:
    # voxels x = 17 and x = 18 share a shift-0 window (12..23) but not a shift-1 one (boundary at 18)
    w1 = s1.windows.win_id
    spans = [(x[w1 == w].max() - x[w1 == w].min()).item() for w in range(s1.windows.num_windows)]
    assert max(spans) >= 12
    assert s1.windows.num_windows < s0.windows.num_windows
    pair = (x == 17) | (x == 18)
    for w in s1.windows.win_id[pair].unique():
        xs = x[pair & (w1 == w)]
        assert xs.unique().numel() == 1
    # z shift forced to 0 when Z == wz, kept otherwise
    t0, t1 = K.dsvt_stage_partitions(coords, shape, (12, 12, 1), (6, 6, 3), 36)
    assert t1.windows.shift == (6, 6, 0)
    assert_sets_equal(t1, s1)
    coords3 = random_coords(900, (30, 28, 8), [0], seed=4)
    _, u1 = K.dsvt_stage_partitions(coords3, (30, 28, 8), (6, 6, 4), (6, 6, 2), 20)
    assert u1.windows.window_shape == (12, 12, 4) and u1.windows.shift == (6, 6, 2)
    _, r1 = R.dsvt_stage_partitions(coords3, (30, 28, 8), (6, 6, 4), (6, 6, 2), 20)
    assert_sets_equal(u1, r1)


# ------------------------------------------------------------------------------------------------ validation
GOOD = dict(spatial_shape=(16, 16, 2), window_shape=(4, 4, 1), shift=(2, 2, 0), set_size=8)


def _bad_cases():
    ok = torch.tensor([[0, 0, 1, 2], [1, 1, 15, 15]], dtype=torch.int32)
    yield "coords", dict(coords=ok.float()), "coords"
    yield "coords-int64", dict(coords=ok.long()), "coords"
    yield "coords-shape", dict(coords=ok[:, :3]), "coords"
    yield "coords-list", dict(coords=ok.tolist()), "coords"
    yield "coords-x", dict(coords=torch.tensor([[0, 0, 0, 0], [0, 0, 0, 16]], dtype=torch.int32)), "row 1"
    yield "coords-z", dict(coords=torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 2, 0, 0]]).int()), "row 2"
    yield "coords-batch", dict(coords=torch.tensor([[-1, 0, 0, 0]], dtype=torch.int32)), "row 0"
    yield "coords-neg-y", dict(coords=torch.tensor([[0, 0, 3, 3], [0, 0, -1, 0]], dtype=torch.int32)), "row 1"
    yield "spatial-zero", dict(spatial_shape=(16, 0, 2)), "spatial_shape"
    yield "spatial-len", dict(spatial_shape=(16, 16)), "spatial_shape"
    yield "window-zero", dict(window_shape=(4, 0, 1)), "window_shape"
    yield "window-float", dict(window_shape=(4, 4.0, 1)), "window_shape"
    yield "window-bool", dict(window_shape=(4, True, 1)), "window_shape"
    yield "window-scalar", dict(window_shape=4), "window_shape"
    yield "shift-neg", dict(shift=(2, -1, 0)), "shift"
    yield "shift-too-big", dict(shift=(5, 2, 0)), "shift"
    yield "set-size-zero", dict(set_size=0), "set_size"
    yield "set-size-float", dict(set_size=1.5), "set_size"
    yield "set-size-bool", dict(set_size=True), "set_size"


BAD = list(_bad_cases())


@pytest.mark.parametrize("impl", [K, R], ids=["warp", "reference"])
@pytest.mark.parametrize("bad", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises(impl, bad):
    _, override, needle = bad
    args = {**GOOD, "coords": torch.tensor([[0, 0, 1, 2], [1, 1, 15, 15]], dtype=torch.int32), **override}
    with pytest.raises(ValueError, match=needle):
        impl.dynamic_set_partition(**args)
    if "set_size" not in override:
        args.pop("set_size")
        with pytest.raises(ValueError, match=needle):
            impl.window_partition(**args)


def test_z_shift_ignored_for_flat_windows():
    """With Z == wz the z shift is forced to 0 before validation, so any z shift is accepted."""
    coords = random_coords(50, (16, 16, 2), [0], seed=1)
    a = K.window_partition(coords, (16, 16, 2), (4, 4, 2), (1, 1, 9))
    b = K.window_partition(coords, (16, 16, 2), (4, 4, 2), (1, 1, 0))
    assert a.shift == (1, 1, 0)
    assert_windows_equal(a, b)


def test_reference_is_independent_of_the_kernels() -> None:
    """The oracle imports only torch and the shared types (not Warp, not the kernel module), and the kernel
    module does not import the oracle."""
    import subprocess
    import sys

    code = ("import sys, sparse3d.kernels.reference.set_partition; "
            "sys.exit('warp' in sys.modules or 'sparse3d.kernels.set_partition' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
    code = ("import sys, sparse3d.kernels.set_partition; "
            "sys.exit('sparse3d.kernels.reference.set_partition' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


# ------------------------------------------------------------------------------------------------ runtime paths
class _CountingPool:
    """Wraps the launcher's thread pool to prove the CPU launch really was split."""

    def __init__(self, pool):
        self.pool = pool
        self.submitted = 0

    def submit(self, *args, **kwargs):
        self.submitted += 1
        return self.pool.submit(*args, **kwargs)


def test_cpu_split_path_matches(monkeypatch):
    counting = _CountingPool(runtime._pool())
    monkeypatch.setattr(runtime, "SPLIT_MIN_ELEMENTS", 8)
    monkeypatch.setattr(runtime, "cpu_threads", lambda: 3)  # uneven chunks on purpose
    monkeypatch.setattr(runtime, "_pool", lambda: counting)
    for seed, (shape, win, shift, tau) in enumerate(
        [((40, 36, 1), (12, 12, 1), (6, 6, 0), 36), ((30, 28, 8), (6, 6, 4), (3, 3, 2), 5)]
    ):
        coords = random_coords(1001, shape, [0, 1], seed)
        both(coords, shape, win, shift, tau)
    assert counting.submitted >= 4 * 3  # two kernels per call, three chunks each


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_matches_reference():
    shape, win, shift, tau = (40, 36, 8), (12, 12, 4), (6, 6, 2), 36
    coords = random_coords(3000, shape, [0, 1, 3], seed=9)
    got = K.dynamic_set_partition(coords.cuda(), shape, win, shift, tau)
    assert got.set_voxel_inds.is_cuda and got.windows.win_id.is_cuda
    assert_sets_equal(got, R.dynamic_set_partition(coords, shape, win, shift, tau))
