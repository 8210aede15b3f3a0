"""Value, Node and Graph invariants: uses, RAUW, safe erase, insertion, sort, clone, networkx view."""
from __future__ import annotations

import pytest
import torch

import torchcarve as tc

F4 = tc.TensorType((4,))


def small_graph() -> tuple[tc.Graph, tc.Value, tc.Node, tc.Node, tc.Node]:
    """x -> relu -> (add relu relu) -> sigmoid -> output."""
    g = tc.Graph("small")
    x = g.add_input("x", F4)
    relu = g.add_node("aten.relu", [x])
    add = g.add_node("aten.add.Tensor", [relu.output, relu.output])
    out = g.add_node("aten.sigmoid", [add.output])
    g.set_outputs([out.output])
    return g, x, relu, add, out


def test_building_infers_types_and_tracks_uses():
    g, x, relu, add, out = small_graph()
    assert add.output.type == F4 and add.output.producer is add and x.is_graph_input
    assert relu.output.uses == [(add, 0), (add, 1)]
    assert relu.output.users == [add]
    assert out.output.is_graph_output and not add.output.is_graph_output
    assert [n.op for n in g.nodes] == ["aten.relu", "aten.add.Tensor", "aten.sigmoid"]
    tc.verify(g)


def test_value_names_are_unique_and_sanitized():
    g = tc.Graph("g")
    a = g.add_input("layer1.0.x", F4)
    b = g.add_input("layer1.0.x", F4)
    c = g.add_input("0in", F4)
    assert (a.name, b.name, c.name) == ("layer1_0_x", "layer1_0_x_1", "v0in")


def test_multi_output_node_has_no_getitem():
    g = tc.Graph("g")
    x = g.add_input("x", tc.TensorType((6, 4)))
    split = g.add_node("aten.split.Tensor", [x], {"split_size": 2})
    assert [v.type.shape for v in split.outputs] == [(2, 4)] * 3
    assert [v.index for v in split.outputs] == [0, 1, 2]
    with pytest.raises(ValueError):
        split.output
    g.set_outputs(list(split.outputs))
    tc.verify(g)


def test_uses_is_a_snapshot_safe_to_mutate_while_iterating():
    g, x, relu, add, out = small_graph()
    other = g.add_node("aten.tanh", [x], before=add)
    for node, position in relu.output.uses:
        node.set_input(position, other.output)
    assert relu.output.uses == []
    assert other.output.uses == [(add, 0), (add, 1)]
    tc.verify(g)


def test_replace_all_uses_with_moves_every_use():
    g, x, relu, add, out = small_graph()
    relu.output.replace_all_uses_with(x)
    assert add.inputs == (x, x) and relu.output.uses == []
    g.erase(relu)
    tc.verify(g)


def test_replace_all_uses_with_refuses_a_graph_output_unless_asked():
    g, x, relu, add, out = small_graph()
    tanh = g.add_node("aten.tanh", [add.output])
    with pytest.raises(tc.VerifyError, match="graph output"):
        out.output.replace_all_uses_with(tanh.output)
    assert g.outputs == [out.output]  # unchanged
    out.output.replace_all_uses_with(tanh.output, replace_graph_outputs=True)
    assert g.outputs == [tanh.output]
    g.erase(out)
    tc.verify(g)


def test_erasing_a_used_node_raises_before_changing_anything():
    g, x, relu, add, out = small_graph()
    before = g.to_text()
    with pytest.raises(tc.VerifyError, match="still used by aten.add.Tensor"):
        g.erase(relu)
    with pytest.raises(tc.VerifyError, match="graph output"):
        g.erase(out)
    assert g.to_text() == before
    assert relu.graph is g and x.uses == [(relu, 0)] and relu.output.uses == [(add, 0), (add, 1)]
    tc.verify(g)


def test_erase_unused_removes_dead_chains_in_one_call():
    g, x, relu, add, out = small_graph()
    dead1 = g.add_node("aten.tanh", [x])
    dead2 = g.add_node("aten.neg", [dead1.output])
    assert g.erase_unused([dead1, dead2, relu]) == 2  # relu is used: kept
    assert dead1 not in g.nodes and dead2 not in g.nodes and x.uses == [(relu, 0)]
    tc.verify(g)


def test_insert_before_and_after_an_anchor():
    g, x, relu, add, out = small_graph()
    first = g.add_node("aten.neg", [x], before=relu)
    after = g.add_node("aten.tanh", [relu.output], after=relu)
    assert g.nodes.index(first) == 0 and g.nodes.index(after) == 2
    tc.verify(g)


def test_inputs_from_another_graph_are_rejected():
    g1, x1, *_ = small_graph()
    g2 = tc.Graph("other")
    with pytest.raises(tc.VerifyError, match="does not belong"):
        g2.add_node("aten.relu", [x1])
    assert len(g2) == 0


def test_sort_restores_topological_order():
    g, x, relu, add, out = small_graph()
    late = g.add_node("aten.neg", [x])           # defined at the end ...
    relu.set_input(0, late.output)                # ... but used by the first node
    with pytest.raises(tc.VerifyError, match="defined before use"):
        tc.verify(g)
    g.sort()
    assert [n.op for n in g.nodes] == ["aten.neg", "aten.relu", "aten.add.Tensor", "aten.sigmoid"]
    tc.verify(g)


def test_sort_reports_a_cycle():
    g, x, relu, add, out = small_graph()
    relu.set_input(0, add.output)
    with pytest.raises(tc.VerifyError, match="cycle"):
        g.sort()


def test_clone_is_structurally_independent():
    g, x, relu, add, out = small_graph()
    g.add_param("w", torch.ones(4))
    twin = g.clone()
    assert twin.to_text() == g.to_text()
    twin_add = next(n for n in twin.nodes if n.op == "aten.add.Tensor")
    twin_add.set_input(1, twin.inputs[0])
    twin.params["w"] = torch.zeros(4)
    assert twin.to_text() != g.to_text()
    assert add.inputs == (relu.output, relu.output)
    assert torch.equal(g.params["w"], torch.ones(4))
    assert all(v.graph is twin for v in twin.values())
    tc.verify(g)
    tc.verify(twin)


def test_add_param_puts_param_nodes_first_and_checks_the_store():
    g, x, relu, add, out = small_graph()
    w = g.add_param("bias", torch.ones(4), trainable=True)
    assert g.nodes[0] is w.producer and w.type == F4 and "bias" in g.params.trainable
    with pytest.raises(tc.VerifyError, match="not in the graph's ParamStore"):
        g.add_param("missing")


def test_to_networkx_has_one_vertex_per_node_and_one_edge_per_use():
    g, x, relu, add, out = small_graph()
    view = g.to_networkx()
    assert view.number_of_nodes() == len(g.nodes) + len(g.inputs)
    assert view.number_of_edges() == sum(len(n.inputs) for n in g.nodes)
    assert view.nodes[f"%{add.output.name}"]["op"] == "aten.add.Tensor"
    assert view.number_of_edges(f"%{relu.output.name}", f"%{add.output.name}") == 2
    import networkx as nx
    assert nx.is_directed_acyclic_graph(view)
