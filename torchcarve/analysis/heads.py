"""Which graph outputs (task heads) a value reaches: the `feeds` column of the pruning reports."""
from __future__ import annotations

from typing import Iterable

from ..ir import Graph, Value


class Heads:
    """Every value's reachable graph outputs, found in one pass from the outputs back (a bit per output)."""

    def __init__(self, graph: Graph) -> None:
        self.names = [name or f"output_{i}" for i, name in enumerate(graph.signature_names()[1])]
        own = {}
        for i, out in enumerate(graph.outputs):
            own[out] = own.get(out, 0) | 1 << i
        self.reach: dict[Value, int] = {}
        for node in reversed(list(graph.nodes)):
            for value in node.outputs:
                self.reach[value] = own.get(value, 0) | self._users(value)
        for value in graph.inputs:
            self.reach[value] = own.get(value, 0) | self._users(value)

    def _users(self, value: Value) -> int:
        mask = 0
        for user in value.users:
            for out in user.outputs:
                mask |= self.reach.get(out, 0)
        return mask

    def fed_by(self, values: Iterable[Value]) -> str:
        """The outputs any of `values` reaches, comma-separated in output order."""
        mask = 0
        for value in values:
            mask |= self.reach.get(value, 0)
        return ",".join(name for i, name in enumerate(self.names) if mask >> i & 1)
