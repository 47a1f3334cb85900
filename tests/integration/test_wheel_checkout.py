"""A wheel install used from the source checkout (scripts and notebooks started in the repository root).

There the checkout's ``sparse3d/`` shadows the installed package; every module must still import, each from its
source file in the checkout, and ``pkg://sparse3d.configs`` must compose the installed package's ``train``
config. The wheel is built from a copy of the checkout (so the working tree gets no build/ or egg-info) and
installed into a venv that borrows this interpreter's dependencies through a .pth file (nothing is downloaded).
The checking is ``tools/ci_check_wheel.py --checkout``, the same step CI runs.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL_SKIP = {".git", ".venv", "build", "dist", "data", "outputs", "multirun"}


def _ignore(folder: str, names: list[str]) -> list[str]:
    top = TOP_LEVEL_SKIP if Path(folder) == ROOT else set()
    return [n for n in names if n in top or n == "__pycache__" or n.endswith((".egg-info", "_cache"))
            or n == ".hypothesis"]


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def test_wheel_install_imports_every_subpackage_from_the_checkout_root(tmp_path: Path) -> None:
    if not (ROOT / "pyproject.toml").is_file() or not (ROOT / "tools" / "ci_check_wheel.py").is_file():
        pytest.skip("not running from a source checkout")
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=_ignore)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
          str(tmp_path / "dist"), str(checkout)])
    wheel = next((tmp_path / "dist").glob("sparse3d-*.whl"))
    shutil.rmtree(checkout / "build", ignore_errors=True)  # the checkout stays a plain source tree

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                   .stdout.strip())
    (purelib / "_borrowed_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n", encoding="utf-8")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)])

    outside = _run([str(python), "-c", "import sparse3d; print(sparse3d.__file__)"], cwd=tmp_path).stdout.strip()
    assert Path(outside).is_relative_to(purelib), f"outside the checkout sparse3d came from {outside}, not the wheel"

    check = _run([str(python), str(checkout / "tools" / "ci_check_wheel.py"), "--checkout", str(checkout),
                  "--checkout-only"], cwd=tmp_path)
    assert f"in the checkout {checkout.resolve()}: imported" in check.stdout, check.stdout
