"""Compile every Warp kernel module ahead of the first run, with a progress bar.

Warp compiles a module the first time one of its kernels launches and caches the binary
(``wp.config.kernel_cache_dir``; ``WARP_CACHE_PATH`` moves it). Without this step a fresh install spends its first
training step compiling. ``python -m sparse3d.kernels.warmup`` (run by ``tools/quickstart.sh`` after install)
loads every module of :data:`sparse3d.kernels.KERNEL_MODULES` on a device, compiling those not cached yet.

Coverage: Warp compiles a whole module at once, and every kernel of these modules exists once the module is
imported (generic kernels with their declared ``wp.overload`` signatures, the unrolled kernel-map kernels built
at import), so loading a module compiles every kernel a later launch can use. The CPU binaries are built with
``-march=native`` (see :mod:`sparse3d.kernels.sparse_conv`), so they are compiled on the machine that runs them
rather than shipped.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from sparse3d.kernels import KERNEL_MODULES

FIRST_RUN_NOTICE = "compiling kernels, first run only"
"""The bar's label here and the trainer's note when a first step compiles."""
BAR_DELAY_S = 1.0
"""The bar appears only when loading takes longer than this, i.e. when a module is compiled, not read from cache."""


def resolve_warp_device(device: str) -> str:
    """``auto`` -> ``cuda:0`` when torch sees a GPU, else ``cpu``; ``cuda`` -> ``cuda:0``; others unchanged."""
    text = device.strip().lower()
    if text == "auto":
        import torch

        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cuda":
        return "cuda:0"
    if text != "cpu" and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return text


def _source_size(name: str) -> int:
    spec = importlib.util.find_spec(name)
    origin = spec.origin if spec is not None else None
    return os.path.getsize(origin) if origin and os.path.isfile(origin) else 0


def warm_up(
    device: str = "cpu",
    modules: Sequence[str] = KERNEL_MODULES,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> list[str]:
    """Load every Warp module in ``modules`` on ``device``, compiling the ones not in Warp's cache yet.

    Modules load from ``workers`` threads (default: :func:`sparse3d.kernels.runtime.cpu_threads`), the largest
    source first so the longest compile starts first. With ``progress`` a tqdm bar labelled
    :data:`FIRST_RUN_NOTICE` is drawn on stderr once loading takes over :data:`BAR_DELAY_S`. Returns the module names
    in load order. A module that fails to compile raises ``RuntimeError`` naming it.
    """
    from sparse3d.kernels import runtime

    warp_device = resolve_warp_device(device)
    runtime.init()
    import warp as wp

    order = sorted(dict.fromkeys(modules), key=_source_size, reverse=True)
    for name in order:
        importlib.import_module(name)
    n_workers = max(1, min(len(order), workers if workers is not None else runtime.cpu_threads()))

    def load(name: str) -> str:
        try:
            wp.load_module(name, device=warp_device, max_workers=0)
        except Exception as exc:
            raise RuntimeError(f"compiling Warp module {name} for {warp_device} failed: {exc}") from exc
        return name

    bar = None
    if progress and order:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc=FIRST_RUN_NOTICE, unit="module", delay=BAR_DELAY_S, file=sys.stderr,
                   dynamic_ncols=True)
    # redraw while a long compile runs, so the elapsed time moves (rarely when stderr is a log file)
    redraw_s = 0.5 if sys.stderr.isatty() else 15.0
    start = time.perf_counter()
    loaded: list[str] = []
    try:
        with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="sparse3d-warmup") as pool:
            pending = {pool.submit(load, name) for name in order}
            while pending:
                done, pending = wait(pending, timeout=redraw_s, return_when=FIRST_COMPLETED)
                for future in done:
                    loaded.append(future.result())
                    if bar is not None:
                        bar.set_postfix_str(loaded[-1].rsplit(".", 1)[-1], refresh=False)
                        bar.update(1)
                if bar is not None and not done and time.perf_counter() - start >= BAR_DELAY_S:
                    bar.refresh()
    finally:
        if bar is not None:
            bar.close()
    return loaded


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sparse3d.kernels.warmup [--device auto|cpu|cuda|cuda:N] [--modules NAME ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m sparse3d.kernels.warmup",
        description="Compile sparse3d's Warp kernels into Warp's kernel cache now instead of during the first "
        "run (done once per machine and Warp version; later runs load them from the cache).",
        epilog="examples:\n  python -m sparse3d.kernels.warmup\n  python -m sparse3d.kernels.warmup --device cuda\n"
        "  WARP_CACHE_PATH=/tmp/warp python -m sparse3d.kernels.warmup --modules sparse3d.kernels.segment",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cpu", help="device to compile for: auto, cpu, cuda, cuda:N (default: cpu)")
    parser.add_argument("--modules", nargs="+", default=list(KERNEL_MODULES), metavar="NAME",
                        help="kernel modules to compile (default: all of sparse3d.kernels.KERNEL_MODULES)")
    parser.add_argument("--workers", type=int, default=None, help="modules compiled at once (default: one per core)")
    parser.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.modules) - set(KERNEL_MODULES))
    if unknown:
        parser.error(f"not kernel modules: {', '.join(unknown)} (see sparse3d.kernels.KERNEL_MODULES)")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    try:
        device = resolve_warp_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    start = time.perf_counter()
    try:
        loaded = warm_up(device, args.modules, workers=args.workers, progress=not args.no_progress)
    except RuntimeError as exc:
        print(f"sparse3d.kernels.warmup: error: {exc}", file=sys.stderr)
        return 1
    import warp as wp

    print(f"Warp kernels ready on {device}: {len(loaded)} modules in {time.perf_counter() - start:.1f} s "
          f"(cache: {Path(wp.config.kernel_cache_dir)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
