"""Kernel fuzzing of sparse FlexiCubes (:mod:`sparse3d.kernels.flexicubes`) against the dense oracle with an
active-cube mask (:mod:`sparse3d.kernels.reference.flexicubes`), >= 10k random and adversarial cases.

A case is one small grid (R = 2..5) with its own active cubes (all, a random subset, one cube, none), corner SDF
(random, many exact zeros, one sign only, +-1, tiny or huge magnitudes, a sphere) and, per configuration, random
deformations and weights in inference or training mode, inputs in contiguous or non-contiguous layouts. Checked:
dual vertices and L_dev (same order: cubes are passed in x-major order), faces as oriented triangles (training
centres identified by their quad), the sign-changing edges, and for random fields the gradients of a random
linear loss against the oracle's float64 autograd. Run with ``python -m pytest -m fuzz tests/fuzz``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_harness import Case, Outcome  # noqa: E402
from test_kernel_fuzz import cfg_of, close, kinds, layout, merge, run_family  # noqa: E402

from sparse3d.kernels.flexicubes import cube_corner_table, extract_mesh  # noqa: E402
from sparse3d.kernels.reference.flexicubes import flexicubes_dense  # noqa: E402

pytestmark = pytest.mark.fuzz

FC_GROUP = 50
FC_CFGS = [
    # (weights and deformation, training, layout of the 2-D inputs)
    (False, False, "contiguous"),
    (True, False, "transposed"),
    (True, True, "strided"),
    (False, True, "contiguous"),
    (True, True, "contiguous"),
]
POS_TOL = 2e-5
"""Vertices and L_dev: float32 kernel vs float64 oracle in a unit box (the unit tests' tolerance, loosened for
cubes whose crossings sit within float32 rounding of a corner)."""
GRAD_TOL = 1e-4
"""Gradients: relative to the largest oracle gradient of the tensor, plus 1e-5 absolute."""


def make_flexicubes_case(rng: np.random.Generator, case_id: int) -> Case:
    cfg = cfg_of(case_id, FC_GROUP, FC_CFGS)
    r = int(rng.integers(2, 6))
    n, v = r**3, (r + 1) ** 3
    kind = kinds(
        rng,
        {"random": 6, "zeros": 1, "one_sign": 1, "binary": 1, "tiny": 1, "huge": 1, "sphere": 2, "sparse": 3,
         "single": 1, "empty": 1},
    )  # fmt: skip
    sdf = rng.standard_normal(v)
    active = np.ones(n, dtype=bool)
    if kind == "zeros":
        sdf[rng.random(v) < 0.4] = 0.0
    elif kind == "one_sign":
        sdf = np.abs(sdf) * pick_sign(rng)
    elif kind == "binary":
        sdf = np.sign(sdf)
    elif kind == "tiny":
        sdf *= 1e-20
    elif kind == "huge":
        sdf *= 1e20
    elif kind == "sphere":
        a = np.arange(r + 1) / r - 0.5
        p = np.stack(np.meshgrid(a, a, a, indexing="ij"), -1).reshape(-1, 3) - rng.uniform(-0.1, 0.1, 3)
        sdf = np.linalg.norm(p, axis=1) - rng.uniform(0.1, 0.45)
    elif kind == "sparse":
        active = rng.random(n) < rng.uniform(0.2, 0.9)
    elif kind == "single":
        active[:] = False
        active[rng.integers(n)] = True
    elif kind == "empty":
        active[:] = False
    data = {
        "r": r,
        "sdf": torch.tensor(sdf, dtype=torch.float32),
        "active": torch.tensor(active),
        "deform": torch.tensor(rng.standard_normal((v, 3)) * 2, dtype=torch.float32),
        "beta": torch.tensor(rng.standard_normal((n, 12)), dtype=torch.float32),
        "alpha": torch.tensor(rng.standard_normal((n, 8)), dtype=torch.float32),
        "gamma": torch.tensor(rng.standard_normal(n) * 2, dtype=torch.float32),
        "loss_v": torch.tensor(rng.standard_normal((4 * v, 3))),
        "loss_l": torch.tensor(rng.standard_normal(4 * n)),
    }
    return Case(case_id, kind, cfg, data)


def pick_sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _face_keys(faces: torch.Tensor, n_dual: int) -> list[tuple]:
    """Oriented triangles with every training centre (index >= n_dual) replaced by its quad's dual vertices."""
    quad_of: dict[int, tuple[int, ...]] = {}
    for tri in faces.tolist():
        for i in tri:
            if i >= n_dual:
                quad_of.setdefault(i, ())
                quad_of[i] = tuple(sorted(set(quad_of[i]) | {x for x in tri if x < n_dual}))
    keys = []
    for tri in faces.tolist():
        named = [("c", quad_of[i]) if i >= n_dual else ("v", (i,)) for i in tri]
        start = min(range(3), key=lambda k: named[k])
        keys.append(tuple(named[(start + k) % 3] for k in range(3)))
    return sorted(keys)


def _centres(verts: torch.Tensor, faces: torch.Tensor, n_dual: int) -> dict[tuple[int, ...], torch.Tensor]:
    out: dict[tuple[int, ...], set[int]] = {}
    for tri in faces.tolist():
        for i in tri:
            if i >= n_dual:
                out.setdefault(i, set()).update(x for x in tri if x < n_dual)
    return {tuple(sorted(q)): verts[i] for i, q in out.items()}


def check_flexicubes(cases: list[Case]) -> Outcome:
    weights, training, how = cases[0].cfg
    outs = []
    for case in cases:
        d = case.data
        r = d["r"]
        active = d["active"]
        idx = torch.nonzero(active).squeeze(1)
        a = torch.arange(r)
        coords = torch.stack(torch.meshgrid(a, a, a, indexing="ij"), -1).reshape(-1, 3)[idx]
        keys, cc = cube_corner_table(coords, r)
        grads = weights and case.kind in ("random", "sphere", "sparse")
        ref_in = [d["sdf"].double()] + ([d["deform"].double(), d["beta"].double(), d["alpha"].double(),
                                         d["gamma"].double()] if weights else [None] * 4)  # fmt: skip
        ref_in = [None if t is None else t.clone().requires_grad_(grads) for t in ref_in]
        vr, fr, lr = flexicubes_dense(ref_in[0], r, *ref_in[1:], training=training, active=active)
        ours_in = [d["sdf"][keys]]
        if weights:
            ours_in += [layout(d["deform"][keys], how), layout(d["beta"][idx], how), layout(d["alpha"][idx], how),
                        d["gamma"][idx]]  # fmt: skip
        else:
            ours_in += [None] * 4
        ours_in = [None if t is None else t.detach().clone().requires_grad_(grads) for t in ours_in]
        mesh = extract_mesh(layout(coords, how), r, *ours_in, training=training)
        nd = lr.shape[0]
        if mesh.l_dev.shape[0] != nd or mesh.vertices.shape != vr.shape:
            return Outcome(False, float("inf"), float("inf"),
                           f"case {case.id}: {mesh.vertices.shape[0]} vertices ({mesh.l_dev.shape[0]} dual) vs "
                           f"oracle {vr.shape[0]} ({nd})")  # fmt: skip
        outs.append(close("dual vertices", mesh.vertices[:nd], vr[:nd], POS_TOL))
        outs.append(close("l_dev", mesh.l_dev, lr, POS_TOL))
        if _face_keys(mesh.faces, nd) != _face_keys(fr, nd):
            return Outcome(False, float("inf"), float("inf"), f"case {case.id}: faces differ from the oracle's")
        if training and fr.shape[0]:
            c_ours, c_ref = _centres(mesh.vertices, mesh.faces, nd), _centres(vr, fr, nd)
            keys_c = sorted(c_ref)
            outs.append(close("centres", torch.stack([c_ours[k] for k in keys_c]),
                              torch.stack([c_ref[k] for k in keys_c]), POS_TOL))  # fmt: skip
        # sign-changing edges inside the active cubes: each is an edge of an active cube with one end inside
        inside = d["sdf"][keys] < 0
        e = mesh.edges
        if e.numel() and not bool((inside[e[:, 0]] != inside[e[:, 1]]).all()):
            return Outcome(False, float("inf"), float("inf"), f"case {case.id}: an edge without a sign change")
        if grads and vr.shape[0]:
            # dual vertices and L_dev share the oracle's order; training centres do not, so they enter through
            # an order-free term
            wv, wl = d["loss_v"][:nd], d["loss_l"][:nd]
            ((vr[:nd] * wv).sum() + vr[nd:].square().sum() + (lr * wl).sum()).backward()
            v_ours = mesh.vertices
            ((v_ours[:nd] * wv.float()).sum() + v_ours[nd:].square().sum() + (mesh.l_dev * wl.float()).sum()).backward()
            for name, ours, ref, sel in zip(("sdf", "deform", "beta", "alpha", "gamma"), ours_in, ref_in,
                                            (keys, keys, idx, idx, idx)):  # fmt: skip
                g_ref = torch.zeros_like(ref) if ref.grad is None else ref.grad
                g_ours = torch.zeros_like(ours) if ours.grad is None else ours.grad
                tol = GRAD_TOL * float(g_ref.abs().max()) + 1e-5
                outs.append(close(f"d/d{name}", g_ours, g_ref[sel], tol))
    return merge(*outs)


def test_flexicubes(fuzzer):
    run_family(fuzzer, "flexicubes", make_flexicubes_case, check_flexicubes, 1)
