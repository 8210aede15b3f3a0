"""Shape arithmetic on symbolic dims at ONNX import: `Shape -> Gather -> Unsqueeze -> Concat -> Reshape`.

torch.onnx writes `x.view(x.size(0), -1)` as int64 ops on `Shape(x)`. The importer keeps those nodes
and also evaluates the chain on dims (ints and symbols such as "N"), so a Reshape/Expand/ConstantOfShape
reading it gets a symbolic size attribute (`shape=[N, -1]`) and canonicalizes like a static one. A
value here is a dim (a 0-d tensor) or a list of dims (a 1-D tensor); None means "not a shape".
"""
from __future__ import annotations

from typing import Any, Callable, Union

from ..ir.types import Dim, normalize_dim

Dims = Union[Dim, list]


def _gather(operands: list, attrs: dict) -> Dims | None:
    data, indices = operands
    if not isinstance(data, list) or attrs.get("axis", 0) != 0:
        return None
    if isinstance(indices, list):
        return [data[i] for i in indices] if all(-len(data) <= i < len(data) for i in indices) else None
    return data[indices] if -len(data) <= indices < len(data) else None


def _unsqueeze(operands: list, attrs: dict) -> Dims | None:
    axes = operands[1] if len(operands) > 1 else attrs.get("axes")
    return [operands[0]] if not isinstance(operands[0], list) and list(axes or []) in ([0], [-1]) else None


def _squeeze(operands: list, attrs: dict) -> Dims | None:
    data = operands[0]
    return data[0] if isinstance(data, list) and len(data) == 1 else None


def _concat(operands: list, attrs: dict) -> Dims | None:
    if not all(isinstance(o, list) for o in operands):
        return None
    return [d for o in operands for d in o]


def _slice(operands: list, attrs: dict) -> Dims | None:
    data, starts, ends, *rest = operands + [None] * (5 - len(operands))
    axes, steps = rest[0] or [0], rest[1] or [1]
    if not isinstance(data, list) or list(axes) not in ([0], [-1]) or not all(isinstance(v, list) for v in (starts, ends)):
        return None
    return data[starts[0]:ends[0]:steps[0]]


def _mul(operands: list, attrs: dict) -> Dims | None:
    a, b = operands
    if isinstance(a, list) or isinstance(b, list):
        a, b = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])
        if len(a) != len(b) and 1 not in (len(a), len(b)):
            return None
        pairs = zip(a * (len(b) if len(a) == 1 else 1), b * (len(a) if len(b) == 1 else 1))
        products = [_product(x, y) for x, y in pairs]
        return None if None in products else products
    return _product(a, b)


def _product(a: Dim, b: Dim) -> Dim | None:
    if any(isinstance(d, int) and d < 0 for d in (a, b)):
        return None
    return normalize_dim(f"{a}*{b}")


def _same(operands: list, attrs: dict) -> Dims | None:
    return operands[0]


RULES: dict[str, Callable[[list, dict], Any]] = {
    "Gather": _gather, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Concat": _concat, "Slice": _slice,
    "Mul": _mul, "Cast": _same, "Identity": _same,
}


def evaluate(op_type: str, operands: list, attrs: dict) -> Dims | None:
    """The dims an int64 op computes from dims, or None when it is not shape arithmetic we follow."""
    rule = RULES.get(op_type)
    if rule is None or any(o is None for o in operands):
        return None
    try:
        return rule(operands, attrs)
    except (TypeError, IndexError, ValueError):  # an operand of another form (a float, a 2-D tensor): not a shape
        return None


def shape_dims(dims: tuple, attrs: dict) -> list:
    """Shape(x) of a typed value, with opset 15's start/end."""
    return list(dims)[attrs.get("start", 0):attrs.get("end")]
