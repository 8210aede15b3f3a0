"""Calibration: run the graph over the batches (analysis.activations), feeding chosen values to observers.

Each intermediate tensor is dropped after its last use, and observers keep running statistics, so
memory is one batch's live activations plus the observers. A progress bar shows long runs.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from ...analysis.activations import as_batches, run_observed
from ...ir import Graph
from ...ir.value import Value

PROGRESS_AFTER = 8  # batches; shorter runs finish before a bar is worth drawing


def calibrate(graph: Graph, batches: Sequence[Any], observers: dict[Value, Any]) -> None:
    """Run `graph` on every batch; each observer sees its value's tensor once per batch."""
    callbacks = {value: [observer.observe] for value, observer in observers.items()}
    for batch in _progress(as_batches(batches)):
        run_observed(graph, batch, callbacks)


def _progress(batches: Sequence[Any]) -> Iterable[Any]:
    if len(batches) < PROGRESS_AFTER:
        return batches
    from rich.progress import track

    return track(batches, description="calibrating", transient=True)
