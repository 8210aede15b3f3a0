"""fuse-attention: softmax(q k^T * scale + mask) v -> scaled_dot_product_attention (FlashAttention's contract)."""
from __future__ import annotations

from dataclasses import dataclass

from ...ir import Graph
from ...ir.ops.aten import arguments, encode_arguments
from ...ir.value import Value
from ..base import Pass, PassContext, PassResult, register_pass
from ..rewrite import ANY, P, Rewriter, apply_rules

SOFTMAX = ("aten.softmax.int", "aten._softmax")
MATMUL = ("aten.matmul",)
SDPA = "aten.scaled_dot_product_attention"


def fuse_attention(rw: Rewriter, scores: Value, probs: Value, v: Value, out: Value) -> Value | None:
    # matmul(softmax(matmul(q, k^T) * c [+ mask]), v) -> sdpa(q, k, v, mask, scale=c)
    if not _softmax_last(probs.producer):
        return None
    scores, mask = _strip_mask(scores)
    scores, scale = _strip_scale(scores)
    node = scores.producer
    if node is None or node.op not in MATMUL or len(scores.uses) != 1 or scores.is_graph_output:
        return None
    q, key_t = node.inputs
    if not (q.type.rank == key_t.type.rank == v.type.rank >= 3) or q.type.dtype != v.type.dtype:
        return None
    k = _untransposed(rw, key_t)
    named = {"query": q, "key": k, "value": v, "attn_mask": mask, "scale": float(scale)}
    inputs, attrs = encode_arguments(SDPA, named)
    fused = rw.add(SDPA, inputs, attrs).output
    return fused if fused.type == out.type else None


def _softmax_last(node) -> bool:
    args = arguments(node)
    return args["dim"] % node.outputs[0].type.rank == node.outputs[0].type.rank - 1 and not args.get("half_to_float")


def _strip_mask(scores: Value) -> tuple[Value, Value | None]:
    """scores + mask -> (scores, mask) when the add is the softmax's only input and the mask is float."""
    node = scores.producer
    if node is None or node.op != "aten.add.Tensor" or len(node.inputs) != 2 or len(scores.uses) != 1:
        return scores, None
    if arguments(node).get("alpha") != 1:
        return scores, None
    first, second = node.inputs
    if _from_matmul(second) and not _from_matmul(first):
        first, second = second, first
    if not second.type.torch_dtype.is_floating_point:
        return scores, None
    return first, second


def _from_matmul(value: Value) -> bool:
    node = value.producer
    while node is not None and node.op in ("aten.mul.Tensor", "aten.div.Tensor") and len(node.inputs) == 1:
        node = node.inputs[0].producer
    return node is not None and node.op in MATMUL


def _strip_scale(scores: Value) -> tuple[Value, float]:
    """scores * c or scores / c (a scalar attr) -> (scores, factor); 1.0 when unscaled."""
    node = scores.producer
    if node is None or node.op not in ("aten.mul.Tensor", "aten.div.Tensor") or len(node.inputs) != 1:
        return scores, 1.0
    other = arguments(node).get("other")
    if len(scores.uses) != 1 or isinstance(other, bool) or not isinstance(other, (int, float)) or other == 0:
        return scores, 1.0
    return node.inputs[0], other if node.op == "aten.mul.Tensor" else 1.0 / other


def _untransposed(rw: Rewriter, key_t: Value) -> Value:
    """k from k^T: the input of a last-two-dims transpose, else a new transpose node."""
    node, rank = key_t.producer, key_t.type.rank
    if node is not None and node.op == "aten.transpose.int":
        args = arguments(node)
        if {args["dim0"] % rank, args["dim1"] % rank} == {rank - 2, rank - 1}:
            return node.inputs[0]
    inputs, attrs = encode_arguments("aten.transpose.int", {"self": key_t, "dim0": -2, "dim1": -1})
    return rw.add("aten.transpose.int", inputs, attrs).output


ATTENTION_RULES = [
    (P(MATMUL, P(SOFTMAX, ANY("scores"), name="probs", one_use=True), ANY("v"), name="out"), fuse_attention),
]


@register_pass("fuse-attention")
@dataclass(frozen=True)
class FuseAttention(Pass):
    """Attention fusion: the explicit softmax(QK^T)V chain becomes one scaled_dot_product_attention (Dao et al. 2022)."""

    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        fired = apply_rules(graph, ATTENTION_RULES, self)
        return PassResult(bool(fired), {"fused": sum(fired.values())})
