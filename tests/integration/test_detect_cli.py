"""``sparse3d-detect`` and ``sparse3d-eval evaluator=kitti_ap ckpt_path=RUN`` end to end on a tiny trained run.

Oracles: the model called directly on the same points (every input format, read by the point-file reader,
must give the boxes of that call); the KITTI label round trip (``read_label`` -> ``camera_to_lidar_boxes``
gives back the JSON's LiDAR boxes); the ``pred=`` evaluation of the detect tool's own label files (the
``ckpt_path=`` mode must score exactly those). The point-file reader is checked against PCD files written here
by hand (ascii and binary, mixed field types) and against the arrays written.

The detection threshold of each run is set between the 20th and 21st highest heatmap scores of the frame (taken
from the model itself), so an under-trained model still gives a handful of boxes and NMS stays cheap.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse3d.datasets.kitti import fov_filter
from sparse3d.geometry.boxes import camera_to_lidar_boxes, wrap_angle
from sparse3d.io.kitti import read_calib, read_image_shape, read_label, read_velodyne
from sparse3d.io.pointcloud import read_point_cloud, write_kitti_bin, write_ply_points
from sparse3d.train.evaluators import load_trained_model

RunCli = Callable[..., subprocess.CompletedProcess[str]]

TRAIN = ["experiment=dsvt_synth", "data.generator.num_frames=6", "+data.generator.num_azimuth=700",
         "trainer.max_steps=6", "trainer.val_every=0"]


def _detect_cmd() -> list[str]:
    """The installed console script, or the module until the script is declared in pyproject."""
    script = Path(sys.executable).parent / "sparse3d-detect"
    return [str(script)] if script.exists() else [sys.executable, "-m", "sparse3d.cli.detect"]


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"STDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-3000:]}"


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


# ------------------------------------------------------------------------------------------------ point files
def _pcd_header(fields: list[tuple[str, str, int]], n: int, data: str) -> bytes:
    lines = ["# .PCD v0.7 - Point Cloud Data file format", "VERSION 0.7",
             "FIELDS " + " ".join(f for f, _, _ in fields), "SIZE " + " ".join(str(s) for _, _, s in fields),
             "TYPE " + " ".join(t for _, t, _ in fields), "COUNT " + " ".join("1" for _ in fields),
             f"WIDTH {n}", "HEIGHT 1", "VIEWPOINT 0 0 0 1 0 0 0", f"POINTS {n}", f"DATA {data}"]
    return ("\n".join(lines) + "\n").encode("ascii")


def write_pcd_ascii(path: Path, points: np.ndarray) -> None:
    """x y z intensity as text (each float32 printed exactly)."""
    rows = "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in points.astype(np.float32))
    fields = [("x", "F", 4), ("y", "F", 4), ("z", "F", 4), ("intensity", "F", 4)]
    path.write_bytes(_pcd_header(fields, len(points), "ascii") + rows.encode("ascii"))


def write_pcd_binary(path: Path, points: np.ndarray) -> None:
    """x y z (float32), a uint16 ring, intensity (float64): the reader must skip the ring and cast intensity."""
    record = np.zeros(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("ring", "<u2"),
                                          ("intensity", "<f8")])
    for i, name in enumerate(("x", "y", "z")):
        record[name] = points[:, i]
    record["ring"] = np.arange(len(points)) % 32
    record["intensity"] = points[:, 3]
    fields = [("x", "F", 4), ("y", "F", 4), ("z", "F", 4), ("ring", "U", 2), ("intensity", "F", 8)]
    path.write_bytes(_pcd_header(fields, len(points), "binary") + record.tobytes())


def write_all_formats(folder: Path, points: np.ndarray) -> dict[str, np.ndarray]:
    """One file per format (frame id = file stem) and the points the model must see for each."""
    folder.mkdir(parents=True, exist_ok=True)
    write_kitti_bin(folder / "scan_bin.bin", points)
    np.save(folder / "scan_npy.npy", points)
    write_ply_points(folder / "scan_ply.ply", points[:, :3], intensity=points[:, 3])
    write_pcd_ascii(folder / "scan_pcd_ascii.pcd", points)
    write_pcd_binary(folder / "scan_pcd_binary.pcd", points)
    np.save(folder / "scan_xyz.npy", points[:, :3])  # no intensity column: zeros
    xyz_only = points.copy()
    xyz_only[:, 3] = 0.0
    return {"scan_bin": points, "scan_npy": points, "scan_ply": points, "scan_pcd_ascii": points,
            "scan_pcd_binary": points, "scan_xyz": xyz_only}


def test_point_cloud_reader_reads_every_format_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 20, (257, 3)), rng.uniform(0, 1, (257, 1))], 1).astype(np.float32)
    for stem, expected in write_all_formats(tmp_path, points).items():
        path = next(tmp_path.glob(f"{stem}.*"))
        got = read_point_cloud(path)
        want = expected[:, :3] if stem == "scan_xyz" else expected
        assert got.dtype == np.float32 and np.array_equal(got, want), stem
    # an empty ascii PCD is zero points, not an error
    write_pcd_ascii(tmp_path / "empty.pcd", np.zeros((0, 4), np.float32))
    assert read_point_cloud(tmp_path / "empty.pcd").shape == (0, 4)


@pytest.mark.parametrize("name, content, problem", [
    ("short.pcd", None, "truncated"),
    ("bad.ply", b"not a ply\n", "not a PLY file"),
    ("bad.npy", b"\x93NUMPY garbage", "NumPy"),
    ("odd.bin", b"\x00" * 10, "not a multiple of 16 bytes"),
    ("nofields.pcd", b"VERSION 0.7\nFIELDS a b c\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nPOINTS 0\nDATA ascii\n",
     "do not include x, y and z"),
])
def test_point_cloud_reader_errors_name_the_file(tmp_path: Path, name: str, content: bytes | None,
                                                  problem: str) -> None:
    from sparse3d.utils.errors import UserError

    path = tmp_path / name
    if content is None:
        write_pcd_binary(path, np.ones((10, 4), np.float32))
        path.write_bytes(path.read_bytes()[:-7])
    else:
        path.write_bytes(content)
    with pytest.raises(UserError) as info:
        read_point_cloud(path)
    assert str(path) in str(info.value) and problem in str(info.value)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ bad checkpoints
def test_missing_or_garbage_checkpoint_is_one_line(run_cli: RunCli, tmp_path: Path) -> None:
    scan = tmp_path / "scan.bin"
    write_kitti_bin(scan, np.ones((4, 4), np.float32))
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint\n")
    for ckpt in (tmp_path / "missing_run", garbage, None):
        out = tmp_path / "out"
        args = [*_detect_cmd(), f"input={scan}", f"out={out}", f"paths.output_root={tmp_path / 'o'}"]
        result = run_cli(args + ([f"ckpt={ckpt}"] if ckpt is not None else []))
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        errors = _error_lines(result.stderr)
        assert len(errors) == 1, result.stderr
        assert (str(ckpt) if ckpt is not None else "ckpt= is required") in errors[0]
        assert not out.exists()


# ------------------------------------------------------------------------------------------------ trained run
@pytest.fixture(scope="module")
def trained(run_cli: RunCli, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 6-step DSVT run on 6 generated KITTI frames (~1-2 min on 2 cores)."""
    base = tmp_path_factory.mktemp("detect_run")
    result = run_cli(["sparse3d-train", *TRAIN, f"paths.data_dir={base / 'data'}",
                      f"paths.output_root={base / 'out'}"], timeout=900)
    _ok(result)
    run = next((base / "out" / "train" / "dsvt_synth").iterdir())
    return {"run": run, "root": base / "data" / "synthetic_kitti"}


class Oracle:
    """The trained model called directly, with a decoding threshold giving about 20 boxes on a reference frame."""

    def __init__(self, run: Path, reference: np.ndarray) -> None:
        self.model = load_trained_model(run).model
        with torch.no_grad():
            maps = self.model.forward_maps(self._batch(reference))
        top = torch.sigmoid(maps["hm"]).flatten().topk(21).values
        self.threshold = float((top[19] + top[20]) / 2)
        self.model.dense_head.score_threshold = self.threshold

    @staticmethod
    def _batch(points: np.ndarray) -> dict[str, object]:
        pts = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
        return {"points": pts, "batch_idx": torch.zeros(len(pts), dtype=torch.int32), "batch_size": 1}

    @torch.no_grad()
    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        det = self.model(self._batch(points))[0]
        return (det.boxes.numpy(), det.scores.numpy(),
                [self.model.class_names[int(i)] for i in det.labels])


def _frame(root: Path, frame_id: str) -> tuple[np.ndarray, Path]:
    """The frame's points inside the camera view (what a calibrated run feeds the model) and its calib file."""
    calib_file = root / "training" / "calib" / f"{frame_id}.txt"
    image = root / "training" / "image_2" / f"{frame_id}.png"
    points = read_velodyne(root / "training" / "velodyne" / f"{frame_id}.bin")
    return fov_filter(points, read_calib(calib_file), read_image_shape(image)), calib_file


def _assert_same(entries: list[dict[str, object]], expected: tuple[np.ndarray, np.ndarray, list[str]],
                 what: str) -> None:
    boxes, scores, names = expected
    assert len(entries) == len(names), what
    assert [e["name"] for e in entries] == names, what
    np.testing.assert_allclose([e["score"] for e in entries], scores, rtol=0, atol=1e-6, err_msg=what)
    np.testing.assert_allclose(np.array([e["box_lidar"] for e in entries]).reshape(-1, 7), boxes, rtol=0,
                               atol=1e-5, err_msg=what)


@pytest.mark.slow  # the module's training run plus one detection pass: ~2 min on 2 cores
def test_every_input_format_gives_the_model_boxes(run_cli: RunCli, trained: dict[str, Path], tmp_path: Path) -> None:
    points, calib = _frame(trained["root"], "000003")
    points = points[::2]  # half the points: a faster frame, still full of objects
    oracle = Oracle(trained["run"], points)
    expected = write_all_formats(tmp_path / "scans", points)
    result = run_cli([*_detect_cmd(), f"ckpt={trained['run']}", f"input={tmp_path / 'scans'}", f"calib={calib}",
                      f"score_threshold={oracle.threshold!r}", f"out={tmp_path / 'det'}", "device=cpu",
                      f"paths.output_root={tmp_path / 'o'}"], timeout=600)
    _ok(result)
    detections = json.loads((tmp_path / "det" / "detections.json").read_text())
    assert sorted(detections) == sorted(expected)
    reference = oracle(points)
    assert len(reference[2]) > 0, "the threshold should leave some boxes"
    for frame_id, frame_points in expected.items():
        _assert_same(detections[frame_id], oracle(frame_points), frame_id)
        assert (tmp_path / "det" / "label_2" / f"{frame_id}.txt").is_file()
    assert sorted(p.name for p in (tmp_path / "det" / "label_2").iterdir()) == sorted(f"{k}.txt" for k in expected)


def _copy_frames(root: Path, dest: Path, ids: list[str]) -> Path:
    for sub, ext in (("velodyne", "bin"), ("calib", "txt"), ("image_2", "png")):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        for frame_id in ids:
            shutil.copy(root / "training" / sub / f"{frame_id}.{ext}", dest / sub / f"{frame_id}.{ext}")
    return dest


@pytest.mark.slow
def test_kitti_folder_labels_round_trip_to_the_json_boxes(run_cli: RunCli, trained: dict[str, Path],
                                                          tmp_path: Path) -> None:
    ids = ["000000", "000003", "000005"]
    folder = _copy_frames(trained["root"], tmp_path / "kitti" / "training", ids)
    oracle = Oracle(trained["run"], _frame(trained["root"], "000003")[0])
    out = tmp_path / "det"
    result = run_cli([*_detect_cmd(), f"ckpt={trained['run']}", f"input={folder}", f"out={out}",
                      f"score_threshold={oracle.threshold!r}", "device=cpu", f"paths.output_root={tmp_path / 'o'}"],
                     timeout=600)
    _ok(result)
    detections = json.loads((out / "detections.json").read_text())
    assert sorted(detections) == ids
    assert sorted(p.stem for p in (out / "label_2").iterdir()) == ids
    total = 0
    for frame_id in ids:
        points, calib_file = _frame(trained["root"], frame_id)
        _assert_same(detections[frame_id], oracle(points), frame_id)  # the model saw the in-view points
        objects = read_label(out / "label_2" / f"{frame_id}.txt")
        entries = detections[frame_id]
        total += len(entries)
        assert len(objects) == len(entries)
        if not entries:
            continue
        assert list(objects.name) == [e["name"] for e in entries]
        np.testing.assert_allclose(objects.score, [e["score"] for e in entries], atol=1e-6)
        boxes = camera_to_lidar_boxes(objects.location, objects.hwl, objects.rotation_y, read_calib(calib_file),
                                      dtype=np.float64)
        json_boxes = np.array([e["box_lidar"] for e in entries])
        np.testing.assert_allclose(boxes[:, :6], json_boxes[:, :6], atol=1e-4)
        np.testing.assert_allclose(wrap_angle(boxes[:, 6] - json_boxes[:, 6]), 0.0, atol=1e-5)
    assert total > 0


@pytest.mark.slow
def test_a_corrupt_scan_is_reported_and_the_others_written(run_cli: RunCli, trained: dict[str, Path],
                                                            tmp_path: Path) -> None:
    points, _ = _frame(trained["root"], "000003")
    oracle = Oracle(trained["run"], points)
    scans = tmp_path / "scans"
    write_kitti_bin(scans / "a.bin", points)
    write_kitti_bin(scans / "c.bin", points[::3])
    (scans / "b.bin").write_bytes((scans / "a.bin").read_bytes()[:1001])  # not a whole number of points
    out = tmp_path / "det"
    result = run_cli([*_detect_cmd(), f"ckpt={trained['run']}", f"input={scans}", f"out={out}",
                      f"score_threshold={oracle.threshold!r}", "device=cpu", f"paths.output_root={tmp_path / 'o'}"],
                     timeout=600)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    naming = [line for line in result.stderr.splitlines() if "b.bin" in line]
    assert len(naming) == 1 and "error:" in naming[0] and "16 bytes" in naming[0], result.stderr
    assert "1 of 3 input files could not be read" in result.stderr
    detections = json.loads((out / "detections.json").read_text())
    assert sorted(detections) == ["a", "c"]
    _assert_same(detections["a"], oracle(points), "a")
    _assert_same(detections["c"], oracle(points[::3]), "c")
    assert not (out / "label_2").exists()  # no calibration: no camera-frame labels
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files left


@pytest.mark.slow
def test_eval_with_ckpt_path_scores_the_detect_tool_labels(run_cli: RunCli, trained: dict[str, Path],
                                                           tmp_path: Path) -> None:
    root, run = trained["root"], trained["run"]
    val = (root / "ImageSets" / "val.txt").read_text().split()
    oracle = Oracle(run, _frame(root, val[0])[0])
    threshold = f"score_threshold={oracle.threshold!r}"
    det = tmp_path / "det"
    _ok(run_cli([*_detect_cmd(), f"ckpt={run}", f"input={root}", "split=val", f"out={det}", threshold, "device=cpu",
                 f"paths.output_root={tmp_path / 'o'}"], timeout=600))
    assert sorted(p.stem for p in (det / "label_2").iterdir()) == sorted(val)
    by_pred = run_cli(["sparse3d-eval", "evaluator=kitti_ap", f"pred={det / 'label_2'}", f"gt={root}", "split=val",
                       f"paths.output_root={tmp_path / 'pred_mode'}"])
    _ok(by_pred)
    by_ckpt = run_cli(["sparse3d-eval", "evaluator=kitti_ap", f"ckpt_path={run}", f"gt={root}", "split=val", threshold,
                       "device=cpu", f"paths.output_root={tmp_path / 'ckpt_mode'}"], timeout=600)
    _ok(by_ckpt)
    pred_dir = next((tmp_path / "pred_mode" / "eval").glob("*/*"))
    ckpt_dir = next((tmp_path / "ckpt_mode" / "eval").glob("*/*"))
    for frame_id in val:  # the evaluation detected exactly what the detect tool wrote
        assert (ckpt_dir / "label_2" / f"{frame_id}.txt").read_text() == (det / "label_2" / f"{frame_id}.txt").read_text()
    assert json.loads((ckpt_dir / "detections.json").read_text()) == json.loads((det / "detections.json").read_text())
    a, b = (json.loads((d / "kitti_ap.json").read_text()) for d in (pred_dir, ckpt_dir))
    assert a["classes"] == b["classes"] and a["num_frames"] == b["num_frames"] == len(val)
    assert b["classes"]["Car"]["num_gt"]["hard"] > 0
    results = json.loads((ckpt_dir / "results.json").read_text())
    assert results["checkpoint"] == str(run) and results["metrics"] == json.loads(
        (pred_dir / "results.json").read_text())["metrics"]


@pytest.mark.slow
def test_export_onnx_writes_blocks_that_onnxruntime_runs_like_pytorch(run_cli: RunCli, trained: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from sparse3d.models.dsvt.export import DSVTBlocks, dsvt_blocks_inputs, run_onnx

    points, _ = _frame(trained["root"], "000003")
    np.save(tmp_path / "scan.npy", points[::4])
    onnx_path = tmp_path / "blocks.onnx"
    result = run_cli([*_detect_cmd(), f"ckpt={trained['run']}", f"input={tmp_path / 'scan.npy'}",
                      f"export_onnx={onnx_path}", f"out={tmp_path / 'det'}", "device=cpu",
                      f"paths.output_root={tmp_path / 'o'}"], timeout=600)
    _ok(result)
    assert "exported the DSVT blocks" in result.stdout and onnx_path.is_file()
    # the file runs on another frame (dynamic voxel and set counts) like the PyTorch blocks of the same run
    model = load_trained_model(trained["run"]).model.eval()
    other, _ = _frame(trained["root"], "000001")
    with torch.no_grad():
        pts = torch.from_numpy(np.ascontiguousarray(other, dtype=np.float32))
        voxels = model.vfe(pts, torch.zeros(len(pts), dtype=torch.int32), 1)
        inputs = dsvt_blocks_inputs(model.backbone_3d, voxels.features, voxels.coords)
        expected = DSVTBlocks(model.backbone_3d)(*inputs.values()).numpy()
    assert float(np.abs(run_onnx(onnx_path, inputs) - expected).max()) <= 1e-4
