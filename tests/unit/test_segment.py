"""Segment sum / mean / max (Warp, with autograd) vs the torch oracles in kernels/reference/segment.py, plus
hand-computed cases: empty segments, ties routed to ONE row (the smallest index), finite-difference gradients,
and the multi-thread partitioned CPU path.
"""

from __future__ import annotations

import pytest
import torch

import sparse3d.kernels.runtime as runtime
from sparse3d.kernels import segment as S
from sparse3d.kernels.reference import segment as R

BIG = runtime.SPLIT_MIN_ELEMENTS + 5_000


# ------------------------------------------------------------------------------------------------ helpers
def random_case(n: int, c: int, m: int, seed: int, neg_frac: float = 0.1, id_dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(n, c, generator=g)
    ids = torch.randint(0, max(m, 1), (n,), generator=g, dtype=torch.int64)
    ids[torch.rand(n, generator=g) < neg_frac] = -1
    if m == 0:
        ids.fill_(-1)
    return values, ids.to(id_dtype)


def assert_sum_like(fn_ours, fn_ref, values, ids, m, seed=0):
    x = values.clone().requires_grad_(True)
    xr = values.clone().requires_grad_(True)
    out, ref = fn_ours(x, ids, m), fn_ref(xr, ids, m)
    assert out.shape == (m, values.shape[1]) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (gx,) = torch.autograd.grad(out, x, g)
    (gr,) = torch.autograd.grad(ref, xr, g)
    torch.testing.assert_close(gx, gr, rtol=1e-5, atol=1e-6)


def assert_max(values, ids, m, seed=0):
    x = values.clone().requires_grad_(True)
    xr = values.clone().requires_grad_(True)
    (out, arg), (ref, ref_arg) = S.segment_max(x, ids, m), R.segment_max(xr, ids, m)
    assert out.dtype == torch.float32 and arg.dtype == torch.int64
    assert torch.equal(out, ref)
    assert torch.equal(arg, ref_arg)
    assert not arg.requires_grad
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (gx,) = torch.autograd.grad(out, x, g)
    (gr,) = torch.autograd.grad(ref, xr, g)
    assert torch.equal(gx, gr)
    return out, arg, gx


# --------------------------------------------------------------------------------------------- vs reference
@pytest.mark.parametrize(
    "n,c,m,seed,id_dtype",
    [
        (1, 1, 1, 0, torch.int64),
        (50, 3, 7, 1, torch.int32),
        (2000, 8, 300, 2, torch.int64),
        (500, 4, 1000, 3, torch.int32),
    ],
)
def test_sum_mean_random(n, c, m, seed, id_dtype):
    values, ids = random_case(n, c, m, seed, id_dtype=id_dtype)
    assert_sum_like(S.segment_sum, R.segment_sum, values, ids, m, seed)
    assert_sum_like(S.segment_mean, R.segment_mean, values, ids, m, seed)


@pytest.mark.parametrize(
    "n,c,m,seed,id_dtype",
    [
        (1, 1, 1, 0, torch.int64),
        (50, 3, 7, 1, torch.int32),
        (2000, 8, 300, 2, torch.int64),
        (500, 4, 1000, 3, torch.int32),
    ],
)
def test_max_random(n, c, m, seed, id_dtype):
    values, ids = random_case(n, c, m, seed, id_dtype=id_dtype)
    assert_max(values, ids, m, seed)


def test_sum_mean_max_hand_computed():
    values = torch.tensor([[1.0, -2.0], [3.0, 4.0], [5.0, -6.0], [7.0, 8.0], [100.0, 100.0]])
    ids = torch.tensor([0, 2, 0, 2, -1])
    assert S.segment_sum(values, ids, 4).tolist() == [[6.0, -8.0], [0.0, 0.0], [10.0, 12.0], [0.0, 0.0]]
    assert S.segment_mean(values, ids, 4).tolist() == [[3.0, -4.0], [0.0, 0.0], [5.0, 6.0], [0.0, 0.0]]
    out, arg = S.segment_max(values, ids, 4)
    assert out.tolist() == [[5.0, -2.0], [0.0, 0.0], [7.0, 8.0], [0.0, 0.0]]
    assert arg.tolist() == [[2, 0], [-1, -1], [3, 3], [-1, -1]]
    assert S.segment_count(ids, 4).tolist() == [2, 0, 2, 0]


def test_empty_segments_and_no_rows():
    # no rows at all
    v = torch.empty(0, 3)
    ids = torch.empty(0, dtype=torch.int64)
    assert torch.equal(S.segment_sum(v, ids, 4), torch.zeros(4, 3))
    assert torch.equal(S.segment_mean(v, ids, 4), torch.zeros(4, 3))
    out, arg = S.segment_max(v, ids, 4)
    assert torch.equal(out, torch.zeros(4, 3)) and torch.equal(arg, torch.full((4, 3), -1))
    # all rows dropped (-1), zero segments
    v, ids = random_case(30, 2, 0, seed=5)
    assert S.segment_sum(v, ids, 0).shape == (0, 2)
    out, arg = S.segment_max(v, ids, 0)
    assert out.shape == (0, 2) and arg.shape == (0, 2)
    # rows only in segment 1 of 3: segments 0 and 2 give 0 / argmax -1, and get no gradient
    v = torch.tensor([[-5.0], [-7.0]], requires_grad=True)
    out, arg = S.segment_max(v, torch.tensor([1, 1]), 3)
    assert out.tolist() == [[0.0], [-5.0], [0.0]] and arg.tolist() == [[-1], [0], [-1]]
    (g,) = torch.autograd.grad(out.sum(), v)
    assert g.tolist() == [[1.0], [0.0]]


def test_single_row():
    v = torch.tensor([[2.5, -1.0, 0.0]], requires_grad=True)
    ids = torch.tensor([0], dtype=torch.int32)
    assert S.segment_sum(v, ids, 1).tolist() == [[2.5, -1.0, 0.0]]
    assert S.segment_mean(v, ids, 2).tolist() == [[2.5, -1.0, 0.0], [0.0, 0.0, 0.0]]
    out, arg = S.segment_max(v, ids, 1)
    assert out.tolist() == [[2.5, -1.0, 0.0]] and arg.tolist() == [[0, 0, 0]]
    (g,) = torch.autograd.grad((out * torch.tensor([[1.0, 2.0, 3.0]])).sum(), v)
    assert g.tolist() == [[1.0, 2.0, 3.0]]


# ----------------------------------------------------------------------------------------------------- ties
def test_max_ties_gradient_goes_to_smallest_index_only():
    # ReLU makes many exact zeros: the whole gradient must go to the smallest row, never split
    raw = torch.tensor([[-1.0, 2.0], [-3.0, 2.0], [-0.5, 1.0], [-2.0, 2.0], [4.0, -1.0], [-1.0, -1.0]])
    ids = torch.tensor([1, 0, 1, 1, 0, 0])
    x = raw.clone().requires_grad_(True)
    v = torch.relu(x)
    out, arg = S.segment_max(v, ids, 2)
    # segment 0 = rows 1, 4, 5 ; segment 1 = rows 0, 2, 3
    assert out.tolist() == [[4.0, 2.0], [0.0, 2.0]]
    assert arg.tolist() == [[4, 1], [0, 0]]
    gout = torch.tensor([[10.0, 20.0], [30.0, 40.0]])
    (g,) = torch.autograd.grad(out, v, gout, retain_graph=True)
    want = torch.zeros(6, 2)
    want[4, 0] = 10.0
    want[1, 1] = 20.0
    want[0, 0] = 30.0  # ReLU zeros tie in rows 0, 2, 3: row 0 takes all
    want[0, 1] = 40.0  # 2.0 ties in rows 0, 3: row 0 takes all
    assert torch.equal(g, want)
    # and through the ReLU: rows whose raw value was negative receive nothing
    (gx,) = torch.autograd.grad(out, x, gout)
    want_x = want.clone()
    want_x[0, 0] = 0.0
    assert torch.equal(gx, want_x)


def test_max_many_equal_values_large():
    n, m = 5000, 37
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(0, m, (n,), generator=g)
    values = torch.relu(torch.randn(n, 4, generator=g)).round()  # lots of exact 0s, 1s, 2s
    out, arg, grad = assert_max(values, ids, m)
    # one nonzero per (segment, column), at the smallest row attaining the max
    for s in range(m):
        rows = torch.nonzero(ids == s).flatten()
        for c in range(4):
            best = values[rows, c].max()
            first = rows[values[rows, c] == best].min()
            assert arg[s, c].item() == first.item()
    assert int((grad != 0).sum()) <= m * 4
    assert torch.equal((grad != 0).sum(0), (arg >= 0).sum(0))


def test_max_neg_inf_values():
    v = torch.tensor([[float("-inf")], [float("-inf")], [1.0]])
    out, arg = S.segment_max(v, torch.tensor([0, 0, 1]), 2)
    ref, ref_arg = R.segment_max(v, torch.tensor([0, 0, 1]), 2)
    assert torch.equal(out, ref) and torch.equal(arg, ref_arg)
    assert arg.tolist() == [[0], [2]]


# ---------------------------------------------------------------------------------------------- gradients
def test_finite_difference_gradients():
    g = torch.Generator().manual_seed(7)
    # well separated values so the argmax cannot flip under the perturbation
    values = (torch.randperm(24, generator=g).to(torch.float32).reshape(8, 3) * 0.5).requires_grad_(True)
    ids = torch.tensor([0, 2, 2, -1, 0, 2, 3, 0])
    for fn in (
        lambda v: S.segment_sum(v, ids, 4),
        lambda v: S.segment_mean(v, ids, 4),
        lambda v: S.segment_max(v, ids, 4)[0],
    ):
        assert torch.autograd.gradcheck(fn, (values,), eps=1e-2, atol=1e-2, rtol=1e-2, nondet_tol=0.0)


def test_mean_gradient_analytic():
    v = torch.ones(5, 2, requires_grad=True)
    ids = torch.tensor([0, 0, 0, 1, -1])
    out = S.segment_mean(v, ids, 2)
    (g,) = torch.autograd.grad(out.sum(), v)
    third = 1.0 / 3.0
    torch.testing.assert_close(g, torch.tensor([[third] * 2] * 3 + [[1.0, 1.0], [0.0, 0.0]]))


def test_non_contiguous_values_with_grad():
    base = torch.randn(200, 6, generator=torch.Generator().manual_seed(8))
    ids = torch.randint(-1, 10, (200,), generator=torch.Generator().manual_seed(9))
    leaf = base.clone().requires_grad_(True)
    v = leaf[:, ::2]
    assert not v.is_contiguous()
    out = S.segment_sum(v, ids, 10)
    torch.testing.assert_close(out, R.segment_sum(base[:, ::2], ids, 10), rtol=1e-5, atol=1e-5)
    mx, _ = S.segment_max(v, ids, 10)
    (g,) = torch.autograd.grad(out.sum() + mx.sum(), leaf)
    ref_leaf = base.clone().requires_grad_(True)
    rv = ref_leaf[:, ::2]
    (gr,) = torch.autograd.grad(
        R.segment_sum(rv, ids, 10).sum() + R.segment_max(rv, ids, 10)[0].sum(), ref_leaf
    )
    torch.testing.assert_close(g, gr)


# ------------------------------------------------------------------------------------- partitioned CPU path
def test_large_partitioned_default_threads():
    values, ids = random_case(BIG, 4, 5000, seed=10)
    values[::3] = torch.relu(values[::3])  # ties
    assert_sum_like(S.segment_sum, R.segment_sum, values, ids, 5000)
    assert_sum_like(S.segment_mean, R.segment_mean, values, ids, 5000)
    assert_max(values, ids, 5000)


@pytest.mark.parametrize("threads", [3, 4])
def test_large_partitioned_forced_threads(monkeypatch, threads):
    monkeypatch.setattr(runtime, "cpu_threads", lambda: threads)
    assert runtime.num_parts("cpu", BIG) == threads
    values, ids = random_case(BIG, 2, 777, seed=11 + threads)
    values = torch.relu(values)
    assert_sum_like(S.segment_sum, R.segment_sum, values, ids, 777)
    assert_sum_like(S.segment_mean, R.segment_mean, values, ids, 777)
    assert_max(values, ids, 777)


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("fn", [S.segment_sum, S.segment_mean, S.segment_max])
def test_errors(fn):
    v = torch.randn(5, 2)
    ids = torch.tensor([0, 1, 2, -1, 0])
    with pytest.raises(ValueError, match="segment_ids"):
        fn(v, ids, 2)  # id 2 out of range
    with pytest.raises(ValueError, match="segment_ids"):
        fn(v, torch.tensor([0, 1, -2, 0, 0]), 3)  # below -1
    with pytest.raises(ValueError, match="segment_ids"):
        fn(v, ids[:4], 3)  # length mismatch
    with pytest.raises(ValueError, match="segment_ids"):
        fn(v, ids.float(), 3)
    with pytest.raises(ValueError, match="values"):
        fn(v.double(), ids, 3)
    with pytest.raises(ValueError, match="values"):
        fn(v[:, 0].contiguous(), ids, 3)  # 1-D values
    with pytest.raises(ValueError, match="num_segments"):
        fn(v, ids, -1)
