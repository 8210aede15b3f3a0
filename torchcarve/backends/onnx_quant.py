"""ONNX lowerings of the quantization ops (registered into LOWERINGS on import).

carve.quantize/dequantize -> QuantizeLinear/DequantizeLinear (QDQ; int4 weights as INT4 initializers,
blocked scales from opset 21); carve.dynamic_linear -> com.microsoft DynamicQuantizeMatMul, the op
ONNX Runtime fuses its own DynamicQuantizeLinear + MatMulInteger graphs into.
"""
from __future__ import annotations

import torch
from onnx import TensorProto, helper

from ..errors import UnsupportedOpError
from ..ir.node import Node
from .onnx_lowering import LOWERINGS

BLOCKED_OPSET = 21  # DequantizeLinear block_size and INT4 data
MICROSOFT = "com.microsoft"


def quantize(ctx, node: Node) -> None:
    x, scale, zero_point = node.inputs
    ctx.emit("QuantizeLinear", [ctx.name(x), ctx.name(scale), ctx.name(zero_point)], ctx.output_names(node),
             axis=_axis(node, scale))


def dequantize(ctx, node: Node) -> None:
    q, scale, *zero_point = node.inputs
    block_size = node.attrs.get("block_size", 0)
    if block_size and ctx.opset < BLOCKED_OPSET:
        raise UnsupportedOpError(f"{node!r}: group-wise (blocked) dequantization needs ONNX opset {BLOCKED_OPSET}",
                                 hint=f"export with opset={BLOCKED_OPSET}")
    inputs = [_int_data(ctx, q, block_size), ctx.name(scale)] + [_int_data(ctx, z, block_size) for z in zero_point]
    ctx.emit("DequantizeLinear", inputs, ctx.output_names(node), axis=_axis(node, scale),
             block_size=block_size or None)


def dynamic_linear(ctx, node: Node) -> None:
    x, weight, scale, *bias = node.inputs
    weight_t = ctx.const(ctx.constants[weight].t().contiguous(), f"{_base(weight)}_t")
    inputs = [ctx.name(x), weight_t, ctx.name(scale)] + (["", ctx.name(bias[0])] if bias else [])
    ctx.extra_domains[MICROSOFT] = 1
    ctx.emit("DynamicQuantizeMatMul", inputs, ctx.output_names(node), domain=MICROSOFT)


def _axis(node: Node, scale) -> int | None:
    per_axis = scale.type.rank >= 1 and node.inputs[0].type.rank > 1 and scale.type.numel() > 1
    return node.attrs.get("axis", 1) if per_axis or node.attrs.get("block_size") else None


def _int_data(ctx, value, block_size: int) -> str:
    """Integer data; int4 (blocked, within [-8, 7]) is written as a packed INT4 initializer."""
    tensor = ctx.constants.get(value)
    small = tensor is not None and tensor.dtype == torch.int8 and int(tensor.min()) >= -8 and int(tensor.max()) <= 7
    if not (block_size and small):
        return ctx.name(value)
    name = ctx.fresh(_base(value))
    ctx.initializers[name] = helper.make_tensor(name, TensorProto.INT4, list(tensor.shape),
                                                tensor.flatten().tolist())
    return name


def _base(value) -> str:
    producer = value.producer
    return producer.attrs["name"] if producer is not None and producer.op == "param" else value.name


LOWERINGS.update({"carve.quantize": quantize, "carve.dequantize": dequantize, "carve.dynamic_linear": dynamic_linear})
