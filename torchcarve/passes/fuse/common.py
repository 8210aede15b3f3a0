"""What the fusion passes share: which ops are convs/linears, and reading/rebuilding their weights."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...ir.node import Node
from ...ir.ops.aten import arguments, encode_arguments
from ...ir.value import Value
from ...opset.conv import CONV_TRANSPOSES, CONVS
from ...opset.norm import BATCH_NORMS
from ..rewrite import Rewriter

LINEAR = "aten.linear"
WEIGHTED = CONVS + CONV_TRANSPOSES + (LINEAR,)


@dataclass
class Weights:
    """A conv/linear node's arguments with its weight and bias as float64 tensors (bias zeros when absent)."""

    node: Node
    args: dict
    weight: torch.Tensor
    bias: torch.Tensor

    @property
    def transposed(self) -> bool:
        return self.node.op in CONV_TRANSPOSES or bool(self.args.get("transposed"))

    @property
    def groups(self) -> int:
        return int(self.args.get("groups") or 1)

    @property
    def out_channels(self) -> int:
        return self.weight.shape[1] * self.groups if self.transposed else self.weight.shape[0]


def weights_of(rw: Rewriter, value: Value) -> Weights | None:
    """The weights of the conv/linear producing `value`, when they are stored params."""
    node = value.producer
    if node is None or node.op not in WEIGHTED:
        return None
    args = arguments(node)
    weight = rw.tensor(args["weight"])
    bias = rw.tensor(args["bias"]) if args.get("bias") is not None else None
    if weight is None or (args.get("bias") is not None and bias is None) or not weight.is_floating_point():
        return None
    weight = weight.double()
    bias = bias.double() if bias is not None else torch.zeros(_out_channels(node, args, weight), dtype=torch.float64)
    return Weights(node, args, weight, bias)


def _out_channels(node: Node, args: dict, weight: torch.Tensor) -> int:
    transposed = node.op in CONV_TRANSPOSES or bool(args.get("transposed"))
    return weight.shape[1] * int(args.get("groups") or 1) if transposed else weight.shape[0]


def bn_affine(rw: Rewriter, value: Value) -> tuple[Value, torch.Tensor, torch.Tensor] | None:
    """(input, scale, shift) of an inference batch norm producing `value`: bn(x) = x*scale + shift per channel."""
    node = value.producer
    if node is None or node.op not in BATCH_NORMS or value.index != 0 or any(v.uses for v in node.outputs[1:]):
        return None
    args = arguments(node)
    if args.get("training"):
        return None
    mean, var = rw.tensor(args["running_mean"]), rw.tensor(args["running_var"])
    weight = rw.tensor(args["weight"]) if args.get("weight") is not None else torch.ones_like(mean)
    bias = rw.tensor(args["bias"]) if args.get("bias") is not None else torch.zeros_like(mean)
    if any(t is None for t in (mean, var, weight, bias)):
        return None
    scale = weight.double() / torch.sqrt(var.double() + args["eps"])
    return node.inputs[0], scale, bias.double() - mean.double() * scale


def channels_at_dim1(value: Value, channels: int, op: str) -> bool:
    """BN normalises dim 1; a linear's features are its last dim, so only 2-D linear outputs qualify."""
    return value.type.rank >= 2 and value.type.shape[1] == channels and (op != LINEAR or value.type.rank == 2)


def rebuild(rw: Rewriter, w: Weights, x: Value, weight: torch.Tensor, bias: torch.Tensor, position: dict | None = None,
            **changes) -> Value:
    """A copy of conv/linear `w.node` reading `x` with new weight and bias (stored as new params).

    position: where to insert (before=/after= a node); default right before the matched node.
    """
    dtype = rw.tensor(w.args["weight"]).dtype
    base = w.args["weight"].producer.attrs["name"].removesuffix(".weight")
    named = dict(w.args, input=x, **changes)
    named["weight"] = rw.param(weight.to(dtype), f"{base}.fused.weight")
    named["bias"] = rw.param(bias.to(dtype), f"{base}.fused.bias")
    inputs, attrs = encode_arguments(w.node.op, named)
    return rw.add(w.node.op, inputs, attrs, scope=w.node.scope, **(position or {})).output


def per_output(w: Weights, factor: torch.Tensor) -> torch.Tensor:
    """The weight with output channel o multiplied by factor[o] (handles transposed/grouped layouts)."""
    shape = [1] * w.weight.dim()
    if not w.transposed:
        shape[0] = -1
        return w.weight * factor.view(shape)
    g = w.groups
    grouped = w.weight.view(g, w.weight.shape[0] // g, *w.weight.shape[1:])
    scale = factor.view(g, 1, -1, *[1] * (w.weight.dim() - 2))
    return (grouped * scale).view(w.weight.shape)


def per_input(w: Weights, factor: torch.Tensor) -> torch.Tensor:
    """`factor` per input channel laid out like the (non-transposed, grouped) weight [O, I/g, k...]."""
    g, out = w.groups, w.weight.shape[0]
    per_group = factor.view(g, 1, -1).expand(g, out // g, -1).reshape(out, -1)
    return per_group.view(*per_group.shape, *[1] * (w.weight.dim() - 2))
