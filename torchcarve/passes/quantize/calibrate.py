"""Calibration: run the graph over the batches (analysis.activations), feeding chosen values to observers.

Each intermediate tensor is dropped after its last use, and observers keep running statistics, so
memory is one batch's live activations plus the observers.
"""
from __future__ import annotations

from typing import Any, Sequence

from ...analysis.activations import as_batches, run_observed
from ...ir import Graph
from ...ir.value import Value
from ...progress import track

def calibrate(graph: Graph, batches: Sequence[Any], observers: dict[Value, Any]) -> None:
    """Run `graph` on every batch; each observer sees its value's tensor once per batch."""
    callbacks = {value: [observer.observe] for value, observer in observers.items()}
    for batch in track(as_batches(batches), "calibrating"):
        run_observed(graph, batch, callbacks)

