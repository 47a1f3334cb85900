"""What a viewer draws, as plain numpy data: a :class:`Scene` holding a list of drawables.

A scene is built from files or Python objects by :mod:`sparse3d.vis.builders` and drawn by
:mod:`sparse3d.vis.render`; nothing here imports a renderer, so every scene can be built and checked in a
process without a display or an OpenGL context.

Drawables (all coordinates float32 in the world/LiDAR frame, colours float32 RGB in [0, 1]):

* :class:`Points` -- a point cloud with one colour per point.
* :class:`Lines` -- line segments between vertices, one colour per segment (boxes, frusta, edges, normals).
* :class:`Mesh` -- a triangle mesh with per-vertex colours and normals; ``shaded=False`` draws the colours as
  they are (image planes), ``shaded=True`` lights them.
* :class:`Voxels` -- axis-aligned cubes of one size at the given centres.
* :class:`CoordinateFrame` -- red/green/blue axes for x/y/z at a point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sparse3d.vis.geometry import cube_mesh, vertex_normals

__all__ = ["Points", "Lines", "Mesh", "Voxels", "CoordinateFrame", "Drawable", "Scene"]


def _rows(name: str, value: np.ndarray, width: int, dtype: type = np.float32) -> np.ndarray:
    """``value`` as a C-contiguous (N, width) array of ``dtype``; ValueError naming the field otherwise."""
    arr: np.ndarray = np.ascontiguousarray(value, dtype=dtype)
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"{name} must have shape (N, {width}), got {arr.shape}")
    return arr


def _indices(name: str, value: np.ndarray, width: int, num_vertices: int) -> np.ndarray:
    """``value`` as (N, width) int64 vertex indices, each in ``0 .. num_vertices - 1``."""
    arr = _rows(name, value, width, np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_vertices):
        raise ValueError(f"{name} index outside 0..{num_vertices - 1}")
    return arr


def _colors(name: str, value: np.ndarray, n: int) -> np.ndarray:
    arr = _rows(name, value, 3)
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} rows, expected {n}")
    if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0):
        raise ValueError(f"{name} must be finite RGB values in [0, 1]")
    return arr


@dataclass
class Points:
    """A point cloud: ``positions`` (N, 3) and ``colors`` (N, 3)."""

    positions: np.ndarray
    colors: np.ndarray
    name: str = "points"

    def __post_init__(self) -> None:
        self.positions = _rows("Points.positions", self.positions, 3)
        self.colors = _colors("Points.colors", self.colors, self.positions.shape[0])


@dataclass
class Lines:
    """Segments ``vertices[segments[i, 0]] -- vertices[segments[i, 1]]`` coloured ``colors[i]``."""

    vertices: np.ndarray
    segments: np.ndarray
    colors: np.ndarray
    name: str = "lines"

    def __post_init__(self) -> None:
        self.vertices = _rows("Lines.vertices", self.vertices, 3)
        self.segments = _indices("Lines.segments", self.segments, 2, self.vertices.shape[0])
        self.colors = _colors("Lines.colors", self.colors, self.segments.shape[0])


@dataclass
class Mesh:
    """A triangle mesh (counter-clockwise faces are outward). ``normals`` default to area-weighted vertex
    normals; ``shaded=False`` shows ``vertex_colors`` unlit (image planes keep their pixel colours)."""

    vertices: np.ndarray
    faces: np.ndarray
    vertex_colors: np.ndarray
    normals: np.ndarray | None = None
    shaded: bool = True
    name: str = "mesh"

    def __post_init__(self) -> None:
        self.vertices = _rows("Mesh.vertices", self.vertices, 3)
        self.faces = _indices("Mesh.faces", self.faces, 3, self.vertices.shape[0])
        self.vertex_colors = _colors("Mesh.vertex_colors", self.vertex_colors, self.vertices.shape[0])
        if self.normals is None:
            self.normals = vertex_normals(self.vertices, self.faces)
        self.normals = _rows("Mesh.normals", self.normals, 3)
        if self.normals.shape[0] != self.vertices.shape[0]:
            raise ValueError(f"Mesh.normals has {self.normals.shape[0]} rows, expected {self.vertices.shape[0]}")


@dataclass
class Voxels:
    """Axis-aligned cubes of edge lengths ``size`` (x, y, z) centred at ``centers`` (N, 3)."""

    centers: np.ndarray
    size: np.ndarray | float
    colors: np.ndarray
    name: str = "voxels"

    def __post_init__(self) -> None:
        self.centers = _rows("Voxels.centers", self.centers, 3)
        self.size = np.broadcast_to(np.asarray(self.size, dtype=np.float32), (3,)).copy()
        if not (np.isfinite(self.size).all() and (self.size > 0).all()):
            raise ValueError(f"Voxels.size must be positive, got {self.size.tolist()}")
        self.colors = _colors("Voxels.colors", self.colors, self.centers.shape[0])

    def to_mesh(self) -> Mesh:
        """The cubes as one shaded mesh (8 vertices and 12 triangles per voxel, flat per-cube colour)."""
        vertices, faces = cube_mesh(self.centers, np.asarray(self.size))
        return Mesh(vertices, faces, np.repeat(self.colors, 8, axis=0), shaded=True, name=self.name)


@dataclass
class CoordinateFrame:
    """Axes of length ``size`` at ``origin``: x red, y green, z blue."""

    origin: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    size: float = 1.0
    name: str = "frame"

    def __post_init__(self) -> None:
        self.origin = np.asarray(self.origin, dtype=np.float32).reshape(3)
        if not self.size > 0:
            raise ValueError(f"CoordinateFrame.size must be positive, got {self.size}")


Drawable = Points | Lines | Mesh | Voxels | CoordinateFrame


def _drawable_positions(d: Drawable) -> np.ndarray:
    """The points a drawable occupies, for framing a view (voxels: both cube corners)."""
    if isinstance(d, Points):
        return d.positions
    if isinstance(d, (Lines, Mesh)):
        return d.vertices
    if isinstance(d, Voxels):
        return np.concatenate([d.centers - d.size / 2, d.centers + d.size / 2])
    return np.stack([d.origin, d.origin + d.size])


@dataclass
class Scene:
    """Drawables plus how to look at them.

    Attributes:
        drawables: what to draw, in order.
        up: the world direction shown upwards in the preset views (LiDAR and most meshes: +z).
        forward: the world direction the ``bev`` view shows at the top of the image and the ``front`` view looks
            along (LiDAR: +x); it is made orthogonal to ``up`` when views are computed.
        background: RGB in [0, 1].
        point_size: rendered point diameter in pixels.
        notes: what the user should know about how the inputs are drawn (e.g. a subsampled grid), one line each.
    """

    drawables: list[Drawable] = field(default_factory=list)
    up: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    forward: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0]))
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    point_size: float = 2.0
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("up", "forward"):
            v = np.asarray(getattr(self, name), dtype=np.float64).reshape(3)
            if not (np.isfinite(v).all() and np.linalg.norm(v) > 0):
                raise ValueError(f"Scene.{name} must be a finite non-zero 3-vector, got {v.tolist()}")
            setattr(self, name, v / np.linalg.norm(v))

    def add(self, *drawables: Drawable) -> Scene:
        """Append drawables; returns the scene for chaining."""
        self.drawables.extend(drawables)
        return self

    def of_type(self, kind: type) -> list:
        """The drawables that are instances of ``kind``."""
        return [d for d in self.drawables if isinstance(d, kind)]

    def bounds(self, quantile: float = 0.005) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned (min, max) corners of what the scene shows.

        Point clouds contribute their ``quantile`` .. ``1 - quantile`` range per axis so that a few far outliers
        (stray LiDAR returns, background Gaussians) do not shrink the rest of the view; other drawables
        contribute all their vertices. Coordinate frames are ignored unless nothing else is drawn. An empty
        scene has the unit cube around the origin as bounds.
        """
        lows, highs = [], []
        drawn = [d for d in self.drawables if not isinstance(d, CoordinateFrame)] or self.drawables
        for d in drawn:
            pos = _drawable_positions(d)
            pos = pos[np.isfinite(pos).all(axis=1)]
            if not len(pos):
                continue
            if isinstance(d, Points) and quantile > 0 and len(pos) > 1:
                lo, hi = np.quantile(pos, [quantile, 1.0 - quantile], axis=0)
            else:
                lo, hi = pos.min(axis=0), pos.max(axis=0)
            lows.append(lo)
            highs.append(hi)
        if not lows:
            return -np.ones(3) * 0.5, np.ones(3) * 0.5
        return np.min(lows, axis=0).astype(np.float64), np.max(highs, axis=0).astype(np.float64)
