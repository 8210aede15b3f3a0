"""Canonical rules of quantized ONNX graphs (QUANT_CANONICAL, part of onnx_canonical.CANONICAL).

The quantization ops, and the forms the ONNX backend (opset/quant.py) writes the carve.* ops
in, become those carve.* ops again, so a quantized graph re-imports as itself and its integer weights
stay integer params:

- QuantizeLinear / DequantizeLinear                     -> carve.quantize / carve.dequantize
- com.microsoft DynamicQuantizeMatMul (int8, no zero point), and onnxruntime's quantize_dynamic
  DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul   -> carve.dynamic_linear
- com.microsoft MatMulNBits (no zero points), and
  MatMul(x, Transpose(DequantizeLinear(Wq, s)))          -> carve.weight_only_linear
- Add(a bias-less linear above, b)                      -> that linear with bias b
- Mul(Cast(Gather(Tq, i)), Gather(S, i) or S)           -> carve.quantized_embedding
Anything else keeps the plain aten rule (Add, Mul, MatMul) or stays an onnx.* op with its own kernel.
"""
from __future__ import annotations

from typing import Any

import torch

from ..ir import Graph
from ..ir.node import Node
from ..ir.ops.onnx_ops import INTERNAL_ATTRS, onnx_nbits_codes
from ..ir.value import Value
from .onnx_canon_kit import Aten, Result, operands, param_tensor, same_operands

QUANTIZE_ATTRS = {"axis", "block_size", "saturate", "output_dtype"}  # saturate: float8 only; output_dtype: type-checked
# the ONNX backend's names for its copies of a weight: DynamicQuantizeMatMul's [in, out], MatMulNBits' packed
TRANSPOSED_SUFFIX, NBITS_SUFFIX = "_t", "_nbits"
WEIGHT_ONLY_BITS = (4, 8)          # carve.weight_only_linear's widths
NBITS_ATTRS = {"K", "N", "block_size"}  # MatMulNBits' required attributes
SCALE_AXIS = {1: 0, 2: 1}          # a weight-only scale's rank -> its DequantizeLinear axis: per output, per block
BIASED = ("carve.weight_only_linear", "carve.dynamic_linear")  # linears whose optional 4th input is the bias


def quantize_linear(node: Node, graph: Graph) -> Result:
    # QuantizeLinear(x, s, z){axis} -> carve.quantize(x, s, z){axis}   f32 x and scale, a zero point, no blocks
    x, scale, zero_point = (operands(node) + [None])[:3]
    if zero_point is None or node.attrs.get("block_size") or not _only_attrs(node, QUANTIZE_ATTRS):
        return None
    if x.type.dtype != "f32" or scale.type.dtype != "f32":
        return None
    return Aten("carve.quantize", [x, scale, zero_point], _axis_attrs(node))


def dequantize_linear(node: Node, graph: Graph) -> Result:
    # DequantizeLinear(q, s, z){axis, block_size} -> carve.dequantize(q, s, z){axis, block_size}   i8/u8/i32 q
    q, scale, zero_point = (operands(node) + [None])[:3]
    if not _only_attrs(node, QUANTIZE_ATTRS - {"saturate"}):
        return None
    return Aten("carve.dequantize", [q, scale] + ([zero_point] if zero_point is not None else []), _axis_attrs(node))


def _axis_attrs(node: Node) -> dict[str, Any]:
    """axis as the file gives it; block_size unless 0 (not blocked)."""
    attrs = {"axis": node.attrs["axis"]} if "axis" in node.attrs else {}
    return attrs | ({"block_size": node.attrs["block_size"]} if node.attrs.get("block_size") else {})


def _only_attrs(node: Node, allowed: set[str]) -> bool:
    return set(node.attrs) <= allowed | INTERNAL_ATTRS


def dynamic_quantize_matmul(node: Node, graph: Graph) -> Result:
    # com.microsoft DynamicQuantizeMatMul(A, B, s, z, bias) -> carve.dynamic_linear(A, B^T, s, bias)
    #   B an int8 [in, out] param, z absent or zero (carve.dynamic_linear's weights are symmetric)
    a, b, scale, zero_point, bias = (operands(node) + [None] * 2)[:5]
    return _dynamic_linear(graph, a, b, zero_point, scale, bias)


def _dynamic_linear(graph: Graph, x: Value, weight: Value, weight_zero: Value | None, scale: Value,
                    bias: Value | None = None) -> Result:
    """carve.dynamic_linear(x, weight^T, scale, bias) for an int8 [in, out] weight param whose zero point
    is absent or zero (carve.dynamic_linear's weights are symmetric)."""
    tensor = param_tensor(weight, graph)
    if tensor is None or tensor.dtype != torch.int8 or not _absent_or_zero(weight_zero, graph):
        return None
    transposed = _param_like(weight, graph, tensor.t().contiguous(), TRANSPOSED_SUFFIX, ".T")
    return Aten("carve.dynamic_linear", [x, transposed, scale] + ([bias] if bias is not None else []), {})


def matmul_nbits(node: Node, graph: Graph) -> Result:
    # com.microsoft MatMulNBits(A, B, s, bias){K, N, bits, block_size} -> carve.weight_only_linear(A, W, s, bias)
    #   {bits, block_size}, W = codes - 2^(bits-1) as int8 [N, K]: no zero points, no g_idx, fp32 accuracy
    a, b, scales, zero_points, g_idx, bias = (operands(node) + [None] * 3)[:6]
    packed, scale = param_tensor(b, graph), param_tensor(scales, graph)
    attrs = node.attrs
    bits = attrs.get("bits", 4)
    if packed is None or scale is None or zero_points is not None or g_idx is not None:
        return None
    if bits not in WEIGHT_ONLY_BITS or attrs.get("accuracy_level", 0) > 1 or not NBITS_ATTRS <= attrs.keys():
        return None
    if packed.dim() != 3 or packed.shape[0] != attrs["N"]:
        return None
    codes = onnx_nbits_codes(packed, attrs["N"], bits)[:, :attrs["K"]]
    weight = _param_like(b, graph, (codes.to(torch.int16) - 2 ** (bits - 1)).to(torch.int8), NBITS_SUFFIX, ".int8")
    if scale.dim() != 2:
        scales = _param_like(scales, graph, scale.reshape(attrs["N"], -1), "", ".blocks")
    inputs = [a, weight, scales] + ([bias] if bias is not None else [])
    return Aten("carve.weight_only_linear", inputs, {"bits": bits, "block_size": attrs["block_size"]})


def matmul(node: Node, graph: Graph) -> Result:
    # MatMul(x, Transpose(DequantizeLinear(Wq, s))) -> carve.weight_only_linear(x, Wq, s){bits=8, block_size}
    #   (the ONNX backend's form of an int8 weight-only linear);  else MatMul(a, b) -> aten.matmul(a, b)
    return _weight_only_matmul(node, graph) or same_operands("aten.matmul", node, graph)


def _weight_only_matmul(node: Node, graph: Graph) -> Result:
    """The carve.weight_only_linear of x @ dequantize(Wq, s)^T: symmetric int8 Wq [out, in], one scale per
    tensor, per output (axis 0) or per block of inputs (axis 1); 4 bits where the blocked weight fits them
    (the backend then wrote it as INT4)."""
    x, transposed = node.inputs
    permute = transposed.producer
    if permute is None or permute.op != "aten.permute" or list(permute.attrs.get("dims", ())) != [1, 0]:
        return None
    dequantize = permute.inputs[0].producer
    if dequantize is None or dequantize.op != "carve.dequantize" or len(dequantize.inputs) != 2:
        return None
    q, scale = dequantize.inputs
    axis = dequantize.attrs.get("axis", 1) % 2
    if q.type.dtype != "i8" or q.type.rank != 2 or (scale.type.rank and axis != SCALE_AXIS[scale.type.rank]):
        return None
    block_size = dequantize.attrs.get("block_size", 0)
    if not block_size:
        return Aten("carve.weight_only_linear", [x, q, scale], {"bits": 8})
    tensor = param_tensor(q, graph)
    bits = 4 if tensor is not None and -8 <= int(tensor.min()) and int(tensor.max()) <= 7 else 8
    return Aten("carve.weight_only_linear", [x, q, scale], {"bits": bits, "block_size": block_size})


def add(node: Node, graph: Graph) -> Result:
    # Add(linear(x, W, s), b) -> linear(x, W, s, b)   a BIASED op without a bias, read only here;  else aten.add
    return _bias_folded(node) or same_operands("aten.add.Tensor", node, graph)


def _bias_folded(node: Node) -> Result:
    y, bias = node.inputs
    linear = y.producer
    if linear is None or linear.op not in BIASED or len(linear.inputs) != 3:
        return None
    if len(y.uses) != 1 or y.is_graph_output:
        return None
    return Aten(linear.op, [*linear.inputs, bias], dict(linear.attrs))


def mul(node: Node, graph: Graph) -> Result:
    # Mul(Cast(Gather(Tq, i)), Gather(S, i) or S) -> carve.quantized_embedding(Tq, S, i)   (the ONNX backend's
    #   int8 embedding: Tq an i8 [rows, dim] table, a scale per row or one for all)
    # Mul(Cast(MatMulInteger(q, W, z, 0)), Mul(s, ws)) -> carve.dynamic_linear(x, W^T, ws)   (q, s, z from
    #   DynamicQuantizeLinear(x): onnxruntime's quantize_dynamic linear; W an int8 [in, out] param);  else aten.mul
    return (_quantized_embedding(node, graph) or _integer_matmul(node, graph)
            or same_operands("aten.mul.Tensor", node, graph))


def _integer_matmul(node: Node, graph: Graph) -> Result:
    accumulator, scales = node.inputs
    cast = accumulator.producer
    matmul = cast.inputs[0].producer if cast is not None and cast.op == "onnx.Cast" else None
    if matmul is None or matmul.op != "onnx.MatMulInteger":
        return None
    q, weight, zero, weight_zero = (operands(matmul) + [None] * 2)[:4]
    quantize, product = q.producer, scales.producer
    if quantize is None or quantize.op != "onnx.DynamicQuantizeLinear" or zero is not quantize.outputs[2]:
        return None
    if product is None or product.op != "aten.mul.Tensor" or product.inputs[0] is not quantize.outputs[1]:
        return None
    return _dynamic_linear(graph, quantize.inputs[0], weight, weight_zero, product.inputs[1])


def _quantized_embedding(node: Node, graph: Graph) -> Result:
    rows, row_scale = node.inputs
    cast = rows.producer
    if cast is None or cast.op != "onnx.Cast":
        return None
    gather = cast.inputs[0].producer
    if gather is None or gather.op != "aten.embedding" or gather.inputs[0].type.dtype != "i8":
        return None
    table, indices = gather.inputs[:2]
    scale = _table_scale(row_scale, indices, graph, table)
    return None if scale is None else Aten("carve.quantized_embedding", [table, scale, indices], {})


def _table_scale(value: Value, indices: Value, graph: Graph, table: Value) -> Value | None:
    """A quantized table's scale: a scalar param, or the [rows] scales behind a Gather of their [rows, 1]
    column by the table's indices (a new param, named like the table)."""
    if value.type.rank == 0:
        return value if param_tensor(value, graph) is not None else None
    gather = value.producer
    if gather is None or gather.op != "aten.embedding" or gather.inputs[1] is not indices:
        return None
    column = param_tensor(gather.inputs[0], graph)
    if column is None or column.shape[1:] != (1,):
        return None
    name = table.producer.attrs["name"]
    return graph.add_param(graph.params.unique_name(f"{name.removesuffix('_q')}_scale"), column.reshape(-1))


def _param_like(value: Value, graph: Graph, tensor: torch.Tensor, suffix: str, tag: str) -> Value:
    """A new param for `tensor`, made from the param behind `value`: named as the weight was before the ONNX
    backend added `suffix` to its copy, else `<param><tag>`."""
    name = value.producer.attrs["name"]
    base = name.removesuffix(suffix) if suffix and name.endswith(suffix) else name + tag
    return graph.add_param(graph.params.unique_name(base), tensor)


def _absent_or_zero(value: Value | None, graph: Graph) -> bool:
    if value is None:
        return True
    tensor = param_tensor(value, graph)
    return tensor is not None and not tensor.any()


QUANT_CANONICAL = {
    "Add": add, "Mul": mul, "MatMul": matmul, "QuantizeLinear": quantize_linear, "DequantizeLinear": dequantize_linear,
    "com.microsoft.DynamicQuantizeMatMul": dynamic_quantize_matmul, "com.microsoft.MatMulNBits": matmul_nbits,
}
