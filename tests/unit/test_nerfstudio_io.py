"""nerfstudio / instant-ngp / Blender ``transforms.json`` reader: hand-written files whose projections were
computed by hand (OpenGL camera axes), shared vs per-frame intrinsics, ``camera_angle_x``, kept distortion,
skipped frames, and one UserError per malformed input naming the file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sparse3d.datasets.posed_scenes import load_nerfstudio_scene
from sparse3d.io.images import write_png
from sparse3d.io.nerfstudio import read_transforms
from sparse3d.utils.errors import UserError

# OpenGL camera-to-world of a camera at (0, 0, 5) with identity rotation: it looks along world -z, its image
# x is world +x and its image y (down) is world -y.
AT_Z5 = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 5], [0, 0, 0, 1]]
# A camera at (5, 0, 0) looking along world -x: OpenGL axes right = (0, 0, -1), up = (0, 1, 0), back = (1, 0, 0).
AT_X5 = [[0, 0, 1, 5], [0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]]


def _image(path: Path, width: int = 40, height: int = 30) -> None:
    write_png(path, np.full((height, width, 3), 0.25, np.float32))


def _write(root: Path, data: dict[str, Any], images: list[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in images if images is not None else [f["file_path"] for f in data.get("frames", [])]:
        _image(root / name)
    (root / "transforms.json").write_text(json.dumps(data))
    return root / "transforms.json"


def _base(**extra: Any) -> dict[str, Any]:
    return {"fl_x": 50.0, "fl_y": 60.0, "cx": 20.5, "cy": 14.0, "w": 40, "h": 30, **extra,
            "frames": [{"file_path": "images/a.png", "transform_matrix": AT_Z5},
                       {"file_path": "images/b.png", "transform_matrix": AT_X5, "fl_x": 100.0}]}


def _pixel(cameras, index: int, point: tuple[float, float, float]) -> tuple[float, float]:
    uv, depth = cameras[index].project(torch.tensor([point], dtype=torch.float32))
    assert float(depth[0, 0]) > 0
    return float(uv[0, 0, 0]), float(uv[0, 0, 1])


def test_opengl_frames_project_known_points_to_hand_computed_pixels(tmp_path: Path) -> None:
    scene = read_transforms(_write(tmp_path, _base()))
    cams = scene.files.cameras
    assert (cams.width, cams.height) == (40, 30) and scene.skipped == ()
    # camera 0: (1, 1, 0) is 5 in front, 1 right, 1 up -> (50 * 1/5 + 20.5, 60 * -1/5 + 14) = (30.5, 2)
    assert _pixel(cams, 0, (1.0, 1.0, 0.0)) == pytest.approx((30.5, 2.0), abs=1e-4)
    # camera 1 (its own fl_x = 100): (0, -0.5, 1) is 5 in front, 1 left of centre... right = -z, so x_cam = -1;
    # y_cam = 0.5 (below) -> (100 * -1/5 + 20.5, 60 * 0.5/5 + 14) = (0.5, 20)
    assert _pixel(cams, 1, (0.0, -0.5, 1.0)) == pytest.approx((0.5, 20.0), abs=1e-4)
    torch.testing.assert_close(cams.centers, torch.tensor([[0.0, 0.0, 5.0], [5.0, 0.0, 0.0]]))
    assert scene.files.names == ("a.png", "b.png") and scene.files.distortion == (None, None)


def test_blender_style_camera_angle_and_size_from_the_image(tmp_path: Path) -> None:
    angle = 2 * math.atan(20.0 / 50.0)  # fl_x = 40 / (2 tan(angle / 2)) = 50
    data = {"camera_angle_x": angle, "frames": [{"file_path": "./train/r_0", "transform_matrix": AT_Z5}]}
    path = _write(tmp_path, data, images=["train/r_0.png"])
    cams = read_transforms(path).files.cameras
    assert (cams.width, cams.height) == (40, 30)
    # fx = fy = 50, principal point at the image centre (20, 15): (1, 1, 0) -> (30, 5)
    assert _pixel(cams, 0, (1.0, 1.0, 0.0)) == pytest.approx((30.0, 5.0), abs=1e-4)


def test_downscale_folder_scales_the_intrinsics(tmp_path: Path) -> None:
    path = _write(tmp_path, _base(), images=[])
    for name in ("a.png", "b.png"):
        _image(tmp_path / "images_2" / name, 20, 15)
    cams = read_transforms(path, downscale=2).files.cameras
    assert (cams.width, cams.height) == (20, 15)
    assert _pixel(cams, 0, (1.0, 1.0, 0.0)) == pytest.approx((30.5 / 2, 2.0 / 2), abs=1e-4)


def test_distortion_is_kept_and_reported_not_applied(tmp_path: Path) -> None:
    data = _base(k1=0.1, k2=-0.02, p1=0.001, p2=0.0, camera_model="OPENCV")
    data["frames"][1]["k1"] = 0.3  # a frame's own coefficient wins
    scene = read_transforms(_write(tmp_path, data))
    d0, d1 = scene.files.distortion
    assert d0 is not None and d0.model == "OPENCV" and dict(d0.params) == {"k1": 0.1, "k2": -0.02, "p1": 0.001, "p2": 0.0}
    assert d1 is not None and d1.params["k1"] == 0.3
    report = scene.files.distortion_report()
    assert report is not None and "2 of 2 views" in report and "k1=0.1" in report and "not applied" in report
    # the pixel is the pinhole one: distortion is not applied
    assert _pixel(scene.files.cameras, 0, (1.0, 1.0, 0.0)) == pytest.approx((30.5, 2.0), abs=1e-4)


def test_missing_images_are_skipped_with_a_warning_naming_them(tmp_path: Path) -> None:
    data = _base()
    data["frames"].insert(1, {"file_path": "images/gone.png", "transform_matrix": AT_Z5})
    path = _write(tmp_path, data, images=["images/a.png", "images/b.png"])
    with pytest.warns(UserWarning, match=r"skipped 1 of 3 frames .*images/gone\.png"):
        scene = read_transforms(path)
    assert scene.skipped == ("images/gone.png",) and scene.frame_indices == (0, 2)
    assert len(scene.files) == 2 and scene.files.names == ("a.png", "b.png")


def test_scene_loader_splits_and_warns_about_distortion(tmp_path: Path) -> None:
    frames = [{"file_path": f"images/f{i:02d}.png", "transform_matrix": AT_Z5} for i in range(10)]
    path = _write(tmp_path / "scene", {**_base(k1=0.05), "frames": frames})
    with pytest.warns(UserWarning, match="lens distortion"):
        views = load_nerfstudio_scene(path.parent.parent)
    assert views.test is not None
    assert views.inputs.names == ("f01.png", "f05.png", "f09.png")  # rest = 1..7, 9: linspace(0, 7, 3) -> 0, 4, 7
    assert views.test.names == ("f00.png", "f08.png")
    assert views.inputs.images.shape == (3, 30, 40, 3) and views.name == "scene"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"fl_x": 50, "w": 40, "h": 30}, "no frames"),
        ({"fl_x": 50, "w": 40, "h": 30, "frames": []}, "no frames"),
        ({"fl_x": 50, "w": 40, "h": 30, "frames": [{"file_path": "images/a.png", "transform_matrix": [[1, 0], [0, 1]]}]},
         "4x4"),
        ({"fl_x": "fifty", "w": 40, "h": 30, "frames": [{"file_path": "images/a.png", "transform_matrix": AT_Z5}]},
         "'fl_x' must be a finite number"),
        ({"w": 40, "h": 30, "frames": [{"file_path": "images/a.png", "transform_matrix": AT_Z5}]}, "no focal length"),
        ({"fl_x": 50, "w": 40, "h": 30, "frames": [{"file_path": "images/a.png",
                                                    "transform_matrix": [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}]},
         "not a rigid"),
        ({"fl_x": 50, "w": 40, "h": 30, "camera_model": "OPENCV_FISHEYE",
          "frames": [{"file_path": "images/a.png", "transform_matrix": AT_Z5}]}, "OPENCV_FISHEYE"),
        ({"fl_x": 50, "frames": [{"file_path": "images/a.png", "transform_matrix": AT_Z5, "w": 40, "h": 30},
                                 {"file_path": "images/b.png", "transform_matrix": AT_Z5, "w": 80, "h": 60}]},
         "different image sizes"),
        ({"fl_x": 50, "w": 40, "h": 30, "frames": [{"transform_matrix": AT_Z5}]}, "missing 'file_path'"),
    ],
)
def test_malformed_files_name_the_file_and_problem(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    images = [f["file_path"] for f in data.get("frames", []) if "file_path" in f]
    path = _write(tmp_path, data, images=images)
    with pytest.raises(UserError) as info:
        read_transforms(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_invalid_json_and_all_images_missing(tmp_path: Path) -> None:
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(UserError, match=r"transforms\.json: invalid JSON"):
        read_transforms(tmp_path)
    path = _write(tmp_path / "b", _base(), images=[])
    with pytest.warns(UserWarning), pytest.raises(UserError, match="none of the 2 frames has its image"):
        read_transforms(path)


def test_views_from_several_folders_keep_the_folder_in_their_names(tmp_path: Path) -> None:
    frames = [{"file_path": "./cam0/x.png", "transform_matrix": AT_Z5}, {"file_path": "cam1/x.png", "transform_matrix": AT_X5}]
    scene = read_transforms(_write(tmp_path, {"fl_x": 50.0, "w": 40, "h": 30, "frames": frames},
                                   images=["cam0/x.png", "cam1/x.png"]))
    assert scene.files.names == ("cam0/x.png", "cam1/x.png")
    assert scene.files.load("s").view_names() == ("cam0/x.png", "cam1/x.png")
