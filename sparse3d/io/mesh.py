"""Triangle meshes: the :class:`TriangleMesh` type and file IO through trimesh.

:func:`read_mesh` reads ``.obj .ply .off .glb .gltf .stl`` and :func:`write_mesh` writes ``.ply .obj .glb``. Both
go through `trimesh <https://trimesh.org>`_ (a dependency of sparse3d), imported only when a file is read or
written.

Conventions (the project's mesh convention): vertices float32 (V, 3), faces int64 (F, 3), counter-clockwise seen
from outside = outward. Reading does no processing: vertices are neither merged nor reordered (OBJ files keep
their ``v`` order even when texture coordinates would make trimesh split them; STL files keep their three
vertices per triangle) unless ``merge_vertices=True``. Polygons are triangulated by trimesh. A scene (glTF/GLB, or
any file trimesh loads as several geometries) becomes one mesh: each instance's vertices are moved by its node's
world transform, and instances under a mirroring transform (negative determinant) have their winding reversed so
that counter-clockwise stays outward, as glTF 2.0 specifies for such nodes.

Every problem with a file is a one-line :class:`MeshFileError` (or :class:`MissingMeshFile`) naming the file:
missing file or folder, unknown extension, empty file, content that does not parse or is truncated, a point cloud
where a mesh was expected, no triangles, non-finite vertices and face indices out of range.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparse3d.io.atomic import atomic_write_bytes
from sparse3d.utils.errors import UserError

__all__ = [
    "TriangleMesh",
    "MeshFileError",
    "MissingMeshFile",
    "READ_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "read_mesh",
    "write_mesh",
]

PathLike = str | os.PathLike

READ_EXTENSIONS: tuple[str, ...] = (".obj", ".ply", ".off", ".glb", ".gltf", ".stl")
WRITE_EXTENSIONS: tuple[str, ...] = (".ply", ".obj", ".glb")
_INSTALL_HINT = "pip install 'trimesh>=4.0' (a dependency of sparse3d: reinstall it to get it back)"


class MeshFileError(UserError, ValueError):
    """A mesh file that cannot be used; the one-line message names the file and the problem.

    A :class:`UserError` for the console scripts and a ``ValueError`` for callers that catch that."""


class MissingMeshFile(UserError, FileNotFoundError):
    """The mesh file is not there (or is a folder); a :class:`UserError` and a ``FileNotFoundError``."""


# ------------------------------------------------------------------------------------------------- the type
@dataclass
class TriangleMesh:
    """A triangle mesh: ``vertices`` float32 (V, 3) and ``faces`` int64 (F, 3) indexing ``vertices``.

    The constructor converts array-likes to those dtypes and checks the shapes and index range (``ValueError``
    naming the argument); faces are counter-clockwise seen from outside. Vertices not used by any face are allowed
    and are ignored by the geometric helpers (:meth:`bounds`, :meth:`area`, ...).
    """

    vertices: np.ndarray
    faces: np.ndarray

    def __post_init__(self) -> None:
        v = np.asarray(self.vertices)
        f = np.asarray(self.faces)
        if v.size == 0:
            v = v.reshape(0, 3)
        if f.size == 0:
            f = f.reshape(0, 3)
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"vertices must have shape (V, 3), got {v.shape}")
        if f.ndim != 2 or f.shape[1] != 3:
            raise ValueError(f"faces must have shape (F, 3), got {f.shape}")
        if f.size and not np.issubdtype(f.dtype, np.integer):
            raise ValueError(f"faces must be integer vertex indices, got dtype {f.dtype}")
        if f.size and (f.min() < 0 or f.max() >= len(v)):
            raise ValueError(f"faces index vertices in [{f.min()}, {f.max()}], but there are {len(v)} vertices")
        self.vertices = np.ascontiguousarray(v, dtype=np.float32)
        self.faces = np.ascontiguousarray(f, dtype=np.int64)

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def edges(self) -> np.ndarray:
        """Directed half-edges (3F, 2) int64: ``(a, b), (b, c), (c, a)`` of every face, face by face."""
        return self.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)

    def _undirected_edge_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Unique undirected edges (E, 2) (smaller index first) and how many faces use each."""
        if self.num_faces == 0:
            return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
        und = np.sort(self.edges, axis=1)
        unique, counts = np.unique(und, axis=0, return_counts=True)
        return unique, counts

    def boundary_edges(self) -> np.ndarray:
        """Undirected edges (B, 2) used by exactly one face (smaller vertex index first, sorted rows)."""
        unique, counts = self._undirected_edge_counts()
        return unique[counts == 1]

    def is_watertight(self) -> bool:
        """True when the mesh has faces and every edge is shared by exactly two faces (closed, manifold edges)."""
        if self.num_faces == 0:
            return False
        _, counts = self._undirected_edge_counts()
        return bool(np.all(counts == 2))

    def is_winding_consistent(self) -> bool:
        """True when no directed edge occurs twice: faces sharing an edge traverse it in opposite directions."""
        if self.num_faces == 0:
            return True
        _, counts = np.unique(self.edges, axis=0, return_counts=True)
        return bool(np.all(counts == 1))

    def _corners(self) -> np.ndarray:
        """Face corner positions (F, 3, 3) in float64."""
        return self.vertices.astype(np.float64)[self.faces]

    def face_normals(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit face normals (F, 3) float64 (right-hand rule on the face order) and twice each face's area (F,).

        Degenerate faces (zero area) get a zero normal."""
        c = self._corners()
        cross = np.cross(c[:, 1] - c[:, 0], c[:, 2] - c[:, 0])
        norm = np.linalg.norm(cross, axis=1)
        normals = np.divide(cross, norm[:, None], out=np.zeros_like(cross), where=norm[:, None] > 0)
        return normals, norm

    def face_areas(self) -> np.ndarray:
        """Area of every face (F,) float64."""
        return 0.5 * self.face_normals()[1]

    def area(self) -> float:
        """Total surface area."""
        return float(self.face_areas().sum())

    def signed_volume(self) -> float:
        """Volume enclosed by the mesh by the divergence theorem: positive for a closed mesh whose faces are
        counter-clockwise seen from outside, negative when they all face inwards; meaningless for open meshes."""
        c = self._corners()
        return float(np.einsum("ij,ij->i", c[:, 0], np.cross(c[:, 1], c[:, 2])).sum() / 6.0)

    def bounds(self) -> np.ndarray:
        """Axis-aligned bounding box (2, 3) float64 (min row, max row) of the vertices used by faces; zeros when
        the mesh has no faces."""
        if self.num_faces == 0:
            return np.zeros((2, 3))
        used = self.vertices[np.unique(self.faces)].astype(np.float64)
        return np.stack([used.min(axis=0), used.max(axis=0)])

    def diagonal(self) -> float:
        """Length of the bounding-box diagonal (0 for a mesh without faces)."""
        lo, hi = self.bounds()
        return float(np.linalg.norm(hi - lo))

    def flipped(self) -> TriangleMesh:
        """The same surface with every face's winding reversed (normals point the other way)."""
        return TriangleMesh(self.vertices.copy(), self.faces[:, ::-1].copy())

    def merged(self) -> TriangleMesh:
        """Vertices with identical coordinates merged into one (the result's vertices are sorted
        lexicographically); faces are re-indexed, none are removed, so the surface is unchanged."""
        if self.num_vertices == 0:
            return TriangleMesh(self.vertices.copy(), self.faces.copy())
        unique, inverse = np.unique(self.vertices, axis=0, return_inverse=True)
        return TriangleMesh(unique, inverse.reshape(-1)[self.faces])


# ----------------------------------------------------------------------------------------------- trimesh
def _trimesh() -> Any:
    """The trimesh module, or a one-line :class:`UserError` saying how to install it."""
    try:
        import trimesh
    except ImportError:
        raise UserError(f"reading and writing mesh files needs trimesh: {_INSTALL_HINT}") from None
    return trimesh


def _one_line(text: object, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _looks_binary(p: Path) -> bool:
    """True when the first 4 KiB are not text (a NUL byte, or not UTF-8)."""
    with open(p, "rb") as handle:
        head = handle.read(4096)
    if b"\x00" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start < len(head) - 4  # a multi-byte character cut at the 4 KiB boundary is still text
    return False


_PLY_ELEMENT = re.compile(rb"^element\s+(\S+)\s+(\d+)\s*$")


def _ply_header_counts(p: Path) -> dict[str, int] | None:
    """The element counts a PLY header declares (``{"vertex": V, "face": F, ...}``), or None when the header
    cannot be found in the first 64 KiB."""
    with open(p, "rb") as handle:
        head = handle.read(65536)
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        return None
    counts: dict[str, int] = {}
    for line in head[:end].splitlines():
        found = _PLY_ELEMENT.match(line.strip())
        if found:
            counts[found.group(1).decode("ascii", "replace")] = int(found.group(2))
    return counts


def _geometries(loaded: Any, trimesh: Any) -> tuple[list[tuple[Any, np.ndarray]], list[str]]:
    """``(mesh, world transform)`` pairs of every triangle mesh in what trimesh returned (a mesh or a scene), and
    the type names of the other geometries met (point clouds, paths)."""
    if isinstance(loaded, trimesh.Trimesh):
        return [(loaded, np.eye(4))], []
    if isinstance(loaded, trimesh.Scene):
        meshes: list[tuple[Any, np.ndarray]] = []
        others: list[str] = []
        for node in sorted(loaded.graph.nodes_geometry, key=str):
            transform, name = loaded.graph[node]
            geometry = loaded.geometry.get(name)
            if isinstance(geometry, trimesh.Trimesh):
                meshes.append((geometry, np.asarray(transform, dtype=np.float64)))
            elif geometry is not None:
                others.append(type(geometry).__name__)
        return meshes, others
    return [], [type(loaded).__name__]


def _concatenate(parts: list[tuple[Any, np.ndarray]], p: Path) -> tuple[np.ndarray, np.ndarray]:
    """One (vertices float64, faces int64) from transformed parts, with mirrored instances re-wound."""
    vertices: list[np.ndarray] = []
    faces: list[np.ndarray] = []
    offset = 0
    for geometry, transform in parts:
        v = np.asarray(geometry.vertices, dtype=np.float64)
        f = np.asarray(geometry.faces)
        if v.ndim != 2 or v.shape[1] != 3:
            raise MeshFileError(f"{p}: vertices have shape {v.shape}, expected (V, 3); the file is malformed")
        if f.size == 0:
            continue
        if f.ndim != 2 or f.shape[1] != 3:
            raise MeshFileError(f"{p}: faces have shape {f.shape}, expected (F, 3); the file is malformed")
        f = f.astype(np.int64)
        if f.min() < 0 or f.max() >= len(v):
            raise MeshFileError(f"{p}: face indices out of range: they span [{f.min()}, {f.max()}] but the mesh "
                                f"has {len(v)} vertices")
        if not np.allclose(transform, np.eye(4)):
            v = v @ transform[:3, :3].T + transform[:3, 3]
            if np.linalg.det(transform[:3, :3]) < 0:
                f = f[:, ::-1]
        vertices.append(v)
        faces.append(f + offset)
        offset += len(v)
    if not faces:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    return np.concatenate(vertices), np.concatenate(faces)


# -------------------------------------------------------------------------------------------------- read
def _existing_mesh_file(path: PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        if p.exists():
            raise MissingMeshFile(f"mesh path {p} exists but is not a regular file")
        raise MissingMeshFile(f"mesh file not found: {p}")
    if p.suffix.lower() not in READ_EXTENSIONS:
        raise MeshFileError(f"{p}: unknown mesh file extension {p.suffix or '(none)'!r}; "
                            f"expected one of {', '.join(READ_EXTENSIONS)}")
    if p.stat().st_size == 0:
        raise MeshFileError(f"{p}: the file is empty")
    return p


def read_mesh(path: PathLike, merge_vertices: bool = False) -> TriangleMesh:
    """Read a triangle mesh from ``.obj .ply .off .glb .gltf .stl`` (see the module docstring for the rules).

    ``merge_vertices``: merge vertices with identical coordinates (STL files store three per triangle); off by
    default, so vertex order and count are as in the file. Raises :class:`MissingMeshFile` /
    :class:`MeshFileError` (one line naming the file) for anything that is not a usable triangle mesh."""
    p = _existing_mesh_file(path)
    trimesh = _trimesh()
    ext = p.suffix.lower()
    kwargs: dict[str, Any] = {"process": False}
    if ext == ".obj":
        kwargs.update(maintain_order=True, skip_materials=True)
    try:
        loaded = trimesh.load(str(p), **kwargs)
    except Exception as exc:  # trimesh raises many types for malformed files; each means "cannot parse this"
        if isinstance(exc, IndexError) and ext == ".obj":
            raise MeshFileError(f"{p}: a face refers to a vertex that does not exist ({_one_line(exc)})") from None
        raise MeshFileError(f"{p}: cannot parse the {ext[1:].upper()} file, it is malformed or truncated "
                            f"({type(exc).__name__}: {_one_line(exc)})") from None
    parts, others = _geometries(loaded, trimesh)
    if ext == ".ply" and parts:
        _check_ply_counts(p, sum(len(g.vertices) for g, _ in parts), sum(len(g.faces) for g, _ in parts))
    vertices, faces = _concatenate(parts, p)
    if len(faces) == 0:
        if others and not parts:
            kind = {"PointCloud": "point cloud (vertices without faces)"}.get(others[0], f"{others[0]} (no faces)")
            raise MeshFileError(f"{p}: holds a {kind}, not a triangle mesh; read point clouds with "
                                "sparse3d.io.pointcloud")
        if ext in (".obj", ".off") and _looks_binary(p):
            raise MeshFileError(f"{p}: not a text {ext[1:].upper()} file (binary content)")
        raise MeshFileError(f"{p}: no triangles could be read (the file is empty, truncated or not a mesh)")
    if not np.isfinite(vertices).all():
        bad = int((~np.isfinite(vertices).all(axis=1)).sum())
        count = "1 vertex has" if bad == 1 else f"{bad} vertices have"
        raise MeshFileError(f"{p}: {count} non-finite (NaN or infinite) coordinates")
    with np.errstate(over="ignore"):
        v32 = vertices.astype(np.float32)
    if not np.isfinite(v32).all():
        raise MeshFileError(f"{p}: vertex coordinates overflow float32")
    mesh = TriangleMesh(v32, faces)
    return mesh.merged() if merge_vertices else mesh


def _check_ply_counts(p: Path, num_vertices: int, num_faces: int) -> None:
    """Truncated ASCII PLY files load silently with fewer rows: compare with the counts the header declares."""
    declared = _ply_header_counts(p)
    if not declared:
        return
    want_v = declared.get("vertex")
    want_f = declared.get("face")
    if want_v is not None and num_vertices != want_v:
        raise MeshFileError(f"{p}: the header declares {want_v} vertices but {num_vertices} were read; "
                            "the file is truncated or malformed")
    if want_f is not None and num_faces < want_f:  # polygons become several triangles, so only fewer is wrong
        raise MeshFileError(f"{p}: the header declares {want_f} faces but only {num_faces} triangles were read; "
                            "the file is truncated or malformed")


# ------------------------------------------------------------------------------------------------- write
def _obj_decimals(vertices: np.ndarray) -> int:
    """Decimals that keep every float32 coordinate exact through trimesh's fixed-point OBJ writer: nine
    significant digits for the smallest non-zero magnitude (float32 needs nine), at least 8; at most 60, which
    covers the smallest float32 subnormal (1.4e-45)."""
    magnitudes = np.abs(vertices[vertices != 0])
    if magnitudes.size == 0:
        return 8
    exponent = int(np.floor(np.log10(float(magnitudes.min()))))
    return int(np.clip(8 - exponent, 8, 60))


def _encode(mesh: TriangleMesh, ext: str, trimesh: Any) -> bytes:
    tm = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False, validate=False)
    if ext == ".ply":
        data = trimesh.exchange.ply.export_ply(tm, encoding="binary", vertex_normal=False, include_attributes=False)
    elif ext == ".obj":
        data = trimesh.exchange.obj.export_obj(tm, include_normals=False, include_color=False,
                                               include_texture=False, digits=_obj_decimals(mesh.vertices))
    else:
        data = trimesh.exchange.gltf.export_glb(trimesh.Scene(tm), include_normals=False)
    return data if isinstance(data, bytes) else str(data).encode("utf-8")


def write_mesh(path: PathLike, mesh: TriangleMesh) -> Path:
    """Write ``mesh`` as ``.ply`` (binary little-endian, float32 vertices), ``.obj`` (text, coordinates that read
    back to the same float32 values) or ``.glb`` (binary glTF 2.0, one node).

    Parent folders are created. The bytes go to a temporary file in the target folder that is renamed over
    ``path`` only when complete, so a failure never leaves a partial or truncated file behind. Returns ``path``.
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in WRITE_EXTENSIONS:
        raise MeshFileError(f"{p}: cannot write meshes as {p.suffix or '(no extension)'!r}; "
                            f"use one of {', '.join(WRITE_EXTENSIONS)}")
    if not isinstance(mesh, TriangleMesh):
        raise ValueError(f"mesh for {p} must be a TriangleMesh, got {type(mesh).__name__}")
    if p.is_dir():
        raise MeshFileError(f"{p}: is a folder; give a file name ending in {ext}")
    if not np.isfinite(mesh.vertices).all():
        raise ValueError(f"mesh for {p} has non-finite vertex coordinates")
    data = _encode(mesh, ext, _trimesh())
    return atomic_write_bytes(p, data)
