"""VoxelHashTable and unique_keys_with_inverse (Warp) vs the plain-torch oracle in kernels/reference/hashmap.py.

Covers duplicates (value = smallest row), negative/absent queries, empty and single-key tables, keys near 2^62,
keys sharing their low bits, argument validation, and the multi-thread partitioned CPU path (forced partition
counts of 1..4 plus a key set skewed so that one sub-table overflows and the table is rebuilt as one part).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sparse3d.kernels.runtime as runtime
from sparse3d.kernels import hashmap as H
from sparse3d.kernels.reference import hashmap as R

BIG = runtime.SPLIT_MIN_ELEMENTS + 7_000  # enough keys for the partitioned path


# ------------------------------------------------------------------------------------------------ helpers
def random_keys(n: int, high: int, seed: int, neg_frac: float = 0.0) -> torch.Tensor:
    """``n`` int64 keys in [0, high) with many duplicates when ``high`` < n; a fraction set to -1."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randint(0, high, (n,), generator=g, dtype=torch.int64)
    if neg_frac:
        keys[torch.rand(n, generator=g) < neg_frac] = -1
    return keys


def first_row_oracle(keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Independent pure-Python oracle: smallest row of each query key, -1 when absent/negative."""
    first: dict[int, int] = {}
    for i, k in enumerate(keys.tolist()):
        if k >= 0 and k not in first:
            first[k] = i
    return torch.tensor([first.get(q, -1) if q >= 0 else -1 for q in queries.tolist()], dtype=torch.int32)


def assert_table_matches(keys: torch.Tensor, queries: torch.Tensor) -> H.VoxelHashTable:
    table = H.VoxelHashTable(keys)
    got = table.query(queries)
    want = R.VoxelHashTable(keys).query(queries)
    assert got.dtype == torch.int32
    assert got.shape == queries.shape
    assert torch.equal(got, want)
    return table


def assert_unique_matches(
    keys: torch.Tensor, key_range: int | None = None, method: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    got = H.unique_keys_with_inverse(keys, key_range, method)
    valid = keys >= 0
    uniq, inv, counts = torch.unique(keys[valid], sorted=True, return_inverse=True, return_counts=True)
    assert got[0].dtype == torch.int64 and got[1].dtype == torch.int64 and got[2].dtype == torch.int32
    assert torch.equal(got[0], uniq)
    assert torch.equal(got[1][valid], inv)
    assert bool((got[1][~valid] == -1).all())
    assert torch.equal(got[2], counts.to(torch.int32))
    # and the shipped reference agrees with torch.unique (it is the spec)
    ref = R.unique_keys_with_inverse(keys)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    return got


def mix64_np(k: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, as in hashmap.mix64 (used to build adversarial key sets)."""
    h = k.astype(np.uint64)
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return h


@pytest.fixture
def parts(monkeypatch):
    """Force ``runtime.cpu_threads()`` (hence ``num_parts`` and launch chunking) to a given count."""

    def force(n: int) -> None:
        monkeypatch.setattr(runtime, "cpu_threads", lambda: n)
        assert runtime.num_parts("cpu", BIG) == n
        assert runtime.num_parts("cpu", runtime.SPLIT_MIN_ELEMENTS - 1) == 1

    return force


# ------------------------------------------------------------------------------------------- VoxelHashTable
@pytest.mark.parametrize("n,high,seed", [(10, 4, 0), (500, 100, 1), (3000, 50_000, 2), (2000, 2000, 3)])
def test_table_random_with_duplicates(n, high, seed):
    keys = random_keys(n, high, seed)
    queries = torch.cat([keys, torch.arange(-5, high + 20, dtype=torch.int64)])
    assert_table_matches(keys, queries)
    # value is the smallest row index of each key
    table = H.VoxelHashTable(keys)
    assert torch.equal(table.query(keys), first_row_oracle(keys, keys))


def test_table_duplicate_value_is_smallest_row():
    keys = torch.tensor([7, 3, 7, 7, 3, 9, 9, 0, 0], dtype=torch.int64)
    table = H.VoxelHashTable(keys)
    got = table.query(torch.tensor([7, 3, 9, 0, 1, -1], dtype=torch.int64))
    assert got.tolist() == [0, 1, 5, 7, -1, -1]


def test_table_negative_and_absent_queries():
    keys = torch.tensor([5, 10, -1, 15, -7], dtype=torch.int64)
    table = assert_table_matches(
        keys, torch.tensor([-1, -7, -(2**62), 0, 6, 11, 16, 2**62], dtype=torch.int64)
    )
    assert table.query(torch.tensor([-1, -7, 5, 10, 15, 4], dtype=torch.int64)).tolist() == [
        -1,
        -1,
        0,
        1,
        3,
        -1,
    ]


def test_table_empty_key_set():
    table = H.VoxelHashTable(torch.empty(0, dtype=torch.int64))
    got = table.query(torch.tensor([0, 1, -1, 2**40], dtype=torch.int64))
    assert got.tolist() == [-1, -1, -1, -1]
    assert table.query(torch.empty(0, dtype=torch.int64)).shape == (0,)


def test_table_only_negative_keys():
    table = H.VoxelHashTable(torch.full((20,), -1, dtype=torch.int64))
    assert table.query(torch.tensor([-1, 0, 1], dtype=torch.int64)).tolist() == [-1, -1, -1]


def test_table_single_key():
    table = H.VoxelHashTable(torch.tensor([123456789], dtype=torch.int64))
    assert table.query(torch.tensor([123456789, 123456788, 0, -1], dtype=torch.int64)).tolist() == [
        0,
        -1,
        -1,
        -1,
    ]


def test_table_keys_near_2_pow_62():
    top = 2**62
    keys = torch.cat(
        [
            torch.tensor([top - 1, top, top + 1, 2**63 - 1], dtype=torch.int64),
            top - 1 - random_keys(2000, 5000, seed=4),
        ]
    )
    queries = torch.cat([keys, torch.tensor([top - 2, top + 2, 2**63 - 2], dtype=torch.int64)])
    assert_table_matches(keys, queries)
    assert_unique_matches(keys)


@pytest.mark.parametrize("shift", [20, 32, 40])
def test_table_keys_colliding_in_low_bits(shift):
    # all keys share their low `shift` bits (multiples of 2^shift): a table indexed by low bits would pile up
    keys = random_keys(3000, 1500, seed=shift) * 2**shift
    queries = torch.cat([keys, keys + 1, keys + 2**shift * 1500])
    assert_table_matches(keys, queries)
    assert_unique_matches(keys)


def test_table_query_non_contiguous_keys():
    keys = random_keys(400, 100, seed=5)
    wide = torch.stack([keys, keys + 1000], dim=1)
    table = H.VoxelHashTable(wide[:, 0])  # strided view
    assert torch.equal(table.query(wide[:, 0]), first_row_oracle(keys, keys))
    assert torch.equal(table.query(wide[:, 1]), torch.full((400,), -1, dtype=torch.int32))


def test_table_wrong_dtype_raises():
    with pytest.raises(ValueError, match="keys"):
        H.VoxelHashTable(torch.arange(5, dtype=torch.int32))
    with pytest.raises(ValueError, match="keys"):
        H.VoxelHashTable(torch.arange(6, dtype=torch.int64).reshape(2, 3))
    with pytest.raises(ValueError, match="keys"):
        H.VoxelHashTable([1, 2, 3])  # type: ignore[arg-type]
    table = H.VoxelHashTable(torch.arange(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="keys"):
        table.query(torch.arange(5, dtype=torch.float32))
    with pytest.raises(ValueError, match="keys"):
        table.query(torch.arange(5, dtype=torch.int32))


def test_table_device_mismatch_raises():
    table = H.VoxelHashTable(torch.arange(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="keys"):
        table.query(torch.arange(5, dtype=torch.int64, device="meta"))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="keys"):
            table.query(torch.arange(5, dtype=torch.int64, device="cuda"))


# ---------------------------------------------------------------------------------- unique_keys_with_inverse
@pytest.mark.parametrize(
    "n,high,neg,seed", [(1, 5, 0.0, 0), (17, 5, 0.0, 1), (1000, 300, 0.2, 2), (5000, 10**12, 0.05, 3)]
)
def test_unique_random(n, high, neg, seed):
    assert_unique_matches(random_keys(n, high, seed, neg))


@pytest.mark.parametrize("method", ["sort", "occupancy"])
@pytest.mark.parametrize(
    "n,high,neg,seed", [(1, 5, 0.0, 0), (17, 5, 0.0, 1), (1000, 300, 0.2, 2), (5000, 10**7, 0.05, 3), (BIG, 4096, 0.1, 4)]
)
def test_unique_methods_agree_with_oracle(n, high, neg, seed, method):
    assert_unique_matches(random_keys(n, high, seed, neg), key_range=high, method=method)


def test_occupancy_word_boundaries_and_codes():
    # keys on both sides of 64-bit word boundaries, the range ends, duplicates and two negative codes
    keys = torch.tensor([127, 64, 63, 0, -1, 64, 191, 128, -2, 0, 63, 1000 - 1, 65, 62, 1], dtype=torch.int64)
    u, inv, c = assert_unique_matches(keys, key_range=1000, method="occupancy")
    assert u.tolist() == [0, 1, 62, 63, 64, 65, 127, 128, 191, 999]
    assert c.tolist() == [2, 1, 1, 2, 2, 1, 1, 1, 1, 1]
    assert_unique_matches(torch.full((70,), -1, dtype=torch.int64), key_range=64, method="occupancy")
    u, inv, c = H.unique_keys_with_inverse(torch.empty(0, dtype=torch.int64), 10, "occupancy")
    assert u.shape == inv.shape == c.shape == (0,)


def test_occupancy_identical_for_any_partition_count(parts):
    keys = random_keys(BIG, 3 * BIG, seed=41, neg_frac=0.05)
    keys[:64] = 3 * BIG - 1 - torch.arange(64)
    want = R.unique_keys_with_inverse(keys)
    for n in (1, 2, 3, 4):
        parts(n)
        for a, b in zip(H.unique_keys_with_inverse(keys, 3 * BIG, "occupancy"), want):
            assert torch.equal(a, b), n


def test_auto_method_choice(monkeypatch):
    calls = []
    real = H.occupancy_unique
    monkeypatch.setattr(H, "occupancy_unique", lambda k, r: calls.append(r) or real(k, r))
    keys = random_keys(1000, 300, seed=5)
    H.unique_keys_with_inverse(keys)  # no range: sort
    H.unique_keys_with_inverse(keys, 1000 * H.OCCUPANCY_CELLS_PER_KEY + 1)  # too sparse: sort
    assert calls == []
    H.unique_keys_with_inverse(keys, 1000 * H.OCCUPANCY_CELLS_PER_KEY)
    assert calls == [1000 * H.OCCUPANCY_CELLS_PER_KEY]


def test_unique_empty_and_all_negative():
    u, inv, c = H.unique_keys_with_inverse(torch.empty(0, dtype=torch.int64))
    assert u.shape == (0,) and inv.shape == (0,) and c.shape == (0,)
    assert c.dtype == torch.int32 and inv.dtype == torch.int64
    u, inv, c = assert_unique_matches(torch.full((9,), -1, dtype=torch.int64))
    assert u.numel() == 0 and inv.tolist() == [-1] * 9


def test_unique_single_key_and_all_equal():
    u, inv, c = assert_unique_matches(torch.tensor([42], dtype=torch.int64))
    assert u.tolist() == [42] and inv.tolist() == [0] and c.tolist() == [1]
    u, inv, c = assert_unique_matches(torch.full((1000,), 2**61 + 3, dtype=torch.int64))
    assert c.tolist() == [1000]


def test_unique_wrong_input_raises():
    keys = torch.tensor([3, 9, -1], dtype=torch.int64)
    with pytest.raises(ValueError, match="key_range"):
        H.unique_keys_with_inverse(keys, method="occupancy")
    with pytest.raises(ValueError, match="outside key_range"):
        H.unique_keys_with_inverse(keys, 9)
    with pytest.raises(ValueError, match="too large"):
        H.unique_keys_with_inverse(keys, H.OCCUPANCY_MAX_CELLS + 1, "occupancy")
    with pytest.raises(ValueError, match="method"):
        H.unique_keys_with_inverse(keys, 10, "radix")
    with pytest.raises(ValueError, match="keys"):
        H.unique_keys_with_inverse(torch.arange(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="keys"):
        H.unique_keys_with_inverse(torch.zeros(2, 2, dtype=torch.int64))


# ----------------------------------------------------------------------------- partitioned (multi-thread) path
def test_partitioned_path_default_threads():
    keys = random_keys(BIG, BIG // 3, seed=11, neg_frac=0.1)
    queries = torch.cat([keys, random_keys(5000, BIG, seed=12)])
    assert_table_matches(keys, queries)
    assert_unique_matches(keys)


def test_results_identical_for_any_partition_count(parts):
    keys = random_keys(BIG, BIG // 2, seed=21, neg_frac=0.05)
    keys[:100] = 2**62 - 1 - torch.arange(100)  # include extreme keys
    queries = torch.cat([keys, random_keys(4000, BIG, seed=22), torch.tensor([-1, 2**62])])
    results = {}
    for n in (1, 2, 3, 4):
        parts(n)
        table = H.VoxelHashTable(keys)
        assert table.num_parts == n
        results[n] = (table.query(queries), *H.unique_keys_with_inverse(keys))
    want_q = R.VoxelHashTable(keys).query(queries)
    want_u = R.unique_keys_with_inverse(keys)
    for n, (q, u, inv, c) in results.items():
        assert torch.equal(q, want_q), n
        assert torch.equal(u, want_u[0]), n
        assert torch.equal(inv, want_u[1]), n
        assert torch.equal(c, want_u[2]), n


def test_partitioned_low_bit_collisions(parts):
    parts(3)
    keys = random_keys(BIG, 20_000, seed=31) * 2**20
    assert_table_matches(keys, torch.cat([keys[:5000], keys[:5000] + 2**19]))
    assert_unique_matches(keys)


def test_partitioned_skewed_keys_fall_back_to_one_table(parts):
    """Every key owned by sub-table 0 of 4: that sub-table overflows and the table is rebuilt as one part."""
    parts(4)
    cand = np.arange(0, 250_000, dtype=np.int64)
    owner = (mix64_np(cand) >> np.uint64(40)) % np.uint64(4)
    chosen = torch.from_numpy(cand[owner == 0][:40_000].copy())
    assert chosen.numel() == 40_000
    g = torch.Generator().manual_seed(41)
    chosen = chosen[torch.randperm(chosen.numel(), generator=g)]
    keys = torch.cat([chosen, chosen[:3000]])  # duplicates too
    absent = torch.from_numpy(cand[owner == 1][:2000].copy())  # owned by another sub-table, never inserted
    table = assert_table_matches(keys, torch.cat([keys, absent]))
    assert table.num_parts == 1  # the documented rebuild happened
    assert_unique_matches(keys)
