"""Run one untrusted-input case in a child process with a memory cap and a timeout.

Children are forked from a forkserver that imported torchcarve once, so a case costs a fork, not an
interpreter start. The child caps its address space at what it has mapped plus `mem_mb` (RLIMIT_AS)
before it calls the case, so a memory bomb fails inside the cap instead of taking the machine.
"""
from __future__ import annotations

import importlib
import multiprocessing
import resource
import traceback
from multiprocessing.connection import Connection
from typing import Callable

_CONTEXT = multiprocessing.get_context("forkserver")
# imported once by the forkserver (torch._dynamo is what the first meta-tensor op would import)
PRELOAD = ["torch", "torch._dynamo", "onnx", "torchcarve", "torchcarve.backends.torch", "torchcarve.backends.onnx"]
_CONTEXT.set_forkserver_preload(PRELOAD)


def run_isolated(fn_name: str, payload: bytes, timeout: float, mem_mb: int) -> tuple[str, str]:
    """Call `module:function`(payload) in a child: ('ok' | 'carve_error' | 'crash', detail).

    'crash' covers any other exception, a signal (the allocator or a segfault), running past `timeout`
    seconds, and MemoryError past the cap."""
    receiver, sender = _CONTEXT.Pipe(duplex=False)
    child = _CONTEXT.Process(target=_child, args=(fn_name, payload, mem_mb, sender), daemon=True)
    child.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            return "crash", f"timeout after {timeout}s"
        return receiver.recv()
    except EOFError:
        child.join(5)
        return "crash", f"child died (exit code {child.exitcode})"
    finally:
        if child.is_alive():
            child.kill()
        child.join(5)
        receiver.close()


def _child(fn_name: str, payload: bytes, mem_mb: int, sender: Connection) -> None:
    from torchcarve.errors import CarveError

    _cap_memory(mem_mb)
    try:
        _resolve(fn_name)(payload)
        result = ("ok", "")
    except CarveError as e:
        result = ("carve_error", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    except BaseException:
        result = ("crash", traceback.format_exc()[-3000:])
    sender.send(result)
    sender.close()


def _cap_memory(mem_mb: int) -> None:
    mapped = _mapped_bytes()
    limit = mapped + mem_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _mapped_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _resolve(fn_name: str) -> Callable[[bytes], object]:
    module, _, name = fn_name.partition(":")
    return getattr(importlib.import_module(module), name)
