"""Shared pieces of the ONNX canonical rules (onnx_canonical.py, onnx_quant.py): the rule result type
and helpers that read ONNX nodes."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from ..ir import Graph
from ..ir.node import Node
from ..ir.ops.aten import encode_arguments
from ..ir.types import Dim, SymSize
from ..ir.value import Value


class Aten(NamedTuple):
    """The replacement of an ONNX node: an aten (or carve) op with its IR inputs and attributes."""

    op: str
    inputs: list[Value]
    attrs: dict[str, Any]


Result = Aten | Value | None
Rule = Callable[[Node, Graph], Result]


def aten(op: str, /, **named: Any) -> Aten:
    """`op` called with schema arguments by name (Values are tensors); defaults are dropped."""
    inputs, attrs = encode_arguments(op, named)
    return Aten(op, inputs, attrs)


# ---- reading ONNX nodes ----------------------------------------------------------------------

def operands(node: Node) -> list[Value | None]:
    """The node's ONNX inputs by position, None where an optional input was omitted."""
    values: list[Value | None] = list(node.inputs)
    for position in sorted(node.attrs.get("absent", [])):
        values.insert(position, None)
    return values


def param_tensor(value: Value | None, graph: Graph) -> torch.Tensor | None:
    """The stored tensor behind a param value, else None."""
    if value is None or value.producer is None or value.producer.op != "param":
        return None
    return graph.params[value.producer.attrs["name"]]


def window(node: Node, spatial: int) -> tuple[list[int], list[int], list[int]] | None:
    """(strides, symmetric pads, dilations) of a Conv/Pool node, or None (SAME_* or asymmetric pads)."""
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return None
    pads = list(node.attrs.get("pads") or [0] * 2 * spatial) if auto_pad == "NOTSET" else [0] * 2 * spatial
    if pads[:spatial] != pads[spatial:]:
        return None
    strides = list(node.attrs.get("strides") or [1] * spatial)
    dilations = list(node.attrs.get("dilations") or [1] * spatial)
    return strides, pads[:spatial], dilations


def target_shape(shape: tuple[Dim | SymSize, ...]) -> list[int | SymSize] | None:
    """A reshape target for an output shape: symbolic dims become -1 (at most one); symbolic sizes stay."""
    sizes = [d if isinstance(d, (int, SymSize)) else -1 for d in shape]
    return sizes if sizes.count(-1) <= 1 else None


def rank(value: Value) -> int:
    return value.type.rank


def same_operands(op: str, node: Node, graph: Graph) -> Result:
    # f(x, ...) -> aten.f(x, ...)   same inputs, no attributes (dtype changes are rejected by the type check)
    return Aten(op, list(node.inputs), {})
