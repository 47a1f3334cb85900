"""LLFF reader: hand-written ``poses_bounds.npy`` files whose projections were computed by hand, NeRF's bound
rescale and recentring as properties, and one UserError per malformed input naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sparse3d.io.images import write_png
from sparse3d.io.llff import (
    average_pose,
    llff_to_opencv_c2w,
    opencv_c2w_to_llff,
    read_llff,
    read_poses_bounds,
)
from sparse3d.utils.errors import UserError

# Camera 0 looks along world +z from (1, 2, -5): LLFF columns [down, right, back] = [(0,1,0), (1,0,0), (0,0,-1)].
# Camera 1 looks along world +x from (-4, 0, 0): down (0,1,0), right (0,0,-1), back (-1,0,0).
# Full-size images 40 x 30 (hwf = [30, 40, 50]).
POSES = np.array([
    [[0, 1, 0, 1, 30], [1, 0, 0, 2, 40], [0, 0, -1, -5, 50]],
    [[0, 0, -1, -4, 30], [1, 0, 0, 0, 40], [0, -1, 0, 0, 50]],
], dtype=np.float64)
BOUNDS = np.array([[2.0, 10.0], [3.0, 12.0]])
# By hand: camera 0 sees (1.5, 2.5, 5) at offset (0.5, 0.5, 10) -> (50*0.05 + 20, 50*0.05 + 15) = (22.5, 17.5);
# camera 1 sees (2, 0.3, -0.6): offset (6, 0.3, -0.6) -> camera (0.6, 0.3, 6) -> (25, 17.5).
POINTS = torch.tensor([[1.5, 2.5, 5.0], [2.0, 0.3, -0.6]], dtype=torch.float64)
PIXELS_FULL = [(22.5, 17.5), (25.0, 17.5)]


def _scene(root: Path, poses: np.ndarray = POSES, bounds: np.ndarray = BOUNDS, folder: str = "images_2",
           size: tuple[int, int] = (20, 15), count: int | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "poses_bounds.npy", np.concatenate([poses.reshape(len(poses), 15), bounds], axis=1))
    for i in range(len(poses) if count is None else count):
        write_png(root / folder / f"img_{i:02d}.png", np.full((size[1], size[0], 3), 0.5, np.float32))
    return root


def _project(cameras, index: int, point: torch.Tensor) -> tuple[float, float]:
    uv, depth = cameras[index].project(point[None].float())
    assert float(depth[0, 0]) > 0
    return float(uv[0, 0, 0]), float(uv[0, 0, 1])


def test_known_points_land_on_hand_computed_pixels_at_the_downsampled_size(tmp_path: Path) -> None:
    scene = read_llff(_scene(tmp_path / "s"), factor=2, rescale=False)
    cams = scene.files.cameras
    assert (cams.width, cams.height) == (20, 15) and scene.full_size == (40, 30)
    for i, (u, v) in enumerate(PIXELS_FULL):
        assert _project(cams, i, POINTS[i]) == pytest.approx((u / 2, v / 2), abs=1e-4)
    assert [p.name for p in scene.files.image_paths] == ["img_00.png", "img_01.png"]
    torch.testing.assert_close(cams.centers.double(), torch.tensor([[1.0, 2.0, -5.0], [-4.0, 0.0, 0.0]],
                                                                   dtype=torch.float64))
    assert scene.scale == 1.0 and np.array_equal(scene.bounds, BOUNDS)


def test_full_resolution_folder_and_axis_conversion_round_trip(tmp_path: Path) -> None:
    scene = read_llff(_scene(tmp_path / "s", folder="images", size=(40, 30)), factor=None, rescale=False)
    for i, (u, v) in enumerate(PIXELS_FULL):
        assert _project(scene.files.cameras, i, POINTS[i]) == pytest.approx((u, v), abs=1e-4)
    c2w = llff_to_opencv_c2w(POSES)
    np.testing.assert_allclose(c2w[0, :3, :3], np.eye(3))  # camera 0 has OpenCV axes = world axes
    np.testing.assert_allclose(opencv_c2w_to_llff(c2w, POSES[0, :, 4]), POSES)


def test_bound_rescale_puts_the_nearest_bound_at_4_3_and_keeps_pixels(tmp_path: Path) -> None:
    scene = read_llff(_scene(tmp_path / "s"), factor=2, rescale=True)
    s = 1.0 / (0.75 * 2.0)  # NeRF: 1 / (bd_factor * min near)
    assert scene.scale == pytest.approx(s)
    assert scene.bounds.min() == pytest.approx(4.0 / 3.0) and np.allclose(scene.bounds, BOUNDS * s)
    torch.testing.assert_close(scene.files.cameras.centers.double(),
                               s * torch.tensor([[1.0, 2.0, -5.0], [-4.0, 0.0, 0.0]], dtype=torch.float64))
    for i, (u, v) in enumerate(PIXELS_FULL):  # scaling the world and the point together moves no pixel
        assert _project(scene.files.cameras, i, s * POINTS[i]) == pytest.approx((u / 2, v / 2), abs=1e-4)
    np.testing.assert_allclose(scene.world_transform, np.diag([s, s, s, 1.0]))


def test_recentering_makes_the_average_pose_the_identity(tmp_path: Path) -> None:
    scene = read_llff(_scene(tmp_path / "s"), factor=2, rescale=True, recenter=True)
    c2w = scene.files.cameras.c2w.double().numpy()
    np.testing.assert_allclose(average_pose(c2w), np.eye(4), atol=1e-6)
    # points follow the returned world transform and still land on the same pixels
    for i, (u, v) in enumerate(PIXELS_FULL):
        p = scene.world_transform @ np.append(POINTS[i].numpy(), 1.0)
        assert _project(scene.files.cameras, i, torch.from_numpy(p[:3])) == pytest.approx((u / 2, v / 2), abs=1e-3)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: np.save(d / "poses_bounds.npy", np.zeros((2, 15))), "(N, 17)"),
        (lambda d: np.save(d / "poses_bounds.npy", np.concatenate([POSES.reshape(2, 15), BOUNDS[:, ::-1]], 1)),
         "0 < near < far"),
        (lambda d: np.save(d / "poses_bounds.npy", np.concatenate([2 * POSES.reshape(2, 15), BOUNDS], 1)),
         "not a proper rotation"),
        (lambda d: np.save(d / "poses_bounds.npy",
                           np.concatenate([POSES.reshape(2, 15), [[np.nan, 1.0], [1.0, 2.0]]], 1)), "NaN"),
        (lambda d: (d / "poses_bounds.npy").write_text("not numpy"), "not a NumPy"),
        (lambda d: (d / "images_2" / "img_01.png").unlink(), "2 poses but 1 images"),
    ],
)
def test_malformed_inputs_name_the_pose_file(tmp_path: Path, mutate, message: str) -> None:
    root = _scene(tmp_path / "s")
    mutate(root)
    with pytest.raises(UserError) as info:
        read_llff(root, factor=2)
    assert "poses_bounds.npy" in str(info.value) and message in str(info.value)


def test_missing_folder_and_foreign_images_are_user_errors(tmp_path: Path) -> None:
    root = _scene(tmp_path / "s")
    with pytest.raises(UserError, match=r"images_8: image folder not found .*images_2"):
        read_llff(root, factor=8)
    other = _scene(tmp_path / "t", size=(20, 20))  # not a resized copy of 40 x 30
    with pytest.raises(UserError, match="aspect ratio differs"):
        read_llff(other, factor=2)
    with pytest.raises(UserError, match="pose file not found"):
        read_poses_bounds(tmp_path / "nowhere" / "poses_bounds.npy")
