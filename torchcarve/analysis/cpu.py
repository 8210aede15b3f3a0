"""The CPU's int8 features, which decide how quantized weights are stored for it.

onnxruntime's x86 u8 x s8 GEMMs use `vpmaddubsw` on AVX2 without VNNI: it adds pairs of products into a
saturating int16, so full-range int8 weights overflow (2 x 255 x 127 > 32767) and 7-bit weights are
needed. With VNNI (AVX512-VNNI, AVX-VNNI) or AMX the products accumulate in int32 and all 8 bits are
safe; those CPUs also run MatMulNBits' int8-compute path (accuracy_level 4) faster than its fp32 one.
ARM's sdot/udot kernels accumulate in int32 as well.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# /proc/cpuinfo flag -> feature; numpy's __cpu_features__ names for the same, where it has them
LINUX_FLAGS = {"avx2": "avx2", "avx512_vnni": "avx512-vnni", "avx_vnni": "avx-vnni", "amx_int8": "amx"}
NUMPY_FEATURES = {"AVX2": "avx2", "AVX512VNNI": "avx512-vnni", "AVXVNNI": "avx-vnni", "AVX512_SPR": "amx"}
INT32_ACCUMULATING = ("avx512-vnni", "avx-vnni", "amx")  # int8 dot products that never saturate
ARM = ("arm64", "aarch64")


@dataclass(frozen=True)
class CpuInt8:
    """The int8 features of a CPU, and where they were read from."""

    features: frozenset[str]
    machine: str
    source: str

    @property
    def saturates(self) -> bool:
        """Whether onnxruntime's u8 x s8 kernels add product pairs in saturating int16 (x86 AVX2 without VNNI)."""
        return self.machine not in ARM and not any(f in self.features for f in INT32_ACCUMULATING)

    @property
    def int8_compute(self) -> bool:
        """Whether MatMulNBits' int8-compute path (accuracy_level 4) is the faster one here."""
        return any(f in self.features for f in INT32_ACCUMULATING)

    def describe(self) -> str:
        """One line for reports: `x86_64 avx2 avx512-vnni (/proc/cpuinfo)`."""
        return f"{self.machine} {' '.join(sorted(self.features)) or 'no int8 features'} ({self.source})"


def parse_cpuinfo(text: str, machine: str) -> CpuInt8:
    """The int8 features named in /proc/cpuinfo's first `flags` line."""
    line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    flags = set(line.partition(":")[2].split())
    return CpuInt8(frozenset(name for flag, name in LINUX_FLAGS.items() if flag in flags), machine, "/proc/cpuinfo")


def from_numpy(machine: str) -> CpuInt8:
    """The int8 features numpy's run-time dispatch detected (any OS)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as found
    except ImportError:
        found = {}
    features = frozenset(name for key, name in NUMPY_FEATURES.items() if found.get(key))
    return CpuInt8(features, machine, "numpy" if found else "unknown")


@lru_cache(maxsize=1)
def detect() -> CpuInt8:
    """This machine's int8 features: /proc/cpuinfo on Linux, numpy's CPU dispatch elsewhere."""
    machine = platform.machine().lower()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        return parse_cpuinfo(cpuinfo.read_text(errors="replace"), machine)
    return from_numpy(machine)
