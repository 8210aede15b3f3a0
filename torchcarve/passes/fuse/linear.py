"""merge-linear: linear chains with nothing between become one; parallel linears on one input become one wide linear."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...ir import Graph
from ...ir.ops.aten import encode_arguments
from ...ir.value import Value
from ..base import Pass, PassContext, PassResult, register_pass
from ..rewrite import ANY, PARAM, P, Rewriter, apply_rules
from .common import CONVS, LINEAR, Weights, rebuild, weights_of


def linear_chain(rw: Rewriter, x: Value, h: Value, out: Value) -> Value | None:
    # linear(linear(x, W1, b1), W2, b2) -> linear(x, W2 W1, W2 b1 + b2)
    inner, outer = weights_of(rw, h), weights_of(rw, out)
    if inner is None or outer is None or not _cheaper(rw, inner, outer):
        return None
    return rebuild(rw, outer, x, outer.weight @ inner.weight, outer.weight @ inner.bias + outer.bias)


def pointwise_conv_chain(rw: Rewriter, x: Value, h: Value, out: Value) -> Value | None:
    # conv1x1(conv(x, W1, b1), W2, b2) -> conv(x, W2·W1, W2 b1 + b2)   the 1x1 conv is a per-pixel linear
    inner, outer = weights_of(rw, h), weights_of(rw, out)
    if inner is None or outer is None or not (_is_pointwise(outer) and _plain(inner)) or inner.node.op != outer.node.op:
        return None
    if not _cheaper(rw, inner, outer):
        return None
    mix = outer.weight.flatten(1)
    weight = torch.einsum("om,mi...->oi...", mix, inner.weight)
    return rebuild(rw, inner, x, weight, mix @ inner.bias + outer.bias)


def parallel_linears(rw: Rewriter, x: Value, out: Value) -> Value | None:
    # linear(x, Wq), linear(x, Wk), linear(x, Wv) -> split(linear(x, [Wq; Wk; Wv]))
    siblings = [w for w in (weights_of(rw, n.outputs[0]) for n in x.users if n.op == LINEAR) if w is not None]
    siblings = [w for w in siblings if w.node.inputs[0] is x and w.weight.shape[1:] == siblings[0].weight.shape[1:]]
    if len(siblings) < 2 or out.producer not in [w.node for w in siblings]:
        return None
    position = {"after": x.producer} if x.producer is not None else {"before": _first_op(rw.graph)}
    weight = torch.cat([w.weight for w in siblings])
    bias = torch.cat([w.bias for w in siblings])
    wide = rebuild(rw, siblings[0], x, weight, bias, position=position)
    return _split_back(rw, siblings, wide)


def linear_from_matmul(rw: Rewriter, x: Value, w: Value, out: Value) -> Value | None:
    # matmul(x, W[K, N]) -> linear(x, W^T): how ONNX MatMul by an initializer comes in, so that the
    # passes that work on linears (merge, prune, low-rank, quantize) see one
    weight = rw.tensor(w)
    if weight.dim() != 2 or not weight.is_floating_point() or x.type.rank < 2:
        return None
    return rw.add(LINEAR, [x, rw.param(weight.t(), w.producer.attrs["name"].removesuffix(".T"))]).output


def bias_into_linear(rw: Rewriter, h: Value, c: Value, out: Value) -> Value | None:
    # add(linear(x, W, b), c[N]) -> linear(x, W, b + c)   (either operand order)
    inner, constant = weights_of(rw, h), rw.tensor(c)
    if inner is None or out.producer.attrs.get("alpha", 1) != 1 or not constant.is_floating_point():
        return None
    if constant.numel() != inner.weight.shape[0] or constant.dim() > h.type.rank or constant.shape[-1] != constant.numel():
        return None
    return rebuild(rw, inner, inner.args["input"], inner.weight, inner.bias + constant.flatten().double())


def _split_back(rw: Rewriter, siblings: list[Weights], wide: Value) -> Value:
    sizes = [w.weight.shape[0] for w in siblings]
    inputs, attrs = encode_arguments("aten.split_with_sizes", {"self": wide, "split_sizes": sizes, "dim": -1})
    split = rw.add("aten.split_with_sizes", inputs, attrs, after=wide.producer)
    result = None
    for w, part in zip(siblings, split.outputs):
        if w.node is rw.root:
            result = part
        else:
            rw.replace(w.node.outputs[0], part)
    return result


def _first_op(graph: Graph):
    return next(n for n in graph.nodes if n.op != "param")


def _cheaper(rw: Rewriter, inner: Weights, outer: Weights) -> bool:
    """Merge only when the product costs no more than the chain (a low-rank pair stays factored)."""
    if rw.options.allow_growth:
        return True
    mid, out = outer.weight.shape[1], outer.weight.shape[0]
    inner_size = math.prod(inner.weight.shape[1:])
    return out * inner_size <= mid * inner_size + out * mid


def _is_pointwise(w: Weights) -> bool:
    return all(k == 1 for k in w.weight.shape[2:]) and _plain(w) and all(s == 1 for s in w.args.get("stride") or [1]) \
        and all(p == 0 for p in w.args.get("padding") or [0])


def _plain(w: Weights) -> bool:
    return w.node.op in CONVS and not w.transposed and w.groups == 1


@register_pass("merge-linear")
@dataclass(frozen=True)
class MergeLinear(Pass):
    """Merge linear maps: chains multiply out (W2·W1), siblings on one input concatenate (fused QKV).

    allow_growth: also merge chains whose product has more MACs (undoes low-rank factorizations).
    """

    allow_growth: bool = False
    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        fired = apply_rules(graph, MERGE_RULES, self)
        return PassResult(bool(fired), dict(fired))


ADD = "aten.add.Tensor"
MERGE_RULES = [
    (P("aten.matmul", ANY("x"), PARAM("w"), name="out"), linear_from_matmul),
    (P(ADD, P(LINEAR, name="h", one_use=True, any_src=True), PARAM("c"), name="out"), bias_into_linear),
    (P(ADD, PARAM("c"), P(LINEAR, name="h", one_use=True, any_src=True), name="out"), bias_into_linear),
    (P(LINEAR, P(LINEAR, ANY("x"), name="h", one_use=True, prefix=True), name="out", prefix=True), linear_chain),
    (P(CONVS, P(CONVS, ANY("x"), name="h", one_use=True, prefix=True), name="out", prefix=True), pointwise_conv_chain),
    (P(LINEAR, ANY("x"), name="out", prefix=True), parallel_linears),
]
