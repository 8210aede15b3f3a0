"""fold-affine: a per-channel constant multiply or add after a conv/linear folded into its weights.

Covers Caffe2's Scale-style BN (`Mul`/`Add` with [C,1,1] initializers after a conv: densenet121,
inception_v2 in ONNX) and layer scale (`gamma * linear(x)`: ConvNeXt, CaiT; Touvron et al. 2021).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...ir import Graph
from ...ir.ops.aten import arguments
from ...ir.node import Node
from ...ir.value import Value
from ..base import Pass, PassContext, PassResult, register_pass
from ..rewrite import PARAM, P, Rewriter, apply_rules
from .common import (BATCH_NORMS, LINEAR, WEIGHTED, Weights, bn_affine, channels_at_dim1, per_output, rebuild,
                     weights_of)


def scale_into_producer(rw: Rewriter, y: Value, c: Value, out: Value) -> Value | None:
    # conv(x, W, b) * c -> conv(x, W*c, b*c)   c constant per output channel (or a scalar)
    w, factor = weights_of(rw, y), _per_channel(rw, y, c, out)
    if w is None or factor is None or not folds_into(rw, y):
        return None
    return rebuild(rw, w, w.node.inputs[0], per_output(w, factor), w.bias * factor)


def shift_into_producer(rw: Rewriter, y: Value, c: Value, out: Value) -> Value | None:
    # conv(x, W, b) + c -> conv(x, W, b + c)   c constant per output channel (or a scalar)
    w, shift = weights_of(rw, y), _per_channel(rw, y, c, out)
    if w is None or shift is None or not _unscaled(out.producer) or not folds_into(rw, y):
        return None
    return rebuild(rw, w, w.node.inputs[0], w.weight, w.bias + shift)


def folds_into(rw: Rewriter, y: Value) -> bool:
    """Every user of `y` is a per-channel affine (batch norm, constant Mul/Add) that folds into y's
    producer, so each may take its own copy of it (with one user: the plain fold)."""
    return not y.is_graph_output and bool(y.users) and all(_folds(rw, y, node) for node in y.users)


def _folds(rw: Rewriter, y: Value, node: Node) -> bool:
    out = node.outputs[0]
    if node.op in BATCH_NORMS:
        w = weights_of(rw, y)
        return node.inputs[0] is y and bn_affine(rw, out) is not None and channels_at_dim1(y, w.out_channels, w.node.op)
    if node.op not in (MUL, ADD) or len(node.inputs) != 2 or node.inputs[0] is node.inputs[1]:
        return False
    c = node.inputs[1] if node.inputs[0] is y else node.inputs[0]
    return _per_channel(rw, y, c, out) is not None and _unscaled(node)


def _unscaled(node: Node) -> bool:
    return node.op == MUL or arguments(node).get("alpha", 1) == 1


def _per_channel(rw: Rewriter, y: Value, c: Value, out: Value) -> torch.Tensor | None:
    """`c` as one float64 factor per output channel of `y`'s producer, when it broadcasts along that
    axis only and leaves `y`'s type unchanged; else None."""
    tensor = rw.tensor(c)
    if tensor is None or not tensor.is_floating_point() or out.type != y.type or tensor.dim() > y.type.rank:
        return None
    w = weights_of(rw, y)
    axis = y.type.rank - 1 if w.node.op == LINEAR else _conv_channel_axis(w, y)
    padded = (1,) * (y.type.rank - tensor.dim()) + tuple(tensor.shape)
    if any(size != 1 for i, size in enumerate(padded) if i != axis) or padded[axis] not in (1, w.out_channels):
        return None
    return tensor.double().reshape(-1).expand(w.out_channels)


def _conv_channel_axis(w: Weights, y: Value) -> int:
    return y.type.rank - (w.weight.dim() - 2) - 1


MUL, ADD = "aten.mul.Tensor", "aten.add.Tensor"
PRODUCER = P(WEIGHTED, name="y", any_src=True)
FOLD_AFFINE_RULES = [
    (P(MUL, PRODUCER, PARAM("c"), name="out"), scale_into_producer),  # conv(x) * c
    (P(MUL, PARAM("c"), PRODUCER, name="out"), scale_into_producer),  # c * conv(x)
    (P(ADD, PRODUCER, PARAM("c"), name="out"), shift_into_producer),  # conv(x) + c
    (P(ADD, PARAM("c"), PRODUCER, name="out"), shift_into_producer),  # c + conv(x)
]


@register_pass("fold-affine")
@dataclass(frozen=True)
class FoldAffine(Pass):
    """Fold per-channel constant Mul/Add (Caffe2 Scale, layer scale) into the conv/linear before them."""

    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        fired = apply_rules(graph, FOLD_AFFINE_RULES, self)
        return PassResult(bool(fired), {"folded": sum(fired.values())})
