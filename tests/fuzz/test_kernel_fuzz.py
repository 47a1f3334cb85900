"""Kernel fuzzing: every Warp kernel family against its plain-torch oracle, >= 10k random + adversarial cases.

Run with ``python -m pytest -m fuzz tests/fuzz`` (or ``SPARSE3D_RUN_FUZZ=1``); the default run skips it. A
case is one independently generated problem instance (one point cloud, key set, segment problem, voxel set,
box pair, Gaussian, camera image...); where the API takes many independent problems in one call (batch
indices, cameras, aligned rows) a group of cases runs in one launch and a disagreeing group is re-run case by
case (see ``fuzz_harness.py``). Every case records its kind: ``random`` or an adversarial generator (empty,
single element, duplicates, grid edges / out of range / non-finite where the API drops them, huge and tiny
values, empty batch elements); groups alternate contiguous and non-contiguous (transposed / strided) input
layouts. Tolerances are those of the family's unit tests (``tests/unit/test_<family>.py``) unless a comment
says why not.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_harness import Case, Fuzzer, Outcome, assert_clean, pick  # noqa: E402

from sparse3d.kernels import gaussian_composite as KC  # noqa: E402
from sparse3d.kernels import gaussian_projection as KP  # noqa: E402
from sparse3d.kernels import gaussian_sh as KSH  # noqa: E402
from sparse3d.kernels import gaussian_tiles as KT  # noqa: E402
from sparse3d.kernels import hashmap as H  # noqa: E402
from sparse3d.kernels import kernel_map as KM  # noqa: E402
from sparse3d.kernels import knn as KNN  # noqa: E402
from sparse3d.kernels import occupancy as OCC  # noqa: E402
from sparse3d.kernels import rotated_iou as RIOU  # noqa: E402
from sparse3d.kernels import segment as SEG  # noqa: E402
from sparse3d.kernels import set_partition as SP  # noqa: E402
from sparse3d.kernels import sparse_conv as SC  # noqa: E402
from sparse3d.kernels import voxelize as VOX  # noqa: E402
from sparse3d.kernels.kernel_map_types import conv_output_grid, triple  # noqa: E402
from sparse3d.kernels.reference import gaussian_raster as R_GS  # noqa: E402
from sparse3d.kernels.reference import hashmap as R_HASH  # noqa: E402
from sparse3d.kernels.reference import kernel_map as R_KM  # noqa: E402
from sparse3d.kernels.reference import knn as R_KNN  # noqa: E402
from sparse3d.kernels.reference import rotated_iou as R_IOU  # noqa: E402
from sparse3d.kernels.reference import segment as R_SEG  # noqa: E402
from sparse3d.kernels.reference import set_partition as R_SP  # noqa: E402
from sparse3d.kernels.reference import sparse_conv as R_SC  # noqa: E402
from sparse3d.kernels.reference import voxelize as R_VOX  # noqa: E402
from sparse3d.kernels.runtime import serial_torch_ops  # noqa: E402

pytestmark = pytest.mark.fuzz

F32 = torch.float32
F64 = torch.float64
LAYOUTS = ("contiguous", "transposed", "strided")
"""Input layouts the groups cycle through: as given, a transposed buffer's view, every other row/column."""


# ------------------------------------------------------------------------------------------------ helpers
def layout(t: torch.Tensor, how: str) -> torch.Tensor:
    """The same values as ``t`` (2-D or more) in a non-contiguous layout (or as given for "contiguous")."""
    if how == "contiguous" or t.dim() < 2 or t.shape[0] == 0:
        return t
    if how == "transposed":
        out = t.transpose(0, 1).contiguous().transpose(0, 1)
    else:  # strided: interleave with garbage along the last axis and take every other column
        wide = torch.stack([t, torch.full_like(t, 7)], dim=-1).reshape(*t.shape[:-1], 2 * t.shape[-1])
        out = wide[..., ::2]
    return out


def cfg_of(case_id: int, group: int, options: Sequence[Any]) -> Any:
    """Configuration shared by the cases of one group: a function of the case id only (reproducible alone)."""
    return options[(case_id // group) % len(options)]


def exact(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Outcome:
    """Bit-exact comparison of named (ours, oracle) tensors: dtype, shape and values."""
    for name, (a, b) in pairs.items():
        if a.dtype != b.dtype or a.shape != b.shape:
            return Outcome(
                False,
                float("inf"),
                float("inf"),
                f"{name}: {a.dtype}{tuple(a.shape)} vs oracle {b.dtype}{tuple(b.shape)}",
            )
        diff = a != b
        if a.is_floating_point():
            diff &= ~(torch.isnan(a) & torch.isnan(b))
        if bool(diff.any()):
            idx = torch.nonzero(diff)[0].tolist()
            err = float((a.double() - b.double()).abs()[diff].max())
            return Outcome(
                False,
                err,
                float("inf"),
                f"{name}{idx}: {a[tuple(idx)].item()} vs oracle "
                f"{b[tuple(idx)].item()} ({int(diff.sum())} entries differ)",
            )
    return Outcome(True)


def close(name: str, a: torch.Tensor, b: torch.Tensor, tol: torch.Tensor | float) -> Outcome:
    """|a - b| <= tol elementwise (tol broadcastable); infinities must match exactly, NaN only NaN."""
    if a.shape != b.shape:
        return Outcome(
            False, float("inf"), float("inf"), f"{name}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
        )
    if a.numel() == 0:
        return Outcome(True)
    a, b = a.detach().double(), b.detach().double()
    tol_t = torch.as_tensor(tol, dtype=F64).expand_as(b)
    both_nan = torch.isnan(a) & torch.isnan(b)
    same_inf = torch.isinf(b) & (a == b)
    err = torch.where(both_nan | same_inf, torch.zeros_like(a), (a - b).abs())
    err = torch.where(torch.isnan(err), torch.full_like(err, math.inf), err)
    ratio = torch.where(err == 0, torch.zeros_like(err), err / tol_t)
    worst = int(torch.argmax(ratio.reshape(-1)))
    r, e = float(ratio.reshape(-1)[worst]), float(err.reshape(-1)[worst])
    idx = np.unravel_index(worst, tuple(b.shape))
    ok = r <= 1.0
    detail = (
        ""
        if ok
        else (
            f"{name}{list(map(int, idx))}: {float(a.reshape(-1)[worst])!r} vs oracle "
            f"{float(b.reshape(-1)[worst])!r} (|err| {e:.3g} > tol {float(tol_t.reshape(-1)[worst]):.3g})"
        )
    )
    return Outcome(ok, e, r, detail)


def merge(*outs: Outcome) -> Outcome:
    """All outcomes together: ok if all are, the worst errors, the first failure's detail."""
    bad = [o for o in outs if not o.ok]
    return Outcome(
        not bad,
        max((o.error for o in outs), default=0.0),
        max((o.ratio for o in outs), default=0.0),
        bad[0].detail if bad else "",
        sum(o.tolerated for o in outs),
    )


def kinds(rng: np.random.Generator, weighted: dict[str, int]) -> str:
    names = list(weighted)
    p = np.array([weighted[k] for k in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def run_family(
    fuzzer: Callable[[str], Fuzzer],
    family: str,
    make_case,
    check,
    group: int,
    known: Callable[[Case], str | None] | None = None,
) -> None:
    # Torch on one thread: the oracles run thousands of tiny ops, for which OpenMP's spinning workers cost
    # more than they give on a shared 2-core runner (the project's own rule for torch glue around Warp
    # launches).
    with serial_torch_ops():
        stats = fuzzer(family).run(make_case, check, group, known=known)
    assert_clean(stats, expect_known=known is not None)


# ------------------------------------------------------------------------------------------------ voxelize
VOX_GROUP = 400
VOX_CFGS = [
    # (voxel_size, point_range, extra feature columns, batch dtype, layout)
    ((0.25, 0.5, 0.125), (-4.0, -3.0, -1.0, 4.0, 3.0, 1.0), 1, torch.int32, "contiguous"),
    ((0.16, 0.16, 4.0), (0.0, -39.68, -3.0, 69.12, 39.68, 1.0), 2, torch.int64, "transposed"),
    ((0.1, 0.1, 0.15), (0.0, -40.0, -3.0, 75.2, 40.0, 1.0), 0, torch.int32, "strided"),
    ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0, 3.0, 2.0, 1.0), 1, torch.int64, "contiguous"),
    ((0.3, 0.7, 0.2), (-1e4, -2.0, -0.5, -9990.0, 5.0, 0.5), 3, torch.int32, "strided"),
]


def _below(v: float) -> float:
    return float(np.nextafter(np.float32(v), np.float32(-np.inf)))


def make_voxelize_case(rng: np.random.Generator, case_id: int) -> Case:
    cfg = cfg_of(case_id, VOX_GROUP, VOX_CFGS)
    size, rng_box, extra = np.array(cfg[0]), np.array(cfg[1]), cfg[2]
    lo, hi = rng_box[:3], rng_box[3:]
    kind = kinds(
        rng,
        {
            "random": 6,
            "empty": 1,
            "single": 1,
            "duplicates": 1,
            "edges": 2,
            "nonfinite": 1,
            "huge": 1,
            "tiny": 1,
        },
    )
    n = {"empty": 0, "single": 1}.get(kind, int(rng.integers(1, 13)))
    span = hi - lo
    xyz = lo - 0.2 * span + 1.4 * span * rng.random((n, 3))
    if kind == "duplicates":
        xyz[:] = xyz[0]
    elif kind == "edges":
        faces = lo + size * rng.integers(0, np.ceil(span / size) + 1, (n, 3))
        choice = rng.integers(0, 5, (n, 3))
        cand = np.stack(
            [
                np.broadcast_to(lo, (n, 3)),
                np.broadcast_to(hi, (n, 3)),
                faces,
                np.vectorize(_below)(np.broadcast_to(lo, (n, 3))),
                np.vectorize(_below)(np.broadcast_to(hi, (n, 3))),
            ],
            0,
        )
        xyz = np.take_along_axis(cand, choice[None], 0)[0]
    elif kind == "nonfinite":
        bad = rng.random((n, 3)) < 0.3
        xyz[bad] = rng.choice([np.nan, np.inf, -np.inf], int(bad.sum()))
    elif kind == "huge":
        big = rng.random((n, 3)) < 0.4
        xyz[big] = rng.choice([1e30, -1e30, 3e38, -3e38, 1e10], int(big.sum()))
    elif kind == "tiny":
        xyz = lo + rng.choice([0.0, 1e-30, -1e-30, 1e-38, 1e-45, -0.0], (n, 3)) * (1 + rng.random((n, 3)))
    pts = np.concatenate([xyz, rng.standard_normal((n, extra))], 1)
    return Case(case_id, kind, cfg, {"points": torch.tensor(pts, dtype=F32).reshape(n, 3 + extra)})


def check_voxelize(cases: list[Case]) -> Outcome:
    size, box, _, bdtype, how = cases[0].cfg
    pts = torch.cat([c.data["points"] for c in cases])
    batch = torch.cat(
        [torch.full((c.data["points"].shape[0],), i, dtype=bdtype) for i, c in enumerate(cases)]
    )
    got = VOX.voxelize(layout(pts, how), size, box, batch)
    want = R_VOX.voxelize(pts, size, box, batch)
    if (got.grid_size, got.num_nonfinite, got.num_out_of_range) != (
        want.grid_size,
        want.num_nonfinite,
        want.num_out_of_range,
    ):
        return Outcome(
            False,
            float("inf"),
            float("inf"),
            f"(grid, nonfinite, out_of_range) {(got.grid_size, got.num_nonfinite, got.num_out_of_range)}"
            f" vs oracle {(want.grid_size, want.num_nonfinite, want.num_out_of_range)}",
        )
    return exact({k: (getattr(got, k), getattr(want, k)) for k in ("coords", "point_to_voxel", "counts")})


def test_voxelize(fuzzer):
    run_family(fuzzer, "voxelize", make_voxelize_case, check_voxelize, VOX_GROUP)


# ------------------------------------------------------------------------------------------------ hashmap
def _keys_case(rng: np.random.Generator, kind: str) -> np.ndarray:
    n = {"empty": 0, "single": 1}.get(kind, int(rng.integers(1, 13)))
    if kind == "near_2_62":
        keys = 2**62 - 1 - rng.integers(0, 6, n)
    elif kind == "low_bits":
        keys = rng.integers(0, 8, n) << int(rng.integers(20, 40))
    elif kind == "duplicates":
        keys = np.full(n, rng.integers(0, 2**40))
    elif kind == "negative":
        keys = rng.integers(-3, 10, n)
    else:
        keys = rng.integers(0, int(rng.choice([4, 16, 1000, 2**31])), n)
    return keys.astype(np.int64)


HASH_KINDS = {
    "random": 6,
    "empty": 1,
    "single": 1,
    "duplicates": 1,
    "near_2_62": 1,
    "low_bits": 1,
    "negative": 1,
}


def make_hashmap_case(rng: np.random.Generator, case_id: int) -> Case:
    kind = kinds(rng, HASH_KINDS)
    keys = _keys_case(rng, kind)
    extra = np.concatenate([keys + 1, keys - 1, [-1, 0, 2**62 - 1], rng.integers(0, 2**40, 3)]).astype(
        np.int64
    )
    queries = np.concatenate([keys, extra])
    rng.shuffle(queries)
    return Case(
        case_id,
        kind,
        pick(rng, ("contiguous", "strided")),
        {"keys": torch.from_numpy(keys), "queries": torch.from_numpy(queries)},
    )


def check_hashmap(cases: list[Case]) -> Outcome:
    (case,) = cases  # one table per key set: the API has no batch
    keys, queries = case.data["keys"], case.data["queries"]
    q = layout(queries[:, None], case.cfg)[:, 0] if case.cfg == "strided" else queries
    got = H.VoxelHashTable(keys).query(q)
    want = R_HASH.VoxelHashTable(keys).query(queries)
    uniq = H.unique_keys_with_inverse(keys, method="sort")
    ref = R_HASH.unique_keys_with_inverse(keys)
    return exact(
        {
            "query": (got, want),
            "unique": (uniq[0], ref[0]),
            "inverse": (uniq[1], ref[1]),
            "counts": (uniq[2], ref[2]),
        }
    )


def test_hashmap(fuzzer):
    run_family(fuzzer, "hashmap", make_hashmap_case, check_hashmap, 1)


# ------------------------------------------------------------------------------------------------ occupancy
def make_occupancy_case(rng: np.random.Generator, case_id: int) -> Case:
    kind = kinds(
        rng,
        {"random": 6, "empty": 1, "single": 1, "duplicates": 1, "word_edges": 2, "negative": 1, "full": 1},
    )
    key_range = int(pick(rng, (1, 63, 64, 65, 128, 129, 200, 1000)))
    n = {"empty": 0, "single": 1}.get(kind, int(rng.integers(1, 13)))
    if kind == "word_edges":
        edges = np.array([0, 63, 64, 65, 127, 128, 129, key_range - 1])
        keys = rng.choice(edges[edges < key_range], n)
    elif kind == "duplicates":
        keys = np.full(n, rng.integers(0, key_range))
    elif kind == "negative":
        keys = rng.integers(-2, key_range, n)
    elif kind == "full":
        keys = rng.permutation(key_range)[: min(key_range, 70)]
    else:
        keys = rng.integers(0, key_range, n)
    return Case(case_id, kind, key_range, {"keys": torch.from_numpy(keys.astype(np.int64))})


def check_occupancy(cases: list[Case]) -> Outcome:
    (case,) = cases  # one bitmap per key set: the API has no batch
    got = OCC.occupancy_unique(case.data["keys"], case.cfg)
    want = R_HASH.unique_keys_with_inverse(case.data["keys"])
    return exact({"unique": (got[0], want[0]), "inverse": (got[1], want[1]), "counts": (got[2], want[2])})


def test_occupancy(fuzzer):
    run_family(fuzzer, "occupancy", make_occupancy_case, check_occupancy, 1)


# ------------------------------------------------------------------------------------------------ segment
SEG_GROUP = 500
SEG_CFGS = [
    (1, torch.int64, "contiguous"),
    (3, torch.int32, "transposed"),
    (8, torch.int64, "strided"),
    (2, torch.int32, "contiguous"),
]


def make_segment_case(rng: np.random.Generator, case_id: int) -> Case:
    c = cfg_of(case_id, SEG_GROUP, SEG_CFGS)[0]
    kind = kinds(
        rng,
        {
            "random": 6,
            "empty": 1,
            "single": 1,
            "no_segments": 1,
            "ties": 2,
            "all_dropped": 1,
            "huge": 1,
            "tiny": 1,
            "infinite": 1,
            "empty_segments": 1,
        },
    )
    n = {"empty": 0, "single": 1}.get(kind, int(rng.integers(1, 13)))
    m = 0 if kind == "no_segments" else int(rng.integers(1, 6))
    values = rng.standard_normal((n, c))
    ids = rng.integers(-1, m, n) if m else np.full(n, -1)
    if kind == "ties":
        values = rng.choice([-1.0, 0.0, 2.5], (n, c))
    elif kind == "all_dropped":
        ids[:] = -1
    elif kind == "huge":
        values *= 1e30
    elif kind == "tiny":
        values *= 1e-40  # subnormal float32
    elif kind == "infinite":
        values[rng.random((n, c)) < 0.3] = -np.inf
        values[rng.random((n, c)) < 0.1] = np.inf
    elif kind == "empty_segments":
        m = 6
        ids = np.where(ids >= 0, 4, -1)
    return Case(
        case_id,
        kind,
        cfg_of(case_id, SEG_GROUP, SEG_CFGS),
        {"values": torch.tensor(values, dtype=F32).reshape(n, c), "ids": ids.astype(np.int64), "m": m},
    )


def _sum_tolerance(values: torch.Tensor, ids: torch.Tensor, m: int) -> torch.Tensor:
    """The unit tests' 1e-5 (rtol and atol) scaled by the segment's sum of |values| when that exceeds 1: with
    huge values of both signs the float32 sum depends on the (thread-dependent) order by up to
    n * 2^-24 * sum|v| < 1e-5 * sum|v| for the <= 12 rows of a fuzz segment."""
    finite = torch.where(torch.isfinite(values), values.abs(), torch.zeros_like(values)).double()
    mag = R_SEG.segment_sum(finite, ids, m)
    return 1e-5 * mag.clamp(min=1.0)


def check_segment(cases: list[Case]) -> Outcome:
    c, id_dtype, how = cases[0].cfg
    offsets = np.cumsum([0] + [case.data["m"] for case in cases])
    values = torch.cat([case.data["values"] for case in cases])
    ids = torch.from_numpy(
        np.concatenate(
            [
                np.where(case.data["ids"] >= 0, case.data["ids"] + offsets[i], -1)
                for i, case in enumerate(cases)
            ]
        ).astype(np.int64)
    ).to(id_dtype)
    m = int(offsets[-1])
    g = torch.Generator().manual_seed(cases[0].id)
    grad = torch.randn(m, c, generator=g)
    outs = []
    for name in ("segment_sum", "segment_mean"):
        x = values.clone().requires_grad_(True)
        xr = values.clone().requires_grad_(True)
        out, ref = getattr(SEG, name)(layout(x, how), ids, m), getattr(R_SEG, name)(xr, ids, m)
        tol = _sum_tolerance(values, ids.long(), m)
        outs.append(close(name, out, ref, tol))
        (gx,) = torch.autograd.grad(out, x, grad)
        (gr,) = torch.autograd.grad(ref, xr, grad)
        outs.append(close(f"{name} grad", gx, gr, 1e-5 + 1e-5 * gr.detach().abs()))
    x = values.clone().requires_grad_(True)
    xr = values.clone().requires_grad_(True)
    (out, arg), (ref, ref_arg) = SEG.segment_max(layout(x, how), ids, m), R_SEG.segment_max(xr, ids, m)
    (gx,) = torch.autograd.grad(out, x, grad)
    (gr,) = torch.autograd.grad(ref, xr, grad)
    outs.append(
        exact({"segment_max": (out.detach(), ref.detach()), "argmax": (arg, ref_arg), "max grad": (gx, gr)})
    )
    outs.append(
        exact(
            {"segment_count": (SEG.segment_count(ids, m), torch.bincount(ids[ids >= 0].long(), minlength=m))}
        )
    )
    return merge(*outs)


def test_segment(fuzzer):
    run_family(fuzzer, "segment", make_segment_case, check_segment, SEG_GROUP)


# ------------------------------------------------------------------------------------------------ kernel maps
def _voxel_case(
    rng: np.random.Generator, grid: tuple[int, int, int], kind: str, max_n: int = 12
) -> np.ndarray:
    """(n, 3) distinct (z, y, x) voxels of ``grid`` (X, Y, Z) for a generator ``kind``."""
    X, Y, Z = grid
    cells = X * Y * Z
    if kind == "empty":
        return np.zeros((0, 3), dtype=np.int64)
    if kind == "full":
        lin = np.arange(cells) if cells <= 40 else rng.permutation(cells)[:max_n]
    elif kind == "corners":
        corners = np.array([[z, y, x] for z in (0, Z - 1) for y in (0, Y - 1) for x in (0, X - 1)])
        lin = np.unique(corners[:, 0] + Z * (corners[:, 1] + Y * corners[:, 2]))
        lin = rng.permutation(lin)[: int(rng.integers(1, len(lin) + 1))]
    elif kind == "line":
        x = rng.integers(0, X)
        y = rng.integers(0, Y)
        lin = np.arange(Z) + Z * (y + Y * x)
    else:
        n = 1 if kind == "single" else int(rng.integers(1, min(max_n, cells) + 1))
        lin = rng.permutation(cells)[:n]
    lin = rng.permutation(lin)
    z, y, x = lin % Z, (lin // Z) % Y, lin // (Y * Z)
    return np.stack([z, y, x], 1).astype(np.int64)


def _batched_coords(cases: list[Case], key: str = "zyx") -> torch.Tensor:
    rows = [np.concatenate([np.full((len(c.data[key]), 1), i), c.data[key]], 1) for i, c in enumerate(cases)]
    return torch.from_numpy(np.concatenate(rows).reshape(-1, 4)).to(torch.int32)


KM_GROUP = 250
KM_GRIDS = [(5, 4, 3), (6, 6, 6), (9, 7, 6), (3, 1, 2), (1, 1, 1)]
KM_OPS = [
    ("sub", 3, 1, "dense"),
    ("sub", 3, 1, "hash"),
    ("sub", (1, 3, 5), (1, 2, 1), "dense"),
    ("sub", 5, 1, "hash"),
    ("sub", 1, 1, "dense"),
    ("sub", 3, 2, "hash"),
    ("str", 2, 2, 0, 1),
    ("str", 3, 2, 1, 1),
    ("str", (3, 3, 1), (2, 2, 1), (1, 1, 0), 1),
    ("str", 3, 1, 1, 1),
    ("str", 2, (1, 2, 3), (0, 1, 1), 1),
    ("str", 3, 1, 2, 2),
    ("str", 1, 1, 0, 1),
]


def _strided_valid(grid: tuple[int, int, int], op: tuple) -> bool:
    try:
        conv_output_grid(grid, *(triple(v, "v") for v in op[1:]))
    except ValueError:
        return False
    return True


KM_CFGS = [
    (grid, op, how)
    for op in KM_OPS
    for grid in KM_GRIDS
    for how in ("contiguous", "strided")
    if op[0] == "sub" or _strided_valid(grid, op)
]
VOXEL_KINDS = {"random": 6, "empty": 1, "single": 1, "full": 1, "corners": 1, "line": 1}


def make_voxels_case(group: int, cfgs: list) -> Callable[[np.random.Generator, int], Case]:
    def make(rng: np.random.Generator, case_id: int) -> Case:
        cfg = cfg_of(case_id, group, cfgs)
        kind = kinds(rng, VOXEL_KINDS)
        return Case(case_id, kind, cfg, {"zyx": _voxel_case(rng, cfg[0], kind)})

    return make


def check_kernel_map(cases: list[Case]) -> Outcome:
    grid, op, how = cases[0].cfg
    coords = _batched_coords(cases)
    view = layout(coords, how)
    if op[0] == "sub":
        got = KM.submanifold_map(view, grid, op[1], op[2], index=op[3])
        want = R_KM.submanifold_map(coords, grid, op[1], op[2])
    else:
        got = KM.strided_map(view, grid, *op[1:])
        want = R_KM.strided_map(coords, grid, *op[1:])
    if tuple(got.out_grid) != tuple(want.out_grid):
        return Outcome(
            False, float("inf"), float("inf"), f"out_grid {got.out_grid} vs oracle {want.out_grid}"
        )
    return exact({k: (getattr(got, k), getattr(want, k)) for k in ("out_coords", "nbr", "nbr_t")})


def test_kernel_map(fuzzer):
    run_family(fuzzer, "kernel_map", make_voxels_case(KM_GROUP, KM_CFGS), check_kernel_map, KM_GROUP)


# ------------------------------------------------------------------------------------------------ sparse conv
SC_GROUP = 100
SC_CHANNELS = [(16, 16), (8, 16), (3, 5), (16, 32), (4, 16), (16, 3)]
"""(C_in, C_out): the tiled CPU kernel (C_in % 16, C_out % 16), the Warp weight-gradient kernel (C_in % 8),
the torch gather-GEMM-scatter path (neither) and mixed pairs."""
SC_OPS = [("sub", 3, 1, 0), ("str", 3, 2, 1), ("str", 2, 2, 0), ("inv", 3, 2, 1), ("sub", (1, 3, 3), 1, 0)]
SC_GRIDS = [(6, 5, 4), (4, 4, 4), (2, 3, 1)]
SC_CFGS = [
    (grid, op, ch, how)
    for op in SC_OPS
    for ch in SC_CHANNELS
    for grid in SC_GRIDS
    for how in ("contiguous", "transposed")
    if op[0] == "sub" or _strided_valid(grid, op + (1,))
]


def make_conv_case(rng: np.random.Generator, case_id: int) -> Case:
    cfg = cfg_of(case_id, SC_GROUP, SC_CFGS)
    kind = kinds(rng, {**VOXEL_KINDS, "huge": 1, "tiny": 1, "zeros": 1})
    zyx = _voxel_case(rng, cfg[0], kind if kind in VOXEL_KINDS else "random", max_n=10)
    scale = {"huge": 1e15, "tiny": 1e-20, "zeros": 0.0}.get(kind, 1.0)
    feats = torch.tensor(rng.standard_normal((len(zyx), cfg[2][0])) * scale, dtype=F32)
    return Case(case_id, kind, cfg, {"zyx": zyx, "feats": feats})


def _conv_tol(ref: torch.Tensor) -> float:
    """The unit tests' rule: max error <= 1e-4 relative to the reference's magnitude when that exceeds 1."""
    return 1e-4 * (max(1.0, float(ref.abs().max())) if ref.numel() else 1.0)


def check_sparse_conv(cases: list[Case]) -> Outcome:
    grid, op, (c_in, c_out), how = cases[0].cfg
    coords = _batched_coords(cases)
    feats = torch.cat([c.data["feats"] for c in cases]).reshape(-1, c_in)
    kt = triple(op[1], "k")
    g = torch.Generator().manual_seed(cases[0].id)
    weight = torch.randn(kt[0] * kt[1] * kt[2], c_in, c_out, generator=g) * 0.1
    batch = len(cases)
    if op[0] == "sub":
        km = KM.submanifold_map(coords, grid, op[1])
        pad = tuple(k // 2 for k in kt)

        def oracle(f, w):
            return R_SC.conv_at_sites(coords, f, w, grid, kt, coords, padding=pad, batch=batch)
    elif op[0] == "str":
        km = KM.strided_map(coords, grid, op[1], op[2], op[3])
        st, pd = triple(op[2], "s"), triple(op[3], "p")

        def oracle(f, w):
            return R_SC.conv_at_sites(
                coords, f, w, grid, kt, km.out_coords, stride=st, padding=pd, batch=batch
            )
    else:  # inverse of a strided conv: features live on the strided conv's outputs
        fwd = KM.strided_map(coords, grid, op[1], op[2], op[3])
        km = KM.inverse_map(fwd, coords, grid)
        st, pd = triple(op[2], "s"), triple(op[3], "p")
        feats = torch.randn(fwd.out_coords.shape[0], c_in, generator=g) * max(
            (float(c.data["feats"].abs().max()) if c.data["feats"].numel() else 0.0) for c in cases
        )

        def oracle(f, w):
            return R_SC.inverse_conv_at_sites(
                fwd.out_coords, f, w, fwd.out_grid, kt, st, pd, coords, grid, batch=batch
            )

    f, w = feats.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    fr, wr = feats.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    out = SC.sparse_conv(layout(f, how), w, km.nbr, km.nbr_t)
    ref = oracle(fr, wr)
    grad = torch.randn(ref.shape, generator=g)
    gf, gw = (
        torch.autograd.grad(out, (f, w), grad) if out.numel() else (torch.zeros_like(f), torch.zeros_like(w))
    )
    if ref.numel():
        gfr, gwr = torch.autograd.grad(ref, (fr, wr), grad)
    else:
        gfr, gwr = torch.zeros_like(fr), torch.zeros_like(wr)
    return merge(
        close("output", out, ref, _conv_tol(ref)),
        close("feature grad", gf, gfr, _conv_tol(gfr)),
        close("weight grad", gw, gwr, _conv_tol(gwr)),
    )


def test_sparse_conv(fuzzer):
    run_family(fuzzer, "sparse_conv", make_conv_case, check_sparse_conv, SC_GROUP)


# ----------------------------------------------------------------------------------------- set partition
SP_GROUP = 200
SP_CFGS = [
    # (spatial_shape (X, Y, Z), window (wx, wy, wz), shift, set_size, layout)
    ((8, 8, 1), (3, 3, 1), (0, 0, 0), 4, "contiguous"),
    ((8, 8, 1), (4, 4, 1), (2, 2, 0), 3, "transposed"),
    ((12, 10, 4), (4, 4, 2), (2, 2, 1), 5, "strided"),
    ((6, 6, 3), (2, 3, 3), (1, 3, 1), 1, "contiguous"),
    ((7, 5, 2), (7, 5, 2), (7, 5, 2), 2, "contiguous"),
    ((5, 9, 3), (2, 2, 1), (0, 1, 1), 36, "strided"),
]


def make_set_case(rng: np.random.Generator, case_id: int) -> Case:
    cfg = cfg_of(case_id, SP_GROUP, SP_CFGS)
    kind = kinds(rng, {**VOXEL_KINDS, "duplicates": 1})
    zyx = _voxel_case(rng, cfg[0], kind if kind in VOXEL_KINDS else "random")
    if kind == "duplicates" and len(zyx):
        zyx = np.concatenate([zyx, zyx[rng.integers(0, len(zyx), int(rng.integers(1, 6)))]])
    return Case(case_id, kind, cfg, {"zyx": zyx})


def check_set_partition(cases: list[Case]) -> Outcome:
    shape, win, shift, tau, how = cases[0].cfg
    coords = _batched_coords(cases)
    got = SP.dynamic_set_partition(layout(coords, how), shape, win, shift, tau)
    want = R_SP.dynamic_set_partition(coords, shape, win, shift, tau)
    gw, ww = got.windows, want.windows
    if (gw.num_windows, gw.window_shape, gw.shift) != (ww.num_windows, ww.window_shape, ww.shift):
        return Outcome(
            False,
            float("inf"),
            float("inf"),
            f"(num_windows, window_shape, shift) "
            f"{(gw.num_windows, gw.window_shape, gw.shift)} vs {(ww.num_windows, ww.window_shape, ww.shift)}",
        )
    pairs = {
        k: (getattr(got, k), getattr(want, k)) for k in ("set_voxel_inds", "set_voxel_mask", "set_window")
    }
    pairs.update(
        {
            k: (getattr(gw, k), getattr(ww, k))
            for k in ("win_id", "coords_in_win", "window_key", "voxels_per_window")
        }
    )
    return exact(pairs)


def test_set_partition(fuzzer):
    run_family(fuzzer, "set_partition", make_set_case, check_set_partition, SP_GROUP)


# ------------------------------------------------------------------------------------------------ k-NN
def make_knn_case(rng: np.random.Generator, case_id: int) -> Case:
    kind = kinds(
        rng,
        {
            "random": 5,
            "empty": 1,
            "single": 1,
            "duplicates": 1,
            "identical": 1,
            "flat": 1,
            "line": 1,
            "lattice": 1,
            "huge_offset": 1,
            "tiny": 1,
            "clusters": 1,
            "nonfinite": 1,
        },
    )
    n = {"empty": 0, "single": 1}.get(kind, int(rng.integers(2, 14)))
    pts = rng.standard_normal((n, 3))
    if kind == "duplicates":
        pts[n // 2 :] = pts[: n - n // 2]
    elif kind == "identical":
        pts[:] = pts[:1]
    elif kind == "flat":
        pts[:, 2] = 0.0
    elif kind == "line":
        pts[:, 1:] = 0.5
    elif kind == "lattice":
        pts = rng.integers(-2, 3, (n, 3)).astype(np.float64)
    elif kind == "huge_offset":
        pts = pts + 1e5
    elif kind == "tiny":
        pts *= 1e-18  # squared distances underflow towards float32 subnormals
    elif kind == "clusters":
        pts = pts * rng.choice([1e-3, 1.0, 1e3], (n, 1)) + rng.choice([-50.0, 0.0, 50.0], (n, 1))
    elif kind == "nonfinite" and n:
        pts[rng.integers(0, n), rng.integers(0, 3)] = pick(rng, (np.nan, np.inf, -np.inf))
    k = int(rng.integers(1, 6))
    return Case(
        case_id, kind, pick(rng, LAYOUTS), {"points": torch.tensor(pts, dtype=F32).reshape(n, 3), "k": k}
    )


def check_knn(cases: list[Case]) -> Outcome:
    (case,) = cases  # one point set per call: the API has no batch
    pts, k = case.data["points"], case.data["k"]
    if not bool(torch.isfinite(pts).all()):  # the API rejects non-finite coordinates with ValueError
        try:
            KNN.knn_distances(layout(pts, case.cfg), k)
        except ValueError as exc:
            return Outcome("points" in str(exc), detail=f"ValueError does not name points: {exc}")
        return Outcome(False, float("inf"), float("inf"), "non-finite points accepted (ValueError expected)")
    d, idx = KNN.knn_distances(layout(pts, case.cfg), k)
    ref_d, _ = R_KNN.knn_distances(pts, k)
    n = pts.shape[0]
    out = close("sqdist", d, ref_d, 1e-6 * ref_d.abs().nan_to_num(posinf=0.0))  # unit test: rtol 1e-6, atol 0
    if not out.ok or n == 0:
        return out
    missing = idx < 0
    rows = torch.arange(n)[:, None]
    problems = []
    if not torch.equal(missing, torch.isinf(d)):
        problems.append("index -1 not exactly where sqdist is inf")
    if bool((idx == rows).any()):
        problems.append("a point is its own neighbour")
    safe = idx.clamp(min=0)
    if bool(
        ((idx[:, :, None] == idx[:, None, :]) & ~missing[:, :, None]).sum((1, 2)).gt(k - missing.sum(1)).any()
    ):
        problems.append("a neighbour is listed twice")
    diff = pts[safe] - pts[:, None, :]
    rec = diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] + diff[..., 2] * diff[..., 2]
    at = close(
        "sqdist at index", torch.where(missing, 0.0, d), torch.where(missing, 0.0, rec), 1e-6 * rec.abs()
    )
    if not at.ok:
        problems.append(at.detail)
    return Outcome(not problems, out.error, out.ratio, "; ".join(problems))


def test_knn(fuzzer):
    run_family(fuzzer, "knn", make_knn_case, check_knn, 1)


# ------------------------------------------------------------------------------------------------ rotated IoU
IOU_GROUP = 500
IOU_MATRIX_ROWS = 12
"""Rows of the (a x b) matrix variants also checked per group (the aligned variants check every pair)."""
IOU_TOL = 1e-5
"""Warp (float32 in, float64 clipping) vs the float64 reference: the unit tests' dense-matrix tolerance."""


def _box(rng: np.random.Generator, centre: np.ndarray | None = None, scale: float = 1.0) -> np.ndarray:
    c = rng.standard_normal(3) * 2 if centre is None else centre
    dims = np.exp(rng.standard_normal(3) * 0.5) * scale * np.array([2.0, 1.0, 1.0])
    return np.concatenate([c, dims, [rng.uniform(-math.pi, math.pi)]])


def make_iou_case(rng: np.random.Generator, case_id: int) -> Case:
    kind = kinds(
        rng,
        {
            "random": 6,
            "identical": 1,
            "quarter_turn": 1,
            "touching": 1,
            "nested": 1,
            "disjoint": 1,
            "degenerate": 1,
            "huge_offset": 1,
            "tiny": 1,
            "axis_aligned": 1,
            "same_centre": 1,
        },
    )
    a = _box(rng)
    b = _box(rng, a[:3] + rng.standard_normal(3) * 0.8)
    if kind == "identical":
        b = a.copy()
    elif kind == "quarter_turn":  # the same footprint described with swapped sides
        b = a.copy()
        b[3], b[4], b[6] = a[4], a[3], a[6] + pick(rng, (math.pi / 2, -math.pi / 2, 3 * math.pi / 2))
    elif kind == "touching":  # shared edge (axis-aligned so the edge is exact)
        a[6] = b[6] = pick(rng, (0.0, math.pi / 2, math.pi))
        b[3:6] = a[3:6]
        b[1] = a[1]
        b[0] = a[0] + a[3] if a[6] != math.pi / 2 else a[0] + a[4]
        b[2] = a[2]
    elif kind == "nested":
        b = a.copy()
        b[3:6] = a[3:6] * rng.uniform(0.1, 0.5)
        b[6] = a[6] + rng.uniform(-0.2, 0.2)
    elif kind == "disjoint":
        b[:2] = a[:2] + 100.0
    elif kind == "degenerate":
        b[rng.integers(3, 6)] = pick(rng, (0.0, -1.0))
    elif kind == "huge_offset":
        off = rng.uniform(-1e4, 1e4, 2)
        a[:2] += off
        b[:2] += off
    elif kind == "tiny":
        a = _box(rng, scale=1e-3)
        b = _box(rng, a[:3] + rng.standard_normal(3) * 1e-3, scale=1e-3)
    elif kind == "axis_aligned":
        a[6], b[6] = pick(rng, (0.0, math.pi)), pick(rng, (0.0, math.pi / 2, -math.pi))
    elif kind == "same_centre":
        b[:3] = a[:3]
    return Case(
        case_id,
        kind,
        cfg_of(case_id, IOU_GROUP, LAYOUTS),
        {"a": torch.tensor(a, dtype=F32), "b": torch.tensor(b, dtype=F32)},
    )


def check_rotated_iou(cases: list[Case]) -> Outcome:
    how = cases[0].cfg
    a = torch.stack([c.data["a"] for c in cases])
    b = torch.stack([c.data["b"] for c in cases])
    outs = [
        close(
            "iou_bev_aligned",
            RIOU.boxes_iou_bev_aligned(layout(a, how), layout(b, how)),
            R_IOU.boxes_iou_bev_aligned(a, b),
            IOU_TOL,
        ),
        close(
            "iou_3d_aligned",
            RIOU.boxes_iou_3d_aligned(layout(a, how), b),
            R_IOU.boxes_iou_3d_aligned(a, b),
            IOU_TOL,
        ),
    ]
    am, bm = a[:IOU_MATRIX_ROWS], b[:IOU_MATRIX_ROWS]
    outs.append(
        close("iou_bev matrix", RIOU.boxes_iou_bev(am, layout(bm, how)), R_IOU.boxes_iou_bev(am, bm), IOU_TOL)
    )
    outs.append(close("iou_3d matrix", RIOU.boxes_iou_3d(am, bm), R_IOU.boxes_iou_3d(am, bm), IOU_TOL))
    return merge(*outs)


def test_rotated_iou(fuzzer):
    run_family(fuzzer, "rotated_iou", make_iou_case, check_rotated_iou, IOU_GROUP)


def make_nms_case(rng: np.random.Generator, case_id: int) -> Case:
    kind = kinds(
        rng,
        {
            "random": 5,
            "empty": 1,
            "single": 1,
            "duplicates": 1,
            "tied_scores": 1,
            "degenerate": 1,
            "crowded": 1,
            "limits": 1,
        },
    )
    n = {"empty": 0, "single": 1}.get(kind, int(rng.integers(2, 17)))
    centres = rng.uniform(0, 8, (max(1, n // 3), 3))
    boxes = np.array(
        [_box(rng, centres[rng.integers(len(centres))] + rng.standard_normal(3) * 0.5) for _ in range(n)]
    ).reshape(n, 7)
    scores = rng.random(n)
    if kind == "duplicates":
        boxes[:] = boxes[:1]
    elif kind == "tied_scores":
        scores = np.round(scores * 3) / 3
    elif kind == "degenerate" and n:
        boxes[rng.random(n) < 0.5, 3] = 0.0
    elif kind == "crowded":
        boxes[:, :2] *= 0.1
    thr = float(pick(rng, (0.0, 0.1, 0.3, 0.5, 0.7, 1.0)))
    pre = int(rng.integers(0, n + 2)) if kind == "limits" or rng.random() < 0.1 else None
    post = int(rng.integers(0, n + 2)) if kind == "limits" or rng.random() < 0.1 else None
    return Case(
        case_id,
        kind,
        pick(rng, LAYOUTS),
        {
            "boxes": torch.tensor(boxes, dtype=F32),
            "scores": torch.tensor(scores, dtype=F32),
            "thr": thr,
            "pre": pre,
            "post": post,
        },
    )


def _greedy(iou: torch.Tensor, order: torch.Tensor, thr: float, post: int | None) -> list[int]:
    keep: list[int] = []
    for i in range(order.shape[0]):
        if post is not None and len(keep) >= post:
            break
        if all(float(iou[i, j]) <= thr for j in keep):
            keep.append(i)
    return order[keep].tolist()


def check_nms(cases: list[Case]) -> Outcome:
    (case,) = cases  # one box set per call: the API has no batch
    d = case.data
    got = RIOU.nms_bev(layout(d["boxes"], case.cfg), d["scores"], d["thr"], d["pre"], d["post"])
    want = R_IOU.nms_bev(d["boxes"], d["scores"], d["thr"], d["pre"], d["post"])
    if got.dtype == want.dtype and got.tolist() == want.tolist():
        return Outcome(True)
    # Tolerance rule: the IoUs agree to IOU_TOL only, so a pair whose oracle IoU lies within IOU_TOL of the
    # threshold may be decided either way; then the greedy pass over the kernel's own IoU must give its
    # result.
    order = torch.sort(d["scores"], descending=True, stable=True).indices[: d["pre"]]
    ref_iou = R_IOU.boxes_iou_bev(d["boxes"][order], d["boxes"][order])
    near = bool(((ref_iou - d["thr"]).abs() <= IOU_TOL).any())
    if near and got.tolist() == _greedy(
        RIOU.boxes_iou_bev(d["boxes"][order], d["boxes"][order]), order, d["thr"], d["post"]
    ):
        return Outcome(True, tolerated=1)
    return Outcome(
        False, float("inf"), float("inf"), f"kept {got.tolist()} ({got.dtype}) vs oracle {want.tolist()}"
    )


def test_nms_bev(fuzzer):
    run_family(fuzzer, "nms_bev", make_nms_case, check_nms, 1)


# ------------------------------------------------------------------------------------------------ Gaussians
GS_W, GS_H = 37, 29  # partial edge tiles with 16 x 16 tiles, as in the unit tests


def _rot_y(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _cameras(variant: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two cameras: the identity and a rotated, translated one; ``variant`` 1 changes the intrinsics."""
    viewmats = torch.eye(4).repeat(2, 1, 1)
    viewmats[1, :3, :3] = _rot_y(0.25)
    viewmats[1, :3, 3] = torch.tensor([0.4, -0.1, 0.3])
    f = (38.0, 41.0) if variant == 0 else (90.0, 20.0)
    Ks = torch.tensor([[f[0], 0.0, GS_W / 2], [0.0, f[1], GS_H / 2 - 1.5], [0.0, 0.0, 1.0]]).repeat(2, 1, 1)
    Ks[1, 0, 0] = 45.0
    return viewmats, Ks


PROJ_GROUP = 500
PROJ_CFGS = [
    (0, False, "contiguous"),
    (1, True, "transposed"),
    (0, True, "strided"),
    (1, False, "contiguous"),
]


def make_projection_case(rng: np.random.Generator, case_id: int) -> Case:
    """One Gaussian (projected into both cameras of its group)."""
    kind = kinds(
        rng,
        {
            "random": 8,
            "behind": 1,
            "near_plane": 1,
            "outside": 1,
            "huge": 1,
            "tiny": 1,
            "transparent": 1,
            "needle": 1,
            "at_lens": 1,
            "corner": 1,
            "quat_scale": 1,
            "edge_on": 1,
        },
    )
    mean = np.array([rng.uniform(-1.5, 1.5), rng.uniform(-1.2, 1.2), rng.uniform(2.0, 5.0)])
    quat = rng.standard_normal(4)
    scale = np.exp(rng.uniform(math.log(0.01), math.log(0.25), 3))
    opac = 0.05 + 0.9 * rng.random()
    if kind == "behind":
        mean[2] = -rng.uniform(0.1, 3.0)
    elif kind == "near_plane":
        mean[2] = pick(rng, (0.0, 0.005, 0.0101, 0.02, 0.05))
    elif kind == "outside":
        mean[0] = pick(rng, (25.0, -25.0, 3.0))
    elif kind == "huge":
        scale = rng.uniform(1.0, 5.0, 3)
    elif kind == "tiny":
        scale = np.full(3, pick(rng, (1e-3, 1e-5, 1e-8)))
    elif kind == "transparent":
        opac = float(pick(rng, (0.0, 0.002, 1.0 / 255.0, 1.0)))
    elif kind == "needle":
        scale = np.array([0.6, 0.003, 0.002])[rng.permutation(3)]
    elif kind == "at_lens":
        mean = np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), 0.02])
    elif kind == "corner":
        mean = np.array([pick(rng, (-1.2, 1.2)), pick(rng, (-0.9, 0.9)), 2.2])
    elif kind == "quat_scale":
        quat *= pick(rng, (1e-3, 1e3))
    elif kind == "edge_on":  # a flat disc seen edge-on: an almost singular 2-D covariance
        scale = np.array([0.3, 0.3, 1e-6])
        quat = np.array([math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0, 0.0])
    t = {k: torch.tensor(v, dtype=F32) for k, v in (("means", mean), ("quats", quat), ("scales", scale))}
    t["opacities"] = torch.tensor(opac, dtype=F32)
    return Case(case_id, kind, cfg_of(case_id, PROJ_GROUP, PROJ_CFGS), t)


def check_projection(cases: list[Case]) -> Outcome:
    variant, aa, how = cases[0].cfg
    vm, Ks = _cameras(variant)
    names = ("means", "quats", "scales", "opacities")
    p = {k: torch.stack([c.data[k] for c in cases]).requires_grad_(True) for k in names}
    pr = {k: v.detach().double().requires_grad_(True) for k, v in p.items()}
    ours = KP.project_gaussians(
        layout(p["means"], how),
        layout(p["quats"], how),
        p["scales"],
        p["opacities"],
        vm,
        Ks,
        GS_W,
        GS_H,
        antialiased=aa,
    )
    ref = R_GS.project(*(pr[k] for k in names), vm.double(), Ks.double(), GS_W, GS_H, antialiased=aa)
    ours_graph, ref_graph = ours, ref
    ours = {k: v.detach() for k, v in ours.items()}
    ref = {k: v.detach() for k, v in ref.items()}
    # Tolerance rule: a Gaussian whose (compensated) opacity lies within 1e-6 (relative) of the 1/255 cut-off
    # has an extent factor sqrt(2 log(o * 255)) < 2e-3 pixel, so float32 and float64 may round its radius to 0
    # or 1 pixel (culled or not); such entries are counted as tolerated and left out of the value comparison.
    o = torch.maximum(ours["opacities"].double(), ref["opacities"])
    edge = ((o * 255.0 - 1.0).abs() <= 1e-6) & (ours["radii"] != ref["radii"]).any(-1)
    keep = ~edge
    outs = [exact({"radii": (ours["radii"][keep], ref["radii"][keep])})]
    # tolerances of test_projection_matches_oracle: rtol 1e-5, atol 1e-4 for means2d, 1e-5 for the others
    for k in ("means2d", "depths", "opacities"):
        atol = 1e-4 if k == "means2d" else 1e-5
        outs.append(close(k, ours[k][keep], ref[k][keep], atol + 1e-5 * ref[k][keep].abs()))
    # Conics: the same, but the relative part is raised to 4 * kappa * 2^-24 where the 2-D covariance has
    # condition number kappa: its float32 inverse carries a relative error up to ~kappa * 2^-24 (a needle seen
    # at an angle reaches kappa ~ 200 and 1.5e-5; the unit tests' scenes stay below the plain 1e-5).
    q = ref["conics"][keep]
    root = torch.sqrt(((q[:, 0] - q[:, 2]) / 2) ** 2 + q[:, 1] ** 2)
    mid = (q[:, 0] + q[:, 2]) / 2
    kappa = torch.where(mid > 0, (mid + root) / (mid - root).clamp(min=1e-300), torch.ones_like(mid))
    rel = torch.maximum(torch.full_like(kappa, 1e-5), 4 * kappa * 2.0**-24)[:, None]
    conic = close("conics", ours["conics"][keep], q, 1e-5 + rel * q.abs())
    plain = close("conics", ours["conics"][keep], q, 1e-5 + 1e-5 * q.abs())
    outs.append(conic)
    # gradients, leaving out the parameters of borderline-culled Gaussians (they differ by construction)
    outs.append(_projection_grads(ours_graph, ref_graph, p, pr, cases[0].id, ~edge.any(0)))
    out = merge(*outs)
    out.tolerated = len({int(i) for i in torch.nonzero(edge)[:, 1]}) + int(conic.ok and not plain.ok)
    return out


def _projection_grads(ours: dict, ref: dict, p: dict, pr: dict, seed: int, rows: torch.Tensor) -> Outcome:
    """Gradients of one random weighting of the float outputs w.r.t. the Gaussian parameters, as
    test_projection_matches_oracle: relative norm error < 1e-5 per parameter over the group."""
    g = torch.Generator().manual_seed(seed)
    weights = {
        k: torch.randn(ref[k].shape, generator=g, dtype=F64)
        for k in ("means2d", "depths", "conics", "opacities")
    }
    loss = sum((ours[k] * w.float()).sum() for k, w in weights.items())
    loss_ref = sum((ref[k] * w).sum() for k, w in weights.items())
    got = torch.autograd.grad(loss, list(p.values()))
    want = torch.autograd.grad(loss_ref, list(pr.values()))
    outs = []
    for name, a, b in zip(p, got, want):
        a, b = a[rows], b[rows]
        if float(b.norm()) == 0.0:
            outs.append(close(f"{name} grad", a, b, 1e-30))
            continue
        rel = _rel(a, b)
        outs.append(
            Outcome(
                rel < 1e-5,
                float((a.double() - b).abs().max()),
                rel / 1e-5,
                "" if rel < 1e-5 else f"{name} grad: relative error {rel:.3g} >= 1e-5",
            )
        )
    return merge(*outs)


def test_gaussian_projection(fuzzer):
    run_family(fuzzer, "gaussian_projection", make_projection_case, check_projection, PROJ_GROUP)


SH_GROUP = 1000
SH_CFGS = [
    (d, cams, k_extra, how)
    for d in range(4)
    for cams, k_extra, how in ((0, 0, "contiguous"), (2, 1, "transposed"), (0, 3, "strided"))
]


def make_sh_case(rng: np.random.Generator, case_id: int) -> Case:
    """One Gaussian's SH coefficients and its view direction(s)."""
    degree, cams, k_extra, _ = cfg = cfg_of(case_id, SH_GROUP, SH_CFGS)
    kind = kinds(
        rng,
        {
            "random": 6,
            "axis": 1,
            "tiny_dir": 1,
            "huge_dir": 1,
            "zero_coeffs": 1,
            "huge_coeffs": 1,
            "clamped": 1,
        },
    )
    dirs = rng.standard_normal((max(cams, 1), 3))
    coeffs = 0.4 * rng.standard_normal(((degree + 1) ** 2 + k_extra, 3))
    if kind == "axis":
        dirs = np.eye(3)[rng.integers(0, 3, max(cams, 1))] * rng.choice([-1.0, 1.0], (max(cams, 1), 1))
    elif kind == "tiny_dir":
        dirs *= pick(rng, (1e-6, 1e-11, 1e-13, 1e-17))  # |d|^2 stays a normal float32 down to ~1e-19
    elif kind == "huge_dir":
        dirs *= pick(rng, (1e6, 1e12, 1e17))  # |d|^2 stays finite in float32 up to ~1e19
    elif kind == "zero_coeffs":
        coeffs[:] = 0.0
    elif kind == "huge_coeffs":
        coeffs *= 1e20
    elif kind == "clamped":  # the DC term alone lands below -0.5: the colour clamps to 0
        coeffs[0] = -3.0
    return Case(
        case_id, kind, cfg, {"dirs": torch.tensor(dirs, dtype=F32), "coeffs": torch.tensor(coeffs, dtype=F32)}
    )


def check_sh(cases: list[Case]) -> Outcome:
    degree, cams, _, how = cases[0].cfg
    dirs = torch.stack([c.data["dirs"] for c in cases], dim=-2)  # (max(cams, 1), N, 3)
    if cams == 0:
        dirs = dirs[0]
    coeffs = torch.stack([c.data["coeffs"] for c in cases])
    d, co = dirs.clone().requires_grad_(True), coeffs.clone().requires_grad_(True)
    out = KSH.eval_sh_colors(degree, layout(d, how) if d.dim() == 2 else d, layout(co, how))
    dr, cr = dirs.double().requires_grad_(True), coeffs.double().requires_grad_(True)
    ref = R_GS.eval_sh(degree, dr, cr.expand(*dirs.shape[:-1], *coeffs.shape[1:]))
    # Tolerance of the unit test against gsplat's torch implementation (rtol 1e-5, atol 1e-5), the absolute
    # part scaled by sum_k |c_k| (per channel) when that exceeds 1: the float32 sum of <= 16 terms b_k c_k
    # with |b_k| < 1.1 is off by at most 16 * 2^-24 * 1.1 * sum_k |c_k| < 1e-5 * sum_k |c_k| whatever the
    # cancellation (huge coefficients whose terms nearly cancel leave a colour far smaller than its terms).
    mag = coeffs.double().abs()[:, : (degree + 1) ** 2].sum(1).clamp(min=1.0)  # (N, 3)
    outs = [close("colors", out, ref, 1e-5 * mag + 1e-5 * ref.detach().abs())]
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(cases[0].id), dtype=F64)
    gd, gc = torch.autograd.grad(out, (d, co), g.float(), allow_unused=True)
    gdr, gcr = torch.autograd.grad(ref, (dr, cr), g, allow_unused=True)  # degree 0 does not use dirs
    gd = torch.zeros_like(d) if gd is None else gd
    gdr = torch.zeros_like(dr) if gdr is None else gdr
    # Gradients: the same 1e-5 relative to each entry's magnitude and to the coefficient gradient's scale (the
    # direction gradient of a unit-normalised input scales with 1/|d|, so it is compared relative to itself).
    outs.append(close("coeffs grad", gc, gcr, 1e-5 + 1e-5 * gcr.abs()))
    dscale = gdr.abs().amax(-1, keepdim=True)
    outs.append(close("dirs grad", gd, gdr, 1e-5 * (dscale + gdr.abs()) + 1e-30))
    return merge(*outs)


SH_SHORT_DIR = (
    "direction shorter than 1e-12 (a camera at the Gaussian's centre): kernel and oracle both divide by "
    "max(|d|, 1e-12), as torch's F.normalize and gsplat do, so the direction is not unit length and the bands >= 1 "
    "scale with |d| / 1e-12, where float32 (kernel) and float64 (oracle) rounding of the tiny components differ"
)


def sh_known(case: Case) -> str | None:
    short = float(case.data["dirs"].double().norm(dim=-1).min()) < 1e-12
    return SH_SHORT_DIR if short and case.cfg[0] >= 1 else None


def test_gaussian_sh(fuzzer):
    run_family(fuzzer, "gaussian_sh", make_sh_case, check_sh, SH_GROUP, known=sh_known)


TILE_GROUP = 500
TILE_CFGS = [
    # (tile_size, tiles_x, tiles_y, gaussians per camera, layout)
    (16, 3, 2, 6, "contiguous"),
    (8, 5, 4, 4, "transposed"),
    (4, 1, 1, 3, "strided"),
    (16, 1, 7, 8, "contiguous"),
    (1, 9, 2, 5, "contiguous"),
]


def make_tiles_case(rng: np.random.Generator, case_id: int) -> Case:
    """One camera's projected Gaussians (means2d, radii, depths)."""
    ts, tx, ty, n, _ = cfg = cfg_of(case_id, TILE_GROUP, TILE_CFGS)
    kind = kinds(
        rng,
        {
            "random": 6,
            "culled": 1,
            "duplicates": 1,
            "tile_edges": 2,
            "outside": 1,
            "huge_radius": 1,
            "depth_extremes": 1,
            "equal_depths": 1,
        },
    )
    w, h = tx * ts, ty * ts
    means = np.stack([rng.uniform(-5, w + 5, n), rng.uniform(-5, h + 5, n)], 1)
    radii = rng.integers(0, 2 * ts + 2, (n, 2))
    radii[rng.random(n) < 0.15] = 0
    depths = rng.uniform(0.5, 20.0, n)
    if kind == "culled":
        radii[:, rng.integers(0, 2)] = 0
    elif kind == "duplicates":
        means[:], radii[:], depths[:] = means[0], radii[0], depths[0]
    elif kind == "tile_edges":
        means = rng.integers(-1, max(tx, ty) + 2, (n, 2)).astype(np.float64) * ts
        radii = rng.integers(0, 3, (n, 2)) * ts
    elif kind == "outside":
        means += rng.choice([-1000.0, 1000.0], (n, 2))
    elif kind == "huge_radius":
        radii[:] = rng.integers(1, 1_000_000, (n, 2))
    elif kind == "depth_extremes":
        depths = rng.choice([1e30, 2.0**-20, 1e-38, 1.0, np.nextafter(np.float32(1.0), np.float32(2.0))], n)
    elif kind == "equal_depths":
        depths[:] = depths[0]
    return Case(
        case_id,
        kind,
        cfg,
        {
            "means2d": torch.tensor(means, dtype=F32),
            "radii": torch.tensor(radii).int(),
            "depths": torch.tensor(depths, dtype=F32),
        },
    )


def tiles_oracle(
    means2d, radii, depths, ts, tx, ty
) -> tuple[torch.Tensor, list[tuple[int, int, float, int]]]:
    """Tiles per Gaussian and the sorted (camera, tile, depth, flat id) list, by the reference compositor's
    rule: tile rectangle floor(m/ts - r/ts) .. ceil(m/ts + r/ts) clamped to the grid (float32, as the inputs),
    only for Gaussians with both radii > 0; sorted by camera, tile, depth, then id."""
    c_n, n = depths.shape
    m, r = means2d.reshape(-1, 2), radii.reshape(-1, 2).to(F32)
    mt, rt = m / ts, r / ts
    x0 = torch.floor(mt[:, 0] - rt[:, 0]).clamp(0, tx).long()
    x1 = torch.ceil(mt[:, 0] + rt[:, 0]).clamp(0, tx).long()
    y0 = torch.floor(mt[:, 1] - rt[:, 1]).clamp(0, ty).long()
    y1 = torch.ceil(mt[:, 1] + rt[:, 1]).clamp(0, ty).long()
    visible = (radii.reshape(-1, 2) > 0).all(-1)
    counts = torch.where(visible, (x1 - x0) * (y1 - y0), torch.zeros_like(x0)).to(torch.int32)
    pairs = []
    flat_d = depths.reshape(-1).tolist()
    for i in torch.nonzero(counts).reshape(-1).tolist():
        for yy in range(int(y0[i]), int(y1[i])):
            for xx in range(int(x0[i]), int(x1[i])):
                pairs.append((i // n, yy * tx + xx, flat_d[i], i))
    pairs.sort()
    return counts.reshape(c_n, n), pairs


def check_tiles(cases: list[Case]) -> Outcome:
    ts, tx, ty, n, how = cases[0].cfg
    means2d = torch.stack([c.data["means2d"] for c in cases])
    radii = torch.stack([c.data["radii"] for c in cases])
    depths = torch.stack([c.data["depths"] for c in cases])
    isect = KT.intersect_tiles(layout(means2d, how), radii, layout(depths, how), ts, tx, ty)
    counts, pairs = tiles_oracle(means2d, radii, depths, ts, tx, ty)
    c_n, n_tiles = len(cases), tx * ty
    bits = KT.tile_bits_for(n_tiles)
    want_keys = torch.tensor([(c << (32 + bits)) | (t << 32) for c, t, _, _ in pairs], dtype=torch.int64)
    if pairs:
        want_keys |= (
            depths.reshape(-1)[torch.tensor([p[3] for p in pairs])].view(torch.int32).long() & 0xFFFFFFFF
        )
    want_ids = torch.tensor([p[3] for p in pairs], dtype=torch.int32)
    gtile = torch.tensor([c * n_tiles + t for c, t, _, _ in pairs], dtype=torch.int64)
    want_off = torch.searchsorted(gtile, torch.arange(c_n * n_tiles)).to(torch.int32).reshape(c_n, ty, tx)
    return exact(
        {
            "tiles_per_gauss": (isect.tiles_per_gauss, counts),
            "isect_ids": (isect.isect_ids, want_keys),
            "flatten_ids": (isect.flatten_ids, want_ids),
            "isect_offsets": (isect.isect_offsets, want_off),
        }
    )


def test_gaussian_tiles(fuzzer):
    run_family(fuzzer, "gaussian_tiles", make_tiles_case, check_tiles, TILE_GROUP)


COMP_GROUP = 250
COMP_CFGS = [
    # (width, height, tile_size, gaussians per camera, channels, background, layout)
    (13, 9, 8, 5, 3, False, "contiguous"),
    (37, 29, 16, 6, 4, True, "transposed"),
    (5, 4, 4, 3, 1, True, "strided"),
    (16, 16, 16, 8, 3, False, "contiguous"),
    (9, 17, 8, 1, 2, False, "contiguous"),
    (12, 8, 4, 0, 3, True, "contiguous"),
]


def make_composite_case(rng: np.random.Generator, case_id: int) -> Case:
    """One camera image of raw 2-D Gaussians (means, conics, radii, depths, opacities, colours)."""
    w, h, ts, n, ch, _, _ = cfg = cfg_of(case_id, COMP_GROUP, COMP_CFGS)
    kind = kinds(
        rng,
        {
            "random": 6,
            "opaque_stack": 1,
            "duplicates": 1,
            "indefinite": 1,
            "needle": 1,
            "outside": 1,
            "faint": 1,
            "culled": 1,
            "equal_depths": 1,
        },
    )
    if n == 0:
        kind = "empty"  # a camera with no Gaussians at all: the background only
    means = np.stack([rng.uniform(-3, w + 3, n), rng.uniform(-3, h + 3, n)], 1)
    sx, sy = 0.5 + 4 * rng.random(n), 0.5 + 4 * rng.random(n)
    rho = rng.uniform(-0.9, 0.9, n)
    depths = rng.uniform(1.0, 6.0, n)
    opac = rng.random(n)
    if kind == "needle":
        sx[0], sy[0], rho[0] = 20.0, 1.0, 0.995
    cov = np.stack([sx * sx, rho * sx * sy, sy * sy], 1)
    det = cov[:, 0] * cov[:, 2] - cov[:, 1] ** 2
    conics = np.stack([cov[:, 2], -cov[:, 1], cov[:, 0]], 1) / det[:, None]
    radii = np.ceil(3.33 * np.sqrt(np.stack([cov[:, 0], cov[:, 2]], 1)))
    if kind == "opaque_stack":  # early termination: transmittance drops below 1e-4
        means[:] = means[0]
        opac[:] = pick(rng, (0.999, 1.0, 0.9))
    elif kind == "duplicates":
        means[:], conics[:], radii[:], depths[:], opac[:] = means[0], conics[0], radii[0], depths[0], opac[0]
    elif kind == "indefinite":  # sigma < 0 somewhere: no ellipse bound exists
        conics[0] = (0.3, 0.5, 0.2)
        radii[0] = (6, 6)
    elif kind == "outside":
        means += rng.choice([-100.0, 100.0], (n, 2))
    elif kind == "faint":
        opac = rng.choice([0.0, 0.5 / 255.0, 1.0 / 255.0, 1.1 / 255.0], n)
    elif kind == "culled":
        radii[rng.random(n) < 0.6] = 0
    elif kind == "equal_depths":
        depths[:] = depths[0]
    colors = rng.random((n, ch))
    return Case(
        case_id,
        kind,
        cfg,
        {
            "means2d": torch.tensor(means, dtype=F32).reshape(n, 2),
            "conics": torch.tensor(conics, dtype=F32).reshape(n, 3),
            "radii": torch.tensor(radii).int().reshape(n, 2),
            "depths": torch.tensor(depths, dtype=F32),
            "opacities": torch.tensor(opac, dtype=F32),
            "colors": torch.tensor(colors, dtype=F32).reshape(n, ch),
            "background": torch.tensor(rng.random(ch), dtype=F32),
        },
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def check_composite(cases: list[Case]) -> Outcome:
    w, h, ts, n, ch, use_bg, how = cases[0].cfg
    t = {k: torch.stack([c.data[k] for c in cases]) for k in cases[0].data}
    bg = t["background"] if use_bg else None
    tx, ty = -(-w // ts), -(-h // ts)
    isect = KT.intersect_tiles(t["means2d"], t["radii"], t["depths"], ts, tx, ty)
    leaves = {k: t[k].clone().requires_grad_(True) for k in ("means2d", "conics", "colors", "opacities")}
    img, alpha, med = KC.rasterize_to_pixels(
        layout(leaves["means2d"], how),
        leaves["conics"],
        layout(leaves["colors"], how),
        leaves["opacities"],
        bg,
        t["depths"],
        isect.isect_offsets,
        isect.flatten_ids,
        w,
        h,
        ts,
    )
    ref_leaves = {k: v.detach().double().requires_grad_(True) for k, v in leaves.items()}
    # The oracle renders the cameras that have a visible Gaussian; the others are checked against the analytic
    # answer instead (background (or 0) colours, alpha 0, median depth 0), an oracle independent of both.
    shown = torch.nonzero((t["radii"] > 0).all(-1).any(-1)).reshape(-1)
    r_img = bg.double()[:, None, None, :] if bg is not None else torch.zeros(len(cases), 1, 1, ch, dtype=F64)
    r_img = r_img.expand(len(cases), h, w, ch).clone()
    r_alpha = torch.zeros(len(cases), h, w, 1, dtype=F64)
    r_med = torch.zeros(len(cases), h, w, 1, dtype=F64)
    if shown.numel():
        sub = R_GS.rasterize_pixels(
            ref_leaves["means2d"][shown],
            ref_leaves["conics"][shown],
            ref_leaves["colors"][shown],
            ref_leaves["opacities"][shown],
            t["depths"][shown].double(),
            t["radii"][shown],
            w,
            h,
            ts,
            None if bg is None else bg[shown].double(),
        )
        r_img = r_img.index_put((shown,), sub[0])
        r_alpha = r_alpha.index_put((shown,), sub[1])
        r_med = r_med.index_put((shown,), sub[2].detach())
    # forward tolerance of the unit tests (_close: rtol 1e-5, atol 1e-5)
    outs = [
        close("colors", img, r_img, 1e-5 + 1e-5 * r_img.detach().abs()),
        close("alphas", alpha, r_alpha, 1e-5 + 1e-5 * r_alpha.detach().abs()),
        close("median_depths", med, r_med, 1e-5 + 1e-5 * r_med.detach().abs()),
    ]
    if not shown.numel():
        return merge(*outs)
    g = torch.Generator().manual_seed(cases[0].id)
    w_img, w_alpha = (
        torch.randn(img.shape, generator=g, dtype=F64),
        torch.randn(alpha.shape, generator=g, dtype=F64),
    )
    grads = torch.autograd.grad(
        (img * w_img.float()).sum() + (alpha * w_alpha.float()).sum(), list(leaves.values())
    )
    r_grads = torch.autograd.grad(
        (r_img * w_img).sum() + (r_alpha * w_alpha).sum(), list(ref_leaves.values()), allow_unused=True
    )
    # Gradient tolerance of test_gradients_match_reference: relative norm error < 1e-4 over the group --
    # raised to 4 * kappa * 2^-24 when the worst conditioned visible 2-D covariance has condition number
    # kappa: float32 evaluation of sigma = d^T Q d then carries a relative error up to ~kappa * 2^-24 (a
    # needle with kappa ~ 4e3, as in the unit tests, alone in its image reaches 1.25e-4).
    q = t["conics"].double()
    visible = (t["radii"] > 0).all(-1)
    root = torch.sqrt(((q[..., 0] - q[..., 2]) / 2) ** 2 + q[..., 1] ** 2)
    mid = (q[..., 0] + q[..., 2]) / 2
    kappa = ((mid + root).abs() / (mid - root).abs().clamp(min=1e-300))[visible]
    grad_tol = max(1e-4, 4 * float(kappa.max()) * 2.0**-24) if kappa.numel() else 1e-4
    for name, a, b in zip(leaves, grads, r_grads):
        b = torch.zeros_like(a, dtype=F64) if b is None else b
        if float(b.norm()) == 0.0:
            outs.append(close(f"{name} grad", a, b, 1e-30))
            continue
        rel = _rel(a, b)
        outs.append(
            Outcome(
                rel < grad_tol,
                float((a.double() - b).abs().max()),
                rel / grad_tol,
                "" if rel < grad_tol else f"{name} grad: relative error {rel:.3g} >= {grad_tol:.3g}",
                tolerated=int(1e-4 <= rel < grad_tol),
            )
        )
    return merge(*outs)


def test_gaussian_composite(fuzzer):
    run_family(fuzzer, "gaussian_composite", make_composite_case, check_composite, COMP_GROUP)


# ------------------------------------------------------------------------------------------------ the harness
def test_harness_isolates_failing_cases_and_names_the_seed(fuzz_report):
    """A check that rejects case 7 (alone or in a group) and one that only fails for groups: the mismatches
    name case 7, and the group-only failure is reported on its group's first case."""

    def make(rng: np.random.Generator, case_id: int) -> Case:
        return Case(case_id, "random", case_id // 10, {"x": float(rng.random())})

    def bad_seven(cases: list[Case]) -> Outcome:
        return Outcome(all(c.id != 7 for c in cases), 1.0, 2.0, "case 7 is wrong")

    def bad_groups(cases: list[Case]) -> Outcome:
        return Outcome(len(cases) == 1, detail="only together")

    report = type(fuzz_report)(123)
    stats = Fuzzer(report, "selftest_seven").run(make, bad_seven, group_size=5, n_cases=30)
    assert (stats.cases, stats.mismatches) == (30, 1)
    assert stats.failures[0]["case"] == 7
    assert stats.failures[0]["reproduce"] == "SPARSE3D_FUZZ_SEED=123 SPARSE3D_FUZZ_CASE=selftest_seven:7"
    stats = Fuzzer(report, "selftest_groups").run(make, bad_groups, group_size=4, n_cases=12)
    assert [f["case"] for f in stats.failures] == [0, 4, 8, 10]  # a group ends at <= 4 cases or a new cfg
    assert "fails together" in stats.failures[0]["detail"]
    # the same seed and id give the same case, another seed another one
    again = Fuzzer(type(fuzz_report)(123), "selftest_seven")
    other = Fuzzer(type(fuzz_report)(124), "selftest_seven")
    assert make(again.rng(3), 3).data == make(Fuzzer(report, "selftest_seven").rng(3), 3).data
    assert make(other.rng(3), 3).data != make(again.rng(3), 3).data


def _shift(fn: Callable, index: Any, delta: float) -> Callable:
    """``fn`` with ``delta`` added to its output (or to output element ``index`` of a tuple)."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        if index is None:
            return out + delta if out.numel() else out
        parts = list(out)
        parts[index] = parts[index] + delta
        return type(out)(*parts) if hasattr(out, "_fields") else tuple(parts)

    return wrapped


@pytest.mark.parametrize(
    ("family", "module", "name", "index", "delta", "make_case", "check", "group"),
    [
        ("voxelize", VOX, "voxelize", 2, 1, make_voxelize_case, check_voxelize, VOX_GROUP),
        ("segment", SEG, "segment_mean", None, 1e-3, make_segment_case, check_segment, SEG_GROUP),
        (
            "rotated_iou",
            RIOU,
            "boxes_iou_bev_aligned",
            None,
            2e-5,
            make_iou_case,
            check_rotated_iou,
            IOU_GROUP,
        ),
        ("gaussian_sh", KSH, "eval_sh_colors", None, 1e-3, make_sh_case, check_sh, SH_GROUP),
        ("knn", KNN, "knn_distances", 0, 1e-3, make_knn_case, check_knn, 1),
    ],
)
def test_checks_catch_a_corrupted_kernel(
    monkeypatch, fuzz_report, family, module, name, index, delta, make_case, check, group
):
    """Each comparison fails when the kernel's output is shifted by a little more than its tolerance."""
    fz = Fuzzer(type(fuzz_report)(fuzz_report.seed), family)
    cases = [make_case(fz.rng(i), i) for i in range(min(max(group, 40), 60))]
    cases = [c for c in cases if c.kind == "random"]
    cases = [c for c in cases if c.cfg == cases[0].cfg][:group]
    assert cases and check(cases).ok
    monkeypatch.setattr(module, name, _shift(getattr(module, name), index, delta))
    assert not check(cases).ok
