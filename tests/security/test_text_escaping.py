"""The printer quotes and escapes every foreign name; the parser reads it back exactly; the CLI never
writes control characters to the terminal."""
from __future__ import annotations

import onnx
import onnx.helper as oh
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto

import torchcarve as tc
from torchcarve.cli import main as carve
from torchcarve.cli.common import UNPRINTABLE_RE, printable

HOSTILE = ["\n", '"', "{", "}", "%", "\\", "\x1b[31m", "\x00", "\x07", "\r", "é", "\u202e", "\ud800", "\x7f", "\x85",
           " a b", "return", "param", "//", "@g", "=", "x\n  %evil = aten.relu(%x) : f32[batch,3]\n", "a.b", "_",
           "\U0001f600", "}\n}\ngraph @h() -> () {"]
names = st.one_of(st.sampled_from(HOSTILE), st.text(min_size=1, max_size=10),
                  st.lists(st.sampled_from(HOSTILE), min_size=1, max_size=3).map("".join))
attr_values = st.one_of(names, st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False), st.booleans(), st.none(),
                        st.lists(st.one_of(st.integers(-5, 5), names), max_size=3))


def structure(graph: tc.Graph) -> tuple:
    """Everything the text form holds, for comparing two graphs."""
    nodes = [(n.op, [v.name for v in n.inputs], n.attrs, [(v.name, v.type) for v in n.outputs], n.scope)
             for n in graph.nodes]
    return graph.name, [(v.name, v.type) for v in graph.inputs], nodes, [v.name for v in graph.outputs]


def hostile_graph(graph_name, value_names, param_name, op_suffix, attrs, scope) -> tc.Graph:
    graph = tc.Graph("g")
    graph.name = graph_name
    x = graph.add_input("x", tc.TensorType(("batch", 3)))
    w = graph.add_param(param_name, torch.randn(3))
    added = graph.add_node("aten.add.Tensor", [x, w]).output
    opaque = graph.add_node("onnx." + op_suffix, [added], attrs, output_types=[tc.TensorType(("batch", 3))],
                            scope=scope).output
    for value, name in zip((x, w, added, opaque), value_names):
        value.name = name
    graph.set_outputs([opaque, added])
    return graph


@settings(max_examples=200, deadline=None)
@given(graph_name=names, value_names=st.lists(names, min_size=4, max_size=4, unique=True), param_name=names,
       op_suffix=names, attrs=st.dictionaries(names, attr_values, max_size=4), scope=names)
def test_print_parse_is_the_identity_for_hostile_names(graph_name, value_names, param_name, op_suffix, attrs, scope):
    graph = hostile_graph(graph_name, value_names, param_name, op_suffix, attrs, scope)
    text = graph.to_text()
    assert len(text.splitlines()) == len(graph.nodes) + 3  # one line per node: no name makes a new line
    assert text.isascii() and not UNPRINTABLE_RE.search(text)
    again = tc.parse(text, params=graph.params)
    assert again.to_text() == text
    assert structure(again) == structure(graph)


def custom_op_model(op_type: str, attr_name: str, **names: str) -> onnx.ModelProto:
    weight = oh.make_tensor(names.get("weight", "w"), TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    nodes = [oh.make_node("Add", [names.get("input", "x"), weight.name], ["s"]),
             oh.make_node(op_type, ["s"], ["y"], domain="com.example", **{attr_name: 1, "note": "a \"b\"\n}"})]
    graph = oh.make_graph(nodes, names.get("graph", "g"),
                          [oh.make_tensor_value_info(names.get("input", "x"), TensorProto.FLOAT, [2, 3])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], initializer=[weight])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("com.example", 1)])


INJECTED = "\n  %evil = aten.from_file() {filename=\"/tmp/pwned\", shared=true, size=64, dtype=u8} : u8[64]\n//"


@pytest.mark.parametrize("op_type, attr_name", [("Custom" + INJECTED, "k"), ("Custom", "k" + INJECTED),
                                                ("My Op \"q\"", "key with spaces")])
def test_onnx_names_cannot_inject_ir_nodes_through_save_and_load(tmp_path, op_type, attr_name):
    """ONNX requires identifiers for op types and attribute names: the importer refuses others, naming the
    file's problem, so nothing of the hostile text reaches graph.ir (the printer would quote it anyway)."""
    with pytest.raises(tc.CarveError, match="plain identifier|not a Python keyword|attribute"):
        tc.from_onnx(custom_op_model(op_type, attr_name))


def test_hostile_value_param_and_graph_names_save_and_load(tmp_path):
    model = custom_op_model("Custom", "k", weight="my \"weight\" 1\n  %evil = aten.neg(%x) : f32[2,3]",
                            input="the input\n}", graph="my graph")
    graph = tc.from_onnx(model)
    tc.save(graph, tmp_path / "m.carve")
    loaded = tc.load(tmp_path / "m.carve")
    assert loaded.to_text() == graph.to_text()
    assert [n.op for n in loaded.nodes] == ["param", "aten.add.Tensor", "onnx.Custom"]  # the file's nodes only
    assert "my \"weight\" 1\n  %evil = aten.neg(%x) : f32[2,3]" in loaded.params
    assert loaded.nodes[-1].attrs["note"] == "a \"b\"\n}"


def test_carve_show_writes_no_control_characters(tmp_path, capsys):
    model = custom_op_model("Evil", "k", weight="w\x1b]0;title\x07\x1b[2J\u202e", input="x\x1b[31m\x9b",
                            graph="g\x1b[5m")
    onnx.save(model, tmp_path / "evil.onnx")
    assert carve(["show", str(tmp_path / "evil.onnx")]) == 0
    out = capsys.readouterr().out
    assert "title" in out and "\\u001b" in out  # the names are shown, their escape characters as text
    assert not UNPRINTABLE_RE.search(out)


def test_cli_errors_escape_names(tmp_path, capsys):
    (tmp_path / "bad.ir").write_text('graph @g() -> () {\n  %y = "os.\\u001b[31msystem"() : f32[1]\n  return\n}\n')
    assert carve(["show", str(tmp_path / "bad.ir")]) == 1
    err = capsys.readouterr().err
    assert "os.\\x1b[31msystem" in err and not UNPRINTABLE_RE.search(err)


@pytest.mark.parametrize("raw, shown", [("a\x1bb", "a\\x1bb"), ("\x00\x7f\x9b", "\\x00\\x7f\\x9b"),
                                        ("line\nnext", "line\nnext"), ("\u202eabc", "\\u202eabc"), ("é ok", "é ok")])
def test_printable_escapes_controls_and_keeps_text(raw, shown):
    assert printable(raw) == shown
