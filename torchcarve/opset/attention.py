"""Attention ops: their costs, pruning rule and ONNX lowerings.

aten.scaled_dot_product_attention [B, N, S, H] -> Transpose/MatMul/Mul/Add/Softmax/MatMul.
carve.multi_head_attention [B, S, N*H] -> a fused kernel: from opset 23 the standard `Attention` (3-D inputs,
q_num_heads/kv_num_heads), before it ONNX Runtime's com.microsoft `MultiHeadAttention` with the mask as its
float `attention_bias`. What MultiHeadAttention cannot express (GQA, a causal mask over unequal lengths, dtypes
other than f32/f16) is split into heads and decomposed like sdpa.
carve.qkv_attention / carve.dynamic_qkv_attention (q, k, v projected by one packed weight) -> com.microsoft
`Attention` (float weights, the mask as attention_bias) / `QAttention` (int8 weights, the input quantized by
DynamicQuantizeLinear, a bool mask as its 3-D mask_index), causal as unidirectional=1: one GEMM for q, k and v
and no Split.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from ..errors import CarveError
from ..ir.node import Node
from ..ir.ops.aten import arguments
from . import prune_rules as prune
from .costs import attention_macs, mha_macs, qkv_attention_macs
from .decl import OpDecl, table
from .lowerings import BASE, _out, _static, _transposed, forms

if TYPE_CHECKING:
    from ..backends.onnx import LoweringContext

ATTENTION_OPSET = 23  # the standard Attention op
MICROSOFT = "com.microsoft"
MHA_DTYPES = ("f32", "f16")  # MultiHeadAttention's kernels (f16 on CPU and CUDA)


def sdpa(ctx: "LoweringContext", node: Node) -> None:
    """softmax(q k^T * scale + mask) v as MatMul/Softmax/MatMul (the pattern ORT fuses)."""
    args = arguments(node)
    query, key, value = args["query"], args["key"], args["value"]
    scale = args["scale"] if args["scale"] is not None else 1 / math.sqrt(_static(query.type.shape[-1], node))
    key_name, value_name = ctx.name(key), ctx.name(value)
    if args.get("enable_gqa") and query.type.shape[-3] != key.type.shape[-3]:
        heads, kv_heads = query.type.shape[-3], key.type.shape[-3]
        key_name = _repeat_heads(ctx, key_name, heads, kv_heads, key.type.shape[-1])
        value_name = _repeat_heads(ctx, value_name, heads, kv_heads, value.type.shape[-1])
    lengths = (query.type.shape[-2], key.type.shape[-2]) if args["is_causal"] else None
    qkv = [ctx.name(query), key_name, value_name]
    _decomposed(ctx, node, qkv, query.type.rank, args["attn_mask"], scale, lengths, _out(ctx, node))


def _decomposed(ctx: "LoweringContext", node: Node, qkv: list[str], rank: int, mask: Any, scale: float,
                causal_lengths: tuple | None, out: list[str]) -> None:
    """softmax(q k^T * scale + mask [+ causal]) v on rank-`rank` [..., L, E] tensors named `qkv`, into `out`."""
    query, key, value = qkv
    dtype = node.outputs[0].type.dtype
    key_t = ctx.emit("Transpose", [key], perm=list(range(rank - 2)) + [rank - 1, rank - 2])[0]
    scores = ctx.emit("MatMul", [query, key_t])[0]
    scores = ctx.emit("Mul", [scores, ctx.scalar(scale, dtype)])[0]
    if mask is not None:
        scores = ctx.emit("Add", [scores, _additive_mask(ctx, ctx.name(mask), mask.type.dtype, dtype)])[0]
    if causal_lengths is not None:
        rows, cols = (_static(d, node) for d in causal_lengths)
        scores = ctx.emit("Add", [scores, ctx.const(_causal_bias(rows, cols, node), "causal_mask")])[0]
    weights = ctx.emit("Softmax", [scores], axis=-1)[0]
    ctx.emit("MatMul", [weights, value], out)


def _causal_bias(rows: int, cols: int, node: Node) -> torch.Tensor:
    """0 on and below the diagonal, -inf above it (scaled_dot_product_attention's top-left causal mask)."""
    above = torch.ones(rows, cols, dtype=torch.bool).tril().logical_not()
    return torch.zeros(rows, cols).masked_fill(above, float("-inf")).to(node.outputs[0].type.torch_dtype)


def _additive_mask(ctx: "LoweringContext", mask: str, mask_dtype: str, dtype: str) -> str:
    """A bool mask (True: attend) as 0 / -inf; a float mask in the scores' dtype."""
    if mask_dtype != "bool":
        return ctx.cast(mask, mask_dtype, dtype)
    return ctx.emit("Where", [mask, ctx.scalar(0.0, dtype), ctx.scalar(float("-inf"), dtype)])[0]


def _repeat_heads(ctx: "LoweringContext", name: str, heads: int, kv_heads: int, head_dim: int) -> str:
    """GQA: [B, Hkv, S, D] -> [B, Hq, S, D] by repeating each kv head."""
    expanded = ctx.emit("Unsqueeze", [name, ctx.ints([-3])])[0]
    expanded = ctx.emit("Expand", [expanded, ctx.ints([1, 1, heads // kv_heads, 1, 1])])[0]
    return ctx.emit("Reshape", [expanded, ctx.ints([0, heads, -1, head_dim])])[0]


# ---- carve.multi_head_attention ------------------------------------------------------------
MHA = "carve.multi_head_attention"


def microsoft_attention(ctx: "LoweringContext", node: Node) -> None:
    """Before opset 23: MultiHeadAttention where it fits, else the decomposed form."""
    if _microsoft_fits(node):
        _microsoft_attention(ctx, node)
    else:
        _split_decomposed(ctx, node)


def _heads(node: Node) -> tuple[int, int]:
    heads = node.attrs["num_heads"]
    return heads, node.attrs.get("kv_num_heads") or heads


def _scale(node: Node) -> float:
    scale = node.attrs.get("scale")
    return scale if scale is not None else 1 / math.sqrt(node.inputs[0].type.shape[-1] // _heads(node)[0])


def _standard_attention(ctx: "LoweringContext", node: Node) -> None:
    query, key, value, *mask = node.inputs
    heads, kv_heads = _heads(node)
    inputs = [ctx.name(query), ctx.name(key), ctx.name(value)]
    if mask:  # bool (True: attend) or additive, as in torch
        name = ctx.input(mask[0], "bool" if mask[0].type.dtype == "bool" else query.type.dtype)
        inputs.append(_full_mask(ctx, name, mask[0].type.shape, query, key))
    ctx.emit("Attention", inputs, _out(ctx, node), q_num_heads=heads, kv_num_heads=kv_heads, scale=_scale(node),
             is_causal=int(node.attrs.get("is_causal", False)))


def _microsoft_fits(node: Node) -> bool:
    query, key = node.inputs[0].type, node.inputs[1].type
    heads, kv_heads = _heads(node)
    causal_ok = not node.attrs.get("is_causal") or query.shape[1] == key.shape[1]  # its causal mask is bottom-right
    return query.dtype in MHA_DTYPES and heads == kv_heads and causal_ok


def _microsoft_attention(ctx: "LoweringContext", node: Node) -> None:
    query, key, value, *mask = node.inputs
    inputs = [ctx.name(query), ctx.name(key), ctx.name(value)]
    if mask:
        bias = _additive_mask(ctx, ctx.name(mask[0]), mask[0].type.dtype, query.type.dtype)
        inputs += ["", "", _full_mask(ctx, bias, mask[0].type.shape, query, key)]  # no bias, no key_padding_mask
    ctx.extra_domains[MICROSOFT] = 1
    ctx.emit("MultiHeadAttention", inputs, _out(ctx, node), domain=MICROSOFT, num_heads=_heads(node)[0],
             scale=_scale(node), unidirectional=1 if node.attrs.get("is_causal") else None)


def _full_mask(ctx: "LoweringContext", name: str, shape: tuple, query: Any, key: Any) -> str:
    """A mask broadcastable to [B, N, Lq, Lkv] as a 4-D tensor whose last two dims are (Lq, Lkv), which is
    what the fused kernels take (they broadcast batch and heads only)."""
    rank = len(shape)
    if rank < 4:
        name = ctx.emit("Unsqueeze", [name, ctx.ints(list(range(4 - rank)))])[0]
    lengths = (query.type.shape[1], key.type.shape[1])
    if tuple(shape[-2:]) == lengths:
        return name
    if all(isinstance(d, int) for d in lengths):
        return ctx.emit("Expand", [name, ctx.ints([1, 1, *lengths])])[0]
    dims = [ctx.ints([1, 1])] + [ctx.emit("Shape", [ctx.name(v)], start=1, end=2)[0] for v in (query, key)]
    return ctx.emit("Expand", [name, ctx.emit("Concat", dims, axis=0)[0]])[0]


def _split_decomposed(ctx: "LoweringContext", node: Node) -> None:
    """Split heads ([B, S, N*H] -> [B, N, S, H]), decompose as sdpa, merge heads back."""
    query, key, value, *mask = node.inputs
    heads, kv_heads = _heads(node)
    split = [_split_heads(ctx, ctx.name(v), n) for v, n in ((query, heads), (key, kv_heads), (value, kv_heads))]
    if kv_heads != heads:
        split[1:] = [_repeat_heads(ctx, name, heads, kv_heads, v.type.shape[-1] // kv_heads)
                     for name, v in zip(split[1:], (key, value))]
    lengths = (query.type.shape[1], key.type.shape[1]) if node.attrs.get("is_causal") else None
    attended = ctx.fresh(f"{node.outputs[0].name}_heads")
    _decomposed(ctx, node, split, 4, mask[0] if mask else None, _scale(node), lengths, [attended])
    merged = ctx.emit("Transpose", [attended], perm=[0, 2, 1, 3])[0]
    ctx.emit("Reshape", [merged, ctx.ints([0, 0, -1])], _out(ctx, node))


def _split_heads(ctx: "LoweringContext", name: str, heads: int) -> str:
    viewed = ctx.emit("Reshape", [name, ctx.ints([0, 0, heads, -1])])[0]
    return ctx.emit("Transpose", [viewed], perm=[0, 2, 1, 3])[0]


# ---- carve.qkv_attention, carve.dynamic_qkv_attention -----------------------------------------
def qkv_attention(ctx: "LoweringContext", node: Node) -> None:
    """com.microsoft Attention: x @ W^T + b gives q|k|v; a mask becomes its float attention_bias."""
    x, weight, bias, *mask = node.inputs
    inputs = [ctx.name(x), _transposed(ctx, weight), ctx.name(bias)]
    if mask:
        name = _additive_mask(ctx, ctx.name(mask[0]), mask[0].type.dtype, x.type.dtype)
        inputs += ["", "", _full_mask(ctx, name, mask[0].type.shape, x, x)]  # no mask_index, no past
    ctx.extra_domains[MICROSOFT] = 1
    ctx.emit("Attention", inputs, _out(ctx, node), domain=MICROSOFT, num_heads=node.attrs["num_heads"],
             scale=_packed_scale(node), unidirectional=_unidirectional(node))


def dynamic_qkv_attention(ctx: "LoweringContext", node: Node) -> None:
    """DynamicQuantizeLinear(x) -> com.microsoft QAttention (int8 weight [D, 3D], per-tensor or per-column
    scale); a bool mask [B, 1, S, S] becomes its int32 mask_index [B, S, S] (1: attend)."""
    x, weight, weight_scale, bias, *mask = node.inputs
    quantized, scale, zero_point = ctx.emit("DynamicQuantizeLinear", [ctx.name(x)], 3)
    mask_index = ""
    if mask:
        _require_mask_index(node, mask[0], x)
        squeezed = ctx.emit("Squeeze", [ctx.name(mask[0]), ctx.ints([1])])[0]
        mask_index = ctx.cast(squeezed, "bool", "i32")
    inputs = [quantized, _transposed(ctx, weight), ctx.name(bias), scale, ctx.name(weight_scale), mask_index,
              zero_point]
    ctx.extra_domains[MICROSOFT] = 1
    ctx.emit("QAttention", inputs, _out(ctx, node), domain=MICROSOFT, num_heads=node.attrs["num_heads"],
             scale=_packed_scale(node), unidirectional=_unidirectional(node),
             mask_filter_value=float(torch.finfo(torch.float32).min))


def qattention_takes(mask: Any, x: Any) -> bool:
    """QAttention's mask is a 0/1 mask_index [B, S, S]: it can take a bool mask [B, 1, S, S] of x [B, S, D]."""
    batch, length = x.type.shape[:2]
    return mask.type.dtype == "bool" and mask.type.shape == (batch, 1, length, length)


def _require_mask_index(node: Node, mask: Any, x: Any) -> None:
    if not qattention_takes(mask, x):
        batch, length = x.type.shape[:2]
        raise CarveError(f"{node!r} ({node.op}): QAttention takes a bool mask [{batch}, 1, {length}, {length}] only, "
                         f"not {mask.type}", hint="use carve.multi_head_attention for other masks")


def _unidirectional(node: Node) -> int | None:
    """Causal self-attention (q and k of one length: ORT's mask is torch's top-left one)."""
    return 1 if node.attrs.get("is_causal") else None


def _packed_scale(node: Node) -> float:
    """The scale attribute, else 1/sqrt(head size) with the head size read from the packed weight [3D, D]."""
    scale = node.attrs.get("scale")
    return scale if scale is not None else 1 / math.sqrt(node.inputs[1].type.shape[0] // 3 // node.attrs["num_heads"])


ATTENTION = table(
    OpDecl("aten.scaled_dot_product_attention", macs=attention_macs, prune=prune.attention, lower=sdpa),
    OpDecl(MHA, macs=mha_macs, lower=forms((BASE, microsoft_attention), (ATTENTION_OPSET, _standard_attention))),
    OpDecl("carve.qkv_attention", macs=qkv_attention_macs, lower=qkv_attention),
    OpDecl("carve.dynamic_qkv_attention", macs=qkv_attention_macs, lower=dynamic_qkv_attention),
)
