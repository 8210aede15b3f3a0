"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights before quantizing linears.

For the linears reading one activation x: s_k = max|x_k|^a / max|W_:,k|^(1-a); x is divided by s
(one `mul` node) and each weight's input columns multiplied by it, so x/s and W*s both quantize well.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ...ir import Graph
from ...ir.value import Value
from .calibrate import calibrate
from .observers import MinMaxObserver
from .rewrite import LINEAR, Layer, weight_tensor

FLOOR = 1e-5


def smooth_layers(graph: Graph, layers: list[Layer], batches: Sequence[Any], alpha: float,
                  max_memory: int | None = None) -> int:
    """Rescale every group of linears that share an input; returns how many groups were smoothed
    (calibrated block by block under max_memory)."""
    groups = linear_groups(layers)
    observers = {x: MinMaxObserver(axis=-1) for x in groups}
    calibrate(graph, batches, observers, max_memory)
    for x, members in groups.items():
        _smooth_group(graph, x, members, observers[x], alpha)
    return len(groups)


def linear_groups(layers: list[Layer]) -> dict[Value, list[Layer]]:
    """The linears among `layers`, grouped by the activation they read."""
    groups: dict[Value, list[Layer]] = {}
    for layer in layers:
        if layer.node.op == LINEAR:
            groups.setdefault(layer.node.inputs[0], []).append(layer)
    return groups


def _smooth_group(graph: Graph, x: Value, members: list[Layer], observer: MinMaxObserver, alpha: float) -> None:
    activation = torch.maximum(observer.low.abs(), observer.high.abs()).clamp(min=FLOOR)
    weights = [weight_tensor(graph, layer).float() for layer in members]
    weight = torch.stack([w.abs().amax(0) for w in weights]).amax(0).clamp(min=FLOOR)
    scale = (activation.pow(alpha) / weight.pow(1.0 - alpha)).clamp(min=FLOOR)
    base = members[0].name
    inverse = graph.add_param(graph.params.unique_name(f"{base}.smooth_inv"), (1.0 / scale).contiguous())
    anchor = {"after": x.producer} if x.producer is not None else {"before": members[0].node}
    mul = graph.add_node("aten.mul.Tensor", [x, inverse], names=[f"{x.name}_smooth"], **anchor)
    for layer, w in zip(members, weights):
        name = graph.params.unique_name(f"{layer.name}.weight_smooth")
        layer.node.set_input(0, mul.output)
        layer.node.set_input(1, graph.add_param(name, (w * scale).contiguous()))
