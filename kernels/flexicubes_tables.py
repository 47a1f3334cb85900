"""FlexiCubes / Dual Marching Cubes case tables, generated at import from the cube's topology.

Conventions (Shen et al., TOG 2023, and the public FlexiCubes code):

* Corner m of a cube sits at offset ``(m & 1, (m >> 1) & 1, (m >> 2) & 1)``; a corner is *inside* when its SDF is
  negative and case id ``c = sum_m [s_m < 0] * 2**m`` (256 cases).
* Edges e0..e11 join corners (0,1) (1,5) (4,5) (0,4) (2,3) (3,7) (6,7) (2,6) (2,0) (3,1) (7,5) (6,4).
* Inside corners are connected through cube edges only; outside corners also through the diagonal of a face whose
  other two corners are inside, so a face with two diagonally opposite inside corners keeps them apart. The
  surface inside a cube consists of one patch (one dual vertex) per adjacent pair (inside component, outside
  component); the adjacency graph of the components in a cube is a tree, so
  ``#patches = #inside components + #outside components - 1``.
* A crossing edge (one endpoint inside) belongs to the patch of its endpoints' components.

C16/C19 ambiguity (FlexiCubes supplementary): a case with one patch whose bit complement has two patches has a
face with two diagonal outside and two inside corners. When the cube across that face is flagged too, both
cubes use the complement's grouping (same crossing edges, two patches), so the shared face is treated alike on
both sides.
"""

from __future__ import annotations

import torch

EDGE_CORNERS: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 5), (4, 5), (0, 4), (2, 3), (3, 7), (6, 7), (2, 6), (2, 0), (3, 1), (7, 5), (6, 4),
)  # fmt: skip
"""Corner pair of each cube edge e0..e11."""

MAX_GROUPS = 4
MAX_GROUP_EDGES = 7


def _offset(m: int) -> tuple[int, int, int]:
    return (m & 1, (m >> 1) & 1, (m >> 2) & 1)


def _faces() -> list[tuple[int, int, int, int, int, int]]:
    """The 6 faces as (axis, side, a, b, c, d) with (a, d) and (b, c) the two diagonals."""
    faces = []
    for axis in range(3):
        for side in (0, 1):
            corners = [m for m in range(8) if _offset(m)[axis] == side]
            a = corners[0]
            d = next(m for m in corners if sum(abs(p - q) for p, q in zip(_offset(m), _offset(a))) == 2)
            b, c = (m for m in corners if m not in (a, d))
            faces.append((axis, side, a, b, c, d))
    return faces


FACES = _faces()


def _components(case: int) -> list[int]:
    """Component label per corner (inside and outside corners labelled separately) by union-find."""
    parent = list(range(8))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    inside = [(case >> m) & 1 == 1 for m in range(8)]
    for a, b in EDGE_CORNERS:
        if inside[a] == inside[b]:
            union(a, b)
    for _, _, a, b, c, d in FACES:
        for p, q, r, s in ((a, d, b, c), (b, c, a, d)):
            if not inside[p] and not inside[q] and inside[r] and inside[s]:
                union(p, q)
    return [find(m) for m in range(8)]


def _groups(case: int) -> list[list[int]]:
    """Crossing-edge groups of a case, each ascending, ordered by their first edge."""
    inside = [(case >> m) & 1 == 1 for m in range(8)]
    comp = _components(case)
    by_pair: dict[tuple[int, int], list[int]] = {}
    for e, (a, b) in enumerate(EDGE_CORNERS):
        if inside[a] != inside[b]:
            i, o = (a, b) if inside[a] else (b, a)
            by_pair.setdefault((comp[i], comp[o]), []).append(e)
    return sorted(by_pair.values())


def _ambiguous_face(case: int) -> tuple[int, int, int] | None:
    """Unit step to the unique face with two diagonal outside and two inside corners (None when not unique)."""
    inside = [(case >> m) & 1 == 1 for m in range(8)]
    found = []
    for axis, side, a, b, c, d in FACES:
        for p, q, r, s in ((a, d, b, c), (b, c, a, d)):
            if not inside[p] and not inside[q] and inside[r] and inside[s]:
                step = [0, 0, 0]
                step[axis] = 1 if side == 1 else -1
                found.append(tuple(step))
    return found[0] if len(found) == 1 else None


def _build() -> dict[str, torch.Tensor]:
    groups = [_groups(c) for c in range(256)]
    dmc = torch.full((256, MAX_GROUPS, MAX_GROUP_EDGES), -1, dtype=torch.int32)
    edge_group = torch.full((256, 12), -1, dtype=torch.int32)
    for c, gs in enumerate(groups):
        for k, g in enumerate(gs):
            for j, e in enumerate(g):
                dmc[c, k, j] = e
                edge_group[c, e] = k
    num_vd = torch.tensor([len(g) for g in groups], dtype=torch.int32)
    check = torch.zeros((256, 5), dtype=torch.int32)
    for c in range(256):
        if len(groups[c]) == 1 and len(groups[255 - c]) == 2:
            step = _ambiguous_face(c)
            if step is None:
                raise RuntimeError(f"flexicubes tables: flagged case {c} has no unique ambiguous face")
            check[c] = torch.tensor([1, *step, 255 - c], dtype=torch.int32)
    lower = []
    axis = []
    for a, b in EDGE_CORNERS:
        oa, ob = _offset(a), _offset(b)
        axis.append(next(i for i in range(3) if oa[i] != ob[i]))
        lower.append(a if sum(oa) < sum(ob) else b)
    return {
        "dmc": dmc,
        "edge_group": edge_group,
        "num_vd": num_vd,
        "check": check,
        "edge_lower": torch.tensor(lower, dtype=torch.int32),
        "edge_axis": torch.tensor(axis, dtype=torch.int32),
    }


_TABLES = _build()

DMC_TABLE: torch.Tensor = _TABLES["dmc"]
"""(256, 4, 7) int32: per case, crossing-edge groups (one per dual vertex), -1 padded."""
EDGE_GROUP: torch.Tensor = _TABLES["edge_group"]
"""(256, 12) int32: group (dual vertex within the cube) of each edge, -1 for non-crossing edges."""
NUM_VD: torch.Tensor = _TABLES["num_vd"]
"""(256,) int32: number of dual vertices (surface patches) per case."""
CHECK_TABLE: torch.Tensor = _TABLES["check"]
"""(256, 5) int32: (flag, dx, dy, dz, replacement case) for the 36 C16/C19-ambiguous cases, zeros elsewhere."""
EDGE_LOWER: torch.Tensor = _TABLES["edge_lower"]
"""(12,) int32: the endpoint of each edge with the smaller grid coordinate."""
EDGE_AXIS: torch.Tensor = _TABLES["edge_axis"]
"""(12,) int32: axis (0 = x, 1 = y, 2 = z) of each edge."""
CROSSING: torch.Tensor = EDGE_GROUP >= 0
"""(256, 12) bool: whether each edge has exactly one inside endpoint in each case."""
