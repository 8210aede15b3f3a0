"""Fused forms ONNX Runtime has contrib kernels for: add + layer norm, bias + gelu, and attention with its
q/k/v projections packed into one weight. `ort-contrib` (passes/fuse/contrib.py) rewrites the IR into them;
their lowerings (opset/norm.py, elementwise.py, attention.py) write com.microsoft SkipLayerNormalization,
BiasGelu/FastGelu, Attention and QAttention. Each kernel computes exactly what the unfused ops did.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .attention import carve_multi_head_attention
from .opdef import OpDef
from .quant import carve_dynamic_linear


def carve_skip_layer_norm(x, skip, weight, bias, add_bias=None, *, eps):
    """(layer_norm(x + skip [+ add_bias]) over the last dim, the sum): SkipLayerNormalization's outputs 0 and 3."""
    total = x + skip if add_bias is None else x + skip + add_bias
    return torch.nn.functional.layer_norm(total, total.shape[-1:], weight, bias, eps), total


def carve_bias_gelu(x, bias=None, *, approximate="none"):
    """gelu(x [+ bias]): BiasGelu (erf) or FastGelu (tanh approximation)."""
    return torch.nn.functional.gelu(x if bias is None else x + bias, approximate=approximate)


def carve_qkv_attention(x, weight, bias, attn_mask=None, *, num_heads, scale=None, is_causal=False):
    """Multi-head attention of q, k, v = linear(x, weight [3D, D], bias [3D]) split in three along the features."""
    query, key, value = torch.nn.functional.linear(x, weight, bias).chunk(3, dim=-1)
    return carve_multi_head_attention(query, key, value, attn_mask, num_heads=num_heads, scale=scale,
                                      is_causal=is_causal)


def carve_dynamic_qkv_attention(x, weight, weight_scale, bias, attn_mask=None, *, num_heads, scale=None,
                                is_causal=False):
    """carve_qkv_attention with the projection as carve.dynamic_linear (int8 weight [3D, D], its scale)."""
    query, key, value = carve_dynamic_linear(x, weight, weight_scale, bias).chunk(3, dim=-1)
    return carve_multi_head_attention(query, key, value, attn_mask, num_heads=num_heads, scale=scale,
                                      is_causal=is_causal)


carve_qkv_attention.calls = (carve_multi_head_attention,)
carve_dynamic_qkv_attention.calls = (carve_dynamic_linear, carve_multi_head_attention)


def _bind(inputs: Sequence[Any], attrs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    return list(inputs), dict(attrs)


ATTENTION_ATTRS = frozenset({"num_heads", "scale", "is_causal"})
OPS = [
    OpDef(name="carve.skip_layer_norm", fn=carve_skip_layer_norm, bind=_bind, attrs=frozenset({"eps"})),
    OpDef(name="carve.bias_gelu", fn=carve_bias_gelu, bind=_bind, attrs=frozenset({"approximate"})),
    OpDef(name="carve.qkv_attention", fn=carve_qkv_attention, bind=_bind, attrs=ATTENTION_ATTRS),
    OpDef(name="carve.dynamic_qkv_attention", fn=carve_dynamic_qkv_attention, bind=_bind, attrs=ATTENTION_ATTRS),
]
