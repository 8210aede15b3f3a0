"""The verifier catches each broken invariant and names the node and the rule."""
from __future__ import annotations

import pytest
import torch

import torchcarve as tc
from torchcarve.ir.value import Value

F4 = tc.TensorType((4,))


def chain() -> tuple[tc.Graph, tc.Value, list[tc.Node]]:
    g = tc.Graph("chain")
    x = g.add_input("x", F4)
    w = g.add_param("w", torch.ones(4))
    a = g.add_node("aten.mul.Tensor", [x, w], names=["a"])
    b = g.add_node("aten.relu", [a.output], names=["b"])
    c = g.add_node("aten.neg", [b.output], names=["c"])
    g.set_outputs([c.output])
    tc.verify(g)
    return g, x, [w.producer, a, b, c]


def test_a_valid_graph_passes():
    g, _, _ = chain()
    tc.verify(g)


def test_value_defined_after_its_use():
    g, x, (_, a, b, c) = chain()
    b.set_input(0, c.output)  # b reads c, which comes later: a cycle
    with pytest.raises(tc.VerifyError, match=r"%b = aten.relu.*'defined before use'.*%c"):
        tc.verify(g)


def test_dangling_input_from_a_value_outside_the_graph():
    g, x, (_, a, b, c) = chain()
    b._inputs[0] = Value(F4, "ghost")  # bypasses the graph's safe API on purpose
    a.output._uses.clear()
    with pytest.raises(tc.VerifyError, match=r"%b = aten.relu.*'defined before use'.*%ghost"):
        tc.verify(g)


def test_ssa_name_defined_twice():
    g, x, (_, a, b, c) = chain()
    c.output.name = "a"
    with pytest.raises(tc.VerifyError, match="%a is defined twice"):
        tc.verify(g)


def test_declared_type_disagreeing_with_inference():
    g, x, (_, a, b, c) = chain()
    b.outputs[0].type = tc.TensorType((5,))
    with pytest.raises(tc.VerifyError, match=r"aten.relu.*'types match inference'.*f32\[4\]"):
        tc.verify(g)


def test_shape_inference_failure_names_the_node():
    g = tc.Graph("g")
    x = g.add_input("x", F4)
    y = g.add_input("y", tc.TensorType((3,)))
    g.add_node("aten.add.Tensor", [x, y], output_types=[F4], names=["bad"])
    with pytest.raises(tc.VerifyError, match=r"%bad = aten.add.Tensor.*'shape inference'"):
        tc.verify(g)


def test_stale_and_missing_use_lists():
    g, x, (_, a, b, c) = chain()
    a.output._uses.append((c, 0))
    with pytest.raises(tc.VerifyError, match=r"'use lists'.*stale user"):
        tc.verify(g)
    a.output._uses.clear()
    with pytest.raises(tc.VerifyError, match=r"%b = aten.relu.*'use lists'.*does not list this node"):
        tc.verify(g)


def test_node_owned_by_another_graph():
    g, x, nodes = chain()
    other = tc.Graph("other")
    foreign = other.add_node("aten.relu", [other.add_input("y", F4)], names=["foreign"])
    g._nodes.append(foreign)  # bypasses the graph's safe API on purpose
    with pytest.raises(tc.VerifyError, match=r"%foreign = aten.relu.*'ownership'"):
        tc.verify(g)


def test_stale_user_of_a_graph_input():
    g, x, (_, a, b, c) = chain()
    x._uses.append((c, 0))
    with pytest.raises(tc.VerifyError, match=r"graph input %x: .*stale user"):
        tc.verify(g)


def test_param_missing_from_the_store_or_of_the_wrong_type():
    g, x, (w, *_) = chain()
    g.params["w"] = torch.ones(5)
    with pytest.raises(tc.VerifyError, match=r"'param type'.*f32\[5\]"):
        tc.verify(g)
    del g.params["w"]
    with pytest.raises(tc.VerifyError, match=r"%w = param.*'params exist'.*'w'"):
        tc.verify(g)
    tc.verify(g, check_params=False)  # structure alone is fine


def test_malformed_param_node():
    g, x, (w, *_) = chain()
    w.attrs["name"] = 3
    with pytest.raises(tc.VerifyError, match="'param form'"):
        tc.verify(g)


def test_graph_output_not_defined_in_the_graph():
    g, x, nodes = chain()
    g.set_outputs([Value(F4, "nowhere")])
    with pytest.raises(tc.VerifyError, match="graph output %nowhere is not defined"):
        tc.verify(g)
