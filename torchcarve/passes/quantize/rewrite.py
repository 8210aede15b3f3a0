"""The graph rewrites of quantization: each quantized layer and activation, in the form ONNX Runtime runs.

- dynamic:     linear(x, W, b)  -> carve.dynamic_linear(x, Wq, s, b)           (DynamicQuantizeMatMul)
- weight-only: op(x, W, b)      -> op(x, carve.dequantize(Wq, s){axis, block_size}, b)
- static:      op(x, W, b)      -> op(dq(q(x)), dequantize(Wq, s), b), plus q/dq on op's output (QDQ)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...ir import Graph
from ...ir.node import Node
from ...ir.value import Value
from .observers import activation_params, quantize_weight

LINEAR = "aten.linear"
CONVS = ("aten.conv1d", "aten.conv2d")
# mode -> ops whose weights it quantizes (rules as data)
QUANTIZABLE = {"dynamic": (LINEAR,), "weight-only": (LINEAR, *CONVS), "static": (LINEAR, *CONVS)}


@dataclass(frozen=True)
class Layer:
    """A quantizable node and its readable name (its weight's name without `.weight`)."""

    node: Node
    name: str

    @property
    def weight(self) -> Value:
        return self.node.inputs[1]


@dataclass(frozen=True)
class WeightFormat:
    """How weights are stored: symmetric integers in [-qmax, qmax], per channel/tensor/group."""

    qmax: int
    per_channel: bool
    group_size: int = 0


def find_layers(graph: Graph, mode: str) -> list[Layer]:
    """The nodes `mode` can quantize: its ops, with a weight read straight from a param."""
    layers = []
    for node in graph.nodes:
        if node.op not in QUANTIZABLE[mode] or len(node.inputs) < 2:
            continue
        producer = node.inputs[1].producer
        if producer is None or producer.op != "param" or node.inputs[0].type.dtype != "f32":
            continue
        layers.append(Layer(node, layer_name(node, producer.attrs["name"])))
    return layers


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
    node = layer.node
    q, scale = quantized_weight(graph, layer, fmt)
    bias = list(node.inputs[2:3])
    new = graph.add_node("carve.dynamic_linear", [node.inputs[0], q, scale, *bias],
                         names=[f"{node.output.name}_q"], scope=node.scope, after=node)
    node.output.replace_all_uses_with(new.output, replace_graph_outputs=True)
    graph.erase(node)
    return new


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
    """Static QDQ points: each layer's input, and its output when another node reads it."""
    values: dict[Value, None] = {}
    for layer in layers:
        values[layer.node.inputs[0]] = None
        if layer.node.outputs[0].uses:
            values[layer.node.outputs[0]] = None
    return list(values)
