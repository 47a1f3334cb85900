"""Synthetic KITTI object data: an HDL-64E-like LiDAR and a KITTI-like front camera ray-cast with Open3D against
procedural street scenes (:mod:`sparse3d.datasets.synth.kitti_scene`), written in the KITTI object layout.

Why: a detector must be trainable and testable offline on data that reads exactly like the KITTI download
(``training/{velodyne,label_2,calib,image_2}``, ``ImageSets/{train,val}.txt``), with KITTI's sensor geometry and
label semantics, so that what it learns transfers to real scans.

* LiDAR: 64 beams from +2 deg to -24.9 deg (32 upper beams 1/3 deg apart, 32 lower beams about 1/2 deg apart, as
  the HDL-64E), 2083 azimuth steps over 360 deg, origin 1.73 m above the road; Gaussian range noise along each
  ray (so every point keeps its beam's elevation), random dropout that grows with range for weak returns, no
  return beyond ``max_range``; reflectance = material reflectivity x |cos(incidence)| with a little noise.
* Camera: image 2 of a KITTI-like calibration (P2 with f = 721.5 px, 1242 x 375), rendered by casting one ray per
  pixel and shading by material colour and surface normal.
* Labels (KITTI semantics): only objects whose projected 3-D box overlaps the image and lies in front of the
  camera; truncation = fraction of the projected (unclipped) box outside the image; occlusion level from the
  fraction of the object's pixels hidden by other geometry (the object alone is ray-cast over its box and
  compared with the full render); objects smaller than 25 px, farther than 70 m or with fewer than
  ``min_points`` LiDAR returns become ``DontCare``; objects seen by neither sensor are not labelled.

Frame ``i`` depends only on ``(seed, i)``, so a generation can be resumed or extended.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open3d as o3d
from tqdm.auto import tqdm

from sparse3d.datasets.synth.args import GeneratorArgumentError, real, whole
from sparse3d.datasets.synth.kitti_scene import SENSOR_HEIGHT, KittiScene, sample_kitti_scene
from sparse3d.geometry.boxes import (
    box_corners,
    boxes_to_image_bbox,
    lidar_to_camera_boxes,
    observation_angle,
    wrap_angle,
)
from sparse3d.io.images import write_png
from sparse3d.io.kitti import KittiCalib, KittiObjects, write_calib, write_label, write_velodyne
from sparse3d.utils.errors import UserError

__all__ = [
    "IMAGE_SHAPE",
    "MARKER_NAME",
    "LidarSpec",
    "ObjectAnnotations",
    "SyntheticKittiFrame",
    "hdl64_elevations_deg",
    "kitti_like_calib",
    "simulate_lidar",
    "render_camera",
    "annotate_objects",
    "make_labels",
    "synthesize_frame",
    "is_val_frame",
    "generate_kitti_frames",
]

IMAGE_SHAPE = (375, 1242)  # (height, width) of KITTI image 2
MARKER_NAME = "sparse3d_kitti.json"
SUBDIRS = {"velodyne": ".bin", "label_2": ".txt", "calib": ".txt", "image_2": ".png"}
OCCLUSION_THRESHOLDS = (0.1, 0.5, 0.8)  # hidden fraction -> level 0 below 0.1, 1 below 0.5, 2 below 0.8, else 3


def hdl64_elevations_deg() -> np.ndarray:
    """(64,) beam elevations in degrees, top to bottom: 32 upper beams from +2 to -8.33 deg (1/3 deg apart) and
    32 lower beams from -8.83 to -24.9 deg."""
    upper = np.linspace(2.0, -8.33, 32)
    lower = np.linspace(-8.83, -24.9, 32)
    return np.concatenate([upper, lower])


@dataclass(frozen=True)
class LidarSpec:
    """Spinning-LiDAR parameters (origin at the LiDAR frame's origin, 1.73 m above the road)."""

    num_azimuth: int = 2083
    max_range: float = 120.0
    noise_std: float = 0.02
    dropout: float = 0.03
    intensity_noise: float = 0.03

    def __post_init__(self) -> None:
        if self.num_azimuth < 1:
            raise UserError(f"num_azimuth must be >= 1, got {self.num_azimuth}")
        if not self.max_range > 0:
            raise UserError(f"max_range must be > 0, got {self.max_range}")
        if self.noise_std < 0 or self.intensity_noise < 0:
            raise UserError(f"noise_std and intensity_noise must be >= 0, got {self.noise_std}, {self.intensity_noise}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def kitti_like_calib() -> KittiCalib:
    """A calibration with KITTI's camera intrinsics and rig geometry: P0..P3 of the four cameras (P2 = the left
    colour camera, f = 721.5377 px, principal point (609.5593, 172.854)), a rectifying rotation a fraction of a
    degree from identity, and ``Tr_velo_to_cam`` = the LiDAR -> camera axis swap (x_cam = -y, y_cam = -z,
    z_cam = x) with a small mounting rotation and the camera 0.27 m ahead of and 0.08 m below the LiDAR."""
    f, cx, cy = 721.5377, 609.5593, 172.854
    k = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])

    def proj(t: tuple[float, float, float]) -> np.ndarray:
        return np.concatenate([k, k @ np.array(t)[:, None]], axis=1)

    swap = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    velo_to_cam = np.concatenate([_rotation(0.0148, -0.0006, 0.0075) @ swap, [[-0.00407], [-0.07632], [-0.27178]]],
                                 axis=1)  # fmt: skip
    imu_to_velo = np.concatenate([_rotation(0.0148, 0.002, -0.00078), [[-0.8087], [0.3196], [-0.7997]]], axis=1)
    return KittiCalib(
        P2=proj((0.06216, 0.0003, 0.002746)),
        R0_rect=_rotation(-0.0074, 0.0075, 0.0098),
        Tr_velo_to_cam=velo_to_cam,
        extra={
            "P0": proj((0.0, 0.0, 0.0)),
            "P1": proj((-0.5372, 0.0, 0.0)),
            "P3": proj((-0.4675, 0.0033, 0.004915)),
            "Tr_imu_to_velo": imu_to_velo,
        },
    )


# --------------------------------------------------------------------------------------------------------------
# Ray casting
# --------------------------------------------------------------------------------------------------------------


class _Caster:
    """One Open3D ray-casting scene over (a subset of) a :class:`KittiScene`'s triangles."""

    def __init__(self, scene: KittiScene, triangle_mask: np.ndarray | None = None) -> None:
        tris = scene.triangles if triangle_mask is None else scene.triangles[triangle_mask]
        self.triangle_ids = None if triangle_mask is None else np.flatnonzero(triangle_mask)
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(
            o3d.core.Tensor(np.ascontiguousarray(scene.vertices, np.float32)),
            o3d.core.Tensor(np.ascontiguousarray(tris, np.uint32)),
        )

    def cast(self, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Distances (R,) (inf = miss; directions need not be unit, t is in their units), hit triangle ids (R,)
        (-1 = miss, ids of the full scene) and unit triangle normals (R, 3)."""
        rays = np.empty((len(directions), 6), np.float32)
        rays[:, :3] = origins
        rays[:, 3:] = directions
        out = self.scene.cast_rays(o3d.core.Tensor(rays))
        t = out["t_hit"].numpy().astype(np.float64)
        prim = out["primitive_ids"].numpy().astype(np.int64)
        hit = np.isfinite(t)
        prim = np.where(hit, prim, -1)
        if self.triangle_ids is not None:
            prim = np.where(hit, self.triangle_ids[np.maximum(prim, 0)], -1)
        return t, prim, out["primitive_normals"].numpy().astype(np.float32)


def _lidar_directions(num_azimuth: int, azimuth_offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit ray directions (64 * num_azimuth, 3), beam-major, and each ray's beam index."""
    elev = np.deg2rad(hdl64_elevations_deg())[:, None]
    azim = azimuth_offset + np.arange(num_azimuth)[None, :] * (2.0 * math.pi / num_azimuth)
    d = np.stack(np.broadcast_arrays(np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)), -1)
    beam = np.repeat(np.arange(len(elev)), num_azimuth)
    return d.reshape(-1, 3), beam


def simulate_lidar(scene: KittiScene, rng: np.random.Generator, spec: LidarSpec = LidarSpec(),
                   caster: _Caster | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Scan ``scene``: returns points float32 (N, 4) = (x, y, z, reflectance in [0, 1]) in the LiDAR frame and
    the index of the labelled object each point hit, int32 (N,) (-1 = background). Every point lies on one of
    :func:`hdl64_elevations_deg`'s beams and within ``spec.max_range`` of the origin."""
    caster = caster or _Caster(scene)
    d, _ = _lidar_directions(spec.num_azimuth, float(rng.uniform(0.0, 2.0 * math.pi)))
    t, prim, normals = caster.cast(np.zeros_like(d), d)
    keep = prim >= 0
    d, t, prim, normals = d[keep], t[keep], prim[keep], normals[keep]
    cos_inc = np.abs((normals * d).sum(1))
    refl = scene.reflectance[prim].astype(np.float64)
    signal = refl * cos_inc
    r = t + rng.normal(0.0, spec.noise_std, size=t.shape) if spec.noise_std > 0 else t
    # Weak returns fade with range: extra dropout grows with (r / max_range)^2 for low signal.
    p_drop = spec.dropout + (1.0 - spec.dropout) * np.clip((r / spec.max_range) ** 2 * (1.0 - signal) * 0.8, 0, 1)
    keep = (rng.random(r.shape) >= p_drop) & (r > 0.5) & (r <= spec.max_range)
    intensity = signal + rng.normal(0.0, spec.intensity_noise, size=r.shape) if spec.intensity_noise > 0 else signal
    xyz = (d * r[:, None])[keep]
    pts = np.concatenate([xyz, np.clip(intensity[keep], 0.0, 0.99)[:, None]], axis=1).astype(np.float32)
    ok = np.linalg.norm(pts[:, :3].astype(np.float64), axis=1) <= spec.max_range  # exact after float32 rounding
    return pts[ok], scene.object_index[prim[keep]][ok].astype(np.int32)


def _camera_rays(calib: KittiCalib, pixels_uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LiDAR-frame origin (3,) and unit directions (N, 3) float32 of image-2 rays through pixel coordinates (N, 2)
    (the camera centre of ``P2 = K [I | t]`` is ``-t`` in the rectified frame)."""
    rect_to_lidar = np.linalg.inv(calib.velo_to_rect())
    k_inv = np.linalg.inv(calib.P2[:, :3])
    centre_rect = -k_inv @ calib.P2[:, 3]
    origin = rect_to_lidar[:3, :3] @ centre_rect + rect_to_lidar[:3, 3]
    m = (rect_to_lidar[:3, :3] @ k_inv).astype(np.float32)
    uv = np.asarray(pixels_uv, np.float32)
    d = uv[:, 0:1] * m[:, 0] + uv[:, 1:2] * m[:, 1] + m[:, 2]
    return origin, d / np.linalg.norm(d, axis=1, keepdims=True)


def _pixel_grid(x0: int, y0: int, x1: int, y1: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixel coordinates (rows, cols) of [x0, x1) x [y0, y1) at ``stride``, flattened row-major."""
    ys, xs = np.meshgrid(np.arange(y0, y1, stride), np.arange(x0, x1, stride), indexing="ij")
    return ys.reshape(-1), xs.reshape(-1)


_SUN = (np.array([0.35, 0.45, 0.82]) / np.linalg.norm([0.35, 0.45, 0.82])).astype(np.float32)


def render_camera(scene: KittiScene, calib: KittiCalib, caster: _Caster | None = None,
                  image_shape: tuple[int, int] = IMAGE_SHAPE) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Image 2 of ``scene``: RGB float32 (H, W, 3) in [0, 1] (material colour, Lambert shading, haze, sky) and the
    labelled-object index seen at each pixel, int32 (H, W) (-1 = background or sky)."""
    caster = caster or _Caster(scene)
    h, w = image_shape
    rows, cols = _pixel_grid(0, 0, w, h)
    origin, d = _camera_rays(calib, np.stack([cols, rows], 1))
    t, prim, normals = caster.cast(np.broadcast_to(origin, d.shape), d)
    hit = prim >= 0
    sky = np.clip(0.55 + 0.4 * d[:, 2:3], 0.0, 1.0) * np.float32([0.62, 0.75, 0.95]) + np.float32(0.05)
    n = normals * -np.sign((normals * d).sum(1, keepdims=True))
    shade = 0.35 + 0.65 * np.clip((n * _SUN).sum(1, keepdims=True), 0.0, 1.0)
    albedo = scene.color[np.maximum(prim, 0)].astype(np.float32)
    haze = np.exp(-np.where(hit, t, 0.0).astype(np.float32) / np.float32(250.0))[:, None]
    rgb = np.where(hit[:, None], albedo * shade * haze + (1 - haze) * np.float32([0.7, 0.75, 0.8]), sky)
    obj = np.where(hit, scene.object_index[np.maximum(prim, 0)], -1)
    return rgb.reshape(h, w, 3).astype(np.float32), obj.reshape(h, w).astype(np.int32)


# --------------------------------------------------------------------------------------------------------------
# Annotation
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ObjectAnnotations:
    """Per scene object (arrays over ``scene.objects``): what the label rules were computed from.

    ``in_fov``: in front of the camera and its projected box overlaps the image; ``bbox`` (M, 4) the projected box
    clipped to the image; ``truncation`` fraction of the unclipped projected box outside the image;
    ``hidden_fraction`` of the object's image pixels covered by other geometry (sampled every ``stride`` px);
    ``occlusion`` KITTI level 0..3; ``num_points`` LiDAR returns on the object; ``visible_pixels`` sampled pixels
    where it is seen; ``depth`` camera z of the box centre; ``dontcare`` / ``labelled`` the label decision."""

    in_fov: np.ndarray
    bbox: np.ndarray
    truncation: np.ndarray
    hidden_fraction: np.ndarray
    occlusion: np.ndarray
    num_points: np.ndarray
    visible_pixels: np.ndarray
    depth: np.ndarray
    dontcare: np.ndarray
    labelled: np.ndarray


def _projected_extent(corners_lidar: np.ndarray, calib: KittiCalib, near: float = 0.1) -> np.ndarray | None:
    """Unclipped image extent (x1, y1, x2, y2) of a box's 8 LiDAR corners after clipping its 12 edges to the
    camera's near plane (rect z >= near); None when the box lies wholly behind it."""
    c = calib.lidar_to_rect(corners_lidar)
    edges = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]
    pts = [c[i] for i in range(8) if c[i, 2] >= near]
    for i, j in edges:
        zi, zj = c[i, 2], c[j, 2]
        if (zi - near) * (zj - near) < 0:
            s = (near - zi) / (zj - zi)
            pts.append(c[i] + s * (c[j] - c[i]))
    if not pts:
        return None
    uv, _ = calib.rect_to_image(np.array(pts))
    return np.array([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])


def _occlusion_level(hidden: float) -> int:
    return int(np.searchsorted(OCCLUSION_THRESHOLDS, hidden, side="right"))


def annotate_objects(scene: KittiScene, calib: KittiCalib, point_object: np.ndarray, pixel_object: np.ndarray,
                     min_points: int = 5, min_height_px: float = 25.0, max_depth: float = 70.0,
                     stride: int = 2) -> ObjectAnnotations:  # fmt: skip
    """Compute FOV, truncation, occlusion and the label decision of every object of ``scene`` from the LiDAR
    returns' object indices ``point_object`` (N,) and the rendered ``pixel_object`` map (H, W)."""
    m = len(scene.objects)
    h, w = pixel_object.shape
    boxes = scene.object_boxes()
    corners = box_corners(boxes) if m else np.zeros((0, 8, 3))
    clipped = boxes_to_image_bbox(boxes, calib, (h, w)) if m else np.zeros((0, 4), np.float32)
    ann = ObjectAnnotations(
        in_fov=np.zeros(m, bool), bbox=np.asarray(clipped, np.float32).reshape(m, 4),
        truncation=np.zeros(m, np.float32), hidden_fraction=np.ones(m, np.float32),
        occlusion=np.full(m, 3, np.int32), num_points=np.zeros(m, np.int64), visible_pixels=np.zeros(m, np.int64),
        depth=calib.lidar_to_rect(boxes[:, :3].astype(np.float64))[:, 2].astype(np.float32) if m
        else np.zeros(0, np.float32),
        dontcare=np.zeros(m, bool), labelled=np.zeros(m, bool),
    )  # fmt: skip
    if m == 0:
        return ann
    valid = point_object[point_object >= 0]
    ann.num_points[:] = np.bincount(valid, minlength=m)[:m]
    for k in range(m):
        ext = _projected_extent(corners[k].astype(np.float64), calib)
        if ext is None:
            continue
        ix1, iy1 = max(ext[0], 0.0), max(ext[1], 0.0)
        ix2, iy2 = min(ext[2], float(w - 1)), min(ext[3], float(h - 1))
        if ix2 <= ix1 or iy2 <= iy1 or ann.depth[k] <= 0:
            continue
        ann.in_fov[k] = True
        area = (ext[2] - ext[0]) * (ext[3] - ext[1])
        ann.truncation[k] = float(np.clip(1.0 - (ix2 - ix1) * (iy2 - iy1) / max(area, 1e-9), 0.0, 1.0))
        # Occlusion: the object alone vs the full render, over its clipped box on a stride grid.
        rows, cols = _pixel_grid(int(ix1), int(iy1), int(math.ceil(ix2)), int(math.ceil(iy2)), stride)
        rows, cols = rows[(rows < h) & (cols < w)], cols[(rows < h) & (cols < w)]
        origin, d = _camera_rays(calib, np.stack([cols, rows], 1).astype(np.float64))
        alone = _Caster(scene, scene.object_index == k)
        _, prim, _ = alone.cast(np.broadcast_to(origin, d.shape), d)
        own = prim >= 0
        total = int(own.sum())
        seen = int((pixel_object[rows, cols] == k).sum())
        ann.visible_pixels[k] = seen
        ann.hidden_fraction[k] = 1.0 - seen / total if total else 1.0
        ann.occlusion[k] = _occlusion_level(float(ann.hidden_fraction[k]))
    height_px = ann.bbox[:, 3] - ann.bbox[:, 1]
    seen_any = (ann.visible_pixels > 0) | (ann.num_points > 0)
    ann.labelled = ann.in_fov & seen_any
    ann.dontcare = ann.labelled & ((height_px < min_height_px) | (ann.depth > max_depth) |
                                   (ann.num_points < min_points))  # fmt: skip
    return ann


def make_labels(scene: KittiScene, calib: KittiCalib, ann: ObjectAnnotations) -> tuple[KittiObjects, np.ndarray]:
    """The label_2 objects (real objects in scene order, then DontCare regions) and, per row, the scene object
    index it came from."""
    real = np.flatnonzero(ann.labelled & ~ann.dontcare)
    dc = np.flatnonzero(ann.dontcare)
    order = np.concatenate([real, dc]).astype(np.int64)
    boxes = scene.object_boxes()[real]
    if len(real):
        loc, hwl, ry = lidar_to_camera_boxes(boxes, calib)
        ry = wrap_angle(ry)  # KITTI's rotation_y range [-pi, pi)
        alpha = observation_angle(boxes, calib)
    else:
        loc, hwl, ry, alpha = np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0)
    nd = len(dc)
    objects = KittiObjects(
        name=np.concatenate([scene.object_names()[real], np.full(nd, "DontCare")]).astype(str),
        truncated=np.concatenate([ann.truncation[real], np.full(nd, -1.0)]),
        occluded=np.concatenate([ann.occlusion[real], np.full(nd, -1)]),
        alpha=np.concatenate([np.asarray(alpha, np.float64).reshape(-1), np.full(nd, -10.0)]),
        bbox=np.concatenate([ann.bbox[real], ann.bbox[dc]]),
        hwl=np.concatenate([np.asarray(hwl).reshape(-1, 3), np.full((nd, 3), -1.0)]),
        location=np.concatenate([np.asarray(loc).reshape(-1, 3), np.full((nd, 3), -1000.0)]),
        rotation_y=np.concatenate([np.asarray(ry, np.float64).reshape(-1), np.full(nd, -10.0)]),
    )
    return objects, order


@dataclass
class SyntheticKittiFrame:
    """One generated frame: ``points`` (N, 4) float32, ``image`` (H, W, 3) float32, ``labels`` (label_2 rows),
    ``label_object`` (scene object index of each row), ``annotations`` (per scene object), ``scene``, ``calib``."""

    points: np.ndarray
    point_object: np.ndarray
    image: np.ndarray
    labels: KittiObjects
    label_object: np.ndarray
    annotations: ObjectAnnotations
    scene: KittiScene
    calib: KittiCalib

    def label_lidar_boxes(self) -> np.ndarray:
        """(K, 7) generator LiDAR boxes of the non-DontCare label rows, in row order."""
        real = self.labels.name != "DontCare"
        return self.scene.object_boxes()[self.label_object[real]]


def synthesize_frame(scene: KittiScene, calib: KittiCalib, rng: np.random.Generator, spec: LidarSpec = LidarSpec(),
                     min_points: int = 5, image_shape: tuple[int, int] = IMAGE_SHAPE) -> SyntheticKittiFrame:  # fmt: skip
    """Scan, render and label ``scene``."""
    caster = _Caster(scene)
    points, point_object = simulate_lidar(scene, rng, spec, caster)
    image, pixel_object = render_camera(scene, calib, caster, image_shape)
    ann = annotate_objects(scene, calib, point_object, pixel_object, min_points=min_points)
    labels, order = make_labels(scene, calib, ann)
    return SyntheticKittiFrame(points, point_object, image, labels, order, ann, scene, calib)


# --------------------------------------------------------------------------------------------------------------
# Writing a dataset
# --------------------------------------------------------------------------------------------------------------


def is_val_frame(index: int, val_fraction: float) -> bool:
    """Whether frame ``index`` is in the val split: every frame where ``floor((i + 1) f) > floor(i f)``, so the
    val frames are spread evenly, ``round(n f)``-ish of any first n, and never change when frames are added."""
    return math.floor((index + 1) * val_fraction + 1e-9) > math.floor(index * val_fraction + 1e-9)


def _frame_paths(root: Path, index: int) -> dict[str, Path]:
    return {sub: root / "training" / sub / f"{index:06d}{ext}" for sub, ext in SUBDIRS.items()}


def _atomic_write(target: Path, write: Callable[[Path], object]) -> None:
    """Write through a same-named file in a hidden staging folder, then move it into place."""
    staging = target.parent.parent / ".partial" / target.parent.name
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / target.name
    write(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)


def _prepare_root(root: Path, params: dict, overwrite: bool) -> None:
    marker = root / MARKER_NAME
    if root.exists() and not root.is_dir():
        raise UserError(f"output root {root} exists and is not a directory")
    if overwrite and marker.is_file():
        for sub in ("training", "ImageSets"):
            shutil.rmtree(root / sub, ignore_errors=True)
        marker.unlink()
    elif root.is_dir() and any(root.iterdir()) and not overwrite:
        if not marker.is_file():
            raise UserError(f"output root {root} is not empty and was not written by this generator (no "
                            f"{MARKER_NAME}); choose another out_dir or pass overwrite=true")  # fmt: skip
        try:
            previous = json.loads(marker.read_text())
        except (OSError, ValueError):
            raise UserError(f"{marker}: unreadable generator marker; pass overwrite=true to regenerate") from None
        if previous != params:
            changed = sorted(k for k in set(previous) | set(params) if previous.get(k) != params.get(k))
            raise UserError(f"output root {root} holds frames generated with other settings ({', '.join(changed)}); "
                            "choose another out_dir or pass overwrite=true")  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(params, indent=1) + "\n")


def generate_kitti_frames(
    root: str | Path,
    num_frames: int = 16,
    val_fraction: float = 0.5,
    seed: int = 0,
    num_azimuth: int = 2083,
    max_range: float = 120.0,
    noise_std: float = 0.02,
    dropout: float = 0.03,
    min_points: int = 5,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write frames ``0 .. num_frames - 1`` in the KITTI object layout under ``root`` and return ``root``:
    ``training/{velodyne,label_2,calib,image_2}/<id>`` and ``ImageSets/{train,val}.txt`` (6-digit ids; frame
    ``i`` is val when :func:`is_val_frame`).

    Frame ``i`` depends only on ``(seed, i)`` and the sensor settings, which are recorded in ``sparse3d_kitti.json``
    (``val_fraction`` only changes the ImageSets files, rewritten on every run):
    a folder written with the same settings is resumed or extended (complete frames are kept), one written with
    other settings or by something else is refused unless ``overwrite`` (which deletes this generator's previous
    output first). Each file is written to ``.partial/`` and moved into place, so no half-written file is left.
    """
    num_frames = whole("num_frames", num_frames, 1)
    val_fraction = real("val_fraction", val_fraction, 0.0)
    if not val_fraction < 1.0:
        raise GeneratorArgumentError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    seed = whole("seed", seed, 0)
    min_points = whole("min_points", min_points, 0)
    spec = LidarSpec(num_azimuth=whole("num_azimuth", num_azimuth, 1),
                     max_range=real("max_range", max_range, positive=True),
                     noise_std=real("noise_std", noise_std, 0.0), dropout=real("dropout", dropout, 0.0))  # fmt: skip
    root = Path(root)
    params = {
        "generator": "sparse3d.datasets.synth.kitti", "format": 1, "seed": int(seed), "num_azimuth": spec.num_azimuth, "max_range": spec.max_range,
        "noise_std": spec.noise_std, "dropout": spec.dropout, "min_points": int(min_points),
        "sensor_height": SENSOR_HEIGHT,
    }  # fmt: skip
    _prepare_root(root, params, overwrite)
    calib = kitti_like_calib()
    try:
        for i in tqdm(range(int(num_frames)), desc="kitti frames", unit="frame", disable=not progress):
            paths = _frame_paths(root, i)
            if all(p.is_file() for p in paths.values()):
                continue
            rng = np.random.default_rng([int(seed), i])
            frame = synthesize_frame(sample_kitti_scene(rng), calib, rng, spec, min_points=int(min_points))
            _atomic_write(paths["velodyne"], lambda p, f=frame: write_velodyne(p, f.points))
            _atomic_write(paths["calib"], lambda p: write_calib(p, calib))
            _atomic_write(paths["image_2"], lambda p, f=frame: write_png(p, f.image))
            _atomic_write(paths["label_2"], lambda p, f=frame: write_label(p, f.labels, decimals=2))  # as KITTI's
        splits: dict[str, list[str]] = {"train": [], "val": []}
        for i in range(int(num_frames)):
            splits["val" if is_val_frame(i, val_fraction) else "train"].append(f"{i:06d}")
        for name, ids in splits.items():
            _atomic_write(root / "ImageSets" / f"{name}.txt",
                          lambda p, ids=ids: p.write_text("".join(f"{x}\n" for x in ids)))  # fmt: skip
    finally:  # an interrupted run leaves only complete files (and resumes from them)
        shutil.rmtree(root / "training" / ".partial", ignore_errors=True)
        shutil.rmtree(root / ".partial", ignore_errors=True)
    return root
