"""Ground-truth images of triangle meshes by ray casting (Open3D ``RaycastingScene``), independent of any
Gaussian rasterizer, so renderings from it can serve as targets and oracles for the splatting code.

Usage::

    from sparse3d.render.mesh_raycast import MeshWithMaterial, PointLight, render_meshes

    sphere = MeshWithMaterial(vertices, faces, colors, specular=0.3, shininess=40.0)        # in the mask
    floor = MeshWithMaterial(fv, ff, (0.9, 0.9, 0.9), in_mask=False, smooth=False)          # not in the mask
    results = render_meshes([sphere, floor], cameras, [PointLight((0, 0, 3), 0.8)], ambient=0.1)
    results[0].rgb    # (H, W, 3) float32 in [0, 1]
    results[0].mask   # (H, W) bool: the first hit is a mesh with ``in_mask=True``
    results[0].depth  # (H, W) float32 camera-z depth (``Cameras.project``'s depth), inf where nothing is hit

Model (fixed here so tests can check it against formulas):

* One ray per pixel centre, pixel (row i, col j) at ``(j + 0.5, i + 0.5)``, exactly :class:`~sparse3d.cameras.Cameras`'
  convention (the rays equal ``Cameras.pixel_rays``); rays are cast in row chunks to bound memory at 1600x1200.
* Colour and shading normal are interpolated from the vertices with the hit's barycentric coordinates
  (``smooth=False`` uses the flat triangle normal instead; a mesh's optional ``texture`` callable is evaluated
  at the hit point instead of the colour interpolation). Normals are flipped towards the viewer, so open
  surfaces and inward-facing boxes shade correctly from either side.
* Blinn-Phong with point lights and **no distance fall-off** (a light's intensity is the irradiance it gives a
  surface facing it, whatever the scene scale)::

      rgb = ambient * albedo + sum_l vis_l * I_l * (albedo * max(n.l, 0) + specular * max(n.h, 0) ** shininess)

  where a light below the surface's geometric side gives nothing, ``vis_l`` is 0 when a shadow ray from the hit
  point to the light is blocked (``shadows=True``), and the result is clipped to [0, 1]. Misses get ``background``.
  The specular term is also zero where ``n.l <= 0``.
* :meth:`MeshRaycaster.render_layers` keeps each light's contribution separate, so many lighting conditions made
  of the same lights (with different weights) cost one ray cast: :func:`compose_layers` mixes them.
* Outputs are NumPy arrays (``torch.from_numpy`` them for training targets). Open3D casts rays on every core;
  shading is single-threaded NumPy on purpose (torch's thread pool is slower for small renders). Build one
  :class:`MeshRaycaster` and reuse it for all cameras: the BVH is built once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import open3d as o3d

from sparse3d.cameras import Cameras

__all__ = [
    "MeshWithMaterial",
    "PointLight",
    "RenderResult",
    "RenderLayers",
    "MeshRaycaster",
    "compose_layers",
    "render_meshes",
    "vertex_normals",
    "camera_rays",
]

DEFAULT_CHUNK_PIXELS = 1 << 18
"""Rays cast per chunk (about 60 MB of temporaries at float32); rows per chunk = this // width."""


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (unit length; zero for unused vertices) of a counter-clockwise mesh."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    face_n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # length = 2 * area
    normals = np.zeros_like(v)
    for k in range(3):
        np.add.at(normals, f[:, k], face_n)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return (normals / np.where(length > 0, length, 1.0)).astype(np.float32)


@dataclass(frozen=True)
class MeshWithMaterial:
    """A triangle mesh with per-vertex albedo and a Blinn-Phong material.

    Attributes:
        vertices: (V, 3) float32 positions.
        faces: (F, 3) int64 vertex indices, counter-clockwise seen from outside.
        colors: (V, 3) albedo in [0, 1] per vertex, or one RGB triple for the whole mesh.
        specular: specular strength (white highlights).
        shininess: Blinn-Phong exponent.
        in_mask: whether pixels whose first hit is this mesh belong to the object mask.
        smooth: interpolate vertex normals (True) or use the flat triangle normal (False, for boxes).
        name: free-form label for logs.
        normals: (V, 3) unit vertex normals; computed (area-weighted) when omitted.
        texture: optional solid texture, world points (N, 3) float32 -> albedo (N, 3) in [0, 1]. When given it
            is evaluated at every hit point instead of interpolating ``colors``, so fine texture does not
            depend on the mesh resolution.
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | Sequence[float]
    specular: float = 0.0
    shininess: float = 32.0
    in_mask: bool = True
    smooth: bool = True
    name: str = ""
    normals: np.ndarray | None = field(default=None)
    texture: Callable[[np.ndarray], np.ndarray] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        v = np.ascontiguousarray(self.vertices, dtype=np.float32)
        f = np.ascontiguousarray(self.faces, dtype=np.int64)
        if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
            raise ValueError(f"vertices must be a non-empty (V, 3) array, got shape {v.shape}")
        if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
            raise ValueError(f"faces must be a non-empty (F, 3) array, got shape {f.shape}")
        if f.min() < 0 or f.max() >= len(v):
            raise ValueError(f"faces index vertices outside 0..{len(v) - 1} (min {f.min()}, max {f.max()})")
        if not np.all(np.isfinite(v)):
            raise ValueError("vertices contain NaN or inf")
        c = np.asarray(self.colors, dtype=np.float32)
        if c.shape == (3,):
            c = np.broadcast_to(c, v.shape)
        if c.shape != v.shape:
            raise ValueError(f"colors must be (V, 3) = {v.shape} or one RGB triple, got shape {c.shape}")
        if self.specular < 0 or self.shininess <= 0:
            raise ValueError(f"need specular >= 0 and shininess > 0, got {self.specular}, {self.shininess}")
        n = vertex_normals(v, f) if self.normals is None else np.ascontiguousarray(self.normals, dtype=np.float32)
        if n.shape != v.shape:
            raise ValueError(f"normals must be (V, 3) = {v.shape}, got shape {n.shape}")
        object.__setattr__(self, "vertices", v)
        object.__setattr__(self, "faces", f)
        object.__setattr__(self, "colors", np.ascontiguousarray(np.clip(c, 0.0, 1.0)))
        object.__setattr__(self, "normals", n)


@dataclass(frozen=True)
class PointLight:
    """A point light: world position and RGB (or grey) intensity, no distance fall-off."""

    position: tuple[float, float, float] | np.ndarray
    intensity: float | tuple[float, float, float] | np.ndarray = 1.0

    def rgb(self) -> np.ndarray:
        value = np.broadcast_to(np.asarray(self.intensity, dtype=np.float32), (3,))
        if np.any(value < 0):
            raise ValueError(f"light intensity must be >= 0, got {self.intensity}")
        return value


@dataclass(frozen=True)
class RenderResult:
    """One rendered view: ``rgb`` (H, W, 3) float32, ``mask`` (H, W) bool, ``depth`` (H, W) float32 camera-z
    (inf on misses), ``mesh_index`` (H, W) int32 index into the mesh list of the first hit (-1 on misses)."""

    rgb: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    mesh_index: np.ndarray


@dataclass(frozen=True)
class RenderLayers:
    """A view split into shading layers: ``albedo`` (H, W, 3; 0 on misses), ``lights`` (L, H, W, 3), the
    (shadowed) diffuse + specular contribution of each light at its own intensity, plus geometry outputs."""

    albedo: np.ndarray
    lights: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    mesh_index: np.ndarray

    @property
    def hit(self) -> np.ndarray:
        return self.mesh_index >= 0


def camera_rays(cameras: Cameras, index: int, row_start: int, row_stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Origins (3,) and unit world directions (rows, W, 3) float64 through the pixel centres of rows
    ``row_start:row_stop`` of camera ``index``: ``d ~ Rᵀ K⁻¹ (j + 0.5, i + 0.5, 1)`` (skew handled by K⁻¹)."""
    K = cameras.K[index].double().numpy()
    R = cameras.R[index].double().numpy()
    t = cameras.t[index].double().numpy()
    cols = np.arange(cameras.width, dtype=np.float64) + 0.5
    rows = np.arange(row_start, row_stop, dtype=np.float64) + 0.5
    uu, vv = np.meshgrid(cols, rows, indexing="xy")
    pix = np.stack([uu, vv, np.ones_like(uu)], axis=-1)
    dirs = pix @ np.linalg.inv(K).T @ R  # camera directions K⁻¹p, then rotated to world: (Rᵀ d)ᵀ = dᵀ R
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    return -R.T @ t, dirs


def _interpolate(values: np.ndarray, face: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Barycentric blend of per-vertex ``values`` (V, C) over triangles ``face`` (M, 3) with weights (M, 3)."""
    out = np.take(values, face[:, 0], axis=0) * bary[:, 0:1]  # np.take: faster than values[idx]
    out += np.take(values, face[:, 1], axis=0) * bary[:, 1:2]
    out += np.take(values, face[:, 2], axis=0) * bary[:, 2:3]
    return out


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise dot products of (M, 3) arrays, as (M, 1)."""
    return (a[:, 0:1] * b[:, 0:1]) + (a[:, 1:2] * b[:, 1:2]) + (a[:, 2:3] * b[:, 2:3])


class MeshRaycaster:
    """An Open3D ray-casting scene over several meshes, reused for any number of cameras and lights."""

    def __init__(self, meshes: Sequence[MeshWithMaterial]) -> None:
        if not meshes:
            raise ValueError("meshes must hold at least one MeshWithMaterial")
        self.meshes = list(meshes)
        self._scene = o3d.t.geometry.RaycastingScene()
        geometry_to_mesh: dict[int, int] = {}
        vertex_offset = 0
        face_offsets, faces, colors, normals = [], [], [], []
        for i, m in enumerate(self.meshes):
            if not isinstance(m, MeshWithMaterial):
                raise ValueError(f"meshes[{i}] must be a MeshWithMaterial, got {type(m).__name__}")
            gid = self._scene.add_triangles(o3d.core.Tensor(m.vertices), o3d.core.Tensor(m.faces.astype(np.uint32)))
            geometry_to_mesh[int(gid)] = i
            face_offsets.append(sum(len(f) for f in faces))
            faces.append(m.faces + vertex_offset)
            colors.append(m.colors)
            normals.append(m.normals)
            vertex_offset += len(m.vertices)
        self._geometry_to_mesh = np.zeros(max(geometry_to_mesh) + 1, dtype=np.int64)
        for gid, i in geometry_to_mesh.items():
            self._geometry_to_mesh[gid] = i
        self._face_offsets = np.asarray(face_offsets, dtype=np.int64)
        self._faces = np.concatenate(faces)
        self._colors = np.concatenate(colors)
        self._normals = np.concatenate(normals)
        self._specular = np.array([m.specular for m in self.meshes], dtype=np.float32)
        self._shininess = np.array([m.shininess for m in self.meshes], dtype=np.float32)
        self._smooth = np.array([m.smooth for m in self.meshes], dtype=bool)
        self._in_mask = np.array([m.in_mask for m in self.meshes], dtype=bool)
        self._textured = [i for i, m in enumerate(self.meshes) if m.texture is not None]
        all_vertices = np.concatenate([m.vertices for m in self.meshes])
        diagonal = float(np.linalg.norm(all_vertices.max(0) - all_vertices.min(0)))
        self.shadow_bias = 1e-5 * max(diagonal, 1e-3)
        """Shadow rays start this far off the surface (along its viewer-side normal) to avoid self-hits."""

    def render_layers(
        self,
        cameras: Cameras,
        index: int,
        lights: Sequence[PointLight],
        shadows: bool = True,
        chunk_pixels: int = DEFAULT_CHUNK_PIXELS,
    ) -> RenderLayers:
        """Cast camera ``index``'s pixel rays and shade each light separately (see the module docstring)."""
        if not 0 <= index < len(cameras):
            raise ValueError(f"camera index {index} outside 0..{len(cameras) - 1}")
        H, W = cameras.height, cameras.width
        L = len(lights)
        light_pos = np.array([np.asarray(li.position, np.float32) for li in lights], np.float32).reshape(L, 3)
        light_rgb = np.array([li.rgb() for li in lights], np.float32).reshape(L, 3)
        albedo = np.zeros((H * W, 3), np.float32)
        layers = np.zeros((L, H * W, 3), np.float32)
        depth = np.full(H * W, np.inf, np.float32)
        mesh_index = np.full(H * W, -1, np.int32)
        forward = cameras.R[index, 2].double().numpy()
        rows_per_chunk = max(1, int(chunk_pixels) // W)
        for r0 in range(0, H, rows_per_chunk):
            r1 = min(H, r0 + rows_per_chunk)
            origin, dirs = camera_rays(cameras, index, r0, r1)
            d = dirs.reshape(-1, 3)
            rays = np.concatenate([np.broadcast_to(origin, d.shape), d], axis=1).astype(np.float32)
            hits = self._scene.cast_rays(o3d.core.Tensor(rays))
            # Shade every ray of the chunk (misses with dummy ids, zeroed below): writing contiguous slices is
            # much cheaper than scattering the hit subset. NumPy on purpose: no thread pools to oversubscribe
            # while Open3D's ray casting already uses every core.
            t_hit = hits["t_hit"].numpy()
            hit = np.isfinite(t_hit)
            if not hit.any():
                continue
            sl = slice(r0 * W, r1 * W)
            gid = np.minimum(hits["geometry_ids"].numpy().astype(np.int64), len(self._geometry_to_mesh) - 1)
            which = np.where(hit, self._geometry_to_mesh[gid], 0)
            prim = hits["primitive_ids"].numpy().astype(np.int64)
            face = np.take(self._faces, np.where(hit, self._face_offsets[which] + prim, 0), axis=0)  # (M, 3)
            t_hit = np.where(hit, t_hit, np.float32(0.0))[:, None]
            ray_d = rays[:, 3:]
            depth[sl] = np.where(hit, t_hit[:, 0] * (dirs.reshape(-1, 3) @ forward), np.inf)
            mesh_index[sl] = np.where(hit, which, -1)
            uv = hits["primitive_uvs"].numpy()
            bary = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)
            point = rays[:, :3] + ray_d * t_hit
            geo_n = hits["primitive_normals"].numpy()
            geo_n = geo_n * np.where(_dot(geo_n, ray_d) > 0, np.float32(-1.0), np.float32(1.0))  # face the viewer
            smooth_n = _interpolate(self._normals, face, bary)
            smooth_n *= np.where(_dot(smooth_n, geo_n) < 0, np.float32(-1.0), np.float32(1.0))
            smooth_n /= np.maximum(np.sqrt(_dot(smooth_n, smooth_n)), np.float32(1e-12))
            normal = np.where(self._smooth[which][:, None], smooth_n, geo_n)
            color = _interpolate(self._colors, face, bary)
            for k in self._textured:
                sel = np.flatnonzero(hit & (which == k))
                if len(sel):
                    tex = np.asarray(self.meshes[k].texture(point[sel]), dtype=np.float32)
                    if tex.shape != (len(sel), 3):
                        raise ValueError(f"texture of meshes[{k}] returned shape {tex.shape}, expected ({len(sel)}, 3)")
                    color[sel] = np.clip(tex, 0.0, 1.0)
            color *= hit[:, None]
            albedo[sl] = color
            if L == 0:
                continue
            # Per light, with p the point, q the light, v = -ray_d, l = (q - p) / |q - p|:
            # n.h = (n.l + n.v) / |l + v| = (n.l + n.v) / sqrt(2 + 2 l.v). Shadow rays go from p (lifted off the
            # surface) to q for every pixel: cheaper than gathering the lit subset, unlit results are dropped.
            n_dot_v = -_dot(normal, ray_d)
            specular = self._specular[which][:, None]
            shininess = self._shininess[which][:, None]
            if shadows:
                shadow_rays = np.empty((len(point), 6), np.float32)
                shadow_rays[:, :3] = point + geo_n * np.float32(self.shadow_bias)
            for k in range(L):
                to_light = light_pos[k] - point
                dist = np.maximum(np.sqrt(_dot(to_light, to_light)), np.float32(1e-12))
                n_dot_l = _dot(normal, to_light) / dist
                on = (_dot(geo_n, to_light) > 0) & (n_dot_l > 0) & hit[:, None]
                if shadows and on.any():
                    shadow_rays[:, 3:] = light_pos[k] - shadow_rays[:, :3]
                    blocked = self._scene.test_occlusions(o3d.core.Tensor(shadow_rays), tnear=0.0, tfar=1.0)
                    on &= ~blocked.numpy().astype(bool)[:, None]
                l_dot_v = -_dot(ray_d, to_light) / dist
                n_dot_h = np.maximum((n_dot_l + n_dot_v) / np.sqrt(np.maximum(2.0 + 2.0 * l_dot_v, 1e-12)), 0.0)
                out = layers[k, sl]
                np.multiply(color, np.where(on, n_dot_l, 0.0), out=out)
                out += np.where(on, specular * n_dot_h**shininess, 0.0)
                out *= light_rgb[k]
        mask = np.zeros(H * W, dtype=bool)
        hit_all = mesh_index >= 0
        mask[hit_all] = self._in_mask[mesh_index[hit_all]]
        return RenderLayers(
            albedo=albedo.reshape(H, W, 3), lights=layers.reshape(L, H, W, 3), mask=mask.reshape(H, W),
            depth=depth.reshape(H, W), mesh_index=mesh_index.reshape(H, W),
        )

    def render(
        self,
        cameras: Cameras,
        lights: Sequence[PointLight],
        ambient: float | Sequence[float] = 0.1,
        shadows: bool = True,
        background: Sequence[float] = (0.0, 0.0, 0.0),
        chunk_pixels: int = DEFAULT_CHUNK_PIXELS,
    ) -> list[RenderResult]:
        """Render every camera with all lights at their own intensity."""
        out = []
        for i in range(len(cameras)):
            layers = self.render_layers(cameras, i, lights, shadows, chunk_pixels)
            rgb = compose_layers(layers, np.ones(len(lights)), ambient, background)
            out.append(RenderResult(rgb=rgb, mask=layers.mask, depth=layers.depth, mesh_index=layers.mesh_index))
        return out


def compose_layers(
    layers: RenderLayers,
    weights: Sequence[float] | np.ndarray,
    ambient: float | Sequence[float] = 0.1,
    background: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """``ambient * albedo + sum_l weights[l] * lights[l]``, background on misses, clipped to [0, 1].

    ``weights`` is (L,) or (L, 3) (per-channel, e.g. a tinted lighting condition)."""
    w = np.asarray(weights, dtype=np.float32)
    L = layers.lights.shape[0]
    if w.shape not in ((L,), (L, 3)):
        raise ValueError(f"weights must have shape ({L},) or ({L}, 3), got {w.shape}")
    w = np.broadcast_to(w[:, None] if w.ndim == 1 else w, (L, 3))
    rgb = layers.albedo * np.broadcast_to(np.asarray(ambient, dtype=np.float32), (3,))
    for k in range(L):
        if np.any(w[k] != 0):
            rgb += layers.lights[k] * w[k]
    rgb[~layers.hit] = np.asarray(background, dtype=np.float32)
    return np.clip(rgb, 0.0, 1.0)


def render_meshes(
    meshes: Sequence[MeshWithMaterial],
    cameras: Cameras,
    lights: Sequence[PointLight],
    ambient: float | Sequence[float] = 0.1,
    shadows: bool = True,
    background: Sequence[float] = (0.0, 0.0, 0.0),
) -> list[RenderResult]:
    """Render ``meshes`` from every camera (one :class:`RenderResult` per camera); see the module docstring."""
    return MeshRaycaster(meshes).render(cameras, lights, ambient, shadows, background)
