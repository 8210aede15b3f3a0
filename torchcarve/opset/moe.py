"""carve.moe (the mixture-of-experts op): its cost and ONNX lowering, in the node's dispatch form.

Both forms: tokens [T, D] -> Gemm (router) -> Softmax -> TopK [-> renormalise].
dense: ScatterElements the top-k into zeros [T, E] (the routing matrix); MatMul tokens by the stacked expert
weights [E, D, H'] -> [E, T, H'] -> activation (-> gate * up) -> MatMul [E, H, D] -> [E, T, D]; times the
routing transposed [E, T, 1], ReduceSum over experts. Static shapes: a few batched MatMuls.
sparse: per expert e, NonZero(index == e) gives the (token, slot) pairs routed to it; Gather those tokens,
the expert's own MatMuls, Mul by their gate weights (GatherND), ScatterND(reduction=add) into zeros [T, D]
(opset < 16: ScatterND into zeros, then Add). Sizes depend on the data; an expert with no tokens is empty.
`auto` (or no `dispatch`) takes the form `moe_dispatch` picks for the node's token count.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import onnx
import torch

from ..ir.node import Node
from ..ir.ops.moe import moe_dispatch, moe_weights
from ..ir.types import TensorType, concrete_dim
from .decl import OpDecl, table
from .lowerings import _out, _static, decomposed_gelu
from .onnx_proto import tensor_proto
from .prune_rules import expert_sources, expert_units

if TYPE_CHECKING:
    from ..backends.onnx import LoweringContext


SCATTER_ADD_OPSET = 16  # ScatterND's reduction="add"


def moe(ctx: "LoweringContext", node: Node) -> None:
    x, attrs, roles = node.inputs[0], node.attrs, moe_weights(node)
    dtype, width = x.type.dtype, _static(x.type.shape[-1], node)
    tokens = ctx.emit("Reshape", [ctx.name(x), ctx.ints([-1, width])])[0]
    combine = _sparse if node_dispatch(node) == "sparse" else _dense
    out = combine(ctx, tokens, _top_k(ctx, tokens, roles, attrs), roles, attrs, dtype)
    ctx.emit("Reshape", [out, ctx.emit("Shape", [ctx.name(x)])[0]], _out(ctx, node))


def node_dispatch(node: Node, tokens: int | None = None) -> str:
    """The form a carve.moe node runs in: its `dispatch` attribute, or for `auto` (the default) `auto_dispatch`."""
    dispatch = node.attrs.get("dispatch", "auto")
    return dispatch if dispatch != "auto" else auto_dispatch(node, tokens)


def auto_dispatch(node: Node, tokens: int | None = None) -> str:
    """The form the measured rule `moe_dispatch` picks for the node at `tokens` tokens (default: its static token
    count; a symbolic count is taken as the rule's assumed count)."""
    tokens = static_tokens(node) if tokens is None else tokens
    return moe_dispatch(tokens, *moe_sizes(node))


def moe_sizes(node: Node) -> tuple[int, int, int]:
    """(experts, top-k, one expert's MACs per token) of a carve.moe node."""
    roles = moe_weights(node)
    experts = roles["router_w"].type.shape[0]
    return experts, node.attrs["top_k"], (roles["up_w"].type.numel() + roles["down_w"].type.numel()) // experts


def static_tokens(node: Node) -> int | None:
    """How many tokens the node's input holds (all dims but the last), None when that is symbolic."""
    shape = node.inputs[0].type.shape[:-1]
    return math.prod(shape) if all(isinstance(d, int) for d in shape) else None


def _dense(ctx: "LoweringContext", tokens: str, routed: tuple[str, str, str], roles: dict, attrs: dict,
           dtype: str) -> str:
    """Every expert on every token [E, T, D], weighed by the routing matrix [T, E] (zero off the top-k)."""
    probs, top, index = routed
    hidden = _hidden(ctx, _experts_matmul(ctx, tokens, roles["up_w"], roles["up_b"]), roles, attrs, dtype)
    out = _experts_matmul(ctx, hidden, roles["down_w"], roles["down_b"])
    zeros = ctx.emit("Mul", [probs, ctx.scalar(0.0, "f32")])[0]
    routing = ctx.emit("ScatterElements", [zeros, index, top], axis=1)[0]
    weights = ctx.emit("Unsqueeze", [ctx.emit("Transpose", [routing], perm=[1, 0])[0], ctx.ints([2])])[0]
    return ctx.emit("ReduceSum", [ctx.emit("Mul", [out, weights])[0], ctx.ints([0])], keepdims=0)[0]


def _top_k(ctx: "LoweringContext", tokens: str, roles: dict, attrs: dict) -> tuple[str, str, str]:
    """The router probabilities [T, E], each token's top-k of them [T, k] (renormalised when norm_topk) and
    their experts [T, k]."""
    router = [tokens, ctx.name(roles["router_w"])] + ([ctx.name(roles["router_b"])] if roles["router_b"] else [])
    probs = ctx.emit("Softmax", [ctx.emit("Gemm", router, transB=1)[0]], axis=-1)[0]
    top, index = ctx.emit("TopK", [probs, ctx.ints([attrs["top_k"]])], 2, axis=-1)
    if attrs.get("norm_topk", True):
        top = ctx.emit("Div", [top, ctx.emit("ReduceSum", [top, ctx.ints([-1])], keepdims=1)[0]])[0]
    return probs, top, index


def _sparse(ctx: "LoweringContext", tokens: str, routed: tuple[str, str, str], roles: dict, attrs: dict,
            dtype: str) -> str:
    """Per expert: NonZero(index == e) -> Gather its tokens -> its FFN -> times its gate -> scatter-add to [T, D]."""
    _, top, index = routed
    out = zeros = ctx.emit("ConstantOfShape", [ctx.emit("Shape", [tokens])[0]], value=_filled(0.0, dtype))[0]
    for e in range(roles["router_w"].type.shape[0]):
        pairs = ctx.emit("NonZero", [ctx.emit("Equal", [index, ctx.scalar(e, "i64")])[0]])[0]  # [2, n]: token, slot
        token = ctx.emit("Gather", [pairs, ctx.ints([0])], axis=0)[0]  # [1, n]
        gate = ctx.emit("GatherND", [top, ctx.emit("Transpose", [pairs], perm=[1, 0])[0]])[0]  # [n]
        rows = ctx.emit("Gather", [tokens, ctx.emit("Squeeze", [token, ctx.ints([0])])[0]], axis=0)[0]  # [n, D]
        hidden = _hidden(ctx, _experts_matmul(ctx, rows, roles["up_w"], roles["up_b"], e), roles, attrs, dtype)
        y = _experts_matmul(ctx, hidden, roles["down_w"], roles["down_b"], e)
        y = ctx.emit("Mul", [y, ctx.emit("Unsqueeze", [gate, ctx.ints([1])])[0]])[0]
        out = _scatter_add(ctx, out, zeros, ctx.emit("Transpose", [token], perm=[1, 0])[0], y)
    return out


def _scatter_add(ctx: "LoweringContext", out: str, zeros: str, indices: str, rows: str) -> str:
    """out[indices] += rows (indices [n, 1] distinct): ScatterND's add reduction, or scatter into zeros + Add."""
    if ctx.opset >= SCATTER_ADD_OPSET:
        return ctx.emit("ScatterND", [out, indices, rows], reduction="add")[0]
    return ctx.emit("Add", [out, ctx.emit("ScatterND", [zeros, indices, rows])[0]])[0]


def _hidden(ctx: "LoweringContext", hidden: str, roles: dict, attrs: dict, dtype: str) -> str:
    """The experts' activation: act(h), or act(gate) * up when gated (h = [gate; up])."""
    if not attrs.get("gated"):
        return _activation(ctx, hidden, attrs["act"], dtype)
    half = roles["up_w"].type.shape[1] // 2
    gate, up = ctx.emit("Split", [hidden, ctx.ints([half, half])], 2, axis=-1)
    return ctx.emit("Mul", [_activation(ctx, gate, attrs["act"], dtype), up])[0]


def _filled(value: float, dtype: str) -> onnx.TensorProto:
    return tensor_proto("value", torch.tensor([value], dtype=TensorType((), dtype).torch_dtype))


def _experts_matmul(ctx: "LoweringContext", x: str, weight, bias, expert: int | None = None) -> str:
    """x [T, in] or [E, T, in] times every expert's W [E, out, in] transposed plus bias [E, out]: [E, T, out];
    given `expert`, x [n, in] times that expert's W only: [n, out]."""
    product = ctx.emit("MatMul", [x, _weight_t(ctx, weight, expert)])[0]
    if bias is None:
        return product
    if expert is None:
        return ctx.emit("Add", [product, ctx.emit("Unsqueeze", [ctx.name(bias), ctx.ints([1])])[0]])[0]
    return ctx.emit("Add", [product, _expert_slice(ctx, bias, expert)])[0]


def _weight_t(ctx: "LoweringContext", weight, expert: int | None) -> str:
    """The stacked W [E, out, in] transposed to [E, in, out], or expert `expert`'s W transposed to [in, out]."""
    if weight in ctx.constants:
        tensor = ctx.constants[weight] if expert is None else ctx.constants[weight][expert]
        return ctx.const(tensor.transpose(-1, -2).contiguous(), _base(weight, expert) + ".T")
    if expert is None:
        return ctx.emit("Transpose", [ctx.name(weight)], perm=[0, 2, 1])[0]
    return ctx.emit("Transpose", [_expert_slice(ctx, weight, expert)], perm=[1, 0])[0]


def _expert_slice(ctx: "LoweringContext", stacked, expert: int) -> str:
    """Expert `expert`'s slice of a per-expert stack (an initializer when the stack is a weight)."""
    if stacked in ctx.constants:
        return ctx.const(ctx.constants[stacked][expert].contiguous(), _base(stacked, expert))
    return ctx.emit("Gather", [ctx.name(stacked), ctx.scalar(expert, "i64")], axis=0)[0]


def _base(value, expert: int | None) -> str:
    """An initializer's name: the weight's (or value's) name, `.e` for expert e's slice."""
    base = value.producer.attrs["name"] if value.producer.op == "param" else value.name
    return base if expert is None else f"{base}.{expert}"


def _activation(ctx: "LoweringContext", x: str, act: str, dtype: str) -> str:
    if act == "relu":
        return ctx.emit("Relu", [x])[0]
    if act == "silu":
        return ctx.emit("Mul", [x, ctx.emit("Sigmoid", [x])[0]])[0]
    return decomposed_gelu(ctx, x, dtype, act == "gelu_tanh")


def moe_macs(node: Node, sizes: dict[str, int]) -> int:
    """Router + the experts' up and down projections: every expert on every token (dense), or each token's
    top-k experts only (sparse)."""
    roles = moe_weights(node)
    tokens = node.inputs[0].type.numel(sizes) // concrete_dim(node.inputs[0].type.shape[-1], sizes)
    experts = sum(roles[k].type.numel(sizes) for k in ("up_w", "down_w"))
    if node_dispatch(node, tokens) == "sparse":
        experts = experts * node.attrs["top_k"] // roles["router_w"].type.shape[0]
    return tokens * (roles["router_w"].type.numel(sizes) + experts)


# prune: each expert's hidden units, expert by expert (prune-experts removes whole experts)
MOE = table(OpDecl("carve.moe", macs=moe_macs, prune=expert_units, prune_source=expert_sources, lower=moe))
