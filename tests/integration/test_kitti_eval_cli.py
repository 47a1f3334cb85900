"""``sparse3d-eval evaluator=kitti_ap`` end to end on a tiny hand-written KITTI folder.

Ground truth (``training/label_2``, split ``ImageSets/val.txt`` = 3 frames): 5 easy Cars, a Van and a DontCare
region. Predictions: frames 000000 and 000001 (000002 has no file, so its Car is missed):

* 000000: the 3 Cars exactly (scores 0.9, 0.8, 0.7) and a "Car" on the Van (ignored, score 0.95);
* 000001: its first Car (0.6), a false positive in empty space (0.5) and one inside the DontCare box (0.55).

Hand-computed Car AP (5 valid objects, TP scores 0.9 / 0.8 / 0.7 / 0.6 -> 4 thresholds): precision 1 at every
threshold for the 2-D metric (the DontCare detection is not a false positive there; the other false positive
scores below every TP). BEV / 3-D count the DontCare detection (0.55, below every TP) as a false positive too, but
it never passes a threshold. So precision = [1, 1, 1, 1, 0, ...] -> AP_R40 = 3/40, AP_R11 = 1/11 for every
metric and difficulty; Pedestrian and Cyclist have no objects -> 0.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

RunCli = Callable[..., subprocess.CompletedProcess[str]]


def _car(x1: float, x: float, score: float | None = None, name: str = "Car") -> str:
    """A label row: 2-D box from x1 (50 px tall), 3-D box at lateral position x, 25 m ahead."""
    row = f"{name} 0.00 0 0.10 {x1:.2f} 150.00 {x1 + 80:.2f} 200.00 1.50 1.60 3.90 {x:.2f} 1.70 25.00 0.20"
    return row if score is None else f"{row} {score:.4f}"


GT = {
    "000000": [_car(100, -10), _car(300, -4), _car(500, 2), _car(700, 8, name="Van"),
               "DontCare -1 -1 -10 900.00 140.00 1100.00 220.00 -1 -1 -1 -1000 -1000 -1000 -10"],
    "000001": [_car(100, -10)],
    "000002": [_car(100, -10)],
}
PRED = {
    "000000": [_car(100, -10, 0.9), _car(300, -4, 0.8), _car(500, 2, 0.7), _car(700, 8, 0.95)],
    "000001": [_car(100, -10, 0.6), _car(500, 2, 0.5), _car(950, 14, 0.55)],
}


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


@pytest.fixture()
def kitti(tmp_path: Path) -> dict[str, Path]:
    root, preds = tmp_path / "kitti", tmp_path / "preds"
    for frame, rows in GT.items():
        _write(root / "training" / "label_2" / f"{frame}.txt", rows)
    _write(root / "ImageSets" / "val.txt", list(GT))
    _write(root / "ImageSets" / "train.txt", ["000000"])
    for frame, rows in PRED.items():
        _write(preds / f"{frame}.txt", rows)
    return {"root": root, "preds": preds, "out": tmp_path / "out"}


def _run(run_cli: RunCli, kitti: dict[str, Path], *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["sparse3d-eval", "evaluator=kitti_ap", f"pred={kitti['preds']}", f"gt={kitti['root']}",
                    f"paths.output_root={kitti['out']}", *extra])


def _reports(out: Path) -> list[Path]:
    return sorted(p for name in ("kitti_ap.json", "kitti_ap.md", "results.json") for p in out.rglob(name))


def test_kitti_ap_cli_writes_json_and_markdown(run_cli: RunCli, kitti: dict[str, Path]) -> None:
    result = _run(run_cli, kitti, "split=val")
    assert result.returncode == 0, f"STDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-3000:]}"
    runs = list((kitti["out"] / "eval" / "kitti_ap").iterdir())
    assert len(runs) == 1
    run = runs[0]
    tables = json.loads((run / "kitti_ap.json").read_text())
    car = tables["classes"]["Car"]
    assert car["num_gt"] == {"easy": 5, "moderate": 5, "hard": 5}
    for oset in ("strict", "loose"):
        for metric in ("bbox", "bev", "3d", "aos"):
            for diff in ("easy", "moderate", "hard"):
                assert car[oset][metric][diff]["AP_R40"] == pytest.approx(3 / 40), (oset, metric, diff)
                assert car[oset][metric][diff]["AP_R11"] == pytest.approx(1 / 11), (oset, metric, diff)
    assert tables["classes"]["Pedestrian"]["strict"]["3d"]["moderate"]["AP_R40"] == 0.0
    assert tables["missing_predictions"] == ["000002"] and tables["num_frames"] == 3
    results = json.loads((run / "results.json").read_text())
    assert results["metrics"]["Car/3d_R40/moderate"] == pytest.approx(3 / 40)
    assert results["metrics"]["Cyclist/bev_R11/hard/loose"] == 0.0
    markdown = (run / "kitti_ap.md").read_text()
    assert "## Car" in markdown and f"| 3d | strict | 0.7 | {300 / 40:.2f} |" in markdown and "000002" in markdown
    assert "Fewer than 41 objects" in markdown and "No ground-truth objects of this class" in markdown
    logs = result.stdout + result.stderr
    assert "1 of 3 frames have no prediction file" in logs and "000002" in logs
    assert "Car: bbox 7.50" in result.stdout


def test_kitti_ap_cli_other_split_and_bad_prediction_file(run_cli: RunCli, kitti: dict[str, Path]) -> None:
    result = _run(run_cli, kitti, "split=train", "classes=[Car]")
    assert result.returncode == 0, result.stderr
    run = next((kitti["out"] / "eval" / "kitti_ap").iterdir())
    car = json.loads((run / "kitti_ap.json").read_text())["classes"]["Car"]
    # train = frame 000000 only: 3 Cars found exactly, the Van detection ignored -> positions 0..2 -> 2/40
    assert car["strict"]["3d"]["easy"]["AP_R40"] == pytest.approx(2 / 40)

    # split=null: every file in training/label_2 (the 3 frames, as val)
    result = _run(run_cli, {**kitti, "out": kitti["out"].parent / "out_all"}, "split=null")
    assert result.returncode == 0, result.stderr
    run = next((kitti["out"].parent / "out_all" / "eval" / "kitti_ap").iterdir())
    tables = json.loads((run / "kitti_ap.json").read_text())
    assert tables["num_frames"] == 3 and tables["missing_predictions"] == ["000002"]
    assert tables["classes"]["Car"]["loose"]["bev"]["hard"]["AP_R40"] == pytest.approx(3 / 40)

    bad = kitti["preds"] / "000001.txt"
    lines = bad.read_text().splitlines()
    lines[1] = lines[1].rsplit(" ", 2)[0]  # drop two columns on line 2
    bad.write_text("\n".join(lines) + "\n")
    out = kitti["out"].parent / "out_bad"
    result = _run(run_cli, {**kitti, "out": out}, "split=val")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("sparse3d-eval: error:")]
    assert len(errors) == 1 and f"{bad}:2:" in errors[0] and "columns" in errors[0]
    assert "Traceback" not in result.stderr
    assert _reports(out) == []

    # 15-column predictions (no score) are refused too
    bad.write_text(_car(100, -10) + "\n")
    result = _run(run_cli, {**kitti, "out": out}, "split=val")
    assert result.returncode == 2 and f"{bad}:1: predictions need a 16th column (score)" in result.stderr
    assert _reports(out) == []


def test_kitti_ap_cli_usage_errors(run_cli: RunCli, kitti: dict[str, Path]) -> None:
    result = run_cli(["sparse3d-eval", "evaluator=kitti_ap", f"pred={kitti['preds']}",
                      f"paths.output_root={kitti['out']}"])
    assert result.returncode == 2 and "evaluator=kitti_ap needs gt=" in result.stderr
    result = _run(run_cli, kitti, "split=test")
    assert result.returncode == 2 and "ImageSets/test.txt: split file not found" in result.stderr
    result = _run(run_cli, kitti, "classes=[Car,Tram]")
    assert result.returncode == 2 and "classes: no KITTI overlap thresholds for Tram" in result.stderr
    assert "Traceback" not in result.stderr and _reports(kitti["out"]) == []
