"""Pipeline strings, the spec round trip of every pass, the PassManager and the rewrite driver."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

import torchcarve as tc
from torchcarve.passes import PASSES, Pass, PassManager, PassResult, parse_pipeline
from torchcarve.passes.base import option_fields
from torchcarve.passes.rewrite import ANY, P, apply_rules

TEXT = """graph @g(%x: f32[2,4]) -> (f32[2,4]) {
  %r = aten.relu(%x) : f32[2,4]
  %c = aten.clone(%r) : f32[2,4]
  return %c
}
"""


@pytest.mark.parametrize("name", sorted(PASSES))
def test_spec_parses_back_to_an_equal_pass(name):
    cls = PASSES[name]
    default = cls()
    assert parse_pipeline(default.spec()) == [default]
    changed = {f: _other_value(tp, d) for f, tp, d in option_fields(cls)}
    if changed:
        custom = cls(**changed)
        assert custom.spec() != default.spec()
        assert parse_pipeline(custom.spec()) == [custom]


def _other_value(tp, default):
    if tp is bool:
        return not default
    if tp is int:
        return default + 3
    if tp is float:
        return default / 2 + 0.125
    return default


def test_aliases_expand_in_place():
    names = [p.name for p in parse_pipeline("dce,cleanup")]
    assert names == ["dce", "dce", "cse", "fold-constants", "simplify"]
    assert "fold-bn" in [p.name for p in parse_pipeline("fuse")]


@pytest.mark.parametrize("text, column, words", [
    ("dce,nope", 5, ["unknown pass 'nope'", "valid passes", "fold-bn"]),
    ("merge-linear{size=1}", 14, ["no option 'size'", "allow-growth"]),
    ("merge-linear{allow-growth=maybe}", 14, ["expects bool"]),
    ("fold-constants{max-elements=1.5}", 16, ["expects int"]),
    ("merge-linear{allow-growth=true", 31, ["unbalanced braces", "column 13"]),
    ("dce}", 4, ["unexpected '}'"]),
    ("fuse{x=1}", 1, ["named pipeline"]),
])
def test_bad_pipelines_give_one_line_with_the_column(text, column, words):
    with pytest.raises(tc.PipelineError) as info:
        parse_pipeline(text)
    message = str(info.value)
    assert f"column {column}:" in message.splitlines()[0]
    for word in words:
        assert word in message


def test_option_types_convert():
    (p,) = parse_pipeline("fold-constants{max-elements=7}")
    assert p.max_elements == 7


@dataclass(frozen=True)
class BreaksGraph(Pass):
    """A deliberately broken pass: points a relu at a value defined after it."""

    name = "breaks-graph"

    def run(self, graph, ctx):
        relu, clone = [n for n in graph.nodes]
        relu.set_input(0, clone.output)
        return PassResult(True)


def test_verifier_stops_a_pass_that_breaks_the_graph():
    graph = tc.parse(TEXT)
    with pytest.raises(tc.VerifyError, match="pass breaks-graph broke the graph"):
        PassManager([BreaksGraph()]).run(graph)
    assert graph.to_text() == TEXT


def test_report_has_costs_and_input_is_untouched():
    graph = tc.parse(TEXT)
    result = tc.optimize(graph, "simplify,dce")
    assert graph.to_text() == TEXT
    line = result.report[0]
    assert line.spec == "simplify" and line.changed and line.nodes == (2, 1)
    assert not result.report[1].changed


def relu_twice(rw, x, out):
    # relu(x) -> relu(relu(x)): never reaches a fixed point
    return rw.add("aten.relu", [rw.add("aten.relu", [x]).output]).output


def explodes(rw, x, out):
    raise ZeroDivisionError("boom")


@dataclass(frozen=True)
class Dummy(Pass):
    name = "dummy"


def test_driver_cap_names_the_rule():
    graph = tc.parse(TEXT)
    with pytest.raises(tc.CarveError, match="rule relu_twice fired"):
        apply_rules(graph, [(P("aten.relu", ANY("x"), name="out"), relu_twice)], Dummy())


def test_rule_exceptions_name_the_pass_and_node():
    graph = tc.parse(TEXT)
    with pytest.raises(tc.CarveError, match=r"dummy: rule explodes failed on %r = aten.relu\(%x\): boom"):
        apply_rules(graph, [(P("aten.relu", ANY("x"), name="out"), explodes)], Dummy())
