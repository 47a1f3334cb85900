"""SpaRe reader: names, split validation (every fault kind), scene loading in both layouts, errors name files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse3d.cameras import look_at
from sparse3d.io.images import write_mask, write_png
from sparse3d.io.spare import (
    SplitEntry,
    camera_filename,
    image_filename,
    load_images,
    load_input_views,
    load_masks,
    load_scene,
    mask_filename,
    read_projection_matrix,
    read_split,
    rig_target,
    split_filename,
    write_projection_matrix,
    write_split,
)
from sparse3d.utils.errors import UserError

W, H = 32, 24


def _look_at(centre: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera R, t of an OpenCV camera at ``centre`` looking at ``target``."""
    R = look_at(centre, target, up=(0.0, 0.0, -1.0))
    return R, -R @ centre


def _projection(view: int, target: np.ndarray) -> np.ndarray:
    angle = 2 * np.pi * view / 12
    centre = target + np.array([3 * np.cos(angle), 3 * np.sin(angle), 1.0])
    R, t = _look_at(centre, target)
    K = np.array([[40.0, 0.0, W / 2], [0.0, 40.0, H / 2], [0.0, 0.0, 1.0]])
    return K @ np.hstack([R, t[:, None]])


def _entry(scene: str = "Amp", dataset: str = "Synthetic") -> SplitEntry:
    return SplitEntry(scene, (0, 4, 8), (1, 2, 3, 5, 6, 7, 9, 10, 11, 12), dataset)


def _write_scene(root: Path, entry: SplitEntry, target: np.ndarray, image_sub: str = "", cams: bool = True) -> None:
    scene_dir = root / entry.scene
    for v in range(13):
        if cams:
            write_projection_matrix(scene_dir / "cameras" / camera_filename(v), _projection(v, target))
        write_png(scene_dir / image_sub / image_filename(entry.dataset, v, 3), np.full((H, W, 3), v / 20, np.float32))
        mask = np.zeros((H, W), dtype=bool)
        mask[5:9, 3 + v : 6 + v] = True
        write_mask(scene_dir / "masks" / mask_filename(entry.dataset, v), mask)


def test_names_follow_the_benchmark() -> None:
    assert image_filename("DTU", 13) == "rect_014_3_r5000.png"
    assert image_filename("Synthetic", 13) == "cam_014_3_0000.png"
    assert image_filename("Synthetic", 0, 6) == "cam_001_6_0000.png"
    assert camera_filename(13) == "pos_014.txt"
    assert mask_filename("DTU", 0) == "rect_001.png"
    assert split_filename(2, "test") == "Track2_split_test.json"
    with pytest.raises(ValueError, match="dataset"):
        image_filename("dtu", 1)
    with pytest.raises(ValueError, match="lighting"):
        image_filename("DTU", 1, 7)


def test_split_roundtrip_and_published_shape(tmp_path: Path) -> None:
    published = {
        "scan63": {"input_views": [0, 22, 46], "test_views": [1, 9, 12, 15, 24, 25, 29, 31, 43, 47], "dataset": "DTU"},
        "Amplifier": {"input_views": [0, 6, 30], "test_views": [1, 3, 9, 13, 14, 15, 26, 32, 36, 43],
                      "dataset": "Synthetic"},
    }
    path = tmp_path / "Track1_split_development.json"
    path.write_text(json.dumps(published))
    split = read_split(path)
    assert list(split) == ["scan63", "Amplifier"]
    assert split["scan63"].input_views == (0, 22, 46) and split["Amplifier"].dataset == "Synthetic"
    again = read_split(write_split(tmp_path / "copy.json", split))
    assert again == split


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"input_views": [0, 1]}, "expected 3 or 9"),
        ({"input_views": [0, 0, 1]}, "duplicate"),
        ({"test_views": [2, 3, 4]}, "expected 10"),
        ({"test_views": [0, 3, 4, 5, 6, 7, 8, 9, 10, 11]}, "both input and test"),
        ({"test_views": [3, 4, 5, 6, 7, 8, 9, 10, 11, 49]}, "outside 0..48"),
        ({"dataset": "dtu"}, "field 'dataset'"),
        ({"input_views": "0,1,2"}, "list of integers"),
    ],
)
def test_split_validation_names_file_scene_and_field(tmp_path: Path, patch: dict, message: str) -> None:
    entry = {"input_views": [0, 1, 2], "test_views": [3, 4, 5, 6, 7, 8, 9, 10, 11, 12], "dataset": "DTU"}
    entry.update(patch)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"scan1": entry}))
    with pytest.raises(UserError, match=message) as info:
        read_split(path)
    assert "bad.json" in str(info.value) and "scan1" in str(info.value)


def test_split_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        read_split(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(UserError, match="broken.json: invalid JSON"):
        read_split(tmp_path / "broken.json")
    (tmp_path / "missing.json").write_text(json.dumps({"s": {"input_views": [0, 1, 2]}}))
    with pytest.raises(UserError, match="missing field"):
        read_split(tmp_path / "missing.json")


@pytest.mark.parametrize(("dataset", "image_sub"), [("Synthetic", ""), ("DTU", "images")])
def test_load_scene_cameras_images_masks(tmp_path: Path, dataset: str, image_sub: str) -> None:
    target = np.array([0.2, -0.1, 0.3])
    entry = _entry("scan9" if dataset == "DTU" else "Amp", dataset)
    _write_scene(tmp_path, entry, target, image_sub)
    scene = load_scene(tmp_path, entry)
    assert scene.views == tuple(range(13)) and (scene.cameras.width, scene.cameras.height) == (W, H)
    # Cameras reproduce the projection matrices written to disk (up to scale).
    P = scene.camera(5).projection_matrices()[0].double().numpy()
    P_true = _projection(5, target)
    np.testing.assert_allclose(P / P[2, 3], P_true / P_true[2, 3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rig_target(scene.cameras), torch.from_numpy(target).float(), atol=1e-4, rtol=0)
    images = load_images(scene, [0, 12])
    assert images.shape == (2, H, W, 3)
    torch.testing.assert_close(images[1], torch.full((H, W, 3), round(12 / 20 * 255) / 255))
    masks = load_masks(scene, [2])
    assert masks is not None and int(masks.sum()) == 12 and bool(masks[0, 5, 5])
    views = load_input_views(scene, entry)
    assert views.images.shape == (3, H, W, 3) and len(views.cameras) == 3 and views.masks is not None
    assert scene.available_lightings(0) == [3]


def test_shared_calibration_dir_and_missing_masks(tmp_path: Path) -> None:
    target = np.zeros(3)
    entry = _entry("scan1", "DTU")
    _write_scene(tmp_path / "data", entry, target, cams=False)
    for v in range(13):
        write_projection_matrix(tmp_path / "cal" / camera_filename(v), _projection(v, target))
    with pytest.raises(UserError, match="camera directory not found"):
        load_scene(tmp_path / "data", entry)
    scene = load_scene(tmp_path / "data", entry, calibration_dir=tmp_path / "cal")
    (tmp_path / "data" / "scan1" / "masks" / mask_filename("DTU", 3)).unlink()
    assert load_masks(scene, [1, 3]) is None and load_masks(scene, [1]) is not None


def test_errors_name_the_bad_file(tmp_path: Path) -> None:
    target = np.zeros(3)
    entry = _entry()
    _write_scene(tmp_path, entry, target)
    cams = tmp_path / "Amp" / "cameras"
    (cams / camera_filename(7)).write_text("1 2 3\n4 5 6\n")
    with pytest.raises(UserError, match="pos_008.txt: a projection matrix needs 12"):
        load_scene(tmp_path, entry)
    (cams / camera_filename(7)).write_text("1 2 x 4 5 6 7 8 9 10 11 12")
    with pytest.raises(UserError, match="pos_008.txt: not a projection matrix"):
        read_projection_matrix(cams / camera_filename(7))
    (cams / camera_filename(7)).unlink()
    with pytest.raises(UserError, match=r"missing camera files \['pos_008.txt'\]"):
        load_scene(tmp_path, entry)
    write_projection_matrix(cams / camera_filename(7), _projection(7, target))
    # A camera turned around (looking away from the rig centre) is caught.
    R, t = _look_at(target + np.array([3.0, 0.0, 1.0]), target + np.array([6.0, 0.0, 1.0]))
    K = np.array([[40.0, 0.0, W / 2], [0.0, 40.0, H / 2], [0.0, 0.0, 1.0]])
    write_projection_matrix(cams / camera_filename(7), K @ np.hstack([R, t[:, None]]))
    with pytest.raises(UserError, match=r"cameras/pos_008.txt: camera looks away"):
        load_scene(tmp_path, entry)
    # A matrix that is no pinhole camera (singular left block) is blamed on its own file, not the folder.
    write_projection_matrix(cams / camera_filename(4), np.hstack([np.zeros((3, 3)), np.ones((3, 1))]))
    with pytest.raises(UserError, match=r"cameras/pos_005.txt: projection matrix has a singular left 3x3 block"):
        load_scene(tmp_path, entry)
    write_projection_matrix(cams / camera_filename(4), _projection(4, target))
    write_projection_matrix(cams / camera_filename(7), _projection(7, target))
    scene = load_scene(tmp_path, entry)
    image = tmp_path / "Amp" / image_filename("Synthetic", 2)
    image.unlink()
    with pytest.raises(UserError, match="cam_003_3_0000.png"):
        load_images(scene, [2])
    write_png(image, np.zeros((H + 1, W, 3), np.float32))
    with pytest.raises(UserError, match="differs from the scene"):
        load_images(scene, [2])
    with pytest.raises(UserError, match="scene directory not found"):
        load_scene(tmp_path, _entry("Other"))


# ------------------------------------------------------------------------------------- scene names, duplicates
SEPARATORS = "a scene name must be a plain folder name, without '/' or '\\'"
_GOOD = {"input_views": [0, 1, 2], "test_views": [3, 4, 5, 6, 7, 8, 9, 10, 11, 12], "dataset": "DTU"}


@pytest.mark.parametrize(
    ("scene", "reason"),
    [
        ("../x", SEPARATORS),
        ("/abs/scene", SEPARATORS),
        ("a/b", SEPARATORS),
        ("a\\b", SEPARATORS),
        ("..", "'.' and '..' are not scene names"),
        (".", "'.' and '..' are not scene names"),
        ("", "must be a non-empty string"),
        ("scan\n1", "control characters"),
    ],
)
def test_split_scene_names_must_be_plain(tmp_path: Path, scene: str, reason: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"scan1": _GOOD, scene: _GOOD}))
    with pytest.raises(UserError) as info:
        read_split(path)
    assert str(info.value).startswith(f"{path}: scene {scene!r}: ")
    assert str(info.value).endswith(reason) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="SplitEntry.scene"):
        SplitEntry(scene, (0, 1, 2), tuple(range(3, 13)), "DTU")


def test_split_duplicate_keys_are_errors(tmp_path: Path) -> None:
    body = json.dumps(_GOOD)
    path = tmp_path / "dup.json"
    path.write_text(f'{{"scan1": {body}, "scan2": {body}, "scan1": {body}}}')
    with pytest.raises(UserError) as info:
        read_split(path)
    assert str(info.value) == f"{path}: scene 'scan1' appears more than once (each scene name must be unique)"
    path.write_text('{"scan1": {"input_views": [0, 1, 2], "test_views": [3, 4, 5, 6, 7, 8, 9, 10, 11, 12], '
                    '"dataset": "DTU", "input_views": [20, 21, 22]}}')
    with pytest.raises(UserError) as info:
        read_split(path)
    assert str(info.value) == f"{path}: scene 'scan1': field 'input_views' appears more than once"
    entry = _entry()
    with pytest.raises(ValueError, match=r"scenes \['Amp'\] appear more than once"):
        write_split(tmp_path / "w.json", [entry, _entry("scan1", "DTU"), entry])
    assert not (tmp_path / "w.json").exists()


def test_one_wrongly_sized_image_is_blamed_alone(tmp_path: Path) -> None:
    """The scene size is the majority size: the odd image is named, the correct ones load."""
    entry = _entry()
    _write_scene(tmp_path, entry, np.zeros(3))
    odd = tmp_path / "Amp" / image_filename("Synthetic", 0)  # the first image load_scene looks at
    write_png(odd, np.zeros((H, W + 3, 3), np.float32))
    scene = load_scene(tmp_path, entry)
    assert (scene.cameras.width, scene.cameras.height) == (W, H)
    assert load_images(scene, [4, 8]).shape == (2, H, W, 3)
    with pytest.raises(UserError) as info:
        load_images(scene, [0])
    assert str(info.value) == f"{odd}: size {W + 3}x{H} differs from the scene's {W}x{H}"
    # With as many images of one size as of another there is no majority: both sizes are named.
    for v in range(1, 12):
        (tmp_path / "Amp" / image_filename("Synthetic", v)).unlink()
    with pytest.raises(UserError, match=rf"disagree in size and no size is the majority \(cam_001_3_0000.png "
                                        rf"{W + 3}x{H}, cam_013_3_0000.png {W}x{H}\)"):
        load_scene(tmp_path, entry)
