"""NodeList order under inserts and erases, and where Graph.add_param puts params."""
import torch

import torchcarve as tc
from torchcarve.ir.nodelist import NodeList


def test_nodelist_keeps_order_through_edits() -> None:
    items = NodeList()
    for name in "acd":
        items.append(name)
    items.insert_before("c", "b")
    items.insert_after("d", "e")
    items.insert_after(None, "start")
    assert items.as_list() == ["start", "a", "b", "c", "d", "e"]
    items.remove("c")
    items.remove("start")
    assert items.as_list() == ["a", "b", "d", "e"] and len(items) == 4
    assert "c" not in items and "b" in items
    items.replace_all(["e", "a"])
    assert list(items) == ["e", "a"] and items.first() == "e" and items.next_of("e") == "a"


def test_params_stay_at_the_top_in_order_added() -> None:
    graph = tc.Graph("g")
    x = graph.add_input("x", tc.TensorType((2, 3)))
    w1 = graph.add_param("w1", torch.ones(3))
    first = graph.add_node("aten.mul.Tensor", [x, w1])
    w2 = graph.add_param("w2", torch.ones(3))
    second = graph.add_node("aten.add.Tensor", [first.output, w2])
    graph.set_outputs([second.output])
    w3 = graph.add_param("w3", torch.ones(3))
    graph.add_node("aten.mul.Tensor", [second.output, w3], before=None)
    assert [n.attrs.get("name") for n in graph.nodes if n.op == "param"] == ["w1", "w2", "w3"]
    assert [n.op for n in graph.nodes][:3] == ["param"] * 3
    tc.verify(graph)


def test_param_tail_is_found_again_after_it_is_erased() -> None:
    graph = tc.Graph("g")
    x = graph.add_input("x", tc.TensorType((3,)))
    a = graph.add_param("a", torch.ones(3))
    b = graph.add_param("b", torch.ones(3))
    node = graph.add_node("aten.mul.Tensor", [x, a])
    graph.erase(b.producer)
    c = graph.add_param("c", torch.ones(3))
    graph.add_node("aten.add.Tensor", [node.output, c])
    assert [n.attrs.get("name") for n in graph.nodes if n.op == "param"] == ["a", "c"]
    assert graph.nodes.index(c.producer) < graph.nodes.index(node)
    tc.verify(graph, check_params=False)
