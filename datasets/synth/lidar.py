"""Synthetic spinning-LiDAR scans of procedural street scenes, written in the SemanticKITTI layout.

Why: the quick-start demo and the tests must run offline, yet exercise the same reader and Dataset as the
real SemanticKITTI download. So we simulate a KITTI-like sensor (a multi-beam spinning LiDAR mounted
1.73 m above the road) by analytic, numpy-vectorised ray casting against a street scene made of a tilted
ground plane, oriented boxes (cars, buildings), vertical cylinders (tree trunks, poles) and spheres (tree
crowns), and write real-format ``.bin`` / ``.label`` files plus a ``semantic-kitti.yaml``-style config.

Points are in the LiDAR frame (x forward, y left, z up, sensor at the origin), so the road lies near
``z = -1.73`` exactly as in KITTI. Each sequence folder also gets ``scene_layout.json`` with every
primitive (same frame), so tests can check labels against geometry.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from sparse3d.datasets.synth.args import GeneratorArgumentError, real, whole
from sparse3d.io.pointcloud import write_kitti_bin, write_semantic_kitti_label

__all__ = [
    "CONFIG_NAME",
    "SENSOR_HEIGHT",
    "RAW_LABELS",
    "LEARNING_MAP",
    "LEARNING_MAP_INV",
    "Box",
    "VerticalCylinder",
    "Sphere",
    "SceneLayout",
    "beam_elevations_deg",
    "sample_scene_layout",
    "simulate_scan",
    "generate_lidar_scenes",
]

CONFIG_NAME = "sparse3d_lidar.yaml"
LAYOUT_NAME = "scene_layout.json"
SENSOR_HEIGHT = 1.73  # KITTI HDL-64E mounting height above the road (m)
TRAIN_SEQUENCE = 0
VALID_SEQUENCE = 1

# SemanticKITTI raw ids for the classes we simulate (subset of semantic-kitti.yaml).
RAW_LABELS: dict[int, str] = {
    0: "unlabeled",
    10: "car",
    40: "road",
    50: "building",
    70: "vegetation",
    71: "trunk",
    80: "pole",
}
LEARNING_MAP: dict[int, int] = {0: 0, 10: 1, 40: 2, 50: 3, 70: 4, 71: 4, 80: 5}
LEARNING_MAP_INV: dict[int, int] = {0: 0, 1: 10, 2: 40, 3: 50, 4: 70, 5: 80}
LEARNING_IGNORE: dict[int, bool] = {0: True, 1: False, 2: False, 3: False, 4: False, 5: False}
# BGR colours, the convention of semantic-kitti.yaml's color_map.
COLOR_MAP: dict[int, list[int]] = {
    0: [0, 0, 0],
    10: [245, 150, 100],
    40: [255, 0, 255],
    50: [0, 200, 255],
    70: [0, 175, 0],
    71: [0, 60, 135],
    80: [150, 240, 255],
}

_MIN_ELEVATION_DEG = -25.0
_MAX_ELEVATION_DEG = 3.0
_EPS = 1e-6


def beam_elevations_deg(num_beams: int) -> np.ndarray:
    """Beam elevation angles (degrees), evenly spread over the HDL-64-like field of view [-25, +3]."""
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if num_beams == 1:
        return np.array([0.0])
    return np.linspace(_MIN_ELEVATION_DEG, _MAX_ELEVATION_DEG, num_beams)


# --------------------------------------------------------------------------------------------------------------
# Scene primitives (all in the LiDAR frame)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """Box rotated about z by ``heading``; ``size`` = (length along heading, width, height)."""

    kind: str
    raw_label: int
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    heading: float
    reflectance: float
    instance: int = 0


@dataclass(frozen=True)
class VerticalCylinder:
    """Upright cylinder; only its side is ray-cast (its caps are unreachable from the sensor, see below)."""

    kind: str
    raw_label: int
    center_xy: tuple[float, float]
    z_min: float
    z_max: float
    radius: float
    reflectance: float
    instance: int = 0


@dataclass(frozen=True)
class Sphere:
    """Sphere (a tree crown)."""

    kind: str
    raw_label: int
    center: tuple[float, float, float]
    radius: float
    reflectance: float
    instance: int = 0


@dataclass
class SceneLayout:
    """Everything a scan is cast against. Ground: z = ground_z0 + slope[0] * x + slope[1] * y."""

    ground_z0: float
    ground_slope: tuple[float, float]
    ground_reflectance: float
    azimuth_offset: float
    boxes: list[Box] = field(default_factory=list)
    cylinders: list[VerticalCylinder] = field(default_factory=list)
    spheres: list[Sphere] = field(default_factory=list)

    def ground_height(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray | float:
        """Height of the ground plane below (x, y)."""
        return self.ground_z0 + self.ground_slope[0] * x + self.ground_slope[1] * y

    def to_json(self) -> dict:
        """Plain-JSON description (used by tests to verify labels against geometry)."""
        return {
            "ground": {
                "raw_label": 40,
                "z0": self.ground_z0,
                "slope": list(self.ground_slope),
                "reflectance": self.ground_reflectance,
            },
            "azimuth_offset_rad": self.azimuth_offset,
            "boxes": [
                {
                    "kind": b.kind, "raw_label": b.raw_label, "instance": b.instance, "center": list(b.center),
                    "size": list(b.size), "heading": b.heading, "reflectance": b.reflectance,
                }
                for b in self.boxes
            ],
            "cylinders": [
                {
                    "kind": c.kind, "raw_label": c.raw_label, "instance": c.instance,
                    "center_xy": list(c.center_xy), "z_min": c.z_min, "z_max": c.z_max, "radius": c.radius,
                    "reflectance": c.reflectance,
                }
                for c in self.cylinders
            ],
            "spheres": [
                {
                    "kind": s.kind, "raw_label": s.raw_label, "instance": s.instance, "center": list(s.center),
                    "radius": s.radius, "reflectance": s.reflectance,
                }
                for s in self.spheres
            ],
        }  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Procedural street layout
# --------------------------------------------------------------------------------------------------------------


def _r(x: float) -> float:
    """Round layout numbers so the JSON stays readable; the scan is cast against the rounded values."""
    return round(float(x), 4)


def sample_scene_layout(rng: np.random.Generator, max_range: float = 60.0) -> SceneLayout:
    """Draw a random street: a road with parked and moving cars, building rows (or open park land) on
    each side, trees and poles on the sidewalks, and sometimes buildings closing the street ends.

    Work happens in street coordinates (u along the street, v across, sensor at the origin) and is rotated by
    a random yaw into the LiDAR frame. Objects are placed in lanes and sidewalk strips so they do not overlap.
    """
    yaw = rng.uniform(-math.pi, math.pi)
    cy, sy = math.cos(yaw), math.sin(yaw)
    slope = (_r(rng.uniform(-0.008, 0.008)), _r(rng.uniform(-0.008, 0.008)))
    layout = SceneLayout(
        ground_z0=-SENSOR_HEIGHT,
        ground_slope=slope,
        ground_reflectance=_r(rng.uniform(0.08, 0.16)),
        azimuth_offset=_r(rng.uniform(0.0, 2.0 * math.pi)),
    )

    def to_lidar(u: float, v: float) -> tuple[float, float]:
        return _r(cy * u - sy * v), _r(sy * u + cy * v)

    def ground_at(u: float, v: float) -> float:
        x, y = to_lidar(u, v)
        return float(layout.ground_height(x, y))

    # Each half of the road: a 2.2 m parking strip at the kerb and one driving lane; the sensor drives in one.
    half_w = rng.uniform(5.5, 8.0)
    sidewalk = rng.uniform(2.5, 4.5)
    lane_offset = (half_w - 2.2) / 2.0
    centre = rng.choice([-1.0, 1.0]) * lane_offset + rng.uniform(-0.3, 0.3)  # road centre line (v)
    extent = max_range + 10.0

    # Buildings closing the street ends bound where everything else may go.
    u_lo, u_hi = -extent, extent
    for end in (-1.0, 1.0):
        if rng.random() < 0.5:
            depth, height = rng.uniform(8.0, 14.0), rng.uniform(6.0, 25.0)
            face = rng.uniform(30.0, max_range - 2.0)
            span = 2.0 * (half_w + sidewalk) + rng.uniform(10.0, 40.0)
            u, v = end * (face + depth / 2.0), centre + rng.uniform(-5.0, 5.0)
            x, y = to_lidar(u, v)
            z_bot = ground_at(u, v) - 0.5
            layout.boxes.append(
                Box("building", 50, (x, y, _r(z_bot + (height + 0.5) / 2.0)),
                    (_r(depth), _r(span), _r(height + 0.5)), _r(yaw), _r(rng.uniform(0.15, 0.45)))
            )  # fmt: skip
            if end < 0:
                u_lo = -face
            else:
                u_hi = face

    def add_box(kind: str, label: int, u: float, v: float, length: float, width: float, height: float,
                heading: float, sink: float, refl: float, instance: int = 0) -> None:  # fmt: skip
        x, y = to_lidar(u, v)
        z_bot = ground_at(u, v) - sink
        layout.boxes.append(
            Box(kind, label, (x, y, _r(z_bot + (height + sink) / 2.0)),
                (_r(length), _r(width), _r(height + sink)), _r(heading), _r(refl), instance)
        )  # fmt: skip

    instance = 0
    for side in (-1.0, 1.0):
        facade = centre + side * (half_w + sidewalk)
        if rng.random() < 0.85:  # a row of buildings
            u = u_lo - rng.uniform(0.0, 10.0)
            while u < u_hi:
                length = rng.uniform(8.0, 28.0)
                depth = rng.uniform(8.0, 16.0)
                setback = rng.uniform(0.0, 1.5)
                add_box("building", 50, u + length / 2.0, facade + side * (setback + depth / 2.0),
                        length, depth, rng.uniform(5.0, 22.0), yaw, 0.5, rng.uniform(0.15, 0.45))  # fmt: skip
                u += length + (rng.uniform(1.0, 8.0) if rng.random() < 0.4 else 0.0)
        else:  # open land with scattered trees
            for _ in range(int(rng.integers(6, 14))):
                u = rng.uniform(u_lo + 3.0, u_hi - 3.0)
                v = facade + side * rng.uniform(2.0, 25.0)
                _add_tree(layout, rng, *to_lidar(u, v), ground_at(u, v))
            for _ in range(int(rng.integers(10, 30))):
                u = rng.uniform(u_lo + 2.0, u_hi - 2.0)
                v = facade + side * rng.uniform(1.0, 25.0)
                _add_bush(layout, rng, *to_lidar(u, v), ground_at(u, v), rng.uniform(0.5, 1.5))

        # Parked cars along the kerb.
        u = u_lo + rng.uniform(0.0, 4.0)
        while True:
            slot = rng.uniform(5.5, 8.0)  # a car (<= 4.8 m) fits inside its slot
            if u + slot > u_hi - 0.3:  # keep the whole slot clear of a building closing the street
                break
            if rng.random() < 0.55:
                length, width = rng.uniform(3.8, 4.8), rng.uniform(1.65, 1.95)
                v = centre + side * (half_w - 0.25 - width / 2.0)
                if math.hypot(u + slot / 2.0, v) > 3.5:
                    instance += 1
                    heading = yaw + (0.0 if rng.random() < 0.5 else math.pi) + rng.normal(0.0, 0.04)
                    add_box("car", 10, u + slot / 2.0, v, length, width, rng.uniform(1.4, 1.75),
                            heading, 0.0, rng.uniform(0.05, 0.55), instance)  # fmt: skip
            u += slot

        # Trees and poles on the sidewalk.
        kerb = centre + side * half_w
        pole_us: list[float] = []
        u = u_lo + rng.uniform(2.0, 20.0)
        while u < u_hi - 2.0:
            pole_us.append(u)
            radius, height = rng.uniform(0.06, 0.13), rng.uniform(4.0, 9.0)
            x, y = to_lidar(u, kerb + side * 0.5)
            g = ground_at(u, kerb + side * 0.5)
            layout.cylinders.append(
                VerticalCylinder("pole", 80, (x, y), _r(g - 0.3), _r(g + height), _r(radius),
                                 _r(rng.uniform(0.4, 0.75)))
            )  # fmt: skip
            u += rng.uniform(12.0, 30.0)
        tree_us: list[float] = []
        u = u_lo + rng.uniform(3.0, 12.0)
        while u < u_hi - 3.0:
            if rng.random() < 0.6 and all(abs(u - pu) > 2.5 for pu in pole_us):
                tree_us.append(u)
                v = kerb + side * sidewalk * rng.uniform(0.45, 0.6)
                _add_tree(layout, rng, *to_lidar(u, v), ground_at(u, v), max_crown=sidewalk * 0.9)
            u += rng.uniform(7.0, 14.0)
        # Bushes and hedges in front of the facades (low vegetation, as common in KITTI as tree crowns).
        u = u_lo + rng.uniform(1.5, 6.0)
        while u < u_hi - 1.5:
            radius = rng.uniform(0.5, min(1.3, 0.35 * sidewalk))
            if rng.random() < 0.5 and all(abs(u - tu) > radius + 0.6 for tu in tree_us):
                _add_bush(
                    layout, rng, *to_lidar(u, facade - side * 0.8 * radius), ground_at(u, facade), radius
                )
            u += rng.uniform(1.2, 6.0)

    # Moving cars in both driving lanes, clear of the sensor.
    taken: list[tuple[float, float]] = []
    for _ in range(int(rng.integers(0, 5))):
        lane = centre + rng.choice([-1.0, 1.0]) * lane_offset
        u = rng.uniform(max(u_lo + 3.0, -45.0), min(u_hi - 3.0, 45.0))
        if abs(u) < 8.0 or any(abs(u - tu) < 8.0 and abs(lane - tv) < 1.0 for tu, tv in taken):
            continue
        taken.append((u, lane))
        instance += 1
        heading = yaw + (0.0 if lane < centre else math.pi) + rng.normal(0.0, 0.03)  # right-hand traffic
        add_box("car", 10, u, lane + rng.uniform(-0.3, 0.3), rng.uniform(3.8, 4.8), rng.uniform(1.65, 1.95),
                rng.uniform(1.4, 1.75), heading, 0.0, rng.uniform(0.05, 0.55), instance)  # fmt: skip
    return layout


def _add_tree(layout: SceneLayout, rng: np.random.Generator, x: float, y: float, ground: float,
              max_crown: float = 3.0) -> None:  # fmt: skip
    """A tree: a trunk ending at the centre of a crown sphere whose underside is 2-3 m up (clear of cars);
    the trunk top is therefore above the sensor, which the cylinder test relies on."""
    trunk_r = rng.uniform(0.12, 0.3)
    crown_r = rng.uniform(1.2, max(1.3, min(2.8, max_crown)))
    top = ground + rng.uniform(2.0, 3.0) + crown_r
    layout.cylinders.append(
        VerticalCylinder(
            "trunk", 71, (x, y), _r(ground - 0.3), _r(top), _r(trunk_r), _r(rng.uniform(0.25, 0.4))
        )
    )
    layout.spheres.append(Sphere("crown", 70, (x, y, _r(top)), _r(crown_r), _r(rng.uniform(0.18, 0.35))))


def _add_bush(layout: SceneLayout, rng: np.random.Generator, x: float, y: float, ground: float,
              radius: float) -> None:  # fmt: skip
    """A bush: a sphere sunk into the ground (the ground is hit first wherever the sphere is below it)."""
    layout.spheres.append(
        Sphere("bush", 70, (x, y, _r(ground + 0.4 * radius)), _r(radius), _r(rng.uniform(0.2, 0.4)))
    )


# --------------------------------------------------------------------------------------------------------------
# Ray casting
# --------------------------------------------------------------------------------------------------------------


def _ray_directions(num_beams: int, points_per_beam: int, azimuth_offset: float) -> np.ndarray:
    """Unit directions (num_beams * points_per_beam, 3), beam-major like a spinning sensor's packets."""
    elev = np.deg2rad(beam_elevations_deg(num_beams))[:, None]
    azim = azimuth_offset + np.arange(points_per_beam)[None, :] * (2.0 * math.pi / points_per_beam)
    cos_e = np.broadcast_to(np.cos(elev), (num_beams, points_per_beam))
    sin_e = np.broadcast_to(np.sin(elev), (num_beams, points_per_beam))
    d = np.stack([cos_e * np.cos(azim), cos_e * np.sin(azim), sin_e], axis=-1)
    return d.reshape(-1, 3)


def _hit_ground(layout: SceneLayout, d: np.ndarray) -> np.ndarray:
    """Distance along each ray to the tilted ground plane (inf where the ray points away from it)."""
    gx, gy = layout.ground_slope
    denom = d[:, 2] - gx * d[:, 0] - gy * d[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = layout.ground_z0 / denom
    return np.where((denom < 0) & (t > _EPS), t, np.inf)


def _hit_boxes(boxes: list[Box], d: np.ndarray) -> np.ndarray:
    """Slab test in each box's local frame, rays from the origin. Returns (R, B) entry distances or inf."""
    if not boxes:
        return np.full((d.shape[0], 0), np.inf)
    c = np.array([b.center for b in boxes])
    half = np.array([b.size for b in boxes]) / 2.0
    cos_h = np.cos([b.heading for b in boxes])
    sin_h = np.sin([b.heading for b in boxes])
    # Ray origin (0) and directions expressed in each box frame (rotation by -heading about z).
    o_local = np.stack(
        [-(cos_h * c[:, 0] + sin_h * c[:, 1]), -(-sin_h * c[:, 0] + cos_h * c[:, 1]), -c[:, 2]], 1
    )
    d_local = (
        d[:, 0:1] * cos_h + d[:, 1:2] * sin_h,
        -d[:, 0:1] * sin_h + d[:, 1:2] * cos_h,
        np.broadcast_to(d[:, 2:3], (d.shape[0], len(boxes))),
    )
    t_near = np.full((d.shape[0], len(boxes)), -np.inf)
    t_far = np.full((d.shape[0], len(boxes)), np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis in range(3):
            inv = 1.0 / d_local[axis]
            t1 = (-half[:, axis] - o_local[:, axis]) * inv
            t2 = (half[:, axis] - o_local[:, axis]) * inv
            t_near = np.maximum(t_near, np.minimum(t1, t2))
            t_far = np.minimum(t_far, np.maximum(t1, t2))
    hit = (t_far >= t_near) & (t_near > _EPS)
    return np.where(hit, t_near, np.inf)


def _hit_cylinders(cyls: list[VerticalCylinder], d: np.ndarray) -> np.ndarray:
    """Side of upright cylinders. The caps never matter: tops are above the sensor (z = 0) and bottoms are
    below the ground, and z changes monotonically along a ray from the origin, so any ray reaching a cap
    would first cross the side or the ground."""
    if not cyls:
        return np.full((d.shape[0], 0), np.inf)
    cxy = np.array([c.center_xy for c in cyls])
    rad = np.array([c.radius for c in cyls])
    z0 = np.array([c.z_min for c in cyls])
    z1 = np.array([c.z_max for c in cyls])
    a = d[:, 0:1] ** 2 + d[:, 1:2] ** 2
    b = -2.0 * (d[:, 0:1] * cxy[:, 0] + d[:, 1:2] * cxy[:, 1])
    cc = (cxy**2).sum(1) - rad**2
    disc = b * b - 4.0 * a * cc
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a)
    z = t * d[:, 2:3]
    hit = (disc >= 0) & (a > 1e-12) & (t > _EPS) & (z >= z0) & (z <= z1)
    return np.where(hit, t, np.inf)


def _hit_spheres(spheres: list[Sphere], d: np.ndarray) -> np.ndarray:
    """Near intersection of unit rays from the origin with spheres."""
    if not spheres:
        return np.full((d.shape[0], 0), np.inf)
    c = np.array([s.center for s in spheres])
    rad = np.array([s.radius for s in spheres])
    half_b = d @ c.T  # (R, S): d . c
    disc = half_b**2 - ((c**2).sum(1) - rad**2)
    t = half_b - np.sqrt(np.maximum(disc, 0.0))
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


def simulate_scan(
    layout: SceneLayout,
    rng: np.random.Generator,
    num_beams: int = 32,
    points_per_beam: int = 1024,
    max_range: float = 60.0,
    noise_std: float = 0.01,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cast every beam/azimuth ray, keep the nearest hit within ``max_range`` and add range noise along the
    ray (so elevation angles stay exactly on the beam set, as in a real sensor's angular encoding).

    Returns ``points`` float32 (N, 4) = x, y, z, reflectance in [0, 1]; ``semantic`` raw ids and
    ``instance`` ids, both int64 (N,).
    """
    d = _ray_directions(num_beams, points_per_beam, layout.azimuth_offset)
    # Skip primitives that lie entirely beyond max_range (their bounding sphere is out of reach).
    boxes = [b for b in layout.boxes if math.dist(b.center, (0, 0, 0)) - math.hypot(*b.size) / 2 <= max_range]
    cyls = [c for c in layout.cylinders if math.hypot(*c.center_xy) - c.radius <= max_range]
    spheres = [s for s in layout.spheres if math.dist(s.center, (0, 0, 0)) - s.radius <= max_range]
    prims: list[tuple[int, int, float]] = [(40, 0, layout.ground_reflectance)]
    prims += [(b.raw_label, b.instance, b.reflectance) for b in boxes]
    prims += [(c.raw_label, c.instance, c.reflectance) for c in cyls]
    prims += [(s.raw_label, s.instance, s.reflectance) for s in spheres]
    t_all = np.concatenate(
        [
            _hit_ground(layout, d)[:, None],
            _hit_boxes(boxes, d),
            _hit_cylinders(cyls, d),
            _hit_spheres(spheres, d),
        ],
        axis=1,
    )
    which = np.argmin(t_all, axis=1)
    t = t_all[np.arange(d.shape[0]), which]
    keep = np.isfinite(t) & (t <= max_range)
    d, t, which = d[keep], t[keep], which[keep]
    r = t + rng.normal(0.0, noise_std, size=t.shape) if noise_std > 0 else t
    keep = (r > 0) & (r <= max_range)
    d, r, which = d[keep], r[keep], which[keep]

    table = np.array(prims, dtype=np.float64)
    semantic = table[which, 0].astype(np.int64)
    instance = table[which, 1].astype(np.int64)
    refl = np.clip(table[which, 2] + rng.normal(0.0, 0.04, size=r.shape), 0.0, 1.0)
    xyz = d * r[:, None]
    points = np.concatenate([xyz, refl[:, None]], axis=1).astype(np.float32)
    # Range noise in float32 can nudge a point just past max_range; keep the guarantee exact.
    ok = np.linalg.norm(points[:, :3].astype(np.float64), axis=1) <= max_range
    return points[ok], semantic[ok], instance[ok]


# --------------------------------------------------------------------------------------------------------------
# Writing a dataset
# --------------------------------------------------------------------------------------------------------------


def _label_config(params: dict, content: dict[int, float]) -> dict:
    """The ``semantic-kitti.yaml`` keys the reader needs, plus the generator parameters (used to decide
    whether an existing folder can be reused)."""
    return {
        "name": "sparse3d synthetic lidar",
        "labels": dict(RAW_LABELS),
        "color_map": {k: list(v) for k, v in COLOR_MAP.items()},
        "content": content,
        "learning_map": dict(LEARNING_MAP),
        "learning_map_inv": dict(LEARNING_MAP_INV),
        "learning_ignore": dict(LEARNING_IGNORE),
        "split": {"train": [TRAIN_SEQUENCE], "valid": [VALID_SEQUENCE], "test": []},
        "sparse3d_generator": params,
    }


def _scan_paths(root: Path, sequence: int, index: int) -> tuple[Path, Path]:
    seq = root / "sequences" / f"{sequence:02d}"
    return seq / "velodyne" / f"{index:06d}.bin", seq / "labels" / f"{index:06d}.label"


def generate_lidar_scenes(
    root: str | Path,
    num_scenes: int = 8,
    val_scenes: int = 2,
    seed: int = 0,
    num_beams: int = 32,
    points_per_beam: int = 1024,
    max_range: float = 60.0,
    noise_std: float = 0.01,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Generate ``num_scenes`` scans (the last ``val_scenes`` of them in validation sequence 01, the rest in
    training sequence 00) under ``root`` in the SemanticKITTI layout, and return ``root``.

    Scene ``i`` depends only on ``(seed, i)``. If ``root`` already holds a complete set made with the same
    parameters and ``overwrite`` is False nothing is regenerated; a set made with other parameters, or a
    folder of scans not made by this generator, raises ``FileExistsError`` unless ``overwrite`` is True.
    """
    whole("num_scenes", num_scenes, 1)
    whole("val_scenes", val_scenes, 0)
    whole("seed", seed, 0)
    if not val_scenes < num_scenes:
        raise GeneratorArgumentError(
            f"val_scenes must be in [0, num_scenes - 1] so at least one training scene remains, got {val_scenes}"
        )
    whole("num_beams", num_beams, 1)
    whole("points_per_beam", points_per_beam, 1)
    real("max_range", max_range, positive=True)
    real("noise_std", noise_std, minimum=0.0)

    root = Path(root)
    cfg_path = root / CONFIG_NAME
    params = {
        "num_scenes": int(num_scenes), "val_scenes": int(val_scenes), "seed": int(seed),
        "num_beams": int(num_beams), "points_per_beam": int(points_per_beam),
        "max_range": float(max_range), "noise_std": float(noise_std), "sensor_height": SENSOR_HEIGHT,
    }  # fmt: skip
    n_train = num_scenes - val_scenes
    plan = [(TRAIN_SEQUENCE, i, i) for i in range(n_train)] + [
        (VALID_SEQUENCE, i, n_train + i) for i in range(val_scenes)
    ]
    expected = [p for seq, idx, _ in plan for p in _scan_paths(root, seq, idx)]
    expected += [root / "sequences" / f"{s:02d}" / LAYOUT_NAME for s in {seq for seq, _, _ in plan}]

    ours = cfg_path.is_file()
    if not overwrite:
        if ours:
            with open(cfg_path) as f:
                previous = (yaml.safe_load(f) or {}).get("sparse3d_generator")
            if previous != params:
                raise FileExistsError(
                    f"{root} holds synthetic scans generated with {previous}, not {params}; "
                    "pass overwrite=True to regenerate or choose another root"
                )
            if all(p.is_file() for p in expected):
                return root
        elif any((root / "sequences").glob("*/velodyne/*.bin")):
            raise FileExistsError(
                f"{root} already contains velodyne scans that were not generated by sparse3d "
                f"(no {CONFIG_NAME}); refusing to write into it without overwrite=True"
            )

    # Remove the completion marker first so an interrupted run is never mistaken for a complete set.
    if ours:
        cfg_path.unlink()
        wanted = set(expected)
        for seq in (TRAIN_SEQUENCE, VALID_SEQUENCE):
            seq_dir = root / "sequences" / f"{seq:02d}"
            for stale in [*seq_dir.glob("velodyne/*.bin"), *seq_dir.glob("labels/*.label")]:
                if stale not in wanted:
                    stale.unlink()
    root.mkdir(parents=True, exist_ok=True)

    elevations = beam_elevations_deg(num_beams)
    layouts: dict[int, dict] = {}
    counts: dict[int, int] = dict.fromkeys(RAW_LABELS, 0)
    next_instance: dict[int, int] = {}
    for seq, idx, scene in tqdm(plan, desc="lidar scenes", unit="scene", disable=not progress):
        rng = np.random.default_rng([seed, scene])
        layout = sample_scene_layout(rng, max_range=max_range)
        points, semantic, instance = simulate_scan(
            layout, rng, num_beams, points_per_beam, max_range, noise_std
        )
        # Instance ids are unique within a sequence (scenes are independent, so no id is shared by frames).
        offset = next_instance.get(seq, 0)
        instance = np.where(instance > 0, instance + offset, 0)
        next_instance[seq] = offset + sum(1 for b in layout.boxes if b.instance > 0)
        if offset:
            layout.boxes = [
                Box(b.kind, b.raw_label, b.center, b.size, b.heading, b.reflectance, b.instance + offset)
                if b.instance > 0 else b
                for b in layout.boxes
            ]  # fmt: skip
        bin_path, label_path = _scan_paths(root, seq, idx)
        write_kitti_bin(bin_path, points)
        write_semantic_kitti_label(label_path, semantic, instance)
        frames = layouts.setdefault(seq, {})
        frames[f"{idx:06d}"] = layout.to_json()
        for raw, n in zip(*np.unique(semantic, return_counts=True)):
            counts[int(raw)] += int(n)

    for seq, frames in layouts.items():
        doc = {
            "format": "sparse3d-lidar-layout/1",
            "frame": "lidar (x forward, y left, z up, sensor at origin)",
            "sensor_height": SENSOR_HEIGHT,
            "max_range": float(max_range),
            "beam_elevations_deg": [float(e) for e in elevations],
            "points_per_beam": int(points_per_beam),
            "frames": frames,
        }
        with open(root / "sequences" / f"{seq:02d}" / LAYOUT_NAME, "w") as f:
            json.dump(doc, f, indent=1)

    total = max(sum(counts.values()), 1)
    content = {k: round(v / total, 6) for k, v in counts.items()}
    with open(cfg_path, "w") as f:
        yaml.safe_dump(_label_config(params, content), f, sort_keys=False)
    return root
