"""Round trips and error messages for sparse3d.io.pointcloud (KITTI .bin, SemanticKITTI .label, PLY)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse3d.io.pointcloud import (
    read_kitti_bin,
    read_ply_points,
    read_semantic_kitti_label,
    write_kitti_bin,
    write_ply_points,
    write_semantic_kitti_label,
)


def _open3d():
    """Open3D needs system libraries (e.g. libusb) that minimal images may lack; skip rather than fail."""
    return pytest.importorskip("open3d", exc_type=ImportError)


# ---------------------------------------------------------------------------------------------- KITTI .bin


def test_bin_round_trip_is_bit_exact_and_keeps_nan_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(257, 4)).astype(np.float32)
    pts[5] = np.nan  # NaN rows are legal in the reader
    path = write_kitti_bin(tmp_path / "a" / "000000.bin", pts)
    assert path.stat().st_size == 257 * 16
    back = read_kitti_bin(path)
    assert back.dtype == np.float32 and back.shape == (257, 4)
    assert np.array_equal(back, pts, equal_nan=True)
    # The on-disk layout is plain little-endian float32 rows.
    assert np.array_equal(np.fromfile(path, dtype="<f4").reshape(-1, 4), pts, equal_nan=True)


def test_bin_float64_input_and_other_feature_counts(tmp_path: Path) -> None:
    pts = np.arange(30, dtype=np.float64).reshape(10, 3) / 7.0
    path = write_kitti_bin(tmp_path / "xyz.bin", pts)
    assert np.array_equal(read_kitti_bin(path, num_features=3), pts.astype(np.float32))
    empty = write_kitti_bin(tmp_path / "empty.bin", np.zeros((0, 4), np.float32))
    assert read_kitti_bin(empty).shape == (0, 4)


def test_bin_truncated_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.bin"
    path.write_bytes(np.zeros(9, np.float32).tobytes())  # 36 bytes, not a multiple of 16
    with pytest.raises(ValueError, match=r"broken\.bin.*multiple of 16"):
        read_kitti_bin(path)


def test_bin_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        read_kitti_bin(tmp_path / "nope.bin")


def test_bin_rejects_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\(N, C>=3\)"):
        write_kitti_bin(tmp_path / "x.bin", np.zeros((4, 2), np.float32))


# ---------------------------------------------------------------------------------------------- .label


def test_label_round_trip_and_bit_packing(tmp_path: Path) -> None:
    sem = np.array([0, 10, 40, 50, 70, 71, 80, 65535])
    inst = np.array([0, 3, 0, 0, 0, 0, 0, 65535])
    path = write_semantic_kitti_label(tmp_path / "l" / "000000.label", sem, inst)
    raw = np.fromfile(path, dtype="<u4")
    assert raw[1] == (3 << 16) | 10 and raw[-1] == 0xFFFFFFFF
    s, i = read_semantic_kitti_label(path, num_points=8)
    assert s.dtype == np.int64 and i.dtype == np.int64
    assert np.array_equal(s, sem) and np.array_equal(i, inst)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 65535), st.integers(0, 65535)), max_size=50))
def test_label_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory, pairs: list[tuple[int, int]]
) -> None:
    sem = np.array([p[0] for p in pairs], dtype=np.int64)
    inst = np.array([p[1] for p in pairs], dtype=np.int64)
    path = write_semantic_kitti_label(tmp_path_factory.mktemp("lbl") / "x.label", sem, inst)
    s, i = read_semantic_kitti_label(path)
    assert np.array_equal(s, sem) and np.array_equal(i, inst)


def test_label_count_mismatch_names_the_file(tmp_path: Path) -> None:
    path = write_semantic_kitti_label(tmp_path / "000007.label", np.full(5, 40))
    with pytest.raises(ValueError, match=r"000007\.label.*5 labels.*6 points"):
        read_semantic_kitti_label(path, num_points=6)


def test_label_truncated_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "bad.label"
    path.write_bytes(b"\x00" * 7)
    with pytest.raises(ValueError, match=r"bad\.label.*multiple of 4"):
        read_semantic_kitti_label(path)
    with pytest.raises(FileNotFoundError, match="missing.label"):
        read_semantic_kitti_label(tmp_path / "missing.label")


def test_label_writer_validates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\[0, 65535\]"):
        write_semantic_kitti_label(tmp_path / "x.label", np.array([70000]))
    with pytest.raises(ValueError, match="shape"):
        write_semantic_kitti_label(tmp_path / "x.label", np.array([1, 2]), np.array([1]))


# ---------------------------------------------------------------------------------------------- PLY


def _cloud(n: int = 200) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    normals = rng.normal(size=(n, 3))
    return {
        "xyz": (rng.normal(size=(n, 3)) * 20).astype(np.float32),
        "intensity": rng.random(n).astype(np.float32),
        "colors": rng.integers(0, 256, size=(n, 3), dtype=np.uint8),
        "normals": (normals / np.linalg.norm(normals, axis=1, keepdims=True)).astype(np.float32),
        "label": rng.integers(0, 20, size=n).astype(np.int32),
        "mask": rng.integers(0, 2, size=n).astype(np.uint8),
    }


def test_ply_round_trip_is_exact(tmp_path: Path) -> None:
    c = _cloud()
    path = write_ply_points(tmp_path / "c.ply", **c)
    head = path.read_bytes()[:400]
    assert head.startswith(b"ply\nformat binary_little_endian 1.0\n")
    assert b"property uchar red" in head and b"property float nx" in head and b"property int label" in head
    back = read_ply_points(path)
    assert set(back) == set(c)
    for key, value in c.items():
        assert back[key].dtype == value.dtype, key
        assert np.array_equal(back[key], value), key


def test_ply_float_colors_are_scaled_to_uint8(tmp_path: Path) -> None:
    xyz = np.zeros((3, 3), np.float32)
    path = write_ply_points(tmp_path / "c.ply", xyz, colors=np.array([[0, 0.5, 1.0]] * 3))
    assert np.array_equal(read_ply_points(path)["colors"][0], [0, 128, 255])


def test_open3d_reads_our_ply_with_identical_values(tmp_path: Path) -> None:
    o3d = _open3d()
    c = _cloud()
    path = write_ply_points(tmp_path / "c.ply", **c)
    pcd = o3d.io.read_point_cloud(str(path))
    assert np.array_equal(np.asarray(pcd.points), c["xyz"].astype(np.float64))
    assert np.allclose(np.asarray(pcd.colors), c["colors"] / 255.0)
    assert np.allclose(np.asarray(pcd.normals), c["normals"])


def test_we_read_open3d_written_ply(tmp_path: Path) -> None:
    o3d = _open3d()
    xyz = np.random.default_rng(2).normal(size=(50, 3))
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    for ascii_mode in (False, True):
        path = tmp_path / f"o3d_{ascii_mode}.ply"
        assert o3d.io.write_point_cloud(str(path), pcd, write_ascii=ascii_mode)
        assert np.allclose(read_ply_points(path)["xyz"], xyz, atol=1e-5)


def test_ply_ascii_and_big_endian_with_a_preceding_element(tmp_path: Path) -> None:
    ascii_path = tmp_path / "a.ply"
    ascii_path.write_text(
        "ply\nformat ascii 1.0\ncomment hand written\nelement vertex 2\nproperty float x\nproperty float y\n"
        "property float z\nproperty uchar flag\nelement face 0\nproperty list uchar int vertex_indices\n"
        "end_header\n1 2 3 1\n4.5 5 6 0\n"
    )
    d = read_ply_points(ascii_path)
    assert np.array_equal(d["xyz"], np.array([[1, 2, 3], [4.5, 5, 6]], np.float32))
    assert np.array_equal(d["flag"], [1, 0]) and d["flag"].dtype == np.uint8

    big = tmp_path / "b.ply"
    header = (
        "ply\nformat binary_big_endian 1.0\nelement camera 1\nproperty double fx\n"
        "element vertex 2\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    )
    body = np.array([500.0], ">f8").tobytes() + np.array([1, 2, 3, -4, 5, 6], ">f4").tobytes()
    big.write_bytes(header.encode() + body)
    assert np.array_equal(read_ply_points(big)["xyz"], [[1, 2, 3], [-4, 5, 6]])


def test_ply_errors_name_the_file(tmp_path: Path) -> None:
    path = write_ply_points(tmp_path / "t.ply", np.zeros((10, 3), np.float32))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"t\.ply.*truncated"):
        read_ply_points(path)
    other = tmp_path / "x.ply"
    other.write_bytes(b"OFF\n0 0 0\n")
    with pytest.raises(ValueError, match=r"x\.ply.*not a PLY"):
        read_ply_points(other)
    with pytest.raises(FileNotFoundError, match="absent.ply"):
        read_ply_points(tmp_path / "absent.ply")
    with pytest.raises(ValueError, match="rows"):
        write_ply_points(tmp_path / "y.ply", np.zeros((3, 3)), intensity=np.zeros(4))
    with pytest.raises(ValueError, match="dtype"):
        write_ply_points(tmp_path / "y.ply", np.zeros((3, 3)), ids=np.zeros(3, np.int64))
