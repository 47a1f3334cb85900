"""End-to-end runs of the ``sparse3d-bench`` console script (quick kernel suite, AOT CUDA compile).

The suite itself checks ours against the torch references on every run; these tests make sure the CLI
wires the flags through Hydra, the JSON records carry the documented fields with consistent numbers, and
every Warp module compiles for sm80 + sm90 without a GPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sparse3d.bench.common import RECORD_FIELDS
from sparse3d.cli.bench import rewrite_argv
from sparse3d.kernels import KERNEL_MODULES

BENCH = Path(sys.executable).parent / "sparse3d-bench"
NO_FAMILIES = "sizes={voxelize:[],subm_conv:[],segment:[],knn:[]}"


def _run_bench(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    if not BENCH.exists():
        pytest.skip(f"console script {BENCH} not installed (pip install -e .)")
    # Without HYDRA_FULL_ERROR the app turns user errors into exit status 2 with a one-line message.
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [str(BENCH), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _load(path: Path) -> list[dict[str, Any]]:
    records = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(records, list) and records
    for r in records:
        missing = [k for k in RECORD_FIELDS if k not in r]
        assert not missing, f"{r.get('name')}: missing {missing}"
    return records


def test_rewrite_argv_turns_flags_into_hydra_overrides() -> None:
    argv = ["sparse3d-bench", "kernels", "--cuda-compile", "--json", "out.json", "--quick", "--repeats", "3"]
    assert rewrite_argv(argv) == [
        "sparse3d-bench",
        "suite=kernels",
        "cuda_compile=true",
        "json=out.json",
        "quick=true",
        "repeats=3",
        "hydra.run.dir=.",
        "hydra.output_subdir=null",
        "hydra/job_logging=stdout",
    ]
    # Hydra options go first, user overrides win over the no-run-dir defaults, odd paths get quoted.
    out = rewrite_argv(["p", "suite=kernels", "--cfg", "job", "hydra.run.dir=runs", "--json=a b'c.json"])
    assert out == [
        "p", "--cfg", "job", "suite=kernels", "hydra.run.dir=runs", "json='a b\\'c.json'",
        "hydra.output_subdir=null", "hydra/job_logging=stdout",
    ]


def test_bench_rejects_unknown_suite(tmp_path: Path) -> None:
    proc = _run_bench(["nosuchsuite"], tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "unknown suite 'nosuchsuite'" in proc.stderr and "available suites:" in proc.stderr
    assert "kernels" in proc.stderr.split("available suites:")[1]


@pytest.mark.slow
def test_bench_kernels_quick_writes_consistent_records(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = _run_bench(["kernels", "--quick", "--repeats", "1", "--json", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| suite | name |" in proc.stdout  # the markdown table was printed
    assert not (tmp_path / "outputs").exists() and not (tmp_path / ".hydra").exists()
    records = _load(out)
    names = {r["name"] for r in records}
    for expected in (
        "voxelize",
        "subm_map k3 (kernel map)",
        "subm_conv k3 fwd (map+conv)",
        "subm_conv k3 fwd (conv only)",
        "subm_conv k3 fwd+bwd (conv only)",
        "segment_max",
        "segment_mean",
    ):
        assert expected in names, f"no {expected!r} record in {sorted(names)}"
    for r in records:
        assert r["suite"] == "kernels"
        assert isinstance(r["size"], int) and r["size"] > 0
        assert r["ours_s"] > 0
        if r["peer_s"] is None:
            assert r["speedup_vs_peer"] is None
            assert r["notes"], f"{r['name']}: a missing peer needs a reason in notes"
        else:
            assert r["peer"] and r["peer_s"] > 0
            assert math.isclose(r["speedup_vs_peer"], r["peer_s"] / r["ours_s"], rel_tol=1e-9)
        if r.get("torch_ref_s") is not None:
            assert r["torch_ref_s"] > 0
            assert math.isclose(r["speedup_vs_torch_ref"], r["torch_ref_s"] / r["ours_s"], rel_tol=1e-9)
            # Every timed comparison was also checked against the reference output.
            assert "matches torch ref" in r["notes"], r["notes"]
        assert r["ours_peak_rss_mb"] is None or r["ours_peak_rss_mb"] >= 0
    # quick mode: sizes shrink 10x
    assert {r["size"] for r in records if r["name"] == "voxelize"} == {100_000, 400_000}


def test_bench_cuda_compile_gives_one_ok_record_per_module(tmp_path: Path) -> None:
    out = tmp_path / "compile.json"
    # Empty size lists skip the timing families, so this run only exercises the AOT compile path.
    # The limit only guards against a hang: compiling all modules twice (sm80, sm90) took 5-10 min on a loaded
    # 2-core machine (one module alone ~100 s), past the default 600 s.
    proc = _run_bench(["kernels", "--cuda-compile", "--quick", "--repeats", "1", "--json", str(out), NO_FAMILIES],
                      tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = _load(out)
    compiled = [r for r in records if r["suite"] == "kernels-cuda-compile"]
    assert sorted(r["name"] for r in compiled) == sorted(KERNEL_MODULES)
    for r in compiled:
        assert r["compile_ok"] is True, r["notes"]
        assert r["notes"] == "ok sm80+sm90"
        assert r["ours_s"] > 0 and r["size"] > 0
        assert r["peer_s"] is None and r["speedup_vs_peer"] is None
