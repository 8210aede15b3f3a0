"""Peak resident memory of a piece of work (Linux /proc); tracemalloc does not see torch's CPU tensors."""
from __future__ import annotations

import ctypes
import os
from contextlib import suppress
from typing import Callable

CLEAR_REFS = "/proc/self/clear_refs"


def peak_extra_memory(run: Callable[[], object]) -> int | None:
    """Bytes of resident memory above the starting level at the peak of `run()`; None off Linux.

    Resets the kernel's high-water mark (clear_refs) and reads VmHWM afterwards.
    """
    if not os.path.exists(CLEAR_REFS):
        return None
    # hand freed heap back to the OS first, or reused memory would not show (glibc)
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = _status_bytes("VmRSS:")
    with open(CLEAR_REFS, "w") as f:
        f.write("5")
    run()
    return _status_bytes("VmHWM:") - base


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
