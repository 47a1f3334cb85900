"""Timing, memory, record and table helpers shared by every ``sparse3d-bench`` suite.

Why these choices:

* **Time** -- one warm-up call (Warp compiles/loads its module, allocators and caches warm up), then the
  median of ``repeats`` calls timed with :func:`time.perf_counter`; the median shrugs off the odd slow run on a
  busy machine. CUDA work is synchronised before the clock stops.
* **Memory** -- ``*_peak_rss_mb`` is the *increase* of the process's peak resident set size over its RSS just
  before the timed calls, i.e. the working memory (temporaries + outputs) of the measured operation. On Linux
  the kernel's own high-water mark ``VmHWM`` is reset by writing ``5`` to ``/proc/self/clear_refs`` and read
  back from ``/proc/self/status``: exact, and free of sampling overhead. ``tracemalloc`` cannot see torch's
  C++ allocations, and ``ru_maxrss`` only ever grows over the process lifetime, so neither can attribute a peak
  to one operation. Where ``clear_refs`` is not writable a background thread samples ``VmRSS`` every
  millisecond instead (see :class:`PeakRSS`). ``malloc_trim(0)`` first hands glibc's cached free pages back
  to the OS, so an operation that merely recycles freed heap memory still shows its working set.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

RECORD_FIELDS: tuple[str, ...] = (
    "suite",
    "name",
    "size",
    "ours_s",
    "peer",
    "peer_s",
    "speedup_vs_peer",
    "ours_peak_rss_mb",
    "notes",
)
"""Fields every benchmark record has (the ``--json`` format described in BENCHMARKS.md); suites may add extra
fields."""

_MB = float(2**20)


# ---------------------------------------------------------------------------------------------- memory
def _status_kb(key: str) -> int | None:
    """A ``kB`` line of ``/proc/self/status`` (e.g. ``VmRSS``, ``VmHWM``), or None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_mb() -> float | None:
    """Resident set size of this process in MiB (None where ``/proc`` is unavailable)."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


_HWM_RESETTABLE: bool | None = None


def _release_free_heap() -> None:
    """Return glibc's cached free heap pages to the OS so the next peak is measured from a low baseline."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Context manager measuring the peak RSS increase (MiB) of the code it wraps.

    ``method`` tells which mechanism ran: ``"vmhwm"`` (kernel high-water mark reset through
    ``/proc/self/clear_refs``) or ``"sampled"`` (1 ms background sampling of ``VmRSS``); ``peak_mb`` is None
    when neither is available (non-Linux hosts).
    """

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.method: str = "none"
        self.peak_mb: float | None = None
        self._baseline_kb = 0
        self._max_kb = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRSS:
        global _HWM_RESETTABLE
        if _HWM_RESETTABLE is None:
            _HWM_RESETTABLE = _can_reset_hwm()
        _release_free_heap()
        rss = _status_kb("VmRSS")
        if rss is None:
            return self
        if _HWM_RESETTABLE:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")
            self.method = "vmhwm"
            self._baseline_kb = _status_kb("VmRSS") or rss
        else:
            self.method = "sampled"
            self._baseline_kb = self._max_kb = rss
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, name="sparse3d-bench-rss", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            kb = _status_kb("VmRSS")
            if kb is not None and kb > self._max_kb:
                self._max_kb = kb

    def __exit__(self, *exc: object) -> None:
        if self.method == "vmhwm":
            peak = _status_kb("VmHWM") or self._baseline_kb
        elif self.method == "sampled":
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            peak = max(self._max_kb, _status_kb("VmRSS") or 0)
        else:
            return
        self.peak_mb = max(0.0, (peak - self._baseline_kb) / 1024.0)


# ---------------------------------------------------------------------------------------------- timing
@dataclass
class Measurement:
    """Result of :func:`measure`."""

    median_s: float
    """Median wall time of the timed calls."""
    times_s: list[float]
    """Every timed call, in order."""
    peak_rss_mb: float | None
    """Peak RSS increase over the pre-call baseline during the timed calls (see module docstring)."""
    result: Any = None
    """Return value of the warm-up call when ``keep_result`` was set (for correctness checks)."""


def measure(
    fn: Callable[[], Any],
    repeats: int,
    sync: Callable[[], None] | None = None,
    keep_result: bool = False,
) -> Measurement:
    """Warm up ``fn`` once, then time ``repeats`` calls; return the median and the peak RSS increase.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before the clock stops so asynchronous device work counts.
    Results of timed calls are dropped right away so they do not inflate the next call's baseline.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    warm = fn()
    if sync is not None:
        sync()
    kept = warm if keep_result else None
    del warm
    gc.collect()
    times: list[float] = []
    with PeakRSS() as rss:
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            if sync is not None:
                sync()
            times.append(time.perf_counter() - t0)
            del out
    times_sorted = sorted(times)
    mid = len(times_sorted) // 2
    median = times_sorted[mid] if len(times_sorted) % 2 else 0.5 * (times_sorted[mid - 1] + times_sorted[mid])
    return Measurement(median, times, rss.peak_mb, kept)


# ---------------------------------------------------------------------------------------------- records
def prepare_run(repeats: int, device: str) -> torch.device:
    """Validate a suite's ``repeats``/``device`` arguments and start Warp; returns the torch device."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:N], got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch.cuda.is_available() is False")
    from sparse3d.kernels.runtime import init

    init()
    return dev


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` or None when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or not denominator > 0:
        return None
    return float(numerator) / float(denominator)


@dataclass
class BenchRecord:
    """One row of a benchmark: our time, the fastest installed peer's time and their ratio.

    ``speedup_vs_peer`` = ``peer_s / ours_s`` (> 1: ours is faster); it is derived, never set by hand.
    ``extra`` holds suite-specific fields (``torch_ref_s``, quality metrics...), flattened into the dict.
    Every record also names the host's CPU (``cpu_model``, ``cpu_isa``: see :func:`cpu_info`).
    """

    suite: str
    name: str
    size: int | None
    ours_s: float | None
    peer: str | None = None
    peer_s: float | None = None
    ours_peak_rss_mb: float | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup_vs_peer(self) -> float | None:
        return ratio(self.peer_s, self.ours_s)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record: the required fields first, then the extras (``speedup_vs_*`` derived)."""
        out: dict[str, Any] = {
            "suite": self.suite,
            "name": self.name,
            "size": self.size,
            "ours_s": self.ours_s,
            "peer": self.peer,
            "peer_s": self.peer_s,
            "speedup_vs_peer": self.speedup_vs_peer,
            "ours_peak_rss_mb": self.ours_peak_rss_mb,
            "notes": self.notes,
        }
        for key, value in self.extra.items():
            if key in out:
                raise ValueError(f"extra field {key!r} would overwrite a required record field")
            out[key] = value
        info = cpu_info()
        out.setdefault("cpu_model", info.model)
        out.setdefault("cpu_isa", info.isa)
        if "torch_ref_s" in out and "speedup_vs_torch_ref" not in out:
            out["speedup_vs_torch_ref"] = ratio(out["torch_ref_s"], self.ours_s)
        return out


def check_record(record: Mapping[str, Any]) -> None:
    """Raise ValueError unless ``record`` has every required field (used by suites and tests)."""
    missing = [k for k in RECORD_FIELDS if k not in record]
    if missing:
        raise ValueError(f"benchmark record {record.get('name')!r} lacks fields {missing}")


# ---------------------------------------------------------------------------------------------- output
def _jsonable(value: Any) -> Any:
    """Plain JSON values: NaN/inf become null, tuples lists, paths strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def write_json(records: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write the records as a JSON list (parent folders created); returns the path written."""
    out = Path(path)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    rows = [_jsonable(dict(r)) for r in records]
    for row in rows:
        check_record(row)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out)
    return out


MATMUL_SIZE = 2048
"""Side of the square float32 matrices whose product measures the machine's dense compute rate."""


@dataclass(frozen=True)
class CpuInfo:
    """The host CPU as benchmark tables name it."""

    model: str
    """Marketing name (``model name`` of ``/proc/cpuinfo``), else :func:`platform.processor`."""
    isa: str
    """Widest SIMD class: ``AVX-512``, ``AVX2``, ``AVX``, ``SSE4.2`` on x86; ``SVE``, ``NEON`` on Arm; else the
    architecture name (``platform.machine()``)."""


def isa_class(flags: Iterable[str], machine: str) -> str:
    """Widest SIMD instruction-set class named by CPU feature ``flags`` (x86 ``flags``, Arm ``Features``).

    AVX-512 means the foundation subset ``avx512f``; kernels tuned for it and for AVX2 can differ in speed, so
    the tables keep one result per class.
    """
    have = {f.lower() for f in flags}
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2"),
                       ("sve", "SVE"), ("asimd", "NEON")):
        if flag in have:
            return name
    if machine.lower() in ("arm64", "aarch64"):
        return "NEON"  # Advanced SIMD is mandatory on 64-bit Arm
    return machine or "unknown"


def parse_cpuinfo(text: str, machine: str) -> CpuInfo:
    """:class:`CpuInfo` from the text of ``/proc/cpuinfo`` (first processor's model name and flags)."""
    model, flags = "", ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = value
    return CpuInfo(model or platform.processor() or machine or "unknown CPU", isa_class(flags.split(), machine))


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This host's :class:`CpuInfo` (read once)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine())


@functools.cache
def _matmul_gflops(size: int, threads: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g)
    b = torch.randn(size, size, generator=g)
    m = measure(lambda: a @ b, repeats)
    return 2.0 * size**3 / m.median_s / 1e9


def matmul_gflops(size: int = MATMUL_SIZE, repeats: int = 5) -> float:
    """The host's dense float32 rate: GFLOP/s of torch's ``size``² matmul on torch's current thread count.

    Median of ``repeats`` products after a warm-up; measured once per process, size and thread count, so the
    caption and the records of one run quote the same number. Sparse kernels are compared with it so that
    results from different CPUs can be put side by side.
    """
    return _matmul_gflops(size, torch.get_num_threads(), repeats)


def machine_description(device: str = "cpu") -> str:
    """One line naming the host (CPU model, SIMD class, cores), thread counts and library versions (goes above
    every table); for a ``cpu`` run also the measured :func:`matmul_gflops` rate."""
    import warp as wp

    from sparse3d.kernels.runtime import cpu_threads

    info = cpu_info()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [
        f"device {device}",
        f"{info.model} ({info.isa}), {cores} cores",
        f"torch {torch.__version__} with {torch.get_num_threads()} intra-op threads (default, same for ours and peers)",
        f"Warp {wp.__version__} CPU launches split over {cpu_threads()} threads",
    ]
    if device.startswith("cuda") and torch.cuda.is_available():
        parts.insert(1, torch.cuda.get_device_name(torch.device(device)))
    else:
        parts.append(
            f"torch {MATMUL_SIZE}² float32 matmul {matmul_gflops():.0f} GFLOP/s on {torch.get_num_threads()} threads"
        )
    return "; ".join(parts)


def _fmt_time(t: Any) -> str:
    if not isinstance(t, (int, float)) or t != t:
        return "—"
    if t >= 100:
        return f"{t:.0f}"
    return f"{t:.3g}" if t >= 0.001 else f"{t:.2e}"


def _fmt_ratio(r: Any) -> str:
    return f"{r:.2f}×" if isinstance(r, (int, float)) and r == r else "—"


def _fmt_size(size: Any, unit: Any) -> str:
    if not isinstance(size, (int, float)):
        return "—" if size is None else str(size)
    n = float(size)
    if n >= 1e6 and n % 1e5 == 0:
        text = f"{n / 1e6:g}M"
    elif n >= 1e3 and n % 100 == 0:
        text = f"{n / 1e3:g}k"
    else:
        text = f"{int(n)}"
    return f"{text} {unit}" if unit else text


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(records: Sequence[Mapping[str, Any]], caption: str | None = None) -> str:
    """GitHub markdown table of the records (the format BENCHMARKS.md uses), optional caption line above.

    Columns: ours, the torch reference and the fastest peer, with speedups ``other_s / ours_s``
    (> 1×: ours is faster) and the peak RSS increase of our call.
    """
    header = [
        "suite",
        "name",
        "size",
        "ours (s)",
        "torch ref (s)",
        "vs ref",
        "peer",
        "peer (s)",
        "vs peer",
        "ours peak RSS Δ (MB)",
        "notes",
    ]
    lines = []
    if caption:
        lines += [caption, ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---", "---", "---:", "---:", "---:", "---:", "---", "---:", "---:", "---:", "---"]) + "|")
    for r in records:
        rss = r.get("ours_peak_rss_mb")
        row = [
            r.get("suite", ""),
            r.get("name", ""),
            _fmt_size(r.get("size"), r.get("size_unit")),
            _fmt_time(r.get("ours_s")),
            _fmt_time(r.get("torch_ref_s")),
            _fmt_ratio(r.get("speedup_vs_torch_ref")),
            r.get("peer") or "—",
            _fmt_time(r.get("peer_s")),
            _fmt_ratio(r.get("speedup_vs_peer")),
            f"{rss:.0f}" if isinstance(rss, (int, float)) else "—",
            r.get("notes", ""),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def override_sizes(base: Mapping[str, tuple[int, ...]], sizes: Mapping[str, Any] | None,
                   families: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """``base`` sizes per row family with ``sizes`` (a ``--sizes``/config mapping) replacing whole families."""
    out = dict(base)
    if sizes is None:
        return out
    if not isinstance(sizes, Mapping):
        raise ValueError(f"sizes must map a family ({', '.join(families)}) to a list of sizes, got {sizes!r}")
    for family, vals in sizes.items():
        if family not in families:
            raise ValueError(f"unknown size family {family!r}; families: {', '.join(families)}")
        seq = [vals] if isinstance(vals, int) else list(vals)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in seq):
            raise ValueError(f"sizes.{family} must be positive ints, got {vals!r}")
        out[family] = tuple(seq)
    return out


def check_names(names: Any, kind: str) -> list[str]:
    """A suite's non-empty list of distinct ``kind`` names (methods, experiments) as strings."""
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ValueError(f"{kind}s must be a non-empty list of {kind} names, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{kind}s: each {kind} once, got {list(names)}")
    return [str(n) for n in names]


def check_work_dir(work_dir: str | None, why: str) -> None:
    """A suite's ``work_dir`` must be new or empty (``why``: what mixing with an earlier run would spoil)."""
    if work_dir is None:
        return
    path = Path(str(work_dir)).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"work_dir: {path} exists and is not an empty folder ({why})")


def check_run_overrides(overrides: Mapping[str, Any] | None, names: Sequence[str], kind: str
                        ) -> dict[str, list[str]]:
    """Per-``kind`` Hydra overrides (``{name: ["key=value", ...]}``, a single string allowed) of the runs
    ``names``, as lists of strings; a name not run or a value that is not ``key=value`` is a ValueError."""
    out: dict[str, list[str]] = {}
    if overrides is None:
        return out
    if not isinstance(overrides, Mapping):
        raise ValueError(f"overrides must map a {kind} to a list of overrides, got {overrides!r}")
    for name, values in overrides.items():
        if name not in names:
            raise ValueError(f"overrides.{name}: {name!r} is not one of the {kind}s {list(names)}")
        seq = [values] if isinstance(values, str) else values
        if not isinstance(seq, Sequence) or not all(isinstance(v, str) and "=" in v for v in seq):
            raise ValueError(f"overrides.{name} must be a list of key=value strings, got {values!r}")
        out[str(name)] = list(seq)
    return out


def compose_train_config(overrides: Sequence[str], what: str) -> Any:
    """The ``sparse3d-train`` config with ``overrides`` (Hydra syntax), composed inside a running Hydra app
    (``sparse3d-bench``) or on its own (tests, Python); one that does not compose (unknown key, bad value) is a
    ValueError starting with ``what``."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sparse3d.config_schema import register

    register()
    args = list(overrides)
    try:
        if GlobalHydra.instance().is_initialized():
            return compose(config_name="train", overrides=args)
        with initialize_config_module(version_base="1.3", config_module="sparse3d.configs"):
            return compose(config_name="train", overrides=args)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ValueError(f"{what}: the config {' '.join(args)} does not compose: "
                         f"{' '.join(str(exc).split())[:300]}") from None
