"""Geometry behind the drawables, in numpy: box heading markers, mesh edges, normals, camera frusta, ellipsoid
glyphs and voxel cubes. Box corners and point-in-box tests live in :mod:`sparse3d.geometry.boxes`.

Conventions: boxes are ``(x, y, z, dx, dy, dz, heading)`` in the LiDAR frame with ``z`` at the box centre and
``heading`` the rotation about +z from +x (as in :mod:`sparse3d.geometry.boxes`); quaternions are
``(w, x, y, z)``; cameras are OpenCV world-to-camera ``x_cam = R x + t`` with pixel centres at ``+0.5``
(see :mod:`sparse3d.cameras`).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "heading_segments",
    "mesh_edges",
    "boundary_edges",
    "vertex_normals",
    "quat_to_rotmat",
    "uv_sphere",
    "ellipsoid_mesh",
    "cube_mesh",
    "frustum_corners",
    "image_plane_grid",
]


def _boxes(boxes: np.ndarray) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == 7:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 7:
        raise ValueError(f"boxes must have shape (B, 7) as (x, y, z, dx, dy, dz, heading), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("boxes must be finite")
    if (arr[:, 3:6] < 0).any():
        raise ValueError("box sizes (dx, dy, dz) must be non-negative")
    return arr


def heading_segments(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 3) box centres and (B, 3) centres of their front faces: the heading marker runs between them."""
    b = _boxes(boxes)
    direction = np.stack([np.cos(b[:, 6]), np.sin(b[:, 6]), np.zeros(len(b))], axis=1)
    return b[:, :3].copy(), b[:, :3] + direction * b[:, 3:4] / 2.0


def _faces(faces: np.ndarray) -> np.ndarray:
    arr = np.asarray(faces)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"faces must have shape (F, 3), got {arr.shape}")
    return arr.astype(np.int64, copy=False)


def mesh_edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique undirected edges (E, 2) (smaller index first, sorted) and how many faces use each (E,)."""
    f = _faces(faces)
    if not len(f):
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    return unique, counts


def boundary_edges(faces: np.ndarray) -> np.ndarray:
    """(E, 2) edges used by exactly one face: the open boundary of a mesh (empty for a closed mesh)."""
    edges, counts = mesh_edges(faces)
    return edges[counts == 1]


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) unit vertex normals, the area-weighted sum of the adjacent faces' normals (counter-clockwise =
    outward); zero for vertices no face uses or whose faces cancel."""
    v = np.asarray(vertices, dtype=np.float64)
    f = _faces(faces)
    normals = np.zeros_like(v)
    if len(f):
        face_n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # length = 2 x area
        for k in range(3):
            np.add.at(normals, f[:, k], face_n)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.divide(normals, length, out=np.zeros_like(normals), where=length > 1e-30).astype(np.float32)


def quat_to_rotmat(quats: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotation matrices of (N, 4) quaternions ``(w, x, y, z)`` (normalised first)."""
    q = np.asarray(quats, dtype=np.float64).reshape(-1, 4)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=1),
    ], axis=1)


def uv_sphere(rings: int = 6, segments: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """A closed unit sphere: vertices (2 + (rings - 1) * segments, 3) and outward faces."""
    if rings < 2 or segments < 3:
        raise ValueError(f"uv_sphere needs rings >= 2 and segments >= 3, got {rings}, {segments}")
    theta = np.pi * np.arange(1, rings) / rings
    phi = 2 * np.pi * np.arange(segments) / segments
    ring = np.stack([
        np.sin(theta)[:, None] * np.cos(phi)[None], np.sin(theta)[:, None] * np.sin(phi)[None],
        np.repeat(np.cos(theta)[:, None], segments, axis=1),
    ], axis=-1).reshape(-1, 3)
    vertices = np.concatenate([[[0.0, 0.0, 1.0]], ring, [[0.0, 0.0, -1.0]]])
    south = len(vertices) - 1
    j = np.arange(segments)
    jn = (j + 1) % segments
    faces = [np.stack([np.zeros(segments, int), 1 + j, 1 + jn], axis=1)]
    for r in range(rings - 2):
        a, b = 1 + r * segments + j, 1 + r * segments + jn
        c, d = a + segments, b + segments
        faces += [np.stack([a, c, d], axis=1), np.stack([a, d, b], axis=1)]
    last = 1 + (rings - 2) * segments
    faces.append(np.stack([np.full(segments, south), last + jn, last + j], axis=1))
    return vertices, np.concatenate(faces).astype(np.int64)


def ellipsoid_mesh(
    means: np.ndarray, quats: np.ndarray, scales: np.ndarray, sigma: float = 2.0, rings: int = 6, segments: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """One closed ellipsoid per Gaussian: the ``sigma``-level surface ``mean + R diag(sigma * scale) u`` of the
    unit sphere ``u``. Returns vertices (N * S, 3) and faces, sphere by sphere in input order."""
    means = np.asarray(means, dtype=np.float64).reshape(-1, 3)
    scales = np.asarray(scales, dtype=np.float64).reshape(-1, 3)
    rot = quat_to_rotmat(quats)
    if not (len(means) == len(scales) == len(rot)):
        raise ValueError(f"means, quats and scales disagree in length: {len(means)}, {len(rot)}, {len(scales)}")
    unit, unit_faces = uv_sphere(rings, segments)
    local = unit[None] * (sigma * scales)[:, None, :]
    vertices = np.einsum("nij,nkj->nki", rot, local) + means[:, None, :]
    faces = unit_faces[None] + (np.arange(len(means)) * len(unit))[:, None, None]
    return vertices.reshape(-1, 3), faces.reshape(-1, 3)


# Cube corner i sits at bits (x, y, z) = (i & 1, i >> 1 & 1, i >> 2 & 1); two outward triangles per face.
_CUBE_CORNERS = np.array([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=np.float64) - 0.5
_CUBE_FACES = np.array(
    [[0, 2, 3], [0, 3, 1], [4, 5, 7], [4, 7, 6], [0, 1, 5], [0, 5, 4],
     [2, 6, 7], [2, 7, 3], [0, 4, 6], [0, 6, 2], [1, 3, 7], [1, 7, 5]], dtype=np.int64,
)  # fmt: skip


def cube_mesh(centers: np.ndarray, size: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned cubes of edge lengths ``size`` (scalar or (3,)) at (N, 3) ``centers``: vertices (8N, 3)
    and outward faces (12N, 3)."""
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    s = np.broadcast_to(np.asarray(size, dtype=np.float64), (3,))
    vertices = c[:, None, :] + _CUBE_CORNERS[None] * s
    faces = _CUBE_FACES[None] + (8 * np.arange(len(c)))[:, None, None]
    return vertices.reshape(-1, 3), faces.reshape(-1, 3)


def _camera_arrays(K: np.ndarray, viewmat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    K = np.asarray(K, dtype=np.float64).reshape(-1, 3, 3)
    view = np.asarray(viewmat, dtype=np.float64).reshape(-1, 4, 4)
    if len(K) != len(view):
        raise ValueError(f"{len(K)} intrinsics but {len(view)} extrinsics")
    return K, view[:, :3, :3], view[:, :3, 3]


def _unproject(K: np.ndarray, R: np.ndarray, t: np.ndarray, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """World points (N, P, 3) at camera depth ``depth`` (N,) through pixel coordinates ``uv`` (P, 2)."""
    pix = np.concatenate([uv, np.ones((len(uv), 1))], axis=1)
    rays = np.einsum("nij,pj->npi", np.linalg.inv(K), pix)  # z component 1
    cam = rays * depth[:, None, None]
    return np.einsum("nji,npj->npi", R, cam - t[:, None, :])  # R^T (x_cam - t)


def frustum_corners(
    K: np.ndarray, viewmat: np.ndarray, width: int, height: int, depth: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """Camera centres (N, 3) and the four image corners (N, 4, 3) at camera depth ``depth`` (top-left,
    top-right, bottom-right, bottom-left as the image shows them).

    ``K`` (N, 3, 3) and ``viewmat`` (N, 4, 4, world-to-camera) as in :class:`sparse3d.cameras.Cameras`; the
    corners are the outer pixel edges ``(0, 0)`` .. ``(width, height)``.
    """
    K, R, t = _camera_arrays(K, viewmat)
    d = np.broadcast_to(np.asarray(depth, dtype=np.float64), (len(K),))
    centres = -np.einsum("nji,nj->ni", R, t)
    uv = np.array([[0.0, 0.0], [width, 0.0], [width, height], [0.0, height]])
    return centres, _unproject(K, R, t, uv, d)


def image_plane_grid(
    K: np.ndarray, viewmat: np.ndarray, width: int, height: int, depth: float, cols: int, rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """A (rows + 1) x (cols + 1) vertex grid spanning one camera's image at camera depth ``depth``, row-major
    from the top-left corner, and its faces (2 per cell). Vertex ``(i, j)`` is pixel ``(j * width / cols,
    i * height / rows)``, so colouring the vertices with the image resampled to that grid shows the image."""
    K, R, t = _camera_arrays(K, viewmat)
    if len(K) != 1:
        raise ValueError(f"image_plane_grid takes one camera, got {len(K)}")
    if cols < 1 or rows < 1:
        raise ValueError(f"the grid needs at least one cell, got {cols}x{rows}")
    u, v = np.meshgrid(np.linspace(0.0, width, cols + 1), np.linspace(0.0, height, rows + 1))
    vertices = _unproject(K, R, t, np.stack([u.ravel(), v.ravel()], axis=1), np.array([float(depth)]))[0]
    idx = np.arange((rows + 1) * (cols + 1)).reshape(rows + 1, cols + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    faces = np.concatenate([np.stack([a, b, c], axis=1), np.stack([a, c, d], axis=1)])
    return vertices, faces.astype(np.int64)
