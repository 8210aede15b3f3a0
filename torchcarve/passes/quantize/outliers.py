"""Outlier channels in float (LLM.int8(), Dettmers et al. 2022): the few input channels of a linear
with the largest calibrated magnitude skip quantization.

Transformer activations carry a handful of huge channels (all-MiniLM-L6: one channel reaches 28 where
the median channel peaks at 1.3). A per-tensor int8 range stretched to fit them rounds everything
else coarsely. For the linears reading one activation x:

    linear(x, W, b)  ->  linear(x * keep, W * keep, b) + linear(x[..., idx], W[:, idx])

`keep` zeroes the outlier channels `idx`, so the quantized linear (and its run-time range) never
sees them; the second, float product adds their exact contribution back (k inputs: cheap; one Gemm
that also does the sum).

Where x is made only for these linears by a linear through ops with f(0) = 0 (an FFN's
`gelu(linear(z, W1, b1))`), the zeroing is folded into the producer instead: rows `idx` of W1 and b1
are zeroed (gelu(0) = 0 keeps them zero) and a k-output float linear computes the outlier channels,
`x[..., idx] = gelu(linear(z, W1[idx], b1[idx]))`. No pass over x remains: no Mul, no Gather.

Where x has no such producer (a LayerNorm output that also feeds the residual), the outlier channels
stay inside the int8 GEMM, scaled down to the inliers' range and their weight columns up to match:

    linear(x, W, b)  ->  linear(x * s, W / s, b),   s_c = max|inliers| / max|x_c| for outliers c, else 1

One Mul over x remains; the float side Gemm (which reads and writes the whole output once more) is gone.
This is SmoothQuant (Xiao et al. 2023) on the outlier channels alone. It pays where the outlier channels
meet small weights (MiniLM's do); the widened weight columns can cost accuracy elsewhere, so both forms
are measured per input and the scaled one is used only within TOLERANCE of the float path's error. Splitting each outlier into n copies of x_c / n
(Zhao et al. 2019) measured the same error and costs a Gather and a Concat more, so it is not used.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ...ir import Graph
from ...ir.node import Node
from ...ir.value import Value
from .calibrate import calibrate
from .observers import MinMaxObserver
from .rewrite import LINEAR, Layer, weight_tensor
from .smooth import linear_groups

RATIO = 6.0  # a channel is an outlier when its magnitude is this many times the median channel's
SAMPLE_ROWS = 1024  # rows of each input kept from calibration to measure the error of each channel count
TOLERANCE = 1.25  # the fewest float channels whose measured output error is within this factor of the best count's
MIN_GAIN = 1.5  # no channel is moved unless the best count cuts the measured error by at least this factor
LEVELS = 255  # uint8 activations, per tensor (dynamic quantization)
ZERO_PRESERVING = ("aten.gelu", "aten.relu")  # elementwise f with f(0) = 0: zeroed channels stay zero through them


class SampleObserver(MinMaxObserver):
    """Per-channel min/max of an input, and its first SAMPLE_ROWS rows (to measure errors on)."""

    def __init__(self) -> None:
        super().__init__(axis=-1)
        self.rows: list[torch.Tensor] = []

    def observe(self, tensor: torch.Tensor) -> None:
        super().observe(tensor)
        kept = sum(len(r) for r in self.rows)
        if kept < SAMPLE_ROWS:
            self.rows.append(tensor.detach().float().reshape(-1, tensor.shape[-1])[:SAMPLE_ROWS - kept])


def split_outliers(graph: Graph, layers: list[Layer], batches: Sequence[Any], count: int,
                   fold: bool = True, qmax: int = 127, scale: bool = True,
                   min_gain: float = MIN_GAIN, max_memory: int | None = None) -> dict[str, int]:
    """Take up to `count` outlier channels of each shared input out of its int8 range; returns the
    channels moved per layer name. Candidates are channels RATIO times the median's; of them, the
    fewest whose measured int8 output error (weights in [-qmax, qmax]) is near the best are taken, none
    unless the best cuts the error by `min_gain`. fold: zero them in the producing linear where one
    exists; scale: elsewhere scale them into the inliers' range where that measures within TOLERANCE of
    the float side path's error, else a float side Gemm (see the module docstring).
    max_memory: calibrate block by block."""
    groups = {x: members for x, members in linear_groups(layers).items() if x.type.shape[-1] > count}
    observers = {x: SampleObserver() for x in groups}
    calibrate(graph, batches, observers, max_memory)
    moved: dict[str, int] = {}
    for x, members in reversed(groups.items()):  # consumers first: a producer is still a plain linear
        observer, candidates = observers[x], outlier_channels(observers[x], count)
        weight = torch.cat([weight_tensor(graph, layer).float() for layer in members])
        rows = torch.cat(observer.rows)
        chain = foldable_producer(x, members) if fold else None
        errors = channel_errors(rows, weight, candidates, qmax)
        magnitude = torch.maximum(observer.low.abs(), observer.high.abs())
        scaled = channel_errors(rows, weight, candidates, qmax, magnitude) if scale and not chain else None
        use_scale = scaled is not None and min(scaled) <= min(errors) * TOLERANCE
        outliers = candidates[:fewest_channels(scaled if use_scale else errors, min_gain)].sort().values
        if not len(outliers):
            continue
        if use_scale:
            _scale_channels(graph, x, members, channel_scale(magnitude, outliers))
        else:
            _split_group(graph, x, members, outliers, chain)
        moved.update((layer.name, len(outliers)) for layer in members)
    return moved


def outlier_channels(observer: MinMaxObserver, count: int) -> torch.Tensor:
    """Indices (largest first) of the at most `count` largest channels that are RATIO times the median."""
    magnitude = torch.maximum(observer.low.abs(), observer.high.abs())
    top = magnitude.topk(count)
    return top.indices[top.values >= RATIO * magnitude.median()]


def channel_errors(x: torch.Tensor, weight: torch.Tensor, candidates: torch.Tensor, qmax: int,
                   magnitude: torch.Tensor | None = None) -> list[float]:
    """The relative output error of dynamic int8 `x @ weight.T`, measured on rows `x`, with the first k of
    `candidates` out of the int8 range, for k = 0..len(candidates): scaled into range (channel_scale, from
    their calibrated `magnitude`) when it is given, else in a float side path."""
    reference = x @ weight.t()
    errors = []
    for k in range(len(candidates) + 1):
        product = _scaled_product(x, weight, magnitude, candidates[:k], qmax) if magnitude is not None else \
            _side_path_product(x, weight, candidates[:k], qmax)
        errors.append(float((product - reference).norm() / reference.norm().clamp(min=1e-12)))
    return errors


def fewest_channels(errors: list[float], min_gain: float = MIN_GAIN) -> int:
    """How many channels to take (errors[k]: with k taken): the fewest whose error is within TOLERANCE of
    the best count's; 0 when the best is not `min_gain` times better than none."""
    best = min(errors)
    if errors[0] <= best * min_gain:
        return 0
    return next(k for k, error in enumerate(errors) if error <= best * TOLERANCE)


def _side_path_product(x: torch.Tensor, weight: torch.Tensor, outliers: torch.Tensor, qmax: int) -> torch.Tensor:
    keep = torch.ones(x.shape[-1])
    keep[outliers] = 0.0
    return _fake_dynamic(x * keep) @ _fake_per_channel(weight * keep, qmax).t() + x[:, outliers] @ weight[:, outliers].t()


def _scaled_product(x: torch.Tensor, weight: torch.Tensor, magnitude: torch.Tensor, outliers: torch.Tensor,
                    qmax: int) -> torch.Tensor:
    scale = channel_scale(magnitude, outliers)
    return _fake_dynamic(x * scale) @ _fake_per_channel(weight / scale, qmax).t()


def channel_scale(magnitude: torch.Tensor, outliers: torch.Tensor) -> torch.Tensor:
    """1 per channel, and for each outlier channel the largest inlier magnitude / its own: x * scale has
    every channel within the inliers' range, and (x * scale) @ (W / scale).T = x @ W.T."""
    inliers = magnitude.clone()
    inliers[outliers] = 0.0
    scale = torch.ones(len(magnitude))
    scale[outliers] = inliers.max().clamp(min=1e-12) / magnitude[outliers].clamp(min=1e-12)
    return scale


def _fake_dynamic(x: torch.Tensor) -> torch.Tensor:
    """x through run-time uint8 quantization (per tensor, zero in range), as DynamicQuantizeMatMul does."""
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (high - low) / LEVELS or 1.0
    zero_point = round(-low / scale)
    return ((x / scale).round() + zero_point).clamp(0, LEVELS).sub(zero_point) * scale


def _fake_per_channel(weight: torch.Tensor, qmax: int) -> torch.Tensor:
    scale = (weight.abs().amax(1, keepdim=True) / qmax).clamp(min=1e-12)
    return (weight / scale).round().clamp(-qmax, qmax) * scale


def _scale_channels(graph: Graph, x: Value, members: list[Layer], scale: torch.Tensor) -> None:
    """The members read `x * scale` with weights `W / scale` (channel_scale)."""
    base = members[0].name
    anchor = {"after": x.producer} if x.producer is not None else {"before": members[0].node}
    scale_param = graph.add_param(graph.params.unique_name(f"{base}.outlier_scale"), scale)
    scaled = graph.add_node("aten.mul.Tensor", [x, scale_param], names=[f"{x.name}_outliers_scaled"], **anchor)
    for layer in members:
        original = layer.weight.producer
        weight = (weight_tensor(graph, layer) / scale).contiguous()
        layer.node.set_input(0, scaled.output)
        layer.node.set_input(1, graph.add_param(graph.params.unique_name(f"{layer.name}.weight_scaled"), weight))
        graph.erase_unused([original])


def _split_group(graph: Graph, x: Value, members: list[Layer], outliers: torch.Tensor,
                 chain: list[Node] | None) -> None:
    keep = torch.ones(x.type.shape[-1], dtype=torch.float32)
    keep[outliers] = 0.0
    if chain:
        masked, picked = _fold_into_producer(graph, x, chain, outliers)
    else:
        masked, picked = _mask(graph, x, members, keep, outliers)
    for layer in members:
        weight = weight_tensor(graph, layer).float()
        inlier_weight = graph.add_param(graph.params.unique_name(f"{layer.name}.weight_inliers"),
                                        (weight * keep).contiguous())
        original = layer.weight.producer
        layer.node.set_input(0, masked)
        layer.node.set_input(1, inlier_weight)
        graph.erase_unused([original])
        output = layer.node.outputs[0]
        users = output.uses
        total = _add_side_path(graph, layer, picked, weight[:, outliers])
        for user, position in users:
            user.set_input(position, total)
        graph.outputs = [total if v is output else v for v in graph.outputs]


def _mask(graph: Graph, x: Value, members: list[Layer], keep: torch.Tensor,
          outliers: torch.Tensor) -> tuple[Value, Value]:
    """x * keep for the quantized path, x[..., idx] for the float one."""
    base = members[0].name
    anchor = {"after": x.producer} if x.producer is not None else {"before": members[0].node}
    keep_param = graph.add_param(graph.params.unique_name(f"{base}.outlier_keep"), keep)
    masked = graph.add_node("aten.mul.Tensor", [x, keep_param], names=[f"{x.name}_inliers"], **anchor)
    index = graph.add_param(graph.params.unique_name(f"{base}.outlier_index"), outliers.to(torch.int64))
    picked = graph.add_node("aten.index_select", [x, index], {"dim": x.type.rank - 1},
                            names=[f"{x.name}_outliers"], after=masked)
    return masked.output, picked.output


def foldable_producer(x: Value, members: list[Layer]) -> list[Node] | None:
    """[the linear making x, then the ZERO_PRESERVING ops from it to x] when x and every value on the way
    are read by nothing else (the members alone read x); else None."""
    readers = {layer.node for layer in members}
    if x.is_graph_output or not set(x.users) <= readers:
        return None
    chain, value = [], x
    while value.producer is not None and value.producer.op in ZERO_PRESERVING and len(value.producer.inputs) == 1:
        chain.insert(0, value.producer)
        value = value.producer.inputs[0]
        if value.is_graph_output or len(value.uses) != 1:
            return None
    producer = value.producer
    if producer is None or producer.op != LINEAR or not all(_is_param(v) for v in producer.inputs[1:]):
        return None
    return [producer, *chain]


def _fold_into_producer(graph: Graph, x: Value, chain: list[Node], outliers: torch.Tensor) -> tuple[Value, Value]:
    """Zero the outlier rows of the producing linear (x itself then carries zeros there) and compute those
    channels with a k-output copy of the linear and the ops after it; returns (x, the outlier channels)."""
    linear, *after = chain
    z, *weights = linear.inputs  # weight [n, in], bias [n]
    originals = [graph.params[v.producer.attrs["name"]] for v in weights]
    keep = torch.ones(originals[0].shape[0], dtype=originals[0].dtype)
    keep[outliers] = 0
    side_inputs = [z]
    for position, (value, tensor) in enumerate(zip(weights, originals), start=1):
        name = value.producer.attrs["name"]
        zeroed = (tensor * keep.view(-1, *[1] * (tensor.dim() - 1))).contiguous()
        linear.set_input(position, graph.add_param(graph.params.unique_name(f"{name}_inliers"), zeroed))
        side_inputs.append(graph.add_param(graph.params.unique_name(f"{name}_outliers"), tensor[outliers].contiguous()))
        graph.erase_unused([value.producer])
    node = graph.add_node(LINEAR, side_inputs, names=[f"{x.name}_outliers_pre"], scope=linear.scope, after=linear)
    for op in after:
        node = graph.add_node(op.op, [node.output], dict(op.attrs), names=[f"{op.output.name}_outliers"],
                              scope=op.scope, after=node)
    return x, node.output


def _is_param(value: Value) -> bool:
    return value.producer is not None and value.producer.op == "param"


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
