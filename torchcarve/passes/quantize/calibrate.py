"""Calibration: interpret the graph node by node over the batches, feeding chosen values to observers.

Each intermediate tensor is dropped after its last use, and observers keep running statistics, so
memory is one batch's live activations plus the observers. A progress bar shows long runs.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from ...ir import Graph
from ...ir.ops import get_op
from ...ir.value import Value

PROGRESS_AFTER = 8  # batches; shorter runs finish before a bar is worth drawing


def calibrate(graph: Graph, batches: Sequence[Any], observers: dict[Value, Any]) -> None:
    """Run `graph` on every batch; each observer sees its value's tensor once per batch."""
    last_use = _last_uses(graph)
    with torch.no_grad():
        for batch in _progress(batches):
            _run_batch(graph, _as_tuple(batch), observers, last_use)


def _run_batch(graph: Graph, inputs: tuple, observers: dict[Value, Any], last_use: dict[Value, int]) -> None:
    env: dict[Value, torch.Tensor] = dict(zip(graph.inputs, inputs))
    for value in graph.inputs:
        _observe(observers, value, env[value])
    for position, node in enumerate(graph.nodes):
        if node.op == "param":
            env[node.output] = graph.params[node.attrs["name"]]
            continue
        outputs = get_op(node.op).run([env[v] for v in node.inputs], node.attrs)
        for value, tensor in zip(node.outputs, outputs):
            env[value] = tensor
            _observe(observers, value, tensor)
        for value in node.inputs:
            if last_use.get(value) == position and value.producer is not None and value.producer.op != "param":
                env.pop(value, None)


def _observe(observers: dict[Value, Any], value: Value, tensor: torch.Tensor) -> None:
    if value in observers:
        observers[value].observe(tensor)


def _last_uses(graph: Graph) -> dict[Value, int]:
    last: dict[Value, int] = {}
    for position, node in enumerate(graph.nodes):
        for value in node.inputs:
            last[value] = position
    for value in graph.outputs:
        last[value] = len(graph)
    return last


def _as_tuple(batch: Any) -> tuple:
    return (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)


def _progress(batches: Sequence[Any]) -> Iterable[Any]:
    if len(batches) < PROGRESS_AFTER:
        return batches
    from rich.progress import track

    return track(batches, description="calibrating", transient=True)
