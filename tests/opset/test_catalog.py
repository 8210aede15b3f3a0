"""The op catalog is consistent: every name is a real op, every rule belongs to a declaration, every
declared op lowers to ONNX or says why not, and no rule table lives outside torchcarve/opset."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from torchcarve.errors import CarveError
from torchcarve.ir.ops import get_op
from torchcarve.ir.ops.aten import resolve_overload
from torchcarve.opset import (CATALOG, VIEW_OPS, attr_fix, declaration, dim_rule, known, lowering, macs,
                              prune_sources, shape_only)
from torchcarve.opset import prune_rules
from torchcarve.opset.decl import OpDecl, compose, table
from torchcarve.opset.lowerings import lower_onnx_op

PACKAGE = Path(__file__).resolve().parents[2] / "torchcarve"
# the hand-kept tables an op's knowledge was once spread over; none may come back outside the catalog
OLD_TABLES = {"KNOWN_ATEN", "DIM_RULES", "ATTR_FIXES", "SOURCES", "LOWERINGS", "SHAPE_ONLY_OPS", "VIEW_OPS"}


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_name_is_a_real_allowed_op(name):
    if name.startswith("aten."):
        assert resolve_overload(name) is not None, f"{name} names no torch overload"
    assert get_op(name).name == name  # allowed by the IR's op registry (pure, or a registered carve op)


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_op_lowers_or_says_why_not(name):
    decl = CATALOG[name]
    assert (decl.lower is None) == bool(decl.no_lowering)
    assert lowering(name) is decl.lower


def test_a_declaration_without_lowering_or_reason_is_an_error():
    with pytest.raises(ValueError, match="say why"):
        OpDecl("aten.relu")
    with pytest.raises(ValueError, match="not both"):
        OpDecl("aten.relu", lower=lower_onnx_op, no_lowering="because")


def test_a_name_declared_twice_is_an_error():
    relu = OpDecl("aten.relu", no_lowering="test")
    with pytest.raises(ValueError, match="declared twice: aten.relu"):
        table(relu, relu)
    with pytest.raises(ValueError, match="declared twice: aten.relu"):
        compose({"aten.relu": relu}, {"aten.relu": relu})


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_pruning_fields_belong_to_a_pruned_op(name):
    decl = CATALOG[name]
    if decl.attr_fix is not None or decl.prune_source:
        assert decl.prune is not None, f"{name}: an attribute fix or weight source without a dimension rule"
    if decl.prune_source and not callable(decl.prune_source) and name != "param":
        inputs = [a for a in resolve_overload(name)._schema.arguments if str(a.type) in ("Tensor", "Optional[Tensor]")]
        assert all(position < len(inputs) for position, _ in decl.prune_source)


def test_every_public_prune_rule_is_declared_for_some_op():
    """Rule functions (node, port, axis, idx) and attribute fixes (node, out_types) are each used by a declaration."""
    used = {d.prune for d in CATALOG.values()} | {d.attr_fix for d in CATALOG.values()}
    rules = [f for name, f in vars(prune_rules).items() if inspect.isfunction(f) and not name.startswith("_")
             and f.__module__ == prune_rules.__name__ and list(inspect.signature(f).parameters) in (
                 ["node", "port", "axis", "idx"], ["node", "out_types"])]
    unused = sorted(f.__name__ for f in rules if f not in used)
    assert unused == []


def test_views_are_views_by_their_schema():
    """view=True marks ops whose output may share the input's storage; the schema says so (its output is
    annotated as aliasing), except _unsafe_view, a view whose schema drops the annotation."""
    for name in VIEW_OPS:
        overload = resolve_overload(name)
        assert name == "aten._unsafe_view" or any(r.alias_info is not None for r in overload._schema.returns), name


def test_lookups():
    assert known("aten.conv2d") and known("param") and known("carve.quantize")
    assert not known("aten.searchsorted.Tensor") and not known("onnx.Relu")
    assert declaration("aten.conv2d").name == "aten.conv2d" and declaration("aten.cosh") is None
    assert dim_rule("aten.conv2d") is prune_rules.conv and dim_rule("aten.cosh") is None
    assert attr_fix("aten.conv2d") is prune_rules.fix_groups and attr_fix("aten.relu") is None
    assert prune_sources("aten.linear") == ((1, 0),) and prune_sources("aten.relu") == ()
    assert macs("aten.conv2d") is not None and macs("aten.relu") is None
    assert lowering("onnx.Relu") is lower_onnx_op and lowering("aten.cosh") is None
    assert shape_only("aten.zeros_like") and not shape_only("aten.zeros")
    assert "aten.view" in VIEW_OPS and "aten.relu" not in VIEW_OPS


def test_undeclared_ops_cost_nothing_and_block_pruning():
    """The catalog, not the IR registry, says what passes know: an undeclared op is a barrier."""
    import torch

    import torchcarve as tc
    from torchcarve.analysis.cost import node_cost
    from torchcarve.passes.prune.groups import find_groups

    text = ("graph @g(%x: f32[2,4]) -> (f32[2,3]) {\n  %w = param \"w\" : f32[3,4]\n"
            "  %y = aten.linear(%x, %w) : f32[2,3]\n  %z = aten.cosh(%y) : f32[2,3]\n  return %z\n}\n")
    params = tc.ParamStore()
    params["w"] = torch.randn(3, 4)
    graph = tc.parse(text, params=params)
    linear, cosh = [n for n in graph.nodes if n.op != "param"]
    assert node_cost(linear).macs == 2 * 3 * 4 and node_cost(cosh).macs == 0
    assert all(g.blocked for g in find_groups(graph)), "cosh is no declared op: a barrier at the output"


def test_no_rule_table_outside_the_catalog():
    defined = []
    for path in PACKAGE.rglob("*.py"):
        if "opset" in path.parts:
            continue
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            defined += [f"{path.name}:{t.id}" for t in targets if isinstance(t, ast.Name) and t.id in OLD_TABLES]
    assert defined == []


def test_no_table_is_filled_by_an_import_side_effect():
    """Tables are composed where they are defined: nothing calls .update() on a catalog or registry table."""
    updates = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id.isupper()):
                updates.append(f"{path.relative_to(PACKAGE)}:{node.func.value.id}")
    assert updates == []


def test_unknown_op_in_a_graph_is_a_clear_error_on_export():
    import torch

    import torchcarve as tc

    text = "graph @g(%x: f32[2]) -> (f32[2]) {\n  %y = aten.cosh(%x) : f32[2]\n  return %y\n}\n"
    with pytest.raises(CarveError, match="no ONNX lowering for: aten.cosh"):
        tc.to_onnx(tc.parse(text))
    assert torch.allclose(tc.to_torch(tc.parse(text))(torch.ones(2)), torch.cosh(torch.ones(2)))
