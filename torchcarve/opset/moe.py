"""carve.moe (the dense mixture-of-experts op): its cost and ONNX lowering, the dense form in standard ops.

tokens [T, D] -> Gemm (router) -> Softmax -> TopK [-> renormalise] -> ScatterElements into zeros [T, E]
(the routing matrix); MatMul tokens by the stacked expert weights [E, D, H'] -> [E, T, H'] -> activation
(-> gate * up) -> MatMul [E, H, D] -> [E, T, D]; times the routing transposed [E, T, 1], ReduceSum over
experts. Static shapes only (no NonZero/Gather): ONNX Runtime runs it as a few batched MatMuls.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..ir.node import Node
from ..ir.ops.moe import moe_weights
from ..ir.types import concrete_dim
from .decl import OpDecl, table
from .lowerings import _out, _static, decomposed_gelu
from .prune_rules import expert_sources, expert_units

if TYPE_CHECKING:
    from ..backends.onnx import LoweringContext


def moe(ctx: "LoweringContext", node: Node) -> None:
    x, attrs, roles = node.inputs[0], node.attrs, moe_weights(node)
    dtype, width = x.type.dtype, _static(x.type.shape[-1], node)
    tokens = ctx.emit("Reshape", [ctx.name(x), ctx.ints([-1, width])])[0]
    routing = _routing(ctx, tokens, roles, attrs)
    hidden = _experts_matmul(ctx, tokens, roles["up_w"], roles["up_b"])
    if attrs.get("gated"):
        half = roles["up_w"].type.shape[1] // 2
        gate, up = ctx.emit("Split", [hidden, ctx.ints([half, half])], 2, axis=-1)
        hidden = ctx.emit("Mul", [_activation(ctx, gate, attrs["act"], dtype), up])[0]
    else:
        hidden = _activation(ctx, hidden, attrs["act"], dtype)
    out = _experts_matmul(ctx, hidden, roles["down_w"], roles["down_b"])
    weights = ctx.emit("Unsqueeze", [ctx.emit("Transpose", [routing], perm=[1, 0])[0], ctx.ints([2])])[0]
    out = ctx.emit("ReduceSum", [ctx.emit("Mul", [out, weights])[0], ctx.ints([0])], keepdims=0)[0]
    ctx.emit("Reshape", [out, ctx.emit("Shape", [ctx.name(x)])[0]], _out(ctx, node))


def _routing(ctx: "LoweringContext", tokens: str, roles: dict, attrs: dict) -> str:
    """[T, E]: each token's top-k router probabilities (renormalised when norm_topk), zero elsewhere."""
    router = [tokens, ctx.name(roles["router_w"])] + ([ctx.name(roles["router_b"])] if roles["router_b"] else [])
    probs = ctx.emit("Softmax", [ctx.emit("Gemm", router, transB=1)[0]], axis=-1)[0]
    top, index = ctx.emit("TopK", [probs, ctx.ints([attrs["top_k"]])], 2, axis=-1)
    if attrs.get("norm_topk", True):
        top = ctx.emit("Div", [top, ctx.emit("ReduceSum", [top, ctx.ints([-1])], keepdims=1)[0]])[0]
    zeros = ctx.emit("Mul", [probs, ctx.scalar(0.0, "f32")])[0]
    return ctx.emit("ScatterElements", [zeros, index, top], axis=1)[0]


def _experts_matmul(ctx: "LoweringContext", x: str, weight, bias) -> str:
    """x [T, in] or [E, T, in] times every expert's W [E, out, in] transposed, plus bias [E, out]: [E, T, out]."""
    if weight in ctx.constants:
        base = weight.producer.attrs["name"] if weight.producer.op == "param" else weight.name
        weight_t = ctx.const(ctx.constants[weight].transpose(1, 2).contiguous(), f"{base}.T")
    else:
        weight_t = ctx.emit("Transpose", [ctx.name(weight)], perm=[0, 2, 1])[0]
    product = ctx.emit("MatMul", [x, weight_t])[0]
    if bias is None:
        return product
    return ctx.emit("Add", [product, ctx.emit("Unsqueeze", [ctx.name(bias), ctx.ints([1])])[0]])[0]


def _activation(ctx: "LoweringContext", x: str, act: str, dtype: str) -> str:
    if act == "relu":
        return ctx.emit("Relu", [x])[0]
    if act == "silu":
        return ctx.emit("Mul", [x, ctx.emit("Sigmoid", [x])[0]])[0]
    return decomposed_gelu(ctx, x, dtype, act == "gelu_tanh")


def moe_macs(node: Node, sizes: dict[str, int]) -> int:
    """Router + every expert's up and down projections on every token (the dense form)."""
    roles = moe_weights(node)
    tokens = node.inputs[0].type.numel(sizes) // concrete_dim(node.inputs[0].type.shape[-1], sizes)
    return tokens * sum(roles[k].type.numel(sizes) for k in ("router_w", "up_w", "down_w"))


# prune: each expert's hidden units, expert by expert (prune-experts removes whole experts)
MOE = table(OpDecl("carve.moe", macs=moe_macs, prune=expert_units, prune_source=expert_sources, lower=moe))
