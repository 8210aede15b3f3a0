"""Capture top-k mixture-of-experts layers as one opaque op each (the IR op carve.moe, see ir/ops/moe.py).

A routed MoE's sparse dispatch (`torch.where(index == e)`, `x[tokens]`, `index_add`) has data-dependent
sizes that the IR cannot carry, so capture swaps each MoE module it recognises, for the time of the
export only, for `DenseMoE`: the same weights stacked per expert, calling the custom op `torchcarve::moe`
(static output shape) that the converter turns into one carve.moe node, whose kernel and ONNX lowering
run either dispatch form. Recognised: HF's sparse MoE blocks (a `gate` router
with `top_k` and `experts` holding gate_up_proj/down_proj; Mixtral, OLMoE, Qwen2-MoE with its shared
expert) and user modules with a router nn.Linear [E, D] and `experts`, an nn.ModuleList of E two- or
three-linear FFNs. Which activation, gating order and renormalisation the module uses is not guessed:
every candidate dense form is run on the inputs the module really saw and only an exact match is taken;
a module no candidate matches is left as it is.
"""
from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..ir.ops.moe import ACTIVATIONS, carve_moe

ROUTER_NAMES = ("gate", "router", "gating", "w_gate", "gate_proj", "switch")
TOP_K_NAMES = ("top_k", "k", "num_experts_per_tok", "topk")
RTOL, ATOL = 1e-4, 1e-5


@torch.library.custom_op("torchcarve::moe", mutates_args=())
def moe_op(x: torch.Tensor, weights: list[torch.Tensor], top_k: int, act: str, norm_topk: bool, gated: bool,
           router_bias: bool, expert_bias: bool) -> torch.Tensor:
    return carve_moe(x, *weights, top_k=top_k, act=act, norm_topk=norm_topk, gated=gated,
                     router_bias=router_bias, expert_bias=expert_bias)


@moe_op.register_fake
def _(x, weights, top_k, act, norm_topk, gated, router_bias, expert_bias):
    return torch.empty_like(x)


MOE_ATTRS = ("top_k", "act", "norm_topk", "gated", "router_bias", "expert_bias")


@dataclass(frozen=True)
class Form:
    """How a dense MoE reads its weights: activation, renormalisation, top-k."""

    top_k: int
    act: str
    norm_topk: bool


class DenseMoE(nn.Module):
    """A top-k MoE as one torchcarve::moe call on stacked weights; `extra` (e.g. Qwen2-MoE's gated shared
    expert) is added to the output."""

    def __init__(self, weights: dict[str, torch.Tensor | None], form: Form, gated: bool,
                 extra: nn.Module | None = None) -> None:
        super().__init__()
        for name, tensor in weights.items():
            if tensor is not None:
                self.register_parameter(name, nn.Parameter(tensor.detach(), requires_grad=False))  # shared, not copied
        self.form, self.gated, self.extra = form, gated, extra
        self.router_bias, self.expert_bias = weights.get("router_b") is not None, weights.get("up_b") is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        names = ("router_w", "router_b", "up_w", "up_b", "down_w", "down_b")
        weights = [getattr(self, n) for n in names if hasattr(self, n)]
        out = moe_op(x, weights, self.form.top_k, self.form.act, self.form.norm_topk, self.gated,
                     self.router_bias, self.expert_bias)
        return out if self.extra is None else out + self.extra(x)


class SharedExpert(nn.Module):
    """Qwen2-MoE's shared expert: sigmoid(shared_expert_gate(x)) * shared_expert(x)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.shared_expert, self.shared_expert_gate = block.shared_expert, block.shared_expert_gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)


# ---- recognisers: module -> candidate DenseMoE forms ------------------------------------------

def hf_candidates(module: nn.Module) -> list[DenseMoE]:
    """HF sparse MoE blocks: router `gate.weight` [E, D], experts.gate_up_proj [E, 2I, D], down_proj [E, D, I]."""
    router, experts = getattr(module, "gate", None), getattr(module, "experts", None)
    if not isinstance(getattr(experts, "gate_up_proj", None), torch.Tensor) or \
            not isinstance(getattr(router, "weight", None), torch.Tensor) or \
            getattr(experts, "is_transposed", False) or getattr(experts, "has_bias", False):
        return []
    weights = {"router_w": router.weight, "router_b": getattr(router, "bias", None),
               "up_w": experts.gate_up_proj, "down_w": experts.down_proj}
    extra = SharedExpert(module) if hasattr(module, "shared_expert") else None
    return [DenseMoE(weights, form, True, extra) for form in _forms(_top_k(router), router.weight.shape[0])]


def user_candidates(module: nn.Module) -> list[DenseMoE]:
    """A router nn.Linear [E, D] and `experts`: nn.ModuleList of E FFNs with 2 (up, down) or 3 (gated) linears."""
    experts = getattr(module, "experts", None)
    if not isinstance(experts, nn.ModuleList) or len(experts) < 2:
        return []
    router = next((getattr(module, n) for n in ROUTER_NAMES if isinstance(getattr(module, n, None), nn.Linear)
                   and getattr(module, n).out_features == len(experts)), None)
    linears = [[m for m in e.modules() if isinstance(m, nn.Linear)] for e in experts]
    if router is None or len({len(ls) for ls in linears}) != 1 or len(linears[0]) not in (2, 3):
        return []
    forms = _forms(_top_k(module), len(experts))
    return [DenseMoE(weights, form, gated) for gated, weights in _expert_layouts(router, linears)
            for form in forms]


def _expert_layouts(router: nn.Linear, linears: list[list[nn.Linear]]) -> Iterator[tuple[bool, dict]]:
    """(gated, stacked weights) for each reading of the experts' linears: up/down, or gate/up/down orders."""
    orders = [(0, 1)] if len(linears[0]) == 2 else list(itertools.permutations(range(3)))
    for order in orders:
        parts = [[ls[i] for ls in linears] for i in order]
        shapes = [{tuple(p.weight.shape) for p in part} for part in parts]
        biases = {p.bias is not None for part in parts for p in part}
        if any(len(s) != 1 for s in shapes) or len(biases) != 1:
            continue
        width, hidden = router.in_features, parts[-1][0].in_features
        if any(part[0].weight.shape != (hidden, width) for part in parts[:-1]) or \
                parts[-1][0].weight.shape != (width, hidden):
            continue
        stacked = [(torch.stack([p.weight for p in part]), _stack_bias(part)) for part in parts]
        if len(parts) == 3:
            (gate_w, gate_b), (up_w, up_b), (down_w, down_b) = stacked
            up_w, up_b = torch.cat([gate_w, up_w], 1), None if up_b is None else torch.cat([gate_b, up_b], 1)
        else:
            (up_w, up_b), (down_w, down_b) = stacked
        yield len(parts) == 3, {"router_w": router.weight, "router_b": router.bias, "up_w": up_w, "up_b": up_b,
                                "down_w": down_w, "down_b": down_b}


def _stack_bias(linears: Sequence[nn.Linear]) -> torch.Tensor | None:
    return None if linears[0].bias is None else torch.stack([p.bias for p in linears])


def _top_k(module: nn.Module) -> int | None:
    return next((getattr(module, n) for n in TOP_K_NAMES if isinstance(getattr(module, n, None), int)), None)


def _forms(top_k: int | None, experts: int) -> list[Form]:
    ks = [top_k] if top_k else range(1, experts + 1)
    return [Form(k, act, norm) for k in ks for act in ACTIVATIONS for norm in (True, False)]


RECOGNISERS = (hf_candidates, user_candidates)


# ---- the swap ---------------------------------------------------------------------------------

@contextmanager
def dense_moe(model: nn.Module, inputs: tuple) -> Iterator[nn.Module]:
    """Within the block, every recognised MoE module of `model` is replaced by its verified DenseMoE;
    yields the model to capture (a DenseMoE when `model` itself is one). The model is restored on exit."""
    candidates = {path: found for path, module in model.named_modules() for found in [_candidates(module)] if found}
    if not candidates:
        yield model
        return
    seen = _module_inputs(model, inputs, list(candidates))
    swaps = {path: dense for path, found in candidates.items() if path in seen
             for dense in [_matching(model.get_submodule(path), found, seen[path])] if dense is not None}
    if "" in swaps:
        yield swaps[""]
        return
    originals = {path: model.get_submodule(path) for path in swaps}
    try:
        for path, dense in swaps.items():
            _set_submodule(model, path, dense)
        yield model
    finally:
        for path, module in originals.items():
            _set_submodule(model, path, module)


def _candidates(module: nn.Module) -> list[DenseMoE]:
    return next((found for recognise in RECOGNISERS for found in [recognise(module)] if found), [])


def _module_inputs(model: nn.Module, inputs: tuple, paths: list[str]) -> dict[str, tuple]:
    """The positional tensor inputs each module at `paths` receives in one forward of `model`."""
    seen: dict[str, tuple] = {}
    handles = [model.get_submodule(p).register_forward_pre_hook(
        lambda _m, args, p=p: seen.setdefault(p, args) and None) for p in paths]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {p: args for p, args in seen.items() if len(args) == 1 and isinstance(args[0], torch.Tensor)}


def _matching(module: nn.Module, candidates: list[DenseMoE], args: tuple) -> DenseMoE | None:
    """The first candidate whose output equals the module's own on what it saw (and on a noisier copy)."""
    probes = [args[0], args[0] + torch.randn_like(args[0]) * args[0].std()]
    with torch.no_grad():
        expected = [module(x) for x in probes]
        if not all(isinstance(e, torch.Tensor) and e.shape == x.shape for e, x in zip(expected, probes)):
            return None
        for dense in candidates:
            if all(torch.allclose(dense(x), e, rtol=RTOL, atol=ATOL) for x, e in zip(probes, expected)):
                return dense
    return None


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def moe_node_parts(args: tuple, kwargs: dict) -> tuple[list[Any], dict[str, Any]]:
    """(tensor inputs, attrs) of a captured torchcarve::moe call, for the carve.moe node."""
    named = dict(zip(("x", "weights", *MOE_ATTRS), args)) | dict(kwargs)
    return [named["x"], *named["weights"]], {k: named[k] for k in MOE_ATTRS}
