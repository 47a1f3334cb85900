"""The generated FlexiCubes case tables (:mod:`sparse3d.kernels.flexicubes_tables`).

Checked against the published patch-count distribution of the 256 cases, hand-worked cases, and an independent
recomputation of the corner components by transitive closure of adjacency matrices (the module uses union-find).
"""

from __future__ import annotations

import itertools

import torch

from sparse3d.kernels.flexicubes_tables import (
    CHECK_TABLE,
    CROSSING,
    DMC_TABLE,
    EDGE_AXIS,
    EDGE_CORNERS,
    EDGE_GROUP,
    EDGE_LOWER,
    NUM_VD,
)


def _offset(m: int) -> torch.Tensor:
    return torch.tensor([m & 1, (m >> 1) & 1, (m >> 2) & 1])


def _closure(adj: torch.Tensor) -> torch.Tensor:
    """Reachability (reflexive, transitive) of an 8x8 boolean adjacency by repeated squaring."""
    reach = adj | torch.eye(8, dtype=torch.bool)
    for _ in range(3):
        reach = (reach.float() @ reach.float()) > 0
    return reach


def _components(case: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(reachability among inside corners, reachability among outside corners) under the table's convention."""
    inside = torch.tensor([(case >> m) & 1 == 1 for m in range(8)])
    dist = torch.stack([(_offset(a) - _offset(b)).abs().sum() for a in range(8) for b in range(8)]).reshape(
        8, 8
    )
    cube_edge = dist == 1
    adj_in = cube_edge & inside[:, None] & inside[None, :]
    adj_out = cube_edge & ~inside[:, None] & ~inside[None, :]
    for a, b in itertools.combinations(range(8), 2):
        diff = _offset(a) - _offset(b)
        if int(diff.abs().sum()) == 2 and not inside[a] and not inside[b]:
            axis = int(torch.nonzero(diff == 0)[0])
            others = [
                m for m in range(8) if int(_offset(m)[axis]) == int(_offset(a)[axis]) and m not in (a, b)
            ]
            if all(inside[m] for m in others):
                adj_out[a, b] = adj_out[b, a] = True
    return _closure(adj_in) & inside[:, None], _closure(adj_out) & ~inside[:, None]


def test_edge_conventions():
    assert len(EDGE_CORNERS) == 12
    for e, (a, b) in enumerate(EDGE_CORNERS):
        diff = _offset(a) - _offset(b)
        assert int(diff.abs().sum()) == 1  # a cube edge
        assert int(EDGE_AXIS[e]) == int(torch.nonzero(diff)[0])
        assert int(EDGE_LOWER[e]) == (a if int(diff.sum()) < 0 else b)
    assert len({tuple(sorted(p)) for p in EDGE_CORNERS}) == 12


def test_patch_count_distribution():
    counts = torch.bincount(NUM_VD.long(), minlength=5).tolist()
    assert counts == [2, 162, 82, 8, 2]
    assert int(NUM_VD[0]) == 0 and int(NUM_VD[255]) == 0


def test_groups_partition_crossing_edges():
    for c in range(256):
        inside = [(c >> m) & 1 for m in range(8)]
        crossing = [inside[a] != inside[b] for a, b in EDGE_CORNERS]
        assert CROSSING[c].tolist() == crossing
        seen = []
        for k in range(4):
            row = DMC_TABLE[c, k].tolist()
            valid = [e for e in row if e >= 0]
            assert row == valid + [-1] * (7 - len(valid))  # padding at the end only
            assert (len(valid) > 0) == (k < int(NUM_VD[c]))
            assert len(valid) == 0 or len(valid) >= 3  # a patch is a polygon
            seen += valid
            for e in valid:
                assert int(EDGE_GROUP[c, e]) == k
        assert sorted(seen) == [e for e in range(12) if crossing[e]]  # each crossing edge exactly once


def test_complement_symmetry_of_crossing_edges():
    assert torch.equal(CROSSING, CROSSING.flip(0))


def test_patches_match_component_pairs():
    """Two crossing edges share a patch iff their inside ends and their outside ends are connected, and the number
    of patches is #inside components + #outside components - 1."""
    for c in range(256):
        reach_in, reach_out = _components(c)
        inside = [(c >> m) & 1 == 1 for m in range(8)]
        n_in = len({tuple(reach_in[m].tolist()) for m in range(8) if inside[m]})
        n_out = len({tuple(reach_out[m].tolist()) for m in range(8) if not inside[m]})
        if 0 < sum(inside) < 8:
            assert int(NUM_VD[c]) == n_in + n_out - 1
        ends = {}
        for e, (a, b) in enumerate(EDGE_CORNERS):
            if inside[a] != inside[b]:
                ends[e] = (a, b) if inside[a] else (b, a)
        for e, f in itertools.combinations(ends, 2):
            same = bool(reach_in[ends[e][0], ends[f][0]]) and bool(reach_out[ends[e][1], ends[f][1]])
            assert same == (int(EDGE_GROUP[c, e]) == int(EDGE_GROUP[c, f])), (c, e, f)


def test_hand_worked_cases():
    assert DMC_TABLE[1, 0, :3].tolist() == [0, 3, 8]  # corner 0 alone: its three edges
    both = 0b1001  # corners 0 and 3, diagonal on the z = 0 face: kept apart, two patches
    assert int(NUM_VD[both]) == 2
    assert DMC_TABLE[both, 0, :3].tolist() == [0, 3, 8]
    assert DMC_TABLE[both, 1, :3].tolist() == [4, 5, 9]
    assert int(NUM_VD[255 - both]) == 1  # outside corners 0 and 3 connect across the face diagonal
    assert int((DMC_TABLE[255 - both, 0] >= 0).sum()) == 6


def test_ambiguity_table():
    flagged = [c for c in range(256) if int(CHECK_TABLE[c, 0]) == 1]
    expected = [c for c in range(256) if int(NUM_VD[c]) == 1 and int(NUM_VD[255 - c]) == 2]
    assert flagged == expected and len(flagged) == 36
    n_inside = [bin(c).count("1") for c in flagged]
    assert n_inside.count(5) == 24 and n_inside.count(6) == 12
    assert bool((CHECK_TABLE[[c for c in range(256) if c not in flagged]] == 0).all())
    ambiguous_faces = set()
    for c in flagged:
        step = CHECK_TABLE[c, 1:4]
        assert int(CHECK_TABLE[c, 4]) == 255 - c
        assert int(step.abs().sum()) == 1
        axis = int(torch.nonzero(step)[0])
        side = 1 if int(step[axis]) > 0 else 0
        face = [m for m in range(8) if int(_offset(m)[axis]) == side]
        ins = [m for m in face if (c >> m) & 1]
        outs = [m for m in face if not (c >> m) & 1]
        assert len(ins) == 2 and len(outs) == 2
        assert int((_offset(outs[0]) - _offset(outs[1])).abs().sum()) == 2  # outside corners diagonal
        ambiguous_faces.add((axis, side, tuple(sorted(ins))))
    # symmetric: the same face seen from the cube across it (corners mirrored) is ambiguous for some flagged case
    for axis, side, ins in ambiguous_faces:
        assert (axis, 1 - side, tuple(sorted(m ^ (1 << axis) for m in ins))) in ambiguous_faces
