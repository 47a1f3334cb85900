"""``sparse3d-bench``: run a benchmark suite, print its markdown table, optionally write the JSON records.

Examples::

    sparse3d-bench kernels                                   # full kernel suite, table on stdout
    sparse3d-bench kernels --quick --repeats 1 --json out.json
    sparse3d-bench kernels --cuda-compile                    # + AOT CUDA compile of every Warp module
    sparse3d-bench suite=kernels repeats=3 json=out.json     # the same as plain Hydra overrides
    sparse3d-bench kernels 'sizes={voxelize:[2000000]}'      # explicit sizes per family

The ``--flag`` forms are rewritten into Hydra overrides before Hydra parses the command line (Hydra has no
flags of its own for them). A benchmark writes no run directory: unless the command line says otherwise,
``hydra.run.dir=.``, ``hydra.output_subdir=null`` and ``hydra/job_logging=stdout`` are added, so nothing
lands in ``outputs/``; the JSON goes where ``--json`` says.

Exit status: 0, 1 when a ``kernels-cuda-compile`` record failed, 2 for a usage error.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sparse3d.bench import available_suites
from sparse3d.cli import _hydra as H
from sparse3d.utils.errors import UserError

log = logging.getLogger("sparse3d.cli.bench")

APP = "sparse3d-bench"
EXIT_COMPILE_FAILED = 1

_COMMAND_LINE: list[str] = []
"""The command line as typed (before :func:`rewrite_argv`), quoted in the table caption."""

# --flag -> config key; flags in _BOOL_FLAGS take no value.
_VALUE_FLAGS: dict[str, str] = {"--json": "json", "--repeats": "repeats", "--device": "device", "--suite": "suite"}
_BOOL_FLAGS: dict[str, tuple[str, str]] = {
    "--cuda-compile": ("cuda_compile", "true"),
    "--no-cuda-compile": ("cuda_compile", "false"),
    "--quick": ("quick", "true"),
}
# Hydra's own options that consume the next argument (so that argument is not a suite name).
_HYDRA_OPTS_WITH_VALUE = frozenset(
    {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
     "--experimental-rerun", "--info", "-i"}
)
_DEFAULT_OVERRIDES: tuple[tuple[str, str], ...] = (
    ("hydra.run.dir", "."),
    ("hydra.output_subdir", "null"),
    ("hydra/job_logging", "stdout"),
)
_UNQUOTED_OK = re.compile(r"^[A-Za-z0-9_./:+\-]*$")


def _hydra_value(text: str) -> str:
    """A Hydra override value for ``text``: as-is when plain, else single-quoted with escapes."""
    if text and _UNQUOTED_OK.match(text) and text.lower() not in ("null", "true", "false"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _usage_error(message: str) -> SystemExit:
    print(f"{APP}: error: {message}", file=sys.stderr, flush=True)
    return SystemExit(H.EXIT_USER_ERROR)


def rewrite_argv(argv: Sequence[str]) -> list[str]:
    """Translate ``prog SUITE --flag [VALUE]...`` into Hydra overrides; add the no-run-dir defaults.

    ``argv[0]`` is kept; Hydra's own options come next (argparse wants the overrides contiguous), then the
    ``key=value`` overrides in the order given.
    """
    if not argv:
        return []
    options: list[str] = []
    overrides: list[str] = []
    args = list(argv[1:])
    suite_seen = False
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=")
        if name in _VALUE_FLAGS:
            if eq:
                value = inline
            else:
                if i + 1 >= len(args):
                    raise _usage_error(f"{name} needs a value")
                i += 1
                value = args[i]
            key = _VALUE_FLAGS[name]
            suite_seen |= key == "suite"
            overrides.append(f"{key}={_hydra_value(value)}")
        elif arg in _BOOL_FLAGS:
            key, value = _BOOL_FLAGS[arg]
            overrides.append(f"{key}={value}")
        elif arg in _HYDRA_OPTS_WITH_VALUE:
            options.append(arg)
            if i + 1 < len(args) and not args[i + 1].startswith("-") and "=" not in args[i + 1]:
                i += 1
                options.append(args[i])
        elif arg.startswith("-"):
            options.append(arg)
        elif "=" in arg:
            suite_seen |= arg.lstrip("+~").startswith("suite=")
            overrides.append(arg)
        elif not suite_seen:
            overrides.append(f"suite={_hydra_value(arg)}")
            suite_seen = True
        else:
            raise _usage_error(f"unexpected argument {arg!r} (the suite is already set; use key=value overrides)")
        i += 1
    given = {a.split("=", 1)[0].lstrip("+~") for a in overrides}
    multirun = any(a in ("-m", "--multirun") for a in options)
    for key, value in _DEFAULT_OVERRIDES:
        if key not in given and not (multirun and key == "hydra.run.dir"):
            overrides.append(f"{key}={value}")
    return [argv[0], *options, *overrides]


def _check_suite_name(overrides: Sequence[str], config_dirs: Sequence[str]) -> None:
    """A clear error for an unknown ``suite=NAME`` (Hydra's own names the config group, not the choices)."""
    names = [a.split("=", 1)[1] for a in overrides if a.startswith("suite=")]
    known = set(available_suites())
    for folder in config_dirs:
        known |= {p.stem for p in Path(folder, "suite").glob("*.yaml")}
    for name in names:
        if name.strip("'") not in known:
            raise _usage_error(f"unknown suite {name!r}; available suites: {', '.join(sorted(known))}")


def suite_kwargs(runner: Callable[..., Any], cfg: DictConfig) -> dict[str, Any]:
    """Keyword arguments for ``runner`` from the config; options it does not take must be left unset."""
    repeats = cfg.repeats
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise UserError(f"repeats: must be a whole number >= 1, got {repeats!r}")
    sizes = cfg.get("sizes")
    wanted: dict[str, Any] = {
        "repeats": repeats,
        "quick": bool(cfg.quick),
        "device": str(cfg.device),
        "cuda_compile": bool(cfg.cuda_compile),
        "sizes": OmegaConf.to_container(sizes, resolve=True) if isinstance(sizes, DictConfig) else sizes,
    }
    params = inspect.signature(runner).parameters
    kwargs: dict[str, Any] = {}
    for key, value in wanted.items():
        if key in params:
            kwargs[key] = value
        elif key in ("cuda_compile", "sizes") and value not in (None, False):
            raise UserError(f"suite {cfg.suite.name!r} does not support {key}")
    return kwargs


def check_options(cfg: DictConfig) -> None:
    """Refuse, before any suite runs, a ``device`` torch cannot use and a ``json`` path that cannot be written."""
    import torch

    try:
        device = torch.device(str(cfg.device))
    except RuntimeError as exc:
        raise UserError(f"device: {cfg.device!r} is not a torch device ({' '.join(str(exc).split())[:120]})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: {cfg.device!r} asked for, but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device: {cfg.device!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device: the suites run on cpu or cuda, got {cfg.device!r}")
    if not cfg.get("json"):
        return
    path = Path(str(cfg.json)).expanduser()
    if path.is_dir():
        raise UserError(f"json: {path} is a folder; give a file name such as {path / 'bench.json'}")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"json: {path}: {blocker} is a file, not a folder")


def run_bench(cfg: DictConfig) -> tuple[list[dict], bool]:
    """Run the configured suite, print its table, write JSON if asked; returns (records, all compiles ok)."""
    from sparse3d.bench.common import machine_description, markdown_table, write_json

    check_options(cfg)
    runner = instantiate(cfg.suite.runner)
    kwargs = suite_kwargs(runner, cfg)
    try:
        records = runner(**kwargs)
    except ValueError as exc:  # the suites validate their arguments with ValueError
        raise UserError(str(exc)) from exc
    reps = sorted({int(r["repeats"]) for r in records if isinstance(r.get("repeats"), int)})
    timing = f"median of {'/'.join(map(str, reps))} run(s) after a warm-up; " if reps else ""
    caption = (
        f"`{' '.join([APP, *(_COMMAND_LINE or sys.argv[1:])])}` — {machine_description(str(cfg.device))}; "
        f"{timing}speedup = other_s / ours_s (> 1× means ours is faster)"
    )
    print(markdown_table(records, caption), flush=True)
    if cfg.json:
        path = write_json(records, str(cfg.json))
        print(f"\nwrote {len(records)} records to {path}", flush=True)
    failed = [r["name"] for r in records if r.get("compile_ok") is False]
    if failed:
        print(f"{APP}: CUDA compile failed for {', '.join(failed)}", file=sys.stderr, flush=True)
    return records, not failed


@hydra.main(version_base=H.VERSION_BASE, config_path=H.CONFIG_PATH, config_name="bench")
@H.guarded(APP)
def _hydra_entry(cfg: DictConfig) -> None:
    _, ok = run_bench(cfg)
    if not ok:
        raise SystemExit(EXIT_COMPILE_FAILED)


def main() -> None:
    """Console-script entry point: rewrite ``--flags`` into Hydra overrides, then let Hydra compose."""
    _COMMAND_LINE[:] = sys.argv[1:]
    sys.argv = rewrite_argv(sys.argv)
    dirs = [sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a in ("--config-dir", "-cd")]
    _check_suite_name(sys.argv[1:], dirs)
    _hydra_entry()


if __name__ == "__main__":
    main()
