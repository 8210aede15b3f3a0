"""ort-contrib: the fusions ONNX Runtime has contrib kernels for, found by structure in any model.

add(x, skip) [+ bias] -> layer_norm         => carve.skip_layer_norm  (SkipLayerNormalization)
linear(x, W, b) -> gelu                     => linear(x, W) -> carve.bias_gelu(b)  (BiasGelu / FastGelu)
q, k, v projected from one x -> attention   => carve.qkv_attention / carve.dynamic_qkv_attention
                                               (Attention / QAttention: one packed GEMM, no Split)
A linear's bias moves into the fused op (the GEMM becomes a bare MatMul); int8 linears
(carve.dynamic_linear) fuse the same way. Used by `to_onnx(..., contrib="onnxruntime")`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...ir import Graph
from ...ir.ops.aten import arguments
from ...ir.value import Value
from ...opset.attention import qattention_takes
from ..base import Pass, PassContext, PassResult, register_pass
from ..rewrite import ANY, P, Rewriter, apply_rules
from .common import LINEAR

DYNAMIC_LINEAR = "carve.dynamic_linear"
BIAS_AT = {LINEAR: 2, DYNAMIC_LINEAR: 3}  # the bias input of each linear
MHA = "carve.multi_head_attention"
SPLIT = "aten.split_with_sizes"
FLOATS = ("f32", "f16")


def skip_layer_norm(rw: Rewriter, total: Value, out: Value) -> list[Value] | None:
    # layer_norm(add(x, skip) [+ bias]) -> skip_layer_norm(x, skip, gamma, beta, bias)
    args = arguments(out.producer)
    adds = total.producer
    if len(args["normalized_shape"]) != 1 or out.type.dtype not in FLOATS or not _plain_add(adds):
        return None
    if adds.inputs[0].type != total.type or adds.inputs[1].type != total.type:  # SkipLayerNorm: no broadcasting
        return None
    x, skip = adds.inputs
    x, bias = _without_bias(rw, x)
    if bias is None:
        skip, bias = _without_bias(rw, skip)
    gamma, beta = _affine_or(rw, args["weight"], 1.0, out), _affine_or(rw, args["bias"], 0.0, out)
    inputs = [x, skip, gamma, beta] + ([bias] if bias is not None else [])
    fused = rw.add("carve.skip_layer_norm", inputs, {"eps": float(args["eps"])})
    if len(total.uses) > 1 or total.is_graph_output:  # the sum is read elsewhere (a pre-LN residual)
        rw.replace(total, fused.outputs[1])
    return [fused.outputs[0]]


def bias_gelu(rw: Rewriter, h: Value, out: Value) -> Value | None:
    # gelu(linear(x, W, b)) -> bias_gelu(linear(x, W), b); a tanh gelu fuses without a bias too (FastGelu)
    approximate = arguments(out.producer)["approximate"]
    if out.type.dtype not in FLOATS:
        return None
    h, bias = _without_bias(rw, h)
    if bias is None and approximate != "tanh":
        return None
    attrs = {"approximate": approximate} if approximate != "none" else {}
    return rw.add("carve.bias_gelu", [h] + ([bias] if bias is not None else []), attrs).output


def packed_qkv(rw: Rewriter, out: Value) -> Value | None:
    # multi_head_attention(split(linear(x, [Wq; Wk; Wv]))) or of three linears of x -> qkv_attention(x, W, b)
    node = out.producer
    attrs = node.attrs
    if attrs.get("kv_num_heads", attrs["num_heads"]) != attrs["num_heads"]:
        return None
    query, key, value, *mask = node.inputs
    if query.type.dtype != "f32":  # ORT's CPU Attention/QAttention kernels are float32 only
        return None
    projection = _from_split(query, key, value) or _from_three(rw, query, key, value)
    if projection is None or not _mask_fits(projection, mask, query):
        return None
    op, inputs = projection
    fused_attrs = {"num_heads": attrs["num_heads"], "scale": attrs.get("scale"), "is_causal": attrs.get("is_causal")}
    fused_attrs = {k: v for k, v in fused_attrs.items() if v not in (None, False)}
    return rw.add(op, [*inputs, *mask], fused_attrs).output


def _affine_or(rw: Rewriter, value: Value | None, fill: float, out: Value) -> Value:
    """A layer norm's weight or bias, or a stored constant `fill` vector when it has none."""
    if value is not None:
        return value
    return rw.param(torch.full(out.type.shape[-1:], fill, dtype=out.type.torch_dtype), "layer_norm.affine")


def _plain_add(node) -> bool:
    return node.op == "aten.add.Tensor" and len(node.inputs) == 2 and arguments(node).get("alpha") == 1


def _without_bias(rw: Rewriter, value: Value) -> tuple[Value, Value | None]:
    """(the linear without its bias, the bias) when `value` is a linear's result read only here; else (value, None)."""
    node = value.producer
    if node is None or node.op not in BIAS_AT or len(value.uses) != 1 or value.is_graph_output:
        return value, None
    position = BIAS_AT[node.op]
    if len(node.inputs) <= position or node.inputs[position].type.shape != value.type.shape[-1:]:
        return value, None
    bare = rw.add(node.op, node.inputs[:position], node.attrs, scope=node.scope, after=node).output
    return bare, node.inputs[position]


def _from_split(query: Value, key: Value, value: Value) -> tuple[str, list[Value]] | None:
    """q, k, v as outputs 0, 1, 2 of one equal split of the last dim of a linear's result."""
    node = query.producer
    if node is None or node.op != SPLIT or [query, key, value] != list(node.outputs):
        return None
    args = arguments(node)
    packed = node.inputs[0]
    if args["dim"] % packed.type.rank != packed.type.rank - 1 or len(set(args["split_sizes"])) != 1:
        return None
    if any(len(v.uses) != 1 or v.is_graph_output for v in (query, key, value, packed)):
        return None
    return _projection(packed.producer)


def _from_three(rw: Rewriter, query: Value, key: Value, value: Value) -> tuple[str, list[Value]] | None:
    """q, k, v each from its own linear of the same x (same kind, equal widths): the weights concatenated."""
    nodes = [v.producer for v in (query, key, value)]
    if any(n is None or n.op not in BIAS_AT or len(v.uses) != 1 for n, v in zip(nodes, (query, key, value))):
        return None
    parts = [_projection(n) for n in nodes]
    if None in parts or len({(op, ins[0]) for op, ins in parts}) != 1:
        return None
    if len({v.type for v in (query, key, value)}) != 1:
        return None
    tensors = [[rw.tensor(v) for v in ins[1:]] for _, ins in parts]
    if any(t is None for group in tensors for t in group):
        return None
    op, (x, weight, *_) = parts[0]
    stored = [_packed(column, query.type.shape[-1]) for column in zip(*tensors)]
    return op, [x] + [rw.param(t, f"{weight.producer.attrs['name']}.qkv") for t in stored]


def _packed(column: tuple, rows: int) -> torch.Tensor:
    """One packed tensor from the q, k, v ones; a per-tensor scale is repeated per output row."""
    return torch.cat([t.reshape(1).expand(rows) if t.dim() == 0 else t for t in column])


def _projection(node) -> tuple[str, list[Value]] | None:
    """(fused op, its inputs before the mask) for a linear with a param weight and bias (Attention's bias is
    an input of its own; a linear without one is not packed)."""
    if node is None or node.op not in BIAS_AT or len(node.inputs) != BIAS_AT[node.op] + 1:
        return None
    if any(v.producer is None or v.producer.op != "param" for v in node.inputs[1:]):
        return None
    op = "carve.qkv_attention" if node.op == LINEAR else "carve.dynamic_qkv_attention"
    return op, list(node.inputs)


def _mask_fits(projection: tuple[str, list[Value]], mask: list[Value], query: Value) -> bool:
    """Attention takes any mask (as attention_bias); QAttention only the ones its mask_index can hold."""
    return projection[0] != "carve.dynamic_qkv_attention" or not mask or qattention_takes(mask[0], query)


CONTRIB_RULES = [
    (P("aten.layer_norm", P("aten.add.Tensor", name="total", any_src=True), name="out", prefix=True),
     skip_layer_norm),  # layer_norm(x + skip)
    (P(("aten.gelu",), ANY("h"), name="out"), bias_gelu),  # gelu(linear(x) + b)
    (P((MHA,), name="out", any_src=True), packed_qkv),  # attention(q, k, v) of one x
]


@register_pass("ort-contrib")
@dataclass(frozen=True)
class OrtContrib(Pass):
    """ONNX Runtime contrib fusions by structure: SkipLayerNormalization, BiasGelu/FastGelu, packed-QKV Attention.

    Rewrites add + layer norm, linear bias + gelu and the three q/k/v projections of one input feeding a
    carve.multi_head_attention (`fuse-attention` makes it) into fused carve ops that lower to com.microsoft kernels.
    """

    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        fired = apply_rules(graph, CONTRIB_RULES, self)
        stats = {"skip_layer_norm": fired["skip_layer_norm"], "bias_gelu": fired["bias_gelu"],
                 "packed_qkv": fired["packed_qkv"]}
        return PassResult(bool(fired), stats)
