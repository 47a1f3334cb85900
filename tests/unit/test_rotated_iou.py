"""Rotated BEV / 3-D IoU and rotated NMS (:mod:`sparse3d.kernels.rotated_iou`) and their torch oracle.

Oracles: shapely's polygon intersection (an independent exact clipper, float64) on thousands of random and
near-coincident box pairs; hand-computed BEV and 3-D cases (identical, disjoint, touching, nested, 90-degree
cross, coincident edges, vertices on edges, zero-size boxes); a plain-python greedy NMS over shapely IoUs;
properties (symmetry, matrix equals the aligned pairs, independence of how the CPU launch is split).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import shapely
import torch

from sparse3d.kernels import rotated_iou as K
from sparse3d.kernels.reference import rotated_iou as R

CUDA = torch.cuda.is_available()
IMPLS = [pytest.param(K, id="warp"), pytest.param(R, id="reference")]
PI = math.pi


def _box(x: float, y: float, dx: float, dy: float, h: float = 0.0, z: float = 0.0, dz: float = 1.0) -> list[float]:
    return [x, y, z, dx, dy, dz, h]


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 7)


# ---------------------------------------------------------------------------------------------- shapely oracle
def _polygons(boxes: torch.Tensor) -> np.ndarray:
    b = boxes.detach().cpu().to(torch.float64).numpy()
    c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
    sx = np.array([0.5, -0.5, -0.5, 0.5])
    sy = np.array([0.5, 0.5, -0.5, -0.5])
    lx = sx[None] * b[:, 3:4]
    ly = sy[None] * b[:, 4:5]
    x = b[:, 0:1] + c[:, None] * lx - s[:, None] * ly
    y = b[:, 1:2] + s[:, None] * lx + c[:, None] * ly
    return shapely.polygons(np.stack([x, y], -1))


def _shapely_iou(a: torch.Tensor, b: torch.Tensor, three_d: bool = False) -> np.ndarray:
    """IoU of aligned rows by shapely (float64); zero-size boxes give 0."""
    pa, pb = _polygons(a), _polygons(b)
    inter = shapely.area(shapely.intersection(pa, pb))
    an = a.detach().cpu().to(torch.float64).numpy()
    bn = b.detach().cpu().to(torch.float64).numpy()
    va, vb = an[:, 3] * an[:, 4], bn[:, 3] * bn[:, 4]
    ok = (an[:, 3] > 0) & (an[:, 4] > 0) & (bn[:, 3] > 0) & (bn[:, 4] > 0)
    if three_d:
        top = np.minimum(an[:, 2] + an[:, 5] / 2, bn[:, 2] + bn[:, 5] / 2)
        bottom = np.maximum(an[:, 2] - an[:, 5] / 2, bn[:, 2] - bn[:, 5] / 2)
        inter = inter * np.clip(top - bottom, 0, None)
        va, vb = va * an[:, 5], vb * bn[:, 5]
        ok &= (an[:, 5] > 0) & (bn[:, 5] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (va + vb - inter)
    return np.where(ok & (inter > 0), iou, 0.0)


def _shapely_matrix(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    n, m = a.shape[0], b.shape[0]
    return _shapely_iou(a.repeat_interleave(m, 0), b.repeat(n, 1)).reshape(n, m)


def _random_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs with sizes 0.1-20 m, aspect ratios up to ~200, any headings; a quarter are near-coincident."""
    g = torch.Generator().manual_seed(seed)
    size = torch.exp(torch.empty(n, 3).uniform_(math.log(0.1), math.log(20.0), generator=g))
    a = torch.cat([torch.rand(n, 3, generator=g) * 200 - 100, size, torch.rand(n, 1, generator=g) * 4 * PI - 2 * PI], 1)
    b = a.clone()
    scale = size[:, :2].mean(1, keepdim=True)
    b[:, :3] += torch.randn(n, 3, generator=g) * scale * 0.5
    b[:, 3:6] *= torch.exp(torch.randn(n, 3, generator=g) * 0.5)
    b[:, 6] += torch.randn(n, generator=g)
    near = torch.arange(n) % 4 == 0
    tiny = 10 ** torch.empty(n, 1).uniform_(-6, -2, generator=g)
    b[near] = a[near] + (torch.randn(int(near.sum()), 7, generator=g) * tiny[near]) * torch.tensor(
        [1, 1, 1, 1, 1, 1, 0.1]
    )
    # a few pairs that share the heading (or differ by 90 degrees): parallel edges
    par = torch.arange(n) % 8 == 1
    b[par, 6] = a[par, 6] + (torch.randint(0, 4, (int(par.sum()),), generator=g) * (PI / 2)).to(torch.float32)
    return a, b


# ------------------------------------------------------------------------------------------------ hand cases
HAND_CASES = [
    # (a, b, BEV IoU)
    ("identical", _box(0, 0, 4, 2), _box(0, 0, 4, 2), 1.0),
    ("identical rotated far", _box(71.3, -40.2, 3.9, 1.6, 0.7), _box(71.3, -40.2, 3.9, 1.6, 0.7), 1.0),
    ("heading + pi", _box(1, 2, 4, 2, 0.3), _box(1, 2, 4, 2, 0.3 + PI), 1.0),
    ("square turned 90 deg", _box(5, 5, 2, 2, 0.0), _box(5, 5, 2, 2, PI / 2), 1.0),
    ("rectangle dx/dy swapped and turned", _box(0, 0, 4, 2, 0.0), _box(0, 0, 2, 4, PI / 2), 1.0),
    ("disjoint", _box(0, 0, 2, 2), _box(10, 0, 2, 2), 0.0),
    ("touching edge", _box(0, 0, 2, 2), _box(2, 0, 2, 2), 0.0),
    ("touching corner", _box(0, 0, 2, 2), _box(2, 2, 2, 2), 0.0),
    ("touching edge rotated 90", _box(0, 0, 2, 2), _box(2, 0.5, 2, 2, PI / 2), 0.0),
    ("nested", _box(0, 0, 4, 4), _box(0.5, -0.5, 2, 1, 0.4), 2.0 / 16.0),
    ("nested sharing an edge", _box(0, 0, 4, 2), _box(1, 0, 2, 2), 0.5),
    ("coincident edges, half shifted", _box(0, 0, 2, 1), _box(1, 0, 2, 1), 1.0 / 3.0),
    ("cross 90 deg", _box(0, 0, 2, 1), _box(0, 0, 2, 1, PI / 2), 1.0 / 3.0),
    ("plus sign", _box(0, 0, 6, 2), _box(0, 0, 2, 6), 4.0 / 20.0),
    ("diamond inscribed, vertices on edges", _box(0, 0, 2, 2), _box(0, 0, math.sqrt(2), math.sqrt(2), PI / 4), 0.5),
    ("quarter overlap", _box(0, 0, 2, 2), _box(1, 1, 2, 2), 1.0 / 7.0),
    ("zero dx", _box(0, 0, 0, 2), _box(0, 0, 2, 2), 0.0),
    ("zero both", _box(0, 0, 0, 0), _box(0, 0, 0, 0), 0.0),
    ("zero dy identical", _box(1, 1, 2, 0, 0.3), _box(1, 1, 2, 0, 0.3), 0.0),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", HAND_CASES, ids=[c[0] for c in HAND_CASES])
def test_bev_hand_cases(impl, case) -> None:
    _, a, b, expected = case
    for x, y in ((a, b), (b, a)):
        m = impl.boxes_iou_bev(_t([x]), _t([y]))
        v = impl.boxes_iou_bev_aligned(_t([x]), _t([y]))
        assert m.shape == (1, 1) and m.dtype == torch.float32 and v.shape == (1,)
        assert not torch.isnan(m).any()
        assert float(m[0, 0]) == pytest.approx(expected, abs=1e-5)
        assert float(v[0]) == float(m[0, 0])


@pytest.mark.parametrize("impl", IMPLS)
def test_touching_and_identical_are_exact_without_rotation(impl) -> None:
    """Axis-aligned boxes that only touch give exactly 0; identical boxes give 1 to float32 rounding."""
    a = _t([_box(0, 0, 2, 2), _box(0, 0, 2, 2), _box(3.7, -1.1, 0.3, 7.0, 0.2)])
    b = _t([_box(2, 0, 2, 2), _box(0, -2, 2, 2), _box(3.7, -1.1, 0.3, 7.0, 0.2)])
    iou = impl.boxes_iou_bev_aligned(a, b)
    assert iou[0] == 0.0 and iou[1] == 0.0
    assert abs(float(iou[2]) - 1.0) <= 1e-6


HAND_3D = [
    # (a, b, 3-D IoU)
    ("identical", _box(0, 0, 4, 2, 0.3, z=1.0, dz=1.5), _box(0, 0, 4, 2, 0.3, z=1.0, dz=1.5), 1.0),
    ("half z", _box(0, 0, 2, 2, z=0.0, dz=2.0), _box(0, 0, 2, 2, z=1.0, dz=2.0), 4.0 / 12.0),
    ("touching in z", _box(0, 0, 2, 2, z=0.0, dz=2.0), _box(0, 0, 2, 2, z=2.0, dz=2.0), 0.0),
    ("apart in z", _box(0, 0, 2, 2, z=0.0, dz=1.0), _box(0, 0, 2, 2, z=5.0, dz=1.0), 0.0),
    # BEV quarter overlap (1 m^2) x z overlap 1 m: inter 1, volumes 8 and 8
    ("quarter bev, half z", _box(0, 0, 2, 2, z=0.0, dz=2.0), _box(1, 1, 2, 2, z=1.0, dz=2.0), 1.0 / 15.0),
    # nested in 3-D: 2x1x1 inside 4x4x4
    ("nested", _box(0, 0, 4, 4, z=0.0, dz=4.0), _box(0.5, 0.5, 2, 1, 1.0, z=1.0, dz=1.0), 2.0 / 64.0),
    # cross: BEV inter 1, z overlap 1 of heights 2 and 1: inter 1, volumes 4 and 2
    ("cross", _box(0, 0, 2, 1, z=0.0, dz=2.0), _box(0, 0, 2, 1, PI / 2, z=0.5, dz=1.0), 1.0 / 5.0),
    ("zero dz", _box(0, 0, 2, 2, z=0.0, dz=0.0), _box(0, 0, 2, 2, z=0.0, dz=0.0), 0.0),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", HAND_3D, ids=[c[0] for c in HAND_3D])
def test_3d_hand_cases(impl, case) -> None:
    _, a, b, expected = case
    for x, y in ((a, b), (b, a)):
        m = impl.boxes_iou_3d(_t([x]), _t([y]))
        v = impl.boxes_iou_3d_aligned(_t([x]), _t([y]))
        assert m.shape == (1, 1) and v.shape == (1,) and not torch.isnan(m).any()
        assert float(m[0, 0]) == pytest.approx(expected, abs=1e-5)
        assert float(v[0]) == float(m[0, 0])


# --------------------------------------------------------------------------------------- random vs shapely
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_pairs_match_shapely(impl, seed) -> None:
    a, b = _random_pairs(2500, seed)
    expected = _shapely_iou(a, b)
    assert (expected > 0.05).mean() > 0.4 and (expected == 0).mean() > 0.05  # the sample mixes both kinds
    assert (expected > 0.99).sum() > 100  # near-coincident pairs
    bev = impl.boxes_iou_bev_aligned(a, b).double().numpy()
    np.testing.assert_allclose(bev, expected, rtol=0, atol=1e-4)
    iou3 = impl.boxes_iou_3d_aligned(a, b).double().numpy()
    np.testing.assert_allclose(iou3, _shapely_iou(a, b, three_d=True), rtol=0, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_matrix_matches_shapely_and_aligned(impl) -> None:
    a, b = _random_pairs(60, 5)
    b = torch.cat([b, a[:10]])  # identical boxes in the matrix as well
    m = impl.boxes_iou_bev(a, b)
    assert m.shape == (60, 70) and m.dtype == torch.float32
    np.testing.assert_allclose(m.double().numpy(), _shapely_matrix(a, b), rtol=0, atol=1e-4)
    # symmetry, and the matrix entry equals the aligned pair's value
    torch.testing.assert_close(impl.boxes_iou_bev(b, a), m.T, rtol=0, atol=1e-6)
    i = torch.arange(60).repeat_interleave(70)
    j = torch.arange(70).repeat(60)
    torch.testing.assert_close(impl.boxes_iou_bev_aligned(a[i], b[j]), m.reshape(-1), rtol=0, atol=0)
    torch.testing.assert_close(impl.boxes_iou_3d_aligned(a[i], b[j]), impl.boxes_iou_3d(a, b).reshape(-1),
                               rtol=0, atol=0)


def test_warp_matches_reference_on_dense_matrix() -> None:
    """A launch large enough to be split over the CPU threads agrees with the oracle and with one thread."""
    g = torch.Generator().manual_seed(11)
    n = 150
    boxes = torch.cat([torch.rand(n, 3, generator=g) * 6, torch.rand(n, 3, generator=g) * 4 + 0.2,
                       torch.rand(n, 1, generator=g) * 2 * PI], 1)
    ours = K.boxes_iou_bev(boxes, boxes)
    assert n * n >= K.SPLIT_MIN_PAIRS and (ours > 0).float().mean() > 0.3
    torch.testing.assert_close(ours, R.boxes_iou_bev(boxes, boxes), rtol=0, atol=1e-5)
    torch.testing.assert_close(K.boxes_iou_3d(boxes, boxes), R.boxes_iou_3d(boxes, boxes), rtol=0, atol=1e-5)
    assert torch.allclose(torch.diagonal(ours), torch.ones(n), atol=1e-5)
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("SPARSE3D_CPU_THREADS", "1")
        single = K.boxes_iou_bev(boxes, boxes)
        mp.setenv("SPARSE3D_CPU_THREADS", "3")
        three = K.boxes_iou_bev(boxes, boxes)
    finally:
        mp.undo()
    assert torch.equal(single, ours) and torch.equal(three, ours)


def test_nested_is_area_ratio_random() -> None:
    """A box fully inside another (by construction) has IoU = its area / the outer area."""
    g = torch.Generator().manual_seed(3)
    n = 300
    outer = torch.cat([torch.randn(n, 3, generator=g) * 30, torch.rand(n, 3, generator=g) * 10 + 5,
                       torch.rand(n, 1, generator=g) * 2 * PI], 1)
    inner = outer.clone()
    inner[:, 3:5] = outer[:, 3:5] * torch.rand(n, 2, generator=g) * 0.3 + 0.05  # small enough for any heading
    inner[:, 6] = torch.rand(n, generator=g) * 2 * PI
    expected = (inner[:, 3] * inner[:, 4]) / (outer[:, 3] * outer[:, 4])
    for impl in (K, R):
        torch.testing.assert_close(impl.boxes_iou_bev_aligned(inner, outer), expected, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------------- NMS
def _nms_python(iou: np.ndarray, scores: torch.Tensor, thr: float, pre_max=None, post_max=None) -> list[int]:
    """Plain greedy NMS over the shapely IoU matrix ``iou``, written straight from the definition."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    if pre_max is not None:
        order = order[:pre_max]
    keep: list[int] = []
    for i in order:
        if post_max is not None and len(keep) >= post_max:
            break
        if all(iou[i, k] <= thr for k in keep):
            keep.append(i)
    return keep


def _cluttered(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Detections around a few objects: many overlapping near-duplicates, with tied scores."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.cat([torch.rand(n // 6, 2, generator=g) * 30, torch.rand(n // 6, 1, generator=g)], 1)
    pick = torch.randint(0, centres.shape[0], (n,), generator=g)
    xyz = centres[pick] + torch.randn(n, 3, generator=g) * 0.6
    dims = torch.tensor([4.0, 1.8, 1.6]) * torch.exp(torch.randn(n, 3, generator=g) * 0.15)
    heading = (pick.float() * 0.7 + torch.randn(n, generator=g) * 0.2)[:, None]
    scores = torch.round(torch.rand(n, generator=g) * 50) / 50  # ties
    return torch.cat([xyz, dims, heading], 1), scores


@functools.cache
def _cluttered_with_iou(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    boxes, scores = _cluttered(n, seed)
    return boxes, scores, _shapely_matrix(boxes, boxes)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("thr", [0.1, 0.5, 0.7])
def test_nms_matches_python_greedy(seed, thr) -> None:
    boxes, scores, iou = _cluttered_with_iou(240, seed)
    expected = _nms_python(iou, scores, thr)
    ours = K.nms_bev(boxes, scores, thr)
    assert ours.dtype == torch.int64
    assert ours.tolist() == expected
    assert R.nms_bev(boxes, scores, thr).tolist() == expected
    assert 10 < len(expected) < 240  # something suppressed, something kept


def test_nms_pre_and_post_max() -> None:
    boxes, scores, iou = _cluttered_with_iou(200, 7)
    full = K.nms_bev(boxes, scores, 0.3).tolist()
    assert K.nms_bev(boxes, scores, 0.3, post_max=5).tolist() == full[:5]
    assert K.nms_bev(boxes, scores, 0.3, post_max=10_000).tolist() == full
    assert K.nms_bev(boxes, scores, 0.3, post_max=0).tolist() == []
    for pre in (0, 1, 30, 199, 500):
        expected = _nms_python(iou, scores, 0.3, pre_max=pre)
        assert K.nms_bev(boxes, scores, 0.3, pre_max=pre).tolist() == expected
    assert R.nms_bev(boxes, scores, 0.3, pre_max=30, post_max=4).tolist() == _nms_python(iou, scores, 0.3, 30, 4)
    expected = _nms_python(iou, scores, 0.3, pre_max=50, post_max=7)
    assert K.nms_bev(boxes, scores, 0.3, pre_max=50, post_max=7).tolist() == expected


def test_nms_hand_case_and_ties() -> None:
    boxes = _t([_box(0, 0, 2, 2), _box(0.2, 0, 2, 2), _box(5, 5, 2, 2), _box(5, 5, 2, 2, PI / 2), _box(20, 0, 1, 1)])
    scores = torch.tensor([0.5, 0.9, 0.7, 0.7, 0.1])
    # 1 first (0.9) suppresses 0; 2 and 3 tie (identical footprints): the lower index wins; 4 is alone
    assert K.nms_bev(boxes, scores, 0.5).tolist() == [1, 2, 4]
    # a threshold of 1 suppresses nothing (IoU > 1 never holds): all boxes by score, ties by index
    assert K.nms_bev(boxes, scores, 1.0).tolist() == [1, 2, 3, 0, 4]
    # zero-size boxes overlap nothing
    flat = boxes.clone()
    flat[:, 3] = 0
    assert K.nms_bev(flat, scores, 0.0).tolist() == [1, 2, 3, 0, 4]


def test_nms_many_boxes_crosses_word_boundaries() -> None:
    """More than 64 boxes per cluster, so suppression crosses the 64-bit words of the mask."""
    boxes, scores = _cluttered(400, 9)
    boxes[:, :2] *= 0.3  # crowd them
    expected = R.nms_bev(boxes, scores, 0.4).tolist()
    assert K.nms_bev(boxes, scores, 0.4).tolist() == expected
    assert K.nms_bev(boxes, scores.double(), 0.4).tolist() == expected


# ------------------------------------------------------------------------------------- shapes and arguments
@pytest.mark.parametrize("impl", IMPLS)
def test_empty_inputs(impl) -> None:
    e = torch.zeros(0, 7)
    a = _t([_box(0, 0, 1, 1), _box(1, 1, 1, 1)])
    assert impl.boxes_iou_bev(e, a).shape == (0, 2)
    assert impl.boxes_iou_bev(a, e).shape == (2, 0)
    assert impl.boxes_iou_3d(e, e).shape == (0, 0)
    assert impl.boxes_iou_bev_aligned(e, e).shape == (0,)
    assert impl.boxes_iou_3d_aligned(e, e).shape == (0,)
    out = impl.nms_bev(e, torch.zeros(0), 0.5)
    assert out.shape == (0,) and out.dtype == torch.int64


def test_non_contiguous_inputs() -> None:
    a, b = _random_pairs(200, 4)
    wide_a = torch.zeros(200, 14)
    wide_a[:, ::2] = a  # strided columns
    b_t = b.T.contiguous().T  # column-major
    assert not wide_a[:, ::2].is_contiguous() and not b_t.is_contiguous()
    torch.testing.assert_close(K.boxes_iou_bev(wide_a[:, ::2], b_t), K.boxes_iou_bev(a, b), rtol=0, atol=0)
    torch.testing.assert_close(K.boxes_iou_3d_aligned(wide_a[:, ::2], b_t), K.boxes_iou_3d_aligned(a, b),
                               rtol=0, atol=0)
    boxes, scores = _cluttered(120, 3)
    wide_s = torch.zeros(240)
    wide_s[::2] = scores
    assert K.nms_bev(boxes.T.contiguous().T, wide_s[::2], 0.5).tolist() == K.nms_bev(boxes, scores, 0.5).tolist()


def test_validation_names_the_argument() -> None:
    a = _t([_box(0, 0, 1, 1)])
    with pytest.raises(ValueError, match="^a "):
        K.boxes_iou_bev(torch.zeros(2, 5), a)
    with pytest.raises(ValueError, match="^b "):
        K.boxes_iou_bev(a, a.double())
    with pytest.raises(ValueError, match="^b "):
        K.boxes_iou_3d_aligned(a, torch.zeros(2, 7))
    with pytest.raises(ValueError, match="^a "):
        K.boxes_iou_3d(a * float("nan"), a)
    with pytest.raises(ValueError, match="^boxes "):
        K.nms_bev(torch.zeros(3, 6), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="^scores "):
        K.nms_bev(torch.zeros(3, 7), torch.zeros(4), 0.5)
    with pytest.raises(ValueError, match="^scores "):
        K.nms_bev(torch.zeros(3, 7), torch.zeros(3, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="^iou_threshold "):
        K.nms_bev(torch.zeros(3, 7), torch.zeros(3), float("nan"))
    with pytest.raises(ValueError, match="^pre_max "):
        K.nms_bev(torch.zeros(3, 7), torch.zeros(3), 0.5, pre_max=-1)
    with pytest.raises(ValueError, match="^post_max "):
        K.nms_bev(torch.zeros(3, 7), torch.zeros(3), 0.5, post_max=2.5)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    a, b = _random_pairs(500, 8)
    for fn in (K.boxes_iou_bev, K.boxes_iou_3d):
        cpu = fn(a[:200], b)
        gpu = fn(a[:200].cuda(), b.cuda())
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-6)
    for fn in (K.boxes_iou_bev_aligned, K.boxes_iou_3d_aligned):
        torch.testing.assert_close(fn(a.cuda(), b.cuda()).cpu(), fn(a, b), rtol=0, atol=1e-6)
    boxes, scores = _cluttered(700, 2)
    keep = K.nms_bev(boxes.cuda(), scores.cuda(), 0.5, pre_max=600, post_max=100)
    assert keep.device.type == "cuda"
    assert keep.cpu().tolist() == K.nms_bev(boxes, scores, 0.5, pre_max=600, post_max=100).tolist()
