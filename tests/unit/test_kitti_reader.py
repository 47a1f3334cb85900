"""The KITTI object reader (``sparse3d.datasets.kitti``) and ``sparse3d-data kitti_infos``.

Each test writes its own tiny KITTI folder (published calibration, hand-made labels, numpy-written scans).
Oracles: boxes from the documented label -> LiDAR conversion, points placed at known pixels and depths so
that which ones are in the camera's view and in each box is known by construction, an independent
re-implementation of OpenPCDet's counting (float32 field-of-view flag, convex hull of the corners) on a random
frame, and the info cache compared field by field with :func:`load_frame`.
"""

from __future__ import annotations

import math
import pickle
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparse3d.datasets.kitti import (
    build_info_cache,
    fov_filter,
    fov_mask,
    load_frame,
    read_split,
)
from sparse3d.geometry.boxes import box_corners, camera_to_lidar_boxes, points_in_boxes
from sparse3d.io.kitti import (
    KittiCalib,
    decimal_float64,
    kitti_difficulty,
    read_label,
    write_calib,
    write_velodyne,
)
from sparse3d.utils.errors import UserError

RunCli = Callable[..., subprocess.CompletedProcess[str]]

CALIB = KittiCalib(
    P2=np.array([[721.5377, 0.0, 609.5593, 44.85728], [0.0, 721.5377, 172.854, 0.2163791], [0.0, 0.0, 1.0, 0.002745884]]),
    R0_rect=np.array([[0.9999239, 0.00983776, -0.007445048], [-0.009869795, 0.9999421, -0.004278459],
                      [0.007402527, 0.004351614, 0.9999631]]),
    Tr_velo_to_cam=np.array([[0.007533745, -0.9999714, -0.000616602, -0.004069766],
                             [0.01480249, 0.0007280733, -0.9998902, -0.07631618],
                             [0.9998621, 0.00752379, 0.01480755, -0.2717806]]),
)
H, W = 375, 1242

# Car ahead (easy), car cut by the right image border (moderate: truncated 0.25), cyclist behind the sensor
# (out of view: no level, too small a 2-D box), then a DontCare region.
LABEL = """\
Car 0.00 0 -1.58 500.00 170.00 700.00 260.00 1.50 1.60 4.00 1.00 1.60 15.00 0.20
Car 0.25 1 -0.70 1100.00 160.00 1241.00 300.00 1.50 1.70 4.20 8.60 1.60 10.00 0.00
Cyclist 0.00 0 1.00 0.00 0.00 0.00 0.00 1.70 0.60 1.80 0.00 1.60 -6.00 1.57
DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10
"""


def _pixel_points(u: np.ndarray, v: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """LiDAR points that project (with P2) to pixel (u, v) at rectified depth ``depth``."""
    p = CALIB.P2
    # P2 @ [x, y, z, 1] = w (u, v, 1) with w = z + p[2, 3]; solve the first two rows for x, y
    w = depth + p[2, 3]
    x = (u * w - p[0, 2] * depth - p[0, 3]) / p[0, 0]
    y = (v * w - p[1, 2] * depth - p[1, 3]) / p[1, 1]
    return CALIB.rect_to_lidar(np.stack([x, y, depth], axis=1))


def _points_in_box(box: np.ndarray, n: int, rng: np.random.Generator, shrink: float = 0.95) -> np.ndarray:
    local = rng.uniform(-0.5, 0.5, size=(n, 3)) * box[3:6] * shrink
    c, s = math.cos(box[6]), math.sin(box[6])
    return np.stack([local[:, 0] * c - local[:, 1] * s, local[:, 0] * s + local[:, 1] * c, local[:, 2]], 1) + box[:3]


def _write_frame(root: Path, fid: str, points: np.ndarray, label: str | None, image: tuple[int, int] | None = (H, W),
                 subset: str = "training") -> None:
    folder = root / subset
    pts = np.concatenate([points[:, :3], np.full((len(points), 1), 0.5)], axis=1) if points.shape[1] == 3 else points
    write_velodyne(folder / "velodyne" / f"{fid}.bin", pts.astype(np.float32))
    write_calib(folder / "calib" / f"{fid}.txt", CALIB)
    if label is not None:
        (folder / "label_2").mkdir(parents=True, exist_ok=True)
        (folder / "label_2" / f"{fid}.txt").write_text(label)
    if image is not None:
        (folder / "image_2").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (image[1], image[0])).save(folder / "image_2" / f"{fid}.png")


def _hand_frame(root: Path, fid: str = "000000", image: tuple[int, int] | None = (H, W)) -> dict[str, object]:
    """The LABEL frame with points whose view and box membership are known; returns the expected counts."""
    rng = np.random.default_rng(0)
    objects = read_label_text(root, LABEL)
    boxes = camera_to_lidar_boxes(objects.location[:3], decimal_float64(objects.hwl[:3]),
                                  decimal_float64(objects.rotation_y[:3]), CALIB, dtype=np.float64)
    inside = [_points_in_box(b, n, rng) for b, n in zip(boxes, (300, 400, 50))]
    # the border car: keep its points at least a pixel away from the right border, so "in view" is unambiguous
    u = CALIB.rect_to_image(CALIB.lidar_to_rect(inside[1]))[0][:, 0]
    inside[1] = inside[1][np.abs(u - W) > 1.0]
    u = CALIB.rect_to_image(CALIB.lidar_to_rect(inside[1]))[0][:, 0]
    expected = [len(inside[0]), int((u < W - 1.0).sum()), 0]
    assert 0 < expected[1] < len(inside[1])  # the box really is cut by the border
    # background: points at known pixels, some in view, some left/right of it, some behind the camera
    bg_u = rng.uniform(-300, W + 300, 2000)
    bg_v = rng.uniform(-50, H + 50, 2000)
    bg_d = rng.uniform(30, 60, 2000)
    background = _pixel_points(bg_u, bg_v, bg_d)
    in_view = (bg_u >= 0) & (bg_u < W) & (bg_v >= 0) & (bg_v < H)
    keep = (np.minimum(np.abs(bg_u), np.abs(bg_u - W)) > 1.0) & (np.minimum(np.abs(bg_v), np.abs(bg_v - H)) > 1.0)
    background, in_view = background[keep], in_view[keep]
    assert not points_in_boxes(background, boxes).any()
    points = np.concatenate([*inside, background])
    _write_frame(root, fid, points, LABEL, image)
    return {"boxes": boxes, "counts": expected, "num_points": len(points), "fov_points": sum(expected[:2])
            + int(in_view.sum()), "background_in_view": int(in_view.sum())}


def read_label_text(tmp: Path, text: str):
    path = tmp / "_label.txt"
    path.write_text(text)
    objects = read_label(path)
    path.unlink()
    return objects


# --------------------------------------------------------------------------------------------- load_frame
def test_load_frame_hand_frame(tmp_path: Path) -> None:
    root = tmp_path / "kitti"
    root.mkdir()
    known = _hand_frame(root)
    frame = load_frame(root, "000000")
    assert frame.frame_id == "000000" and len(frame) == 3
    assert frame.points.shape == (known["num_points"], 4) and frame.points.dtype == np.float32
    assert frame.names.tolist() == ["Car", "Car", "Cyclist"]
    assert frame.boxes.dtype == np.float32 and frame.boxes.shape == (3, 7)
    np.testing.assert_allclose(frame.boxes, known["boxes"], atol=1e-5)
    # hand check of the documented conversion for the first car: location (1, 1.6, 15) h=1.5 w=1.6 l=4 ry=0.2
    centre = CALIB.rect_to_lidar(np.array([[1.0, 1.6, 15.0]]))[0] + [0, 0, 0.75]
    np.testing.assert_allclose(frame.boxes[0], [*centre, 4.0, 1.6, 1.5, -(0.2 + np.pi / 2)], atol=1e-5)
    assert frame.difficulty.tolist() == [0, 1, -1]
    assert frame.num_points_in_gt.tolist() == known["counts"] and frame.num_points_in_gt.dtype == np.int32
    np.testing.assert_array_equal(frame.dontcare_bbox, np.float32([[503.89, 169.71, 590.61, 190.13]]))
    assert frame.dontcare_boxes.shape == (1, 7)
    assert frame.image_shape == (H, W) and frame.image_shape_from_file
    assert frame.objects is not None and len(frame.objects) == 4
    # the FOV filter keeps exactly the constructed in-view points
    in_view = fov_mask(frame.points, frame.calib, frame.image_shape)
    assert int(in_view.sum()) == known["fov_points"]
    assert fov_filter(frame.points, frame.calib, frame.image_shape).shape == (known["fov_points"], 4)
    assert load_frame(root, 0, fov_only=True).points.shape == (known["fov_points"], 4)
    assert load_frame(root, 0).num_points_in_gt.tolist() == known["counts"]


def test_points_behind_the_camera_are_out_of_view() -> None:
    ahead = _pixel_points(np.array([600.0]), np.array([180.0]), np.array([20.0]))
    behind = CALIB.rect_to_lidar(CALIB.lidar_to_rect(ahead) * [-1, -1, -1])  # mirrored through the camera
    uv, depth = CALIB.rect_to_image(CALIB.lidar_to_rect(behind))
    assert depth[0] < 0 and 0 <= uv[0, 0] < W and 0 <= uv[0, 1] < H  # projects inside the image...
    assert fov_mask(np.concatenate([ahead, behind]), CALIB, (H, W)).tolist() == [True, False]  # ...yet is dropped


def _openpcdet_style_counts(points: np.ndarray, boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Independent re-implementation of OpenPCDet's count: float32 calib and points, u/v divided by the
    rectified z, depth >= 0, then the convex hull of the 8 corners (half-spaces of its faces)."""
    v2c = CALIB.Tr_velo_to_cam.astype(np.float32)
    r0 = CALIB.R0_rect.astype(np.float32)
    p2 = CALIB.P2.astype(np.float32)
    pts = points[:, :3].astype(np.float32)
    rect = np.hstack([pts, np.ones((len(pts), 1), np.float32)]) @ np.dot(v2c.T, r0.T)
    img = np.hstack([rect, np.ones((len(rect), 1), np.float32)]) @ p2.T
    u, v = img[:, 0] / rect[:, 2], img[:, 1] / rect[:, 2]
    keep = (u >= 0) & (u < shape[1]) & (v >= 0) & (v < shape[0]) & (img[:, 2] - p2[2, 3] >= 0)
    fov = points[keep, :3].astype(np.float64)
    faces = [(0, 1, 2, 3), (4, 5, 6, 7), (0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (3, 0, 4, 7)]
    counts = []
    for c in box_corners(boxes):
        ok = np.ones(len(fov), dtype=bool)
        centre = c.mean(axis=0)
        for f in faces:
            normal = np.cross(c[f[1]] - c[f[0]], c[f[3]] - c[f[0]])
            normal = normal if np.dot(normal, c[f[0]] - centre) > 0 else -normal
            ok &= (fov - c[f[0]]) @ normal <= 1e-12 * np.linalg.norm(normal)
        counts.append(int(ok.sum()))
    return np.array(counts)


def test_num_points_in_gt_matches_openpcdet_style_count_on_a_random_frame(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    m = 25
    loc = np.stack([rng.uniform(-15, 15, m), rng.uniform(1.0, 2.0, m), rng.uniform(-5, 45, m)], axis=1)
    hwl = rng.uniform(0.8, 4.5, (m, 3))
    ry = rng.uniform(-np.pi, np.pi, m)
    lines = [f"Car 0.00 0 0.00 10.00 100.00 200.00 180.00 {h:.2f} {w:.2f} {length:.2f} {x:.2f} {y:.2f} {z:.2f} {r:.2f}"
             for (h, w, length), (x, y, z), r in zip(hwl, loc, ry)]
    label = "\n".join(lines) + "\n"
    objects = read_label_text(tmp_path, label)
    boxes = camera_to_lidar_boxes(objects.location, decimal_float64(objects.hwl), decimal_float64(objects.rotation_y),
                                  CALIB, dtype=np.float64)
    points = np.concatenate([_points_in_box(b, 200, rng, shrink=1.2) for b in boxes]
                            + [rng.uniform([-10, -25, -3], [50, 25, 1], (20000, 3))])
    root = tmp_path / "kitti"
    _write_frame(root, "000007", points, label, image=(370, 1224))
    frame = load_frame(root, "000007")
    expected = _openpcdet_style_counts(points.astype(np.float32), boxes, (370, 1224))
    assert expected.sum() > 1000 and (expected == 0).any()  # both in-view and out-of-view boxes occur
    np.testing.assert_array_equal(frame.num_points_in_gt, expected)


def test_image_shape_default_and_difficulty_rule(tmp_path: Path) -> None:
    root = tmp_path / "kitti"
    root.mkdir()
    _hand_frame(root, image=None)
    frame = load_frame(root, "000000")
    assert frame.image_shape == (375, 1242) and not frame.image_shape_from_file
    narrow = load_frame(root, "000000", image_shape=(375, 1000))
    assert narrow.image_shape == (375, 1000) and narrow.num_points_in_gt[1] == 0  # the border car leaves the view
    objects = frame.objects
    assert objects is not None
    pcdet = load_frame(root, "000000", difficulty_rule="openpcdet").difficulty
    assert pcdet.tolist() == kitti_difficulty(objects, "openpcdet")[objects.name != "DontCare"].tolist()


def test_testing_subset_and_missing_files(tmp_path: Path) -> None:
    root = tmp_path / "kitti"
    rng = np.random.default_rng(1)
    _write_frame(root, "000003", rng.normal(size=(50, 3)), None, subset="testing")
    frame = load_frame(root, "000003", subset="testing")
    assert frame.objects is None and frame.boxes.shape == (0, 7) and frame.num_points_in_gt.shape == (0,)
    _write_frame(root, "000004", rng.normal(size=(50, 3)), None)
    with pytest.raises(UserError, match=r"label_2/000004\.txt: KITTI label file not found"):
        load_frame(root, "000004")
    with pytest.raises(UserError, match=r"velodyne/000009\.bin: KITTI velodyne scan not found"):
        load_frame(root, 9)
    with pytest.raises(UserError, match="does not exist"):
        load_frame(tmp_path / "nowhere", "000000")
    with pytest.raises(UserError, match="subset"):
        load_frame(root, "000003", subset="validation")
    with pytest.raises(UserError, match="frame id"):
        load_frame(root, "../000003")
    # an empty label file is a frame without objects
    _write_frame(root, "000005", rng.normal(size=(50, 3)), "")
    empty = load_frame(root, "000005")
    assert empty.boxes.shape == (0, 7) and empty.names.shape == (0,) and empty.dontcare_bbox.shape == (0, 4)


def test_malformed_frame_files_name_file_and_line(tmp_path: Path) -> None:
    root = tmp_path / "kitti"
    _write_frame(root, "000001", np.ones((10, 3)), LABEL.replace("1.60 4.00", "1.60 4.0O"))
    with pytest.raises(UserError, match=r"label_2/000001\.txt:1: object 'Car' l: '4\.0O' is not a number"):
        load_frame(root, "000001")
    _write_frame(root, "000002", np.ones((10, 3)), LABEL)
    (root / "training" / "velodyne" / "000002.bin").write_bytes(b"\0" * 20)
    with pytest.raises(UserError, match=r"velodyne/000002\.bin: .*not a multiple of 16 bytes"):
        load_frame(root, "000002")


# --------------------------------------------------------------------------------------------- splits and cache
def _dataset(tmp_path: Path) -> Path:
    root = tmp_path / "kitti"
    root.mkdir()
    _hand_frame(root, "000000")
    rng = np.random.default_rng(2)
    _write_frame(root, "000001", rng.uniform(-20, 40, (500, 3)), LABEL.splitlines()[0] + "\n", image=None)
    _write_frame(root, "000002", rng.uniform(-20, 40, (500, 3)), "")
    _write_frame(root, "000010", rng.uniform(-20, 40, (300, 3)), None, subset="testing")
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("000000\n000002\n\n")
    (root / "ImageSets" / "val.txt").write_text("000001\n")
    (root / "ImageSets" / "test.txt").write_text("000010\n")
    return root


def test_read_split(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    assert read_split(root, "train") == ["000000", "000002"]
    assert read_split(root, "test") == ["000010"]
    with pytest.raises(UserError, match=r"ImageSets/trainval\.txt: split file not found .*\['test', 'train', 'val'\]"):
        read_split(root, "trainval")
    (root / "ImageSets" / "bad.txt").write_text("000000\n000001 000002\n")
    with pytest.raises(UserError, match=r"bad\.txt:2: expected one frame id per line"):
        read_split(root, "bad")


def _check_info(info: dict, frame) -> None:
    assert info["point_cloud"] == {"num_features": 4, "lidar_idx": frame.frame_id}
    assert info["image"]["image_idx"] == frame.frame_id
    assert info["image"]["image_shape"].dtype == np.int32 and info["image"]["image_shape"].tolist() == list(frame.image_shape)
    for key, matrix in (("P2", frame.calib.P2), ("R0_rect", frame.calib.R0_rect), ("Tr_velo_to_cam", frame.calib.Tr_velo_to_cam)):
        m = info["calib"][key]
        assert m.shape == (4, 4)
        np.testing.assert_array_equal(m[: matrix.shape[0], : matrix.shape[1]], matrix)
        np.testing.assert_array_equal(m[3], [0, 0, 0, 1])
    if frame.objects is None:
        assert "annos" not in info
        return
    a, o = info["annos"], frame.objects
    cared = o.name != "DontCare"
    assert a["name"].tolist() == o.name.tolist()
    assert a["name"][cared].tolist() == frame.names.tolist()
    np.testing.assert_array_equal(a["truncated"], decimal_float64(o.truncated))
    np.testing.assert_array_equal(a["occluded"], o.occluded)
    np.testing.assert_array_equal(a["alpha"], decimal_float64(o.alpha))
    np.testing.assert_array_equal(a["bbox"], o.bbox)
    np.testing.assert_array_equal(a["dimensions"], decimal_float64(o.hwl)[:, [2, 0, 1]].reshape(-1, 3))
    np.testing.assert_array_equal(a["location"], o.location)
    np.testing.assert_array_equal(a["rotation_y"], decimal_float64(o.rotation_y))
    np.testing.assert_array_equal(a["score"], np.full(len(o), -1.0))
    np.testing.assert_array_equal(a["difficulty"][cared], frame.difficulty)
    np.testing.assert_array_equal(a["num_points_in_gt"][cared], frame.num_points_in_gt)
    assert (a["difficulty"][~cared] == -1).all() and (a["num_points_in_gt"][~cared] == -1).all()
    assert a["index"].tolist() == [i if c else -1 for i, c in zip(np.cumsum(cared) - 1, cared)]
    assert a["gt_boxes_lidar"].dtype == np.float64 and a["gt_boxes_lidar"].shape == (int(cared.sum()), 7)
    np.testing.assert_array_equal(a["gt_boxes_lidar"].astype(np.float32), frame.boxes)
    assert a["difficulty"].dtype == np.int32 and a["index"].dtype == np.int32 and a["num_points_in_gt"].dtype == np.int32


def test_info_cache_equals_load_frame(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    out = build_info_cache(root, splits=("train", "val", "trainval", "test"), progress=False)
    assert out == root
    assert sorted(p.name for p in root.glob("*.pkl")) == [f"kitti_infos_{s}.pkl" for s in ("test", "train", "trainval", "val")]
    assert not list(root.glob(".*tmp"))
    infos = {s: pickle.loads((root / f"kitti_infos_{s}.pkl").read_bytes()) for s in ("train", "val", "trainval", "test")}
    assert [i["point_cloud"]["lidar_idx"] for i in infos["train"]] == ["000000", "000002"]
    assert [i["point_cloud"]["lidar_idx"] for i in infos["trainval"]] == ["000000", "000002", "000001"]
    for split in ("train", "val", "trainval"):
        for info in infos[split]:
            _check_info(info, load_frame(root, info["point_cloud"]["lidar_idx"]))
    _check_info(infos["test"][0], load_frame(root, "000010", subset="testing"))
    assert infos["train"][0]["annos"]["num_points_in_gt"].tolist()[:3] == load_frame(root, 0).num_points_in_gt.tolist()
    assert infos["val"][0]["image"]["image_shape"].tolist() == [375, 1242]  # no PNG: the documented default


def test_info_cache_writes_nothing_on_a_bad_frame_and_respects_overwrite(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    build_info_cache(root, splits=["train"], out_dir=tmp_path / "infos", progress=False)
    with pytest.raises(UserError, match="already exists"):
        build_info_cache(root, splits=["train"], out_dir=tmp_path / "infos", overwrite=False, progress=False)
    (root / "ImageSets" / "val.txt").write_text("000001\n000099\n")
    with pytest.raises(UserError, match=r"velodyne/000099\.bin"):
        build_info_cache(root, splits=["train", "val"], out_dir=tmp_path / "fresh", progress=False)
    assert not (tmp_path / "fresh").exists() or not list((tmp_path / "fresh").iterdir())


def test_sparse3d_data_kitti_infos_cli(run_cli: RunCli, tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    result = run_cli(["sparse3d-data", "kitti_infos", f"root={root}", f"paths.output_root={tmp_path / 'o'}",
                      "generator.progress=false"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(root) in result.stdout
    train = pickle.loads((root / "kitti_infos_train.pkl").read_bytes())
    _check_info(train[0], load_frame(root, "000000"))
    assert (root / "kitti_infos_val.pkl").is_file() and not (root / "kitti_infos_test.pkl").exists()

    bad = tmp_path / "bad"
    bad.mkdir()
    _hand_frame(bad)
    (bad / "training" / "label_2" / "000000.txt").write_text(LABEL.replace("0.25 1 -0.70", "0.25 x -0.70"))
    (bad / "ImageSets").mkdir()
    (bad / "ImageSets" / "train.txt").write_text("000000\n")
    (bad / "ImageSets" / "val.txt").write_text("000000\n")
    result = run_cli(["sparse3d-data", "kitti_infos", f"root={bad}", f"paths.output_root={tmp_path / 'o'}",
                      "generator.progress=false"])
    assert result.returncode == 2
    assert "sparse3d-data: error:" in result.stderr and "000000.txt:2: object 'Car' occluded: 'x' is not a number" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not list(bad.glob("*.pkl"))

    result = run_cli(["sparse3d-data", "kitti_infos", f"paths.output_root={tmp_path / 'o'}"])
    assert result.returncode == 2 and "root" in result.stderr and "Traceback" not in result.stderr + result.stdout
