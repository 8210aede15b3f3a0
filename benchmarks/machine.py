"""The machine a benchmark ran on, as the header lines every results table carries."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

INT8_FLAGS = {"avx2": "AVX2", "avx512f": "AVX512", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
              "amx_int8": "AMX"}


def cpu() -> str:
    """The CPU model and the flags that decide int8 speed (AVX2, AVX512-VNNI, AMX)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor() or "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    found = [name for flag, name in INT8_FLAGS.items() if flag in flags]
    return f"{model}, {' '.join(found) or 'no AVX2'}"


def header(command: str) -> str:
    """Markdown lines: the command, date, CPU + int8 flags, cores and load when the run started."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"```\n{command}\n```\n\n{time.strftime('%Y-%m-%d')} · {cpu()} · {os.cpu_count()} cores · "
            f"load {load}\n")
