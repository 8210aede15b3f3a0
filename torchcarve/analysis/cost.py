"""Cost model: parameters, multiply-accumulates and bytes moved, per node and per graph."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Graph
from ..ir.node import Node
from ..opset import macs as op_macs


@dataclass(frozen=True)
class Cost:
    params: int = 0
    macs: int = 0
    bytes: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.params + other.params, self.macs + other.macs, self.bytes + other.bytes)


def node_cost(node: Node, sizes: dict[str, int] | None = None) -> Cost:
    """MACs from the op catalog; bytes = inputs read + outputs written; params counted by graph_cost."""
    sizes = sizes or {}
    if node.op == "param":
        return Cost()
    macs_rule = op_macs(node.op)
    macs = macs_rule(node, sizes) if macs_rule else 0
    moved = sum(v.type.numel(sizes) * v.type.itemsize for v in (*node.inputs, *node.outputs))
    return Cost(0, macs, moved)


def graph_cost(graph: Graph, sizes: dict[str, int] | None = None) -> Cost:
    """Whole-graph cost; each stored weight counts once however many nodes read it.

    Symbolic dims take their value from `sizes` (1 when not given, i.e. per batch item).
    """
    total = Cost(params=param_count(graph))
    for node in graph.nodes:
        total = total + node_cost(node, sizes)
    return total


def param_count(graph: Graph) -> int:
    names = {node.attrs["name"] for node in graph.param_nodes()}
    return sum(graph.params.type_of(name).numel() for name in names)
