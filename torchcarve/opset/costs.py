"""Cost rules: (node, sizes) -> multiply-accumulates (MACs) of one node, `sizes` binding symbolic dims."""
from __future__ import annotations

import math
from typing import Any, Callable

from ..ir.types import concrete_dim


def _numel(value: Any, sizes: dict[str, int]) -> int:
    return value.type.numel(sizes)


def conv_macs(node: Any, sizes: dict[str, int]) -> int:
    # out elements x (in channels per group x kernel area)
    weight = node.inputs[1].type
    return _numel(node.outputs[0], sizes) * math.prod(weight.shape[1:])


def conv_transpose_macs(node: Any, sizes: dict[str, int]) -> int:
    # every input element is scattered through out_channels/groups x kernel area
    weight = node.inputs[1].type
    return _numel(node.inputs[0], sizes) * math.prod(weight.shape[1:])


def last_dim_macs(operand: int) -> Callable[[Any, dict[str, int]], int]:
    """MACs = out elements x the contracted dim, read from input `operand`'s last axis."""
    def macs(node: Any, sizes: dict[str, int]) -> int:
        return _numel(node.outputs[0], sizes) * _dim(node.inputs[operand].type.shape[-1], sizes)
    return macs


def matmul_macs(node: Any, sizes: dict[str, int]) -> int:
    # contracted dim: the second-to-last of the right operand (its only dim when 1-D)
    rhs = node.inputs[1].type.shape
    return _numel(node.outputs[0], sizes) * _dim(rhs[-2] if len(rhs) > 1 else rhs[0], sizes)


def addmm_macs(node: Any, sizes: dict[str, int]) -> int:
    return _numel(node.outputs[0], sizes) * _dim(node.inputs[1].type.shape[-1], sizes)


def attention_macs(node: Any, sizes: dict[str, int]) -> int:
    # QK^T and AV: 2 x (batch, heads, L, S, D)
    keys = node.inputs[1].type.shape
    return 2 * _numel(node.inputs[0], sizes) * _dim(keys[-2], sizes)


def _dim(dim: Any, sizes: dict[str, int]) -> int:
    return concrete_dim(dim, sizes)


def mha_macs(node: Any, sizes: dict[str, int]) -> int:
    """carve.multi_head_attention on [batch, seq, heads * head_dim] tensors."""
    # q k^T: every query element meets every key; probs v: every output element sums over the keys
    keys = concrete_dim(node.inputs[1].type.shape[1], sizes)
    return (node.inputs[0].type.numel(sizes) + node.outputs[0].type.numel(sizes)) * keys


def qkv_attention_macs(node: Any, sizes: dict[str, int]) -> int:
    """carve.qkv_attention / dynamic_qkv_attention: the packed q|k|v projection, then attention over the keys."""
    x, weight, out = node.inputs[0].type, node.inputs[1].type, node.outputs[0].type
    projection = x.numel(sizes) // _dim(x.shape[-1], sizes) * weight.shape[0] * weight.shape[1]
    return projection + 2 * out.numel(sizes) * concrete_dim(x.shape[1], sizes)
