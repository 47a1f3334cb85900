"""Test shapes for mesh reconstruction, each stressing one thing extraction methods get wrong.

* ``sheet``: a wavy square sheet with round holes, an **open** surface (its rim and the holes' rims are boundary
  loops); a reconstruction must keep them open and must not add a second, inner copy of the sheet.
* ``thin``: a thin ring (torus with a minor radius of a few voxels at 256³), a **thin structure** that a
  coarse band or a dense grid at low resolution loses.
* ``cavity``: a ball with a concentric spherical **cavity** (the inner sphere's faces point into the cavity), seen
  only from cameras inside it; a fit must keep the cavity.
* ``bracket``: a CAD-like part (an L-bracket with a stiffening rib, made of axis-aligned blocks and turned so its
  sharp edges and flat faces are not aligned with the grid), for sharp features.
* ``sphere``: a closed sphere, the sanity case.

Every shape fits the box [-0.45, 0.45]³ and is a vertices float32 (V, 3), faces int64 (F, 3) pair,
counter-clockwise = outward (towards empty space). :func:`write_fit_shapes` writes them as PLY files, the format
``sparse3d-mesh`` and ``sparse3d-train experiment=sparseflex_fit data.mesh=...`` read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from sparse3d.datasets.synth.shapes import signed_volume, torus_mesh

__all__ = ["SHAPES", "block_mesh", "bracket_mesh", "cavity_mesh", "sheet_mesh", "sphere_mesh", "thin_ring_mesh", "write_fit_shapes"]

Mesh = tuple[np.ndarray, np.ndarray]


def sphere_mesh(radius: float = 0.35, subdivisions: int = 5, inward: bool = False) -> Mesh:
    """An icosphere of ``radius`` (20·4^subdivisions faces); ``inward`` flips the faces (a cavity's wall)."""
    t = (1.0 + 5.0 ** 0.5) / 2.0
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
             (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    v = np.asarray(verts, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    for _ in range(subdivisions):
        edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        uniq, inverse = np.unique(edges, axis=0, return_inverse=True)
        mids = len(v) + inverse.reshape(3, -1)
        v = np.concatenate([v, 0.5 * (v[uniq[:, 0]] + v[uniq[:, 1]])])
        a, b, c = f[:, 0], f[:, 1], f[:, 2]
        ab, bc, ca = mids[0], mids[1], mids[2]
        f = np.concatenate([np.stack([a, ab, ca], 1), np.stack([b, bc, ab], 1), np.stack([c, ca, bc], 1),
                            np.stack([ab, bc, ca], 1)])
    v = radius * v / np.linalg.norm(v, axis=1, keepdims=True)
    if signed_volume(v, f) < 0:
        f = f[:, ::-1]
    if inward:
        f = f[:, ::-1]
    return v.astype(np.float32), np.ascontiguousarray(f)


def sheet_mesh(size: float = 0.8, cells: int = 160, amplitude: float = 0.06,
               holes: tuple[tuple[float, float, float], ...] = ((-0.15, -0.1, 0.09), (0.17, 0.12, 0.07),
                                                                (0.05, -0.22, 0.05))) -> Mesh:
    """A ``size``-wide sheet over the xy plane, z = amplitude·sin·cos waves, with round holes ``(x, y, r)``."""
    lin = np.linspace(-size / 2, size / 2, cells + 1)
    x, y = np.meshgrid(lin, lin, indexing="ij")
    z = amplitude * np.sin(2.0 * np.pi * x / size * 1.5) * np.cos(2.0 * np.pi * y / size)
    v = np.stack([x, y, z], axis=-1).reshape(-1, 3)
    idx = np.arange((cells + 1) ** 2).reshape(cells + 1, cells + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    f = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    centroid = v[f].mean(axis=1)
    keep = np.ones(len(f), dtype=bool)
    for hx, hy, hr in holes:
        keep &= (centroid[:, 0] - hx) ** 2 + (centroid[:, 1] - hy) ** 2 > hr ** 2
    f = f[keep]
    used = np.unique(f)
    remap = np.full(len(v), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return v[used].astype(np.float32), remap[f]


def thin_ring_mesh(major: float = 0.32, minor: float = 0.018) -> Mesh:
    """A torus standing in the xz plane whose tube is ``2·minor`` thick (about 9 voxels at 256³)."""
    v, f = torus_mesh(major, minor, rings=48, segments=192)
    v = np.asarray(v, dtype=np.float64)[:, [0, 2, 1]] * np.array([1.0, -1.0, 1.0])  # stand it up, keep handedness
    f = np.asarray(f, dtype=np.int64)
    if signed_volume(v, f) < 0:
        f = f[:, ::-1]
    return v.astype(np.float32), np.ascontiguousarray(f)


def cavity_mesh(outer: float = 0.42, inner: float = 0.22) -> Mesh:
    """A ball of radius ``outer`` with a concentric cavity of radius ``inner`` (two shells, both facing outwards
    into empty space: the inner one towards the centre)."""
    vo, fo = sphere_mesh(outer, 5)
    vi, fi = sphere_mesh(inner, 4, inward=True)
    return np.concatenate([vo, vi]), np.concatenate([fo, fi + len(vo)])


def block_mesh(occupied: np.ndarray, cell: float) -> Mesh:
    """The boundary of a union of cubic cells (``occupied`` (X, Y, Z) bool, cell size ``cell``, centred at the
    origin): two triangles per cell face between a filled and an empty cell, vertices shared. Watertight and
    manifold when no two filled cells touch along an edge or a corner only."""
    occ = np.pad(np.asarray(occupied, dtype=bool), 1)
    index: dict[tuple[int, int, int], int] = {}
    verts: list[tuple[int, int, int]] = []
    faces: list[tuple[int, int, int]] = []

    def vid(c: tuple[int, int, int]) -> int:
        if c not in index:
            index[c] = len(verts)
            verts.append(c)
        return index[c]

    for axis in range(3):
        u, v = (axis + 1) % 3, (axis + 2) % 3
        step = np.zeros(3, dtype=int)
        step[axis] = 1
        for cell_idx in zip(*np.nonzero(occ), strict=True):
            for sign in (1, -1):
                nb = np.asarray(cell_idx) + sign * step
                if occ[tuple(nb)]:
                    continue
                base = np.asarray(cell_idx) + (step if sign > 0 else 0)
                du, dv = np.eye(3, dtype=int)[u], np.eye(3, dtype=int)[v]
                quad = [tuple(base), tuple(base + du), tuple(base + du + dv), tuple(base + dv)]
                a, b, c, d = (vid(q) for q in quad)
                # (u, v, axis) is right-handed: counter-clockwise in (u, v) faces +axis; flip for the -axis side
                faces += [(a, b, c), (a, c, d)] if sign > 0 else [(a, c, b), (a, d, c)]
    v = (np.asarray(verts, dtype=np.float64) - 1.0) * cell
    v -= 0.5 * (v.min(0) + v.max(0))
    f = np.asarray(faces, dtype=np.int64)
    if signed_volume(v, f) < 0:
        f = f[:, ::-1]
    return v.astype(np.float32), np.ascontiguousarray(f)


def bracket_mesh(size: float = 0.8, angles: tuple[float, float, float] = (0.35, 0.5, 0.2)) -> Mesh:
    """An L-bracket with a rib (blocks on a 8 x 5 x 6 cell grid), ``size`` wide, turned by ``angles`` (radians
    about x, y, z)."""
    occ = np.zeros((8, 5, 6), dtype=bool)
    occ[:, :, 0] = True          # base plate
    occ[0, :, :] = True          # upright plate
    occ[1:3, 2, 1:3] = True      # rib in the corner
    occ[1, 2, 3] = True
    v, f = block_mesh(occ, size / 8)
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return (v.astype(np.float64) @ (rz @ ry @ rx).T).astype(np.float32), f


SHAPES: dict[str, Callable[[], Mesh]] = {
    "sphere": sphere_mesh,
    "sheet": sheet_mesh,
    "thin": thin_ring_mesh,
    "cavity": cavity_mesh,
    "bracket": bracket_mesh,
}
"""The generated test shapes by name."""


def write_fit_shapes(root: str | Path, names: tuple[str, ...] = tuple(SHAPES)) -> dict[str, Path]:
    """Write the shapes ``names`` as ``<root>/<name>.ply``; returns the paths by name."""
    from sparse3d.io.mesh import TriangleMesh, write_mesh

    names = tuple(str(n) for n in names)
    if not names:
        raise ValueError(f"names must list at least one shape of {', '.join(SHAPES)}")
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shape(s) {unknown}; known: {', '.join(SHAPES)}")
    out: dict[str, Path] = {}
    for name in names:
        v, f = SHAPES[name]()
        path = Path(root) / f"{name}.ply"
        write_mesh(path, TriangleMesh(v, f))
        out[name] = path
    return out
