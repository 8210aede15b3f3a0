"""Finding factorizable layers (linear, conv2d) in a graph, their input statistics, and the rewrite.

A layer is one stored weight; every linear/conv reading it is a call site, so a weight shared by
two call sites is factorized once and both sites read the same two factors.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...ir import Graph
from ...ir.node import Node
from ...ir.params import ParamStore
from ...ir.ops.aten import arguments, encode_arguments
from ...ir.value import Value
from ...opset import macs as op_macs
from ..sequential import observe

TARGET_OPS = {"aten.linear": "linear", "aten.conv2d": "conv"}


@dataclass
class Layer:
    """One weight and its call sites; `matrix` reads the weight as float64 [out, in*k*k] when asked (never
    held: the pass touches one layer at a time, so a file-backed store can release the rest)."""

    name: str
    weight_name: str
    kind: str
    nodes: list[Node]
    shape: tuple[int, int]   # the matrix's [out, in*k*k]
    macs: int
    store: ParamStore
    moment: torch.Tensor | None = None   # E[x x^T] of the (unfolded) inputs, when calibration was given
    cross: torch.Tensor | None = None    # E[x_ref x^T], x_ref the uncompressed model's input (sequential)

    @property
    def matrix(self) -> torch.Tensor:
        return self.store[self.weight_name].double().flatten(1)

    @property
    def params(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass
class Found:
    layers: list[Layer] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)   # layer -> why it is left alone


def find_layers(graph: Graph, targets: tuple[str, ...], include: tuple[str, ...], protect: tuple[str, ...]) -> Found:
    """Layers of the targeted kinds, filtered by name patterns; the others are named with the reason."""
    sites: dict[str, list[Node]] = {}
    for node in graph.nodes:
        weight_name = _weight_param(node)
        if weight_name is not None and TARGET_OPS[node.op] in targets:
            sites.setdefault(weight_name, []).append(node)
    found = Found()
    for weight_name, nodes in sites.items():
        name = weight_name.removesuffix(".weight")
        reason = _why_not(graph, name, weight_name, nodes, include, protect)
        if reason:
            found.skipped[name] = reason
            continue
        out, *rest = nodes[0].inputs[1].type.shape
        found.layers.append(Layer(name, weight_name, TARGET_OPS[nodes[0].op], nodes, (out, math.prod(rest)),
                                  sum(map(_macs, nodes)), graph.params))
    return found


def _weight_param(node: Node) -> str | None:
    """The ParamStore name of a linear/conv2d node's weight, when it is a stored param."""
    if node.op not in TARGET_OPS or len(node.inputs) < 2:
        return None
    producer = node.inputs[1].producer
    return producer.attrs["name"] if producer is not None and producer.op == "param" else None


def _why_not(graph: Graph, name: str, weight_name: str, nodes: list[Node], include: tuple[str, ...],
             protect: tuple[str, ...]) -> str:
    if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return "not in layers"
    if any(fnmatch.fnmatchcase(name, p) for p in protect):
        return "protected"
    if not nodes[0].inputs[1].type.torch_dtype.is_floating_point:
        return "weight is not floating point"
    if any(arguments(n).get("groups", 1) != 1 for n in nodes):
        return "grouped conv"
    readers = [(user, position) for p in graph.param_nodes() if p.attrs["name"] == weight_name for user, position in p.output.uses]
    if any(user not in nodes or position != 1 for user, position in readers):
        return "weight also read by other ops"
    return ""


def _macs(node: Node) -> int:
    rule = op_macs(node.op)
    return rule(node, {}) if rule else 0


# ---- calibration statistics ----------------------------------------------------------------

class MomentObserver:
    """Accumulates X^T X of one input's rows (conv inputs unfolded into patches) in float64."""

    def __init__(self, node: Node) -> None:
        self.args = arguments(node)
        self.kernel = node.inputs[1].type.shape[2:] if TARGET_OPS[node.op] == "conv" else None
        self.gram: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None
        self.rows = 0

    def key(self) -> tuple:
        """Call sites with equal keys on one input see the same rows (q, k and v projections)."""
        if self.kernel is None:
            return ("linear",)
        return ("conv", tuple(self.kernel), *(str(self.args[k]) for k in ("stride", "padding", "dilation")))

    def __call__(self, x: torch.Tensor) -> None:
        rows = self._rows(x).double()
        gram = rows.T @ rows
        self.gram = gram if self.gram is None else self.gram + gram
        self.rows += rows.shape[0]

    def pair(self, reference: torch.Tensor, x: torch.Tensor) -> None:
        """Accumulate X^T X and X_ref^T X, X_ref the rows the uncompressed model gives (sequential correction)."""
        self(x)
        cross = self._rows(reference).double().T @ self._rows(x).double()
        self.cross = cross if self.cross is None else self.cross + cross

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:
            return x.reshape(-1, x.shape[-1])
        a = self.args
        patches = F.unfold(x, self.kernel, dilation=a["dilation"], padding=a["padding"], stride=a["stride"])
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def collect_moments(graph: Graph, layers: list[Layer], calibration, max_memory: int | None = None) -> None:
    """Fill every layer's `moment`, the mean of x x^T over the rows its call sites read in the calibration
    batches (block by block under max_memory)."""
    observers = moment_observers(layers)
    observe(graph, calibration, observers.by_value, max_memory, "whitening: input statistics")
    observers.fill(layers)


@dataclass
class MomentObservers:
    """One MomentObserver per distinct (input, row layout); `per_layer` lists each layer's."""

    by_value: dict[Value, list[MomentObserver]]
    per_layer: dict[str, list[MomentObserver]]

    def paired(self) -> dict[Value, list]:
        """The observers as paired ones (reference tensor, actual tensor), for sequential correction."""
        return {value: [o.pair for o in observers] for value, observers in self.by_value.items()}

    def fill(self, layers: list[Layer]) -> None:
        """Set the `moment` (and `cross`, when paired) of every layer among `layers` whose inputs were seen."""
        for layer in layers:
            seen = [o for o in dict.fromkeys(self.per_layer[layer.name]) if o.gram is not None]
            if not seen:
                continue
            rows = max(sum(o.rows for o in seen), 1)
            layer.moment = sum(o.gram for o in seen) / rows
            if all(o.cross is not None for o in seen):
                layer.cross = sum(o.cross for o in seen) / rows


    def drop(self, layers: list[Layer]) -> None:
        """Free the statistics of `layers` once they are factorized (sequential: one block's at a time)."""
        for layer in layers:
            layer.moment = layer.cross = None
            for observer in self.per_layer[layer.name]:
                observer.gram = observer.cross = None


def moment_observers(layers: list[Layer]) -> MomentObservers:
    """Observers of the inputs of `layers`; call sites reading one input with one row layout share one."""
    shared: dict[tuple, MomentObserver] = {}
    per_layer: dict[str, list[MomentObserver]] = {}
    for layer in layers:
        for node in layer.nodes:
            observer = MomentObserver(node)
            observer = shared.setdefault((node.inputs[0], observer.key()), observer)
            per_layer.setdefault(layer.name, []).append(observer)
    by_value: dict[Value, list[MomentObserver]] = {}
    for (value, _), observer in shared.items():
        by_value.setdefault(value, []).append(observer)
    return MomentObservers(by_value, per_layer)


# ---- the rewrite ---------------------------------------------------------------------------

def factorize(graph: Graph, layer: Layer, a: torch.Tensor, b: torch.Tensor) -> None:
    """Replace every call site of `layer` by two nodes reading factors A [r, in·k·k] and B [out, r]."""
    original = graph.params[layer.weight_name]
    shape = original.shape
    a = a.reshape(a.shape[0], *shape[1:]) if layer.kind == "conv" else a
    b = b.reshape(*b.shape, *[1] * (len(shape) - 2))
    first = graph.add_param(graph.params.unique_name(f"{layer.name}.lowrank_in.weight"), a.to(original.dtype).contiguous(), trainable=True)
    second = graph.add_param(graph.params.unique_name(f"{layer.name}.lowrank_out.weight"), b.to(original.dtype).contiguous(), trainable=True)
    readers = [p for p in graph.param_nodes() if p.attrs["name"] == layer.weight_name]
    for node in layer.nodes:
        _split_node(graph, node, first, second)
    graph.erase_unused(readers)
    del graph.params[layer.weight_name]


def _split_node(graph: Graph, node: Node, first: Value, second: Value) -> None:
    args = arguments(node)
    head = dict(args, weight=first, bias=None)
    inputs, attrs = encode_arguments(node.op, head)
    hidden = graph.add_node(node.op, inputs, attrs, scope=node.scope, before=node).output
    inputs, attrs = encode_arguments(node.op, {"input": hidden, "weight": second, "bias": args["bias"]})
    out = graph.add_node(node.op, inputs, attrs, scope=node.scope, before=node).output
    node.output.replace_all_uses_with(out, replace_graph_outputs=True)
    graph.erase(node)
