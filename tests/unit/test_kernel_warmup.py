"""Ahead-of-time compile of the Warp kernel modules (``python -m sparse3d.kernels.warmup``).

Each case runs in a subprocess with an empty Warp kernel cache (``WARP_CACHE_PATH``), so it never depends on, or
fills, the machine's cache. Oracles: the cache holds a compiled CPU binary per warmed module, and kernel launches
after the warm-up (small and split over cores, forward and backward) add nothing to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sparse3d.kernels.warmup import main, resolve_warp_device

SMALL_MODULES = ("sparse3d.kernels.segment", "sparse3d.kernels.occupancy")


def _python(source: str, cache: Path, timeout: float = 600) -> dict:
    env = dict(os.environ, WARP_CACHE_PATH=str(cache))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(source)], capture_output=True, text=True,
                            env=env, timeout=timeout)
    assert result.returncode == 0, result.stderr[-6000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_warmup_compiles_each_module_once_and_later_launches_compile_nothing(tmp_path: Path) -> None:
    out = _python(f"""
        import json, os, torch
        from pathlib import Path
        from sparse3d.kernels.warmup import warm_up

        cache = Path(os.environ["WARP_CACHE_PATH"])
        def listing():
            return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())

        loaded = warm_up("cpu", {list(SMALL_MODULES)!r}, progress=False)
        after_warmup = listing()
        from sparse3d.kernels.occupancy import occupancy_unique
        from sparse3d.kernels.segment import segment_max, segment_sum
        for n in (100, 70_000):  # one launch, and launches split over the CPU threads
            values = torch.randn(n, 4, requires_grad=True)
            ids = torch.randint(0, 50, (n,))
            (segment_sum(values, ids, 50).sum() + segment_max(values, ids, 50)[0].sum()).backward()
            occupancy_unique(torch.randint(0, 1000, (n,)), 1000)
        print(json.dumps({{"loaded": loaded, "after_warmup": after_warmup, "after_launches": listing()}}))
    """, tmp_path / "warp")
    assert sorted(out["loaded"]) == sorted(SMALL_MODULES)
    for name in SMALL_MODULES:
        binaries = [f for f in out["after_warmup"] if f"/wp_{name}_" in f"/{f}" and f.endswith(".o")]
        assert len(binaries) == 1, f"{name}: {out['after_warmup']}"
    assert out["after_launches"] == out["after_warmup"], "a launch after the warm-up compiled something"


def test_modules_compiling_names_the_module_while_warp_builds_it(tmp_path: Path) -> None:
    out = _python("""
        import json, threading, time
        import warp as wp
        import sparse3d.kernels.occupancy
        from sparse3d.kernels import runtime

        runtime.init()
        before = runtime.modules_compiling()
        worker = threading.Thread(target=wp.load_module, args=("sparse3d.kernels.occupancy",), kwargs={"device": "cpu"})
        worker.start()
        seen = set()
        while worker.is_alive():
            seen.update(runtime.modules_compiling())
            time.sleep(0.005)
        worker.join()
        print(json.dumps({"before": before, "seen": sorted(seen), "after": runtime.modules_compiling()}))
    """, tmp_path / "warp")
    assert out == {"before": [], "seen": ["sparse3d.kernels.occupancy"], "after": []}


def test_device_names_resolve_like_the_trainer() -> None:
    assert resolve_warp_device("cpu") == "cpu"
    assert resolve_warp_device(" CUDA ") == "cuda:0"
    assert resolve_warp_device("cuda:1") == "cuda:1"
    assert resolve_warp_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", ""):
        with pytest.raises(ValueError, match="device must be"):
            resolve_warp_device(bad)


@pytest.mark.parametrize("argv", [["--modules", "sparse3d.kernels.nope"], ["--workers", "0"], ["--device", "tpu"]])
def test_cli_rejects_bad_arguments_without_compiling(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err

