"""The benchmark's machine description: CPU model and SIMD class from ``/proc/cpuinfo``, the matmul rate, and
the fields every record carries, so that results from different CPU classes can be told apart."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from sparse3d.bench import common
from sparse3d.bench.common import BenchRecord, cpu_info, isa_class, matmul_gflops, parse_cpuinfo

_X86 = """processor\t: 0
vendor_id\t: {vendor}
model name\t: {model}
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 {extra}

processor\t: 1
model name\t: {model}
flags\t\t: fpu
"""

_ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics {extra}
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("sse4_2 avx avx2 fma avx512f avx512dq avx512bw avx512vl", "AVX-512"),
        ("sse4_2 avx avx2 fma bmi2", "AVX2"),
        ("sse4_2 avx", "AVX"),
        ("sse4_2", "SSE4.2"),
        ("", "x86_64"),
    ],
)
def test_x86_classes_come_from_the_first_processors_flags(extra: str, expected: str) -> None:
    text = _X86.format(vendor="AuthenticAMD", model="AMD EPYC 7B13 64-Core Processor", extra=extra)
    info = parse_cpuinfo(text, "x86_64")
    assert info == common.CpuInfo("AMD EPYC 7B13 64-Core Processor", expected)


def test_avx2_is_not_mistaken_for_avx512_by_other_avx512_words() -> None:
    # Flags are whole words: "avx512" prefixes of other features without avx512f do not make an AVX-512 CPU.
    assert isa_class(["avx2", "avx512_vnni_disabled", "avx_vnni"], "x86_64") == "AVX2"
    assert isa_class(["AVX512F"], "x86_64") == "AVX-512"


@pytest.mark.parametrize("extra, expected", [("sve sve2", "SVE"), ("", "NEON")])
def test_arm_classes_and_a_missing_model_name(extra: str, expected: str) -> None:
    info = parse_cpuinfo(_ARM.format(extra=extra), "aarch64")
    assert info.isa == expected
    assert info.model  # falls back to platform.processor() or the architecture


def test_hosts_without_cpuinfo_fall_back_to_the_architecture() -> None:
    assert parse_cpuinfo("", "arm64").isa == "NEON"
    assert parse_cpuinfo("", "riscv64").isa == "riscv64"
    assert parse_cpuinfo("", "").isa == "unknown"


def test_records_and_caption_name_the_cpu() -> None:
    info = cpu_info()
    record = BenchRecord("kernels", "x", 1, 0.5, "peer", 1.0, extra={"size_unit": "points"}).to_dict()
    assert record["cpu_model"] == info.model and record["cpu_isa"] == info.isa
    assert record["speedup_vs_peer"] == pytest.approx(2.0)
    caption = common.machine_description("cpu")
    assert f"{info.model} ({info.isa})" in caption
    assert f"matmul {matmul_gflops():.0f} GFLOP/s on {torch.get_num_threads()} threads" in caption


def test_matmul_rate_is_the_flop_count_over_the_median_time(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def fake_measure(fn: Callable[[], torch.Tensor], repeats: int, *args: object, **kwargs: object) -> common.Measurement:
        out = fn()
        seen.append(out.shape[0])
        return common.Measurement(0.25, [0.25] * repeats, None)

    monkeypatch.setattr(common, "measure", fake_measure)
    common._matmul_gflops.cache_clear()
    try:
        assert matmul_gflops(size=64, repeats=3) == pytest.approx(2 * 64**3 / 0.25 / 1e9)
        assert matmul_gflops(size=64, repeats=3) == pytest.approx(2 * 64**3 / 0.25 / 1e9)
        assert seen == [64]  # measured once per process, size and thread count
    finally:
        common._matmul_gflops.cache_clear()
