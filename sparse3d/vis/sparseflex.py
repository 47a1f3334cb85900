"""SparseFlex grids and fitted fields for the viewer: their active cubes as a line set and their extracted mesh.

Two ``.npz`` kinds, told apart by their keys (:func:`npz_kind`):

* ``grid`` -- a sparse voxel grid with signed distances at the cube corners, written by
  :meth:`sparse3d.models.sparseflex.structure.SparseSDFGrid.save` (a ``format`` entry naming the grid format);
  its mesh is the plain Dual Marching Cubes extraction (:func:`sparse3d.models.sparseflex.meshing.mesh_from_grid`).
* ``field`` -- the ``field.npz`` of a SparseFlex fit run (:class:`sparse3d.models.sparseflex.fit.SparseFlexFit`):
  ``sdf`` and ``deform`` per shared corner, ``beta`` / ``alpha`` / ``gamma`` per cube, ``resolution``,
  ``cube_coords`` and optionally ``center`` / ``scale``; its mesh is the FlexiCubes inference extraction with the
  fitted weights and deformations (:func:`sparse3d.kernels.flexicubes.extract_mesh`), as the fit exports it.

Both are drawn in the input's coordinates (``world = local * scale + center``, local cube ``(i, j, k)`` spanning
``[-0.5 + i / R, -0.5 + (i + 1) / R]`` per axis). Cubes are drawn undeformed, each grid edge once; above
``max_cubes`` cubes an evenly strided subset (in the stored x-major order) is drawn and a note says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparse3d.models.sparseflex.field_io import FIELD_KEYS, npz_kind
from sparse3d.utils.errors import UserError
from sparse3d.vis import colors as C
from sparse3d.vis.scene import Drawable, Lines

__all__ = [
    "FIELD_KEYS",
    "MAX_CUBES",
    "SHOW_MODES",
    "SparseFlexData",
    "cube_lines",
    "is_sparseflex_run",
    "load_sparseflex",
    "npz_kind",
    "sparseflex_drawables",
]

MAX_CUBES = 200_000
"""Most cubes drawn by default; larger grids are subsampled (evenly strided)."""
SHOW_MODES: tuple[str, ...] = ("both", "cubes", "mesh")
"""``--show``: the active cubes, the extracted mesh, or both."""
RUN_FILES: tuple[str, ...] = ("field.npz", "mesh.ply")
"""The artefacts of a SparseFlex fit run folder."""


@dataclass
class SparseFlexData:
    """A grid or field as the viewer needs it.

    Attributes:
        kind: ``grid`` or ``field``.
        resolution: R, cubes per axis of the unit box.
        cube_coords: (N, 3) int64 active cube indices in ``[0, R)``.
        center, scale: the similarity to input coordinates, ``world = local * scale + center``.
        vertices, faces: the extracted mesh in input coordinates ((V, 3) float32, (F, 3) int64), or None when it
            was not asked for.
        source: the file, for messages.
    """

    kind: str
    resolution: int
    cube_coords: np.ndarray
    center: np.ndarray
    scale: float
    vertices: np.ndarray | None = None
    faces: np.ndarray | None = None
    source: str = "sparseflex"


def is_sparseflex_run(folder: Path) -> bool:
    """``folder`` holds a SparseFlex fit's ``field.npz`` and ``mesh.ply``."""
    return all((folder / name).is_file() for name in RUN_FILES)


def _to_world(local: np.ndarray, center: np.ndarray, scale: float) -> np.ndarray:
    return (np.asarray(local, np.float64) * scale + center.reshape(1, 3)).astype(np.float32)


def _load_grid(path: Path, with_mesh: bool) -> SparseFlexData:
    from sparse3d.models.sparseflex.structure import SparseSDFGrid

    grid = SparseSDFGrid.load(path)
    norm = grid.normalization
    data = SparseFlexData("grid", grid.resolution, grid.cube_coords.numpy().astype(np.int64),
                          np.asarray(norm.center, np.float64), float(norm.scale), source=str(path))
    if with_mesh:
        from sparse3d.models.sparseflex.meshing import mesh_from_grid

        mesh = mesh_from_grid(grid)
        data.vertices, data.faces = np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int64)
    return data


def _load_field(path: Path, with_mesh: bool) -> SparseFlexData:
    from sparse3d.models.sparseflex.field_io import field_mesh, read_field

    arrays = read_field(path)
    coords = arrays["cube_coords"].astype(np.int64)
    data = SparseFlexData("field", int(arrays["resolution"]), coords, arrays["center"], float(arrays["scale"]),
                          source=str(path))
    if with_mesh:
        data.vertices, data.faces = field_mesh(arrays, path)
    return data


def load_sparseflex(path: str | Path, kind: str | None = None, with_mesh: bool = True) -> SparseFlexData:
    """Read a grid or field ``.npz`` (``kind`` None: from its keys, :func:`npz_kind`) and, with ``with_mesh``,
    extract its mesh in input coordinates."""
    p = Path(path)
    kind = npz_kind(p) if kind is None else kind
    if kind == "grid":
        return _load_grid(p, with_mesh)
    if kind == "field":
        return _load_field(p, with_mesh)
    raise ValueError(f"kind must be 'grid' or 'field', got {kind!r}")


def cube_lines(
    cube_coords: np.ndarray, resolution: int, center: np.ndarray | None = None, scale: float = 1.0,
    color: tuple[float, float, float] = C.CUBE_COLOR, name: str = "cubes",
) -> Lines:
    """The edges of the cubes ``cube_coords`` (N, 3) of an ``R^3`` grid on ``[-0.5, 0.5]^3``, each grid edge once
    (edges shared by neighbouring cubes are not repeated), mapped by ``local * scale + center``."""
    c = np.asarray(cube_coords, np.int64).reshape(-1, 3)
    r1 = int(resolution) + 1
    axis_step = np.array([r1 * r1, r1, 1], np.int64)
    base = c @ axis_step  # vertex id of each cube's lowest corner
    # the 12 edges of a cube: from corner (dx, dy, dz) along the axes where that corner's offset is 0
    starts, axes = [], []
    for m in range(8):
        offset = np.array([m & 1, (m >> 1) & 1, (m >> 2) & 1])
        for a in range(3):
            if offset[a] == 0:
                starts.append(int(offset @ axis_step))
                axes.append(a)
    edge_keys = ((base[:, None] + np.array(starts)[None]) * 3 + np.array(axes)[None]).reshape(-1)
    edge_keys = np.unique(edge_keys)
    lower, axis = edge_keys // 3, edge_keys % 3
    upper = lower + axis_step[axis]
    vids, inverse = np.unique(np.concatenate([lower, upper]), return_inverse=True)
    xyz = np.stack([vids // (r1 * r1), (vids // r1) % r1, vids % r1], axis=1) / float(resolution) - 0.5
    centre = np.zeros(3) if center is None else np.asarray(center, np.float64)
    segments = inverse.reshape(2, -1).T
    return Lines(_to_world(xyz, centre, float(scale)), segments,
                 np.tile(np.asarray(color, np.float32), (len(segments), 1)), name=name)


def sparseflex_drawables(
    data: SparseFlexData, show: str = "both", max_cubes: int = MAX_CUBES, *, wireframe: bool = False,
    normals: bool = False,
) -> tuple[list[Drawable], list[str]]:
    """The cubes (:func:`cube_lines`, at most ``max_cubes``, evenly strided) and/or the mesh
    (:func:`~sparse3d.vis.builders.mesh_drawables`) of ``data``, by ``show`` (one of :data:`SHOW_MODES`); and
    notes for the user (subsampling, an empty surface)."""
    from sparse3d.vis import builders as B  # torch and the file readers: only when drawing

    if show not in SHOW_MODES:
        raise UserError(f"--show: unknown choice {show!r}; one of {', '.join(SHOW_MODES)}")
    if max_cubes < 1:
        raise ValueError(f"max_cubes must be >= 1, got {max_cubes}")
    out: list[Drawable] = []
    notes: list[str] = []
    if show in ("mesh", "both"):
        if data.vertices is None or data.faces is None:
            raise ValueError("the mesh was not extracted (load with with_mesh=True)")
        if len(data.faces):
            out += B.mesh_drawables(data.vertices, data.faces, wireframe=wireframe, normals=normals,
                                    name=f"{data.source} mesh")
        else:
            notes.append(f"{data.source}: the {data.kind}'s signed distance never changes sign: no surface to show")
    if show in ("cubes", "both"):
        coords = data.cube_coords
        n = len(coords)
        if n > max_cubes:
            coords = coords[np.linspace(0, n - 1, max_cubes).round().astype(np.int64)]
            notes.append(f"{data.source}: {n} active cubes; drawing {max_cubes} of them (evenly spaced in storage "
                         f"order){'; the mesh uses all' if show == 'both' else ''}")
        out.append(cube_lines(coords, data.resolution, data.center, data.scale, name=f"{data.source} cubes"))
    return out, notes
