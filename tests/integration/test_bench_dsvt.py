"""``sparse3d-bench dsvt`` on tiny sizes: the suite is registered, its records are well formed, the peer check
runs (and is recorded), the per-stage frame rows cover the detector, and bad options fail cleanly.

Timings are not asserted (shared machines). That ours and the official-style peer build the same sets and
embeddings is asserted by the suite itself on every run (it raises otherwise) and recorded in the rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparse3d.bench import available_suites
from sparse3d.bench.common import RECORD_FIELDS
from sparse3d.bench.dsvt import kitti_scan, run_dsvt_suite

BENCH = Path(sys.executable).parent / "sparse3d-bench"
FRAME_STAGES = ["VFE (voxelise + PFN)", "DSVT input layer", "DSVT blocks (4)", "BEV scatter", "BEV backbone (2-D)",
                "CenterHead", "decode + NMS", "whole forward"]


def _check_common(records: list[dict]) -> None:
    for r in records:
        assert all(k in r for k in RECORD_FIELDS), r
        assert r["suite"] == "dsvt" and r["device"] == "cpu" and r["repeats"] == 1
        assert isinstance(r["ours_s"], float) and r["ours_s"] > 0
        if r["peer_s"] is None:
            assert r["speedup_vs_peer"] is None and r["peer"] is None and r["notes"]
        else:
            assert r["peer"] == "official-style torch"
            assert r["speedup_vs_peer"] == pytest.approx(r["peer_s"] / r["ours_s"])


def test_dsvt_suite_is_registered() -> None:
    assert "dsvt" in available_suites()


def test_input_layer_and_backbone_rows() -> None:
    records = run_dsvt_suite(repeats=1, sizes={"input_layer": [700], "backbone": [400], "frame": []})
    _check_common(records)
    assert [r["name"] for r in records] == ["input layer (sets + 8 pos-embed MLPs)",
                                             "set partition (2 shifts × 2 orderings)", "DSVT-P backbone forward"]
    layer, sets, backbone = records
    assert layer["size"] == sets["size"] == 700 and backbone["size"] == 400
    assert layer["sets_identical"] is True and layer["pos_embed_max_abs_diff"] <= 1e-5
    assert layer["num_sets_shift0"] >= 700 / 36 and layer["num_sets_shift1"] >= 700 / 36
    assert isinstance(layer["peer_s"], float) and isinstance(sets["peer_s"], float)
    assert backbone["peer"] is None and "1.5 s" not in backbone["notes"]  # the target is quoted at 20k only


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown size family"):
        run_dsvt_suite(repeats=1, sizes={"blocks": [10]})
    with pytest.raises(ValueError, match="positive ints"):
        run_dsvt_suite(repeats=1, sizes={"input_layer": [0]})


def test_kitti_scan_is_the_generators_frame_zero(tmp_path: Path) -> None:
    from sparse3d.datasets.synth.kitti import generate_kitti_frames
    from sparse3d.io.kitti import read_velodyne

    root = generate_kitti_frames(tmp_path / "kitti", num_frames=1, num_azimuth=64, seed=3, progress=False)
    written = read_velodyne(root / "training" / "velodyne" / "000000.bin")
    np.testing.assert_array_equal(kitti_scan(64, seed=3), written)


@pytest.mark.slow  # the frame rows run the full-size KITTI detector (~1 min on a loaded 2-core box)
def test_bench_dsvt_quick_cli_json(tmp_path: Path) -> None:
    if not BENCH.exists():
        pytest.skip(f"console script {BENCH} not installed (pip install -e .)")
    out = tmp_path / "dsvt.json"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([str(BENCH), "dsvt", "--quick", "--repeats", "1", "--json", str(out),
                           "sizes={input_layer:[500],backbone:[],frame:[128]}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| suite | name |" in proc.stdout and "official-style torch" in proc.stdout
    records = json.loads(out.read_text(encoding="utf-8"))
    _check_common(records)
    frame = [r for r in records if r["name"].startswith("frame: ")]
    assert [r["name"][len("frame: "):] for r in frame] == FRAME_STAGES
    assert all(r["ours_peak_rss_mb"] is None or r["ours_peak_rss_mb"] >= 0 for r in frame)
    assert len({r["frame_points"] for r in frame}) == 1 and frame[0]["size"] == frame[0]["frame_points"]
    stage_sum = sum(r["ours_s"] for r in frame[:-1])
    assert frame[-1]["ours_s"] < 3 * stage_sum  # the whole forward is the stages, not something else
    assert records[0]["sets_identical"] is True


def test_bench_dsvt_bad_option_exits_2_without_traceback(tmp_path: Path) -> None:
    if not BENCH.exists():
        pytest.skip(f"console script {BENCH} not installed (pip install -e .)")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([str(BENCH), "dsvt", "--repeats", "1", "sizes={frames:[1]}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "unknown size family" in proc.stderr and "Traceback" not in proc.stderr
