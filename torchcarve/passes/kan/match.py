"""Find unrolled Cox–de Boor recursions in a graph by structure and constant grid, and prove them.

A recursion starts at a value x [..., in] and reads it only through elementwise ops, slices and
unsqueezes, against constant (weight-derived) tensors. Its level 0 compares x against two constant
tensors: the lower knots (x >= t[:, :-1]) and the upper knots (x < t[:, 1:]); they give the grid t.
The recursion's result is a value of shape [..., in, n - 1 - k]; k follows from its width. The match
is then proved by evaluating the region on probe inputs (knots, midpoints, outside the grid) and
comparing with the Cox–de Boor recursion on t in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...ir import Graph, Node, Value
from ...ir.ops import get_op
from ..cleanup import is_random
from .basis import cox_de_boor

# ops a recursion is made of (anything else ends the region)
REGION_OPS = frozenset({
    "aten.ge.Tensor", "aten.lt.Tensor", "aten.gt.Tensor", "aten.le.Tensor",
    "aten.__and__.Tensor", "aten.bitwise_and.Tensor", "aten.logical_and",
    "aten.mul.Tensor", "aten.div.Tensor", "aten.sub.Tensor", "aten.add.Tensor", "aten.rsub.Tensor",
    "aten.to.dtype", "aten._to_copy", "aten.type_as", "aten.nan_to_num", "aten.where.self",
    "aten.slice.Tensor", "aten.unsqueeze", "aten.select.int", "aten.clone", "aten.contiguous", "aten.alias",
    # imported ONNX keeps these under their ONNX names
    "onnx.GreaterOrEqual", "onnx.Less", "onnx.Greater", "onnx.LessOrEqual", "onnx.And", "onnx.Cast", "onnx.Slice",
})
# compare op -> (position of x, which knots the constant holds): x >= lower, x < upper
LEVEL0_COMPARES = {"aten.ge.Tensor": (0, "lower"), "aten.le.Tensor": (1, "lower"),
                   "aten.lt.Tensor": (0, "upper"), "aten.gt.Tensor": (1, "upper"),
                   "onnx.GreaterOrEqual": (0, "lower"), "onnx.LessOrEqual": (1, "lower"),
                   "onnx.Less": (0, "upper"), "onnx.Greater": (1, "upper")}
# how the compares reach back to x
ROOT_STEPS = frozenset({"aten.unsqueeze", "aten.select.int", "aten.clone", "aten.contiguous", "aten.alias"})
PROBES_PER_INTERVAL = 4
PROOF_ATOL = 1e-4


@dataclass
class Recursion:
    """A proved B-spline recursion: x [..., in] -> out [..., in, n-1-k] on `grid` [in, n]."""

    x: Value
    out: Value
    grid: torch.Tensor
    k: int
    nodes: list[Node]


class Constants:
    """Values computed from weights alone, evaluated on demand."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.known: dict[Value, torch.Tensor] = {}
        self.constant: set[Value] = set()
        for node in graph.nodes:  # in order: a node is constant when all its inputs are
            if node.op == "param" or (node.inputs and not is_random(node) and all(v in self.constant for v in node.inputs)):
                self.constant.update(node.outputs)

    def is_constant(self, value: Value) -> bool:
        return value in self.constant

    def value(self, value: Value) -> torch.Tensor:
        if value not in self.known:
            node = value.producer
            if node.op == "param":
                self.known[value] = self.graph.params[node.attrs["name"]]
            else:
                outputs = get_op(node.op).run([self.value(v) for v in node.inputs], node.attrs)
                self.known.update(zip(node.outputs, outputs))
        return self.known[value]


def find_recursions(graph: Graph) -> tuple[list[Recursion], list[dict]]:
    """Every proved recursion, and the candidates left alone with the reason."""
    constants = Constants(graph)
    found: list[Recursion] = []
    left: list[dict] = []
    for x, compares in _level0_groups(graph, constants).items():
        recursion, reason = _match(graph, constants, x, compares)
        if recursion is None:
            left.append({"at": x.name, "reason": reason})
        else:
            found.append(recursion)
    return found, left


def _level0_groups(graph: Graph, constants: Constants) -> dict[Value, list[Node]]:
    """Compares of a non-constant value against a constant, grouped by the value they trace back to."""
    groups: dict[Value, list[Node]] = {}
    for node in graph.nodes:
        if node.op not in LEVEL0_COMPARES or len(node.inputs) != 2:
            continue
        position, _ = LEVEL0_COMPARES[node.op]
        x, knots = node.inputs[position], node.inputs[1 - position]
        if constants.is_constant(x) or not constants.is_constant(knots):
            continue
        groups.setdefault(_root(x), []).append(node)
    return groups


def _root(value: Value) -> Value:
    while value.producer is not None and value.producer.op in ROOT_STEPS:
        value = value.producer.inputs[0]
    return value


def _match(graph: Graph, constants: Constants, x: Value, compares: list[Node]) -> tuple[Recursion | None, str]:
    if x.type.rank < 2 or not x.type.dtype.startswith("f"):
        return None, "x is not a float tensor [..., in]"
    grid = _grid(constants, x, compares)
    if isinstance(grid, str):
        return None, grid
    region = _region(graph, constants, x)
    width = grid.shape[1] - 1
    for out in _exits(region):
        k = width - out.type.shape[-1] if isinstance(out.type.shape[-1], int) else 0
        if out.type.rank != x.type.rank + 1 or not 1 <= k < width or out.type.shape[:-1] != x.type.shape:
            continue
        nodes = _cone(region, out)
        if not set(compares) <= set(nodes):
            continue
        if not _proved(constants, nodes, x, out, grid, k):
            return None, f"region ending at %{out.name} does not compute the B-spline bases of its grid"
        return Recursion(x, out, grid, k, nodes), ""
    return None, "no recursion output of shape [..., in, n-1-k] found"


def _grid(constants: Constants, x: Value, compares: list[Node]) -> torch.Tensor | str:
    """The knots [in, n] from the level-0 lower and upper knot constants, or why not."""
    knots: dict[str, list[torch.Tensor]] = {"lower": [], "upper": []}
    for node in compares:
        position, side = LEVEL0_COMPARES[node.op]
        knots[side].append(constants.value(node.inputs[1 - position]))
    if len(knots["lower"]) != 1 or len(knots["upper"]) != 1:
        return "level 0 needs exactly one x >= knots and one x < knots compare"
    lower, upper = knots["lower"][0], knots["upper"][0]
    features = x.type.shape[-1]
    if lower.shape != upper.shape or lower.dim() == 0 or not isinstance(features, int):
        return "lower and upper knots differ in shape"
    lower, upper = lower.reshape(-1, lower.shape[-1]), upper.reshape(-1, upper.shape[-1])
    if lower.shape[0] not in (1, features) or not torch.equal(lower[:, 1:], upper[:, :-1]):
        return "lower and upper knots are not one grid"
    return torch.cat([lower, upper[:, -1:]], dim=1).expand(features, -1).to(torch.float64)


def _region(graph: Graph, constants: Constants, x: Value) -> list[Node]:
    """Nodes of REGION_OPS whose non-constant inputs all come from x or the region, in order."""
    inside = {x}
    region = []
    for node in graph.nodes:
        if node.op not in REGION_OPS:
            continue
        variable = [v for v in node.inputs if not constants.is_constant(v)]
        if variable and all(v in inside for v in variable):
            region.append(node)
            inside.update(node.outputs)
    return region


def _exits(region: list[Node]) -> list[Value]:
    """Region values read outside the region (or returned)."""
    members = set(region)
    return [v for node in region for v in node.outputs
            if v.is_graph_output or any(user not in members for user in v.users)]


def _cone(region: list[Node], out: Value) -> list[Node]:
    """The region nodes `out` depends on, in order."""
    needed = {out.producer}
    for node in reversed(region):
        if node in needed:
            needed.update(v.producer for v in node.inputs if v.producer is not None)
    return [n for n in region if n in needed]


def _proved(constants: Constants, nodes: list[Node], x: Value, out: Value, grid: torch.Tensor, k: int) -> bool:
    """Run the region on probes inside and outside the grid; True when it matches Cox–de Boor."""
    probe = _probe(grid, x)
    values: dict[Value, torch.Tensor] = {x: probe}
    try:
        with torch.no_grad():
            for node in nodes:
                inputs = [values[v] if v in values else constants.value(v) for v in node.inputs]
                values.update(zip(node.outputs, get_op(node.op).run(inputs, node.attrs)))
    except Exception:  # a kernel that does not take the probe's shape: not provable here
        return False
    result = values[out].to(torch.float64)
    expected = cox_de_boor(probe.to(torch.float64), grid, k)
    return result.shape == expected.shape and bool(torch.allclose(result, expected, atol=PROOF_ATOL, rtol=0))


def _probe(grid: torch.Tensor, x: Value) -> torch.Tensor:
    """Probe inputs shaped like x: per feature, every knot, points between them, and points outside."""
    steps = torch.linspace(0, 1, PROBES_PER_INTERVAL + 1, dtype=torch.float64)[:-1]
    inner = (grid[:, :-1, None] + (grid[:, 1:] - grid[:, :-1])[:, :, None] * steps).flatten(1)
    span = grid[:, -1:] - grid[:, :1]
    points = torch.cat([grid[:, :1] - span, inner, grid[:, -1:], grid[:, -1:] + span], dim=1).T  # [P, in]
    return points.to(x.type.torch_dtype).reshape(*([1] * (x.type.rank - 2)), *points.shape)
