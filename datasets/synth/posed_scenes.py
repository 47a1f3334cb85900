"""Synthetic forward-facing scenes written as LLFF, nerfstudio ``transforms.json`` or COLMAP text models, so the
readers in :mod:`sparse3d.io` and the per-scene methods run end to end offline.

A scene is a procedural textured object (:func:`sparse3d.datasets.synth.shapes.random_object`) on a textured
table inside a textured room, seen by an LLFF-like hand-held rig: ``num_views`` cameras on a plane facing the
object (a grid of rows x columns, row by row, each position jittered), every camera aimed at the object's centre
(±2 % of its size, ±1 degree of roll), focal length 0.8-1.1 x width, principal point at the image centre, the
object filling 45-60 % of the image height. Images are ray cast with :mod:`sparse3d.render.mesh_raycast` (five
point lights with shadows and an ambient term), so they share no code with the Gaussian rasterizer.

Per scene (``<root>/<scene>/``, scene ``i`` named ``<family><i:03d>``)::

    images/image_000.png ...           full resolution, width x height
    images_{N}/image_000.png ...       downsampled N times (area averaging) for every N in ``factors``
    poses_bounds.npy                   format "llff": LLFF poses, bounds = 0.1 / 99.9 % depth percentiles per view
    sparse/0/{cameras,images,points3D}.txt   formats "llff" and "colmap": one PINHOLE camera, 2-D observations
    transforms.json                    format "nerfstudio": shared OPENCV intrinsics (zero distortion) and
                                       ``ply_file_path`` naming sparse_pc.ply
    sparse_pc.ply                      format "nerfstudio": the sparse points (xyz, red green blue uchar)
    synth_scene.json                   what was generated

The sparse points (``num_points``; COLMAP ``points3D.txt`` for "llff" and "colmap", a PLY for "nerfstudio") are
points of the scene's true surfaces seen by the cameras (half on the object, half on the room and table): random
pixels of each view lifted with the rendered depth, coloured with the rendered image, and observed in every view
where they are in the image and not occluded (depth test against that view's depth map).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from sparse3d.cameras import Cameras, look_at
from sparse3d.datasets.synth.args import GeneratorArgumentError, whole, whole_list
from sparse3d.datasets.synth.output_root import prepare_output_root
from sparse3d.datasets.synth.shapes import FAMILIES, SynthObject, box_mesh, random_object, random_texture
from sparse3d.datasets.synth.spare_scenes import scene_lights
from sparse3d.io.colmap import ColmapCamera, ColmapImage, ColmapPoints, rotmat_to_qvec, write_colmap_text
from sparse3d.io.images import write_png
from sparse3d.io.llff import POSES_BOUNDS, image_folder, write_poses_bounds
from sparse3d.io.nerfstudio import TRANSFORMS, write_transforms
from sparse3d.io.pointcloud import write_ply_points
from sparse3d.render.mesh_raycast import MeshRaycaster, MeshWithMaterial, PointLight, compose_layers
from sparse3d.utils.errors import UserError

__all__ = ["FORMATS", "META_NAME", "PosedSynthScene", "forward_facing_rig", "synth_posed_scene", "generate_posed_scenes"]

FORMATS: tuple[str, ...] = ("llff", "nerfstudio", "colmap")
META_NAME = "synth_scene.json"
NERFSTUDIO_PLY = "sparse_pc.ply"
AMBIENT = 0.2
FILL_RANGE = (0.45, 0.6)
"""Fraction of the image height the object's bounding sphere covers."""
FOCAL_PER_WIDTH = (0.8, 1.1)
RIG_SPAN = (0.25, 0.15)
"""Half extent of the camera plane (horizontal, vertical) as a fraction of the distance to the object."""


@dataclass(frozen=True)
class _Texture:
    """A solid texture in units of ``unit`` metres (a picklable callable for :class:`MeshWithMaterial`)."""

    texture: object
    unit: float

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return self.texture(np.asarray(points, np.float64) / self.unit).astype(np.float32)  # type: ignore[operator]


@dataclass(frozen=True)
class PosedSynthScene:
    """Everything that defines one generated scene (deterministic from the seed and the scene index)."""

    name: str
    obj: SynthObject
    cameras: Cameras
    meshes: tuple[MeshWithMaterial, ...]
    lights: tuple[PointLight, ...]
    distance: float


def forward_facing_rig(
    target: np.ndarray, distance: float, width: int, height: int, num_views: int, rng: np.random.Generator,
    focal: float | None = None,
) -> Cameras:
    """``num_views`` cameras on a plane ``distance`` in front of ``target``, all aimed at it (see module docstring)."""
    if num_views < 1:
        raise UserError(f"num_views must be >= 1, got {num_views}")
    f = float(focal) if focal is not None else float(rng.uniform(*FOCAL_PER_WIDTH)) * width
    az, elev = rng.uniform(0.0, 2 * np.pi), np.deg2rad(rng.uniform(10.0, 25.0))
    back = np.array([np.cos(elev) * np.cos(az), np.cos(elev) * np.sin(az), np.sin(elev)])  # target -> rig centre
    right = np.cross(-back, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, -back)
    rows = max(1, int(round(np.sqrt(num_views * 0.75))))
    cols = int(np.ceil(num_views / rows))
    xs = np.linspace(-1.0, 1.0, cols) if cols > 1 else np.zeros(1)
    ys = np.linspace(1.0, -1.0, rows) if rows > 1 else np.zeros(1)
    step = np.array([2.0 / max(cols - 1, 1), 2.0 / max(rows - 1, 1)])
    K = np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
    Rs, ts = [], []
    for k in range(num_views):
        r, c = divmod(k, cols)
        u, v = np.array([xs[c], ys[r]]) + rng.uniform(-0.1, 0.1, 2) * step
        centre = target + distance * (back + RIG_SPAN[0] * u * right + RIG_SPAN[1] * v * up)
        R = look_at(centre, target + rng.normal(scale=0.01 * distance, size=3), roll=np.deg2rad(rng.uniform(-1, 1)))
        Rs.append(R)
        ts.append(-R @ centre)
    return Cameras.from_Rt(np.repeat(K[None], num_views, axis=0), np.stack(Rs), np.stack(ts), width, height)


def synth_posed_scene(
    seed: int, index: int, width: int, height: int, num_views: int = 20, families: Sequence[str] | None = None,
) -> PosedSynthScene:
    """The object, rig, room and lights of scene ``index``; depends only on ``(seed, index)`` and the sizes."""
    rng = np.random.default_rng([int(seed), int(index)])
    family = str(rng.choice(list(families) if families else FAMILIES))
    obj = random_object(rng, family=family)
    fpw = float(rng.uniform(*FOCAL_PER_WIDTH))
    half_fov = np.arctan(0.5 * height / (fpw * width))
    distance = obj.bounding_radius / (np.sin(half_fov) * rng.uniform(*FILL_RANGE))
    target = obj.center
    cameras = forward_facing_rig(target, distance, width, height, num_views, rng, focal=fpw * width)
    table_half, table_height = 0.5 * distance, 0.4 * distance
    room = 3.0 * distance
    tv, tf = box_mesh((-table_half, -table_half, -0.05 * distance), (table_half, table_half, 0.0))
    rv, rf = box_mesh((-room, -room, -table_height), (room, room, 2.0 * room), inward=True)
    _, table_tex = random_texture(rng)
    _, room_tex = random_texture(rng)
    meshes = (
        *obj.parts,
        MeshWithMaterial(tv, tf, (0.7, 0.7, 0.7), specular=0.1, shininess=16.0, in_mask=False, smooth=False,
                         name="table", texture=_Texture(table_tex, 0.25 * distance)),
        MeshWithMaterial(rv, rf, (0.6, 0.6, 0.6), in_mask=False, smooth=False, name="room",
                         texture=_Texture(room_tex, 0.6 * distance)),
    )
    towards_rig = cameras.centers.mean(0).double().numpy() - target
    lights = tuple(scene_lights(target, distance, rng, float(np.arctan2(towards_rig[1], towards_rig[0]))))
    return PosedSynthScene(f"{family}{int(index):03d}", obj, cameras, meshes, lights, float(distance))


def _sample_points(
    cameras: Cameras, depths: list[np.ndarray], images: list[np.ndarray], masks: list[np.ndarray], count: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, list[list[tuple[int, float, float]]]]:
    """Lift random pixels (half on the object) to world points; returns xyz, rgb and per point its observations
    ``(view, x, y)`` in every view that sees it (projection inside the image, depth within 1 % of the map)."""
    n = len(cameras)
    per_view = max(2, count // n)
    xyz, rgb = [], []
    for v in range(n):
        depth, mask = depths[v], masks[v]
        ok = np.isfinite(depth)
        picks = []
        for pool in (np.flatnonzero((mask & ok).ravel()), np.flatnonzero((~mask & ok).ravel())):
            if len(pool):
                picks.append(rng.choice(pool, min(len(pool), per_view // 2), replace=False))
        flat = np.concatenate(picks) if picks else np.zeros(0, np.int64)
        i, j = np.divmod(flat, cameras.width)
        z = depth.ravel()[flat].astype(np.float64)
        K = cameras.K[v].double().numpy()
        cam = np.stack([(j + 0.5 - K[0, 2]) / K[0, 0] * z, (i + 0.5 - K[1, 2]) / K[1, 1] * z, z], axis=1)
        R, t = cameras.R[v].double().numpy(), cameras.t[v].double().numpy()
        xyz.append((cam - t) @ R)
        rgb.append(images[v].reshape(-1, 3)[flat])
    points = np.concatenate(xyz)
    uv_t, z_t = cameras.project(torch.from_numpy(points))
    uv, z = uv_t.double().numpy(), z_t.double().numpy()
    tracks: list[list[tuple[int, float, float]]] = [[] for _ in range(len(points))]
    for v in range(n):
        col, row = np.floor(uv[v, :, 0]).astype(np.int64), np.floor(uv[v, :, 1]).astype(np.int64)
        inside = (z[v] > 0) & (col >= 0) & (col < cameras.width) & (row >= 0) & (row < cameras.height)
        seen = np.zeros(len(points), bool)
        seen[inside] = np.abs(depths[v][row[inside], col[inside]] - z[v, inside]) < 0.01 * z[v, inside]
        for k in np.flatnonzero(seen):
            tracks[k].append((v, float(uv[v, k, 0]), float(uv[v, k, 1])))
    return points, np.concatenate(rgb), tracks


def _write_colmap(folder: Path, cameras: Cameras, names: list[str], xyz: np.ndarray, rgb: np.ndarray,
                  tracks: list[list[tuple[int, float, float]]]) -> None:
    K = cameras.K[0].double().numpy()
    camera = ColmapCamera(1, "PINHOLE", cameras.width, cameras.height, (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    images = [ColmapImage(v + 1, tuple(rotmat_to_qvec(cameras.R[v].double().numpy())),  # type: ignore[arg-type]
                          tuple(cameras.t[v].double().numpy()), 1, names[v]) for v in range(len(cameras))]  # type: ignore[arg-type]
    observations: dict[int, list[tuple[float, float, int]]] = {im.image_id: [] for im in images}
    point_tracks: dict[int, list[tuple[int, int]]] = {}
    for k, track in enumerate(tracks):
        for v, x, y in track:
            point_tracks.setdefault(k + 1, []).append((v + 1, len(observations[v + 1])))
            observations[v + 1].append((x, y, k + 1))
    points = ColmapPoints(np.arange(1, len(xyz) + 1), xyz.astype(np.float32), rgb.astype(np.float32),
                          np.zeros(len(xyz), np.float32))
    write_colmap_text(folder, [camera], images, points, observations, point_tracks)


def _check_args(fmt: str, num_scenes: int, num_views: int, width: int, height: int, factors: Sequence[int],
                families: Sequence[str] | None, num_points: int, seed: int) -> list[int]:
    """Validate every argument before anything is written; errors name the argument."""
    if fmt not in FORMATS:
        raise GeneratorArgumentError(f"format must be one of {FORMATS}, got {fmt!r}")
    whole("num_scenes", num_scenes, 1)
    whole("num_views", num_views, 2)
    whole("seed", seed, 0)
    w, h = whole("width", width), whole("height", height)
    if w < 16 or h < 16:
        raise GeneratorArgumentError(f"width and height must be >= 16 pixels, got {width}x{height}")
    facs = sorted(set(whole_list("factors", factors)))
    if any(f < 2 for f in facs) or any(min(w, h) / f < 4 for f in facs):
        raise GeneratorArgumentError(f"factors must be >= 2 and leave images of at least 4 pixels, got "
                                     f"{list(factors)} for {width}x{height}")
    if families is not None and (isinstance(families, str) or not hasattr(families, "__iter__")):
        raise GeneratorArgumentError(f"families must be a list of names from {FAMILIES}, got {families!r}")
    bad = [f for f in (families or ()) if f not in FAMILIES]
    if bad or (families is not None and not families):
        raise GeneratorArgumentError(f"families must be a non-empty subset of {FAMILIES}, got {families}")
    whole("num_points", num_points, 0)
    return facs


def generate_posed_scenes(
    root: str | Path,
    format: str = "llff",
    num_scenes: int = 1,
    num_views: int = 20,
    width: int = 400,
    height: int = 300,
    factors: Sequence[int] = (2, 4),
    seed: int = 0,
    families: Sequence[str] | None = None,
    num_points: int = 4000,
    shadows: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``num_scenes`` forward-facing scenes under ``root`` in ``format`` (one of :data:`FORMATS`); return
    ``root``.

    Scene ``i`` depends only on ``(seed, i)`` and the sizes. ``factors`` are the extra downsampled image folders
    (``images_N``). An existing non-empty ``root`` is refused unless ``overwrite`` (which writes over same-named
    files and leaves other files alone).
    """
    facs = _check_args(format, num_scenes, num_views, width, height, factors, families, num_points, seed)
    out = prepare_output_root(root, overwrite)
    width, height = int(width), int(height)
    bar = tqdm(total=int(num_scenes) * int(num_views), desc=f"{format} scenes x views", unit="view",
               disable=not progress)
    for i in range(int(num_scenes)):
        scene = synth_posed_scene(seed, i, width, height, int(num_views), families)
        folder = out / scene.name
        cams = scene.cameras
        raycaster = MeshRaycaster(scene.meshes)
        names = [f"image_{v:03d}.png" for v in range(len(cams))]
        depths, images, masks = [], [], []
        for v in range(len(cams)):
            layers = raycaster.render_layers(cams, v, scene.lights, shadows=shadows)
            rgb = compose_layers(layers, np.ones(len(scene.lights)), AMBIENT)
            write_png(folder / "images" / names[v], rgb)
            for f in facs:
                size = (max(1, round(width / f)), max(1, round(height / f)))
                write_png(folder / image_folder(f) / names[v], cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
            depths.append(layers.depth)
            images.append(rgb)
            masks.append(layers.mask)
            bar.update(1)
        c2w = cams.c2w.double().numpy()
        if format == "llff":
            finite = [d[np.isfinite(d)] for d in depths]
            bounds = np.array([[np.percentile(d, 0.1), np.percentile(d, 99.9)] for d in finite])
            hwf = [height, width, float(cams.K[0, 0, 0])]
            write_poses_bounds(folder / POSES_BOUNDS, c2w, np.asarray(hwf), bounds)
        rng = np.random.default_rng([int(seed), i, 1])
        xyz, rgb_pts, tracks = (_sample_points(cams, depths, images, masks, int(num_points), rng) if num_points
                                else (np.zeros((0, 3)), np.zeros((0, 3)), []))
        if format in ("llff", "colmap"):
            _write_colmap(folder / "sparse" / "0", cams, names, xyz, rgb_pts, tracks)
        if format == "nerfstudio":
            transforms = write_transforms(folder / TRANSFORMS, cams.K[0].double().numpy(), c2w,
                                          [f"images/{n}" for n in names], width, height)
            if len(xyz):
                write_ply_points(folder / NERFSTUDIO_PLY, xyz.astype(np.float32),
                                 colors=np.clip(rgb_pts, 0.0, 1.0).astype(np.float32))
                data = json.loads(transforms.read_text())
                data["ply_file_path"] = NERFSTUDIO_PLY
                transforms.write_text(json.dumps(data, indent=2) + "\n")
        meta = {
            "generator": "sparse3d.datasets.synth.posed_scenes", "format": format, "seed": int(seed), "index": i,
            "family": scene.obj.family, "textures": list(scene.obj.textures), "size_m": scene.obj.size,
            "center": scene.obj.center.tolist(), "distance": scene.distance, "width": width, "height": height,
            "num_views": len(cams), "factors": facs, "ambient": AMBIENT,
            "lights": [{"position": list(map(float, li.position)), "intensity": list(map(float, li.rgb()))}
                       for li in scene.lights],
        }
        (folder / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    bar.close()
    return out
