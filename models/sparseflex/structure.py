"""Sparse voxel structures with signed distances at the cube corners, the input of sparse FlexiCubes.

Grid conventions (FlexiCubes, Shen et al., ACM TOG 2023; SparseFlex, He et al., arXiv 2503.21732): ``R`` cubes
per axis on ``[-0.5, 0.5]^3`` (voxel size ``h = 1/R``); cube ``(i, j, k)`` spans ``[-0.5 + i h, -0.5 + (i+1) h]``
per axis; its corner ``m`` is vertex ``(i + (m&1), j + ((m>>1)&1), k + ((m>>2)&1))`` with id
``(x (R+1) + y)(R+1) + z``. Signed distances are in these local units, negative inside. A :class:`SparseSDFGrid`
holds only cubes near the surface; sparse FlexiCubes emits a face only for grid edges shared by four present
cubes, so leaving cubes out is how a surface stays open.

Builders:

* :func:`grid_from_mesh` -- coarse to fine: every cube of a dense ``coarse^3`` grid, then each kept cube split into
  its 8 children, level after level up to ``resolution`` (``64 -> 128 -> ... -> 1024``); at each level only the
  children whose centre can still hold a final band cube are kept, so no dense grid at the target resolution
  ever exists. Final cubes: ``|d(centre)| <= band * h`` (``band >= sqrt(3)/2`` keeps every cube the surface
  passes through, since no point of a cube is farther than half its diagonal from the centre). Signs come from
  the generalised winding number for watertight meshes and from the closest feature's normal for open ones
  (:mod:`sparse3d.kernels.mesh_distance`). For a watertight mesh the winding number is constant on any ball that
  misses the surface, so corners are grouped into regions of provably equal sign (grid neighbours whose distance
  balls overlap) and one winding query per region signs them all. For an open mesh the band stops at the rim: a cube whose centre's
  closest point lies on a boundary edge or vertex and is offset sideways (tangentially to the closest face) by
  more than ``rim_tolerance * h`` lies beyond the rim and is dropped, so the extraction leaves the boundary open
  instead of growing a fringe. Inner surfaces (cavities) are kept like any other surface.
* :func:`grid_from_points` -- signed distance to the tangent plane of the nearest oriented point, on the cubes
  occupied by the points, dilated by one voxel.
* :func:`grid_from_sdf_volume` -- a dense SDF volume (the samples are the grid vertices), keeping the cubes whose
  corners change sign or come within ``band`` voxels of the surface.
* :func:`subdivide` -- one refinement step of a grid with a user-supplied signed-distance function.
"""

from __future__ import annotations

import math
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sparse3d.kernels.flexicubes import corner_positions, cube_corner_table, sort_cubes
from sparse3d.kernels.mesh_distance import MeshDistance, check_mesh
from sparse3d.utils.errors import UserError

__all__ = [
    "DEFAULT_BAND",
    "DEFAULT_PADDING",
    "GRID_FORMAT",
    "GRID_VERSION",
    "Normalization",
    "SparseSDFGrid",
    "grid_from_mesh",
    "grid_from_points",
    "grid_from_sdf_volume",
    "is_watertight",
    "normalize_to_unit_box",
    "subdivide",
]

GRID_FORMAT = "sparse3d.sparse_sdf_grid"
"""Value of the ``format`` entry of a saved grid."""
GRID_VERSION = 1
"""Version written by :meth:`SparseSDFGrid.save`; :meth:`SparseSDFGrid.load` reads versions up to this one."""
HALF_DIAGONAL = math.sqrt(3.0) / 2.0
"""Half the diagonal of a unit cube: no point of a cube is farther from its centre (in voxels)."""
DEFAULT_BAND = 1.0
"""Cubes kept: ``|d(centre)| <= band`` voxels (half diagonal plus a margin for the distance's rounding)."""
DEFAULT_PADDING = 1.0 / 32.0
"""Empty margin on each side of the unit box left by :func:`normalize_to_unit_box` (fraction of the box)."""
DEFAULT_RIM_TOLERANCE = 0.25
"""Sideways offset (voxels) past an open mesh's rim beyond which a cube is dropped."""
MAX_DENSE_RESOLUTION = 256
"""Largest grid evaluated densely (the coarse level of :func:`grid_from_mesh`)."""
_QUERY_CHUNK = 1 << 22
"""Most query points sent to one mesh query (bounds the temporaries)."""


# ---------------------------------------------------------------------------------------------- normalisation
@dataclass
class Normalization:
    """Similarity between input (world) coordinates and the local unit box: ``world = local * scale + center``."""

    center: np.ndarray
    """(3,) float64."""
    scale: float

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, dtype=np.float64).reshape(3)
        self.scale = float(self.scale)
        if not (np.isfinite(self.center).all() and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"normalization needs a finite center and a finite scale > 0, got {self.center}, {self.scale}")

    @classmethod
    def identity(cls) -> Normalization:
        return cls(np.zeros(3), 1.0)

    def to_local(self, points: torch.Tensor) -> torch.Tensor:
        """World points (..., 3) to the unit box, float32 on the input's device."""
        c = torch.as_tensor(self.center, dtype=torch.float64, device=points.device)
        return ((points.to(torch.float64) - c) / self.scale).to(torch.float32)

    def to_world(self, points: torch.Tensor) -> torch.Tensor:
        """Local points (..., 3) back to world coordinates, float32."""
        c = torch.as_tensor(self.center, dtype=torch.float64, device=points.device)
        return (points.to(torch.float64) * self.scale + c).to(torch.float32)


def normalize_to_unit_box(vertices: torch.Tensor | np.ndarray, padding: float = DEFAULT_PADDING) -> Normalization:
    """Centre the bounding box of ``vertices`` (N, 3) and scale its longest side to ``1 - 2 * padding``.

    The result maps the points into ``[-0.5 + padding, 0.5 - padding]^3`` (a flat or single-point input gets
    scale 1 along its degenerate extent).
    """
    v = torch.as_tensor(vertices)
    if v.dim() != 2 or v.shape[-1] != 3 or v.shape[0] == 0:
        raise ValueError(f"vertices must be a non-empty (N, 3) array, got shape {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError("vertices must be finite (found NaN or inf)")
    if not (isinstance(padding, (int, float)) and 0.0 <= padding < 0.5):
        raise ValueError(f"padding must be in [0, 0.5), got {padding!r}")
    v = v.detach().to(torch.float64).cpu()
    lo, hi = v.min(0).values.numpy(), v.max(0).values.numpy()
    extent = float((hi - lo).max())
    scale = extent / (1.0 - 2.0 * padding) if extent > 0 else 1.0
    return Normalization((lo + hi) / 2.0, scale)


# ------------------------------------------------------------------------------------------------------- grid
@dataclass
class SparseSDFGrid:
    """Sparse cubes of an ``R^3`` grid with signed distances at their corners.

    Invariants (checked by :meth:`validate`): ``cube_coords`` (N, 3) int32 in ``[0, R)``, unique and sorted by the
    x-major key ``(x R + y) R + z``; ``corner_keys`` (V,) int64 sorted unique vertex ids of their corners and
    ``cube_corners`` (N, 8) int64 indices into them (as :func:`sparse3d.kernels.flexicubes.cube_corner_table`);
    ``sdf`` (V,) float32 finite, local units, negative inside. ``open_surface`` records that the band was cut at
    an open input's rim (the extracted surface is meant to have a boundary).
    """

    resolution: int
    cube_coords: torch.Tensor
    corner_keys: torch.Tensor
    cube_corners: torch.Tensor
    sdf: torch.Tensor
    normalization: Normalization
    open_surface: bool = False

    @property
    def num_cubes(self) -> int:
        return int(self.cube_coords.shape[0])

    @property
    def voxel_size(self) -> float:
        return 1.0 / self.resolution

    def corner_points(self) -> torch.Tensor:
        """(V, 3) float32 local positions of the corners."""
        return corner_positions(self.corner_keys, self.resolution)

    def cube_centers(self) -> torch.Tensor:
        """(N, 3) float32 local positions of the cube centres."""
        return _centers(self.cube_coords, self.resolution)

    def validate(self) -> None:
        """Raise ValueError naming the first field that breaks the class invariants."""
        problem = _grid_problem(self.resolution, self.cube_coords, self.sdf, self.corner_keys, self.cube_corners)
        if problem:
            raise ValueError(problem)

    def save(self, path: str | Path) -> None:
        """Write an uncompressed ``.npz`` (format :data:`GRID_FORMAT`, version :data:`GRID_VERSION`) at ``path``.

        The corner table is not stored; :meth:`load` rebuilds it from the cubes.
        """
        self.validate()
        with open(path, "wb") as handle:
            np.savez(
                handle,
                format=np.array(GRID_FORMAT),
                version=np.array(GRID_VERSION, dtype=np.int64),
                resolution=np.array(self.resolution, dtype=np.int64),
                cube_coords=self.cube_coords.detach().cpu().to(torch.int32).numpy(),
                sdf=self.sdf.detach().cpu().to(torch.float32).numpy(),
                center=np.asarray(self.normalization.center, dtype=np.float64),
                scale=np.array(self.normalization.scale, dtype=np.float64),
                open_surface=np.array(bool(self.open_surface)),
            )

    @classmethod
    def load(cls, path: str | Path) -> SparseSDFGrid:
        """Read a grid written by :meth:`save`; any problem is a one-line :class:`UserError` naming the file."""
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: " + ("is not a regular file" if p.exists() else "file not found"))
        try:
            with np.load(p, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise UserError(f"{p}: not a readable .npz archive ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        missing = [k for k in ("format", "version", "resolution", "cube_coords", "sdf", "center", "scale", "open_surface")
                   if k not in arrays]
        if "format" not in arrays or str(arrays["format"]) != GRID_FORMAT:
            raise UserError(f"{p}: not a SparseSDFGrid file (no format={GRID_FORMAT!r} entry)")
        if missing:
            raise UserError(f"{p}: missing entries {', '.join(missing)}")
        try:
            version = int(arrays["version"])
            resolution = int(arrays["resolution"])
        except (TypeError, ValueError):
            raise UserError(f"{p}: version and resolution must be integers") from None
        if version < 1 or version > GRID_VERSION:
            raise UserError(f"{p}: grid format version {version} is not supported (this build reads 1..{GRID_VERSION})")
        if resolution < 1 or (resolution + 1) ** 3 >= 2**62:
            raise UserError(f"{p}: resolution must be a positive integer, got {resolution}")
        coords, sdf = arrays["cube_coords"], arrays["sdf"]
        if coords.ndim != 2 or coords.shape[1] != 3 or not np.issubdtype(coords.dtype, np.integer):
            raise UserError(f"{p}: cube_coords must be an (N, 3) integer array, got {coords.dtype} {coords.shape}")
        if sdf.ndim != 1 or not np.issubdtype(sdf.dtype, np.floating):
            raise UserError(f"{p}: sdf must be a 1-D float array, got {sdf.dtype} {sdf.shape}")
        center, scale = arrays["center"], arrays["scale"]
        if center.shape != (3,) or scale.shape != () or not np.isfinite(center).all() or not float(scale) > 0:
            raise UserError(f"{p}: center must be 3 finite numbers and scale a number > 0")
        cubes = torch.from_numpy(coords.astype(np.int32))
        if cubes.numel() and (int(cubes.min()) < 0 or int(cubes.max()) >= resolution):
            raise UserError(f"{p}: cube_coords must lie in [0, {resolution})")
        sdf_t = torch.from_numpy(sdf.astype(np.float32))
        keys, table = cube_corner_table(cubes, resolution)
        problem = _grid_problem(resolution, cubes, sdf_t, keys, table)
        if problem:
            raise UserError(f"{p}: {problem}")
        return cls(resolution, cubes, keys, table, sdf_t, Normalization(center, float(scale)), bool(arrays["open_surface"]))


def _grid_problem(
    resolution: int, cubes: torch.Tensor, sdf: torch.Tensor, keys: torch.Tensor, table: torch.Tensor
) -> str | None:
    """Description of the first broken invariant of a grid, or None."""
    if cubes.dtype != torch.int32 or cubes.dim() != 2 or cubes.shape[1] != 3:
        return f"cube_coords must be (N, 3) int32, got {cubes.dtype} {tuple(cubes.shape)}"
    if cubes.numel() and (int(cubes.min()) < 0 or int(cubes.max()) >= resolution):
        return f"cube_coords must lie in [0, {resolution})"
    k = _cube_keys(cubes, resolution)
    if k.numel() > 1 and not bool((k[1:] > k[:-1]).all()):
        return "cube_coords must be unique and sorted by x-major key (x*R + y)*R + z"
    if keys.dtype != torch.int64 or table.dtype != torch.int64 or table.shape != (cubes.shape[0], 8):
        return "corner_keys must be (V,) int64 and cube_corners (N, 8) int64"
    if sdf.dtype != torch.float32 or sdf.shape != keys.shape:
        return f"sdf must be float32 with one value per corner ({keys.shape[0]}), got {sdf.dtype} {tuple(sdf.shape)}"
    if not bool(torch.isfinite(sdf).all()):
        return "sdf must be finite"
    return None


# ---------------------------------------------------------------------------------------------------- helpers
def _cube_keys(coords: torch.Tensor, resolution: int) -> torch.Tensor:
    c = coords.to(torch.int64)
    return (c[:, 0] * resolution + c[:, 1]) * resolution + c[:, 2]


def _centers(coords: torch.Tensor, resolution: int) -> torch.Tensor:
    return (coords.to(torch.float32) + 0.5) / resolution - 0.5


_CHILD_OFFSETS = torch.tensor([[m & 1, (m >> 1) & 1, (m >> 2) & 1] for m in range(8)], dtype=torch.int32)


def _children(coords: torch.Tensor) -> torch.Tensor:
    """The 8 children (8N, 3) int32 of each cube at twice the resolution."""
    return (coords[:, None, :] * 2 + _CHILD_OFFSETS.to(coords.device)[None]).reshape(-1, 3)


def _dense_coords(resolution: int) -> torch.Tensor:
    r = torch.arange(resolution, dtype=torch.int32)
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)


def _check_resolution(resolution: object, name: str = "resolution") -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or int(resolution) < 1:
        raise ValueError(f"{name} must be a positive int, got {resolution!r}")
    return int(resolution)


def _check_band(band: object) -> float:
    if isinstance(band, bool) or not isinstance(band, (int, float)) or not (band > 0 and math.isfinite(band)):
        raise ValueError(f"band must be a positive number of voxels, got {band!r}")
    return float(band)


def _finish(
    coords: torch.Tensor, resolution: int, sdf_at: Callable[[torch.Tensor], torch.Tensor],
    normalization: Normalization, open_surface: bool,
) -> SparseSDFGrid:
    """Sort the cubes, build their corner table and evaluate ``sdf_at`` on the corners."""
    coords, _ = sort_cubes(coords.to(torch.int32), resolution)
    coords = coords.to(torch.int32).contiguous()
    keys, table = cube_corner_table(coords, resolution)
    sdf = sdf_at(corner_positions(keys, resolution)).to(torch.float32).contiguous()
    return SparseSDFGrid(resolution, coords, keys, table, sdf, normalization, open_surface)


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[sparseflex structure] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------- meshes
def is_watertight(faces: torch.Tensor) -> bool:
    """Whether every undirected edge of ``faces`` (F, 3) is shared by exactly two faces."""
    _, counts = _edge_counts(faces)
    return bool((counts == 2).all())


def _edge_counts(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per face-edge (F, 3) index into the unique undirected edges, and each unique edge's face count.

    Face edge ``k`` is the edge opposite vertex ``k``.
    """
    f = faces.to(torch.int64)
    a = torch.stack((f[:, 1], f[:, 2], f[:, 0]), 1)
    b = torch.stack((f[:, 2], f[:, 0], f[:, 1]), 1)
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    n = int(f.max()) + 1
    _, inverse, counts = torch.unique((lo * n + hi).reshape(-1), return_inverse=True, return_counts=True)
    return inverse.reshape(-1, 3), counts


class _RimTest:
    """Which query points lie beyond the rim of an open mesh (see the module docstring)."""

    def __init__(self, vertices: torch.Tensor, faces: torch.Tensor) -> None:
        inverse, counts = _edge_counts(faces)
        self.edge_on_boundary = counts[inverse] == 1  # (F, 3), edge opposite vertex k
        f = faces.to(torch.int64)
        boundary_vertex = torch.zeros(vertices.shape[0], dtype=torch.bool)
        for k in range(3):
            on = self.edge_on_boundary[:, k]
            boundary_vertex[f[on][:, (k + 1) % 3]] = True
            boundary_vertex[f[on][:, (k + 2) % 3]] = True
        self.vertex_on_boundary = boundary_vertex[f]  # (F, 3)
        tri = vertices[f]
        n = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=1)
        self.normals = n / n.norm(dim=1, keepdim=True).clamp_min(1e-30)
        self.tri = tri

    def beyond(self, points: torch.Tensor, face: torch.Tensor, bary: torch.Tensor, tolerance: float) -> torch.Tensor:
        found = face >= 0
        f = face.clamp_min(0)
        eps = 1e-5
        on_edge = ((bary <= eps) & self.edge_on_boundary[f]).any(1)
        at_vertex = ((bary >= 1.0 - eps) & self.vertex_on_boundary[f]).any(1)
        closest = (bary[:, :, None] * self.tri[f]).sum(1)
        offset = points - closest
        n = self.normals[f]
        tangential = (offset - (offset * n).sum(1, keepdim=True) * n).norm(dim=1)
        return found & (on_edge | at_vertex) & (tangential > tolerance)


def _query_chunks(field: MeshDistance, points: torch.Tensor, mode: str, max_distance: float):
    """MeshDistance.query over chunks of ``points``: concatenated (dist, face, bary)."""
    dists, faces, barys = [], [], []
    for s in range(0, max(points.shape[0], 1), _QUERY_CHUNK):
        r = field.query(points[s : s + _QUERY_CHUNK], mode, max_distance)
        dists.append(r.dist)
        faces.append(r.face)
        barys.append(r.bary)
    return torch.cat(dists), torch.cat(faces), torch.cat(barys)


def _winding_inside_by_regions(
    field: MeshDistance, points: torch.Tensor, dist: torch.Tensor, resolution: int
) -> torch.Tensor:
    """Winding-number inside flags (V,) of grid corners, one winding query per region of constant sign.

    The corners are the rows of ``points`` in ascending vertex-id order, ``dist`` their unsigned distances.
    Off a closed mesh the winding number is constant on every ball that misses the surface, so two grid
    neighbours ``a, b`` (one edge, length ``h``) with ``dist[a] + dist[b] > h`` lie on the same side: their balls
    cover the segment. The connected components of these links share one sign, taken from a winding query at
    the component's farthest corner (where the fast winding number is most accurate).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    keys = _vertex_keys(points, resolution)
    v = keys.shape[0]
    r1 = resolution + 1
    h = 1.0 / resolution
    rows, cols = [], []
    for step, coord in ((1, keys % r1), (r1, (keys // r1) % r1), (r1 * r1, keys // (r1 * r1))):
        nb = keys + step
        pos = torch.searchsorted(keys, nb).clamp_max(v - 1)
        linked = (keys[pos] == nb) & (coord < resolution)
        linked &= dist + dist[pos] > h * (1.0 + 1e-4)
        a = linked.nonzero().squeeze(1)
        rows.append(a)
        cols.append(pos[a])
    src = torch.cat(rows).to(torch.int32).numpy()
    dst = torch.cat(cols).to(torch.int32).numpy()
    del rows, cols
    graph = coo_matrix((np.ones(src.shape[0], dtype=np.int8), (src, dst)), shape=(v, v)).tocsr()
    del src, dst
    count, labels_np = connected_components(graph, directed=False)
    del graph
    labels = torch.from_numpy(labels_np.astype(np.int64))
    far = torch.full((count,), -1.0, dtype=dist.dtype).scatter_reduce(0, labels, dist, "amax")
    index = torch.arange(v)
    is_far = dist == far[labels]
    rep = torch.full((count,), v, dtype=torch.int64).scatter_reduce(0, labels[is_far], index[is_far], "amin")
    signed, _, _ = _query_chunks(field, points[rep], "winding", math.inf)
    return (signed < 0)[labels]


def _vertex_keys(points: torch.Tensor, resolution: int) -> torch.Tensor:
    """Vertex ids of grid-vertex positions (inverse of :func:`corner_positions`)."""
    idx = torch.round((points.to(torch.float64) + 0.5) * resolution).to(torch.int64)
    r1 = resolution + 1
    return (idx[:, 0] * r1 + idx[:, 1]) * r1 + idx[:, 2]


def grid_from_mesh(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    resolution: int,
    *,
    band: float = DEFAULT_BAND,
    sign: str = "auto",
    coarse: int = 64,
    normalization: Normalization | None = None,
    padding: float = DEFAULT_PADDING,
    rim_tolerance: float = DEFAULT_RIM_TOLERANCE,
    progress: bool = False,
) -> SparseSDFGrid:
    """Narrow-band sparse grid of a triangle mesh, built coarse to fine (module docstring).

    ``vertices`` (V, 3) float, ``faces`` (F, 3) int, in world units; ``normalization`` maps them into the unit box
    (default :func:`normalize_to_unit_box` with ``padding``). ``resolution`` must be ``c * 2^k`` with a start level
    ``c <= max(coarse, 256)`` reached by halving (e.g. 1024 from 64). ``sign``: ``"winding"`` (closed or nearly
    closed meshes), ``"normal"`` (open sheets; the band is cut at the rim), or ``"auto"``: winding when every edge
    is shared by exactly two faces, normal otherwise. ``band`` (voxels) keeps the cubes with ``|d(centre)| <=
    band * h``. Runs on the CPU (inputs on another device are copied). Returns cubes sorted x-major with their
    corner SDF (local units).
    """
    vertices, faces = check_mesh(vertices, faces)
    resolution = _check_resolution(resolution)
    coarse = _check_resolution(coarse, "coarse")
    band = _check_band(band)
    if sign not in ("auto", "winding", "normal"):
        raise ValueError(f"sign must be 'auto', 'winding' or 'normal', got {sign!r}")
    if not (isinstance(rim_tolerance, (int, float)) and rim_tolerance >= 0):
        raise ValueError(f"rim_tolerance must be a number >= 0, got {rim_tolerance!r}")
    start = resolution
    while start > coarse and start % 2 == 0:
        start //= 2
    if start > max(coarse, MAX_DENSE_RESOLUTION):
        raise ValueError(
            f"resolution {resolution} cannot be reached by doubling from a level <= {max(coarse, MAX_DENSE_RESOLUTION)}; "
            f"use coarse * 2^k (e.g. {coarse * 2 ** max(0, round(math.log2(resolution / coarse)))})"
        )
    vertices, faces = vertices.cpu(), faces.cpu()
    norm = normalization if normalization is not None else normalize_to_unit_box(vertices, padding)
    local = norm.to_local(vertices)
    watertight = is_watertight(faces)
    mode = ("winding" if watertight else "normal") if sign == "auto" else sign
    trim_rim = mode == "normal" and not watertight
    field = MeshDistance(local, faces, winding=mode == "winding")
    h_final = 1.0 / resolution
    final_reach = band * h_final

    t0 = time.perf_counter()
    level = start
    coords = _dense_coords(level)
    while True:
        h = 1.0 / level
        # A final cube lies within sqrt(3)/2 (h - h_final) of its ancestor's centre at this level.
        reach = final_reach + HALF_DIAGONAL * (h - h_final)
        reach = reach * (1.0 + 1e-5) + 1e-7 if level < resolution else reach
        centers = _centers(coords, level)
        dist, face, bary = _query_chunks(field, centers, "none", reach * 1.5 + 1e-6)
        keep = dist <= reach
        if level == resolution and trim_rim:
            keep &= ~_RimTest(local, faces).beyond(centers, face, bary, rim_tolerance * h_final)
        coords = coords[keep]
        _log(progress, f"{level}^3: {coords.shape[0]} cubes ({time.perf_counter() - t0:.1f} s)")
        if level == resolution:
            break
        coords = _children(coords)
        level *= 2
        del centers, dist, face, bary, keep

    corner_reach = (band + 2.0 * HALF_DIAGONAL) * h_final * 1.01
    regions = mode == "winding" and watertight

    def corner_sdf(points: torch.Tensor) -> torch.Tensor:
        d, _, _ = _query_chunks(field, points, "none" if regions else mode, corner_reach)
        miss = ~torch.isfinite(d)
        if bool(miss.any()):
            d[miss], _, _ = _query_chunks(field, points[miss], "none" if regions else mode, math.inf)
        if regions:
            inside = _winding_inside_by_regions(field, points, d, resolution)
            d = torch.where(inside, -d, d)
        return d

    grid = _finish(coords, resolution, corner_sdf, norm, trim_rim)
    _log(progress, f"corners: {grid.corner_keys.shape[0]} ({time.perf_counter() - t0:.1f} s)")
    return grid


def subdivide(
    grid: SparseSDFGrid, sdf_fn: Callable[[torch.Tensor], torch.Tensor], band: float = DEFAULT_BAND
) -> SparseSDFGrid:
    """One refinement step: every cube of ``grid`` becomes its 8 children at ``2R``; those with
    ``|sdf_fn(centre)| <= band * h`` (new voxel size) are kept and ``sdf_fn`` is evaluated at their corners.

    ``sdf_fn`` maps (M, 3) float32 local points to (M,) signed distances in local units (negative inside). For a
    true distance the result is every band cube at ``2R`` inside the parents' region.
    """
    if not isinstance(grid, SparseSDFGrid):
        raise ValueError(f"grid must be a SparseSDFGrid, got {type(grid).__name__}")
    if not callable(sdf_fn):
        raise ValueError("sdf_fn must be callable: (M, 3) local points -> (M,) signed distances")
    band = _check_band(band)
    resolution = grid.resolution * 2

    def evaluate(points: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(sdf_fn(points))
        if out.shape != (points.shape[0],):
            raise ValueError(f"sdf_fn must return shape ({points.shape[0]},), got {tuple(out.shape)}")
        return out.to(torch.float32)

    children = _children(grid.cube_coords.to(torch.int32))
    keep = evaluate(_centers(children, resolution)).abs() <= band / resolution
    return _finish(children[keep], resolution, evaluate, grid.normalization, grid.open_surface)


# ------------------------------------------------------------------------------------------------ point clouds
def _estimate_normals(points: np.ndarray, neighbours: int) -> np.ndarray:
    """Normals by local PCA, oriented consistently over a k-NN graph (Open3D), then flipped as a whole so that
    most point away from the centroid."""
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(knn=neighbours))
    if len(points) > neighbours:
        cloud.orient_normals_consistent_tangent_plane(neighbours)
    normals = np.asarray(cloud.normals, dtype=np.float64)
    if float(np.einsum("ij,ij->", normals, points - points.mean(0))) < 0:
        normals = -normals
    return normals


def grid_from_points(
    points: torch.Tensor,
    normals: torch.Tensor | None = None,
    resolution: int = 256,
    *,
    normalization: Normalization | None = None,
    padding: float = DEFAULT_PADDING,
    neighbours: int = 16,
) -> SparseSDFGrid:
    """Sparse grid of an oriented point cloud: signed distance to the tangent plane of the nearest point.

    Cubes: those holding at least one point, dilated by one voxel (26-neighbourhood), so the band follows the
    samples and stops where they stop. Corner value ``dot(corner - p, n_p)`` for the nearest point ``p``
    (local units, negative on the side opposite the normals). ``normals`` (N, 3) point outwards; when absent they
    are estimated with Open3D (PCA over ``neighbours`` nearest points, oriented consistently along a k-NN graph and
    flipped as a whole to point away from the centroid), which suits closed, reasonably dense clouds.
    """
    from scipy.spatial import cKDTree

    if not isinstance(points, torch.Tensor) or points.dim() != 2 or points.shape[-1] != 3 or points.shape[0] == 0:
        raise ValueError(f"points must be a non-empty (N, 3) tensor, got {getattr(points, 'shape', type(points))}")
    if not bool(torch.isfinite(points).all()):
        raise ValueError("points must be finite (found NaN or inf)")
    if normals is not None and (not isinstance(normals, torch.Tensor) or normals.shape != points.shape):
        raise ValueError(f"normals must be a tensor shaped like points {tuple(points.shape)}")
    resolution = _check_resolution(resolution)
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 3:
        raise ValueError(f"neighbours must be an int >= 3, got {neighbours!r}")
    pts = points.detach().cpu()
    norm = normalization if normalization is not None else normalize_to_unit_box(pts, padding)
    local = norm.to_local(pts)
    if normals is None:
        n = torch.from_numpy(_estimate_normals(local.numpy(), neighbours)).to(torch.float32)
    else:
        n = normals.detach().cpu().to(torch.float32)
        if not bool(torch.isfinite(n).all()):
            raise ValueError("normals must be finite (found NaN or inf)")
    n = n / n.norm(dim=1, keepdim=True).clamp_min(1e-12)

    occupied = torch.floor((local.to(torch.float64) + 0.5) * resolution).to(torch.int64)
    inside = ((occupied >= 0) & (occupied < resolution)).all(1)
    occupied = torch.unique(occupied[inside], dim=0)
    if occupied.shape[0] == 0:
        raise ValueError("points: no point lies inside the unit box of the given normalization")
    r = torch.arange(-1, 2)
    offsets = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    dilated = (occupied[:, None, :] + offsets[None]).reshape(-1, 3)
    dilated = dilated[((dilated >= 0) & (dilated < resolution)).all(1)]
    dilated = torch.unique(_cube_keys(dilated, resolution))
    coords = torch.stack(
        (dilated // (resolution * resolution), (dilated // resolution) % resolution, dilated % resolution), 1
    ).to(torch.int32)
    tree = cKDTree(local.numpy().astype(np.float64))

    def plane_sdf(corners: torch.Tensor) -> torch.Tensor:
        _, nearest = tree.query(corners.numpy().astype(np.float64), k=1, workers=-1)
        nearest = torch.from_numpy(np.asarray(nearest, dtype=np.int64))
        return ((corners - local[nearest]) * n[nearest]).sum(1)

    return _finish(coords, resolution, plane_sdf, norm, True)


# ------------------------------------------------------------------------------------------------ SDF volumes
def grid_from_sdf_volume(
    volume: np.ndarray | torch.Tensor,
    level: float = 0.0,
    *,
    band: float = DEFAULT_BAND,
    spacing: float | None = None,
    origin: tuple[float, float, float] | np.ndarray | None = None,
) -> SparseSDFGrid:
    """Sparse grid of a dense SDF volume ``(D, D, D)`` (negative inside), sampled at the vertices of ``R = D - 1``
    cubes per axis: ``volume[i, j, k]`` is the value at vertex ``(i, j, k)`` (x along axis 0).

    The samples sit at ``origin + spacing * (i, j, k)`` in world units, the values in the same units (defaults:
    the unit box, ``spacing = 1 / R``, ``origin = -0.5``). The iso-level ``level`` is subtracted. Cubes kept:
    those whose corners change sign (so every crossing edge keeps its four cubes and a closed level set stays
    closed) and those with a corner within ``band`` voxels of the level.
    """
    vol = torch.as_tensor(np.asarray(volume) if not isinstance(volume, torch.Tensor) else volume).detach().cpu()
    if vol.dim() != 3 or len(set(vol.shape)) != 1 or vol.shape[0] < 2:
        raise ValueError(f"volume must be a (D, D, D) array with D >= 2, got shape {tuple(vol.shape)}")
    if not vol.is_floating_point():
        raise ValueError(f"volume must hold floats, got {vol.dtype}")
    if not bool(torch.isfinite(vol).all()):
        raise ValueError("volume must be finite (found NaN or inf)")
    if not isinstance(level, (int, float)) or not math.isfinite(level):
        raise ValueError(f"level must be a finite number, got {level!r}")
    band = _check_band(band)
    resolution = int(vol.shape[0]) - 1
    if spacing is None:
        spacing = 1.0 / resolution
    if not isinstance(spacing, (int, float)) or not (spacing > 0 and math.isfinite(spacing)):
        raise ValueError(f"spacing must be a positive number, got {spacing!r}")
    o = np.full(3, -0.5) if origin is None else np.asarray(origin, dtype=np.float64).reshape(-1)
    if o.shape != (3,) or not np.isfinite(o).all():
        raise ValueError(f"origin must be 3 finite numbers, got {origin!r}")
    scale = spacing * resolution
    norm = Normalization(o + scale / 2.0, scale)
    s = ((vol.to(torch.float64) - level) / scale).to(torch.float32)  # local units
    neg = torch.zeros((resolution,) * 3, dtype=torch.bool)
    pos = torch.zeros_like(neg)
    nearest = torch.full((resolution,) * 3, math.inf, dtype=torch.float32)
    for m in range(8):  # one corner view at a time: no (R^3, 8) temporary
        dx, dy, dz = m & 1, (m >> 1) & 1, (m >> 2) & 1
        view = s[dx : resolution + dx, dy : resolution + dy, dz : resolution + dz]
        neg |= view < 0
        pos |= view >= 0
        torch.minimum(nearest, view.abs(), out=nearest)
    coords = ((neg & pos) | (nearest <= band / resolution)).nonzero().to(torch.int32)
    del neg, pos, nearest
    flat = s.reshape(-1)

    def sample(points: torch.Tensor) -> torch.Tensor:
        return flat[_vertex_keys(points, resolution)]

    return _finish(coords, resolution, sample, norm, False)
