"""TensorBoard images of the per-scene loop: render | ground truth | depth when the method renders depth, and
the ``render_depth`` of 3DGS and of the SparseFlex fit against analytic depths."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from sparse3d.cameras import Cameras
from sparse3d.train.scene_trainer import SceneTrainer
from sparse3d.views import PosedImages, SceneViews

H, W = 12, 16
NEAR, FAR = 2.0, 5.0


def _cameras(n: int = 1, f: float = 20.0) -> Cameras:
    K = torch.tensor([[[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]]])
    return Cameras(K=K.repeat(n, 1, 1), viewmat=torch.eye(4).repeat(n, 1, 1), width=W, height=H)


def _views(n: int = 2) -> PosedImages:
    images = torch.tensor([0.1, 0.5, 0.9]).expand(n, H, W, 3).clone()
    return PosedImages(images, _cameras(n), None, "toy", tuple(f"v{i}.png" for i in range(n)))


def _known_depth() -> torch.Tensor:
    """Left half at NEAR, right half at FAR, the top row empty (0), one pixel half-way."""
    d = torch.full((H, W), FAR)
    d[:, : W // 2] = NEAR
    d[0] = 0.0
    d[5, 3] = (NEAR + FAR) / 2
    return d


class FlatMethod:
    """A constant grey render; with ``depth`` also the known depth map."""

    default_steps = 2

    def __init__(self, depth: bool) -> None:
        if depth:
            self.render_depth = lambda cameras: _known_depth()[None].clone()

    def setup(self, views: PosedImages, max_steps: int) -> None:
        self.x = torch.zeros(1, requires_grad=True)

    def training_step(self, step: int) -> Mapping[str, Any]:
        return {"loss": (self.x - 1).square().sum()}

    def render(self, cameras: Cameras) -> torch.Tensor:
        return torch.full((len(cameras), cameras.height, cameras.width, 3), 0.25)

    def state_dict(self) -> dict[str, Any]:
        return {"x": self.x.detach().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.x = state["x"].clone().requires_grad_(True)

    def export(self, out_dir: Path) -> list[Path]:
        return []


class RecordingWriter:
    def __init__(self) -> None:
        self.images: list[tuple[str, torch.Tensor]] = []

    def add_image(self, tag: str, image: Any, step: int) -> None:
        self.images.append((tag, torch.as_tensor(image)))


def _inferno(index: int) -> np.ndarray:
    """Entry ``index`` of OpenCV's inferno table as RGB in [0, 1] (the oracle of the depth colouring)."""
    bgr = cv2.applyColorMap(np.array([[index]], np.uint8), cv2.COLORMAP_INFERNO)[0, 0]
    return bgr[::-1].astype(np.float32) / 255.0


def test_depth_panel_is_logged_with_fixed_colouring(tmp_path: Path) -> None:
    trainer = SceneTrainer({"device": "cpu", "progress": False}, tmp_path)
    writer = RecordingWriter()
    views = _views()
    trainer._log_images(FlatMethod(depth=True), views, writer)  # type: ignore[arg-type]
    (tag, image), = writer.images
    assert tag == "render|gt|depth"
    assert tuple(image.shape) == (H, 3 * W, 3)
    render, gt, depth = image[:, :W], image[:, W:2 * W], image[:, 2 * W:]
    assert torch.allclose(render, torch.full_like(render, 0.25))
    assert torch.equal(gt, views.images[0])
    depth = depth.numpy()
    # nearest valid depth -> brightest entry (255), farthest -> darkest (0), linear in between, empty -> black
    assert np.allclose(depth[3, 1], _inferno(255)) and np.allclose(depth[7, W - 1], _inferno(0))
    assert np.allclose(depth[5, 3], _inferno(128))
    assert np.all(depth[0] == 0.0)
    assert depth[3, 1].sum() > depth[7, W - 1].sum() + 1.0  # near is bright


def test_without_render_depth_two_panels(tmp_path: Path) -> None:
    trainer = SceneTrainer({"device": "cpu", "progress": False}, tmp_path)
    writer = RecordingWriter()
    trainer._log_images(FlatMethod(depth=False), _views(), writer)  # type: ignore[arg-type]
    (tag, image), = writer.images
    assert tag == "render|gt" and tuple(image.shape) == (H, 2 * W, 3)


def test_bad_render_depth_shape_is_named(tmp_path: Path) -> None:
    method = FlatMethod(depth=False)
    method.render_depth = lambda cameras: torch.zeros(H, W)  # type: ignore[attr-defined]
    trainer = SceneTrainer({"device": "cpu", "progress": False}, tmp_path)
    with pytest.raises(ValueError, match="render_depth returned"):
        trainer._log_images(method, _views(), RecordingWriter())  # type: ignore[arg-type]


def test_fit_writes_depth_image_to_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scene = SceneViews(_views(2), _views(1))
    SceneTrainer({"device": "cpu", "progress": False, "tensorboard": True, "export": False,
                  "save_renders": False}, tmp_path).fit(FlatMethod(depth=True), scene)
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert "render|gt|depth" in acc.Tags()["images"]
    event = acc.Images("render|gt|depth")[-1]
    assert (event.width, event.height) == (3 * W, H)


def test_gs3d_render_depth_of_one_opaque_gaussian() -> None:
    from sparse3d.models.splatting.gaussians import GaussianModel
    from sparse3d.models.splatting.gs3d import GaussianSplatting

    z = 3.0
    method = GaussianSplatting(densify=None)
    method.setup(_views(), 10)
    method.model = GaussianModel(torch.tensor([[0.0, 0.0, z]]), torch.full((1, 3), np.log(0.2)),
                                 torch.tensor([[1.0, 0, 0, 0]]), torch.tensor([6.0]), torch.zeros(1, 1, 3),
                                 torch.zeros(1, 3, 3))
    depth = method.render_depth(_cameras())
    assert tuple(depth.shape) == (1, H, W)
    # the Gaussian sits on the optical axis: the central pixels reach opacity 1/2 at its camera z; the
    # corners (about 6 standard deviations away) never do
    assert torch.allclose(depth[0, H // 2 - 1: H // 2 + 1, W // 2 - 1: W // 2 + 1], torch.tensor(z), atol=1e-4)
    assert depth[0, 0, 0] == 0 and depth[0, -1, -1] == 0


def test_sparseflex_render_depth_of_a_sphere() -> None:
    from sparse3d.models.sparseflex.fit import SparseFlexFit
    from sparse3d.models.sparseflex.structure import grid_from_sdf_volume

    res, radius = 24, 0.3
    axis = np.linspace(-0.5, 0.5, res + 1)
    x, y, zz = np.meshgrid(axis, axis, axis, indexing="ij")
    grid = grid_from_sdf_volume(np.sqrt(x**2 + y**2 + zz**2) - radius)
    fit = SparseFlexFit(resolution=res)
    fit.cubes = torch.as_tensor(grid.cube_coords).long()
    fit.corner_keys, fit.cube_corners = grid.corner_keys.long(), grid.cube_corners.long()
    n, v = len(fit.cubes), len(fit.corner_keys)
    fit.params = torch.nn.ParameterDict({
        "sdf": torch.nn.Parameter(grid.sdf.clone()), "deform": torch.nn.Parameter(torch.zeros(v, 3)),
        "beta": torch.nn.Parameter(torch.zeros(n, 12)), "alpha": torch.nn.Parameter(torch.zeros(n, 8)),
        "gamma": torch.nn.Parameter(torch.zeros(n))})
    cam = Cameras(K=_cameras().K, viewmat=torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2], [0, 0, 0, 1]]]),
                  width=W, height=H)  # at z = -2 looking along +z at the sphere
    depth = fit.render_depth(cam)
    assert tuple(depth.shape) == (1, H, W)
    centre = depth[0, H // 2, W // 2]
    assert abs(float(centre) - (2.0 - radius)) < 1.0 / res  # within a voxel of the sphere's front
    assert depth[0, 0, 0] == 0  # the corner ray misses the sphere
