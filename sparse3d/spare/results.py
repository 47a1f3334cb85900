"""Gather the ``results.json`` files of a SpaRe sweep into one table: a row per (method, scene), per-dataset means.

Each sweep job (:func:`sparse3d.spare.sweep.sweep_scenes`) writes a ``results.json`` holding per-scene means of
the SpaRe metrics (see :mod:`sparse3d.spare.evaluation`). A per-dataset mean here is the mean of the scene means
of one method on one dataset; Synthetic and DTU are never mixed, as in the AIM 2024 Sparse Neural Rendering
Challenge (Nazarczuk et al., ECCV Workshops 2024). A (method, scene) pair found in two files is an error rather
than counted twice.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from sparse3d.spare.evaluation import METRICS, mean_present
from sparse3d.spare.report import LABELS, NOT_COMPUTED, format_metric
from sparse3d.utils.errors import UserError

RESULTS_NAME = "results.json"
"""File name of one sweep job's results, inside its job directory."""


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        return float(value)  # "inf" / "-inf": JSON has no infinity
    return float(value)


def collect_results(runs: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows (one per method and scene) from every ``results.json`` under ``runs``, and per-dataset means.

    Rows are sorted by (method, dataset, scene) and hold ``method``, ``dataset``, ``scene``, ``images``,
    ``job`` (the job dir relative to ``runs``) and one float or ``None`` per metric key; means hold
    ``method``, ``dataset``, ``scenes`` (their count) and the metric means. Raises :class:`UserError` when
    there is no results file, no evaluated scene, invalid JSON or a scene scored twice for one method.
    """
    files = sorted(runs.rglob(RESULTS_NAME))
    if not files:
        raise UserError(f"no {RESULTS_NAME} under {runs}; pass runs=<multirun dir of `sparse3d-spare submit -m`"
                        "/sweep>")
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], Path] = {}
    for path in files:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: invalid JSON ({exc})") from None
        method = str(data.get("method", "?"))
        for scene, s in (data.get("scenes") or {}).items():
            key = (method, scene)
            if key in seen:
                raise UserError(f"scene {scene!r} of method {method!r} is in both {seen[key]} and {path}")
            seen[key] = path
            row = {"method": method, "dataset": s["dataset"], "scene": scene, "images": s.get("num_images"),
                   "job": str(path.parent.relative_to(runs))}
            row.update({k: _number(s.get(k)) for k in METRICS})
            rows.append(row)
    if not rows:
        raise UserError(f"no evaluated scenes in the {len(files)} {RESULTS_NAME} file(s) under {runs} "
                        "(scenes are scored only when their test views' ground truth is on disk)")
    rows.sort(key=lambda r: (r["method"], r["dataset"], r["scene"]))
    means = []
    for method, dataset in sorted({(r["method"], r["dataset"]) for r in rows}):
        group = [r for r in rows if (r["method"], r["dataset"]) == (method, dataset)]
        mean = {"method": method, "dataset": dataset, "scenes": len(group)}
        mean.update({k: mean_present([r[k] for r in group]) for k in METRICS})
        means.append(mean)
    return rows, means


def results_markdown(rows: list[dict[str, Any]], means: list[dict[str, Any]]) -> str:
    """The rows and means of :func:`collect_results` as one markdown table, means last and in bold."""
    header = "| Method | Dataset | Scene | " + " | ".join(LABELS[k] for k in METRICS) + " |"
    lines = ["# SpaRe sweep results", "", "Per-dataset mean = mean of scene means (Synthetic and DTU never mixed); "
             f"`{NOT_COMPUTED}` = not computed.", "", header, "|---|---|---|" + "---:|" * len(METRICS)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['dataset']} | {r['scene']} | "
                     + " | ".join(format_metric(r[k], k) for k in METRICS) + " |")
    for m in means:
        lines.append(f"| **{m['method']}** | **{m['dataset']}** | **mean of {m['scenes']}** | "
                     + " | ".join(f"**{format_metric(m[k], k)}**" for k in METRICS) + " |")
    return "\n".join(lines) + "\n"


def write_results_csv(rows: list[dict[str, Any]], means: list[dict[str, Any]], path: Path) -> Path:
    """Scene rows, then one ``mean`` row per (method, dataset); empty cell = not computed."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "dataset", "scene", "images", *METRICS, "job"])
        for r in rows:
            writer.writerow([r["method"], r["dataset"], r["scene"], r["images"],
                             *("" if r[k] is None else repr(r[k]) for k in METRICS), r["job"]])
        for m in means:
            writer.writerow([m["method"], m["dataset"], "mean", "",
                             *("" if m[k] is None else repr(m[k]) for k in METRICS), f"{m['scenes']} scenes"])
    return path
