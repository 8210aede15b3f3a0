"""Node: an op applied to input values with typed attributes, producing one or more outputs."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from .types import TensorType
from .value import Value

if TYPE_CHECKING:
    from .graph import Graph


class Node:
    """One operation. Outputs are Values owned by the node (multi-output, no getitem nodes)."""

    __slots__ = ("op", "_inputs", "attrs", "outputs", "graph", "scope")

    def __init__(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any],
                 output_types: Sequence[TensorType], output_names: Sequence[str] = (), scope: str = "") -> None:
        self.op = op
        self.attrs = dict(attrs)
        self.graph: Graph | None = None
        self.scope = scope  # module path the node came from ("layer1.0.conv1"), for naming
        self._inputs: list[Value] = []
        for value in inputs:
            self._add_input(value)
        names = list(output_names) + [""] * (len(output_types) - len(output_names))
        self.outputs = tuple(Value(t, n, self, i) for i, (t, n) in enumerate(zip(output_types, names)))

    def __repr__(self) -> str:
        outs = ", ".join(f"%{v.name}" for v in self.outputs)
        ins = ", ".join(f"%{v.name}" for v in self._inputs)
        return f"{outs} = {self.op}({ins})"

    @property
    def inputs(self) -> tuple[Value, ...]:
        return tuple(self._inputs)

    @property
    def output(self) -> Value:
        """The single output; an error for multi-output nodes."""
        if len(self.outputs) != 1:
            raise ValueError(f"{self.op} has {len(self.outputs)} outputs; use .outputs")
        return self.outputs[0]

    def _add_input(self, value: Value) -> None:
        value._uses.append((self, len(self._inputs)))
        self._inputs.append(value)

    def set_input(self, position: int, value: Value) -> None:
        """Point input `position` at `value`, keeping both values' use lists right."""
        old = self._inputs[position]
        old._uses.remove((self, position))
        self._inputs[position] = value
        value._uses.append((self, position))

    def set_inputs(self, values: Sequence[Value]) -> None:
        """Replace the whole input list (the count may change)."""
        self._drop_inputs()
        for value in values:
            self._add_input(value)

    def _drop_inputs(self) -> None:
        for position, value in enumerate(self._inputs):
            value._uses.remove((self, position))
        self._inputs = []

    @property
    def has_uses(self) -> bool:
        return any(v._uses or v.is_graph_output for v in self.outputs)
