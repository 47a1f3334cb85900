"""SparseFlex fitting: a sparse FlexiCubes surface optimised from depth, normal and mask renders of a target.

A per-scene method (run by :class:`sparse3d.train.scene_trainer.SceneTrainer` on a scene made from a mesh,
:func:`sparse3d.datasets.meshes.load_mesh_scene`): the target mesh is used only to render supervision (depth,
normals, anti-aliasing-free masks) with the same renderer and the same near/far section as the prediction.

How it works:

1. **Structure**: the target is rendered from every input camera; the hit points (with their normals facing the
   camera, or normals estimated and oriented from the points alone when ``init_normals="estimate"``, for open
   sheets seen from both sides) give a sparse band of cubes at ``resolution``³ and an initial signed distance
   (:func:`sparse3d.models.sparseflex.structure.grid_from_points`). Only these cubes exist, ever.
2. **Parameters** (FlexiCubes, Shen et al. 2023): a signed distance and a raw deformation per shared corner, raw
   β (12), α (8), γ (1) weights per cube; squashed inside :func:`sparse3d.kernels.flexicubes.extract_mesh`.
3. **Frustum-aware sections** (SparseFlex, He et al. 2025, §3.3): with ``section_ratio`` α < 1 each step keeps
   only the cubes whose centre lies in the camera's frustum and in a camera-depth window [n, f] holding about α
   of all cubes (a random window of the sorted depths; a margin of one voxel so no surface inside [n, f] is
   lost). Only those cubes are extracted, rendered and updated; the target is rendered with the same [n, f], so
   the prediction and the supervision show the same section (its borders are open by construction).
4. **Losses** (FlexiCubes' recipe): mask L1 (anti-aliased prediction) ×``w_mask``, masked depth L1 ×``w_depth``,
   normal L1 where both are hit ×``w_normal``, L_dev ×``w_dev``, weight L1 ×``w_weights``, and the SDF sign
   regulariser decayed linearly from ``w_sign[0]`` to ``w_sign[1]`` over the first quarter of the run. Adam with
   the learning rate decayed exponentially to ``lr_final`` × ``lr`` at the last step.

Outputs: :meth:`export` writes ``mesh.ply`` (inference extraction of every cube, in the input mesh's
coordinates) and ``field.npz`` (the structure and every parameter); :meth:`render` gives normal maps
(``0.5 + 0.5·n``, the scene's image encoding) for the trainer's PSNR; :meth:`summary` adds F-score/Chamfer
against the target (:func:`sparse3d.metrics.mesh.mesh_metrics`, point-to-surface distances, 100k samples, in the
unit box), face and open-boundary edge counts and the
peak RSS.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparse3d.cameras import Cameras
from sparse3d.utils.errors import UserError
from sparse3d.views import PosedImages

__all__ = ["FIELD_NAME", "MESH_NAME", "SparseFlexFit"]

MESH_NAME = "mesh.ply"
FIELD_NAME = "field.npz"
INIT_NORMALS = ("camera", "estimate")


class SparseFlexFit:
    """Fit a sparse FlexiCubes surface to one target from renders (see the module docstring).

    Args:
        resolution: cubes per axis of the unit box.
        default_steps: steps when the trainer does not set ``max_steps``.
        section_ratio: α, the fraction of cubes in a step's frustum section (1 = every cube every step).
        lr, lr_final: Adam learning rate of the deformations and weights, and its final fraction.
        lr_sdf: Adam learning rate of the signed distances in voxels (the rate is ``lr_sdf / resolution``: Adam
            moves every value by about its rate per step, so a rate in voxels keeps a step below a voxel at any
            resolution).
        w_mask, w_depth, w_normal, w_dev, w_weights: loss weights; ``w_sign``: SDF sign regulariser start, end.
        init_normals: ``camera`` (render normals facing the camera) or ``estimate`` (from the points alone).
        max_init_points: most back-projected points used to build the structure (a random subset beyond). The
            structure is the voxels holding a point, dilated by one: points sparser than the voxels leave holes
            in the band, and the extracted surface opens there, so the renders must resolve the voxel size and
            this cap must not thin them out (a 256³ ball with a cavity seen by 38 cameras at 256² needed 1.6 M).
        seed: the camera and section draws.
    """

    def __init__(self, resolution: int = 128, default_steps: int = 300, section_ratio: float = 1.0,
                 lr: float = 0.01, lr_final: float = 0.1, lr_sdf: float = 0.02, w_mask: float = 1.0, w_depth: float = 10.0,
                 w_normal: float = 1.0, w_dev: float = 0.5, w_weights: float = 0.1,
                 w_sign: Sequence[float] = (0.2, 0.01), init_normals: str = "camera",
                 max_init_points: int = 4_000_000, seed: int = 0) -> None:
        if not 8 <= int(resolution) <= 2048:
            raise ValueError(f"resolution must be in [8, 2048], got {resolution}")
        if not 0.0 < section_ratio <= 1.0 or not lr > 0 or not 0.0 < lr_final <= 1.0 or default_steps < 0:
            raise ValueError(f"section_ratio in (0, 1], lr > 0, lr_final in (0, 1], default_steps >= 0 required; got "
                             f"{section_ratio}, {lr}, {lr_final}, {default_steps}")
        if init_normals not in INIT_NORMALS or len(w_sign) != 2 or max_init_points < 1000:
            raise ValueError(f"init_normals must be one of {INIT_NORMALS}, w_sign two numbers, max_init_points >= "
                             f"1000; got {init_normals!r}, {list(w_sign)}, {max_init_points}")
        self.resolution = int(resolution)
        self.default_steps = int(default_steps)
        self.section_ratio = float(section_ratio)
        self.lr, self.lr_final, self.lr_sdf = float(lr), float(lr_final), float(lr_sdf)
        if not self.lr_sdf > 0:
            raise ValueError(f"lr_sdf must be > 0, got {lr_sdf}")
        self.w = {"mask": float(w_mask), "depth": float(w_depth), "normal": float(w_normal), "dev": float(w_dev),
                  "weights": float(w_weights)}
        self.w_sign = (float(w_sign[0]), float(w_sign[1]))
        self.init_normals = init_normals
        self.max_init_points = int(max_init_points)
        self.seed = int(seed)
        self.step = 0
        self.max_steps = 0
        self.params: torch.nn.ParameterDict | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.cubes: torch.Tensor | None = None
        self.corner_keys: torch.Tensor | None = None
        self.cube_corners: torch.Tensor | None = None
        self.cameras: Cameras | None = None
        self.target: Any = None
        self.normalization: Any = None
        self._target_ray_mesh: Any = None
        self._gt_cache: dict[int, Any] = {}
        self._mesh_cache: tuple[int, Any] | None = None
        self._rng = np.random.default_rng(self.seed)
        self.init_info: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------ set-up
    def setup(self, views: PosedImages, max_steps: int, mesh: Any = None, normalization: Any = None) -> None:
        """Build the structure from renders of ``mesh`` seen by ``views.cameras``; parameters start from it."""
        from sparse3d.kernels.flexicubes import cube_corner_table
        from sparse3d.kernels.ray_mesh import RayMesh
        from sparse3d.models.sparseflex.structure import Normalization, grid_from_points

        if mesh is None:
            raise UserError("sparseflex_fit needs a scene made from a mesh: use data=mesh_scene data.mesh=<file>")
        self.max_steps = int(max_steps)
        self.cameras = views.cameras.to("cpu")
        self.target = mesh
        self.normalization = normalization
        tv = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32)
        tf = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.int64)
        self._target = (tv, tf)
        self._target_ray_mesh = RayMesh(tv, tf)
        points, normals = self._backproject()
        grid = grid_from_points(points, normals if self.init_normals == "camera" else None, self.resolution,
                                normalization=Normalization.identity())
        self.cubes = torch.as_tensor(grid.cube_coords).long()
        self.corner_keys = torch.as_tensor(grid.corner_keys).long()
        self.cube_corners = torch.as_tensor(grid.cube_corners).long()
        keys, idx = cube_corner_table(self.cubes, self.resolution)
        if not torch.equal(keys, self.corner_keys):
            self.corner_keys, self.cube_corners = keys, idx
        n, v = len(self.cubes), len(self.corner_keys)
        self.params = torch.nn.ParameterDict({
            "sdf": torch.nn.Parameter(torch.as_tensor(grid.sdf, dtype=torch.float32).clone()),
            "deform": torch.nn.Parameter(torch.zeros(v, 3)),
            "beta": torch.nn.Parameter(torch.zeros(n, 12)),
            "alpha": torch.nn.Parameter(torch.zeros(n, 8)),
            "gamma": torch.nn.Parameter(torch.zeros(n)),
        })
        sdf_lr = self.lr_sdf / self.resolution
        self.optimizer = torch.optim.Adam(
            [{"params": [self.params["sdf"]], "lr": sdf_lr, "base_lr": sdf_lr},
             {"params": [self.params[k] for k in ("deform", "beta", "alpha", "gamma")], "lr": self.lr,
              "base_lr": self.lr}])
        self.init_info = {"resolution": self.resolution, "num_cubes": n, "num_corners": v,
                          "init_points": int(len(points)), "section_ratio": self.section_ratio}

    def _backproject(self) -> tuple[torch.Tensor, torch.Tensor]:
        """World points and camera-facing normals of the target seen by every input camera."""
        cams = self.cameras
        pts, nrm = [], []
        for i in range(len(cams)):
            gt = self._render_target(i, None, None)
            hit = gt.face >= 0
            if not bool(hit.any()):
                continue
            origins, dirs = cams.pixel_rays(i)
            forward = cams.R[i][2]
            depth = gt.depth[hit]
            d = dirs.reshape(cams.height, cams.width, 3)[hit]
            t = depth / (d @ forward)
            o = origins.reshape(cams.height, cams.width, 3)[hit]
            pts.append(o + t[:, None] * d)
            nrm.append(gt.normal[hit])
        if not pts:
            raise UserError("no input camera sees the target mesh")
        points, normals = torch.cat(pts).float(), torch.cat(nrm).float()
        if len(points) > self.max_init_points:
            keep = torch.from_numpy(self._rng.choice(len(points), self.max_init_points, replace=False))
            points, normals = points[keep], normals[keep]
        return points, normals

    # ------------------------------------------------------------------------------------------ rendering
    def _render_target(self, index: int, near: float | None, far: float | None) -> Any:
        from sparse3d.render.mesh_renderer import render_mesh

        cacheable = near is None and far is None
        if cacheable and index in self._gt_cache:
            return self._gt_cache[index]
        tv, tf = self._target
        with torch.no_grad():
            out = render_mesh(tv, tf, self.cameras, index, near=near, far=far, antialias=False,
                              ray_mesh=self._target_ray_mesh, face_camera=True)
        if cacheable:
            self._gt_cache[index] = out
        return out

    def _section(self, index: int) -> tuple[torch.Tensor, float | None, float | None]:
        """Cube indices of camera ``index``'s section and its [near, far] camera depths (None: everything)."""
        all_cubes = torch.arange(len(self.cubes))
        if self.section_ratio >= 1.0:
            return all_cubes, None, None
        h = 1.0 / self.resolution
        centres = (self.cubes.float() + 0.5) * h - 0.5
        uv, z = self.cameras[index].project(centres)
        uv, z = uv.reshape(-1, 2), z.reshape(-1)
        margin = self.cameras.K[index, 0, 0] * h / z.clamp_min(1e-6)
        inside = (z > 1e-4) & (uv[:, 0] > -margin) & (uv[:, 1] > -margin) \
            & (uv[:, 0] < self.cameras.width + margin) & (uv[:, 1] < self.cameras.height + margin)
        ids = all_cubes[inside]
        want = max(1, int(round(self.section_ratio * len(self.cubes))))
        if len(ids) <= want:
            return ids, None, None
        order = torch.argsort(z[ids])
        start = int(self._rng.integers(0, len(ids) - want + 1))
        window = order[start:start + want]
        zs = z[ids][window]
        near, far = float(zs.min()), float(zs.max())
        keep = inside & (z >= near - h) & (z <= far + h)
        return all_cubes[keep], near, far

    def _extract(self, cube_ids: torch.Tensor, training: bool) -> tuple[Any, torch.Tensor]:
        """The mesh of cubes ``cube_ids`` and the corner SDF tensor its edges index."""
        from sparse3d.kernels.flexicubes import cube_corner_table, extract_mesh

        p = self.params
        if len(cube_ids) == len(self.cubes):
            mesh = extract_mesh(self.cubes, self.resolution, p["sdf"], p["deform"], p["beta"], p["alpha"],
                                p["gamma"], training=training, corners=(self.corner_keys, self.cube_corners))
            return mesh, p["sdf"]
        cubes = self.cubes[cube_ids]
        keys, idx = cube_corner_table(cubes, self.resolution)
        gid = torch.searchsorted(self.corner_keys, keys)
        sdf = p["sdf"][gid]
        mesh = extract_mesh(cubes, self.resolution, sdf, p["deform"][gid], p["beta"][cube_ids],
                            p["alpha"][cube_ids], p["gamma"][cube_ids], training=training, corners=(keys, idx))
        return mesh, sdf

    def full_mesh(self) -> Any:
        """Inference extraction of every cube (cached per step)."""
        if self._mesh_cache is None or self._mesh_cache[0] != self.step:
            with torch.no_grad():
                self._mesh_cache = (self.step, self._extract(torch.arange(len(self.cubes)), training=False)[0])
        return self._mesh_cache[1]

    # ------------------------------------------------------------------------------------------ training
    def _sign_weight(self) -> float:
        ramp = max(1, int(0.25 * self.max_steps))
        frac = min(1.0, self.step / ramp)
        return self.w_sign[0] + (self.w_sign[1] - self.w_sign[0]) * frac

    def training_step(self, step: int) -> dict[str, Any]:
        """One camera's section: extract, render, losses, Adam step. The torch work is small glue between Warp
        launches, so it runs on one thread (:func:`sparse3d.kernels.runtime.serial_torch_ops`)."""
        from sparse3d.kernels.runtime import serial_torch_ops

        if self.params is None or self.optimizer is None:
            raise RuntimeError("setup() must run before training_step()")
        with serial_torch_ops():
            return self._training_step(step)

    def _training_step(self, step: int) -> dict[str, Any]:
        from sparse3d.kernels.flexicubes import sdf_sign_loss, weight_l1
        from sparse3d.render.mesh_renderer import render_mesh

        self.step = int(step)
        index = int(self._rng.integers(0, len(self.cameras)))
        cube_ids, near, far = self._section(index)
        mesh, sdf = self._extract(cube_ids, training=True)
        gt = self._render_target(index, near, far)
        gt_hit = (gt.face >= 0)
        if len(mesh.faces) == 0:
            pred_mask = torch.zeros_like(gt.depth)
            loss_mask = (pred_mask - gt_hit.float()).abs().mean()
            loss_depth = loss_normal = torch.zeros(())
            pred_hit = gt_hit & False
        else:
            pred = render_mesh(mesh.vertices, mesh.faces, self.cameras, index, near=near, far=far, antialias=True,
                               face_camera=True)
            pred_hit = pred.face >= 0
            loss_mask = (pred.mask - gt_hit.float()).abs().mean()
            both = pred_hit & gt_hit
            if bool(both.any()):
                loss_depth = (pred.depth[both] - gt.depth[both]).abs().sum() / gt_hit.sum().clamp_min(1)
                loss_normal = (pred.normal[both] - gt.normal[both]).abs().sum(-1).mean()
            else:
                loss_depth = loss_normal = torch.zeros(())
        p = self.params
        loss_dev = mesh.l_dev.mean() if len(mesh.l_dev) else torch.zeros(())
        loss_weights = weight_l1(p["beta"][cube_ids], p["alpha"][cube_ids])
        loss_sign = sdf_sign_loss(mesh, sdf)
        w = self.w
        loss = (w["mask"] * loss_mask + w["depth"] * loss_depth + w["normal"] * loss_normal + w["dev"] * loss_dev
                + w["weights"] * loss_weights + self._sign_weight() * loss_sign)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        decay = self.lr_final ** (1.0 / max(1, self.max_steps))
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * decay ** self.step
        self.optimizer.step()
        self.step += 1
        return {"loss": loss.detach(), "mask": loss_mask.detach(), "depth": loss_depth.detach(),
                "normal": loss_normal.detach(), "dev": loss_dev.detach(), "sign": loss_sign.detach(),
                "faces": float(len(mesh.faces)), "section_cubes": float(len(cube_ids))}

    # ------------------------------------------------------------------------------------------ outputs
    def render(self, cameras: Cameras) -> torch.Tensor:
        """Normal maps (1, H, W, 3) of the current surface: ``0.5 + 0.5·n`` facing the camera, black background."""
        from sparse3d.datasets.meshes import normal_images

        mesh = self.full_mesh()
        if len(mesh.faces) == 0:
            return torch.zeros(1, cameras.height, cameras.width, 3)
        images, _ = normal_images(mesh.vertices.detach().float(), mesh.faces, cameras.to("cpu")[0])
        return images

    def render_depth(self, cameras: Cameras) -> torch.Tensor:
        """(1, H, W) camera-z depth of the full extracted surface (:meth:`full_mesh`) seen by ``cameras[0]``, 0
        where no face is hit (:func:`sparse3d.render.mesh_renderer.render_mesh`, no anti-aliasing)."""
        from sparse3d.render.mesh_renderer import render_mesh

        mesh = self.full_mesh()
        if len(mesh.faces) == 0:
            return torch.zeros(1, cameras.height, cameras.width)
        with torch.no_grad():
            out = render_mesh(mesh.vertices.detach().float().cpu(), mesh.faces.detach().cpu(), cameras.to("cpu"), 0,
                              antialias=False)
        return out.depth[None].float()

    def _world_vertices(self, vertices: torch.Tensor) -> np.ndarray:
        v = vertices.detach().double().cpu().numpy()
        if self.normalization is None:
            return v.astype(np.float32)
        centre = np.asarray(self.normalization.center, dtype=np.float64).reshape(1, 3)
        return (v * float(self.normalization.scale) + centre).astype(np.float32)

    def export(self, out_dir: Path) -> list[Path]:
        """``mesh.ply`` (input coordinates) and ``field.npz`` (structure + parameters) in ``out_dir``."""
        from sparse3d.io.mesh import TriangleMesh, write_mesh
        from sparse3d.models.sparseflex.field_io import write_field

        mesh = self.full_mesh()
        out = Path(out_dir)
        mesh_path = write_mesh(out / MESH_NAME, TriangleMesh(self._world_vertices(mesh.vertices),
                                                              mesh.faces.detach().cpu().numpy().astype(np.int64)))
        field = {k: v.detach().cpu().numpy() for k, v in self.params.items()}
        field.update(resolution=np.int64(self.resolution), cube_coords=self.cubes.numpy().astype(np.int32))
        if self.normalization is not None:
            field.update(center=np.asarray(self.normalization.center, dtype=np.float64),
                         scale=np.float64(self.normalization.scale))
        field_path = write_field(out / FIELD_NAME, field)
        return [Path(mesh_path) if mesh_path is not None else out / MESH_NAME, field_path]

    def summary(self) -> dict[str, Any]:
        from sparse3d.io.mesh import TriangleMesh
        from sparse3d.metrics.mesh import mesh_metrics

        mesh = self.full_mesh()
        pred = TriangleMesh(mesh.vertices.detach().cpu().numpy().astype(np.float32),
                            mesh.faces.detach().cpu().numpy().astype(np.int64))
        info: dict[str, Any] = {**self.init_info, "faces": int(len(pred.faces)),
                                "boundary_edges": int(len(pred.boundary_edges())),
                                "target_boundary_edges": int(len(self.target.boundary_edges())),
                                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
        if len(pred.faces):
            info["mesh_metrics"] = mesh_metrics(pred, self.target, n_points=100_000, seed=0, distance="surface")
        return info

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        if self.params is None or self.optimizer is None:
            raise RuntimeError("setup() must run before state_dict()")
        return {"params": {k: v.detach().clone() for k, v in self.params.items()},
                "optimizer": self.optimizer.state_dict(), "cubes": self.cubes.clone(), "step": self.step,
                "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.params is None or self.optimizer is None:
            raise RuntimeError("setup() must run before load_state_dict()")
        if not torch.equal(torch.as_tensor(state["cubes"]), self.cubes):
            raise ValueError("the checkpoint's cube structure differs from this scene's (another mesh or resolution)")
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self._rng.bit_generator.state = state["rng"]
        self._mesh_cache = None
