"""Depth priors of ``sparse3d.models.splatting.depth_priors``.

Oracles: the generator's ray-cast depth of a synthetic forward-facing scene (``synth_posed_scene`` rendered with
``MeshRaycaster``, the same images and depths the LLFF writer uses); the closed-form frustum overlap and parallax
bounds of a parallel stereo pair; for Depth Anything, the in-memory model that was saved (a tiny randomly
initialised one built from a config) run directly on the same input.
"""

from __future__ import annotations

import importlib.resources
import inspect
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sparse3d.cameras import Cameras, look_at
from sparse3d.datasets.synth.posed_scenes import AMBIENT, synth_posed_scene
from sparse3d.models.splatting.depth_priors import (
    DepthAnythingPrior,
    PlaneSweepDepthPrior,
    frustum_depth_range,
    import_transformers,
)
from sparse3d.render.mesh_raycast import MeshRaycaster, compose_layers
from sparse3d.utils.errors import UserError
from sparse3d.views import PosedImages


def _synthetic_views(width: int, height: int, index: int) -> tuple[PosedImages, torch.Tensor]:
    """Three views of generated scene ``index`` (seed 0) and their true camera-z depth (inf on misses)."""
    scene = synth_posed_scene(0, index, width, height, num_views=3)
    raycaster = MeshRaycaster(scene.meshes)
    images, depths = [], []
    for v in range(3):
        layers = raycaster.render_layers(scene.cameras, v, scene.lights, shadows=True)
        images.append(compose_layers(layers, np.ones(len(scene.lights)), AMBIENT))
        depths.append(layers.depth)
    views = PosedImages(torch.from_numpy(np.stack(images)).float(), scene.cameras, scene=scene.name)
    return views, torch.from_numpy(np.stack(depths))


def test_plane_sweep_prior_on_generated_scene() -> None:
    views, truth = _synthetic_views(200, 150, index=1)
    prior = PlaneSweepDepthPrior(num_depths=64)
    for r in range(3):  # the derived range covers the scene's depths
        near, far = prior.depth_range(views.cameras, r, prior.sources(views.cameras, r))
        finite = truth[r][torch.isfinite(truth[r])]
        assert near <= float(finite.quantile(0.02)) and far >= float(finite.quantile(0.98))
    out = prior(views)
    assert out.kind == "depth" and out.values.shape == (3, 150, 200) == out.confidence.shape
    assert float(out.confidence.min()) >= 0.0 and float(out.confidence.max()) <= 1.0
    rel = (out.values - truth).abs() / truth
    confident = (out.confidence > 0.5) & torch.isfinite(truth)
    assert float(confident.float().mean()) > 0.05
    assert float(rel[confident].median()) < 0.02
    assert float((rel[confident] < 0.05).float().mean()) > 0.7
    # The confidence is informative: unconfident pixels are far worse.
    unsure = (out.confidence < 0.05) & torch.isfinite(truth)
    assert float(rel[unsure].median()) > 5 * float(rel[confident].median())


def test_plane_sweep_prior_given_range_and_errors() -> None:
    views, _ = _synthetic_views(48, 36, index=2)
    prior = PlaneSweepDepthPrior(num_depths=8, near=0.5, far=9.0, max_sources=1, top_k=3)
    assert prior.sources(views.cameras, 0) == [int(np.argsort(
        (views.cameras.centers - views.cameras.centers[0]).norm(dim=-1).numpy(), kind="stable")[1])]
    out = prior(views)
    assert float(out.values.min()) >= 0.5 - 1e-5 and float(out.values.max()) <= 9.0 + 1e-4
    one = PosedImages(views.images[:1], views.cameras[0])
    with pytest.raises(UserError, match="at least 2 input views"):
        prior(one)
    with pytest.raises(UserError, match="near and far"):
        PlaneSweepDepthPrior(near=1.0)
    with pytest.raises(UserError, match="max_sources"):
        PlaneSweepDepthPrior(max_sources=0)


def test_frustum_range_of_parallel_pair() -> None:
    # Two parallel cameras, baseline B along x: a ray of ref column u enters the source image at z = f B / u
    # and its parallax f B / z falls below 1 px at z = f B (axes parallel: no convergence bound).
    f, B, W, H, grid = 50.0, 0.3, 64, 48, 9
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]])
    R = look_at(np.zeros(3), np.array([0.0, 1.0, 0.0]))
    centres = [np.zeros(3), R.T @ np.array([B, 0.0, 0.0])]  # the second camera B to the ref camera's right
    cams = Cameras.from_Rt(np.stack([K, K]), np.stack([R, R]), np.stack([-R @ c for c in centres]), W, H)
    near, far = frustum_depth_range(cams, 0, [1], grid=grid)
    step = 10 ** (6 / 511)  # the candidate depths' ratio
    u_max = (grid - 0.5) / grid * W
    assert f * B / u_max / step <= near <= f * B / u_max * step
    assert f * B / step <= far <= f * B * step
    # Cameras looking away from each other never overlap.
    R2 = look_at(np.zeros(3), np.array([0.0, -1.0, 0.0]))
    away = Cameras.from_Rt(np.stack([K, K]), np.stack([R, R2]), np.stack([np.zeros(3), -R2 @ centres[1]]), W, H)
    with pytest.raises(UserError, match="give near and far"):
        frustum_depth_range(away, 0, [1])


# ------------------------------------------------------------------------------------------ Depth Anything
def _tiny_depth_anything(folder: Path) -> torch.nn.Module:
    pytest.importorskip("transformers")
    transformers = import_transformers()
    torch.manual_seed(0)
    backbone = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=56,
        patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"], reshape_hidden_states=False,
    )
    config = transformers.DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16, head_hidden_size=8, patch_size=14,
    )
    model = transformers.DepthAnythingForDepthEstimation(config).eval()
    model.save_pretrained(folder)
    transformers.DPTImageProcessor(
        do_resize=True, size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
        do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return model


def test_depth_anything_loads_local_tiny_model(tmp_path: Path) -> None:
    original = _tiny_depth_anything(tmp_path / "weights")
    prior = DepthAnythingPrior(tmp_path / "weights")
    torch.manual_seed(1)
    K = np.array([[40.0, 0.0, 30.0], [0.0, 40.0, 20.0], [0.0, 0.0, 1.0]])
    cams = Cameras.from_Rt(np.stack([K, K]), np.stack([np.eye(3)] * 2), np.array([[0.0, 0, 0], [0.1, 0, 0]]), 60, 40)
    views = PosedImages(torch.rand(2, 40, 60, 3), cams)
    out = prior(views)
    assert out.kind == "relative_disparity"
    assert out.values.shape == (2, 40, 60) and torch.equal(out.confidence, torch.ones(2, 40, 60))
    # Oracle: the saved in-memory model on the processor's input, resized back the same way.
    inputs = prior.processor(images=views.images[0].permute(2, 0, 1), return_tensors="pt", do_rescale=False)
    assert inputs["pixel_values"].shape[-2:] == (42, 56)  # aspect kept, multiples of 14
    with torch.no_grad():
        raw = original(pixel_values=inputs["pixel_values"]).predicted_depth
    want = torch.nn.functional.interpolate(raw[:, None], size=(40, 60), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(out.values[0], want, atol=1e-5, rtol=1e-5)
    assert float(out.values[0].std()) > 0  # a real prediction, not a constant


def test_depth_anything_missing_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        DepthAnythingPrior(tmp_path / "nope")
    assert "nope" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json") as err:
        DepthAnythingPrior(tmp_path / "empty")
    assert "\n" not in str(err.value)


def test_depth_anything_without_transformers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "preprocessor_config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    with pytest.raises(UserError, match="transformers") as err:
        DepthAnythingPrior(folder)
    assert "\n" not in str(err.value)


def test_depth_anything_bad_weights_folder(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    import_transformers()
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "depth_anything"}')
    (folder / "preprocessor_config.json").write_text("{}")
    with pytest.raises(UserError, match="cannot load") as err:
        DepthAnythingPrior(folder)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------- configs
def test_depth_prior_configs(tmp_path: Path) -> None:
    group = importlib.resources.files("sparse3d.configs").joinpath("depth_prior")
    cfg = OmegaConf.load(str(group.joinpath("plane_sweep.yaml")))
    prior = instantiate(cfg)
    assert isinstance(prior, PlaneSweepDepthPrior)
    defaults = inspect.signature(PlaneSweepDepthPrior).parameters
    for key, value in cfg.items():  # the YAML states the class defaults
        if key != "_target_":
            assert defaults[str(key)].default == value, key
    da = OmegaConf.load(str(group.joinpath("depth_anything.yaml")))
    assert OmegaConf.is_missing(da, "weights_dir")
    da.weights_dir = str(tmp_path / "nope")
    with pytest.raises(Exception, match="is not a folder"):
        instantiate(da)
