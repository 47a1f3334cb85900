"""The synthetic SpaRe generator, read back through the SpaRe reader: layout, cameras, masks, splits, lighting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse3d.cameras import decompose_projection_matrix
from sparse3d.datasets.synth.shapes import FAMILIES, random_object, signed_volume
from sparse3d.datasets.synth.spare_scenes import META_NAME, generate_spare_scenes
from sparse3d.io.images import read_image
from sparse3d.io.spare import (
    NUM_RIG_VIEWS,
    camera_filename,
    image_filename,
    load_images,
    load_input_views,
    load_masks,
    load_scene,
    mask_filename,
    read_projection_matrix,
    read_split,
    split_filename,
)
from sparse3d.utils.errors import UserError

W, H = 80, 60
LIGHTINGS = (0, 3)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("spare") / "data"
    assert generate_spare_scenes(out, num_scenes=2, width=W, height=H, seed=7, lightings=LIGHTINGS,
                                 progress=False) == out
    return out


def _splits(root: Path) -> tuple[dict, dict]:
    return read_split(root / split_filename(1, "development")), read_split(root / split_filename(2, "development"))


def _meta(root: Path, scene: str) -> dict:
    return json.loads((root / scene / META_NAME).read_text())


def test_every_file_is_present_in_both_naming_schemes(root: Path) -> None:
    t1, t2 = _splits(root)
    assert list(t1) == list(t2) and len(t1) == 2
    assert {e.dataset for e in t1.values()} == {"Synthetic", "DTU"}
    for name, entry in t1.items():
        scene_dir = root / name
        prefix = "rect_" if entry.dataset == "DTU" else "cam_"
        pngs = sorted(p.name for p in scene_dir.glob("*.png"))
        assert len(pngs) == NUM_RIG_VIEWS * len(LIGHTINGS) and all(p.startswith(prefix) for p in pngs)
        for v in range(NUM_RIG_VIEWS):
            for k in LIGHTINGS:
                assert (scene_dir / image_filename(entry.dataset, v, k)).is_file()
            assert (scene_dir / "masks" / mask_filename(entry.dataset, v)).is_file()
            assert (scene_dir / "cameras" / camera_filename(v)).is_file()
        assert read_image(scene_dir / image_filename(entry.dataset, 0, 3)).shape == (H, W, 3)


def test_projection_matrices_decompose_and_see_the_object(root: Path) -> None:
    t1, _ = _splits(root)
    for name, entry in t1.items():
        meta = _meta(root, name)
        scene = load_scene(root, entry)
        assert scene.views == tuple(range(NUM_RIG_VIEWS))
        assert (scene.cameras.width, scene.cameras.height) == (W, H)
        for v in range(NUM_RIG_VIEWS):
            P = read_projection_matrix(scene.directory / "cameras" / camera_filename(v))
            K, R, t = decompose_projection_matrix(P)
            recomposed = K @ np.concatenate([R, t[:, None]], axis=1)
            np.testing.assert_allclose(recomposed / recomposed[2, 3], P / P[2, 3], rtol=1e-9, atol=1e-9)
            assert K[0, 0] == pytest.approx(1.8 * W, rel=1e-6) and abs(K[0, 1]) < 1e-6
            assert np.linalg.det(R) == pytest.approx(1.0)
        centre = torch.tensor([meta["center"]], dtype=torch.float32)
        uv, depth = scene.cameras.project(centre)
        assert (depth > 0).all()
        assert ((uv[..., 0] > 0) & (uv[..., 0] < W) & (uv[..., 1] > 0) & (uv[..., 1] < H)).all()
        # every camera looks at the object: optical axis within a few degrees of the direction to its centre
        to_obj = centre - scene.cameras.centers
        cos = (to_obj / to_obj.norm(dim=1, keepdim=True) * scene.cameras.R[:, 2, :]).sum(1)
        assert (cos > np.cos(np.deg2rad(4.0))).all()


def test_masks_are_the_object_inside_its_projected_bounding_box(root: Path) -> None:
    t1, _ = _splits(root)
    for name, entry in t1.items():
        meta = _meta(root, name)
        scene = load_scene(root, entry)
        masks = load_masks(scene, list(range(NUM_RIG_VIEWS)))
        assert masks is not None and masks.shape == (NUM_RIG_VIEWS, H, W)
        lo, hi = np.array(meta["bbox_min"]), np.array(meta["bbox_max"])
        corners = torch.tensor([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])],
                               dtype=torch.float32)
        uv, depth = scene.cameras.project(corners)
        assert (depth > 0).all()
        for v in range(NUM_RIG_VIEWS):
            rows, cols = torch.nonzero(masks[v], as_tuple=True)
            assert len(rows) > 20, f"{name} view {v}: mask nearly empty"
            u0, v0 = uv[v].min(0).values.tolist()
            u1, v1 = uv[v].max(0).values.tolist()
            # every mask pixel centre lies in the 2-D box of the projected 3-D box corners
            assert cols.min() + 0.5 >= u0 - 1e-3 and cols.max() + 0.5 <= u1 + 1e-3
            assert rows.min() + 0.5 >= v0 - 1e-3 and rows.max() + 0.5 <= v1 + 1e-3
            # and the object fills a fair part of that box (it is not a speck)
            assert (cols.max() - cols.min() + 1) >= 0.3 * (u1 - u0) or (rows.max() - rows.min() + 1) >= 0.3 * (v1 - v0)


def test_splits_follow_the_benchmark_rules(root: Path) -> None:
    t1, t2 = _splits(root)
    for name in t1:
        a, b = t1[name], t2[name]
        assert len(a.input_views) == 3 and len(b.input_views) == 9
        assert set(a.input_views) <= set(b.input_views)
        assert not set(a.input_views) & set(a.test_views) and not set(b.input_views) & set(b.test_views)
        assert len(a.test_views) == len(b.test_views) == 10
        assert a.dataset == b.dataset
        scene = load_scene(root, a)
        posed = load_input_views(scene, a)
        assert posed.images.shape == (3, H, W, 3) and posed.masks is not None and posed.masks.any()
        fwd = scene.cameras_for(a.input_views).R[:, 2, :]
        cos = fwd @ fwd.T
        assert (cos[~torch.eye(3, dtype=torch.bool)] < np.cos(np.deg2rad(15.0)) + 1e-6).all()
        assert load_images(scene, list(b.test_views)).shape == (10, H, W, 3)


def test_all_lights_on_is_brighter_than_a_single_light(root: Path) -> None:
    t1, _ = _splits(root)
    for entry in t1.values():
        scene = load_scene(root, entry)
        views = list(range(0, NUM_RIG_VIEWS, 4))
        all_on = load_images(scene, views, lighting=3)
        single = load_images(scene, views, lighting=0)
        assert all_on.mean() > single.mean() + 0.05
        assert all_on.mean() < 0.95  # not blown out


def test_same_seed_same_scene_and_other_seed_differs(tmp_path: Path) -> None:
    kw = dict(num_scenes=1, width=32, height=24, lightings=[3], progress=False, naming="DTU")
    a = generate_spare_scenes(tmp_path / "a", seed=3, **kw)
    b = generate_spare_scenes(tmp_path / "b", seed=3, **kw)
    c = generate_spare_scenes(tmp_path / "c", seed=4, **kw)
    name = "scan1"
    assert (a / name / "cameras" / "pos_007.txt").read_text() == (b / name / "cameras" / "pos_007.txt").read_text()
    img = image_filename("DTU", 6, 3)
    np.testing.assert_array_equal(read_image(a / name / img), read_image(b / name / img))
    assert (a / name / "cameras" / "pos_007.txt").read_text() != (c / name / "cameras" / "pos_007.txt").read_text()


def test_bad_arguments_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        generate_spare_scenes(tmp_path / "full", num_scenes=1, width=32, height=24, progress=False)
    with pytest.raises(UserError, match="must include 3"):
        generate_spare_scenes(tmp_path / "a", num_scenes=1, lightings=[0, 1], progress=False)
    with pytest.raises(UserError, match="lightings"):
        generate_spare_scenes(tmp_path / "a", num_scenes=1, lightings=[3, 7], progress=False)
    with pytest.raises(UserError, match="naming"):
        generate_spare_scenes(tmp_path / "a", num_scenes=1, naming="Blender", progress=False)
    with pytest.raises(UserError, match="families"):
        generate_spare_scenes(tmp_path / "a", num_scenes=1, families=["teapot"], progress=False)
    with pytest.raises(UserError, match="num_scenes"):
        generate_spare_scenes(tmp_path / "a", num_scenes=0, progress=False)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_objects_are_closed_outward_sized_and_standing(family: str) -> None:
    obj = random_object(11, family=family, size=0.3)
    assert obj.family == family and obj.size == pytest.approx(0.3)
    all_v = np.concatenate([p.vertices for p in obj.parts])
    np.testing.assert_allclose(all_v.min(0), obj.bbox_min, atol=1e-6)
    np.testing.assert_allclose(all_v.max(0), obj.bbox_max, atol=1e-6)
    assert obj.bbox_min[2] == pytest.approx(0.0, abs=1e-6)  # stands on z = 0
    assert abs(obj.center[0]) < 1e-6 and abs(obj.center[1]) < 1e-6
    for part in obj.parts:
        assert signed_volume(part.vertices, part.faces) > 0  # counter-clockwise = outward
        edges = np.sort(np.concatenate([part.faces[:, [0, 1]], part.faces[:, [1, 2]], part.faces[:, [2, 0]]]), 1)
        _, counts = np.unique(edges, axis=0, return_counts=True)
        assert (counts == 2).all()  # closed 2-manifold: every edge shared by exactly two triangles
        assert part.colors.min() >= 0 and part.colors.max() <= 1 and part.colors.std() > 0.01  # textured
        assert part.texture is not None
        np.testing.assert_allclose(part.texture(part.vertices), part.colors, atol=1e-6)
    again = random_object(11, family=family, size=0.3)
    np.testing.assert_array_equal(again.parts[0].vertices, obj.parts[0].vertices)
    np.testing.assert_array_equal(again.parts[0].colors, obj.parts[0].colors)
