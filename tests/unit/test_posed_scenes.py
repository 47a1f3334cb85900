"""Standard sparse-view splits, the scene loaders of ``sparse3d.datasets.posed_scenes``, and generator -> reader
round trips for the LLFF, nerfstudio and COLMAP writers of ``sparse3d.datasets.synth.posed_scenes``.

Oracles: the published split indices (fern: test {0, 8, 16}, inputs {1, 10, 19}; DTU's pixelNeRF lists); the
generator's in-memory cameras (``synth_posed_scene``) against what each reader gets back from the files;
pycolmap's parser on the generated COLMAP text; reprojection of the generated sparse points (their colours are
the pixels they were lifted from; LLFF's world change keeps their pixels).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse3d.cameras import Cameras
from sparse3d.datasets.posed_scenes import (
    dtu_split,
    holdout_split,
    load_colmap_scene,
    load_dtu_scene,
    load_llff_scene,
    load_nerfstudio_scene,
    split_views,
)
from sparse3d.datasets.synth.posed_scenes import META_NAME, generate_posed_scenes, synth_posed_scene
from sparse3d.datasets.synth.spare_scenes import generate_spare_scenes
from sparse3d.io.colmap import model_views, read_colmap_model
from sparse3d.io.llff import read_llff
from sparse3d.io.nerfstudio import read_transforms
from sparse3d.io.pointcloud import write_ply_points
from sparse3d.utils.errors import UserError

W, H, VIEWS = 48, 36, 20


def _assert_same_cameras(got: Cameras, expected: Cameras) -> None:
    assert (got.width, got.height) == (expected.width, expected.height)
    torch.testing.assert_close(got.K, expected.K, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got.viewmat, expected.viewmat, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("posed")
    return {fmt: generate_posed_scenes(base / fmt, format=fmt, num_views=VIEWS, width=W, height=H, factors=[2, 4],
                                       num_points=300, progress=False)
            for fmt in ("llff", "nerfstudio", "colmap")}


# ---------------------------------------------------------------------------------------------------- splits
def test_llff_split_on_20_views_is_ferns() -> None:
    assert holdout_split(20) == ([1, 10, 19], [0, 8, 16])
    assert split_views(20, "llff") == ([1, 10, 19], [0, 8, 16])
    inputs, test = split_views(34, "llff")  # flower-sized: rest has 29 views, linspace(0, 28, 3) = 0, 14, 28
    assert test == [0, 8, 16, 24, 32] and inputs == [1, 17, 33]


def test_every_nth_split_keeps_all_or_k_remaining_views() -> None:
    assert split_views(10, "every_nth", num_train=None, test_every=4) == ([1, 2, 3, 5, 6, 7, 9], [0, 4, 8])
    assert split_views(10, "every_nth", num_train=2, test_every=4) == ([1, 9], [0, 4, 8])


def test_dtu_split_is_pixelnerfs() -> None:
    inputs, test = dtu_split(3)
    assert inputs == [25, 22, 28]
    assert test == [1, 2, 9, 10, 11, 12, 14, 15, 23, 24, 26, 27, 29, 30, 31, 32, 33, 34, 35, 41, 42, 43, 45, 46, 47]
    assert dtu_split(9)[0] == [25, 22, 28, 40, 44, 48, 0, 8, 13] and dtu_split(9)[1] == test


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: split_views(20, "llff", test_every=4), "split=every_nth"),
        (lambda: split_views(20, "random"), "unknown split"),
        (lambda: split_views(20, "every_nth", num_train=18), "num_train must be in 1..17"),
        (lambda: split_views(20, "every_nth", test_every=1), "test_every must be >= 2"),
        (lambda: split_views(20, "dtu"), "needs the 49 DTU views"),
        (lambda: dtu_split(10), "num_train must be in 1..9"),
    ],
)
def test_bad_split_options_are_user_errors(call, message: str) -> None:
    with pytest.raises(UserError, match=message):
        call()


# ------------------------------------------------------------------------------------------ round trips
def test_llff_round_trip_gives_the_generators_cameras(generated: dict[str, Path]) -> None:
    scene = synth_posed_scene(0, 0, W, H, VIEWS)
    folder = generated["llff"] / scene.name
    raw = read_llff(folder, factor=None, rescale=False)
    _assert_same_cameras(raw.files.cameras, scene.cameras)
    _assert_same_cameras(read_llff(folder, factor=2, rescale=False).files.cameras, scene.cameras.resized(24, 18))
    scaled = read_llff(folder, factor=4, rescale=True)
    assert scaled.bounds.min() == pytest.approx(4.0 / 3.0)
    torch.testing.assert_close(scaled.files.cameras.centers, scaled.scale * scene.cameras.centers, atol=1e-5, rtol=1e-5)
    # bounds are the 0.1 / 99.9 % depth percentiles: the object centre lies between them in every view
    depth = scene.cameras.project(torch.from_numpy(scene.obj.center).float()[None])[1][:, 0].numpy()
    assert np.all((raw.bounds[:, 0] < depth) & (depth < raw.bounds[:, 1]))


def test_nerfstudio_round_trip_gives_the_generators_cameras(generated: dict[str, Path]) -> None:
    scene = synth_posed_scene(0, 0, W, H, VIEWS)
    path = generated["nerfstudio"] / scene.name / "transforms.json"
    _assert_same_cameras(read_transforms(path).files.cameras, scene.cameras)
    _assert_same_cameras(read_transforms(path, downscale=4).files.cameras, scene.cameras.resized(12, 9))
    data = json.loads(path.read_text())
    assert data["camera_model"] == "OPENCV" and data["k1"] == 0.0 and len(data["frames"]) == VIEWS


def test_colmap_round_trip_gives_the_generators_cameras_and_visible_points(generated: dict[str, Path]) -> None:
    scene = synth_posed_scene(0, 0, W, H, VIEWS)
    folder = generated["colmap"] / scene.name
    model = read_colmap_model(folder / "sparse" / "0")
    views = model_views(model, folder / "images")
    _assert_same_cameras(views.cameras, scene.cameras)
    assert views.distorted_views() == []
    pts = model.points
    assert len(pts) > 100 and pts.rgb.min() >= 0.0 and pts.rgb.max() <= 1.0
    # every point is in front of every camera that lists it, inside the image: the written 2-D observations
    # equal the projections with the cameras read back
    lines = [ln for ln in (folder / "sparse" / "0" / "images.txt").read_text().splitlines() if not ln.startswith("#")]
    by_name = {n: i for i, n in enumerate(views.names)}
    xyz = {int(i): p for i, p in zip(pts.ids, pts.xyz, strict=True)}
    checked = 0
    for header, obs in zip(lines[0::2], lines[1::2], strict=True):
        v = by_name[header.split()[9]]
        values = np.array(obs.split(), dtype=np.float64).reshape(-1, 3)
        if not len(values):
            continue
        uv, depth = views.cameras[v].project(torch.tensor(np.stack([xyz[int(k)] for k in values[:, 2]])))
        assert bool((depth > 0).all())
        np.testing.assert_allclose(uv[0].numpy(), values[:, :2], atol=2e-3)
        checked += len(values)
    assert checked >= len(pts)  # each point is observed at least in the view it was lifted from


def test_generated_colmap_text_parses_the_same_in_pycolmap(generated: dict[str, Path]) -> None:
    pycolmap = pytest.importorskip("pycolmap")
    scene = synth_posed_scene(0, 0, W, H, VIEWS)
    folder = generated["colmap"] / scene.name / "sparse" / "0"
    ours, rec = read_colmap_model(folder), pycolmap.Reconstruction(str(folder))
    assert rec.num_images() == len(ours.images) and rec.num_points3D() == len(ours.points)
    for image_id, image in ours.images.items():
        pose = rec.images[image_id].cam_from_world()
        np.testing.assert_allclose(np.asarray(pose.matrix())[:, :3], image.rotation(), atol=1e-9)
        np.testing.assert_allclose(np.asarray(pose.matrix())[:, 3], image.tvec, atol=1e-9)
    assert rec.compute_mean_reprojection_error() < 1e-3


def test_generator_is_deterministic_and_refuses_a_non_empty_root(tmp_path: Path, generated: dict[str, Path]) -> None:
    again = generate_posed_scenes(tmp_path / "again", format="llff", num_views=VIEWS, width=W, height=H,
                                  factors=[2, 4], num_points=300, progress=False)
    name = synth_posed_scene(0, 0, W, H, VIEWS).name
    for rel in ("poses_bounds.npy", "images/image_007.png", "images_4/image_019.png", "sparse/0/points3D.txt"):
        assert (again / name / rel).read_bytes() == (generated["llff"] / name / rel).read_bytes(), rel
    meta = json.loads((again / name / META_NAME).read_text())
    assert meta["format"] == "llff" and meta["num_views"] == VIEWS and meta["factors"] == [2, 4]
    with pytest.raises(UserError, match="not empty"):
        generate_posed_scenes(again, format="llff", width=W, height=H, progress=False)
    with pytest.raises(UserError, match="format must be one of"):
        generate_posed_scenes(tmp_path / "x", format="blender", width=W, height=H, progress=False)


# ---------------------------------------------------------------------------------------------- loaders
def test_llff_loader_gives_the_fern_split_on_a_20_view_scene(generated: dict[str, Path]) -> None:
    views = load_llff_scene(generated["llff"], factor=2)
    assert views.test is not None
    assert views.inputs.names == ("image_001.png", "image_010.png", "image_019.png")
    assert views.test.names == ("image_000.png", "image_008.png", "image_016.png")
    assert views.inputs.images.shape == (3, 18, 24, 3) and views.name == synth_posed_scene(0, 0, W, H, VIEWS).name
    resized = load_llff_scene(generated["llff"], factor=2, width=12, height=9, with_test=False)
    assert resized.test is None and resized.inputs.images.shape == (3, 9, 12, 3)
    torch.testing.assert_close(resized.inputs.cameras.K, views.inputs.cameras.resized(12, 9).K)


def test_colmap_and_nerfstudio_loaders_pick_the_same_views(generated: dict[str, Path]) -> None:
    ns = load_nerfstudio_scene(generated["nerfstudio"], downscale=2)
    cm = load_colmap_scene(generated["colmap"], image_dir="images_2")
    for a, b in ((ns.inputs, cm.inputs), (ns.test, cm.test)):
        assert a is not None and b is not None and a.names == b.names
        _assert_same_cameras(a.cameras, b.cameras)
        torch.testing.assert_close(a.images, b.images)  # same scene rendered for both formats


def test_dtu_loader_uses_the_dtu_split_on_dtu_layout_data(tmp_path: Path) -> None:
    root = generate_spare_scenes(tmp_path / "dtu", num_scenes=1, width=32, height=24, lightings=[3], naming="DTU",
                                 progress=False)
    views = load_dtu_scene(root)
    assert views.test is not None
    assert views.inputs.names == ("rect_026_3_r5000.png", "rect_023_3_r5000.png", "rect_029_3_r5000.png")
    assert len(views.test) == 25 and views.test.names[0] == "rect_002_3_r5000.png"
    assert views.test.masks is not None and views.inputs.masks is not None
    assert load_dtu_scene(root / "scan1", width=16, height=12).inputs.images.shape == (3, 12, 16, 3)
    with pytest.raises(UserError, match="no DTU-layout scene"):
        load_dtu_scene(tmp_path)


# ------------------------------------------------------------------------------------------ sparse points
def _pixel_colours(views, xyz: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """(V, P, 3) image colour at each point's projection in each view (NaN where outside or behind)."""
    uv, z = views.cameras.project(xyz.double())
    col, row = uv[..., 0].floor().long(), uv[..., 1].floor().long()
    inside = (z > 0) & (col >= 0) & (col < views.cameras.width) & (row >= 0) & (row < views.cameras.height)
    out = torch.full((*uv.shape[:2], 3), float("nan"))
    for v in range(len(views)):
        out[v, inside[v]] = views.images[v, row[v, inside[v]], col[v, inside[v]]]
    return out


def test_colmap_loader_points_are_the_points3d_and_lie_on_the_rendered_surfaces(generated: dict[str, Path]) -> None:
    scene = load_colmap_scene(generated["colmap"], image_dir="images", split="every_nth", num_train=None)
    folder = generated["colmap"] / synth_posed_scene(0, 0, W, H, VIEWS).name / "sparse" / "0"
    model = read_colmap_model(folder)
    assert scene.points is not None and len(scene.points) == len(model.points) > 100
    assert scene.points.source == f"points3D ({folder / 'points3D.txt'})"
    torch.testing.assert_close(scene.points.xyz, torch.from_numpy(model.points.xyz), rtol=0, atol=0)
    torch.testing.assert_close(scene.points.rgb, torch.from_numpy(model.points.rgb), rtol=0, atol=0)
    # each point was lifted from a pixel centre of some view: in that view it projects into the pixel whose colour
    # it carries (both 8-bit), so the best match over all views is exact up to rounding
    assert scene.test is not None
    colours = torch.cat([_pixel_colours(scene.inputs, scene.points.xyz), _pixel_colours(scene.test, scene.points.xyz)])
    err = (colours - scene.points.rgb).abs().amax(-1).nan_to_num(1.0).amin(0)
    assert float(err.max()) <= 1.0 / 255 + 1e-6
    resized = load_colmap_scene(generated["colmap"], image_dir="images_2", width=12, height=9)
    assert resized.points is not None and torch.equal(resized.points.xyz, scene.points.xyz)


@pytest.mark.parametrize("recenter", [False, True])
def test_llff_loader_maps_sparse0_points_with_the_cameras(generated: dict[str, Path], recenter: bool) -> None:
    llff = load_llff_scene(generated["llff"], factor=2, split="every_nth", num_train=None, recenter=recenter)
    colmap = load_colmap_scene(generated["llff"], image_dir="images_2", split="every_nth", num_train=None)
    assert llff.points is not None and colmap.points is not None and len(llff.points) == len(colmap.points)
    assert llff.points.source.startswith("points3D (") and llff.inputs.names == colmap.inputs.names
    # same pixels in both readers' frames (LLFF rescales the world by 1 / (0.75 * nearest bound), may recentre)
    uv_l, z_l = llff.inputs.cameras.project(llff.points.xyz.double())
    uv_c, z_c = colmap.inputs.cameras.project(colmap.points.xyz.double())
    torch.testing.assert_close(uv_l, uv_c, atol=2e-3, rtol=0)
    scale = read_llff(generated["llff"] / synth_posed_scene(0, 0, W, H, VIEWS).name, factor=2).scale
    assert scale != pytest.approx(1.0)
    torch.testing.assert_close(z_l, z_c * scale, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(llff.points.rgb, colmap.points.rgb)


def test_llff_binary_model_without_pycolmap_loads_without_points(
    tmp_path: Path, generated: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pycolmap = pytest.importorskip("pycolmap")
    name = synth_posed_scene(0, 0, W, H, VIEWS).name
    scene = shutil.copytree(generated["llff"] / name, tmp_path / name)
    model = scene / "sparse" / "0"
    pycolmap.Reconstruction(str(model)).write_binary(str(model))
    for f in model.glob("*.txt"):
        f.unlink()
    text = load_llff_scene(generated["llff"], factor=2, with_test=False).points
    binary = load_llff_scene(scene, factor=2, with_test=False).points
    assert text is not None and binary is not None and binary.source.endswith("points3D.bin)")
    torch.testing.assert_close(binary.xyz, text.xyz, atol=1e-6, rtol=0)
    torch.testing.assert_close(binary.rgb, text.rgb, atol=0, rtol=0)
    monkeypatch.setitem(sys.modules, "pycolmap", None)
    with pytest.warns(UserWarning, match="needs the pycolmap package.*sparse points are not used"):
        views = load_llff_scene(scene, factor=2, with_test=False)
    assert views.points is None and len(views.inputs) == 3


def test_nerfstudio_loader_reads_the_ply_named_by_ply_file_path(tmp_path: Path, generated: dict[str, Path]) -> None:
    name = synth_posed_scene(0, 0, W, H, VIEWS).name
    ns = load_nerfstudio_scene(generated["nerfstudio"], downscale=2)
    model = read_colmap_model(generated["colmap"] / name / "sparse" / "0")  # same scene and sampled points
    assert ns.points is not None and ns.points.source.startswith("sparse_pc.ply (")
    torch.testing.assert_close(ns.points.xyz, torch.from_numpy(model.points.xyz), atol=0, rtol=0)
    torch.testing.assert_close(ns.points.rgb, torch.from_numpy(model.points.rgb), atol=1e-6, rtol=0)

    scene = shutil.copytree(generated["nerfstudio"] / name, tmp_path / name)
    data = json.loads((scene / "transforms.json").read_text())
    write_ply_points(scene / "grey.ply", np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], np.float32))
    data["ply_file_path"] = "grey.ply"  # no colours: mid grey
    (scene / "transforms.json").write_text(json.dumps(data))
    grey = load_nerfstudio_scene(scene, with_test=False).points
    assert grey is not None and grey.xyz.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert grey.rgb.tolist() == [[0.5] * 3] * 2
    data["ply_file_path"] = "missing.ply"
    (scene / "transforms.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"transforms.json: field 'ply_file_path' names .*missing.ply"):
        load_nerfstudio_scene(scene, with_test=False)
    del data["ply_file_path"]
    (scene / "transforms.json").write_text(json.dumps(data))
    assert load_nerfstudio_scene(scene, with_test=False).points is None


def test_scenes_without_points_have_none(tmp_path: Path) -> None:
    for fmt in ("colmap", "nerfstudio"):
        root = generate_posed_scenes(tmp_path / fmt, format=fmt, num_views=9, width=W, height=H, factors=[2],
                                     num_points=0, progress=False)
        loader = load_colmap_scene if fmt == "colmap" else load_nerfstudio_scene
        assert loader(root, with_test=False).points is None, fmt
