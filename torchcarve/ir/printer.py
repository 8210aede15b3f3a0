"""The text form: MLIR-like, one node a line, weights referenced by name (never inlined).

Names come from untrusted files (ONNX op types, attribute names, ...): any name that is not a plain
token is printed as a quoted, escaped string (`%"a b"`, `"onnx.My Op"(...)`, `{"k\\n"=1}`), and
every string escapes quotes, backslashes, control and non-ASCII characters, so the printed text is
ASCII, one node a line, and `parse` reads back exactly the graph that was printed.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

import torch

from ..errors import CarveError
from .graph import Graph
from .node import Node
from .types import DTYPE_NAMES, DTYPES, SymSize, dim_symbols
from .value import Value


IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a plain value or graph name
DOTTED_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")  # a plain op name or attribute key


def quote(text: str) -> str:
    """A string literal: JSON escapes (quotes, backslash, control and non-ASCII characters), plus DEL."""
    return json.dumps(text).replace("\x7f", "\\u007f")


def print_name(name: str, plain: re.Pattern[str] = IDENT_RE) -> str:
    """`name` itself when it is a plain token, else quoted and escaped."""
    return name if plain.fullmatch(name) else quote(name)


def print_value(value: Value) -> str:
    return "%" + print_name(value.name)


def print_graph(graph: Graph) -> str:
    """The whole graph as text; `parse` reads it back to an identical graph."""
    input_names, output_names = graph.signature_names()
    args = ", ".join(f"{print_value(v)}: {v.type}{_external(n, v.name)}" for v, n in zip(graph.inputs, input_names))
    results = ", ".join(f"{v.type}{_external(n, v.name)}" for v, n in zip(graph.outputs, output_names))
    lines = [f"graph @{print_name(graph.name)}({args}) -> ({results}) {{"]
    lines += [f"  {print_node(node)}" for node in graph.nodes]
    lines.append(f"  return {', '.join(print_value(v) for v in graph.outputs)}".rstrip())
    lines.append("}")
    return "\n".join(lines) + "\n"


def _external(name: str, value_name: str) -> str:
    """An input's or output's external name, as a string after its type when it is not the value's name."""
    return "" if name == value_name else f" {quote(name)}"


def print_node(node: Node) -> str:
    outs = ", ".join(print_value(v) for v in node.outputs)
    types = ", ".join(str(v.type) for v in node.outputs)
    if node.op == "param":
        return f"{outs} = param {quote(node.attrs['name'])} : {types}"
    ins = ", ".join(print_value(v) for v in node.inputs)
    attrs = f" {{{print_attrs(node.attrs)}}}" if node.attrs else ""
    loc = f" loc({quote(node.scope)})" if node.scope else ""
    return f"{outs} = {print_name(node.op, DOTTED_RE)}({ins}){attrs} : {types}{loc}"


def print_attrs(attrs: dict[str, Any]) -> str:
    return ", ".join(f"{print_name(key, DOTTED_RE)}={print_attr(value)}" for key, value in attrs.items())


def print_attr(value: Any) -> str:
    """One attribute literal: none, true/false, ints, floats, "strings", dtypes, symbolic sizes, [lists]."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _print_float(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, SymSize):
        return _print_sym_size(value)
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


def _print_sym_size(size: SymSize) -> str:
    """A symbolic size prints as its dim (`batch*12`); symbols that read as other literals have no text form."""
    from .parser import KEYWORDS

    clash = [s for s in dim_symbols(size.dim) if s in KEYWORDS or s in DTYPES]
    if clash:
        raise CarveError(f"symbol '{clash[0]}' in a size attribute reads as a keyword or dtype in the text form",
                         hint="rename the symbolic dim")
    return size.dim
