"""carve.moe: a top-k routed mixture-of-experts layer, run in its dense or its sparse dispatch form.

Inputs: x [..., D], router weight [E, D] (+ bias [E] when `router_bias`), expert up weights [E, H', D]
(+ bias [E, H']), expert down weights [E, D, H] (+ bias [E, D]) when `expert_bias`. Each token's router
probabilities softmax(x W_r^T + b_r) keep their `top_k` largest (renormalised to sum 1 when `norm_topk`),
the others are zero; expert e computes y_e = down_e(act(up_e(x))) — with `gated`, up_e gives [gate; up]
(H' = 2H) and y_e = down_e(act(gate) * up) — and the output is sum_e p_e y_e.

`dispatch`: "dense" runs every expert on every token (static shapes, E/k x the expert MACs); "sparse" runs
each expert on the tokens routed to it (sizes that depend on the data, inside the kernel only: the output
has x's shape either way); "auto" (the default) takes the form `moe_dispatch` picks for the token count.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ...errors import ShapeError
from ..types import TensorType
from .opdef import OpDef

ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu")
DISPATCH_FORMS = ("auto", "dense", "sparse")


def carve_moe(x, *weights, top_k, act, norm_topk=True, gated=False, router_bias=False, expert_bias=False,
              dispatch="auto"):
    """Top-k mixture of experts (see the module docstring) in the `dispatch` form."""
    weights = list(weights)
    router_w = weights.pop(0)
    router_b = weights.pop(0) if router_bias else None
    up_w = weights.pop(0)
    up_b = weights.pop(0) if expert_bias else None
    down_w = weights.pop(0)
    down_b = weights.pop(0) if expert_bias else None
    experts = (up_w, up_b, down_w, down_b)
    tokens = x.reshape(-1, x.shape[-1])
    top, index = moe_routing(tokens, router_w, router_b, top_k, norm_topk)
    if dispatch == "auto":
        dispatch = moe_dispatch(tokens.shape[0], router_w.shape[0], top_k, up_w[0].numel() + down_w[0].numel())
    combine = moe_sparse if dispatch == "sparse" else moe_dense
    return combine(tokens, top, index, experts, act, gated).reshape(x.shape)


def moe_dense(tokens, top, index, experts, act, gated):
    """Every expert on every token [E, T, D], weighed by the routing matrix [T, E] (zero off the top-k)."""
    routing = torch.zeros(tokens.shape[0], experts[0].shape[0], dtype=top.dtype, device=top.device)
    routing = routing.scatter(1, index, top)
    out = moe_ffn(tokens, *experts, act, gated)
    return (out * routing.to(tokens.dtype).t().unsqueeze(-1)).sum(dim=0)


def moe_sparse(tokens, top, index, experts, act, gated):
    """Each expert on the tokens routed to it only (data-dependent sizes), added into the output by index."""
    out = torch.zeros_like(tokens)
    for e in range(experts[0].shape[0]):
        token, slot = torch.where(index == e)
        expert = [None if w is None else w[e] for w in experts]
        y = moe_ffn(tokens[token], *expert, act, gated)
        out.index_add_(0, token, y * top[token, slot, None].to(tokens.dtype))
    return out


def moe_ffn(x, up_w, up_b, down_w, down_b, act, gated):
    """down(act(up(x))) (gated: down(act(gate) * up)); stacked weights [E, out, in] give [E, T, out]."""
    hidden = torch.matmul(x, up_w.transpose(-1, -2))
    if up_b is not None:
        hidden = hidden + up_b.unsqueeze(-2)
    if gated:
        gate, up = hidden.chunk(2, dim=-1)
        hidden = _activation(gate, act) * up
    else:
        hidden = _activation(hidden, act)
    out = torch.matmul(hidden, down_w.transpose(-1, -2))
    return out if down_b is None else out + down_b.unsqueeze(-2)


def moe_dispatch(tokens, experts, top_k, expert_macs, min_saved_per_expert=65536, assumed_tokens=64):
    """The form `auto` takes: "sparse" when running each expert on its routed tokens only saves at least
    `min_saved_per_expert` MACs per expert (tokens x (E - k) / E x one expert's MACs per token) — about what
    an expert's NonZero/Gather/ScatterND cost in onnxruntime (benchmarks/moe_dispatch.py) — else "dense".
    `tokens` None (a symbolic count) is taken as `assumed_tokens`."""
    tokens = assumed_tokens if tokens is None else tokens
    return "sparse" if moe_saved_macs(tokens, experts, top_k, expert_macs) >= min_saved_per_expert else "dense"


def moe_saved_macs(tokens, experts, top_k, expert_macs):
    """MACs per expert the sparse form skips: each expert runs on k/E of the tokens instead of all."""
    return tokens * (experts - top_k) * expert_macs // experts


def moe_routing(tokens, router_w, router_b, top_k, norm_topk):
    """Each token's top-k experts and their weights: softmax router probabilities, renormalised when `norm_topk`."""
    probs = torch.softmax(torch.nn.functional.linear(tokens, router_w, router_b).float(), dim=-1)
    top, index = torch.topk(probs, top_k, dim=-1)
    if norm_topk:
        top = top / top.sum(dim=-1, keepdim=True)
    return top, index


def _activation(x, act):
    if act == "gelu":
        return torch.nn.functional.gelu(x)
    if act == "gelu_tanh":
        return torch.nn.functional.gelu(x, approximate="tanh")
    if act == "silu":
        return torch.nn.functional.silu(x)
    return torch.relu(x)


carve_moe.calls = (moe_routing, moe_dispatch, moe_dense, moe_sparse)
moe_dispatch.calls = (moe_saved_macs,)
moe_dense.calls = moe_sparse.calls = (moe_ffn,)
moe_ffn.calls = (_activation,)


def moe_weights(node: Any) -> dict[str, Any]:
    """The node's weight inputs by role: router_w, router_b, up_w, up_b, down_w, down_b (absent ones None)."""
    return moe_roles(list(node.inputs[1:]), node.attrs)


def moe_roles(weights: list[Any], attrs: dict[str, Any]) -> dict[str, Any]:
    """`weights` (the inputs after x, or their types) by role; the biases are there when the attrs say so."""
    weights = list(weights)
    roles: dict[str, Any] = {"router_w": weights.pop(0)}
    roles["router_b"] = weights.pop(0) if attrs.get("router_bias") else None
    roles["up_w"] = weights.pop(0)
    roles["up_b"] = weights.pop(0) if attrs.get("expert_bias") else None
    roles["down_w"] = weights.pop(0)
    roles["down_b"] = weights.pop(0) if attrs.get("expert_bias") else None
    return roles


def infer_moe(attrs: dict[str, Any], types: list[TensorType]) -> list[TensorType]:
    """x's type, once the weights are checked to be one stack of E experts of x's width (either dispatch form
    gives that shape; the sparse form's inner sizes depend on the data, so its kernel cannot run on meta)."""
    expected = 4 + 2 * bool(attrs.get("expert_bias")) + bool(attrs.get("router_bias"))
    _check(len(types) == expected, f"expects {expected} inputs for these attributes, got {len(types)}", types)
    x, roles = types[0], moe_roles(types[1:], attrs)
    experts, width = roles["router_w"].shape[0], x.shape[-1]
    hidden = roles["down_w"].shape[-1]
    shapes = {"router_w": (experts, width), "router_b": (experts,), "down_w": (experts, width, hidden),
              "up_w": (experts, 2 * hidden if attrs.get("gated") else hidden, width), "down_b": (experts, width)}
    shapes["up_b"] = shapes["up_w"][:2]
    for role, shape in shapes.items():
        _check(roles[role] is None or tuple(roles[role].shape) == shape, f"{role} must be {list(shape)}", types)
    _check(1 <= attrs.get("top_k", 0) <= experts, f"top_k must be in 1..{experts}", types)
    _check(attrs.get("dispatch", "auto") in DISPATCH_FORMS, f"dispatch must be one of {', '.join(DISPATCH_FORMS)}",
           types)
    return [x]


def _check(ok: bool, why: str, types: list[TensorType]) -> None:
    if not ok:
        raise ShapeError(f"carve.moe {why}", hint=f"input types: {', '.join(map(str, types))}")


def _bind(inputs: Sequence[Any], attrs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    return list(inputs), dict(attrs)


MOE = OpDef(name="carve.moe", fn=carve_moe, bind=_bind, infer=infer_moe,
            attrs=frozenset({"top_k", "act", "norm_topk", "gated", "router_bias", "expert_bias", "dispatch"}))
OPS = [MOE]
