"""Synthetic SpaRe/DTU-layout scenes: a procedural object on a white platform inside a black box, seen from a
49-position DTU-like camera rig under 7 lighting conditions, written exactly as :mod:`sparse3d.io.spare` reads.

Why: the SpaRe data cannot ship with the project or its tests, yet the reader, the methods and the benchmark
code must run end to end offline. Images come from :mod:`sparse3d.render.mesh_raycast`, a ray caster that
shares no code with the Gaussian rasterizer, so the generated views can be trusted as targets.

Per scene (name ``Synth<Family><i>`` for the "Synthetic" naming, ``scan<i+1>`` for "DTU")::

    <root>/<scene>/<image_filename(dataset, view, lighting)>   for every view 0..48 and requested lighting
    <root>/<scene>/masks/<mask_filename(dataset, view)>        255 = first hit is the object
    <root>/<scene>/cameras/pos_XXX.txt                         P = K [R | t] at the written resolution
    <root>/<scene>/synth_scene.json                            what was generated (object bounds, lights...)
    <root>/Track1_split_development.json, Track2_split_development.json

Rig (DTU-like, **not** DTU's measured positions): 5 rows of 11/10/10/9/9 cameras at elevations 12-56 degrees on
a spherical cap, lower rows spanning a wider azimuth arc, numbered row by row in a serpentine like a robot's
path; every camera looks at the object's centre (±1.5 degrees of jitter, ±1 degree of roll). The rig radius is
set per scene so the object's bounding sphere fills 70-90 % of the image height; focal length 1.8 x width.
Lighting: five point lights; condition 3 = all on (the evaluation condition), the others are single lights,
pairs and a dimmed all-on (see ``LIGHTING_WEIGHTS``). Scene units are metres (objects 8-50 cm).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sparse3d.cameras import Cameras, look_at
from sparse3d.datasets.synth.args import GeneratorArgumentError, whole, whole_list
from sparse3d.datasets.synth.shapes import FAMILIES, SynthObject, box_mesh, random_object
from sparse3d.io.images import write_mask, write_png
from sparse3d.io.spare import (
    DATASETS,
    EVAL_LIGHTING,
    NUM_LIGHTINGS,
    NUM_RIG_VIEWS,
    SplitEntry,
    camera_filename,
    image_filename,
    mask_filename,
    split_filename,
    write_projection_matrix,
    write_split,
)
from sparse3d.render.mesh_raycast import MeshRaycaster, MeshWithMaterial, PointLight, compose_layers
from sparse3d.utils.errors import UserError

__all__ = [
    "RIG_ROWS",
    "LIGHTING_WEIGHTS",
    "META_NAME",
    "rig_cameras",
    "scene_lights",
    "make_splits",
    "generate_spare_scenes",
]

META_NAME = "synth_scene.json"
RIG_ROWS: tuple[tuple[float, int, float], ...] = (
    # (elevation deg, cameras in the row, azimuth arc deg)
    (12.0, 11, 140.0),
    (23.0, 10, 126.0),
    (34.0, 10, 112.0),
    (45.0, 9, 98.0),
    (56.0, 9, 84.0),
)
FOCAL_PER_WIDTH = 1.8  # fx / width; DTU's fx ~ 2890 px at 1600 px width
NUM_LIGHTS = 5
LIGHT_INTENSITY = 0.24
AMBIENT = 0.08
# Weight of each of the NUM_LIGHTS lights in each lighting condition (row k = condition k); row 3 = all on.
LIGHTING_WEIGHTS = np.array([
    [1.8, 0.0, 0.0, 0.0, 0.0],
    [0.0, 1.8, 0.0, 0.0, 0.0],
    [1.0, 0.0, 1.0, 0.0, 0.0],
    [1.0, 1.0, 1.0, 1.0, 1.0],
    [0.0, 0.0, 0.0, 1.0, 1.0],
    [0.0, 0.0, 1.8, 0.0, 0.0],
    [0.5, 0.5, 0.5, 0.5, 0.5],
], dtype=np.float32)
PLATFORM_ALBEDO = (0.86, 0.86, 0.84)
BOX_ALBEDO = (0.02, 0.02, 0.02)
NAMINGS = ("alternate", *DATASETS)


# ---------------------------------------------------------------------------------------------------- rig
def rig_cameras(
    target: np.ndarray, radius: float, width: int, height: int, rng: np.random.Generator, azimuth0: float = 0.0
) -> tuple[Cameras, np.ndarray]:
    """The 49 rig cameras around ``target`` and their (49, 3, 4) projection matrices ``K [R | t]``."""
    fx = FOCAL_PER_WIDTH * width
    K = np.array([[fx, 0.0, width / 2 + rng.uniform(-0.01, 0.01) * width],
                  [0.0, fx, height / 2 + rng.uniform(-0.01, 0.01) * height],
                  [0.0, 0.0, 1.0]])
    jitter = np.deg2rad(1.5) * radius
    Rs, ts = [], []
    for row, (elev_deg, count, arc_deg) in enumerate(RIG_ROWS):
        azimuths = np.deg2rad(np.linspace(-arc_deg / 2, arc_deg / 2, count)) + azimuth0
        if row % 2:
            azimuths = azimuths[::-1]
        elev = np.deg2rad(elev_deg)
        for az in azimuths:
            r = radius * rng.uniform(0.97, 1.03)
            centre = target + r * np.array([np.cos(elev) * np.cos(az), np.cos(elev) * np.sin(az), np.sin(elev)])
            aim = target + rng.normal(scale=jitter / 2, size=3)
            R = look_at(centre, aim, roll=np.deg2rad(rng.uniform(-1.0, 1.0)))
            Rs.append(R)
            ts.append(-R @ centre)
    Rs, ts = np.stack(Rs), np.stack(ts)
    P = K[None] @ np.concatenate([Rs, ts[:, :, None]], axis=2)
    return Cameras.from_Rt(np.repeat(K[None], len(Rs), axis=0), Rs, ts, width, height), P


def scene_lights(target: np.ndarray, radius: float, rng: np.random.Generator, azimuth0: float) -> list[PointLight]:
    """Five point lights above the object, spread around the rig's side, slightly warm or cool."""
    lights = []
    for k in range(NUM_LIGHTS):
        az = azimuth0 + np.deg2rad(-100.0 + 50.0 * k + rng.uniform(-12, 12))
        elev = np.deg2rad(rng.uniform(35.0, 75.0))
        r = radius * rng.uniform(0.8, 1.2)
        pos = target + r * np.array([np.cos(elev) * np.cos(az), np.cos(elev) * np.sin(az), np.sin(elev)])
        tint = 1.0 + rng.uniform(-0.06, 0.06, 3)
        lights.append(PointLight(tuple(pos), tuple(LIGHT_INTENSITY * tint)))
    return lights


def make_splits(cameras: Cameras, rng: np.random.Generator) -> tuple[list[int], list[int], list[int], list[int]]:
    """Track 1 inputs (3 views at least 15 degrees apart), Track 2 inputs (those plus 6 more) and 10 test views
    per track, disjoint from that track's inputs. Returns (t1_inputs, t1_tests, t2_inputs, t2_tests)."""
    n = len(cameras)
    forward = cameras.R[:, 2, :].double().numpy()
    cos_min = np.cos(np.deg2rad(15.0))
    for _ in range(1000):
        t1 = rng.choice(n, 3, replace=False)
        f = forward[t1]
        if np.all((f @ f.T)[np.triu_indices(3, 1)] < cos_min):
            break
    rest = np.setdiff1d(np.arange(n), t1)
    t2 = np.concatenate([t1, rng.choice(rest, 6, replace=False)])
    t1_tests = rng.choice(np.setdiff1d(np.arange(n), t1), 10, replace=False)
    t2_tests = rng.choice(np.setdiff1d(np.arange(n), t2), 10, replace=False)
    return (sorted(int(v) for v in t1), sorted(int(v) for v in t1_tests),
            sorted(int(v) for v in t2), sorted(int(v) for v in t2_tests))


# -------------------------------------------------------------------------------------------------- scene
def _environment(obj: SynthObject, rig_radius: float) -> list[MeshWithMaterial]:
    """The white platform (top at z = 0) and the black box enclosing rig and lights."""
    half = 0.5 * rig_radius + obj.bounding_radius
    thick = 0.05 * half
    pv, pf = box_mesh((-half, -half, -thick), (half, half, 0.0))
    room = 2.5 * rig_radius
    bv, bf = box_mesh((-room, -room, -thick - 0.01 * room), (room, room, 2 * room), inward=True)
    return [
        MeshWithMaterial(pv, pf, PLATFORM_ALBEDO, specular=0.05, shininess=8.0, in_mask=False, smooth=False,
                         name="platform"),
        MeshWithMaterial(bv, bf, BOX_ALBEDO, specular=0.0, in_mask=False, smooth=False, name="box"),
    ]


def _scene_name(dataset: str, family: str, index: int) -> str:
    if dataset == "DTU":
        return f"scan{index + 1}"
    return "Synth" + "".join(w.capitalize() for w in family.split("_")) + f"{index:03d}"


def _check_args(num_scenes: int, width: int, height: int, lightings: Sequence[int], naming: str,
                families: Sequence[str] | None, seed: int) -> list[int]:
    """Validate every argument before anything is written; errors name the argument."""
    whole("num_scenes", num_scenes, 1)
    whole("seed", seed, 0)
    if whole("width", width) < 16 or whole("height", height) < 16:
        raise GeneratorArgumentError(f"width and height must be >= 16 pixels, got {width}x{height}")
    lights = sorted(set(whole_list("lightings", lightings)))
    if not lights or any(not 0 <= k < NUM_LIGHTINGS for k in lights):
        raise GeneratorArgumentError(f"lightings must be a non-empty subset of 0..{NUM_LIGHTINGS - 1}, "
                                     f"got {list(lightings)}")
    if EVAL_LIGHTING not in lights:
        raise GeneratorArgumentError(f"lightings must include {EVAL_LIGHTING} (all lights on, the evaluation "
                                     f"condition the reader loads by default), got {list(lightings)}")
    if naming not in NAMINGS:
        raise GeneratorArgumentError(f"naming must be one of {NAMINGS}, got {naming!r}")
    if families is not None and (isinstance(families, str) or not hasattr(families, "__iter__")):
        raise GeneratorArgumentError(f"families must be a list of names from {FAMILIES}, got {families!r}")
    bad = [f for f in (families or ()) if f not in FAMILIES]
    if bad or (families is not None and not families):
        raise GeneratorArgumentError(f"families must be a non-empty subset of {FAMILIES}, got {families}")
    return lights


def generate_spare_scenes(
    root: str | Path,
    num_scenes: int = 4,
    width: int = 1600,
    height: int = 1200,
    seed: int = 0,
    lightings: Sequence[int] = tuple(range(NUM_LIGHTINGS)),
    naming: str = "alternate",
    families: Sequence[str] | None = None,
    shadows: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``num_scenes`` synthetic scenes in the SpaRe layout under ``root`` and return ``root``.

    Scene ``i`` depends only on ``(seed, i)`` (not on the resolution or the lightings written). ``naming``:
    "alternate" (even scenes "Synthetic" ``cam_`` files, odd scenes "DTU" ``rect_`` files), or one of the two for
    all scenes. ``families`` restricts the shape families (default all of :data:`FAMILIES`, drawn at random).
    ``lightings`` must include 3. An existing non-empty ``root`` is refused unless ``overwrite`` (which writes
    over same-named files and leaves other files alone).
    """
    lights_wanted = _check_args(num_scenes, width, height, lightings, naming, families, seed)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"output root {root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise UserError(f"output root {root} is not empty; choose another out_dir or pass overwrite=true")
    root.mkdir(parents=True, exist_ok=True)

    tracks: dict[int, dict[str, SplitEntry]] = {1: {}, 2: {}}
    bar = tqdm(total=num_scenes * NUM_RIG_VIEWS, desc="spare scenes x views", unit="view", disable=not progress)
    for i in range(int(num_scenes)):
        rng = np.random.default_rng([int(seed), i])
        dataset = naming if naming != "alternate" else DATASETS[i % 2]
        family = str(rng.choice(list(families) if families else FAMILIES))
        obj = random_object(rng, family=family)
        target = obj.center
        fill = rng.uniform(0.7, 0.9)
        half_fov = np.arctan(0.5 * height / (FOCAL_PER_WIDTH * width))
        rig_radius = obj.bounding_radius / (np.sin(half_fov) * fill)
        azimuth0 = rng.uniform(0.0, 2 * np.pi)
        cameras, P = rig_cameras(target, rig_radius, int(width), int(height), rng, azimuth0)
        lights = scene_lights(target, rig_radius, rng, azimuth0)
        t1, t1_tests, t2, t2_tests = make_splits(cameras, rng)
        name = _scene_name(dataset, family, i)
        tracks[1][name] = SplitEntry(name, tuple(t1), tuple(t1_tests), dataset)
        tracks[2][name] = SplitEntry(name, tuple(t2), tuple(t2_tests), dataset)

        scene_dir = root / name
        (scene_dir / "cameras").mkdir(parents=True, exist_ok=True)
        (scene_dir / "masks").mkdir(parents=True, exist_ok=True)
        meta = {
            "generator": "sparse3d.datasets.synth.spare_scenes", "seed": int(seed), "index": i, "dataset": dataset,
            "family": family, "textures": list(obj.textures), "size_m": obj.size,
            "bbox_min": obj.bbox_min.tolist(), "bbox_max": obj.bbox_max.tolist(), "center": target.tolist(),
            "rig_radius": float(rig_radius), "width": int(width), "height": int(height),
            "lights": [{"position": list(map(float, li.position)), "intensity": list(map(float, li.intensity))}
                       for li in lights],
            "ambient": AMBIENT, "lighting_weights": LIGHTING_WEIGHTS.tolist(), "lightings_written": lights_wanted,
        }
        (scene_dir / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        raycaster = MeshRaycaster([*obj.parts, *_environment(obj, rig_radius)])
        for v in range(NUM_RIG_VIEWS):
            write_projection_matrix(scene_dir / "cameras" / camera_filename(v), P[v])
            layers = raycaster.render_layers(cameras, v, lights, shadows=shadows)
            write_mask(scene_dir / "masks" / mask_filename(dataset, v), layers.mask)
            for k in lights_wanted:
                rgb = compose_layers(layers, LIGHTING_WEIGHTS[k], AMBIENT)
                write_png(scene_dir / image_filename(dataset, v, k), rgb)
            bar.update(1)
    bar.close()
    for track, entries in tracks.items():
        write_split(root / split_filename(track, "development"), entries)
    return root
