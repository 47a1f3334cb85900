"""Checks an installed sparse3d wheel from outside the source tree (run by .ci/run in a clean venv).

Fails loudly when a sub-package is missing from the wheel, when the wheel leaks top-level ``models``/
``datasets``/``kernels``/``configs`` modules, when a Hydra config does not compose, or when a console script is
missing. With ``--checkout ROOT`` it also runs ``python -c`` in the checkout ROOT (where the checkout's
``sparse3d/`` shadows the installed one, as for scripts and notebooks started there): every module of the wheel
must import from its source file in ROOT and ``pkg://sparse3d.configs`` must compose the same ``train`` config.

    python ci_check_wheel.py [--checkout ROOT [--checkout-only]]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
import importlib.util
import json
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

# Run with `python -c` in the checkout: imports the modules named in argv[1], composes the train config.
CHECKOUT_PROBE = """
import importlib, json, sys
from pathlib import Path
files = {}
for name in json.loads(sys.argv[1]):
    files[name] = str(Path(importlib.import_module(name).__file__).resolve())
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from sparse3d.config_schema import register
register()
with initialize_config_module(version_base="1.3", config_module="sparse3d.configs"):
    train = OmegaConf.to_yaml(compose("train"))
print(json.dumps({"files": files, "train": train}))
"""


def wheel_modules() -> list[str]:
    """The installed sparse3d and every module in it, sub-packages included."""
    import sparse3d

    return ["sparse3d", *sorted(m.name for m in pkgutil.walk_packages(sparse3d.__path__, "sparse3d."))]


def compose_train() -> str:
    """The default ``train`` config composed from ``pkg://sparse3d.configs``, as unresolved YAML."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from sparse3d.config_schema import register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="sparse3d.configs"):
        return OmegaConf.to_yaml(compose("train"))


def expected_source(root: Path, name: str, package_dirs: dict[str, str]) -> set[Path]:
    """Where module ``name`` lives in the checkout ``root`` under pyproject's ``package-dir`` mapping."""
    prefix = max((p for p in package_dirs if name == p or name.startswith(p + ".")), key=len)
    folder = root / package_dirs[prefix] / Path(*name[len(prefix):].split(".")[1:])
    return {folder.with_suffix(".py").resolve(), (folder / "__init__.py").resolve()}


def check_checkout(root: Path, modules: list[str]) -> None:
    """Import ``modules`` and compose ``train`` with ``python -c`` run in the checkout ``root``; each module must
    come from its source file in ``root`` and the config must equal the installed package's."""
    import tomllib

    package_dirs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([sys.executable, "-c", CHECKOUT_PROBE, json.dumps(modules)], cwd=root, env=env,
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit(f"importing sparse3d in the checkout {root} failed:\n{probe.stderr[-4000:]}")
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    missing = sorted(set(package_dirs) - set(found["files"]))
    if missing:
        raise SystemExit(f"packages of pyproject's package-dir not imported in the checkout: {', '.join(missing)}")
    wrong = [f"{name}: {file}" for name, file in found["files"].items()
             if Path(file) not in expected_source(root, name, package_dirs)]
    if wrong:
        raise SystemExit("in the checkout these modules do not come from its sources:\n  " + "\n  ".join(wrong))
    if found["train"] != compose_train():
        raise SystemExit("pkg://sparse3d.configs composes a different train config in the checkout")
    print(f"in the checkout {root}: imported {len(found['files'])} modules from its sources, composed train")


def check_installed() -> None:
    """The wheel's own checks, run from outside any checkout."""
    import sparse3d

    location = Path(sparse3d.__file__).resolve()
    if "site-packages" not in str(location):
        raise SystemExit(f"sparse3d imported from {location}, not from an installed wheel")
    print(f"sparse3d {sparse3d.__version__} from {location.parent}")

    for name in ("models", "datasets", "kernels", "configs", "tools"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and "sparse3d" in str(spec.origin):
            raise SystemExit(f"top-level module {name!r} leaks from the wheel: {spec.origin}")

    modules = wheel_modules()
    for name in ("sparse3d.models", "sparse3d.kernels", "sparse3d.datasets", "sparse3d.configs", "sparse3d.bench"):
        if name not in modules:
            raise SystemExit(f"{name} is missing from the wheel")
    for name in modules:
        importlib.import_module(name)
    print(f"imported {len(modules)} modules")

    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    root = importlib.resources.files("sparse3d.configs")
    primaries = sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))
    experiments = sorted(p.name[:-5] for p in root.joinpath("experiment").iterdir() if p.name.endswith(".yaml"))
    count = 0
    for primary in primaries:
        GlobalHydra.instance().clear()
        with initialize_config_module(version_base="1.3", config_module="sparse3d.configs"):
            compose(primary)
            count += 1
            if primary == "train":
                for exp in experiments:
                    compose("train", overrides=[f"experiment={exp}"])
                    count += 1
    print(f"composed {count} configs ({', '.join(primaries)}; experiments: {', '.join(experiments)})")

    from importlib.metadata import distribution

    scripts = sorted(ep.name for ep in distribution("sparse3d").entry_points if ep.group == "console_scripts")
    if not scripts:
        raise SystemExit("the installed sparse3d declares no console scripts")
    for script in scripts:
        path = shutil.which(script)
        if path is None:
            raise SystemExit(f"console script {script} not installed")
        subprocess.run([path, "--help"], check=True, stdout=subprocess.DEVNULL)
    print(f"console scripts answer --help: {', '.join(scripts)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, help="a source checkout to import sparse3d from, as python -c there")
    parser.add_argument("--checkout-only", action="store_true", help="only the --checkout check")
    args = parser.parse_args(argv)
    if args.checkout_only and args.checkout is None:
        parser.error("--checkout-only needs --checkout ROOT")
    if not args.checkout_only:
        check_installed()
    if args.checkout is not None:
        check_checkout(args.checkout.resolve(), wheel_modules())
    return 0


if __name__ == "__main__":
    sys.exit(main())
