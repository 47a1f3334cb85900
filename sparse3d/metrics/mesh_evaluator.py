"""``sparse3d-eval evaluator=mesh``: surface metrics of one predicted mesh file against one ground-truth mesh file.

Both files are read (:func:`sparse3d.io.mesh.read_mesh`) before anything is written, so a missing or broken file
stops the run with one line naming it and leaves no report behind. The metrics are
:func:`sparse3d.metrics.mesh.mesh_metrics` (accuracy, completeness, Chamfer-L1/L2, F-score per threshold, normal
consistency) with the protocol stated in the report: ``results.json`` (run metadata, ``metrics``, ``convention``,
``notes``, a summary of each mesh) and ``results.md`` (the same as a markdown table). Infinite values (an empty
mesh) are written to ``results.json`` as ``null``, with a note saying why.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparse3d.io.atomic import atomic_write_json, atomic_write_text
from sparse3d.io.mesh import TriangleMesh, read_mesh
from sparse3d.metrics.mesh import DEFAULT_THRESHOLDS, METRIC_KEYS, mesh_metrics, threshold_key
from sparse3d.train.evaluators import RESULTS_NAME, EvalReport
from sparse3d.utils.errors import UserError
from sparse3d.utils.jsonable import jsonable

MARKDOWN_NAME = "results.md"
_USAGE = "sparse3d-eval evaluator=mesh pred=<mesh file> gt=<mesh file> [n_points=100000] [seed=0]"


def mesh_summary(mesh: TriangleMesh) -> dict[str, Any]:
    """Counts and simple properties of a mesh for the report (vertices, faces, area, watertight, ...)."""
    return {"vertices": mesh.num_vertices, "faces": mesh.num_faces, "area": mesh.area(),
            "bbox_diagonal": mesh.diagonal(), "watertight": mesh.is_watertight(),
            "boundary_edges": int(len(mesh.boundary_edges()))}


def _finite_or_none(value: Any) -> Any:
    """JSON has no infinity or NaN: such floats become ``null`` (the notes say why)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def metrics_markdown(metrics: dict[str, Any], thresholds: Sequence[float], title: str) -> str:
    """A markdown report: one table of the metrics (F-scores per threshold with the absolute threshold), then the
    convention and the notes."""
    convention = metrics["convention"]
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    for key in METRIC_KEYS:
        lines.append(f"| {key} | {_fmt(metrics[key])} |")
    for tau in thresholds:
        tau_abs = metrics[threshold_key("tau_abs", tau)]
        for name in ("precision", "recall", "fscore"):
            lines.append(f"| {name}@{tau:g} (tau_abs {_fmt(tau_abs)}) | {_fmt(metrics[threshold_key(name, tau)])} |")
    lines += ["", "Convention:", ""]
    lines += [f"- {key}: {value}" for key, value in convention.items()]
    if metrics["notes"]:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in metrics["notes"]]
    return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class MeshEvaluator:
    """Surface metrics of ``pred`` against ``gt`` (two mesh files: ``.obj .ply .off .glb .gltf .stl``).

    Args:
        pred, gt: the predicted and ground-truth mesh files.
        n_points: surface samples per mesh; seed: the sampling seed (pred uses ``seed``, gt ``seed + 1``).
        thresholds: F-score thresholds, as fractions of the normalisation scale.
        normalize: ``gt_diagonal`` (default), ``gt_extent`` or ``none`` (see :mod:`sparse3d.metrics.mesh`).
        distance: ``points`` (nearest sample, default) or ``surface`` (nearest point of the other mesh's triangles).
    """

    def __init__(self, pred: str | None, gt: str | None, n_points: int = 100_000, seed: int = 0,
                 thresholds: Sequence[float] = DEFAULT_THRESHOLDS, normalize: str = "gt_diagonal",
                 distance: str = "points",
                 experiment: str = "mesh", name: str = "mesh") -> None:
        for key, value in (("pred", pred), ("gt", gt)):
            if value is None or not str(value).strip():
                raise UserError(f"evaluator=mesh needs {key}=...: {_USAGE}")
        self.pred, self.gt = Path(str(pred)), Path(str(gt))
        self.n_points, self.seed = n_points, seed
        self.thresholds = tuple(thresholds) if isinstance(thresholds, Sequence) and not isinstance(
            thresholds, str) else thresholds
        self.normalize = normalize
        self.distance = distance
        self.experiment, self.name = experiment, name

    def run(self, output_dir: Path) -> EvalReport:
        start = time.perf_counter()
        pred = read_mesh(self.pred)
        gt = read_mesh(self.gt)
        try:
            metrics = mesh_metrics(pred, gt, n_points=self.n_points, seed=self.seed, thresholds=self.thresholds,
                                   normalize=self.normalize, distance=self.distance)
        except ValueError as exc:  # a bad option (n_points=0, normalize=...): the message names it
            raise UserError(f"evaluator=mesh: {exc}") from None
        taus = metrics["convention"]["thresholds"]
        flat = {k: v for k, v in metrics.items() if k not in ("convention", "notes")}
        notes = list(metrics["notes"])
        if any(isinstance(v, float) and not math.isfinite(v) for v in flat.values()):
            notes.append("results.json writes infinite and NaN values as null (JSON has no infinity)")
        results = {
            "evaluator": self.name, "experiment": self.experiment, "pred": str(self.pred), "gt": str(self.gt),
            "metrics": {k: _finite_or_none(v) for k, v in flat.items()},
            "convention": {k: _finite_or_none(v) for k, v in metrics["convention"].items()},
            "notes": notes,
            "pred_mesh": mesh_summary(pred), "gt_mesh": mesh_summary(gt),
            "wall_time_s": time.perf_counter() - start, "output_dir": str(output_dir),
            "files": [MARKDOWN_NAME],
        }
        markdown = metrics_markdown(metrics, taus, f"Mesh metrics: {self.pred.name} vs {self.gt.name}")
        atomic_write_text(output_dir / MARKDOWN_NAME, markdown)
        atomic_write_json(output_dir / RESULTS_NAME, jsonable(results))
        return EvalReport(results, _summary(metrics, taus, self.pred, self.gt, output_dir))


def _summary(metrics: dict[str, Any], thresholds: Sequence[float], pred: Path, gt: Path, output_dir: Path) -> str:
    """What the console shows: the protocol in one line, the metrics as a table, the notes and the report paths."""
    convention = metrics["convention"]
    lines = [f"mesh metrics of {pred.name} against {gt.name} ({convention['n_points']} points per mesh, seed "
             f"{convention['seed']}, {convention['units']}, scale {_fmt(metrics['scale'])}):"]
    rows = [(key, metrics[key]) for key in METRIC_KEYS]
    for tau in thresholds:
        suffix = f"@{tau:g} (tau_abs {_fmt(metrics[threshold_key('tau_abs', tau)])})"
        rows += [(f"{name}{suffix}", metrics[threshold_key(name, tau)]) for name in ("precision", "recall", "fscore")]
    width = max(len(name) for name, _ in rows)
    lines += [f"  {name:<{width}}  {_fmt(value)}" for name, value in rows]
    lines += [f"  note: {note}" for note in metrics["notes"]]
    lines.append(f"  report: {output_dir / RESULTS_NAME}, {output_dir / MARKDOWN_NAME}")
    return "\n".join(lines)
