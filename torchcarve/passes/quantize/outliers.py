"""Outlier channels in float (LLM.int8(), Dettmers et al. 2022): the few input channels of a linear
with the largest calibrated magnitude skip quantization.

Transformer activations carry a handful of huge channels (all-MiniLM-L6: one channel reaches 28 where
the median channel peaks at 1.3). A per-tensor int8 range stretched to fit them rounds everything
else coarsely. For the linears reading one activation x:

    linear(x, W, b)  ->  linear(x * keep, W * keep, b) + linear(x[..., idx], W[:, idx])

`keep` zeroes the outlier channels `idx`, so the quantized linear (and its run-time range) never
sees them; the second, float product adds their exact contribution back (k inputs: cheap; one Gemm
that also does the sum).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ...ir import Graph
from ...ir.node import Node
from ...ir.value import Value
from .calibrate import calibrate
from .observers import MinMaxObserver
from .rewrite import Layer, weight_tensor
from .smooth import linear_groups

RATIO = 6.0  # a channel is an outlier when its magnitude is this many times the median channel's


def split_outliers(graph: Graph, layers: list[Layer], batches: Sequence[Any], count: int) -> dict[str, int]:
    """Move up to `count` outlier channels of each shared input to a float side path; returns the
    channels moved per layer name (inputs without a channel RATIO times the median's stay as they are)."""
    groups = {x: members for x, members in linear_groups(layers).items() if x.type.shape[-1] > count}
    observers = {x: MinMaxObserver(axis=-1) for x in groups}
    calibrate(graph, batches, observers)
    moved: dict[str, int] = {}
    for x, members in groups.items():
        outliers = outlier_channels(observers[x], count)
        if len(outliers):
            _split_group(graph, x, members, outliers)
            moved.update((layer.name, len(outliers)) for layer in members)
    return moved


def outlier_channels(observer: MinMaxObserver, count: int) -> torch.Tensor:
    """Indices (ascending) of the at most `count` largest channels that are RATIO times the median."""
    magnitude = torch.maximum(observer.low.abs(), observer.high.abs())
    top = magnitude.topk(count)
    return top.indices[top.values >= RATIO * magnitude.median()].sort().values


def _split_group(graph: Graph, x: Value, members: list[Layer], outliers: torch.Tensor) -> None:
    keep = torch.ones(x.type.shape[-1], dtype=torch.float32)
    keep[outliers] = 0.0
    base = members[0].name
    anchor = {"after": x.producer} if x.producer is not None else {"before": members[0].node}
    keep_param = graph.add_param(graph.params.unique_name(f"{base}.outlier_keep"), keep)
    masked = graph.add_node("aten.mul.Tensor", [x, keep_param], names=[f"{x.name}_inliers"], **anchor)
    index = graph.add_param(graph.params.unique_name(f"{base}.outlier_index"), outliers.to(torch.int64))
    picked = graph.add_node("aten.index_select", [x, index], {"dim": x.type.rank - 1},
                            names=[f"{x.name}_outliers"], after=masked)
    for layer in members:
        weight = weight_tensor(graph, layer).float()
        inlier_weight = graph.add_param(graph.params.unique_name(f"{layer.name}.weight_inliers"),
                                        (weight * keep).contiguous())
        original = layer.weight.producer
        layer.node.set_input(0, masked.output)
        layer.node.set_input(1, inlier_weight)
        graph.erase_unused([original])
        output = layer.node.outputs[0]
        users = output.uses
        total = _add_side_path(graph, layer, picked.output, weight[:, outliers])
        for user, position in users:
            user.set_input(position, total)
        graph.outputs = [total if v is output else v for v in graph.outputs]


def _add_side_path(graph: Graph, layer: Layer, picked: Value, side_weight: torch.Tensor) -> Value:
    """The layer's output + picked @ side_weight^T. One Gemm (addmm: the sum in the same pass) on 2-D
    views when every leading dim but the first is static; otherwise linear + add."""
    node, output = layer.node, layer.node.outputs[0]
    lead, (n, k) = list(output.type.shape[:-1]), side_weight.shape
    as_gemm = all(isinstance(d, int) for d in lead[1:])
    stored = side_weight.t() if as_gemm else side_weight  # addmm reads [k, n], linear [n, k]
    weight = graph.add_param(graph.params.unique_name(f"{layer.name}.outlier_weight"), stored.contiguous())

    def add(op: str, inputs: list[Value], attrs: dict | None, after: Node, suffix: str) -> Node:
        return graph.add_node(op, inputs, attrs, names=[f"{output.name}_{suffix}"], scope=node.scope, after=after)

    if not as_gemm:
        side = add("aten.linear", [picked, weight], None, node, "outliers")
        return add("aten.add.Tensor", [output, side.output], None, side, "sum").output
    flat = add("aten.reshape", [output], {"shape": [-1, n]}, node, "2d")
    picked_flat = add("aten.reshape", [picked], {"shape": [-1, k]}, flat, "outliers_2d")
    total = add("aten.addmm", [flat.output, picked_flat.output, weight], None, picked_flat, "sum_2d")
    return add("aten.reshape", [total.output], {"shape": [-1, *lead[1:], n]}, total, "sum").output
