"""The quantization ops (carve.*, kernels in ir/ops/quant.py) and their ONNX lowerings.

carve.quantize/dequantize -> QuantizeLinear/DequantizeLinear (QDQ; int4 weights as INT4 initializers,
blocked scales: DequantizeLinear's block_size, from opset 21); carve.dynamic_linear -> com.microsoft DynamicQuantizeMatMul, the op
ONNX Runtime fuses its own DynamicQuantizeLinear + MatMulInteger graphs into; carve.weight_only_linear
-> com.microsoft MatMulNBits (weights packed offline, dequantized block by block inside the matmul);
carve.quantized_embedding -> Gather of int8 rows and of their scales, Cast, Mul.
"""
from __future__ import annotations

import torch

from ..ir.node import Node
from ..ir.ops.quant import pack_nbits
from .costs import last_dim_macs
from .decl import OpDecl, table

MICROSOFT = "com.microsoft"
NBITS_MIN_BLOCK = 16   # MatMulNBits: block_size is a power of two >= 16
NBITS_BLOCK = 128      # the block used when one scale covers a whole row (the scale repeats per block)


def quantize(ctx, node: Node) -> None:
    x, scale, zero_point = node.inputs
    ctx.emit("QuantizeLinear", [ctx.name(x), ctx.name(scale), ctx.name(zero_point)], ctx.output_names(node),
             axis=_axis(node, scale))


def dequantize(ctx, node: Node) -> None:
    q, scale, *zero_point = node.inputs
    _dequantize_linear(ctx, q, scale, zero_point, _axis(node, scale), node.attrs.get("block_size", 0),
                       ctx.output_names(node))


def dynamic_linear(ctx, node: Node) -> None:
    x, weight, scale, *bias = node.inputs
    weight_t = ctx.const(ctx.constants[weight].t().contiguous(), f"{_base(weight)}_t")
    inputs = [ctx.name(x), weight_t, ctx.name(scale)] + (["", ctx.name(bias[0])] if bias else [])
    ctx.extra_domains[MICROSOFT] = 1
    ctx.emit("DynamicQuantizeMatMul", inputs, ctx.output_names(node), domain=MICROSOFT)


def weight_only_linear(ctx, node: Node) -> None:
    """One MatMulNBits (bias as its input: onnxruntime >= 1.19); where MatMulNBits cannot hold the weight
    (a block size that is not a power of two >= 16), DequantizeLinear + MatMul (+ Add)."""
    block_size = _nbits_block(ctx, node)
    if block_size:
        _matmul_nbits(ctx, node, block_size)
        return
    x, weight, scale, *bias = node.inputs
    axis = 1 if node.attrs.get("block_size") else (0 if scale.type.numel() > 1 else None)
    dequantized = _dequantize_linear(ctx, weight, scale, [], axis, node.attrs.get("block_size", 0))
    transposed = ctx.emit("Transpose", [dequantized], perm=[1, 0])[0]
    if not bias:
        ctx.emit("MatMul", [ctx.name(x), transposed], ctx.output_names(node))
        return
    product = ctx.emit("MatMul", [ctx.name(x), transposed])[0]
    ctx.emit("Add", [product, ctx.name(bias[0])], ctx.output_names(node))


def quantized_embedding(ctx, node: Node) -> None:
    """Gather int8 rows, Cast, Mul by the table's scale or by the rows' gathered scales."""
    weight, scale, indices = node.inputs
    rows = ctx.emit("Gather", [ctx.name(weight), ctx.name(indices)], axis=0)[0]
    row_scale = ctx.name(scale)
    if scale.type.rank:
        column = ctx.emit("Reshape", [row_scale, ctx.ints([-1, 1], "shape")])[0]
        row_scale = ctx.emit("Gather", [column, ctx.name(indices)], axis=0)[0]
    ctx.emit("Mul", [ctx.cast(rows, "i8", scale.type.dtype), row_scale], ctx.output_names(node))


def _nbits_block(ctx, node: Node) -> int:
    """The MatMulNBits block size for this linear, or 0 when MatMulNBits cannot run it."""
    x, weight, scale = node.inputs[:3]
    block_size, bits = node.attrs.get("block_size", 0), node.attrs.get("bits", 8)
    if weight not in ctx.constants or scale not in ctx.constants or x.type.rank < 2:
        return 0
    q = ctx.constants[weight]
    if int(q.min()) < -2 ** (bits - 1) or int(q.max()) >= 2 ** (bits - 1):
        return 0
    if not block_size:  # one scale per row or tensor: any block works, the scale repeats
        return min(NBITS_BLOCK, max(NBITS_MIN_BLOCK, 1 << (q.shape[1] - 1).bit_length()))
    power_of_two = block_size & (block_size - 1) == 0
    return block_size if power_of_two and block_size >= NBITS_MIN_BLOCK else 0


def _matmul_nbits(ctx, node: Node, block_size: int) -> None:
    x, weight, scale, *bias = node.inputs
    bits = node.attrs.get("bits", 8)
    q, scales = ctx.constants[weight], ctx.constants[scale]
    rows, columns = q.shape
    blocks = -(-columns // block_size)
    scales = scales.reshape(-1, 1).expand(rows, blocks) if scales.dim() < 2 else scales
    packed = ctx.const(pack_nbits(q, bits, block_size), f"{_base(weight)}_nbits")
    inputs = [ctx.name(x), packed, ctx.const(scales.contiguous(), _base(scale))]
    inputs += ["", "", ctx.name(bias[0])] if bias else []  # no zero points (codes are offset), no g_idx
    ctx.extra_domains[MICROSOFT] = 1
    ctx.emit("MatMulNBits", inputs, ctx.output_names(node), domain=MICROSOFT, K=columns, N=rows, bits=bits,
             block_size=block_size, accuracy_level=node.attrs.get("accuracy_level", 0))
    # 0: fp32 compute, ORT equals the PyTorch backend to rounding; 4: int8 compute (VNNI/AMX: faster)


def _dequantize_linear(ctx, q, scale, zero_point: list, axis: int | None, block_size: int, outputs=1) -> str:
    inputs = [_int_data(ctx, q, block_size), ctx.name(scale)] + [_int_data(ctx, z, block_size) for z in zero_point]
    return ctx.emit("DequantizeLinear", inputs, outputs, axis=axis, block_size=block_size or None)[0]


def _axis(node: Node, scale) -> int | None:
    per_axis = scale.type.rank >= 1 and node.inputs[0].type.rank > 1 and scale.type.numel() > 1
    return node.attrs.get("axis", 1) if per_axis or node.attrs.get("block_size") else None


def _int_data(ctx, value, block_size: int) -> str:
    """Integer data; int4 (blocked, within [-8, 7]) is written as a packed INT4 initializer."""
    tensor = ctx.constants.get(value)
    small = tensor is not None and tensor.dtype == torch.int8 and int(tensor.min()) >= -8 and int(tensor.max()) <= 7
    if not (block_size and small):
        return ctx.name(value)
    return ctx.int4(tensor, _base(value))


def _base(value) -> str:
    producer = value.producer
    return producer.attrs["name"] if producer is not None and producer.op == "param" else value.name


QUANT = table(
    OpDecl("carve.quantize", lower=quantize),
    OpDecl("carve.dequantize", lower=dequantize),
    OpDecl("carve.dynamic_linear", macs=last_dim_macs(0), lower=dynamic_linear),
    OpDecl("carve.weight_only_linear", macs=last_dim_macs(0), lower=weight_only_linear),
    OpDecl("carve.quantized_embedding", lower=quantized_embedding),
)
