"""Quantization ops: affine quantize/dequantize (ONNX QuantizeLinear/DequantizeLinear semantics), the
dynamically quantized linear that ONNX Runtime runs as DynamicQuantizeMatMul, the weight-only linear it
runs as MatMulNBits, and the lookup in an int8 embedding table.

Scales and zero points are tensor inputs (param nodes), never attributes; attributes carry only the
axis, block size and bit width. The kernels of quantize, dequantize and dynamic_linear are the ONNX ops'
own (ir/ops/onnx_ops.py), so an imported QuantizeLinear/DequantizeLinear/DynamicQuantizeMatMul computes
the same as the op it becomes; the PyTorch backend copies their source (and that of the kernels they
call) into the generated code.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ...errors import ShapeError
from ..types import TensorType
from .opdef import OpDef
from .onnx_ops import onnx_dequantize_linear, onnx_dynamic_quantize_matmul, onnx_quantize_linear


def carve_quantize(x, scale, zero_point, axis=1):
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point), per tensor or per `axis`."""
    return onnx_quantize_linear(x, scale, zero_point, axis)


def carve_dequantize(q, scale, zero_point=None, axis=1, block_size=0):
    """ONNX DequantizeLinear: (q - zero_point) * scale, per tensor, per `axis`, or in blocks along `axis`."""
    return onnx_dequantize_linear(q, scale, zero_point, axis, block_size)


def carve_dynamic_linear(x, weight, weight_scale, bias=None):
    """ONNX Runtime's DynamicQuantizeMatMul: x -> uint8 per tensor at run time (DynamicQuantizeLinear),
    exact integer products with the symmetric int8 `weight` [out, in], then rescale and add the bias."""
    return onnx_dynamic_quantize_matmul(x, weight.t(), weight_scale, None, bias)


carve_quantize.calls = (onnx_quantize_linear,)
carve_dequantize.calls = (onnx_dequantize_linear,)
carve_dynamic_linear.calls = (onnx_dynamic_quantize_matmul,)


def carve_weight_only_linear(x, weight, weight_scale, bias=None, bits=8, block_size=0, accuracy_level=0):
    """x @ W.T + bias, W = weight * scale dequantized at run time (ONNX Runtime's MatMulNBits): `weight`
    [out, in] holds `bits`-bit integers; one scale per tensor, per output, or per `block_size` inputs.
    accuracy_level only tells ORT how to compute (4: int8 activations per block); here it is float."""
    axis = 1 if block_size else 0  # blocks run along the inputs; otherwise one scale per output row
    return torch.nn.functional.linear(x, onnx_dequantize_linear(weight, weight_scale, None, axis, block_size), bias)


carve_weight_only_linear.calls = (onnx_dequantize_linear,)


def carve_quantized_embedding(weight, scale, indices):
    """Rows of an int8 table [rows, dim] times their scale (scale [rows]: one per row; []: one for all)."""
    row_scale = scale[indices].unsqueeze(-1) if scale.dim() else scale
    return weight[indices].to(scale.dtype) * row_scale


def pack_nbits(q: torch.Tensor, bits: int, block_size: int) -> torch.Tensor:
    """MatMulNBits' B from symmetric integers q [N, K]: uint8 [N, blocks, block_size * bits / 8] holding
    q + 2^(bits-1) (its default zero point), rows padded with that code to whole blocks, 4-bit codes two
    to a byte, low nibble first."""
    zero = 2 ** (bits - 1)
    rows, columns = q.shape
    codes = (q.to(torch.int16) + zero).to(torch.uint8)
    codes = torch.nn.functional.pad(codes, (0, -columns % block_size), value=zero).reshape(rows, -1, block_size)
    return codes if bits == 8 else codes[..., 0::2] | (codes[..., 1::2] << 4)


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


def infer_weight_only_linear(attrs: dict[str, Any], types: list[TensorType]) -> list[TensorType]:
    op = "carve.weight_only_linear"
    _check(len(types) in (3, 4) and types[1].dtype == "i8" and types[1].rank == 2, op,
           "expects (x, weight: i8[out,in], weight_scale[, bias])", types)
    _check(attrs.get("bits", 8) in (4, 8), op, f"bits must be 4 or 8, not {attrs.get('bits')}", types)
    x, weight, scale = types[0], types[1], types[2]
    out_features, in_features = weight.shape
    block_size = attrs.get("block_size", 0)
    shapes = [(out_features, -(-in_features // block_size))] if block_size else [(), (1,), (out_features,)]
    _check(x.dtype in ("f32", "f16", "bf16") and x.rank >= 1 and x.shape[-1] == in_features, op,
           "x must be float, its last dim the weight's in-features", types)
    _check(scale.dtype == x.dtype and scale.shape in shapes, op,
           f"weight_scale must have x's dtype and a shape in {shapes}", types)
    _check(len(types) == 3 or types[3].shape == (out_features,), op, "bias must be [out]", types)
    return [TensorType((*x.shape[:-1], out_features), x.dtype)]


def infer_quantized_embedding(attrs: dict[str, Any], types: list[TensorType]) -> list[TensorType]:
    op = "carve.quantized_embedding"
    _check(len(types) == 3 and types[0].dtype == "i8" and types[0].rank == 2, op,
           "expects (weight: i8[rows,dim], scale, indices)", types)
    weight, scale, indices = types
    _check(scale.dtype in ("f32", "f16", "bf16") and scale.shape in ((), weight.shape[:1]), op,
           "scale must be a float [] or [rows]", types)
    _check(indices.dtype in ("i64", "i32"), op, "indices must be i64 or i32", types)
    return [TensorType((*indices.shape, weight.shape[1]), scale.dtype)]


KEEP = {"keep_in_export": True}  # exporters and constant folding leave these nodes as they are
QUANTIZE = OpDef(name="carve.quantize", fn=carve_quantize, bind=_bind, attrs=frozenset({"axis"}),
                 infer=infer_quantize, extra=KEEP)
DEQUANTIZE = OpDef(name="carve.dequantize", fn=carve_dequantize, bind=_bind,
                   attrs=frozenset({"axis", "block_size"}), infer=infer_dequantize, extra=KEEP)
DYNAMIC_LINEAR = OpDef(name="carve.dynamic_linear", fn=carve_dynamic_linear, bind=_bind,
                       attrs=frozenset(), infer=infer_dynamic_linear, extra=KEEP)
WEIGHT_ONLY_LINEAR = OpDef(name="carve.weight_only_linear", fn=carve_weight_only_linear, bind=_bind,
                           attrs=frozenset({"bits", "block_size", "accuracy_level"}),
                           infer=infer_weight_only_linear, extra=KEEP)
QUANTIZED_EMBEDDING = OpDef(name="carve.quantized_embedding", fn=carve_quantized_embedding, bind=_bind,
                            attrs=frozenset(), infer=infer_quantized_embedding, extra=KEEP)
OPS = [QUANTIZE, DEQUANTIZE, DYNAMIC_LINEAR, WEIGHT_ONLY_LINEAR, QUANTIZED_EMBEDDING]
