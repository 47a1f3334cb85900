"""``sparse3d-eval evaluator=render``: score rendered test views (a folder or a submission zip) against SpaRe-layout
ground truth, and write ``results.json``, ``per_image.csv`` and ``results.md``."""

from __future__ import annotations

import time
from pathlib import Path

from sparse3d.spare.evaluation import evaluate_rendering
from sparse3d.spare.report import to_json_dict, to_markdown, write_csv, write_json, write_markdown
from sparse3d.train.evaluators import RESULTS_NAME, EvalReport
from sparse3d.utils.device import resolve_device
from sparse3d.utils.errors import UserError


class RenderEvaluator:
    """PSNR/SSIM/LPIPS and their masked variants per image, scene and dataset (:func:`evaluate_rendering`).

    Args:
        pred: a directory or submission zip with ``<scene>/<image name>`` renders.
        data_root: the ground-truth root (``<scene>/`` folders); ``split``: a split JSON (path, or a file name
            inside ``data_root``).
        calibration_dir: a shared ``pos_XXX.txt`` folder (DTU style) instead of ``<scene>/cameras``.
        psnr_mask_mode: ``mask_pixels`` or ``masked_full``; lpips_backbone / lpips_heads: user weight files.
    """

    def __init__(self, pred: str | None, data_root: str | None, split: str | None, calibration_dir: str | None = None,
                 psnr_mask_mode: str = "mask_pixels", lpips_backbone: str | None = None,
                 lpips_heads: str | None = None, device: str = "cpu", progress: bool = True,
                 experiment: str = "render", name: str = "render") -> None:
        for key, value in (("pred", pred), ("data_root", data_root), ("split", split)):
            if not value:
                raise UserError(f"evaluator=render needs {key}=...: "
                                "sparse3d-eval evaluator=render pred=<dir|zip> data_root=<dir> split=<json>")
        self.pred, self.data_root, self.split = str(pred), str(data_root), str(split)
        self.calibration_dir, self.psnr_mask_mode = calibration_dir, str(psnr_mask_mode)
        self.lpips_backbone, self.lpips_heads = lpips_backbone, lpips_heads
        self.device, self.progress = str(device), bool(progress)
        self.experiment, self.name = experiment, name

    def run(self, output_dir: Path) -> EvalReport:
        start = time.perf_counter()
        result = evaluate_rendering(
            self.pred, self.data_root, self.split, psnr_mask_mode=self.psnr_mask_mode,
            lpips_backbone=self.lpips_backbone, lpips_heads=self.lpips_heads, calibration_dir=self.calibration_dir,
            device=resolve_device(self.device), progress=self.progress,
        )
        extra = {"evaluator": self.name, "experiment": self.experiment, "device": self.device,
                 "num_images": len(result.images), "wall_time_s": time.perf_counter() - start,
                 "output_dir": str(output_dir)}
        write_json(result, output_dir / RESULTS_NAME, extra)
        write_csv(result, output_dir / "per_image.csv")
        write_markdown(result, output_dir / "results.md")
        text = (to_markdown(result) + f"\nrender on {len(result.images)} images; results: {output_dir / RESULTS_NAME}")
        return EvalReport({**to_json_dict(result), **extra}, text)
