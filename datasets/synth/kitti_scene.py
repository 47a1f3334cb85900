"""Procedural KITTI-like street scenes as one triangle soup, for the synthetic KITTI object generator.

A scene is built in *street coordinates* (u along the street, v across it, z up; the sensor at the origin,
1.73 m above the road) and rotated by the street's yaw into the LiDAR frame (x forward, y left, z up). The
road surface is a height field ``z = -1.73 + a*u + c*u**2 + b*v`` (grade, vertical curve and cross-fall), so
it is exactly 1.73 m below the sensor; sidewalks are raised by a kerb. Every surface (ground, buildings,
walls, fences, poles, vegetation, road users) is a triangle mesh carrying a material id, a LiDAR reflectance,
an RGB albedo and the index of the labelled object it belongs to (``-1`` for background), so one ray cast
tells which object each LiDAR ray or camera pixel sees.

Road users are labelled by LiDAR boxes ``(x, y, z, dx, dy, dz, heading)`` (z = geometric centre, dx along the
heading, heading counter-clockwise from +x); every object's mesh lies inside its box. Sizes are drawn around
KITTI's per-class statistics; vehicles sit in lanes or are parked at the kerb, aligned with the road.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "SENSOR_HEIGHT",
    "CLASS_SIZE_STATS",
    "MATERIALS",
    "SceneObject",
    "KittiScene",
    "SceneBuilder",
    "box_mesh",
    "cylinder_mesh",
    "ellipsoid_mesh",
    "add_road_user",
    "sample_object_size",
    "sample_kitti_scene",
]

SENSOR_HEIGHT = 1.73  # HDL-64E mounting height above the road in KITTI (m)

# KITTI training-set label statistics per class: mean and standard deviation of (length, width, height) in m.
CLASS_SIZE_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "Car": ((3.88, 1.63, 1.53), (0.43, 0.10, 0.14)),
    "Van": ((5.08, 1.90, 2.21), (0.60, 0.18, 0.30)),
    "Truck": ((10.1, 2.59, 3.25), (2.20, 0.20, 0.40)),
    "Pedestrian": ((0.84, 0.66, 1.76), (0.20, 0.12, 0.11)),
    "Cyclist": ((1.76, 0.60, 1.74), (0.17, 0.11, 0.09)),
}
_SIZE_LIMITS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "Car": ((3.0, 1.4, 1.25), (5.0, 1.95, 1.95)),
    "Van": ((4.0, 1.6, 1.7), (6.5, 2.3, 2.9)),
    "Truck": ((6.0, 2.2, 2.5), (16.0, 3.0, 4.2)),
    "Pedestrian": ((0.45, 0.4, 1.45), (1.25, 0.95, 2.0)),
    "Cyclist": ((1.4, 0.4, 1.5), (2.1, 0.85, 1.95)),
}

# Material id -> (name, LiDAR reflectance, RGB albedo). Road users override reflectance/colour per object.
MATERIALS: dict[int, tuple[str, float, tuple[float, float, float]]] = {
    0: ("road", 0.12, (0.30, 0.30, 0.31)),
    1: ("sidewalk", 0.22, (0.55, 0.53, 0.50)),
    2: ("curb", 0.30, (0.62, 0.61, 0.58)),
    3: ("terrain", 0.35, (0.36, 0.45, 0.24)),
    4: ("building", 0.30, (0.68, 0.60, 0.50)),
    5: ("wall", 0.28, (0.60, 0.58, 0.55)),
    6: ("fence", 0.40, (0.45, 0.40, 0.33)),
    7: ("pole", 0.55, (0.50, 0.52, 0.55)),
    8: ("trunk", 0.30, (0.35, 0.25, 0.16)),
    9: ("vegetation", 0.42, (0.20, 0.42, 0.15)),
    10: ("vehicle", 0.30, (0.60, 0.10, 0.10)),
    11: ("glass", 0.06, (0.10, 0.12, 0.15)),
    12: ("tire", 0.04, (0.05, 0.05, 0.05)),
    13: ("person", 0.25, (0.40, 0.30, 0.30)),
    14: ("bicycle", 0.45, (0.20, 0.20, 0.25)),
    15: ("lane_marking", 0.65, (0.85, 0.85, 0.82)),
}
_MAT = {name: mid for mid, (name, _, _) in MATERIALS.items()}


@dataclass(frozen=True)
class SceneObject:
    """A labelled road user: KITTI class name and LiDAR box ``(x, y, z_centre, length, width, height, heading)``."""

    name: str
    box: tuple[float, float, float, float, float, float, float]


@dataclass
class KittiScene:
    """One triangle soup: ``vertices`` float32 (V, 3) in the LiDAR frame, ``triangles`` int32 (F, 3) and per
    triangle ``material`` int32, ``reflectance`` float32, ``color`` float32 (F, 3) and ``object_index`` int32
    (index into ``objects`` or -1)."""

    vertices: np.ndarray
    triangles: np.ndarray
    material: np.ndarray
    reflectance: np.ndarray
    color: np.ndarray
    object_index: np.ndarray
    objects: list[SceneObject]

    def object_boxes(self) -> np.ndarray:
        """(M, 7) float32 LiDAR boxes of ``objects``."""
        return np.array([o.box for o in self.objects], dtype=np.float32).reshape(-1, 7)

    def object_names(self) -> np.ndarray:
        """(M,) class names of ``objects``."""
        return np.array([o.name for o in self.objects], dtype=str)


# --------------------------------------------------------------------------------------------------------------
# Mesh primitives (numpy; each returns vertices (V, 3) float64 and triangles (F, 3) int64)
# --------------------------------------------------------------------------------------------------------------


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


_BOX_CORNERS = np.array(
    [[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1], [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], float
) / 2.0
_BOX_FACES = np.array(
    [[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4],
     [1, 2, 6], [1, 6, 5], [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7]]
)  # fmt: skip


def box_mesh(center: np.ndarray, size: tuple[float, float, float], yaw: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed box of ``size`` = (length along yaw, width, height) centred at ``center``, rotated about z."""
    v = (_BOX_CORNERS * np.asarray(size, float)) @ _rot_z(yaw).T + np.asarray(center, float)
    return v, _BOX_FACES.copy()


def cylinder_mesh(center: np.ndarray, axis: np.ndarray, radius: float, length: float,
                  sides: int = 10) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Closed prism with ``sides`` faces approximating a cylinder of ``radius`` and ``length`` along ``axis``."""
    a = np.asarray(axis, float)
    a = a / np.linalg.norm(a)
    ref = np.array([0.0, 0.0, 1.0]) if abs(a[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = np.cross(a, ref)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(a, e1)
    ang = np.arange(sides) * (2.0 * math.pi / sides)
    ring = radius * (np.cos(ang)[:, None] * e1 + np.sin(ang)[:, None] * e2)
    c = np.asarray(center, float)
    bottom, top = c - a * length / 2.0, c + a * length / 2.0
    v = np.concatenate([bottom + ring, top + ring, bottom[None], top[None]])
    i = np.arange(sides)
    j = (i + 1) % sides
    side = np.concatenate([np.stack([i, j, sides + j], 1), np.stack([i, sides + j, sides + i], 1)])
    caps = np.concatenate(
        [np.stack([np.full(sides, 2 * sides), j, i], 1), np.stack([np.full(sides, 2 * sides + 1), sides + i,
                                                                   sides + j], 1)]
    )
    return v, np.concatenate([side, caps])


def ellipsoid_mesh(center: np.ndarray, semi_axes: tuple[float, float, float], yaw: float = 0.0,
                   n_lat: int = 6, n_lon: int = 10) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Closed latitude/longitude ellipsoid with semi-axes (along yaw, across, up)."""
    lat = np.linspace(-math.pi / 2, math.pi / 2, n_lat + 1)[1:-1]
    lon = np.arange(n_lon) * (2.0 * math.pi / n_lon)
    ring = np.stack(
        [np.cos(lat)[:, None] * np.cos(lon), np.cos(lat)[:, None] * np.sin(lon), np.repeat(np.sin(lat)[:, None],
                                                                                          n_lon, 1)], -1
    ).reshape(-1, 3)
    v = np.concatenate([[[0.0, 0.0, -1.0]], ring, [[0.0, 0.0, 1.0]]]) * np.asarray(semi_axes, float)
    v = v @ _rot_z(yaw).T + np.asarray(center, float)
    rings = n_lat - 1
    idx = 1 + np.arange(rings * n_lon).reshape(rings, n_lon)
    nxt = np.roll(idx, -1, axis=1)
    tris = [np.stack([np.zeros(n_lon, int), nxt[0], idx[0]], 1)]
    for r in range(rings - 1):
        tris.append(np.stack([idx[r], nxt[r], nxt[r + 1]], 1))
        tris.append(np.stack([idx[r], nxt[r + 1], idx[r + 1]], 1))
    top = len(v) - 1
    tris.append(np.stack([np.full(n_lon, top), idx[-1], nxt[-1]], 1))
    return v, np.concatenate(tris)


# --------------------------------------------------------------------------------------------------------------
# Scene assembly
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SceneBuilder:
    """Collects mesh parts in the LiDAR frame and the labelled objects; :meth:`build` concatenates them."""

    _verts: list[np.ndarray] = field(default_factory=list)
    _tris: list[np.ndarray] = field(default_factory=list)
    _mat: list[np.ndarray] = field(default_factory=list)
    _refl: list[np.ndarray] = field(default_factory=list)
    _color: list[np.ndarray] = field(default_factory=list)
    _obj: list[np.ndarray] = field(default_factory=list)
    _count: int = 0
    objects: list[SceneObject] = field(default_factory=list)

    def add_mesh(self, vertices: np.ndarray, triangles: np.ndarray, material: int | np.ndarray,
                 reflectance: float | np.ndarray | None = None, color: np.ndarray | None = None,
                 object_index: int = -1) -> None:  # fmt: skip
        """Add triangles; ``material``/``reflectance`` may be per triangle; defaults come from :data:`MATERIALS`."""
        f = len(triangles)
        mat = np.broadcast_to(np.asarray(material, np.int32), (f,))
        if reflectance is None:
            reflectance = np.array([MATERIALS[int(m)][1] for m in mat], np.float32)
        if color is None:
            color = np.array([MATERIALS[int(m)][2] for m in mat], np.float32).reshape(f, 3)
        self._verts.append(np.asarray(vertices, np.float64))
        self._tris.append(np.asarray(triangles, np.int64) + self._count)
        self._mat.append(mat.astype(np.int32))
        self._refl.append(np.broadcast_to(np.asarray(reflectance, np.float32), (f,)))
        self._color.append(np.broadcast_to(np.asarray(color, np.float32), (f, 3)))
        self._obj.append(np.full(f, object_index, np.int32))
        self._count += len(vertices)

    def add_object(self, name: str, box: tuple[float, ...] | np.ndarray) -> int:
        """Register a labelled object and return its index (pass it as ``object_index`` of its meshes)."""
        self.objects.append(SceneObject(name, tuple(float(x) for x in box)))  # type: ignore[arg-type]
        return len(self.objects) - 1

    def build(self) -> KittiScene:
        """The concatenated scene (float32 vertices, int32 triangles)."""
        if not self._tris:
            raise ValueError("a scene needs at least one mesh")
        return KittiScene(
            vertices=np.concatenate(self._verts).astype(np.float32),
            triangles=np.concatenate(self._tris).astype(np.int32),
            material=np.concatenate(self._mat),
            reflectance=np.concatenate(self._refl).astype(np.float32),
            color=np.concatenate(self._color).astype(np.float32),
            object_index=np.concatenate(self._obj),
            objects=list(self.objects),
        )


def sample_object_size(rng: np.random.Generator, name: str) -> tuple[float, float, float]:
    """(length, width, height) drawn from a normal around KITTI's class statistics, clipped to sane limits."""
    mean, std = CLASS_SIZE_STATS[name]
    lo, hi = _SIZE_LIMITS[name]
    s = np.clip(rng.normal(mean, std), lo, hi)
    return float(s[0]), float(s[1]), float(s[2])


def add_road_user(builder: SceneBuilder, rng: np.random.Generator, name: str, bottom_center: np.ndarray,
                  size: tuple[float, float, float], heading: float) -> int:  # fmt: skip
    """Add a Car/Van/Truck/Pedestrian/Cyclist mesh standing at ``bottom_center`` (LiDAR frame) and its label box;
    every vertex lies inside the box. Returns the object index."""
    length, width, height = size
    b = np.asarray(bottom_center, float)
    box = (b[0], b[1], b[2] + height / 2.0, length, width, height, heading)
    k = builder.add_object(name, box)
    fwd = np.array([math.cos(heading), math.sin(heading), 0.0])
    left = np.array([-math.sin(heading), math.cos(heading), 0.0])
    up = np.array([0.0, 0.0, 1.0])

    def at(a: float, c: float, z: float) -> np.ndarray:  # a along heading, c to the left, z up from the bottom
        return b + a * fwd + c * left + z * up

    def part(vt: tuple[np.ndarray, np.ndarray], mat: str, refl: float | None = None,
             color: np.ndarray | None = None) -> None:  # fmt: skip
        builder.add_mesh(vt[0], vt[1], _MAT[mat], refl, color, k)

    if name in ("Car", "Van", "Truck"):
        paint = np.array(rng.choice([(0.75, 0.75, 0.78), (0.1, 0.1, 0.12), (0.55, 0.08, 0.07), (0.15, 0.2, 0.45),
                                     (0.45, 0.47, 0.5), (0.85, 0.85, 0.82), (0.2, 0.3, 0.2)]))  # fmt: skip
        paint = np.clip(paint * rng.uniform(0.85, 1.15), 0.0, 1.0)
        refl = float(rng.uniform(0.08, 0.6))
        r_wheel = min(0.36, 0.22 * height) if name != "Truck" else min(0.5, 0.16 * height)
        wheel_w = min(0.25, 0.15 * width)
        for a in (-0.32 * length, 0.32 * length) if name != "Truck" else (-0.38 * length, -0.2 * length,
                                                                           0.36 * length):  # fmt: skip
            for side in (-1.0, 1.0):
                c = side * (width / 2.0 - wheel_w / 2.0 - 0.005)
                part(cylinder_mesh(at(a, c, r_wheel), left, r_wheel, wheel_w, sides=8), "tire")
        clear = 0.6 * r_wheel
        if name == "Car":
            belt = height * rng.uniform(0.55, 0.65)
            part(box_mesh(at(0.0, 0.0, (clear + belt) / 2.0), (length, width, belt - clear), heading), "vehicle",
                 refl, paint)
            cab_l = length * rng.uniform(0.45, 0.6)
            part(box_mesh(at(-0.06 * length, 0.0, (belt + height) / 2.0), (cab_l, 0.88 * width, height - belt),
                          heading), "glass")
        elif name == "Van":
            belt = height * rng.uniform(0.4, 0.5)
            part(box_mesh(at(0.0, 0.0, (clear + belt) / 2.0), (length, width, belt - clear), heading), "vehicle",
                 refl, paint)
            up_l = length * rng.uniform(0.78, 0.88)
            part(box_mesh(at(-(length - up_l) / 2.0, 0.0, (belt + height) / 2.0), (up_l, 0.97 * width,
                          height - belt), heading), "vehicle", refl, paint)  # fmt: skip
            part(box_mesh(at(length / 2.0 - (length - up_l) - 0.05, 0.0, belt + 0.45 * (height - belt)),
                          (0.1, 0.9 * width, 0.6 * (height - belt)), heading), "glass")
        else:  # Truck: cab in front, cargo box behind
            cab_l = min(2.4, 0.25 * length)
            cab_h = height * rng.uniform(0.75, 0.9)
            part(box_mesh(at(length / 2.0 - cab_l / 2.0, 0.0, (clear + cab_h) / 2.0), (cab_l, 0.96 * width,
                          cab_h - clear), heading), "vehicle", refl, paint)  # fmt: skip
            cargo_l = length - cab_l - 0.2
            cargo_bottom = 2.0 * r_wheel + 0.1
            part(box_mesh(at(-length / 2.0 + cargo_l / 2.0, 0.0, (cargo_bottom + height) / 2.0),
                          (cargo_l, width, height - cargo_bottom), heading), "vehicle", float(rng.uniform(0.2, 0.6)),
                 np.array([0.8, 0.8, 0.78]) * rng.uniform(0.7, 1.0))  # fmt: skip
    elif name == "Pedestrian":
        cloth = np.clip(rng.uniform(0.05, 0.6, 3), 0.0, 1.0)
        refl = float(rng.uniform(0.15, 0.45))
        stride = rng.uniform(0.0, 0.32) * length
        leg_h = 0.47 * height
        for a, c in ((stride / 2.0, 0.08), (-stride / 2.0, -0.08)):
            c = float(np.clip(c, -width / 2 + 0.07, width / 2 - 0.07))
            a = float(np.clip(a, -length / 2 + 0.07, length / 2 - 0.07))
            part(cylinder_mesh(at(a, c, leg_h / 2.0), up, 0.065, leg_h, sides=6), "person", refl, cloth * 0.6)
        torso_h = 0.36 * height
        part(ellipsoid_mesh(at(0.0, 0.0, leg_h + torso_h / 2.0), (min(0.14, length / 2), min(0.22, width / 2),
                            torso_h / 2.0 + 0.03), heading, 5, 8), "person", refl, cloth)  # fmt: skip
        head_r = min(0.11, (height - leg_h - torso_h) / 2.0)
        part(ellipsoid_mesh(at(0.0, 0.0, height - head_r), (head_r, head_r, head_r), heading, 4, 6), "person",
             refl, np.array([0.8, 0.6, 0.5]))
    elif name == "Cyclist":
        wheel_r = min(0.34, 0.2 * length)
        for a in (-(length / 2.0 - wheel_r), length / 2.0 - wheel_r):
            part(cylinder_mesh(at(a, 0.0, wheel_r), left, wheel_r, 0.05, sides=10), "tire")
        part(box_mesh(at(0.0, 0.0, wheel_r + 0.15), (length - 2.2 * wheel_r + 0.3, 0.06, 0.3), heading),
             "bicycle")
        cloth = np.clip(rng.uniform(0.05, 0.7, 3), 0.0, 1.0)
        refl = float(rng.uniform(0.15, 0.5))
        seat_z = 0.5 * height
        for c in (-0.12, 0.12):
            c = float(np.clip(c, -width / 2 + 0.06, width / 2 - 0.06))
            part(cylinder_mesh(at(-0.05, c, seat_z / 2.0 + 0.1), up, 0.06, seat_z - 0.2, sides=6), "person",
                 refl, cloth * 0.6)
        part(ellipsoid_mesh(at(0.05 * length, 0.0, seat_z + 0.2 * height), (min(0.25, length / 2 - 0.05),
                            min(0.2, width / 2), 0.18 * height), heading, 5, 8), "person", refl, cloth)
        head_r = 0.1
        part(ellipsoid_mesh(at(0.15 * length, 0.0, height - head_r), (head_r, head_r, head_r), heading, 4, 6),
             "person", refl, np.array([0.8, 0.6, 0.5]))
    else:
        raise ValueError(f"unknown road-user class {name!r}")
    return k


# --------------------------------------------------------------------------------------------------------------
# Procedural street
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Street:
    """Street-frame parameters and the transform to the LiDAR frame."""

    yaw: float
    grade: float
    curve: float
    crossfall: float
    centre: float
    half_width: float
    sidewalk: float
    kerb_height: float

    def height(self, u: np.ndarray | float, v: np.ndarray | float) -> np.ndarray | float:
        """Road-surface height (LiDAR z) at street coordinates (u, v); -SENSOR_HEIGHT at the origin."""
        return -SENSOR_HEIGHT + self.grade * u + self.curve * u * u + self.crossfall * v

    def surface(self, u: float, v: float) -> float:
        """Height of whatever ground is at (u, v): the road, or a sidewalk/terrain raised by the kerb."""
        raised = abs(v - self.centre) >= self.half_width
        return float(self.height(u, v)) + (self.kerb_height if raised else 0.0)

    def to_lidar(self, u: float, v: float, z: float) -> np.ndarray:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([c * u - s * v, s * u + c * v, z])

    def points_to_lidar(self, p: np.ndarray) -> np.ndarray:
        return p @ _rot_z(self.yaw).T


def _ground_mesh(st: _Street, extent: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Height-field ground over the street frame: road between the kerbs (with lane markings), sidewalks raised by
    the kerb (vertical kerb faces), terrain beyond. Returns street-frame vertices, triangles and materials."""
    us = np.arange(-extent, extent + 1e-6, 4.0)
    kl, kr = st.centre - st.half_width, st.centre + st.half_width
    mark_w = 0.12
    cols = [  # (v, raised?)
        (-extent, True), (kl - st.sidewalk, True), (kl, True), (kl, False),
        (st.centre - mark_w / 2, False), (st.centre + mark_w / 2, False),
        (kr, False), (kr, True), (kr + st.sidewalk, True), (extent, True),
    ]  # fmt: skip
    vs = np.array([c[0] for c in cols])
    dz = np.array([st.kerb_height if c[1] else 0.0 for c in cols])
    uu, vv = np.meshgrid(us, vs, indexing="ij")
    zz = st.height(uu, vv) + dz[None, :]
    verts = np.stack([uu, vv, zz], -1).reshape(-1, 3)
    nu, nv = len(us), len(vs)
    idx = np.arange(nu * nv).reshape(nu, nv)
    a, b_, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    tris = np.concatenate([np.stack([a, b_, c], -1), np.stack([a, c, d], -1)], axis=0).reshape(-1, 3)
    col_mat = []
    for j in range(nv - 1):
        vmid = (vs[j] + vs[j + 1]) / 2.0
        if vs[j] == vs[j + 1]:
            col_mat.append(_MAT["curb"])
        elif abs(vmid - st.centre) < mark_w:
            col_mat.append(_MAT["lane_marking"])
        elif abs(vmid - st.centre) < st.half_width:
            col_mat.append(_MAT["road"])
        elif abs(vmid - st.centre) < st.half_width + st.sidewalk:
            col_mat.append(_MAT["sidewalk"])
        else:
            col_mat.append(_MAT["terrain"])
    mats = np.broadcast_to(np.array(col_mat), (nu - 1, nv - 1))
    mats = np.concatenate([mats, mats], axis=0).reshape(-1)
    return verts, tris, mats


class _Occupancy:
    """Street-frame axis-aligned footprints already taken, to keep objects from intersecting."""

    def __init__(self) -> None:
        self.rects: list[tuple[float, float, float, float]] = [(-3.0, 3.0, -1.3, 1.3)]  # the ego vehicle

    def free(self, u: float, v: float, half_u: float, half_v: float, margin: float = 0.3) -> bool:
        r = (u - half_u - margin, u + half_u + margin, v - half_v - margin, v + half_v + margin)
        return all(r[1] <= o[0] or o[1] <= r[0] or r[3] <= o[2] or o[3] <= r[2] for o in self.rects)

    def take(self, u: float, v: float, half_u: float, half_v: float) -> None:
        self.rects.append((u - half_u, u + half_u, v - half_v, v + half_v))


def _footprint(size: tuple[float, float, float], rel_heading: float) -> tuple[float, float]:
    """Half extents in (u, v) of a footprint ``size[:2]`` rotated by ``rel_heading`` relative to the street."""
    c, s = abs(math.cos(rel_heading)), abs(math.sin(rel_heading))
    return (c * size[0] + s * size[1]) / 2.0, (s * size[0] + c * size[1]) / 2.0


def sample_kitti_scene(rng: np.random.Generator, extent: float = 125.0) -> KittiScene:
    """Draw a random KITTI-like street scene around the sensor (see the module docstring)."""
    r = rng.random()
    yaw = float(rng.normal(0.0, 0.06)) if r < 0.85 else float(rng.uniform(-math.pi, math.pi))
    st = _Street(
        yaw=yaw,
        grade=float(rng.uniform(-0.02, 0.02)),
        curve=float(rng.uniform(-1.5e-4, 1.5e-4)),
        crossfall=float(rng.uniform(-0.01, 0.01)),
        half_width=float(rng.uniform(5.0, 8.5)),
        centre=0.0,
        sidewalk=float(rng.uniform(2.0, 4.5)),
        kerb_height=float(rng.uniform(0.1, 0.18)),
    )
    lane_w = st.half_width / 2.0
    st.centre = float(rng.choice([-1.0, 1.0]) * lane_w / 2.0 + rng.uniform(-0.4, 0.4))  # ego in a lane
    builder = SceneBuilder()
    gv, gt, gm = _ground_mesh(st, extent)
    builder.add_mesh(st.points_to_lidar(gv), gt, gm)
    occ = _Occupancy()

    def static_box(u: float, v: float, size: tuple[float, float, float], mat: str, sink: float = 0.3,
                   refl: float | None = None, color: np.ndarray | None = None) -> None:  # fmt: skip
        z0 = st.surface(u, v) - sink
        vt = box_mesh(st.to_lidar(u, v, z0 + (size[2] + sink) / 2.0), (size[0], size[1], size[2] + sink), yaw)
        builder.add_mesh(*vt, _MAT[mat], refl, color)

    def tree(u: float, v: float, crown: float) -> None:
        g = st.surface(u, v)
        trunk_r = rng.uniform(0.1, 0.25)
        crown_z = g + rng.uniform(2.2, 3.2) + crown
        builder.add_mesh(*cylinder_mesh(st.to_lidar(u, v, (g - 0.3 + crown_z) / 2.0), (0, 0, 1), trunk_r,
                                        crown_z - g + 0.3, sides=7), _MAT["trunk"])  # fmt: skip
        sq = rng.uniform(0.8, 1.2)
        builder.add_mesh(*ellipsoid_mesh(st.to_lidar(u, v, crown_z), (crown, crown * sq, crown * rng.uniform(0.8, 1.2)),
                                         rng.uniform(0, math.pi)), _MAT["vegetation"],
                         rng.uniform(0.3, 0.55))  # fmt: skip

    def bush(u: float, v: float, radius: float) -> None:
        g = st.surface(u, v)
        builder.add_mesh(*ellipsoid_mesh(st.to_lidar(u, v, g + 0.3 * radius), (radius * rng.uniform(1.0, 2.5),
                                         radius, radius * rng.uniform(0.6, 1.0)), yaw, 5, 8),
                         _MAT["vegetation"], rng.uniform(0.3, 0.55))  # fmt: skip

    # Roadside: building rows, walls, fences, vegetation; poles and trees on the sidewalks.
    for side in (-1.0, 1.0):
        kerb = st.centre + side * st.half_width
        facade = kerb + side * st.sidewalk
        style = rng.choice(["buildings", "buildings", "wall", "fence", "green"])
        u = -extent + rng.uniform(0.0, 10.0)
        while u < extent - 5.0:
            seg = rng.uniform(8.0, 30.0)
            seg_style = style if rng.random() < 0.75 else rng.choice(["buildings", "wall", "fence", "green", "gap"])
            if seg_style == "buildings":
                depth = rng.uniform(8.0, 18.0)
                back = rng.uniform(0.0, 3.0)
                static_box(u + seg / 2.0, facade + side * (back + depth / 2.0), (seg - rng.uniform(0, 2), depth,
                           rng.uniform(4.0, 20.0)), "building", 0.3, rng.uniform(0.15, 0.45),
                           np.array(MATERIALS[4][2]) * rng.uniform(0.6, 1.3))  # fmt: skip
            elif seg_style == "wall":
                static_box(u + seg / 2.0, facade + side * 0.2, (seg, 0.3, rng.uniform(0.8, 2.5)), "wall")
                if rng.random() < 0.6:
                    static_box(u + seg / 2.0, facade + side * rng.uniform(6.0, 14.0), (seg, 8.0,
                               rng.uniform(5.0, 15.0)), "building", 0.3, rng.uniform(0.15, 0.45))  # fmt: skip
            elif seg_style == "fence":
                h = rng.uniform(1.0, 2.0)
                static_box(u + seg / 2.0, facade + side * 0.1, (seg, 0.05, h), "fence", 0.0, rng.uniform(0.2, 0.5))
                for pu in np.arange(u + 0.5, u + seg, 2.5):
                    static_box(pu, facade + side * 0.1, (0.08, 0.08, h + 0.1), "pole", 0.2)
                for _ in range(int(rng.integers(0, 4))):
                    tree(u + rng.uniform(0, seg), facade + side * rng.uniform(3.0, 12.0), rng.uniform(1.5, 3.5))
            elif seg_style == "green":
                for _ in range(int(rng.integers(1, 5))):
                    tree(u + rng.uniform(0, seg), facade + side * rng.uniform(1.5, 15.0), rng.uniform(1.5, 3.5))
                for _ in range(int(rng.integers(1, 6))):
                    bush(u + rng.uniform(0, seg), facade + side * rng.uniform(0.8, 8.0), rng.uniform(0.4, 1.2))
            u += seg
        # Poles (street lights, signs) at the kerb and sidewalk trees.
        u = -extent + rng.uniform(0.0, 15.0)
        while u < extent:
            v = kerb + side * 0.4
            h = rng.uniform(3.0, 9.0)
            g = st.surface(u, v)
            builder.add_mesh(*cylinder_mesh(st.to_lidar(u, v, g + h / 2.0 - 0.15), (0, 0, 1),
                                            rng.uniform(0.05, 0.14), h + 0.3, sides=6), _MAT["pole"])
            if rng.random() < 0.4:  # a sign panel
                builder.add_mesh(*box_mesh(st.to_lidar(u, v, g + rng.uniform(2.0, 2.8)), (0.05, 0.7, 0.6),
                                           yaw + rng.choice([0.0, math.pi / 2])), _MAT["pole"],
                                 0.9, np.array([0.9, 0.9, 0.9]))  # fmt: skip
            occ.take(u, v, 0.45, 0.45)  # the pole and a sign panel
            u += rng.uniform(10.0, 35.0)
        if rng.random() < 0.6:
            u = -extent + rng.uniform(0.0, 10.0)
            while u < extent:
                v = kerb + side * st.sidewalk * rng.uniform(0.55, 0.75)
                if occ.free(u, v, 0.4, 0.4):
                    tree(u, v, min(rng.uniform(1.2, 2.8), st.sidewalk))
                    occ.take(u, v, 0.3, 0.3)
                u += rng.uniform(6.0, 16.0)

    def place(name: str, u: float, v: float, rel_heading: float, size: tuple[float, float, float] | None = None,
              margin: float = 0.3) -> bool:  # fmt: skip
        size = size or sample_object_size(rng, name)
        hu, hv = _footprint(size, rel_heading)
        if not occ.free(u, v, hu, hv, margin):
            return False
        occ.take(u, v, hu, hv)
        p = st.to_lidar(u, v, st.surface(u, v))
        add_road_user(builder, rng, name, p, size, yaw + rel_heading)
        return True

    def vehicle_class() -> str:
        return str(rng.choice(["Car", "Van", "Truck"], p=[0.84, 0.11, 0.05]))

    # Parked vehicles along both kerbs (rows with gaps), aligned with the road either way.
    for side in (-1.0, 1.0):
        if rng.random() < 0.15:
            continue
        density = rng.uniform(0.3, 0.9)
        u = -extent * 0.6 + rng.uniform(0.0, 6.0)
        while u < extent * 0.6:
            name = vehicle_class() if rng.random() < 0.97 else "Cyclist"
            size = sample_object_size(rng, name)
            if rng.random() < density:
                v = st.centre + side * (st.half_width - rng.uniform(0.15, 0.5) - size[1] / 2.0)
                rel = (0.0 if rng.random() < 0.5 else math.pi) + rng.normal(0.0, 0.05)
                place(name, u + size[0] / 2.0, v, rel, size, margin=0.25)
            u += size[0] + rng.uniform(0.5, 3.0)
    # Moving traffic in the lanes (right-hand traffic: lanes right of the centre go +u).
    for _ in range(int(rng.integers(2, 10))):
        name = vehicle_class() if rng.random() < 0.92 else "Cyclist"
        lane_side = float(rng.choice([-1.0, 1.0]))
        v = st.centre + lane_side * lane_w / 2.0 + rng.uniform(-0.3, 0.3)
        rel = (0.0 if lane_side < 0 else math.pi) + rng.normal(0.0, 0.03)
        place(name, rng.uniform(-70.0, 70.0), v, rel, margin=2.0)
    # Pedestrians on the sidewalks (alone or in groups), some crossing; cyclists on sidewalks too.
    for _ in range(int(rng.integers(0, 9))):
        side = float(rng.choice([-1.0, 1.0]))
        u0 = rng.uniform(-50.0, 60.0)
        v0 = st.centre + side * (st.half_width + rng.uniform(0.4, max(0.5, st.sidewalk - 0.4)))
        along = rng.random() < 0.7
        rel = ((0.0 if rng.random() < 0.5 else math.pi) + rng.normal(0.0, 0.15)) if along else rng.uniform(-3.2, 3.2)
        lo, hi = sorted((st.centre + side * (st.half_width + 0.5), st.centre + side * (st.half_width + st.sidewalk
                                                                                       - 0.6)))
        for _ in range(int(rng.choice([1, 1, 1, 2, 3]))):
            v = float(np.clip(v0 + rng.uniform(-0.6, 0.6), lo, max(lo, hi)))
            place("Pedestrian", u0 + rng.uniform(-1.5, 1.5), v, rel + rng.normal(0, 0.2), margin=0.1)
    for _ in range(int(rng.integers(0, 3))):
        if rng.random() < 0.5:
            u0 = rng.uniform(-30.0, 40.0)
            place("Pedestrian", u0, st.centre + rng.uniform(-st.half_width + 0.5, st.half_width - 0.5),
                  rng.choice([math.pi / 2, -math.pi / 2]) + rng.normal(0, 0.2))
        else:
            side = float(rng.choice([-1.0, 1.0]))
            place("Cyclist", rng.uniform(-50.0, 60.0), st.centre + side * (st.half_width - 0.8),
                  (0.0 if side < 0 else math.pi) + rng.normal(0.0, 0.05))
    return builder.build()
