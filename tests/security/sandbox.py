"""Run fuzz cases in a child process under a memory cap and a timeout.

One worker process (spawned, so it shares no threads or locks with pytest) imports the target once
and runs cases one at a time; a case that kills the worker or runs past the timeout is reported,
and the next case gets a fresh worker. The target is "module:function", taking one picklable case.

    with Sandbox("tests.security.test_fuzz_ir:parse_and_run") as sandbox:
        outcome = sandbox.run(case)   # Outcome(kind="ok" | "carve_error" | "error" | "died" | "timeout", detail)
"""
from __future__ import annotations

import importlib
import multiprocessing
import re
import resource
import traceback
from dataclasses import dataclass
from typing import Any

MEMORY_CAP = 2 << 30   # bytes a case may map on top of the worker's own footprint (torch loaded)
TIMEOUT_S = 10.0
ACCEPTED = ("ok", "carve_error")


@dataclass(frozen=True)
class Outcome:
    kind: str     # ok | carve_error | error (any other exception) | died (the process) | timeout
    detail: str = ""

    @property
    def accepted(self) -> bool:
        return self.kind in ACCEPTED


class Sandbox:
    """A reusable capped worker; `run(case)` returns an Outcome and never raises for the case's sake."""

    def __init__(self, target: str, memory_cap: int = MEMORY_CAP, timeout_s: float = TIMEOUT_S) -> None:
        self.target, self.memory_cap, self.timeout_s = target, memory_cap, timeout_s
        self.context = multiprocessing.get_context("spawn")
        self.process: Any = None
        self.conn: Any = None

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def run(self, case: Any) -> Outcome:
        if self.process is None:
            self._start()
        self.conn.send(case)
        if not self.conn.poll(self.timeout_s + 30 * (not self.warm)):  # the first case also waits for imports
            self._kill()
            return Outcome("timeout", f"no answer within {self.timeout_s} s")
        try:
            kind, detail = self.conn.recv()
        except (EOFError, ConnectionError):
            self.process.join(5)
            code = self.process.exitcode
            self._kill()
            return Outcome("died", f"worker exit code {code}")
        self.warm = True
        return Outcome(kind, detail)

    def close(self) -> None:
        if self.process is None:
            return
        try:
            self.conn.send(None)
            self.process.join(5)
        except (OSError, ValueError):
            pass
        self._kill()

    def _start(self) -> None:
        self.conn, child = self.context.Pipe()
        self.process = self.context.Process(target=_worker, args=(child, self.target, self.memory_cap), daemon=True)
        self.process.start()
        child.close()
        self.warm = False

    def _kill(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.process = None


def _worker(conn: Any, target: str, memory_cap: int) -> None:
    module, _, name = target.partition(":")
    function = getattr(importlib.import_module(module), name)
    from torchcarve.errors import CarveError

    _cap_memory(memory_cap)
    while True:
        case = conn.recv()
        if case is None:
            return
        try:
            function(case)
            conn.send(("ok", ""))
        except CarveError as e:
            conn.send(("carve_error", str(e).splitlines()[0] if str(e) else type(e).__name__))
        except BaseException as e:  # the point: report anything else to the parent as a failure
            conn.send(("error", "".join(traceback.format_exception(e)[-3:])))


def _cap_memory(extra: int) -> None:
    """Cap the address space at what the worker maps now (interpreter, torch) plus `extra` bytes."""
    status = open("/proc/self/status").read()
    current = int(re.search(r"VmSize:\s+(\d+) kB", status).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (current + extra, current + extra))
