"""Graph: inputs, nodes in topological order, outputs, and the ParamStore of weights."""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

from ..errors import VerifyError
from .node import Node
from .names import first_free, sanitize_identifier
from .nodelist import NodeList
from .params import ParamStore
from .types import TensorType
from .value import Value

if TYPE_CHECKING:
    import networkx

class Graph:
    """A typed SSA DAG. Nodes are kept in a valid topological order at all times."""

    def __init__(self, name: str = "main", params: ParamStore | None = None) -> None:
        self.name = sanitize_identifier(name)
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.input_names: list[str] = []   # external names (ONNX, forward's arguments), one per input; [] = value names
        self.output_names: list[str] = []  # external names, one per output; [] = value names
        self.params = params if params is not None else ParamStore()
        self._nodes: NodeList[Node] = NodeList()
        self._names: set[str] = set()
        self._suffixes: dict[str, int] = {}  # base name -> last suffix unique_name gave it
        self._param_tail: Node | None = None  # last node of the leading run of params, when known

    # ---- reading -----------------------------------------------------------------------
    @property
    def nodes(self) -> list[Node]:
        """The nodes in order (a copy: safe to edit the graph while iterating)."""
        return list(self._nodes.as_list())

    def __len__(self) -> int:
        return len(self._nodes)

    def __str__(self) -> str:
        return self.to_text()

    def to_text(self) -> str:
        from .printer import print_graph

        return print_graph(self)

    def values(self) -> Iterable[Value]:
        yield from self.inputs
        for node in self._nodes:
            yield from node.outputs

    def signature_names(self) -> tuple[list[str], list[str]]:
        """The external names of the inputs and outputs (the stored ones, else the value names)."""
        inputs = self.input_names or [v.name for v in self.inputs]
        outputs = self.output_names or [v.name for v in self.outputs]
        return list(inputs), list(outputs)

    def param_nodes(self) -> list[Node]:
        return [n for n in self._nodes if n.op == "param"]

    def op_histogram(self) -> Counter:
        return Counter(n.op for n in self._nodes if n.op != "param")

    # ---- building ----------------------------------------------------------------------
    def unique_name(self, base: str) -> str:
        """Claim a value name not used yet in this graph, derived from `base`."""
        name = first_free(sanitize_identifier(base), self._names, self._suffixes)
        self._names.add(name)
        return name

    def add_input(self, name: str, type: TensorType) -> Value:
        """A new graph input; `name` is kept exactly as its external name, the value's name is an identifier."""
        value = Value(type, self.unique_name(name))
        value.graph = self
        if self.input_names or name != value.name:
            self.input_names = self.signature_names()[0][:len(self.inputs)] + [name]
        self.inputs.append(value)
        return value

    def add_node(self, op: str, inputs: Sequence[Value] = (), attrs: dict[str, Any] | None = None, *,
                 output_types: Sequence[TensorType] | None = None, names: Sequence[str] = (),
                 scope: str = "", before: Node | None = None, after: Node | None = None) -> Node:
        """Create a node (types inferred by the registry unless given) and insert it.

        It goes at the end, or right before/after an anchor node.
        """
        attrs = dict(attrs or {})
        if output_types is None:
            from .infer import infer_types

            output_types = infer_types(op, attrs, [v.type for v in inputs])
        base = names[0] if names else op.split(".")[-1 if op.count(".") < 2 else -2]
        out_names = [self.unique_name(n) for n in names] or [
            self.unique_name(base if i == 0 else f"{base}_out{i}") for i in range(len(output_types))]
        node = Node(op, inputs, attrs, output_types, out_names, scope)
        self._insert(node, before, after)
        return node

    def add_param(self, name: str, tensor: torch.Tensor | None = None, *, trainable: bool = False,
                  before: Node | None = None) -> Value:
        """A `param` node reading `name` from the ParamStore (storing `tensor` there if given)."""
        if tensor is not None:
            self.params[name] = tensor
            if trainable:
                self.params.trainable.add(name)
        if name not in self.params:
            raise VerifyError(f"param '{name}' is not in the graph's ParamStore")
        node = Node("param", (), {"name": name}, [self.params.type_of(name)], [self.unique_name(name)])
        if before is not None:
            self._insert(node, before, None)
            return node.output
        tail = self._leading_param_tail()  # params sit at the top, in the order they were added
        self._insert(node, None, tail, at_front=tail is None)
        self._param_tail = node
        return node.output

    def _leading_param_tail(self) -> Node | None:
        if self._param_tail is None or self._param_tail.graph is not self:
            self._param_tail, node = None, self._nodes.first()
            while node is not None and node.op == "param":
                self._param_tail, node = node, self._nodes.next_of(node)
        return self._param_tail

    def _insert(self, node: Node, before: Node | None, after: Node | None, at_front: bool = False) -> None:
        for value in node.inputs:
            if value.graph is not self:
                raise VerifyError(f"{node.op}: input %{value.name} does not belong to graph @{self.name}")
        for anchor in (before, after):
            if anchor is not None and anchor.graph is not self:
                raise VerifyError(f"cannot insert {node.op} next to {anchor!r}: that node is not in @{self.name}")
        if (before is not None and before.op == "param") or (after is not None and after.op == "param"
                                                              and after is not self._param_tail):
            self._param_tail = None  # the leading run of params may have changed: find it again when needed
        node.graph = self
        for value in node.outputs:
            value.graph = self
        if before is not None:
            self._nodes.insert_before(before, node)
        elif after is not None or at_front:
            self._nodes.insert_after(after, node)
        else:
            self._nodes.append(node)

    def erase(self, node: Node) -> None:
        """Remove a node whose outputs are unused; an error (before any change) otherwise."""
        if node.has_uses:
            users = ", ".join(sorted({u.op for v in node.outputs for u in v.users})) or "graph output"
            raise VerifyError(f"cannot erase {node!r}: its outputs are still used by {users}")
        node._drop_inputs()
        self._nodes.remove(node)
        node.graph = None
        for value in node.outputs:
            self._names.discard(value.name)
        if node is self._param_tail:
            self._param_tail = None

    def erase_unused(self, nodes: Iterable[Node]) -> int:
        """Erase, in reverse order, every node of `nodes` that has no uses; returns how many."""
        doomed = set(nodes)
        erased = 0
        for node in reversed(self._nodes.as_list()):
            if node in doomed and not node.has_uses:
                self.erase(node)
                erased += 1
        return erased

    def set_outputs(self, values: Sequence[Value], names: Sequence[str] = ()) -> None:
        """Set the outputs; `names` are their external names (kept when omitted and the count is unchanged)."""
        if names or len(values) != len(self.outputs):
            self.output_names = list(names)
        self.outputs = list(values)

    def sort(self) -> None:
        """Re-establish topological order (stable for nodes already in order)."""
        position = {node: i for i, node in enumerate(self._nodes)}
        placed: set[Node] = set()
        order: list[Node] = []
        visiting: set[Node] = set()
        for root in self._nodes:
            stack = [(root, False)]
            while stack:
                node, expanded = stack.pop()
                if node in placed:
                    continue
                if expanded:
                    visiting.discard(node)
                    placed.add(node)
                    order.append(node)
                    continue
                if node in visiting:
                    raise VerifyError(f"cycle through {node!r}")
                visiting.add(node)
                stack.append((node, True))
                producers = sorted({v.producer for v in node.inputs if v.producer is not None}, key=position.get, reverse=True)
                stack.extend((p, False) for p in producers if p not in placed)
        self._nodes.replace_all(order)
        self._param_tail = None

    # ---- copies and views --------------------------------------------------------------
    def clone(self) -> "Graph":
        """A structurally independent copy sharing the (immutable) parameter tensors."""
        new = Graph(self.name, self.params.copy())
        mapping: dict[Value, Value] = {}
        for value in self.inputs:
            copy = Value(value.type, value.name)
            copy.graph = new
            new.inputs.append(copy)
            mapping[value] = copy
        for node in self._nodes:
            twin = Node(node.op, [mapping[v] for v in node.inputs], node.attrs,
                        [v.type for v in node.outputs], [v.name for v in node.outputs], node.scope)
            twin.graph = new
            for old, value in zip(node.outputs, twin.outputs):
                value.graph = new
                mapping[old] = value
            new._nodes.append(twin)
        new.outputs = [mapping[v] for v in self.outputs]
        new.input_names, new.output_names = list(self.input_names), list(self.output_names)
        new._names = set(self._names)
        new._suffixes = dict(self._suffixes)
        return new

    def to_networkx(self) -> "networkx.MultiDiGraph":
        """A networkx view: one vertex per node (and graph input), one edge per use."""
        import networkx as nx

        view = nx.MultiDiGraph(name=self.name)
        for value in self.inputs:
            view.add_node(f"%{value.name}", op="input", type=str(value.type))
        for node in self._nodes:
            view.add_node(_vertex(node), op=node.op, attrs=dict(node.attrs),
                          types=[str(v.type) for v in node.outputs])
            for position, value in enumerate(node.inputs):
                source = f"%{value.name}" if value.producer is None else _vertex(value.producer)
                view.add_edge(source, _vertex(node), value=value.name, position=position)
        return view


def _vertex(node: Node) -> str:
    return f"%{node.outputs[0].name}" if node.outputs else f"{node.op}@{id(node)}"
