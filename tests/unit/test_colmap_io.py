"""COLMAP reader: hand-written text models whose projections were computed by hand, kept distortion, the points
cloud, binary models through pycolmap (written by pycolmap itself), and one UserError per malformed input naming
the file and line."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse3d.io.colmap import (
    ColmapCamera,
    ColmapImage,
    ColmapPoints,
    model_views,
    points_source,
    qvec_to_rotmat,
    read_colmap_model,
    read_model_points,
    rotmat_to_qvec,
    write_colmap_text,
)
from sparse3d.io.images import write_png
from sparse3d.utils.errors import UserError

C45 = math.cos(math.pi / 4)
CAMERAS = """# Camera list with one line of data per camera:
#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]
1 PINHOLE 40 30 50 60 20 15
2 SIMPLE_PINHOLE 40 30 40 20 15
3 OPENCV 40 30 50 50 20 15 0.1 -0.05 0.001 0.002
4 SIMPLE_RADIAL 40 30 45 20 15 0.02
"""
# image 1: identity rotation, t = (0, 0, 5); image 2: 90 degrees about y (q = (cos 45, 0, sin 45, 0)),
# R = [[0, 0, 1], [0, 1, 0], [-1, 0, 0]], t = (0, 0, 4); image 3: 90 degrees about z (q = (cos 45, 0, 0, sin 45)),
# R = [[0, -1, 0], [1, 0, 0], [0, 0, 1]], t = (0, 0, 5). Names are out of order on purpose.
IMAGES = f"""# Image list with two lines of data per image:
2 {C45} 0 {C45} 0 0 0 4 2 b.png
10.0 11.0 1 12.0 13.0 -1

1 1 0 0 0 0 0 5 1 a.png
1.5 2.5 2
3 {C45} 0 0 {C45} 0 0 5 3 c.png

4 1 0 0 0 0 0 5 4 d.png

"""
POINTS = """# 3D point list
1 1 1 0 255 0 0 0.5 2 0
2 -1 0.5 2 10 20 30 0.25 1 0 2 0
"""


def _model(root: Path, cameras: str = CAMERAS, images: str = IMAGES, points: str | None = POINTS) -> Path:
    model = root / "sparse" / "0"
    model.mkdir(parents=True, exist_ok=True)
    (model / "cameras.txt").write_text(cameras)
    (model / "images.txt").write_text(images)
    if points is not None:
        (model / "points3D.txt").write_text(points)
    for name in ("a.png", "b.png", "c.png", "d.png"):
        write_png(root / "images" / name, np.full((30, 40, 3), 0.5, np.float32))
    return model


def _pixel(cameras, index: int, point: tuple[float, float, float]) -> tuple[float, float]:
    uv, depth = cameras[index].project(torch.tensor([point], dtype=torch.float32))
    assert float(depth[0, 0]) > 0
    return float(uv[0, 0, 0]), float(uv[0, 0, 1])


def test_text_model_projects_known_points_to_hand_computed_pixels(tmp_path: Path) -> None:
    model = read_colmap_model(_model(tmp_path))
    assert sorted(model.cameras) == [1, 2, 3, 4] and sorted(model.images) == [1, 2, 3, 4]
    views = model_views(model, tmp_path / "images")
    assert views.names == ("a.png", "b.png", "c.png", "d.png")  # sorted by name
    cams = views.cameras
    # a.png: PINHOLE, (1, 1, 0) -> camera (1, 1, 5) -> (50/5 + 20, 60/5 + 15) = (30, 27)
    assert _pixel(cams, 0, (1.0, 1.0, 0.0)) == pytest.approx((30.0, 27.0), abs=1e-4)
    # b.png: SIMPLE_PINHOLE f = 40, (-1, 0.5, 2) -> R X + t = (2, 0.5, 1 + 4) -> (40*2/5 + 20, 40*0.5/5 + 15) = (36, 19)
    assert _pixel(cams, 1, (-1.0, 0.5, 2.0)) == pytest.approx((36.0, 19.0), abs=1e-4)
    # c.png: OPENCV with distortion (not applied), (1, -1, 0) -> R X + t = (1, 1, 5) -> (50/5 + 20, 50/5 + 15)
    assert _pixel(cams, 2, (1.0, -1.0, 0.0)) == pytest.approx((30.0, 25.0), abs=1e-4)
    # COLMAP's camera centre is -R^T t
    torch.testing.assert_close(cams.centers[1], torch.tensor([4.0, 0.0, 0.0]), atol=1e-5, rtol=0)


def test_points_and_distortion_are_kept(tmp_path: Path) -> None:
    model = read_colmap_model(_model(tmp_path))
    pts = model.points
    assert pts.ids.tolist() == [1, 2]
    np.testing.assert_allclose(pts.xyz, [[1, 1, 0], [-1, 0.5, 2]])
    np.testing.assert_allclose(pts.rgb, np.array([[255, 0, 0], [10, 20, 30]]) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(pts.error, [0.5, 0.25])
    views = model_views(model, tmp_path / "images")
    a, b, c, d = views.distortion
    assert a is None and b is None
    assert c is not None and c.model == "OPENCV" and dict(c.params) == {"k1": 0.1, "k2": -0.05, "p1": 0.001, "p2": 0.002}
    assert d is not None and dict(d.params) == {"k": 0.02}
    assert views.distorted_views() == [2, 3]
    report = views.distortion_report()
    assert report is not None and "2 of 4 views" in report and "SIMPLE_RADIAL(k=0.02)" in report


def test_points_file_is_optional_and_images_folder_may_be_a_resized_copy(tmp_path: Path) -> None:
    model = read_colmap_model(_model(tmp_path, points=None))
    assert len(model.points) == 0
    for name in ("a.png", "b.png", "c.png", "d.png"):
        write_png(tmp_path / "images_2" / name, np.zeros((15, 20, 3), np.float32))
    cams = model_views(model, tmp_path / "images_2").cameras
    assert (cams.width, cams.height) == (20, 15)
    assert _pixel(cams, 0, (1.0, 1.0, 0.0)) == pytest.approx((15.0, 13.5), abs=1e-4)


def test_quaternion_conversions_invert_each_other() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q = q if q[0] >= 0 else -q
        R = qvec_to_rotmat(q)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(rotmat_to_qvec(R), q, atol=1e-9)


@pytest.mark.parametrize(
    ("cameras", "images", "points", "where", "message"),
    [
        ("1 PINHOLE 40 30 50 sixty 20 15\n", IMAGES, POINTS, "cameras.txt:1", "must be numbers"),
        ("1 PINHOLE forty 30 50 60 20 15\n", IMAGES, POINTS, "cameras.txt:1", "must be integers"),
        ("# c\n1 PINHOLE_X 40 30 50 60 20 15\n", IMAGES, POINTS, "cameras.txt:2", "unknown camera model 'PINHOLE_X'"),
        ("1 OPENCV_FISHEYE 40 30 50 50 20 15 0 0 0 0\n", IMAGES, POINTS, "cameras.txt:1", "unsupported camera model"),
        ("1 PINHOLE 40 30 50 60 20\n", IMAGES, POINTS, "cameras.txt:1", "takes 4 parameters"),
        ("1 PINHOLE 40 30 50 60 20 15\n1 PINHOLE 40 30 50 60 20 15\n", IMAGES, POINTS, "cameras.txt:2", "duplicate camera id"),
        (CAMERAS, "1 1 0 0 0 0 0 5 9 a.png\n\n", POINTS, "images.txt", "references camera 9"),
        (CAMERAS, "1 0 0 0 0 0 0 5 1 a.png\n\n", POINTS, "images.txt:1", "quaternion is zero"),
        (CAMERAS, "1 1 0 0 0 0 0 5 1\n", POINTS, "images.txt:1", "expected 'IMAGE_ID"),
        (CAMERAS, "1 1 0 0 0 0 0 5 1 a.png\n1.0 2.0\n", POINTS, "images.txt:2", "must be triples"),
        (CAMERAS, "# none\n", POINTS, "images.txt", "has no images"),
        (CAMERAS, IMAGES, "1 1 1 0 300 0 0 0.5\n", "points3D.txt:1", "0..255"),
        (CAMERAS, IMAGES, "1 1 1 0 255 0 0 0.5 2\n", "points3D.txt:1", "TRACK pairs"),
    ],
)
def test_malformed_models_name_the_file_line_and_problem(
    tmp_path: Path, cameras: str, images: str, points: str, where: str, message: str
) -> None:
    model = _model(tmp_path, cameras, images, points)
    with pytest.raises(UserError) as info:
        read_colmap_model(model)
    text = str(info.value)
    assert str(model / where) in text and message in text, text


def test_mixed_image_sizes_and_missing_model_are_user_errors(tmp_path: Path) -> None:
    model = _model(tmp_path, cameras=CAMERAS.replace("4 SIMPLE_RADIAL 40 30", "4 SIMPLE_RADIAL 80 60"))
    with pytest.raises(UserError, match="images of different sizes"):
        model_views(read_colmap_model(model), tmp_path / "images")
    with pytest.raises(UserError, match="cameras.txt without images.txt"):
        (model / "images.txt").unlink()
        read_colmap_model(model)
    with pytest.raises(UserError, match="COLMAP model folder not found"):
        read_colmap_model(tmp_path / "none")


def test_binary_model_without_pycolmap_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "cameras.bin").write_bytes(b"\0" * 8)
    monkeypatch.setitem(sys.modules, "pycolmap", None)  # makes `import pycolmap` raise ImportError
    with pytest.raises(UserError, match=r"needs the pycolmap package: pip install 'sparse3d\[colmap\]'"):
        read_colmap_model(folder)


def test_binary_model_written_by_pycolmap_reads_like_its_text_export(tmp_path: Path) -> None:
    pycolmap = pytest.importorskip("pycolmap")
    rec = pycolmap.Reconstruction()
    for cam_id, model, params in ((1, "PINHOLE", [50.0, 60.0, 20.0, 15.0]),
                                  (2, "OPENCV", [50.0, 50.0, 20.0, 15.0, 0.1, -0.05, 0.001, 0.002])):
        cam = pycolmap.Camera.create_from_model_name(cam_id, model, 50.0, 40, 30)
        cam.params = params
        rec.add_camera_with_trivial_rig(cam)
    poses = {1: (np.array([0.0, 0.0, 0.0, 1.0]), [0.0, 0.0, 5.0], 1, "a.png"),  # xyzw
             2: (np.array([0.0, math.sin(math.pi / 4), 0.0, C45]), [0.0, 0.0, 4.0], 2, "b.png")}
    for image_id, (xyzw, t, cam_id, name) in poses.items():
        image = pycolmap.Image(name=name, camera_id=cam_id, image_id=image_id)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(xyzw), np.array(t)))
    rec.add_point3D(np.array([1.0, 1.0, 0.0]), pycolmap.Track(), np.array([255, 0, 0], dtype=np.uint8))
    binary, text = tmp_path / "scene" / "sparse" / "0", tmp_path / "text"
    binary.mkdir(parents=True)
    text.mkdir()
    rec.write_binary(str(binary))
    rec.write_text(str(text))
    for name in ("a.png", "b.png"):
        write_png(tmp_path / "scene" / "images" / name, np.zeros((30, 40, 3), np.float32))

    from_bin, from_txt = read_colmap_model(binary), read_colmap_model(text)
    assert from_bin.cameras == from_txt.cameras and from_bin.images.keys() == from_txt.images.keys()
    for i in from_bin.images:
        a, b = from_bin.images[i], from_txt.images[i]
        assert (a.name, a.camera_id) == (b.name, b.camera_id)
        np.testing.assert_allclose(a.qvec, b.qvec, atol=1e-12)
        np.testing.assert_allclose(a.tvec, b.tvec, atol=1e-12)
    np.testing.assert_allclose(from_bin.points.xyz, [[1.0, 1.0, 0.0]])
    np.testing.assert_allclose(from_bin.points.rgb, [[1.0, 0.0, 0.0]])
    cams = model_views(from_bin, tmp_path / "scene" / "images").cameras
    assert _pixel(cams, 0, (1.0, 1.0, 0.0)) == pytest.approx((30.0, 27.0), abs=1e-4)  # as the text test, by hand
    assert _pixel(cams, 1, (-1.0, 0.5, 2.0)) == pytest.approx((40.0, 20.0), abs=1e-4)  # (50*2/5+20, 50*0.5/5+15)
    assert model_views(from_bin, tmp_path / "scene" / "images").distortion[1].params["k1"] == 0.1  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------- points3D
THREE_POINTS = """# 3D point list with one line of data per point:
#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)
7 0.5 -1.25 3 0 128 255 0.75 1 0 2 1
9 -2 0 1e-3 255 255 255 1.5

12 10 20 -30 1 2 3 0 1 1
"""


def test_hand_written_points3d_reach_the_scene_as_scene_points(tmp_path: Path) -> None:
    from sparse3d.datasets.posed_scenes import load_colmap_scene

    model = _model(tmp_path, points=THREE_POINTS)
    pts = read_model_points(model)
    assert pts.ids.tolist() == [7, 9, 12] and pts.xyz.dtype == np.float32
    np.testing.assert_array_equal(pts.xyz, np.array([[0.5, -1.25, 3.0], [-2.0, 0.0, 1e-3], [10.0, 20.0, -30.0]],
                                                    np.float32))
    np.testing.assert_array_equal(pts.rgb, np.array([[0, 128, 255], [255, 255, 255], [1, 2, 3]], np.float32) / 255)
    np.testing.assert_array_equal(pts.error, np.array([0.75, 1.5, 0.0], np.float32))
    scene = load_colmap_scene(tmp_path, split="every_nth", test_every=2, num_train=None)
    assert scene.points is not None and scene.points.source == f"points3D ({model / 'points3D.txt'})"
    torch.testing.assert_close(scene.points.xyz, torch.from_numpy(pts.xyz), rtol=0, atol=0)
    torch.testing.assert_close(scene.points.rgb, torch.from_numpy(pts.rgb), rtol=0, atol=0)
    (model / "points3D.txt").unlink()
    assert len(read_model_points(model)) == 0 and load_colmap_scene(tmp_path, with_test=False, split="every_nth",
                                                                   test_every=2, num_train=1).points is None


def test_points3d_round_trip_through_pycolmap_text_and_binary(tmp_path: Path) -> None:
    pycolmap = pytest.importorskip("pycolmap")
    rng = np.random.default_rng(4)
    n = 50
    ids = rng.choice(np.arange(1, 10_000), n, replace=False)
    xyz = (rng.normal(size=(n, 3)) * 10).astype(np.float32)
    rgb8 = rng.integers(0, 256, size=(n, 3))
    camera = ColmapCamera(1, "PINHOLE", 40, 30, (50.0, 60.0, 20.0, 15.0))
    images = [ColmapImage(1, (1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 5.0), 1, "a.png"),
              ColmapImage(2, (C45, 0.0, C45, 0.0), (0.0, 0.0, 4.0), 1, "b.png")]
    ours = ColmapPoints(ids.astype(np.int64), xyz, rgb8.astype(np.float32) / 255.0, np.zeros(n, np.float32))
    text = write_colmap_text(tmp_path / "text", [camera], images, ours)
    # pycolmap parses our text and writes its binary and text; we read both back
    rec = pycolmap.Reconstruction(str(text))
    assert rec.num_points3D() == n
    for pid, k in zip(ids, range(n), strict=True):
        np.testing.assert_array_equal(np.asarray(rec.points3D[int(pid)].xyz).astype(np.float32), xyz[k])
        np.testing.assert_array_equal(np.asarray(rec.points3D[int(pid)].color), rgb8[k])
    binary, text2 = tmp_path / "bin", tmp_path / "text2"
    binary.mkdir()
    text2.mkdir()
    rec.write_binary(str(binary))
    rec.write_text(str(text2))
    order = np.argsort(ids)
    for folder in (binary, text2):
        back = read_model_points(folder)
        assert back.ids.tolist() == ids[order].tolist(), folder
        np.testing.assert_array_equal(back.xyz, xyz[order])
        np.testing.assert_array_equal(np.round(back.rgb * 255), rgb8[order])
        assert read_colmap_model(folder).points.ids.tolist() == back.ids.tolist()
    assert points_source(binary).endswith("points3D.bin)") and points_source(text2).endswith("points3D.txt)")
