"""The text form: MLIR-like, one node a line, weights referenced by name (never inlined)."""
from __future__ import annotations

import json
import math
from typing import Any

import torch

from ..errors import CarveError
from .graph import Graph
from .node import Node
from .types import DTYPE_NAMES


def print_graph(graph: Graph) -> str:
    """The whole graph as text; `parse` reads it back to an identical graph."""
    input_names, output_names = graph.signature_names()
    args = ", ".join(f"%{v.name}: {v.type}{_external(n, v.name)}" for v, n in zip(graph.inputs, input_names))
    results = ", ".join(f"{v.type}{_external(n, v.name)}" for v, n in zip(graph.outputs, output_names))
    lines = [f"graph @{graph.name}({args}) -> ({results}) {{"]
    lines += [f"  {print_node(node)}" for node in graph.nodes]
    lines.append(f"  return {', '.join('%' + v.name for v in graph.outputs)}".rstrip())
    lines.append("}")
    return "\n".join(lines) + "\n"


def _external(name: str, value_name: str) -> str:
    """An input's or output's external name, as a string after its type when it is not the value's name."""
    return "" if name == value_name else f" {json.dumps(name)}"


def print_node(node: Node) -> str:
    outs = ", ".join(f"%{v.name}" for v in node.outputs)
    types = ", ".join(str(v.type) for v in node.outputs)
    if node.op == "param":
        return f"{outs} = param {json.dumps(node.attrs['name'])} : {types}"
    ins = ", ".join(f"%{v.name}" for v in node.inputs)
    attrs = f" {{{print_attrs(node.attrs)}}}" if node.attrs else ""
    loc = f" loc({json.dumps(node.scope)})" if node.scope else ""
    return f"{outs} = {node.op}({ins}){attrs} : {types}{loc}"


def print_attrs(attrs: dict[str, Any]) -> str:
    return ", ".join(f"{key}={print_attr(value)}" for key, value in attrs.items())


def print_attr(value: Any) -> str:
    """One attribute literal: none, true/false, ints, floats, "strings", dtypes, [lists]."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _print_float(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, torch.dtype):
        return DTYPE_NAMES[value]
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(print_attr(v) for v in value) + "]"
    raise CarveError(f"attribute value {value!r} of type {type(value).__name__} has no text form")


def _print_float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = repr(value)
    return text if any(c in text for c in ".e") else f"{text}.0"
