"""carve.multi_head_attention: attention on [batch, seq, heads * head_dim] tensors, heads split and merged inside.

It is the form ONNX Runtime's fused kernels take (opset-23 `Attention`, com.microsoft `MultiHeadAttention`),
so an exported model keeps no head split/merge transposes. Attributes: num_heads, kv_num_heads (GQA;
omitted: num_heads), scale (omitted: 1/sqrt(head_dim)), is_causal. The optional mask broadcasts to
[batch, heads, q_len, kv_len] as in scaled_dot_product_attention. The kernel is self-contained: the
PyTorch backend inlines its source; shapes are inferred by running it on meta tensors.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .opdef import OpDef


def carve_multi_head_attention(query, key, value, attn_mask=None, *, num_heads, kv_num_heads=None, scale=None,
                               is_causal=False):
    """Split [B, S, heads*H] into heads, scaled_dot_product_attention, merge back to [B, S, heads*Hv]."""
    kv_heads = kv_num_heads or num_heads
    q = query.unflatten(-1, (num_heads, -1)).transpose(1, 2)
    k = key.unflatten(-1, (kv_heads, -1)).transpose(1, 2)
    v = value.unflatten(-1, (kv_heads, -1)).transpose(1, 2)
    if kv_heads != num_heads:  # GQA: each k/v head serves num_heads // kv_heads query heads
        k = k.repeat_interleave(num_heads // kv_heads, dim=1)
        v = v.repeat_interleave(num_heads // kv_heads, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask, scale=scale, is_causal=is_causal)
    return out.transpose(1, 2).flatten(2)


def _bind(inputs: Sequence[Any], attrs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    return list(inputs), dict(attrs)


MULTI_HEAD_ATTENTION = OpDef(
    name="carve.multi_head_attention", fn=carve_multi_head_attention, bind=_bind,
    attrs=frozenset({"num_heads", "kv_num_heads", "scale", "is_causal"}))
OPS = [MULTI_HEAD_ATTENTION]
