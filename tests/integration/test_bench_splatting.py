"""``sparse3d-bench splatting --quick`` end to end: the CLI runs the suite and writes well-formed records.

Timings are not asserted (shared machines); what is asserted is the record schema, that each row names its
peer, that ours and the torch-tiles peer produced the same image and gradients (the suite measures this and
stores it in the records), and that rows without a peer say why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparse3d.bench import available_suites
from sparse3d.bench.common import RECORD_FIELDS
from sparse3d.bench.splatting import QUICK_COUNTS, QUICK_RESOLUTIONS

BENCH = Path(sys.executable).parent / "sparse3d-bench"


def test_splatting_suite_is_registered() -> None:
    assert "splatting" in available_suites()


@pytest.mark.slow  # ~20 s idle, ~45 s on a loaded 2-core box, plus Warp compiles on a cold cache
def test_bench_splatting_quick_json(tmp_path: Path) -> None:
    if not BENCH.exists():
        pytest.skip(f"console script {BENCH} not installed (pip install -e .)")
    out = tmp_path / "splat.json"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([str(BENCH), "splatting", "--quick", "--repeats", "1", "--json", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| suite | name |" in proc.stdout
    records = json.loads(out.read_text(encoding="utf-8"))
    (width, height), n = QUICK_RESOLUTIONS[0], QUICK_COUNTS[0]
    names = [r["name"] for r in records]
    assert names == [f"forward {width}×{height}", f"forward+backward {width}×{height}", f"projection {width}×{height}"]
    for r in records:
        assert all(k in r for k in RECORD_FIELDS), r
        assert r["suite"] == "splatting" and r["size"] == n and r["num_gaussians"] == n
        assert r["device"] == "cpu" and r["repeats"] == 1
        assert isinstance(r["ours_s"], float) and r["ours_s"] > 0
        if r["peer_s"] is None:
            assert r["speedup_vs_peer"] is None and r["notes"]
        else:
            assert r["speedup_vs_peer"] == pytest.approx(r["peer_s"] / r["ours_s"])
        assert "MISMATCH" not in r["notes"]
    fwd, fb, proj = records
    assert fwd["peer"] == "torch-tiles" and fwd["image_mean_abs_diff"] <= 1e-5 and fwd["image_frac_over_1e-4"] <= 1e-4
    assert fwd["n_isects"] >= n // 2 and "gsplat CUDA: no CUDA" in fwd["notes"]
    assert fb["peer"] == "torch-tiles" and fb["grad_rel_l2_diff"] <= 1e-3
    try:
        import gsplat.cuda._torch_impl  # noqa: F401
    except Exception:  # noqa: BLE001
        assert proj["peer"] is None and "unavailable" in proj["notes"]
    else:
        assert proj["peer"] == "gsplat torch projection" and proj["projection_max_diff"] <= 1e-3


def test_peer_runs_when_its_memory_estimate_fits_what_is_available(monkeypatch) -> None:
    """The peer's fwd+bwd runs iff its estimate fits the available memory less max(1 GB, 10 %) and the optional
    cap; otherwise the reason names the estimate and the memory (or the cap)."""
    from sparse3d.bench import splatting as S

    assert S.peer_memory_verdict(10.0, 22.0, None) == ""  # 22 - 2.2 = 19.8 GB usable
    assert S.peer_memory_verdict(19.9, 22.0, None).startswith("~19.9 GB of autograd temporaries > 19.8 GB usable")
    assert S.peer_memory_verdict(1.5, 3.0, None) == ""  # headroom 1 GB when 10 % is less
    assert "2.0 GB usable" in S.peer_memory_verdict(2.5, 3.0, None)
    assert S.peer_memory_verdict(10.0, 22.0, 6.0) == "~10.0 GB of autograd temporaries > SPARSE3D_BENCH_PEER_MAX_GB=6"
    assert S.peer_memory_verdict(5.0, None, 6.0) == ""
    assert "available memory unknown" in S.peer_memory_verdict(5.0, None, None)
    available = S.available_memory_gb()
    assert available is None or available > 0
    monkeypatch.delenv("SPARSE3D_BENCH_PEER_MAX_GB", raising=False)
    assert S._peer_cap_gb() is None
    monkeypatch.setenv("SPARSE3D_BENCH_PEER_MAX_GB", "12")
    assert S._peer_cap_gb() == 12.0
    for bad in ("abc", "-1", "0", "nan", "inf"):
        monkeypatch.setenv("SPARSE3D_BENCH_PEER_MAX_GB", bad)
        with pytest.raises(ValueError, match="SPARSE3D_BENCH_PEER_MAX_GB must be a positive number"):
            S.run_splatting_suite(repeats=1, quick=True)
