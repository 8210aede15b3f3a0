"""Peak resident memory of a piece of work; tracemalloc does not see torch's CPU tensors.

Linux: reset the kernel's high-water mark (clear_refs) and read VmHWM after; where clear_refs is not
writable, sample VmRSS from a thread; elsewhere the growth of ru_maxrss (only a new process peak shows).
"""
from __future__ import annotations

import ctypes
import sys
import threading
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Callable, Iterator

CLEAR_REFS = "/proc/self/clear_refs"
STATUS = "/proc/self/status"
SAMPLE_SECONDS = 0.005


@dataclass
class Peak:
    """Resident bytes at the start of a `peak_memory()` block and at its peak (None where unknown)."""

    start: int | None = None
    peak: int | None = None

    @property
    def extra(self) -> int | None:
        """Bytes above the starting level at the peak."""
        return None if self.start is None or self.peak is None else max(self.peak - self.start, 0)


@contextmanager
def peak_memory() -> Iterator[Peak]:
    """Measure the peak resident memory of the block; read the yielded Peak after it."""
    result = Peak()
    _trim_heap()  # hand freed heap back to the OS first, or reused memory would not show (glibc)
    result.start = _status_bytes("VmRSS:")
    if result.start is not None and _reset_high_water():
        yield result
        result.peak = _status_bytes("VmHWM:")
        return
    if result.start is not None:
        with _sampled_rss() as samples:
            yield result
        result.peak = max(samples, default=result.start)
        return
    before = _max_rss()
    yield result
    after = _max_rss()
    result.start, result.peak = (before, after) if before is not None and after is not None and after > before else (None, None)


def peak_extra_memory(run: Callable[[], object]) -> int | None:
    """Bytes of resident memory above the starting level at the peak of `run()`; None where unknown."""
    with peak_memory() as peak:
        run()
    return peak.extra


def _trim_heap() -> None:
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_high_water() -> bool:
    try:
        with open(CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_bytes(key: str) -> int | None:
    try:
        with open(STATUS) as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith(key)), None)
    except OSError:
        return None


@contextmanager
def _sampled_rss() -> Iterator[list[int]]:
    """VmRSS every SAMPLE_SECONDS from a thread while the block runs."""
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_SECONDS):
            rss = _status_bytes("VmRSS:")
            if rss is not None:
                samples.append(rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()
        rss = _status_bytes("VmRSS:")
        samples.extend([rss] if rss is not None else [])


def _max_rss() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
