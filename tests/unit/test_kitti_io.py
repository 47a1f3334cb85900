"""KITTI object files (``sparse3d.io.kitti``): calib, label_2, velodyne and PNG sizes.

Oracles: the public KITTI calibration and label text of a real frame (values checked by hand), write -> read
round trips that must be bit-exact, PNG files written by Pillow, hand-made labels at the difficulty
thresholds, and malformed files that must give one-line UserErrors naming the file and line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparse3d.io.kitti import (
    KittiCalib,
    KittiObjects,
    decimal_float64,
    kitti_difficulty,
    read_calib,
    read_image_shape,
    read_label,
    read_velodyne,
    write_calib,
    write_label,
    write_velodyne,
)
from sparse3d.io.pointcloud import read_kitti_bin
from sparse3d.utils.errors import UserError

# The published calibration of the KITTI 2011_09_26 drive, in the object-benchmark calib layout.
CALIB_TEXT = """\
P0: 7.215377000000e+02 0.000000000000e+00 6.095593000000e+02 0.000000000000e+00 0.000000000000e+00 7.215377000000e+02 1.728540000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00
P1: 7.215377000000e+02 0.000000000000e+00 6.095593000000e+02 -3.875744000000e+02 0.000000000000e+00 7.215377000000e+02 1.728540000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00
P2: 7.215377000000e+02 0.000000000000e+00 6.095593000000e+02 4.485728000000e+01 0.000000000000e+00 7.215377000000e+02 1.728540000000e+02 2.163791000000e-01 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 2.745884000000e-03
P3: 7.215377000000e+02 0.000000000000e+00 6.095593000000e+02 -3.395242000000e+02 0.000000000000e+00 7.215377000000e+02 1.728540000000e+02 2.199936000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 2.729905000000e-03
R0_rect: 9.999239000000e-01 9.837760000000e-03 -7.445048000000e-03 -9.869795000000e-03 9.999421000000e-01 -4.278459000000e-03 7.402527000000e-03 4.351614000000e-03 9.999631000000e-01
Tr_velo_to_cam: 7.533745000000e-03 -9.999714000000e-01 -6.166020000000e-04 -4.069766000000e-03 1.480249000000e-02 7.280733000000e-04 -9.998902000000e-01 -7.631618000000e-02 9.998621000000e-01 7.523790000000e-03 1.480755000000e-02 -2.717806000000e-01
Tr_imu_to_velo: 9.999976000000e-01 7.553071000000e-04 -2.035826000000e-03 -8.086759000000e-01 -7.854027000000e-04 9.998898000000e-01 -1.482298000000e-02 3.195559000000e-01 2.024406000000e-03 1.482454000000e-02 9.998881000000e-01 -7.997231000000e-01

"""

LABEL_TEXT = """\
Pedestrian 0.00 0 -0.20 712.40 143.00 810.73 307.92 1.89 0.48 1.20 1.84 1.47 8.41 0.01
Car 0.88 3 -0.69 0.00 192.37 402.31 374.00 1.60 1.57 3.23 -2.70 1.74 3.68 -1.29
DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _raises_user_error(match: str, fn, *args) -> str:
    with pytest.raises(UserError, match=match) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------ calib
def test_read_calib_values_and_extra(tmp_path: Path) -> None:
    calib = read_calib(_write(tmp_path / "000000.txt", CALIB_TEXT))
    assert calib.P2.shape == (3, 4) and calib.P2.dtype == np.float64
    assert calib.P2[0, 0] == 721.5377 and calib.P2[0, 3] == 44.85728 and calib.P2[2, 3] == 0.002745884
    assert calib.R0_rect.shape == (3, 3) and calib.R0_rect[2, 2] == 0.9999631
    assert calib.Tr_velo_to_cam.shape == (3, 4) and calib.Tr_velo_to_cam[2, 3] == -0.2717806
    assert sorted(calib.extra) == ["P0", "P1", "P3", "Tr_imu_to_velo"]
    assert calib.extra["P1"][0, 3] == -387.5744 and calib.extra["Tr_imu_to_velo"].shape == (3, 4)


def test_calib_transforms_agree_with_the_matrix_chain(tmp_path: Path) -> None:
    calib = read_calib(_write(tmp_path / "c.txt", CALIB_TEXT))
    rng = np.random.default_rng(0)
    pts = rng.uniform([0, -20, -3], [70, 20, 1], size=(50, 3))
    # the chain written out point by point: rect = R0 (Tr p + t)
    expected = np.stack([calib.R0_rect @ (calib.Tr_velo_to_cam[:, :3] @ p + calib.Tr_velo_to_cam[:, 3]) for p in pts])
    rect = calib.lidar_to_rect(pts)
    np.testing.assert_allclose(rect, expected, atol=1e-12)
    np.testing.assert_allclose(calib.rect_to_lidar(rect), pts, atol=1e-9)
    uv, depth = calib.rect_to_image(rect)
    for i in range(len(pts)):
        h = calib.P2 @ np.append(rect[i], 1.0)
        np.testing.assert_allclose(uv[i], h[:2] / h[2], rtol=1e-12)
        np.testing.assert_allclose(depth[i], rect[i, 2], atol=1e-12)
    # a point straight ahead of camera 2's optical centre lands on the principal point (cx, cy) give or take the
    # baseline term of P2
    uv0, _ = calib.rect_to_image(np.array([[0.0, 0.0, 1000.0]]))
    np.testing.assert_allclose(uv0[0], [609.5593, 172.854], atol=0.05)


def test_calib_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    calib = KittiCalib(
        P2=rng.normal(size=(3, 4)), R0_rect=rng.normal(size=(3, 3)), Tr_velo_to_cam=rng.normal(size=(3, 4)),
        extra={"P0": rng.normal(size=(3, 4)), "P1": rng.normal(size=(3, 4)), "P3": rng.normal(size=(3, 4)),
               "Tr_imu_to_velo": rng.normal(size=(3, 4)), "Custom": rng.normal(size=5)},
    )
    write_calib(tmp_path / "out" / "c.txt", calib)
    back = read_calib(tmp_path / "out" / "c.txt")
    for key in ("P2", "R0_rect", "Tr_velo_to_cam"):
        assert np.array_equal(getattr(back, key), getattr(calib, key)), key
    assert sorted(back.extra) == sorted(calib.extra)
    for key, value in calib.extra.items():
        assert np.array_equal(back.extra[key], value), key
    keys = [line.split(":")[0] for line in (tmp_path / "out" / "c.txt").read_text().splitlines()]
    assert keys == ["P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam", "Tr_imu_to_velo", "Custom"]


def test_write_calib_fills_the_lines_index_based_readers_expect(tmp_path: Path) -> None:
    calib = read_calib(_write(tmp_path / "c.txt", CALIB_TEXT))
    minimal = KittiCalib(P2=calib.P2, R0_rect=calib.R0_rect, Tr_velo_to_cam=calib.Tr_velo_to_cam)
    write_calib(tmp_path / "m.txt", minimal)
    lines = (tmp_path / "m.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam",
                                                    "Tr_imu_to_velo"]
    # OpenPCDet takes P2 from line 3, R0 from line 5 and Tr_velo_to_cam from line 6
    assert np.array_equal(np.array(lines[2].split()[1:], dtype=np.float64).reshape(3, 4), calib.P2)
    assert np.array_equal(np.array(lines[4].split()[1:], dtype=np.float64).reshape(3, 3), calib.R0_rect)
    assert np.array_equal(np.array(lines[5].split()[1:], dtype=np.float64).reshape(3, 4), calib.Tr_velo_to_cam)
    back = read_calib(tmp_path / "m.txt")
    assert np.array_equal(back.extra["P0"], calib.P2) and np.array_equal(back.extra["Tr_imu_to_velo"], np.eye(3, 4))


def test_calib_accepts_tracking_spellings(tmp_path: Path) -> None:
    text = CALIB_TEXT.replace("R0_rect:", "R_rect:").replace("Tr_velo_to_cam:", "Tr_velo_cam:")
    calib = read_calib(_write(tmp_path / "c.txt", text))
    assert calib.R0_rect[2, 2] == 0.9999631 and calib.Tr_velo_to_cam[2, 3] == -0.2717806


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.replace("7.402527000000e-03", "7.40x527e-03"), r"c\.txt:5: R0_rect: '7\.40x527e-03' is not a number"),
        (lambda t: t.replace(" 9.999631000000e-01", ""), r"c\.txt:5: R0_rect must have 9 numbers \(3x3\), got 8"),
        (lambda t: t.replace(" -2.717806000000e-01", " -2.7e-01 5.0"), r"c\.txt:6: Tr_velo_to_cam must have 12 numbers"),
        (lambda t: t.replace("P2: ", "P2 "), r"c\.txt:3: expected 'KEY: numbers'"),
        (lambda t: "\n".join(x for x in t.splitlines() if not x.startswith("Tr_velo")), r"c\.txt: calib file lacks Tr_velo_to_cam"),
        (lambda t: t + "P2: " + " ".join(["1"] * 12) + "\n", r"c\.txt:9: P2 given twice \(first on line 3\)"),
        (lambda t: t.replace("2.745884000000e-03", "nan"), r"c\.txt:3: P2 must be finite"),
    ],
)
def test_malformed_calib_names_file_and_line(tmp_path: Path, edit, match: str) -> None:
    path = _write(tmp_path / "c.txt", edit(CALIB_TEXT))
    message = _raises_user_error(match, read_calib, path)
    assert str(path) in message


def test_missing_calib_is_a_user_error(tmp_path: Path) -> None:
    _raises_user_error("calib file not found", read_calib, tmp_path / "nope.txt")


# ------------------------------------------------------------------------------------------------ labels
def test_read_label_real_frame(tmp_path: Path) -> None:
    objects = read_label(_write(tmp_path / "l.txt", LABEL_TEXT))
    assert len(objects) == 3 and list(objects.name) == ["Pedestrian", "Car", "DontCare"]
    np.testing.assert_array_equal(objects.truncated, np.float32([0.0, 0.88, -1]))
    np.testing.assert_array_equal(objects.occluded, [0, 3, -1])
    assert objects.occluded.dtype == np.int32
    np.testing.assert_array_equal(objects.alpha, np.float32([-0.2, -0.69, -10]))
    np.testing.assert_array_equal(objects.bbox[0], np.float32([712.40, 143.00, 810.73, 307.92]))
    np.testing.assert_array_equal(objects.hwl[1], np.float32([1.60, 1.57, 3.23]))
    np.testing.assert_array_equal(objects.location[0], np.float32([1.84, 1.47, 8.41]))
    np.testing.assert_array_equal(objects.rotation_y, np.float32([0.01, -1.29, -10]))
    assert objects.score is None
    for field in ("truncated", "alpha", "bbox", "hwl", "location", "rotation_y"):
        assert getattr(objects, field).dtype == np.float32, field


def test_label_select_and_empty_file(tmp_path: Path) -> None:
    objects = read_label(_write(tmp_path / "l.txt", LABEL_TEXT))
    cars = objects.select(objects.name == "Car")
    assert len(cars) == 1 and cars.hwl[0, 2] == np.float32(3.23)
    picked = objects.select([2, 0])
    assert list(picked.name) == ["DontCare", "Pedestrian"] and picked.location[1, 2] == np.float32(8.41)
    with pytest.raises(ValueError, match="mask"):
        objects.select(np.array([True, False]))
    empty = read_label(_write(tmp_path / "e.txt", ""))
    assert len(empty) == 0 and empty.bbox.shape == (0, 4) and empty.location.shape == (0, 3)
    assert len(read_label(_write(tmp_path / "blank.txt", "\n \n"))) == 0


@pytest.mark.parametrize("with_score", [False, True])
def test_label_round_trip_is_exact(tmp_path: Path, with_score: bool) -> None:
    rng = np.random.default_rng(2)
    m = 25
    objects = KittiObjects(
        name=rng.choice(["Car", "Pedestrian", "Cyclist", "DontCare", "Person_sitting"], size=m),
        truncated=rng.uniform(0, 1, m), occluded=rng.integers(-1, 4, m), alpha=rng.uniform(-np.pi, np.pi, m),
        bbox=rng.uniform(0, 1242, (m, 4)), hwl=rng.uniform(0.3, 5, (m, 3)), location=rng.normal(0, 20, (m, 3)),
        rotation_y=rng.uniform(-np.pi, np.pi, m), score=rng.uniform(0, 1, m) if with_score else None,
    )
    write_label(tmp_path / "sub" / "l.txt", objects)
    back = read_label(tmp_path / "sub" / "l.txt")
    for field in ("name", "truncated", "occluded", "alpha", "bbox", "hwl", "location", "rotation_y"):
        np.testing.assert_array_equal(getattr(back, field), getattr(objects, field), err_msg=field)
    if with_score:
        np.testing.assert_array_equal(back.score, objects.score)
    else:
        assert back.score is None
    assert all(len(line.split()) == (16 if with_score else 15) for line in (tmp_path / "sub" / "l.txt").read_text().splitlines())


def test_write_label_two_decimals_reproduces_kitti_text(tmp_path: Path) -> None:
    objects = read_label(_write(tmp_path / "l.txt", LABEL_TEXT))
    write_label(tmp_path / "w.txt", objects, decimals=2)
    expected = [line.split() for line in LABEL_TEXT.splitlines()]
    got = [line.split() for line in (tmp_path / "w.txt").read_text().splitlines()]
    assert [[float(x) for x in g[1:]] for g in got] == [[float(x) for x in e[1:]] for e in expected]
    assert got[0][:4] == ["Pedestrian", "0.00", "0", "-0.20"] and got[2][:4] == ["DontCare", "-1.00", "-1", "-10.00"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Car 0.00 0 -1.5 10 20 30 40 1.5 1.6 3.9 1 2 abc 0.1\n", r"l\.txt:1: object 'Car' z: 'abc' is not a number"),
        (LABEL_TEXT + "Car 0.00 0 -1.5 10 20 30 40 1.5 1.6 3.9 1 2 10\n", r"l\.txt:4: expected 15 columns .* got 14"),
        ("Car 0.00 0.5 -1.5 10 20 30 40 1.5 1.6 3.9 1 2 10 0.1\n", r"l\.txt:1: occluded must be an integer"),
        ("Car 0.00 0 -1.5 10 20 30 40 1.5 1.6 3.9 1 2 10 0.1\nCar 0.00 0 -1.5 10 20 30 40 1.5 1.6 3.9 1 2 10 0.1 0.9\n",
         r"l\.txt:2: has 16 columns but earlier lines have 15"),
        ("Car 0.00 0 -1.5 10 20 30 40 1.5 inf 3.9 1 2 10 0.1\n", r"l\.txt:1: object 'Car' w must be finite"),
    ],
)
def test_malformed_label_names_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path / "l.txt", text)
    assert str(path) in _raises_user_error(match, read_label, path)


# ------------------------------------------------------------------------------------------------ difficulty
def _objects(rows: list[tuple[str, float, int, float, float]]) -> KittiObjects:
    """(name, truncated, occluded, y1, y2) -> objects with otherwise arbitrary fields."""
    m = len(rows)
    return KittiObjects(
        name=[r[0] for r in rows], truncated=[r[1] for r in rows], occluded=[r[2] for r in rows], alpha=np.zeros(m),
        bbox=[[100.0, r[3], 200.0, r[4]] for r in rows], hwl=np.ones((m, 3)), location=np.ones((m, 3)),
        rotation_y=np.zeros(m),
    )


def test_difficulty_thresholds_devkit_and_openpcdet() -> None:
    rows = [
        ("Car", 0.0, 0, 100.0, 140.5),     # 40.5 px, visible -> easy under both
        ("Car", 0.0, 0, 100.0, 140.0),     # exactly 40 px: devkit needs > 40 -> moderate; OpenPCDet 41 >= 40 -> easy
        ("Car", 0.0, 0, 100.0, 139.25),    # 39.25 px: devkit moderate; OpenPCDet 40.25 -> easy
        ("Car", 0.15, 0, 100.0, 150.0),    # truncation exactly 0.15 is still easy
        ("Car", 0.16, 0, 100.0, 150.0),    # just over -> moderate
        ("Car", 0.0, 1, 100.0, 150.0),     # partly occluded -> moderate
        ("Car", 0.3, 1, 100.0, 125.5),     # moderate at its limits
        ("Car", 0.31, 1, 100.0, 150.0),    # truncation over 0.3 -> hard
        ("Car", 0.0, 2, 100.0, 150.0),     # largely occluded -> hard
        ("Car", 0.5, 2, 100.0, 125.5),     # hard at its limits
        ("Car", 0.51, 0, 100.0, 150.0),    # too truncated -> none
        ("Car", 0.0, 3, 100.0, 150.0),     # occlusion unknown -> none
        ("Car", 0.0, 0, 100.0, 125.0),     # exactly 25 px: devkit none; OpenPCDet 26 -> moderate
        ("Car", 0.0, 0, 100.0, 123.5),     # 23.5 px: none under both (OpenPCDet 24.5 < 25)
        ("DontCare", -1, -1, 100.0, 200.0),  # DontCare is never graded
    ]
    objects = _objects(rows)
    assert kitti_difficulty(objects).tolist() == [0, 1, 1, 0, 1, 1, 1, 2, 2, 2, -1, -1, -1, -1, -1]
    assert kitti_difficulty(objects, "openpcdet").tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, -1, -1, 1, -1, -1]
    assert kitti_difficulty(objects).dtype == np.int32
    assert kitti_difficulty(_objects([])).shape == (0,)
    with pytest.raises(ValueError, match="rule"):
        kitti_difficulty(objects, "waymo")


def test_decimal_float64_recovers_the_file_decimals() -> None:
    values = np.float32([0.15, 0.3, 0.5, -1.0, 712.4, 1e-7])
    assert decimal_float64(values).tolist() == [0.15, 0.3, 0.5, -1.0, 712.4, 1e-7]
    assert values.astype(np.float64)[0] != 0.15  # the trap it avoids


# ------------------------------------------------------------------------------------------------ velodyne
def test_velodyne_round_trip_and_shared_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    points = rng.normal(size=(1000, 4)).astype(np.float32)
    write_velodyne(tmp_path / "v" / "000001.bin", points)
    assert (tmp_path / "v" / "000001.bin").stat().st_size == 1000 * 16
    back = read_velodyne(tmp_path / "v" / "000001.bin")
    assert back.dtype == np.float32 and back.shape == (1000, 4)
    np.testing.assert_array_equal(back, points)
    np.testing.assert_array_equal(read_kitti_bin(tmp_path / "v" / "000001.bin"), points)
    np.testing.assert_array_equal(np.fromfile(tmp_path / "v" / "000001.bin", dtype="<f4").reshape(-1, 4), points)
    write_velodyne(tmp_path / "empty.bin", np.zeros((0, 4), np.float32))
    assert read_velodyne(tmp_path / "empty.bin").shape == (0, 4)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        write_velodyne(tmp_path / "bad.bin", points[:, :3])


def test_velodyne_bad_size_and_nan_are_user_errors(tmp_path: Path) -> None:
    path = tmp_path / "000002.bin"
    np.arange(4 * 10 + 2, dtype="<f4").tofile(path)  # 168 bytes
    message = _raises_user_error("not a multiple of 16 bytes", read_velodyne, path)
    assert str(path) in message and "168" in message
    points = np.ones((20, 4), np.float32)
    points[7, 2] = np.nan
    points[11, 0] = np.inf
    points.tofile(path)
    message = _raises_user_error(r"point 7 \(byte offset 112\) has a non-finite value", read_velodyne, path)
    assert str(path) in message and "2 of 20 points" in message
    _raises_user_error("velodyne scan not found", read_velodyne, tmp_path / "missing.bin")


# ------------------------------------------------------------------------------------------------ images
def test_png_header_size(tmp_path: Path) -> None:
    Image.new("RGB", (1242, 375)).save(tmp_path / "a.png")
    Image.new("L", (7, 3)).save(tmp_path / "b.png")
    assert read_image_shape(tmp_path / "a.png") == (375, 1242)
    assert read_image_shape(tmp_path / "b.png") == (3, 7)
    Image.new("RGB", (8, 5)).save(tmp_path / "c.jpg")
    _raises_user_error("not a PNG file", read_image_shape, tmp_path / "c.jpg")
    (tmp_path / "short.png").write_bytes(b"\x89PNG\r\n")
    _raises_user_error("not a PNG file", read_image_shape, tmp_path / "short.png")
