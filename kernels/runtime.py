"""Warp start-up, torch interop, input validation and the multi-core CPU launcher shared by all kernels.

Warp runs one CPU launch on one OS thread, and on the CPU its atomics (``atomic_add``, ``atomic_cas``,
``atomic_min``...) compile to plain read-modify-write code (warp/native/builtin.h), because a CPU launch is
sequential. Two ways to use every core follow from that:

* :func:`launch` -- element-parallel kernels whose threads write disjoint memory take ``offset: int`` as their
  first argument (element index ``wp.tid() + offset``); the range is cut into contiguous chunks run from a
  small thread pool (Warp releases the GIL).
* :func:`launch_partitioned` -- kernels that update shared locations (hash inserts, scatter reductions) take
  ``part: int, num_parts: int`` first; every CPU thread scans the whole range but only touches the locations
  it owns (e.g. segments with ``id % num_parts == part``), so no two threads ever write the same address.

On CUDA both are a single launch (``offset = 0``; ``part = 0, num_parts = 1``) and atomics are real.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch
import warp as wp

_INIT_LOCK = threading.Lock()
_INITIALISED = False
_POOL: ThreadPoolExecutor | None = None

SPLIT_MIN_ELEMENTS = 32_768
"""Below this many threads a CPU launch is not split: thread hand-off costs more than it saves."""


def init() -> None:
    """Initialise Warp once, quietly (Warp prints a banner and per-module compile lines by default)."""
    global _INITIALISED
    if _INITIALISED:
        return
    with _INIT_LOCK:
        if not _INITIALISED:
            if os.environ.get("SPARSE3D_WARP_VERBOSE", "0") == "1":
                wp.init()
            else:
                # The banner and per-module compile lines are noise; so is the native "no CUDA driver" notice
                # on CPU hosts, which warp.so prints straight to fd 2: capture it and re-emit anything else.
                wp.config.log_level = wp.LOG_ERROR
                _init_capturing_stderr()
            _INITIALISED = True


_NO_DRIVER_NOTICE = "Could not find or load the NVIDIA CUDA driver"


def _init_capturing_stderr() -> None:
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            wp.init()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        lines = tmp.read().decode(errors="replace").splitlines()
    for line in lines:
        if line.strip() and _NO_DRIVER_NOTICE not in line:
            print(line, file=sys.stderr)


def modules_compiling() -> list[str]:
    """Names of the Warp modules this process is compiling right now (empty before Warp is initialised).

    Read from the build folders Warp keeps in its kernel cache only while a compile runs
    (``<module folder>_p<pid>_t<thread>``), so it costs one directory listing and no lock.
    """
    cache = wp.config.kernel_cache_dir if _INITIALISED else None
    if not cache or not os.path.isdir(cache):
        return []
    marker = f"_p{os.getpid()}_t"
    names = set()
    for entry in os.listdir(cache):
        folder, found, _ = entry.partition(marker)
        if found and folder.startswith("wp_"):
            names.add(folder[3:].rsplit("_", 1)[0])  # wp_<module name>_<hash>
    return sorted(names)


def cpu_threads() -> int:
    """Number of chunks a CPU launch is split into (env ``SPARSE3D_CPU_THREADS``, default: all cores)."""
    env = os.environ.get("SPARSE3D_CPU_THREADS")
    if env:
        return max(1, int(env))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


_SERIAL_LOCK = threading.Lock()
_SERIAL_DEPTH = 0
_SERIAL_SAVED = 1


@contextmanager
def serial_torch_ops() -> Iterator[None]:
    """Run torch's own CPU ops on one thread inside a pipeline that interleaves them with Warp CPU launches.

    After every multi-threaded torch op, OpenMP's idle worker spins for a few milliseconds before it sleeps;
    the Warp launches that follow run on this module's own threads, so the spinning worker takes a core from
    them (the measured cost is in BENCHMARKS.md, splatting notes). The torch ops in such pipelines are small
    index and sort glue, so running them on one thread costs less than it saves.
    Nested and concurrent uses share one saved thread count, restored when the outermost use ends.
    """
    global _SERIAL_DEPTH, _SERIAL_SAVED
    with _SERIAL_LOCK:
        if _SERIAL_DEPTH == 0:
            _SERIAL_SAVED = torch.get_num_threads()
            if _SERIAL_SAVED != 1:
                torch.set_num_threads(1)
        _SERIAL_DEPTH += 1
    try:
        yield
    finally:
        with _SERIAL_LOCK:
            _SERIAL_DEPTH -= 1
            if _SERIAL_DEPTH == 0 and _SERIAL_SAVED != 1:
                torch.set_num_threads(_SERIAL_SAVED)



@contextmanager
def torch_stream(device: torch.device) -> Iterator[None]:
    """On CUDA, run Warp launches on torch's current stream so they order with the torch ops around them."""
    if device.type == "cuda":
        with wp.ScopedStream(wp.stream_from_torch(device)):
            yield
    else:
        yield

def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(2, cpu_threads()), thread_name_prefix="sparse3d-warp")
    return _POOL


def wp_device(t: torch.Tensor) -> str:
    """Warp device string for a torch tensor's device."""
    if t.device.type == "cuda":
        return f"cuda:{t.device.index if t.device.index is not None else torch.cuda.current_device()}"
    if t.device.type == "cpu":
        return "cpu"
    raise ValueError(f"sparse3d kernels run on cpu or cuda tensors, got device {t.device}")


def to_wp(t: torch.Tensor, dtype: Any = None) -> wp.array:
    """Zero-copy Warp view of a contiguous torch tensor (gradients are handled by our autograd bridges)."""
    init()
    if not t.is_contiguous():
        t = t.contiguous()
    return wp.from_torch(t, dtype=dtype, requires_grad=False)


def launch(
    kernel: Any, dim: int, inputs: Sequence[Any], device: str, split: bool = True, min_split: int | None = None
) -> None:
    """Launch ``kernel(offset, *inputs)`` over ``range(dim)``; on the CPU split into chunks over the cores.

    The kernel's first parameter must be ``offset: int`` and its element index ``wp.tid() + offset``.
    ``min_split`` is the smallest ``dim`` that is split (default :data:`SPLIT_MIN_ELEMENTS`): lower it for
    kernels whose threads each do a lot.
    """
    init()
    if dim <= 0:
        return
    smallest = SPLIT_MIN_ELEMENTS if min_split is None else max(2, min_split)
    n_chunks = cpu_threads() if (device == "cpu" and split and dim >= smallest) else 1
    if n_chunks > 1:
        # Compile/load once here: concurrent first launches from the pool would each compile the module.
        wp.load_module(kernel.module, device=device)
    if n_chunks == 1:
        wp.launch(kernel, dim=dim, inputs=[0, *inputs], device=device)
        return
    step = (dim + n_chunks - 1) // n_chunks
    futures = []
    for start in range(0, dim, step):
        count = min(step, dim - start)
        futures.append(
            _pool().submit(wp.launch, kernel, dim=count, inputs=[start, *inputs], device=device)
        )
    for f in futures:
        f.result()


def num_parts(device: str, dim: int) -> int:
    """How many owner partitions :func:`launch_partitioned` uses for ``dim`` elements on ``device``."""
    return cpu_threads() if (device == "cpu" and dim >= SPLIT_MIN_ELEMENTS) else 1


def launch_partitioned(kernel: Any, dim: int, inputs: Sequence[Any], device: str, parts: int | None = None) -> None:
    """Launch ``kernel(part, num_parts, *inputs)`` over ``range(dim)`` once per owner partition.

    ``parts`` defaults to :func:`num_parts`; pass it explicitly when buffers were sized for a partition count.
    """
    init()
    if dim <= 0:
        return
    n = parts if parts is not None else num_parts(device, dim)
    if n == 1:
        wp.launch(kernel, dim=dim, inputs=[0, 1, *inputs], device=device)
        return
    wp.load_module(kernel.module, device=device)
    futures = [
        _pool().submit(wp.launch, kernel, dim=dim, inputs=[p, n, *inputs], device=device) for p in range(n)
    ]
    for f in futures:
        f.result()


def synchronize(device: str) -> None:
    """Wait for queued CUDA work (no-op on CPU, where launches are synchronous)."""
    if device.startswith("cuda"):
        wp.synchronize_device(device)


# ----------------------------------------------------------------------------------------------- validation
def check_tensor(
    name: str,
    t: Any,
    dtypes: Sequence[torch.dtype] | torch.dtype | None = None,
    ndim: int | None = None,
    last_dim: int | None = None,
    min_last_dim: int | None = None,
) -> torch.Tensor:
    """Raise a ValueError naming ``name`` unless ``t`` is a tensor of the expected dtype and shape."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None:
        allowed = (dtypes,) if isinstance(dtypes, torch.dtype) else tuple(dtypes)
        if t.dtype not in allowed:
            names = ", ".join(str(d).replace("torch.", "") for d in allowed)
            raise ValueError(f"{name} must have dtype {names}, got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if last_dim is not None and (t.dim() == 0 or t.shape[-1] != last_dim):
        raise ValueError(f"{name} must have last dimension {last_dim}, got shape {tuple(t.shape)}")
    if min_last_dim is not None and (t.dim() == 0 or t.shape[-1] < min_last_dim):
        raise ValueError(f"{name} must have at least {min_last_dim} columns, got shape {tuple(t.shape)}")
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on cpu or cuda, got {t.device}")
    return t


def check_same_device(**tensors: torch.Tensor) -> None:
    """Raise a ValueError when the given tensors live on different devices."""
    devices = {k: v.device for k, v in tensors.items()}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"tensors must be on one device: {desc}")
