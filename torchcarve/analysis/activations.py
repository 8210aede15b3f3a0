"""Run a graph op by op and hand chosen intermediate values to observers (calibration statistics).

Values are freed after their last use, so memory stays that of one forward pass; observers
are expected to reduce what they see (e.g. accumulate X^T X) rather than keep it.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch

from ..ir import Graph
from ..ir.node import Node
from ..ir.signature import bind_inputs
from ..ir.ops import get_op
from ..ir.value import Value

Observer = Callable[[torch.Tensor], None]


def run_observed(graph: Graph, inputs: Sequence[torch.Tensor], observers: dict[Value, list[Observer]]) -> list[torch.Tensor]:
    """Evaluate `graph` on `inputs`, calling each observer with its value's tensor once it is computed."""
    sizes = bind_inputs(graph.inputs, inputs, "calibration batch")
    last_use = _last_uses(graph)
    env: dict[Value, Any] = dict(zip(graph.inputs, inputs))
    for value in graph.inputs:
        _observe(observers, value, env[value])
    with torch.no_grad():
        for index, node in enumerate(graph.nodes):
            results = evaluate(graph, node, [env[v] for v in node.inputs], sizes)
            for value, result in zip(node.outputs, results):
                env[value] = result
                _observe(observers, value, result)
            for value in set(node.inputs):  # a node may read one value twice (x * x)
                if last_use.get(value) == index:
                    del env[value]
    return [env[v] for v in graph.outputs]


def evaluate(graph: Graph, node: Node, inputs: Sequence[Any], sizes: dict[str, int]) -> list[Any]:
    """The outputs of one node on `inputs` (a param node reads the ParamStore)."""
    if node.op == "param":
        return [graph.params[node.attrs["name"]]]
    return get_op(node.op).run(list(inputs), node.attrs, sizes)


def _observe(observers: dict[Value, list[Observer]], value: Value, tensor: Any) -> None:
    for observer in observers.get(value, ()):
        observer(tensor)


def _last_uses(graph: Graph) -> dict[Value, int]:
    """Index of the last node reading each value; graph outputs are never freed."""
    last: dict[Value, int] = {}
    for index, node in enumerate(graph.nodes):
        for value in node.inputs:
            last[value] = index
    for value in graph.outputs:
        last.pop(value, None)
    return last


def as_batches(calibration: Iterable[Any]) -> list[tuple[torch.Tensor, ...]]:
    """Calibration as a list of input tuples (a bare tensor is a one-input batch)."""
    return [(batch,) if isinstance(batch, torch.Tensor) else tuple(batch) for batch in calibration]
