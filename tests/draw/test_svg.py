"""tc.draw: the SVG parses, every value's axes are on it, a small CNN's structure is golden, repeated
blocks fold to ×N and expand on request, names from the graph are escaped, a missing engine is a clear error."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter

import pytest
import torch

import torchcarve as tc
from torchcarve.cli.demo import DigitsCNN
from torchcarve.draw import Marks, draw, shape_label, to_dot
from torchcarve.draw import render
from torchcarve.draw.dot import quote
from torchcarve.draw.families import family_of
from torchcarve.ir import Graph, TensorType

from ..models import MODELS, captured

pytest.importorskip("matplotlib")
try:
    render.find_engine()
except tc.CarveError:
    pytest.skip("no layout engine: pip install graphviz-pure (the draw extra)", allow_module_level=True)

SVG = "{http://www.w3.org/2000/svg}"


def digits_graph() -> Graph:
    torch.manual_seed(0)
    return tc.capture(DigitsCNN().eval(), (torch.randn(2, 1, 8, 8),), dynamic_batch=True, name="DigitsCNN")


def groups(svg: str, kind: str) -> list[ET.Element]:
    """The <g> elements whose class list holds `kind` (graphviz writes `class="node op family-linear"`)."""
    root = ET.fromstring(svg)
    return [g for g in root.iter(f"{SVG}g") if kind in g.get("class", "").split()]


def texts(element: ET.Element) -> list[str]:
    return [t.text or "" for t in element.iter(f"{SVG}text")]


def families(svg: str) -> Counter:
    return Counter(next(c for c in g.get("class").split() if c.startswith("family-")) for g in groups(svg, "op"))


def test_digits_cnn_structure_is_golden() -> None:
    svg = draw(digits_graph())
    assert families(svg) == Counter({"family-linear": 4, "family-norm": 3, "family-elementwise": 3,
                                     "family-pool": 2, "family-shape": 1})
    assert len(groups(svg, "weight")) == 20                 # every param as a small box: 4 conv/linear x2, 3 BN x4
    assert len(groups(svg, "input")) == 1 and len(groups(svg, "output")) == 1
    wires = groups(svg, "wire")
    assert len(wires) == 1 + 12 + 1 + 20                     # input->conv, 13 ops in a chain, ->output, weights
    assert len(groups(svg, "param")) == 20
    assert not groups(svg, "skip")                           # a chain has no skip connection
    clusters = {texts(g)[0] for g in groups(svg, "cluster")}
    assert clusters == {"features", "classifier"}
    labels = [" ".join(texts(g)) for g in groups(svg, "op")]
    assert labels.count("conv2d") == 3 and "max_pool2d" in labels and "linear" in labels
    assert any("batch × 64 × 4 × 4" in " ".join(texts(w)) for w in wires)


@pytest.mark.parametrize("name", ["cnn_bn", "residual", "hf_bert"])
def test_svg_text_holds_every_values_axes(name: str) -> None:
    if name not in MODELS:
        pytest.skip("transformers is not installed")
    graph = captured(name)[2]
    svg = draw(graph, expand=[b for b in ("encoder.layer",) if name == "hf_bert"])
    text = " ".join(t.text or "" for t in ET.fromstring(svg).iter(f"{SVG}text"))
    missing = [str(v.type) for v in graph.values() if shape_label(v.type) not in text]
    assert not missing


def test_residual_shortcut_is_drawn_as_a_skip_wire() -> None:
    svg = draw(captured("residual")[2])
    skips = groups(svg, "skip")
    assert len(skips) == 1 and texts(skips[0]) == ["2 × 16 × 8 × 8"]   # the short (shortcut) branch into the add


@pytest.mark.skipif("hf_bert" not in MODELS, reason="transformers is not installed")
def test_repeated_layers_fold_to_one_block_and_expand_on_request() -> None:
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                     intermediate_size=64, vocab_size=100, max_position_embeddings=64)
    graph = tc.capture(transformers.BertModel(config).eval(), (torch.randint(0, 100, (1, 8)),))
    per_layer = sum(1 for n in graph.nodes if n.scope.startswith("encoder.layer.1.") and n.op != "param")
    ops = sum(1 for n in graph.nodes if n.op != "param")
    folded = draw(graph)
    assert len(groups(folded, "op")) == ops - 3 * per_layer
    folded_clusters = [texts(g)[0] for g in groups(folded, "folded")]
    assert folded_clusters == ["encoder.layer.0 … 3 (×4)"]
    expanded = draw(graph, expand=["encoder.layer.2"])      # layers 0-1 stay folded, 2 and 3 are drawn
    assert len(groups(expanded, "op")) == ops - per_layer
    assert [texts(g)[0] for g in groups(expanded, "folded")] == ["encoder.layer.0 … 1 (×2)"]
    assert len(groups(draw(graph, expand=["encoder.layer"]), "op")) == ops
    with pytest.raises(tc.CarveError, match="names no repeated block"):
        draw(graph, expand=["decoder.layer.9"])


def test_hostile_names_are_escaped() -> None:
    hostile = 'x"];\n evil -> x [label="<script>alert(1)</script>\\'
    graph = Graph("g")
    x = graph.add_input("x", TensorType(("batch", 4)))
    weight = graph.add_param(hostile, torch.ones(3, 4))
    out = graph.add_node("aten.linear", [x, weight], scope=hostile).output
    graph.set_outputs([graph.add_node("aten.relu", [out], scope=hostile + ".act").output])
    svg = draw(graph)
    root = ET.fromstring(svg)
    assert not list(root.iter(f"{SVG}script"))
    assert len(groups(svg, "op")) == 2 and not [g for g in root.iter(f"{SVG}g") if "evil" in (g.get("id") or "")]
    anchors = [a.get("{http://www.w3.org/1999/xlink}title") for a in root.iter(f"{SVG}a")]
    assert any(a and hostile in a for a in anchors)              # the tooltip holds the name, literally


def test_quote_escapes_dot_specials() -> None:
    assert quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'


def test_marks_highlight_removed_nodes_and_changed_wires() -> None:
    graph = digits_graph()
    relu = next(n for n in graph.nodes if n.op == "aten.relu")
    marks = Marks(removed=frozenset({relu.output.name}), wires={relu.output.name: "batch × 32 → 16 × 8 × 8"})
    svg = draw(graph, marks=marks)
    removed = groups(svg, "removed")
    assert [texts(g) for g in removed] == [["relu"]]
    assert [texts(g) for g in groups(svg, "changed")] == [["batch × 32 → 16 × 8 × 8"]]


def test_families_table() -> None:
    assert [family_of(op) for op in ("aten.conv2d", "aten.layer_norm", "aten.scaled_dot_product_attention",
                                     "aten.add.Tensor", "aten.view", "carve.quantize", "onnx.Conv", "onnx.QLinearConv",
                                     "torch.call")] == \
        ["linear", "norm", "attention", "elementwise", "shape", "quant", "linear", "quant", "other"]


def test_missing_engine_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "ENGINES", ("no-such-layout-engine",))
    with pytest.raises(tc.CarveError, match="layout engine") as error:
        draw(digits_graph())
    assert "torchcarve[draw]" in str(error.value)


def test_draw_writes_the_file_and_notebooks_get_the_svg(tmp_path) -> None:
    graph = digits_graph()
    svg = tc.draw(graph, tmp_path / "g.svg")   # the public name
    assert (tmp_path / "g.svg").read_text() == svg
    assert graph._repr_svg_() == svg
    assert to_dot(graph).startswith("digraph G {")
