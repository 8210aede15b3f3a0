"""fold-bn: batch norm folded into the conv/linear before it, or after it when there is no padding."""
from __future__ import annotations

from dataclasses import dataclass

from ...ir import Graph
from ...ir.ops.aten import arguments
from ...ir.value import Value
from ..base import Pass, PassContext, PassResult, register_pass
from ..rewrite import ANY, P, Rewriter, apply_rules
from .affine import folds_into
from .common import (BATCH_NORMS, CONVS, LINEAR, WEIGHTED, bn_affine, channels_at_dim1, per_input, per_output,
                     rebuild, weights_of)


def bn_into_producer(rw: Rewriter, y: Value, out: Value) -> list[Value] | None:
    # bn(conv(x, W, b)) -> conv(x, W*s, b*s + t)   with s = gamma/sqrt(var+eps), t = beta - mean*s
    # (a conv whose every user folds gives each its own copy: cse may have merged equal convs first)
    affine, w = bn_affine(rw, out), weights_of(rw, y)
    if affine is None or w is None or not channels_at_dim1(y, w.out_channels, w.node.op) or not folds_into(rw, y):
        return None
    _, scale, shift = affine
    fused = rebuild(rw, w, w.node.inputs[0], per_output(w, scale), w.bias * scale + shift)
    return [fused, *out.producer.outputs[1:]]


def bn_into_consumer(rw: Rewriter, y: Value, out: Value) -> Value | None:
    # conv(bn(x), W, b) -> conv(x, W*s_in, b + sum(W*t_in))   only without zero padding (pads are not normalised)
    affine, w = bn_affine(rw, y), weights_of(rw, out)
    if affine is None or w is None or w.transposed or not _consumes_dim1(w, y):
        return None
    x, scale, shift = affine
    return _fold_input_affine(rw, w, x, scale, shift)


def bn_ffn_into_consumer(rw: Rewriter, x: Value, t1: Value, y: Value, t2: Value, out: Value) -> Value | None:
    # linear(bn(x^T)^T) -> linear'(x)   for tokens [B, N, C] (RePaViT's BatchNorm-in-FFN, Xu et al. 2025)
    affine, w = bn_affine(rw, y), weights_of(rw, out)
    if affine is None or w is None or not (_swaps_1_2(t1) and _swaps_1_2(t2)):
        return None
    _, scale, shift = affine
    return _fold_input_affine(rw, w, x, scale, shift)


def bn_ffn_into_producer(rw: Rewriter, y: Value, t1: Value, bn: Value, out: Value) -> Value | None:
    # bn(linear(x)^T)^T -> linear'(x)   the same fold on the FFN's output side
    affine, w = bn_affine(rw, bn), weights_of(rw, y)
    if affine is None or w is None or w.node.op != LINEAR or not (_swaps_1_2(t1) and _swaps_1_2(out)):
        return None
    _, scale, shift = affine
    return rebuild(rw, w, w.node.inputs[0], per_output(w, scale), w.bias * scale + shift)


def _fold_input_affine(rw: Rewriter, w, x: Value, scale, shift) -> Value:
    weight = w.weight * per_input(w, scale)
    offset = (w.weight * per_input(w, shift)).flatten(1).sum(1)
    return rebuild(rw, w, x, weight, w.bias + offset)


def _consumes_dim1(w, y: Value) -> bool:
    if w.node.op == LINEAR:
        return y.type.rank == 2
    padding = w.args.get("padding") or [0]
    return all(p == 0 for p in padding)


def _swaps_1_2(value: Value) -> bool:
    node = value.producer
    if node.op != "aten.transpose.int" or value.type.rank != 3:
        return False
    args = arguments(node)
    return {args["dim0"] % 3, args["dim1"] % 3} == {1, 2}


TRANSPOSE = "aten.transpose.int"
BN_FFN_RULES = [
    (P(LINEAR, P(TRANSPOSE, P(BATCH_NORMS, P(TRANSPOSE, ANY("x"), name="t1"), name="y", one_use=True, prefix=True),
                 name="t2", one_use=True), name="out", prefix=True), bn_ffn_into_consumer),
    (P(TRANSPOSE, P(BATCH_NORMS, P(TRANSPOSE, P(LINEAR, name="y", one_use=True, any_src=True), name="t1", one_use=True),
                    name="bn", one_use=True, prefix=True), name="out"), bn_ffn_into_producer),
]
FOLD_BN_RULES = [
    (P(BATCH_NORMS, P(WEIGHTED, name="y", any_src=True), name="out", prefix=True), bn_into_producer),
    (P(CONVS + (LINEAR,), P(BATCH_NORMS, name="y", one_use=True, any_src=True), name="out", prefix=True),
     bn_into_consumer),
] + BN_FFN_RULES


@register_pass("fold-bn")
@dataclass(frozen=True)
class FoldBatchNorm(Pass):
    """Fold inference batch norm into the adjacent conv/linear weights (Jacob et al. 2018, Sec. 3.2)."""

    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        fired = apply_rules(graph, FOLD_BN_RULES, self)
        return PassResult(bool(fired), {"folded": sum(fired.values())})
