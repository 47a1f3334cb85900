"""Procedural textured objects for synthetic SpaRe-like scenes, deterministic from a seed.

Why: sparse-view methods need objects with texture to match across views and with varied geometry and
specularity, like SpaRe's BlenderKit assets (8-50 cm toys, miniatures, plants). We build closed triangle meshes
(NumPy arrays, counter-clockwise = outward) from five families and colour their vertices with solid (3D)
procedural textures, so there are no UV seams:

* ``rounded_box``: superquadric (box-like to pill-like), resting on its flat bottom;
* ``torus``: a ring lying flat or standing on its rim;
* ``vase``: a surface of revolution with a wavy profile, closed by caps (cylinders are the flat-profile case);
* ``blob``: a sphere with smooth radial bumps (star-shaped, so it never self-intersects);
* ``toy``: a composite of primitives (a car with wheels, or a stacked figure), each part its own material.

Scene units are metres: the largest extent of an object is ``size`` (default drawn in [0.08, 0.5]), it is
centred on the z axis and stands on the plane z = 0 (its lowest point at ``z = 0``), z is up.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sparse3d.render.mesh_raycast import MeshWithMaterial

__all__ = [
    "FAMILIES",
    "SynthObject",
    "random_object",
    "superquadric_mesh",
    "torus_mesh",
    "revolution_mesh",
    "blob_mesh",
    "box_mesh",
    "signed_volume",
    "value_noise",
    "random_texture",
]

FAMILIES: tuple[str, ...] = ("rounded_box", "torus", "vase", "blob", "toy")
SIZE_RANGE: tuple[float, float] = (0.08, 0.5)

Mesh = tuple[np.ndarray, np.ndarray]  # (vertices (V, 3) float64, faces (F, 3) int64)


# ------------------------------------------------------------------------------------------------ topology
def _grid_faces(rows: int, cols: int, wrap_rows: bool) -> np.ndarray:
    """Quads of a rows x cols vertex grid (columns always wrap around), two triangles each."""
    r = np.arange(rows if wrap_rows else rows - 1)
    c = np.arange(cols)
    rr, cc = np.meshgrid(r, c, indexing="ij")
    a = rr * cols + cc
    b = rr * cols + (cc + 1) % cols
    d = ((rr + 1) % rows) * cols + cc
    e = ((rr + 1) % rows) * cols + (cc + 1) % cols
    tris = np.concatenate([np.stack([a, b, e], -1).reshape(-1, 3), np.stack([a, e, d], -1).reshape(-1, 3)])
    return tris.astype(np.int64)


def _closed_from_rings(rings: np.ndarray, bottom: np.ndarray, top: np.ndarray) -> Mesh:
    """Close a stack of rings (R, C, 3), ordered bottom to top, with two pole vertices into a sphere-like mesh."""
    R, C, _ = rings.shape
    vertices = np.concatenate([rings.reshape(-1, 3), bottom[None], top[None]])
    faces = [_grid_faces(R, C, wrap_rows=False)]
    c = np.arange(C)
    ib, it = R * C, R * C + 1
    faces.append(np.stack([np.full(C, ib), (c + 1) % C, c], -1))
    faces.append(np.stack([np.full(C, it), (R - 1) * C + c, (R - 1) * C + (c + 1) % C], -1))
    return _outward(vertices, np.concatenate(faces).astype(np.int64))


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Volume enclosed by a closed mesh; positive when its faces are counter-clockwise seen from outside."""
    v = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]
    return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0)


def _outward(vertices: np.ndarray, faces: np.ndarray) -> Mesh:
    """Flip the winding if needed so that the faces are counter-clockwise seen from outside."""
    if signed_volume(vertices, faces) < 0:
        faces = faces[:, ::-1].copy()
    return vertices, faces


def _merge(meshes: list[Mesh]) -> Mesh:
    vertices, faces, offset = [], [], 0
    for v, f in meshes:
        vertices.append(v)
        faces.append(f + offset)
        offset += len(v)
    return np.concatenate(vertices), np.concatenate(faces)


# -------------------------------------------------------------------------------------------------- shapes
def _spow(x: np.ndarray, e: float) -> np.ndarray:
    return np.sign(x) * np.abs(x) ** e


def superquadric_mesh(
    a: float, b: float, c: float, e_lat: float, e_lon: float, rings: int = 96, segments: int = 192
) -> Mesh:
    """Superquadric with semi-axes (a, b, c) centred at the origin; exponents < 1 give boxes, 1 an ellipsoid.

    Latitudes are spaced uniformly in the superquadric's own angle, which concentrates vertices at the
    rounded edges of box-like shapes, where the normal turns fastest."""
    eta = np.linspace(-np.pi / 2, np.pi / 2, rings + 2)[1:-1]
    omega = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    ee, oo = np.meshgrid(eta, omega, indexing="ij")
    ce = _spow(np.cos(ee), e_lat)
    ring = np.stack([a * ce * _spow(np.cos(oo), e_lon), b * ce * _spow(np.sin(oo), e_lon), c * _spow(np.sin(ee), e_lat)], -1)
    return _closed_from_rings(ring, np.array([0.0, 0.0, -c]), np.array([0.0, 0.0, c]))


def torus_mesh(major: float, minor: float, rings: int = 64, segments: int = 192) -> Mesh:
    """Torus around the z axis, centred at the origin."""
    u = np.linspace(0.0, 2 * np.pi, rings, endpoint=False)  # around the tube
    v = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)  # around the z axis
    uu, vv = np.meshgrid(u, v, indexing="ij")
    rad = major + minor * np.cos(uu)
    vertices = np.stack([rad * np.cos(vv), rad * np.sin(vv), minor * np.sin(uu)], -1).reshape(-1, 3)
    return _outward(vertices, _grid_faces(rings, segments, wrap_rows=True))


def revolution_mesh(radius: np.ndarray, height: np.ndarray, segments: int = 192, cap_rings: int = 12) -> Mesh:
    """Revolve a side profile (radius(z) > 0 at increasing heights) about z and close it with flat caps.

    Cap rings are spaced densely near the rim so the smooth normals blend cap and side over a thin band."""
    radius = np.asarray(radius, dtype=np.float64)
    height = np.asarray(height, dtype=np.float64)
    if radius.ndim != 1 or radius.shape != height.shape or len(radius) < 2 or np.any(radius <= 0):
        raise ValueError("radius and height must be equal-length 1-D profiles (>= 2 points) with radius > 0")
    frac = 1.0 - np.geomspace(1.0, 0.02, cap_rings)[::-1]  # 0 .. 0.98, dense near 1
    frac = frac[1:]
    prof_r = np.concatenate([radius[0] * frac, radius, radius[-1] * frac[::-1]])
    prof_z = np.concatenate([np.full(len(frac), height[0]), height, np.full(len(frac), height[-1])])
    theta = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    ring = np.stack([prof_r[:, None] * np.cos(theta), prof_r[:, None] * np.sin(theta),
                     np.broadcast_to(prof_z[:, None], (len(prof_r), segments))], -1)
    return _closed_from_rings(ring, np.array([0.0, 0.0, height[0]]), np.array([0.0, 0.0, height[-1]]))


def blob_mesh(rng: np.random.Generator, radius: float = 1.0, bumps: int = 6, rings: int = 96,
              segments: int = 192) -> Mesh:
    """Sphere whose radius varies smoothly with direction (Gaussian bumps and dents, kept within ±35 %)."""
    eta = np.linspace(-np.pi / 2, np.pi / 2, rings + 2)[1:-1]
    omega = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    ee, oo = np.meshgrid(eta, omega, indexing="ij")
    dirs = np.stack([np.cos(ee) * np.cos(oo), np.cos(ee) * np.sin(oo), np.sin(ee)], -1)
    poles = np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    centres = rng.normal(size=(bumps, 3))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    amps = rng.uniform(-0.25, 0.35, bumps)
    widths = rng.uniform(0.15, 0.6, bumps)

    def r_of(d: np.ndarray) -> np.ndarray:
        s = (amps * np.exp(-(1.0 - d @ centres.T) / widths)).sum(-1)
        return radius * (1.0 + np.clip(s, -0.35, 0.35))

    ring = dirs * r_of(dirs)[..., None]
    pole_pts = poles * r_of(poles)[:, None]
    return _closed_from_rings(ring, pole_pts[0], pole_pts[1])


def box_mesh(lo: np.ndarray | tuple[float, ...], hi: np.ndarray | tuple[float, ...], inward: bool = False) -> Mesh:
    """Axis-aligned box (12 triangles); ``inward`` puts the front faces inside (a room seen from within)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    corners = np.array([[x, y, z] for z in (0, 1) for y in (0, 1) for x in (0, 1)], dtype=np.float64)
    vertices = lo + corners * (hi - lo)
    quads = [(0, 2, 3, 1), (4, 5, 7, 6), (0, 1, 5, 4), (2, 6, 7, 3), (0, 4, 6, 2), (1, 3, 7, 5)]
    faces = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))], dtype=np.int64)
    vertices, faces = _outward(vertices, faces)
    return (vertices, faces[:, ::-1].copy()) if inward else (vertices, faces)


# ------------------------------------------------------------------------------------------------ textures
def value_noise(points: np.ndarray, rng_seed: int, frequency: float, octaves: int = 4) -> np.ndarray:
    """Fractal 3-D value noise in [0, 1]: random values on an integer lattice, smoothstep-trilinear blend,
    octaves at doubling frequency and halving amplitude. Deterministic from ``rng_seed``."""
    table = np.random.default_rng(rng_seed).random(4096)
    total, amp, norm = np.zeros(len(points)), 1.0, 0.0
    for octave in range(octaves):
        p = points * frequency * 2**octave + 17.0 * octave
        base = np.floor(p).astype(np.int64)
        f = p - base
        w = f * f * (3.0 - 2.0 * f)
        acc = np.zeros(len(points))
        for corner in range(8):
            off = np.array([(corner >> k) & 1 for k in range(3)])
            ijk = base + off
            idx = (ijk[:, 0] * 73856093 ^ ijk[:, 1] * 19349663 ^ ijk[:, 2] * 83492791) % len(table)
            weight = np.prod(np.where(off == 1, w, 1.0 - w), axis=1)
            acc += weight * table[idx]
        total += amp * acc
        norm += amp
        amp *= 0.5
    return total / norm


def _random_color(rng: np.random.Generator, value: tuple[float, float] = (0.25, 0.95)) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.25, 0.9), rng.uniform(*value))
    return np.array(rgb, dtype=np.float64)


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def random_texture(rng: np.random.Generator) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """A random solid texture: (name, function mapping (N, 3) points in object-normalised units to (N, 3) RGB).

    Kinds: checker, stripes, noise through a colour palette, gradient, dots; all get a mild noise modulation
    so no two patches look identical (helps feature matching)."""
    kind = str(rng.choice(["checker", "stripes", "noise", "gradient", "dots"]))
    c1, c2, c3 = _random_color(rng), _random_color(rng), _random_color(rng)
    seed = int(rng.integers(2**31))
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    freq = float(rng.uniform(4.0, 10.0))
    axis = _unit(rng)

    def modulate(p: np.ndarray, rgb: np.ndarray) -> np.ndarray:
        return np.clip(rgb * (0.8 + 0.35 * value_noise(p, seed + 1, 12.0, 3))[:, None], 0.0, 1.0)

    def checker(p: np.ndarray) -> np.ndarray:
        parity = np.floor((p @ rot) * freq).astype(np.int64).sum(1) % 2
        return modulate(p, np.where(parity[:, None] == 0, c1, c2))

    def stripes(p: np.ndarray) -> np.ndarray:
        s = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (p @ axis) + 3.0 * value_noise(p, seed, 2.0, 2))
        s = 1.0 / (1.0 + np.exp(-12.0 * (s - 0.5)))  # sharpen the stripe edges
        return modulate(p, s[:, None] * c1 + (1.0 - s[:, None]) * c2)

    def noise(p: np.ndarray) -> np.ndarray:
        n = value_noise(p, seed, freq / 2.0, 5)
        n = np.clip((n - 0.3) / 0.4, 0.0, 1.0)[:, None]
        return np.where(n < 0.5, c1 + (c2 - c1) * (2 * n), c2 + (c3 - c2) * (2 * n - 1.0))

    def gradient(p: np.ndarray) -> np.ndarray:
        g = np.clip(0.5 + (p @ axis), 0.0, 1.0)[:, None]
        return modulate(p, c1 * (1.0 - g) + c2 * g) * (0.7 + 0.3 * (value_noise(p, seed, freq, 4) > 0.5))[:, None]

    def dots(p: np.ndarray) -> np.ndarray:
        q = (p @ rot) * freq
        d = np.linalg.norm(q - np.round(q), axis=1)
        return modulate(p, np.where((d < 0.3)[:, None], c1, c2))

    funcs = {"checker": checker, "stripes": stripes, "noise": noise, "gradient": gradient, "dots": dots}
    return kind, funcs[kind]


# ------------------------------------------------------------------------------------------------- objects
@dataclass(frozen=True)
class SynthObject:
    """A generated object: its parts (each a mesh with its own material) and its axis-aligned bounds."""

    family: str
    parts: tuple[MeshWithMaterial, ...]
    bbox_min: np.ndarray
    bbox_max: np.ndarray
    textures: tuple[str, ...]

    @property
    def center(self) -> np.ndarray:
        return (self.bbox_min + self.bbox_max) / 2.0

    @property
    def size(self) -> float:
        """Largest extent (m)."""
        return float((self.bbox_max - self.bbox_min).max())

    @property
    def bounding_radius(self) -> float:
        """Half the bounding-box diagonal: a sphere about :attr:`center` with this radius holds the object."""
        return float(np.linalg.norm(self.bbox_max - self.bbox_min) / 2.0)


@dataclass(frozen=True)
class _SolidTexture:
    """A texture of object-normalised coordinates applied to world points (the object standing at the origin)."""

    texture: Callable[[np.ndarray], np.ndarray]
    inv_size: float

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return self.texture(np.asarray(points, dtype=np.float64) * self.inv_size).astype(np.float32)


def _rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _family_parts(family: str, rng: np.random.Generator) -> list[Mesh]:
    """Unscaled geometry (roughly unit size) of one object as a list of parts."""
    if family == "rounded_box":
        a, b, c = rng.uniform(0.5, 1.0, 3)
        return [superquadric_mesh(a, b, c, rng.uniform(0.15, 0.8), rng.uniform(0.15, 0.8))]
    if family == "torus":
        major = 1.0
        v, f = torus_mesh(major, rng.uniform(0.2, 0.45))
        if rng.random() < 0.5:  # stand on the rim like a wheel
            v = v @ _rot_x(np.pi / 2).T
        return [(v, f)]
    if family == "vase":
        h = rng.uniform(1.0, 2.5)
        z = np.linspace(0.0, h, 72)
        r = rng.uniform(0.3, 0.6) * np.ones_like(z)
        if rng.random() < 0.8:  # wavy profile; otherwise a plain cylinder
            for _ in range(int(rng.integers(1, 4))):
                r += rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * z / h + rng.uniform(0, 6.3))
        return [revolution_mesh(np.clip(r, 0.12, None), z)]
    if family == "blob":
        return [blob_mesh(rng, 1.0, bumps=int(rng.integers(4, 10)))]
    if family == "toy":
        return _toy_car(rng) if rng.random() < 0.5 else _toy_stack(rng)
    raise ValueError(f"unknown shape family {family!r}; choose one of {FAMILIES}")


def _shifted(mesh: Mesh, offset: tuple[float, float, float] | np.ndarray, rot: np.ndarray | None = None) -> Mesh:
    v, f = mesh
    if rot is not None:
        v = v @ rot.T
    return v + np.asarray(offset, dtype=np.float64), f


def _toy_car(rng: np.random.Generator) -> list[Mesh]:
    """Body and cabin (rounded boxes) on four wheels (short cylinders along y)."""
    L, Wd, Hb = rng.uniform(1.6, 2.2), rng.uniform(0.8, 1.1), rng.uniform(0.35, 0.5)
    wheel_r, wheel_w = rng.uniform(0.22, 0.3), rng.uniform(0.15, 0.25)
    body_z = wheel_r + Hb / 2
    parts = [_shifted(superquadric_mesh(L / 2, Wd / 2, Hb / 2, 0.25, 0.25), (0, 0, body_z))]
    cab_l = L * rng.uniform(0.4, 0.6)
    parts.append(_shifted(superquadric_mesh(cab_l / 2, Wd * 0.42, Hb * 0.45, 0.35, 0.35),
                          (rng.uniform(-0.15, 0.15) * L, 0, body_z + Hb / 2 + Hb * 0.3)))
    wheel = revolution_mesh(np.full(2, wheel_r), np.array([-wheel_w / 2, wheel_w / 2]), segments=96, cap_rings=8)
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_shifted(wheel, (sx * L * 0.32, sy * (Wd / 2), wheel_r), _rot_x(np.pi / 2)))
    return parts


def _toy_stack(rng: np.random.Generator) -> list[Mesh]:
    """A figure: a base (cylinder or rounded box), a body (blob or ellipsoid) and a head (sphere-like)."""
    base_r, base_h = rng.uniform(0.5, 0.8), rng.uniform(0.15, 0.35)
    if rng.random() < 0.5:
        base = revolution_mesh(np.full(8, base_r), np.linspace(0.0, base_h, 8), segments=160)
    else:
        base = _shifted(superquadric_mesh(base_r, base_r, base_h / 2, 0.2, 0.2), (0, 0, base_h / 2))
    body_r = base_r * rng.uniform(0.6, 0.9)
    body_c = base_h + body_r * 0.9
    body = blob_mesh(rng, body_r, bumps=4) if rng.random() < 0.5 else superquadric_mesh(
        body_r, body_r * rng.uniform(0.7, 1.0), body_r * 1.1, 1.0, 1.0)
    head_r = body_r * rng.uniform(0.5, 0.75)
    head = superquadric_mesh(head_r, head_r, head_r, rng.uniform(0.6, 1.0), 1.0, rings=64, segments=128)
    parts = [base, _shifted(body, (0, 0, body_c)), _shifted(head, (0, 0, body_c + body_r * 0.95 + head_r * 0.8))]
    if rng.random() < 0.6:  # a hat-like torus or ears make the silhouette less symmetric
        ear = superquadric_mesh(head_r * 0.3, head_r * 0.15, head_r * 0.35, 1.0, 1.0, rings=32, segments=64)
        top = body_c + body_r * 0.95 + head_r * 1.5
        for s in (-1, 1):
            parts.append(_shifted(ear, (s * head_r * 0.6, 0, top)))
    return parts


def random_object(
    seed: int | np.random.Generator, family: str | None = None, size: float | None = None
) -> SynthObject:
    """A textured object from ``family`` (random if None) with largest extent ``size`` metres (random in
    [0.08, 0.5] if None), standing on z = 0 and centred on the z axis. Same seed, same object."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    family = str(rng.choice(FAMILIES)) if family is None else family
    if family not in FAMILIES:
        raise ValueError(f"unknown shape family {family!r}; choose one of {FAMILIES}")
    size = float(rng.uniform(*SIZE_RANGE)) if size is None else float(size)
    if not size > 0:
        raise ValueError(f"size must be > 0, got {size}")
    parts = _family_parts(family, rng)
    spin = _rot_z(rng.uniform(0.0, 2 * np.pi))
    parts = [(v @ spin.T, f) for v, f in parts]
    all_v = np.concatenate([v for v, _ in parts])
    lo, hi = all_v.min(0), all_v.max(0)
    scale = size / float((hi - lo).max())
    shift = np.array([-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, -lo[2]])
    meshes, names = [], []
    for k, (v, f) in enumerate(parts):
        name, texture = random_texture(rng)
        specular = float(rng.uniform(0.0, 0.5)) if rng.random() < 0.7 else 0.0
        shininess = float(np.exp(rng.uniform(np.log(4.0), np.log(150.0))))
        world = _SolidTexture(texture, 1.0 / size)  # texture coordinates independent of the object size
        vertices = ((v + shift) * scale).astype(np.float32)
        meshes.append(MeshWithMaterial(
            vertices=vertices, faces=f, colors=world(vertices), specular=specular, shininess=shininess,
            in_mask=True, smooth=True, name=f"{family}_part{k}", texture=world,
        ))
        names.append(name)
    return SynthObject(
        family=family, parts=tuple(meshes), bbox_min=((lo + shift) * scale), bbox_max=((hi + shift) * scale),
        textures=tuple(names),
    )
