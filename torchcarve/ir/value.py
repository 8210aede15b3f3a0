"""Value: one SSA result, produced by a node (or a graph input) and used by nodes."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import VerifyError
from .types import TensorType

if TYPE_CHECKING:
    from .graph import Graph
    from .node import Node


class Value:
    """An SSA value. `uses` is a snapshot, so the graph may be edited while iterating over it."""

    __slots__ = ("name", "type", "producer", "index", "graph", "_uses")

    def __init__(self, type: TensorType, name: str = "", producer: Node | None = None, index: int = 0) -> None:
        self.name = name
        self.type = type
        self.producer = producer
        self.index = index
        self.graph: Graph | None = None
        self._uses: list[tuple[Node, int]] = []

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"

    @property
    def uses(self) -> list[tuple[Node, int]]:
        """(node, input position) pairs that read this value; a copy."""
        return list(self._uses)

    @property
    def users(self) -> list[Node]:
        """Distinct nodes that read this value, in use order."""
        return list(dict.fromkeys(node for node, _ in self._uses))

    @property
    def is_graph_input(self) -> bool:
        return self.producer is None

    @property
    def is_graph_output(self) -> bool:
        return self.graph is not None and any(v is self for v in self.graph.outputs)

    def replace_all_uses_with(self, other: Value, *, replace_graph_outputs: bool = False) -> None:
        """Make every user read `other` instead; graph outputs move only when asked."""
        if self.is_graph_output and not replace_graph_outputs:
            raise VerifyError(
                f"%{self.name} is a graph output; refusing to retarget it",
                hint="pass replace_graph_outputs=True to move the graph output too",
            )
        for node, position in self.uses:
            node.set_input(position, other)
        if replace_graph_outputs and self.graph is not None:
            self.graph.outputs = [other if v is self else v for v in self.graph.outputs]
