"""Checks an installed sparse3d wheel from outside the source tree (run by .ci/run in a clean venv).

Fails loudly when a sub-package is missing from the wheel, when the wheel leaks top-level ``models``/
``datasets``/``kernels``/``configs`` modules, when a Hydra config does not compose, or when a console script is
missing.
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path


def main() -> int:
    import sparse3d

    location = Path(sparse3d.__file__).resolve()
    if "site-packages" not in str(location):
        raise SystemExit(f"sparse3d imported from {location}, not from an installed wheel")
    print(f"sparse3d {sparse3d.__version__} from {location.parent}")

    for name in ("models", "datasets", "kernels", "configs", "tools"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and "sparse3d" in str(spec.origin):
            raise SystemExit(f"top-level module {name!r} leaks from the wheel: {spec.origin}")

    modules = [m.name for m in pkgutil.walk_packages(sparse3d.__path__, "sparse3d.")]
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
