"""reparam: parallel conv branches (kxk, 1x1, asymmetric, identity; each with or without BN) summed -> one conv."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...ir import Graph
from ...ir.ops.aten import arguments
from ...ir.value import Value
from ..base import Pass, PassContext, PassResult, register_pass
from ..rewrite import ANY, P, Rewriter, apply_rules
from .bn import BN_FFN_RULES
from .common import CONVS, Weights, bn_affine, per_output, rebuild, weights_of


@dataclass
class Branch:
    """One summand as conv(x, weight, bias) with its padding; `conv` is None for identity branches."""

    x: Value
    weight: torch.Tensor | None   # None: identity times `scale`
    bias: torch.Tensor
    padding: list[int]
    conv: Weights | None = None
    scale: torch.Tensor | None = None


def branch_of(rw: Rewriter, value: Value) -> Branch | None:
    """Read a summand as a conv of some x: conv(x), bn(conv(x)), bn(x) or x itself."""
    if len(value.uses) != 1 or value.is_graph_output:
        return Branch(value, None, torch.zeros(()), [], scale=torch.ones(()))
    affine = bn_affine(rw, value)
    inner = affine[0] if affine else value
    w = weights_of(rw, inner)
    if w is None or w.node.op not in CONVS or w.transposed or (affine and len(inner.uses) != 1):
        if affine is None:
            return Branch(value, None, torch.zeros(()), [], scale=torch.ones(()))
        return Branch(inner, None, affine[2], [], scale=affine[1])
    weight, bias = w.weight, w.bias
    if affine:
        weight, bias = per_output(w, affine[1]), bias * affine[1] + affine[2]
    return Branch(w.node.inputs[0], weight, bias, list(w.args["padding"]), conv=w)


def merge_branches(rw: Rewriter, a: Value, b: Value, out: Value) -> Value | None:
    # conv_k(x) + conv_1(x) + bn(x) -> conv_k(x)   kernels zero-padded to k, centred, then summed (RepVGG, ACNet)
    if arguments(out.producer).get("alpha") != 1:
        return None
    branches = [branch_of(rw, a), branch_of(rw, b)]
    convs = [br.conv for br in branches if br.conv is not None]
    if any(br is None for br in branches) or not convs or branches[0].x is not branches[1].x:
        return None
    main = max(convs, key=lambda w: w.weight.shape[2:].numel())
    if not all(_compatible(w, main) for w in convs):
        return None
    kernel = list(main.weight.shape[2:])
    offsets = {tuple(_offset(br, kernel)) for br in branches if br.conv is not None}
    identity_ok = all(br.conv is not None or _identity_fits(main, kernel) for br in branches)
    if len(offsets) != 1 or None in next(iter(offsets)) or not identity_ok:
        return None
    padding = [o + (k - 1) // 2 for o, k in zip(next(iter(offsets)), kernel)]
    weight = sum(_full_kernel(br, main, kernel) for br in branches)
    bias = sum(br.bias.expand(main.out_channels) for br in branches)
    return rebuild(rw, main, branches[0].x, weight, bias, padding=padding)


def _compatible(w: Weights, main: Weights) -> bool:
    same = ("stride", "dilation", "groups")
    return w.node.op == main.node.op and all(w.args.get(k) == main.args.get(k) for k in same) \
        and all(d == 1 for d in w.args.get("dilation") or [1]) and w.weight.shape[:2] == main.weight.shape[:2]


def _offset(br: Branch, kernel: list[int]) -> list[int | None]:
    """Per spatial dim: padding minus half the kernel; branches line up when these agree (odd kernels only)."""
    sizes = list(br.conv.weight.shape[2:])
    return [p - (k - 1) // 2 if k % 2 else None for p, k in zip(br.padding, sizes)]


def _identity_fits(main: Weights, kernel: list[int]) -> bool:
    """An identity branch is a centred 1x1 conv: needs stride 1, zero offset, and in == out channels."""
    strides = main.args.get("stride") or [1]
    centred = [p - (k - 1) // 2 for p, k in zip(main.args["padding"], kernel)]
    return all(s == 1 for s in strides) and all(o == 0 for o in centred) \
        and main.weight.shape[1] * main.groups == main.out_channels


def _full_kernel(br: Branch, main: Weights, kernel: list[int]) -> torch.Tensor:
    if br.conv is None:
        return _identity_kernel(main, kernel) * br.scale.expand(main.out_channels).view(-1, *[1] * (len(kernel) + 1))
    pads = []
    for k, size in zip(reversed(kernel), reversed(br.weight.shape[2:])):
        pads += [(k - size) // 2, (k - size) // 2]
    return F.pad(br.weight, pads)


def _identity_kernel(main: Weights, kernel: list[int]) -> torch.Tensor:
    out, per_group = main.out_channels, main.weight.shape[1]
    weight = torch.zeros(out, per_group, *kernel, dtype=torch.float64)
    centre = [k // 2 for k in kernel]
    for channel in range(out):
        weight[(channel, channel % per_group, *centre)] = 1.0
    return weight


REPARAM_RULES = [
    (P("aten.add.Tensor", ANY("a"), ANY("b"), name="out"), merge_branches),
] + BN_FFN_RULES


@register_pass("reparam")
@dataclass(frozen=True)
class Reparameterize(Pass):
    """Structural reparameterization: multi-branch train-time blocks become one conv (RepVGG, Ding et al. 2021)."""

    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        fired = apply_rules(graph, REPARAM_RULES, self)
        return PassResult(bool(fired), {"merged": sum(fired.values())})
