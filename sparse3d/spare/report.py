"""Write a :class:`~sparse3d.spare.evaluation.RenderEvaluation` as JSON, CSV and markdown, and format metric cells.

Conventions shared by every writer and table of the SpaRe benchmark (Nazarczuk et al., "AIM 2024 Sparse Neural
Rendering Challenge: Dataset and Benchmark", ECCV Workshops 2024):

* A metric that was not computed (no object mask for the -M metrics, no LPIPS weights) is ``None`` in Python,
  ``null`` in JSON, an empty cell in CSV and :data:`NOT_COMPUTED` in markdown tables.
* PSNR of identical images is ``+inf``: JSON has no infinity, so it is written as the string ``"inf"``; CSV and
  markdown write ``inf``.
* Tables show each metric at :data:`METRIC_DIGITS` decimal places under its :data:`LABELS` name.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sparse3d.spare.evaluation import METRICS, PathLike, RenderEvaluation

LABELS = {
    "psnr": "PSNR",
    "psnr_m": "PSNR-M",
    "ssim": "SSIM",
    "ssim_m": "SSIM-M",
    "lpips": "LPIPS",
    "lpips_m": "LPIPS-M",
}
"""Column heading of each metric key of :data:`~sparse3d.spare.evaluation.METRICS`."""
NOT_COMPUTED = "n/c"
"""Markdown cell of a metric that was not computed."""
METRIC_DIGITS = {"psnr": 2, "psnr_m": 2, "ssim": 4, "ssim_m": 4, "lpips": 4, "lpips_m": 4}
"""Decimal places each metric is shown with in tables."""


def _json_value(value: Any) -> Any:
    """JSON has no infinity: +inf PSNR (identical images) is written as the string "inf"; NaN as null."""
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def to_json_dict(result: RenderEvaluation) -> dict[str, Any]:
    """The result as JSON-ready data: protocol, LPIPS weights, sources, per dataset/scene/image numbers."""
    return _json_value(
        {
            "protocol": result.protocol(),
            "lpips": result.lpips,
            "sources": result.sources,
            "datasets": result.datasets,
            "scenes": result.scenes,
            "images": [asdict(im) for im in result.images],
        }
    )


def write_json(result: RenderEvaluation, path: PathLike, extra: dict[str, Any] | None = None) -> Path:
    """The full result (protocol, LPIPS weights, per dataset/scene/image) plus ``extra`` top-level fields."""
    p = Path(path)
    data = {**to_json_dict(result), **_json_value(dict(extra or {}))}
    p.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    return p


def format_metric(value: float | None, metric: str) -> str:
    """A table cell: the value at the metric's precision, ``inf``, or the not-computed marker."""
    if value is None:
        return NOT_COMPUTED
    if math.isinf(value):
        return "inf"
    return f"{value:.{METRIC_DIGITS[metric]}f}"


def write_csv(result: RenderEvaluation, path: PathLike) -> Path:
    """One row per image; not-computed values are empty cells, an infinite PSNR is ``inf``."""
    p = Path(path)
    columns = [
        "scene",
        "dataset",
        "view",
        "file",
        "width",
        "height",
        *METRICS,
        "mask_fraction",
        "bbox_r0",
        "bbox_r1",
        "bbox_c0",
        "bbox_c1",
    ]
    with p.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for im in result.images:
            metrics = ["" if getattr(im, k) is None else repr(float(getattr(im, k))) for k in METRICS]
            fraction = "" if im.mask_fraction is None else repr(im.mask_fraction)
            box = list(im.bbox) if im.bbox is not None else ["", "", "", ""]
            writer.writerow(
                [im.scene, im.dataset, im.view, im.file, im.width, im.height, *metrics, fraction, *box]
            )
    return p


def lpips_status(result: RenderEvaluation) -> str:
    """One line saying whether LPIPS was computed, and with the published weights or others."""
    info = result.lpips
    if not info.get("computed"):
        return "LPIPS: not computed (no weights; set lpips.backbone and lpips.heads)"
    if info.get("backbone_is_reference") and info.get("heads_is_reference"):
        return "LPIPS: AlexNet v0.1 (published weights)"
    return "LPIPS: AlexNet v0.1 with NON-REFERENCE weights (not comparable with published numbers)"


def to_markdown(result: RenderEvaluation) -> str:
    """Per-dataset tables (one row per scene, then the dataset mean) with the protocol choices named."""
    lines = [
        "# Rendering evaluation",
        "",
        f"- PSNR-M mode: `{result.psnr_mask_mode}`",
        f"- {lpips_status(result)}",
        f"- `{NOT_COMPUTED}` = not computed (-M metrics: no object mask; LPIPS: no weights)",
        "- dataset mean = mean of scene means; Synthetic and DTU are never mixed",
    ]
    header = "| Scene | Images | " + " | ".join(LABELS[k] for k in METRICS) + " |"
    rule = "|---|---:|" + "---:|" * len(METRICS)
    for dataset, summary in result.datasets.items():
        lines += ["", f"## {dataset}", "", header, rule]
        for name in summary["scenes"]:
            scene = result.scenes[name]
            cells = " | ".join(format_metric(scene[k], k) for k in METRICS)
            lines.append(f"| {name} | {scene['num_images']} | {cells} |")
        cells = " | ".join(f"**{format_metric(summary[k], k)}**" for k in METRICS)
        count = summary["num_scenes"]
        lines.append(
            f"| **{dataset} mean** ({count} scene{'' if count == 1 else 's'}) | {summary['num_images']} "
            f"| {cells} |"
        )
        if 0 < summary["num_scenes_masked"] < summary["num_scenes"]:
            lines.append("")
            lines.append(
                f"-M means over the {summary['num_scenes_masked']} of {summary['num_scenes']} scenes "
                "that have masks."
            )
    return "\n".join(lines) + "\n"


def write_markdown(result: RenderEvaluation, path: PathLike) -> Path:
    """:func:`to_markdown` written to ``path``."""
    p = Path(path)
    p.write_text(to_markdown(result))
    return p
