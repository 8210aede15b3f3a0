"""carve.moe: a top-k routed mixture-of-experts layer in its dense form.

Inputs: x [..., D], router weight [E, D] (+ bias [E] when `router_bias`), expert up weights [E, H', D]
(+ bias [E, H']), expert down weights [E, D, H] (+ bias [E, D]) when `expert_bias`. Each token's router
probabilities softmax(x W_r^T + b_r) keep their `top_k` largest (renormalised to sum 1 when `norm_topk`),
the others are zero; every expert runs on every token, y_e = down_e(act(up_e(x))) — with `gated`,
up_e gives [gate; up] (H' = 2H) and y_e = down_e(act(gate) * up) — and the output is sum_e p_e y_e.

Why dense: the sparse dispatch (each expert on the tokens routed to it) has data-dependent sizes, which
the IR's shapes (products of input symbols) cannot hold. The dense form computes the same outputs with
static shapes, in E x the expert MACs of k x; for the small E of edge models that is the form
onnxruntime runs fastest (one batched MatMul per projection, no NonZero/Gather/ScatterND).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..types import concrete_dim
from .opdef import OpDef

ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu")


def carve_moe(x, *weights, top_k, act, norm_topk=True, gated=False, router_bias=False, expert_bias=False):
    """Dense top-k mixture of experts (see the module docstring)."""
    weights = list(weights)
    router_w = weights.pop(0)
    router_b = weights.pop(0) if router_bias else None
    up_w = weights.pop(0)
    up_b = weights.pop(0) if expert_bias else None
    down_w = weights.pop(0)
    down_b = weights.pop(0) if expert_bias else None
    tokens = x.reshape(-1, x.shape[-1])
    top, index = moe_routing(tokens, router_w, router_b, top_k, norm_topk)
    routing = torch.zeros(tokens.shape[0], router_w.shape[0], dtype=top.dtype).scatter(1, index, top).to(x.dtype)
    hidden = torch.matmul(tokens, up_w.transpose(1, 2))
    if up_b is not None:
        hidden = hidden + up_b.unsqueeze(1)
    if gated:
        gate, up = hidden.chunk(2, dim=-1)
        hidden = _activation(gate, act) * up
    else:
        hidden = _activation(hidden, act)
    out = torch.matmul(hidden, down_w.transpose(1, 2))
    if down_b is not None:
        out = out + down_b.unsqueeze(1)
    out = (out * routing.t().unsqueeze(-1)).sum(dim=0)
    return out.reshape(x.shape)


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


carve_moe.calls = (moe_routing, _activation)


def moe_weights(node: Any) -> dict[str, Any]:
    """The node's weight inputs by role: router_w, router_b, up_w, up_b, down_w, down_b (absent ones None)."""
    inputs = list(node.inputs[1:])
    roles: dict[str, Any] = {"router_w": inputs.pop(0)}
    roles["router_b"] = inputs.pop(0) if node.attrs.get("router_bias") else None
    roles["up_w"] = inputs.pop(0)
    roles["up_b"] = inputs.pop(0) if node.attrs.get("expert_bias") else None
    roles["down_w"] = inputs.pop(0)
    roles["down_b"] = inputs.pop(0) if node.attrs.get("expert_bias") else None
    return roles


def _bind(inputs: Sequence[Any], attrs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    return list(inputs), dict(attrs)


MOE = OpDef(name="carve.moe", fn=carve_moe, bind=_bind,
            attrs=frozenset({"top_k", "act", "norm_topk", "gated", "router_bias", "expert_bias"}))
OPS = [MOE]
