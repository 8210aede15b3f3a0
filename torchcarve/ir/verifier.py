"""The verifier: IR invariants, as a table of checks. Errors name the node, op, rule and types."""
from __future__ import annotations

from typing import Callable

from ..errors import CarveError, VerifyError
from .graph import Graph
from .infer import InferenceUnavailable, infer_types
from .node import Node


def _fail(node: Node, rule: str, detail: str) -> VerifyError:
    ins = ", ".join(str(v.type) for v in node.inputs)
    outs = ", ".join(str(v.type) for v in node.outputs)
    error = VerifyError(f"{node!r} [{node.op}] breaks '{rule}': {detail} (inputs: {ins or '-'}; outputs: {outs})")
    error.node = node  # the parser maps it back to a line:col
    return error


def check_param(node: Node, graph: Graph, check_params: bool) -> None:
    name = node.attrs.get("name")
    if node.inputs or not isinstance(name, str) or len(node.outputs) != 1:
        raise _fail(node, "param form", "a param node has no inputs, one output and a string 'name'")
    if not check_params:
        return
    if name not in graph.params:
        raise _fail(node, "params exist", f"'{name}' is not in the ParamStore")
    actual = graph.params.type_of(name)
    if actual != node.output.type:
        raise _fail(node, "param type", f"the stored tensor is {actual}")


def check_inferred_types(node: Node, graph: Graph, check_params: bool) -> None:
    try:
        expected = infer_types(node.op, node.attrs, [v.type for v in node.inputs])
    except InferenceUnavailable:
        return  # data-dependent output shape: the declared type stands
    except CarveError as e:
        raise _fail(node, "shape inference", str(e)) from e
    declared = [v.type for v in node.outputs]
    if expected != declared:
        raise _fail(node, "types match inference", f"the registry infers {', '.join(map(str, expected))}")


# op -> extra checks; every node also gets the structural checks below
OP_CHECKS: dict[str, list[Callable[[Node, Graph, bool], None]]] = {
    "param": [check_param],
}
DEFAULT_CHECKS = [check_inferred_types]


def verify(graph: Graph, check_params: bool = True) -> None:
    """Raise VerifyError on the first broken invariant: SSA, uses, order (so acyclic), types, params."""
    defined: set[int] = set()
    names: set[str] = set()
    for value in graph.inputs:
        _define(value, names, f"graph input %{value.name}")
        defined.add(id(value))
    for node in graph.nodes:
        _check_structure(node, graph, defined)
        for check in OP_CHECKS.get(node.op, DEFAULT_CHECKS):
            check(node, graph, check_params)
        for value in node.outputs:
            _define(value, names, repr(node))
            defined.add(id(value))
    for value in graph.outputs:
        if id(value) not in defined:
            raise VerifyError(f"graph output %{value.name} is not defined in @{graph.name}")
    for value in graph.inputs:
        _check_users(value, graph, f"graph input %{value.name}")
    _check_signature_names(graph)


def _check_signature_names(graph: Graph) -> None:
    """External names: none stored, or one non-empty name per input/output, unique on each side; an output
    named like an input is that input."""
    for side, names, values in (("input", graph.input_names, graph.inputs), ("output", graph.output_names, graph.outputs)):
        if names and len(names) != len(values):
            raise VerifyError(f"@{graph.name} has {len(values)} {side}s but {len(names)} {side} names")
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise VerifyError(f"@{graph.name}: {side} names must be unique non-empty strings, got {names}")
    input_names, output_names = graph.signature_names()
    by_name = dict(zip(input_names, graph.inputs))
    for name, value in zip(output_names, graph.outputs):
        if by_name.get(name, value) is not value:
            raise VerifyError(f"@{graph.name}: output '{name}' has an input's name but is not that input")


def _define(value, names: set[str], where: str) -> None:
    if value.name in names:
        raise VerifyError(f"{where}: %{value.name} is defined twice (SSA)")
    names.add(value.name)


def _check_structure(node: Node, graph: Graph, defined: set[int]) -> None:
    if node.graph is not graph:
        raise _fail(node, "ownership", "the node does not belong to this graph")
    for position, value in enumerate(node.inputs):
        if id(value) not in defined:
            raise _fail(node, "defined before use", f"input %{value.name} is not defined earlier (dangling or cyclic)")
        if (node, position) not in value._uses:
            raise _fail(node, "use lists", f"%{value.name} does not list this node as a user")
    for value in node.outputs:
        _check_users(value, graph, node)


def _check_users(value, graph: Graph, where: Node | str) -> None:
    for user, position in value._uses:
        if user.graph is not graph or position >= len(user.inputs) or user.inputs[position] is not value:
            detail = f"%{value.name} lists a stale user {user!r}"
            raise _fail(where, "use lists", detail) if isinstance(where, Node) else VerifyError(f"{where}: {detail}")
