"""``sparse3d-detect``: run a trained 3-D detector on point clouds and write its boxes.

Examples::

    sparse3d-detect ckpt=outputs/train/dsvt_kitti/2025-01-01_12-00-00 input=scan.bin out=det/
    sparse3d-detect ckpt=<run> input=scan.pcd calib=calib.txt out=det/          # + det/label_2/scan.txt
    sparse3d-detect ckpt=<run> input=data/kitti split=val out=pred/             # a KITTI root, one split
    sparse3d-eval evaluator=kitti_ap pred=pred/label_2 gt=data/kitti split=val
    sparse3d-detect ckpt=<run> input=scan.bin export_onnx=dsvt_blocks.onnx       # + ONNX of the DSVT blocks

A thin front-end over :mod:`sparse3d.detect`: it loads the detector, lists the input's frames and writes
``<out>/detections.json`` and ``<out>/label_2/<frame id>.txt``. A frame that cannot be read prints one line
``sparse3d-detect: error: <file>: <problem>`` and the others still run; the command then exits with status 2,
keeping what the good frames wrote.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig
from tqdm.auto import tqdm

from sparse3d.cli import _hydra as H
from sparse3d.detect import Detector, DetectSummary, detect_frames, find_frames, read_frame
from sparse3d.io.kitti import read_calib
from sparse3d.utils.errors import UserError

log = logging.getLogger("sparse3d.cli.detect")

APP = "sparse3d-detect"
_USAGE = f"{APP} ckpt=<run dir or .ckpt file> input=<point file, folder or KITTI root> [out=<dir>]"


def _report_failure(_file: str, message: str) -> None:
    tqdm.write(f"{APP}: error: {message}", file=sys.stderr)


def run_detect(cfg: DictConfig) -> DetectSummary:
    """Detect every frame of ``cfg.input`` with the model of ``cfg.ckpt``; returns the summary."""
    if cfg.get("input") is None or not str(cfg.input).strip():
        raise UserError(f"input= is required: {_USAGE}")
    if cfg.get("ckpt") is None or not str(cfg.ckpt).strip():
        raise UserError(f"ckpt= is required: {_USAGE}")
    frames = find_frames(str(cfg.input), split=cfg.get("split"), subset=str(cfg.get("subset", "training")),
                         calib=cfg.get("calib"))
    if cfg.get("calib"):
        read_calib(str(cfg.calib))  # a bad calibration is reported before the model is loaded
    detector = Detector.from_checkpoint(str(cfg.ckpt), device=str(cfg.get("device", "auto")),
                                        score_threshold=cfg.get("score_threshold"), fov_only=cfg.get("fov_only"),
                                        model=cfg.get("model"), data=cfg.get("data"), paths=cfg.get("paths"))
    if cfg.get("export_onnx"):
        points, _, _ = read_frame(frames[0], None, (375, 1242))
        path, diff = detector.export_onnx(points, str(cfg.export_onnx))
        print(f"{APP}: exported the DSVT blocks to {path} (ONNX opset 14; onnxruntime vs PyTorch on "
              f"{frames[0].frame_id}: max abs diff {diff:.2e})", flush=True)
    out = Path(str(cfg.out)).expanduser() if cfg.get("out") else H.hydra_output_dir()
    summary = detect_frames(detector, frames, out, calib=cfg.get("calib"), image_shape=list(cfg.image_shape),
                            progress=bool(cfg.get("progress", True)), on_failure=_report_failure)
    ran = len(summary.detections)
    boxes = sum(len(d.names) for d in summary.detections.values())
    where = [str(p) for p in (summary.json_path, summary.label_dir) if p is not None]
    print(f"{APP}: {boxes} boxes in {ran} of {len(frames)} frames" + (f" -> {', '.join(where)}" if where else ""),
          flush=True)
    return summary


@hydra.main(version_base=H.VERSION_BASE, config_path=H.CONFIG_PATH, config_name="detect")
@H.guarded(APP)
def _hydra_entry(cfg: DictConfig) -> None:
    summary = run_detect(cfg)
    if summary.failures:
        print(f"{APP}: error: {len(summary.failures)} of {len(summary.failures) + len(summary.detections)} "
              "input files could not be read (listed above); the other frames were written", file=sys.stderr,
              flush=True)
        raise SystemExit(H.EXIT_USER_ERROR)


def main() -> None:
    """Console-script entry point."""
    _hydra_entry()


if __name__ == "__main__":
    main()
