"""The graph rewrites of quantization: each quantized layer and activation, in the form ONNX Runtime runs.

- dynamic:     linear(x, W, b)  -> carve.dynamic_linear(x, Wq, s, b)           (DynamicQuantizeMatMul)
- weight-only: linear(x, W, b)  -> carve.weight_only_linear(x, Wq, s, b)       (MatMulNBits)
               conv(x, W, b)    -> conv(x, carve.dequantize(Wq, s){axis}, b)
- static:      op(x, W, b)      -> op(dq(q(x)), dequantize(Wq, s), b), plus q/dq on op's output (QDQ)
- any mode:    embedding(T, i)  -> carve.quantized_embedding(Tq, s, i)           (Gather, Cast, Mul)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ...ir import Graph
from ...ir.node import Node
from ...ir.value import Value
from .observers import activation_params, quantize_weight

LINEAR = "aten.linear"
CONVS = ("aten.conv1d", "aten.conv2d")
EMBEDDING = "aten.embedding"
# mode -> ops whose weights it quantizes (rules as data); embeddings are an option of every mode
QUANTIZABLE = {"dynamic": (LINEAR,), "weight-only": (LINEAR, *CONVS), "static": (LINEAR, *CONVS)}
WEIGHT_INPUT = {EMBEDDING: 0}  # op -> the input holding its weight, where that is not input 1
TABLE_QMAX = 127  # embedding rows are only gathered and scaled, never multiplied as integers: full int8


@dataclass(frozen=True)
class Layer:
    """A quantizable node and its readable name (its weight's name without `.weight`)."""

    node: Node
    name: str

    @property
    def weight(self) -> Value:
        return self.node.inputs[WEIGHT_INPUT.get(self.node.op, 1)]


@dataclass(frozen=True)
class WeightFormat:
    """How weights are stored: symmetric integers in [-qmax, qmax], per channel/tensor/group."""

    qmax: int
    per_channel: bool
    group_size: int = 0
    accuracy_level: int = 0  # weight-only: MatMulNBits' compute, 0 float, 4 int8

    @property
    def bits(self) -> int:
        """The storage width: 4 when [-qmax, qmax] fits int4, else 8."""
        return 4 if self.qmax <= 7 else 8


def find_layers(graph: Graph, mode: str, embeddings: bool = False) -> list[Layer]:
    """The nodes `mode` can quantize: its ops (and embeddings), with a weight read straight from a param."""
    ops = QUANTIZABLE[mode] + ((EMBEDDING,) if embeddings else ())
    layers = []
    for node in graph.nodes:
        if node.op not in ops or len(node.inputs) < 2:
            continue
        producer = node.inputs[WEIGHT_INPUT.get(node.op, 1)].producer
        # inputs[0] is the float operand: the activation of a linear/conv, the table of an embedding
        if producer is None or producer.op != "param" or node.inputs[0].type.dtype != "f32":
            continue
        if node.op == EMBEDDING and not reads_input(node.inputs[1]):
            continue  # a lookup at constant indices (positions, token types): the exporter folds it to a constant
        layers.append(Layer(node, layer_name(node, producer.attrs["name"])))
    return layers


def reads_input(value: Value) -> bool:
    """Whether `value` depends on a graph input (False: it is computed from params and shapes alone)."""
    stack, seen = [value], set()
    while stack:
        value = stack.pop()
        if value.producer is None:
            return True
        if value not in seen:
            seen.add(value)
            stack.extend(value.producer.inputs)
    return False


def layer_name(node: Node, weight: str) -> str:
    return weight.removesuffix(".weight") if weight.endswith(".weight") else (node.scope or node.outputs[0].name)


def weight_tensor(graph: Graph, layer: Layer) -> torch.Tensor:
    return graph.params[layer.weight.producer.attrs["name"]]


def _add_param(graph: Graph, base: str, tensor: torch.Tensor) -> Value:
    return graph.add_param(graph.params.unique_name(base), tensor.contiguous())


def quantized_weight(graph: Graph, layer: Layer, fmt: WeightFormat) -> tuple[Value, Value]:
    """Params holding the layer's integer weight and its scales."""
    weight = weight_tensor(graph, layer)
    group_size = fmt.group_size if fmt.group_size and weight.dim() == 2 else 0
    q, scale = quantize_weight(weight, fmt.qmax, fmt.per_channel, group_size)
    return _add_param(graph, f"{layer.name}.weight_q", q), _add_param(graph, f"{layer.name}.weight_scale", scale)


def rewrite_layer(graph: Graph, layer: Layer, mode: str, fmt: WeightFormat) -> None:
    """Quantize one layer in the form `mode` runs it (REWRITES; otherwise a dequantized weight)."""
    REWRITES.get((mode, layer.node.op), dequantized_weight)(graph, layer, fmt)


def dequantized_weight(graph: Graph, layer: Layer, fmt: WeightFormat) -> Value:
    """Replace the layer's float weight by `dequantize(int weight)`; returns the new weight value."""
    q, scale = quantized_weight(graph, layer, fmt)
    attrs = {"axis": 0} if scale.type.rank == 1 else {}
    if scale.type.rank == 2:
        attrs = {"axis": 1, "block_size": fmt.group_size}
    node = graph.add_node("carve.dequantize", [q, scale], attrs, names=[f"{layer.name}.weight_dq"], before=layer.node)
    layer.node.set_input(1, node.output)
    return node.output


def to_dynamic(graph: Graph, layer: Layer, fmt: WeightFormat) -> Node:
    """linear -> carve.dynamic_linear with int8 weights; activations are quantized at run time."""
    q, scale = quantized_weight(graph, layer, fmt)
    x, _, *bias = layer.node.inputs
    return _replace(graph, layer.node, "carve.dynamic_linear", [x, q, scale, *bias])


def to_weight_only(graph: Graph, layer: Layer, fmt: WeightFormat) -> Node:
    """linear -> carve.weight_only_linear: int8/int4 weights, dequantized inside the matmul."""
    q, scale = quantized_weight(graph, layer, fmt)
    x, _, *bias = layer.node.inputs
    attrs = {"bits": fmt.bits, **({"block_size": fmt.group_size} if scale.type.rank == 2 else {}),
             **({"accuracy_level": fmt.accuracy_level} if fmt.accuracy_level else {})}
    return _replace(graph, layer.node, "carve.weight_only_linear", [x, q, scale, *bias], attrs)


def to_quantized_embedding(graph: Graph, layer: Layer, fmt: WeightFormat) -> Node:
    """embedding -> carve.quantized_embedding: an int8 table, one scale per row (or per table).

    padding_idx only matters to gradients; its row (zeros in a trained model) stays zeros."""
    q, scale = quantized_weight(graph, layer, WeightFormat(TABLE_QMAX, fmt.per_channel))
    return _replace(graph, layer.node, "carve.quantized_embedding", [q, scale, layer.node.inputs[1]])


def _replace(graph: Graph, node: Node, op: str, inputs: list[Value], attrs: dict[str, Any] | None = None) -> Node:
    """Put `op(inputs)` where `node` was (same scope and users) and erase `node`."""
    new = graph.add_node(op, inputs, attrs, names=[f"{node.output.name}_q"], scope=node.scope, after=node)
    node.output.replace_all_uses_with(new.output, replace_graph_outputs=True)
    graph.erase(node)
    return new


# (mode, op) -> its rewrite; pairs not listed get a dequantized weight (static QDQ, weight-only convs)
REWRITES: dict[tuple[str, str], Callable[[Graph, Layer, WeightFormat], Any]] = {
    ("dynamic", LINEAR): to_dynamic,                                      # DynamicQuantizeMatMul
    ("weight-only", LINEAR): to_weight_only,                              # MatMulNBits
    **{(mode, EMBEDDING): to_quantized_embedding for mode in QUANTIZABLE},  # Gather int8 rows, scale them
}


def fake_quantize(graph: Graph, value: Value, low: float, high: float) -> Node:
    """Insert `dequantize(quantize(value))` (uint8, per tensor) and point value's users at it."""
    scale, zero_point = activation_params(low, high)
    s = _add_param(graph, f"{value.name}.scale", torch.tensor(scale, dtype=torch.float32))
    z = _add_param(graph, f"{value.name}.zero_point", torch.tensor(zero_point, dtype=torch.uint8))
    users = value.uses
    anchor = {"after": value.producer} if value.producer is not None else {"before": users[0][0]}
    q = graph.add_node("carve.quantize", [value, s, z], names=[f"{value.name}_q"], **anchor)
    dq = graph.add_node("carve.dequantize", [q.output, s, z], names=[f"{value.name}_dq"], after=q)
    for user, position in users:
        user.set_input(position, dq.output)
    return dq


def activations_to_observe(layers: list[Layer]) -> list[Value]:
    """Static QDQ points: each linear/conv's input, and its output when another node reads it."""
    values: dict[Value, None] = {}
    for layer in layers:
        if layer.node.op == EMBEDDING:
            continue
        values[layer.node.inputs[0]] = None
        if layer.node.outputs[0].uses:
            values[layer.node.outputs[0]] = None
    return list(values)
