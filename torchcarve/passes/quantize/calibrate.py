"""Calibration: run the graph over the batches, feeding chosen values to observers.

Each intermediate tensor is dropped after its last use, and observers keep running statistics, so
memory is one batch's live activations plus the observers. Under max_memory the graph runs block by
block (passes/sequential.py), holding one block's weights at a time.
"""
from __future__ import annotations

from typing import Any, Sequence

from ...ir import Graph
from ...ir.value import Value
from ..sequential import observe


def calibrate(graph: Graph, batches: Sequence[Any], observers: dict[Value, Any], max_memory: int | None = None) -> None:
    """Run `graph` on every batch; each observer sees its value's tensor once per batch."""
    callbacks = {value: [observer.observe] for value, observer in observers.items()}
    observe(graph, batches, callbacks, max_memory, "calibrating")
