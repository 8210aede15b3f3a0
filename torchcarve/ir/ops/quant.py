"""Quantization ops: affine quantize/dequantize (ONNX QuantizeLinear/DequantizeLinear semantics) and
the dynamically quantized linear that ONNX Runtime runs as DynamicQuantizeMatMul.

Scales and zero points are tensor inputs (param nodes), never attributes; attributes carry only the
axis and block size. Each kernel is a self-contained function: the PyTorch backend inlines its source.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ...errors import ShapeError
from ..types import TensorType
from . import OpDef, register_op
from .aten import last_dim_macs


def carve_quantize(x, scale, zero_point, axis=1):
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point), per tensor or per `axis`."""
    if scale.dim() == 1 and x.dim() > 1:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    info = torch.iinfo(zero_point.dtype)
    q = torch.round(x / scale) + zero_point.to(x.dtype)
    return q.clamp(info.min, info.max).to(zero_point.dtype)


def carve_dequantize(q, scale, zero_point=None, axis=1, block_size=0):
    """ONNX DequantizeLinear: (q - zero_point) * scale, per tensor, per `axis`, or in blocks along `axis`."""
    if zero_point is None:
        zero_point = torch.zeros_like(scale, dtype=q.dtype)
    if block_size:
        axis = axis % q.dim()
        scale = scale.repeat_interleave(block_size, dim=axis).narrow(axis, 0, q.shape[axis])
        zero_point = zero_point.repeat_interleave(block_size, dim=axis).narrow(axis, 0, q.shape[axis])
    elif scale.dim() == 1 and q.dim() > 1:
        shape = [1] * q.dim()
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return (q.to(scale.dtype) - zero_point.to(scale.dtype)) * scale


def carve_dynamic_linear(x, weight, weight_scale, bias=None):
    """ONNX Runtime's DynamicQuantizeMatMul: x -> uint8 per tensor at run time (DynamicQuantizeLinear),
    exact integer products with the symmetric int8 `weight` [out, in], then rescale and add the bias."""
    low = torch.clamp(x.min(), max=0.0)
    high = torch.clamp(x.max(), min=0.0)
    scale = torch.where(high > low, (high - low) / 255.0, torch.ones_like(high))
    zero_point = torch.clamp(0.0 - low / scale, 0.0, 255.0).round()
    q = torch.clamp(torch.round(x / scale) + zero_point, 0.0, 255.0)
    acc = torch.matmul((q - zero_point).double(), weight.double().t())  # exact: |acc| < 2**31
    y = acc.float() * (scale * weight_scale)
    return y if bias is None else y + bias


def _bind(inputs: Sequence[Any], attrs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    return list(inputs), dict(attrs)


def _check(ok: bool, op: str, message: str, types: Sequence[TensorType]) -> None:
    if not ok:
        raise ShapeError(f"{op}: {message}", hint=f"input types: {', '.join(map(str, types))}")


def _check_scale(op: str, data: TensorType, types: list[TensorType], attrs: dict[str, Any]) -> None:
    scale = types[1]
    _check(scale.dtype in ("f32", "f16", "bf16"), op, "scale must be a float tensor", types)
    _check(len(types) < 3 or types[2].shape == scale.shape, op, "zero point and scale differ in shape", types)
    if attrs.get("block_size"):
        _check(scale.rank == data.rank, op, "a blocked scale has the rank of the data", types)
        return
    _check(scale.rank == 0 or (scale.rank == 1 and data.rank >= 1), op, "scale must be a scalar or 1-D", types)
    if scale.rank == 1 and data.rank > 1:
        axis = attrs.get("axis", 1)
        _check(-data.rank <= axis < data.rank, op, f"axis {axis} out of range", types)
        _check(data.shape[axis] == scale.shape[0], op, f"scale length differs from dim {axis}", types)


def infer_quantize(attrs: dict[str, Any], types: list[TensorType]) -> list[TensorType]:
    _check(len(types) == 3 and types[2].dtype in ("i8", "u8"), "carve.quantize",
           "expects (x, scale, zero_point) with an i8/u8 zero point", types)
    _check_scale("carve.quantize", types[0], types, attrs)
    return [TensorType(types[0].shape, types[2].dtype)]


def infer_dequantize(attrs: dict[str, Any], types: list[TensorType]) -> list[TensorType]:
    _check(len(types) in (2, 3) and types[0].dtype in ("i8", "u8", "i32"), "carve.dequantize",
           "expects (q, scale[, zero_point]) with integer q", types)
    _check_scale("carve.dequantize", types[0], types, attrs)
    return [TensorType(types[0].shape, types[1].dtype)]


def infer_dynamic_linear(attrs: dict[str, Any], types: list[TensorType]) -> list[TensorType]:
    op = "carve.dynamic_linear"
    _check(len(types) in (3, 4) and types[1].dtype == "i8" and types[1].rank == 2, op,
           "expects (x, weight: i8[out,in], weight_scale[, bias])", types)
    x, weight, scale = types[0], types[1], types[2]
    out_features, in_features = weight.shape
    _check(x.rank >= 1 and x.shape[-1] == in_features, op, "x's last dim differs from the weight's in-features", types)
    _check(scale.shape in ((), (1,), (out_features,)), op, "weight_scale must be a scalar or [out]", types)
    _check(len(types) == 3 or types[3].shape == (out_features,), op, "bias must be [out]", types)
    return [TensorType((*x.shape[:-1], out_features), x.dtype)]


KEEP = {"keep_in_export": True}  # exporters and constant folding leave these nodes as they are
QUANTIZE = register_op(OpDef(name="carve.quantize", fn=carve_quantize, bind=_bind, attrs=frozenset({"axis"}),
                             infer=infer_quantize, known=True, extra=KEEP))
DEKEEP = {"keep_in_export": True}  # exporters and constant folding leave these nodes as they are
QUANTIZE = register_op(OpDef(name="carve.dequantize", fn=carve_dequantize, bind=_bind,
                               attrs=frozenset({"axis", "block_size"}), infer=infer_dequantize, known=True, extra=KEEP))
DYNAMIC_LINEAR = register_op(OpDef(name="carve.dynamic_linear", fn=carve_dynamic_linear, bind=_bind,
                                   attrs=frozenset(), infer=infer_dynamic_linear, macs=last_dim_macs(0), known=True,
                                   extra=KEEP))
