"""`sparse3d-data kitti` through the console script: the KITTI object layout read back with the KITTI readers,
extension of an existing generation, and one-line errors for a folder it must not write into."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sparse3d.geometry.boxes import camera_to_lidar_boxes, count_points_in_boxes
from sparse3d.io.kitti import read_calib, read_image_shape, read_label, read_velodyne

RunCli = Callable[..., subprocess.CompletedProcess[str]]


def test_data_kitti_cli_writes_and_extends_a_kitti_layout(run_cli: RunCli, tmp_path: Path) -> None:
    out = tmp_path / "kitti"
    base = ["sparse3d-data", "kitti", f"out_dir={out}", f"paths.output_root={tmp_path / 'o'}"]
    result = run_cli([*base, "num_frames=2", "generator.progress=false"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(out) in result.stdout
    assert (out / "ImageSets/train.txt").read_text().split() == ["000000"]
    assert (out / "ImageSets/val.txt").read_text().split() == ["000001"]
    for i in range(2):
        stem = f"{i:06d}"
        points = read_velodyne(out / "training/velodyne" / f"{stem}.bin")
        assert 110_000 <= len(points) <= 130_000
        assert read_image_shape(out / "training/image_2" / f"{stem}.png") == (375, 1242)
        calib = read_calib(out / "training/calib" / f"{stem}.txt")
        labels = read_label(out / "training/label_2" / f"{stem}.txt")
        real = labels.name != "DontCare"
        assert real.any() and set(labels.name) <= {"Car", "Van", "Truck", "Pedestrian", "Cyclist", "DontCare"}
        boxes = camera_to_lidar_boxes(labels.location[real], labels.hwl[real], labels.rotation_y[real], calib)
        assert count_points_in_boxes(points, boxes).min() >= 3
        assert np.all(boxes[:, 0] > 0)  # labelled objects are in front of the car
    frame0 = (out / "training/velodyne/000000.bin").read_bytes()

    # The same folder with more frames: a progress bar on stderr, old frames kept, the split extended.
    more = run_cli([*base, "num_frames=3"])
    assert more.returncode == 0, more.stderr[-3000:]
    assert "kitti frames" in more.stderr
    assert (out / "training/velodyne/000000.bin").read_bytes() == frame0
    assert (out / "ImageSets/train.txt").read_text().split() == ["000000", "000002"]
    assert len(list((out / "training/label_2").iterdir())) == 3

    # Other settings on the same folder: a one-line user error, nothing written, no traceback.
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    again = run_cli([*base, "num_frames=3", "generator.seed=1", "generator.progress=false"])
    assert again.returncode == 2
    assert "sparse3d-data: error:" in again.stderr and "other settings (seed)" in again.stderr
    assert "Traceback" not in again.stderr + again.stdout
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before

    bad = run_cli([*base, "num_frames=0"])
    assert bad.returncode == 2 and "num_frames must be >= 1" in bad.stderr and "Traceback" not in bad.stderr
