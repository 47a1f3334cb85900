"""Meshes from saved SparseFlex grids, SDF volumes, meshes and point clouds: the core of ``sparse3d-mesh``.

:func:`mesh_from_input` reads one input, builds (or loads) a sparse voxel grid with signed distances at its
corners (:mod:`sparse3d.models.sparseflex.structure`), runs the sparse FlexiCubes extraction
(:func:`sparse3d.kernels.flexicubes.extract_mesh`, plain Dual Marching Cubes when the grid carries no learned
weights) and maps the vertices back to the input's coordinates.

Contract:

* The input kind comes from the content, not only the suffix (:func:`detect_input_kind`): a ``.npz`` written by
  :meth:`SparseSDFGrid.save` is a grid, a fit's ``field.npz`` a field (extracted with its fitted weights and
  deformations, :mod:`~sparse3d.models.sparseflex.field_io`), a 3-D ``.npy`` array an SDF volume (negative inside), a 2-D ``.npy`` array
  with 3 or 6 columns a point cloud (``x y z [nx ny nz]``), a PLY with faces a mesh and a PLY without faces a
  point cloud; ``.obj .off .glb .gltf .stl`` are meshes, ``.pcd .xyz`` point clouds.
* Only cubes near the surface exist at any resolution (coarse-to-fine narrow band), so memory follows the surface
  area, not the volume. Where the input surface is open (a mesh with boundary edges) the band stops at the rim and
  the extracted mesh keeps the boundary open; a closed input gives a closed output.
* Remeshing output is in the input's units (the grid's normalisation is undone); SDF volumes map voxel indices
  ``(i, j, k)`` of a ``(D, D, D)`` array to ``[-0.5, 0.5]^3`` scaled by the volume's ``spacing`` if given.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sparse3d.io.mesh import TriangleMesh, read_mesh
from sparse3d.io.pointcloud import read_ply_points
from sparse3d.kernels.flexicubes import extract_mesh
from sparse3d.models.sparseflex.structure import (
    SparseSDFGrid,
    grid_from_mesh,
    grid_from_points,
    grid_from_sdf_volume,
)
from sparse3d.utils.errors import UserError

__all__ = ["INPUT_KINDS", "MESH_SUFFIXES", "MeshingResult", "detect_input_kind", "mesh_from_grid", "mesh_from_input"]

INPUT_KINDS: tuple[str, ...] = ("auto", "grid", "field", "sdf", "mesh", "points")
"""Values of ``sparse3d-mesh type=``; ``auto`` detects the kind from the file."""
MESH_SUFFIXES: tuple[str, ...] = (".obj", ".ply", ".off", ".glb", ".gltf", ".stl")
POINT_SUFFIXES: tuple[str, ...] = (".pcd", ".xyz", ".ply", ".npy")


@dataclass
class MeshingResult:
    """An extracted mesh (input coordinates) with what it took: cube count, seconds per stage, peak RSS."""

    mesh: TriangleMesh
    kind: str
    resolution: int
    num_cubes: int
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0

    @property
    def boundary_edges(self) -> int:
        """Edges used by one face only: 0 for a closed (watertight) result."""
        return int(len(self.mesh.boundary_edges()))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _ply_has_faces(path: Path) -> bool:
    """Whether a PLY header declares a non-empty ``face`` element (a mesh rather than a point cloud)."""
    with open(path, "rb") as handle:
        head = handle.read(65536)
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        raise UserError(f"{path}: not a PLY file (no 'ply' magic or no end_header in the first 64 KiB)")
    for line in head[:end].decode("ascii", errors="replace").splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "element" and words[1] == "face":
            return words[2].isdigit() and int(words[2]) > 0
    return False


def detect_input_kind(path: str | Path) -> str:
    """The kind of ``path`` (one of :data:`INPUT_KINDS` except ``auto``), from its content and suffix."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"input {p}: " + ("is not a regular file" if p.exists() else "file not found"))
    suffix = p.suffix.lower()
    if suffix == ".npz":
        from sparse3d.models.sparseflex.field_io import npz_kind

        return npz_kind(p)
    if suffix == ".npy":
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UserError(f"{p}: not a readable .npy array ({exc})") from None
        if arr.ndim == 3:
            return "sdf"
        if arr.ndim == 2 and arr.shape[1] in (3, 6):
            return "points"
        raise UserError(f"{p}: a .npy input must be a (D, D, D) SDF volume or an (N, 3|6) point array, "
                        f"got shape {tuple(arr.shape)}")
    if suffix == ".ply":
        return "mesh" if _ply_has_faces(p) else "points"
    if suffix in MESH_SUFFIXES:
        return "mesh"
    if suffix in (".pcd", ".xyz"):
        return "points"
    raise UserError(f"{p}: unknown input type {suffix or '(no suffix)'!r}; expected a grid .npz, an SDF volume or "
                    f"point array .npy, a mesh ({' '.join(MESH_SUFFIXES)}) or a point cloud (.ply .pcd .xyz)")


def _read_points(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, 3) points and optional (N, 3) normals of a point-cloud file."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False).astype(np.float32)
        return arr[:, :3], (arr[:, 3:6] if arr.shape[1] == 6 else None)
    if suffix == ".ply":
        cols = read_ply_points(path)
        return cols["xyz"].astype(np.float32), (cols["normals"].astype(np.float32) if "normals" in cols else None)
    if suffix == ".xyz":
        try:
            arr = np.loadtxt(path, dtype=np.float32, ndmin=2)
        except ValueError as exc:
            raise UserError(f"{path}: not a whitespace-separated x y z [nx ny nz] table ({exc})") from None
        if arr.shape[1] not in (3, 6):
            raise UserError(f"{path}: expected 3 or 6 columns (x y z [nx ny nz]), got {arr.shape[1]}")
        return arr[:, :3], (arr[:, 3:6] if arr.shape[1] == 6 else None)
    import open3d as o3d

    cloud = o3d.io.read_point_cloud(str(path))
    xyz = np.asarray(cloud.points, dtype=np.float32)
    if len(xyz) == 0:
        raise UserError(f"{path}: no points could be read")
    return xyz, (np.asarray(cloud.normals, dtype=np.float32) if cloud.has_normals() else None)


def mesh_from_grid(grid: SparseSDFGrid) -> TriangleMesh:
    """Dual-marching-cubes extraction of a grid (no learned weights), in the grid's input coordinates."""
    cubes = torch.as_tensor(grid.cube_coords)
    out = extract_mesh(cubes, grid.resolution, torch.as_tensor(grid.sdf),
                       corners=(torch.as_tensor(grid.corner_keys), torch.as_tensor(grid.cube_corners)))
    norm = grid.normalization
    vertices = out.vertices.detach().cpu().numpy().astype(np.float64)
    vertices = vertices * float(norm.scale) + np.asarray(norm.center, dtype=np.float64).reshape(1, 3)
    return TriangleMesh(vertices.astype(np.float32), out.faces.detach().cpu().numpy().astype(np.int64))


def mesh_from_input(path: str | Path, resolution: int, kind: str = "auto", *, sign: str = "auto",
                    progress: bool = False) -> MeshingResult:
    """Read ``path`` and extract a mesh at ``resolution``³ cubes (ignored for a saved grid or field: they have their
    own)."""
    p = Path(path)
    if kind not in INPUT_KINDS:
        raise UserError(f"type={kind!r} is not one of {', '.join(INPUT_KINDS)}")
    if int(resolution) < 2 or int(resolution) > 2048:
        raise UserError(f"resolution={resolution} is out of range: expected an integer in [2, 2048]")
    resolution = int(resolution)
    if kind == "auto":
        kind = detect_input_kind(p)
    elif not p.is_file():
        raise UserError(f"input {p}: " + ("is not a regular file" if p.exists() else "file not found"))
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    if kind == "field":
        from sparse3d.models.sparseflex.field_io import field_mesh, read_field

        arrays = read_field(p)
        vertices, faces = field_mesh(arrays, p)
        seconds["extract"] = time.perf_counter() - start
        if len(faces) == 0:
            raise UserError(f"{p}: the field has no surface (its signed distances never change sign)")
        return MeshingResult(TriangleMesh(vertices, faces), kind, int(arrays["resolution"]),
                             int(len(arrays["cube_coords"])), seconds, _peak_rss_mb())
    if kind == "grid":
        grid = SparseSDFGrid.load(p)
    elif kind == "sdf":
        try:
            volume = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UserError(f"{p}: not a readable .npy array ({exc})") from None
        if volume.ndim != 3 or not np.issubdtype(volume.dtype, np.floating):
            raise UserError(f"{p}: an SDF volume must be a 3-D float array, got {volume.dtype} {volume.shape}")
        grid = grid_from_sdf_volume(volume)
    elif kind == "mesh":
        mesh = read_mesh(p)
        grid = grid_from_mesh(torch.as_tensor(mesh.vertices), torch.as_tensor(mesh.faces), resolution, sign=sign,
                              progress=progress)
    else:
        xyz, normals = _read_points(p)
        if len(xyz) == 0 or not np.isfinite(xyz).all():
            raise UserError(f"{p}: the point cloud is empty or has non-finite coordinates")
        grid = grid_from_points(torch.as_tensor(xyz), None if normals is None else torch.as_tensor(normals),
                                resolution)
    seconds["build"] = time.perf_counter() - start
    start = time.perf_counter()
    mesh = mesh_from_grid(grid)
    seconds["extract"] = time.perf_counter() - start
    if len(mesh.faces) == 0:
        raise UserError(f"{p}: no surface found at resolution {grid.resolution} (the signed distance never changes "
                        "sign inside the grid's band)")
    return MeshingResult(mesh, kind, grid.resolution, int(len(grid.cube_coords)), seconds, _peak_rss_mb())
