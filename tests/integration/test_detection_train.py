"""DSVT detection end to end: ``sparse3d-train experiment=dsvt_synth`` on generated KITTI frames (generation,
training, KITTI-AP validation, checkpoints, resume), and a two-frame overfit that must find every car."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from sparse3d.datasets.kitti_detection import KittiDetectionDataset, collate_detection
from sparse3d.datasets.synth.kitti import generate_kitti_frames
from sparse3d.kernels.rotated_iou import boxes_iou_bev

RunCli = Callable[..., subprocess.CompletedProcess[str]]

TINY = ["data.generator.num_frames=6", "+data.generator.num_azimuth=700", "trainer.val_every=0",
        "trainer.log_every=2", "trainer.ckpt_every=3"]


def test_dsvt_synth_trains_validates_and_resumes(run_cli: RunCli, tmp_path: Path) -> None:
    common = ["sparse3d-train", "experiment=dsvt_synth", f"paths.data_dir={tmp_path / 'data'}",
              f"paths.output_root={tmp_path / 'out'}", *TINY]
    first = run_cli([*common, "trainer.max_steps=4"])
    assert first.returncode == 0, first.stderr[-3000:]
    runs = sorted((tmp_path / "out" / "train" / "dsvt_synth").iterdir())
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["steps"] == 4 and np.isfinite(summary["train"]["loss"])
    metrics = summary["validation"]
    for key in ("Car/bev_R40/moderate", "Car/3d_R40/moderate", "mAP/bev_R40/moderate", "Pedestrian/3d_R40/moderate"):
        assert key in metrics and 0.0 <= metrics[key] <= 1.0
    assert (tmp_path / "data" / "synthetic_kitti" / "ImageSets" / "val.txt").is_file()
    assert (runs[0] / "checkpoints" / "step_0000003.ckpt").is_file()
    # a one-cycle schedule cannot be stretched: one line saying so, no traceback
    stretched = run_cli([*common, "trainer.max_steps=6", "resume=true"])
    assert stretched.returncode == 2 and "cannot be stretched" in stretched.stderr
    assert "Traceback" not in stretched.stderr
    again = run_cli([*common, "trainer.max_steps=6", "resume=true", "~scheduler"])
    assert again.returncode == 0, again.stderr[-3000:]
    runs = sorted((tmp_path / "out" / "train" / "dsvt_synth").iterdir())
    resumed = json.loads((runs[-1] / "summary.json").read_text())
    assert resumed["steps"] == 6 and resumed["resumed_from"] is not None


@pytest.mark.slow  # ~1.5 min on 2 idle cores
def test_two_frame_overfit_finds_every_car(hydra_compose, tmp_path: Path) -> None:
    root = generate_kitti_frames(root=tmp_path / "kitti", num_frames=2, val_fraction=0.0, seed=3, num_azimuth=1000,
                                 progress=False)
    point_range = [0.0, -12.8, -3.0, 25.6, 12.8, 1.0]
    cfg = hydra_compose("train", ["experiment=dsvt_synth", f"data.root={root}",
                                  f"data.point_range=[{','.join(map(str, point_range))}]", "model.metrics=null"])
    torch.manual_seed(0)
    model = instantiate(cfg.model, _convert_="all")
    data = KittiDetectionDataset(root, "train", ["Car"], point_range)
    batch = collate_detection([data[0], data[1]])
    # one class: keep only cars in the targets, the other heatmaps stay empty
    assert sum(len(b) for b in batch["gt_boxes"]) >= 4
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(260):
        loss = model.training_step(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        detections = model(batch)
    for det, gt in zip(detections, batch["gt_boxes"]):
        cars = det.boxes[(det.labels == 0) & (det.scores > 0.3)]
        assert len(cars) > 0
        best = boxes_iou_bev(gt, cars).max(dim=1).values
        assert bool((best >= 0.7).all()), f"cars found with BEV IoU {best.tolist()}"
