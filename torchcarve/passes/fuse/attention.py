"""fuse-attention: softmax(q k^T * scale + mask) v -> scaled_dot_product_attention (FlashAttention's contract);
with the head split/merge around it -> carve.multi_head_attention on [batch, seq, hidden] tensors."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...ir import Graph
from ...ir.ops.aten import arguments, encode_arguments
from ...ir.value import Value
from ..base import Pass, PassContext, PassResult, register_pass
from ..rewrite import ANY, PARAM, P, Rewriter, apply_rules

SOFTMAX = ("aten.softmax.int", "aten._softmax")
MATMUL = ("aten.matmul",)
SDPA = "aten.scaled_dot_product_attention"
MHA = "carve.multi_head_attention"
RESHAPES = ("aten.view", "aten.reshape", "aten._unsafe_view")
HEAD_SPLITS = RESHAPES + ("aten.unflatten.int",)
HEAD_MERGES = RESHAPES + ("aten.flatten.using_ints",)
COPIES = ("aten.contiguous", "aten.clone")
SWAPS = ("aten.transpose.int", "aten.permute")


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


def fold_heads(rw: Rewriter, attn: Value, merged: Value, out: Value) -> Value | None:
    # merge_heads(sdpa(split_heads(q), split_heads(k), split_heads(v))) -> multi_head_attention(q, k, v)
    args = arguments(attn.producer)
    if args["dropout_p"] or attn.type.rank != 4 or not _swaps_heads(merged.producer):
        return None
    (q, heads), (k, kv_heads), (v, v_heads) = (_split_heads(args[name]) for name in ("query", "key", "value"))
    if None in (q, k, v) or kv_heads != v_heads or heads % kv_heads or len({x.type.shape[0] for x in (q, k, v)}) > 1:
        return None
    attrs = {"num_heads": heads, "kv_num_heads": kv_heads, "scale": args["scale"], "is_causal": args["is_causal"]}
    defaults = {"kv_num_heads": heads, "scale": None, "is_causal": False}
    attrs = {name: value for name, value in attrs.items() if name not in defaults or value != defaults[name]}
    mask = [args["attn_mask"]] if args["attn_mask"] is not None else []
    fused = rw.add(MHA, [q, k, v, *mask], attrs, scope=attn.producer.scope).output
    return _as_merged(rw, fused, out)


def _as_merged(rw: Rewriter, fused: Value, out: Value) -> Value | None:
    """The [B, S, D] result in the merge's own shape (GPT-2 merges to [B*S, D]): a reshape reads the same
    row-major order from [B, S, N, H] and from [B, S, N*H]."""
    merge = out.producer
    if fused.type != out.type and merge.op in RESHAPES:
        fused = rw.add(merge.op, [fused], merge.attrs).output
    return fused if fused.type == out.type else None


def _split_heads(value: Value) -> tuple[Value | None, int]:
    """(x, N) when `value` is x [B, S, N*H] viewed as [B, S, N, H], then transposed to [B, N, S, H]."""
    node = value.producer
    if node is None or node.op not in SWAPS or not _swaps_heads(node):
        return None, 0
    split = node.inputs[0].producer
    if split is None or split.op not in HEAD_SPLITS:
        return None, 0
    x, (batch, length, heads, size) = split.inputs[0], split.outputs[0].type.shape
    static = isinstance(heads, int) and isinstance(size, int)
    exact = static and x.type.rank == 3 and x.type.shape == (batch, length, heads * size)
    return (x, heads) if exact else (None, 0)


def _swaps_heads(node) -> bool:
    """transpose(1, 2) or permute(0, 2, 1, 3) of a rank-4 tensor."""
    if node.outputs[0].type.rank != 4:
        return False
    args = arguments(node)
    if node.op == "aten.permute":
        return [d % 4 for d in args["dims"]] == [0, 2, 1, 3]
    return {args["dim0"] % 4, args["dim1"] % 4} == {1, 2}


def drop_neutral_mask(rw: Rewriter, mask: Value, out: Value) -> Value | None:
    # attention(q, k, v, all-True bool mask or all-zero float mask) -> attention(q, k, v)
    tensor = rw.tensor(mask)
    neutral = bool(tensor.all()) if tensor.dtype == torch.bool else not bool(tensor.any())
    if not neutral:
        return None
    node = out.producer
    unmasked = rw.add(node.op, node.inputs[:3], node.attrs).output
    return unmasked if unmasked.type == out.type else None


MERGED = P(SWAPS, P(SDPA, name="attn", any_src=True, one_use=True), name="merged", one_use=True)
ATTENTION_RULES = [
    (P(MATMUL, P(SOFTMAX, ANY("scores"), name="probs", one_use=True), ANY("v"), name="out"), fuse_attention),
    (P(HEAD_MERGES, MERGED, name="out"), fold_heads),
    (P(HEAD_MERGES, P(COPIES, MERGED, one_use=True), name="out"), fold_heads),
    (P((SDPA, MHA), ANY(), ANY(), ANY(), PARAM("mask"), name="out"), drop_neutral_mask),
]


@register_pass("fuse-attention")
@dataclass(frozen=True)
class FuseAttention(Pass):
    """Attention fusion: the explicit softmax(QK^T)V chain becomes one scaled_dot_product_attention (Dao et al. 2022).

    With exactly the head split before and the head merge after it, it becomes one multi-head attention on
    [batch, seq, hidden] (the form fused ONNX Runtime kernels take); an all-True / all-zero constant mask is dropped.
    """

    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        fired = apply_rules(graph, ATTENTION_RULES, self)
        stats = {"fused": fired["fuse_attention"], "heads_folded": fired["fold_heads"],
                 "masks_dropped": fired["drop_neutral_mask"]}
        return PassResult(bool(fired), stats)
