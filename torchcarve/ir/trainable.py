"""Which weights train: one rule for the PyTorch backend and for every pass that asks.

A param is trainable when its tensor is floating point and either it was an `nn.Parameter` of the
captured model (or a pass marked it so: `ParamStore.trainable`) or some node reads it as its
`weight` or `bias` argument. So the weights passes compute (fused, pruned, factorized,
reparameterized, merged) train like the layers they replace, while running statistics, integer
tensors, masks and quantization scales stay buffers.
"""
from __future__ import annotations

from .graph import Graph
from .node import Node
from .ops import get_op
from .ops.aten import arguments
from .value import Value

LAYER_ARGUMENTS = ("weight", "bias")  # schema arguments holding a layer's learned tensors


def trainable_params(graph: Graph) -> set[str]:
    """Names of the graph's params that are trainable (see the module docstring for the rule)."""
    names = set(graph.params.trainable)
    for node in graph.nodes:
        names.update(_layer_weights(node))
    return {name for name in names if name in graph.params and graph.params.type_of(name).torch_dtype.is_floating_point}


def _layer_weights(node: Node) -> list[str]:
    """Params the node reads as a schema `weight`/`bias` argument."""
    if "signature" not in get_op(node.op).extra:
        return []
    named = arguments(node)
    values = [named.get(argument) for argument in LAYER_ARGUMENTS]
    return [v.producer.attrs["name"] for v in values
            if isinstance(v, Value) and v.producer is not None and v.producer.op == "param"]
