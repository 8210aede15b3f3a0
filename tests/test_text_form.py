"""The text form: exact round trips, a golden print, clear parse errors, and a fuzzed parser."""
from __future__ import annotations

import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchcarve as tc
from tests.models import MODEL_NAMES, captured


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_round_trip_is_exact(name):
    graph = captured(name)[2]
    text = graph.to_text()
    again = tc.parse(text, params=graph.params)
    assert again.to_text() == text
    assert str(graph) == text
    assert [n.op for n in again.nodes] == [n.op for n in graph.nodes]


class TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


GOLDEN_TINY_CNN = '''\
graph @TinyCNN(%x: f32[1,3,8,8]) -> (f32[1,2] "output") {
  %conv_weight = param "conv.weight" : f32[4,3,3,3]
  %conv_bias = param "conv.bias" : f32[4]
  %fc_weight = param "fc.weight" : f32[2,4]
  %fc_bias = param "fc.bias" : f32[2]
  %conv2d = aten.conv2d(%x, %conv_weight, %conv_bias) {padding=[1, 1]} : f32[1,4,8,8] loc("conv")
  %relu = aten.relu(%conv2d) : f32[1,4,8,8]
  %mean = aten.mean.dim(%relu) {dim=[2, 3]} : f32[1,4]
  %linear = aten.linear(%mean, %fc_weight, %fc_bias) : f32[1,2] loc("fc")
  return %linear
}
'''


def test_golden_text_of_a_tiny_cnn():
    torch.manual_seed(0)
    graph = tc.capture(TinyCNN(), (torch.randn(1, 3, 8, 8),), method="export")
    assert graph.to_text() == GOLDEN_TINY_CNN


def test_hand_written_text_with_symbolic_dims_and_comments_parses():
    text = textwrap.dedent('''\
        // a comment
        graph @tiny(%x: f32[batch,4], %y: f32[batch,4]) -> (f32[batch,4], f32[batch*2,4]) {
          %s = aten.add.Tensor(%x, %y) {alpha=2} : f32[batch,4]
          %c = aten.cat(%s, %x) : f32[batch*2,4]
          return %s, %c
        }
    ''')
    graph = tc.parse(text)
    assert [v.type for v in graph.outputs] == [tc.TensorType(("batch", 4)), tc.TensorType(("batch*2", 4))]
    assert graph.nodes[0].attrs == {"alpha": 2}
    assert tc.parse(graph.to_text()).to_text() == graph.to_text()


def test_attribute_literals_round_trip():
    g = tc.Graph("lits")
    x = g.add_input("x", tc.TensorType((2, 3)))
    node = g.add_node("aten.full", [], {"size": [2, 3], "fill_value": float("-inf"), "dtype": torch.float16})
    node2 = g.add_node("aten.masked_fill.Scalar", [x, g.add_node("aten.eq.Scalar", [x], {"other": 1e-30}).output],
                       {"value": float("nan")})
    g.set_outputs([node.output, node2.output])
    text = g.to_text()
    assert "fill_value=-inf" in text and "dtype=f16" in text and "value=nan" in text and "other=1e-30" in text
    assert tc.parse(text).to_text() == text


VALID = '''\
graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  %r = aten.relu(%x) : f32[2,3]
  return %r
}
'''


@pytest.mark.parametrize("old, new, where, expected", [
    ("aten.relu", "aten.nosuchop", "2:", "unknown op 'aten.nosuchop'"),
    ("aten.relu(%x)", "aten.relu(%z)", "2:", "%z is used before it is defined"),
    ("  return %r", "  %r = aten.relu(%x) : f32[2,3]\n  return %r", "3:", "%r is defined twice"),
    ("(%x: f32[2,3])", "(%x: q32[2,3])", "1:", "expected a dtype"),
    ("(%x: f32[2,3])", "(%x: f32[2,-3])", "1:", "expected a dim"),
    ("aten.relu(%x) :", "aten.relu(%x) {inplace=} :", "2:", "expected an attribute value"),
    ("aten.relu(%x) :", "aten.relu(%x) {alpha=1} :", "2:", "has no attribute alpha; valid: self"),
    ("  return %r\n}\n", "  return %r\n", "4:", "expected '}', found end of input"),
    ("aten.relu(%x) :", "aten.relu(%x :", "2:", "expected ',' or ')'"),
    ("%r = aten", "%r aten", "2:", "expected '='"),
    ("-> (f32[2,3])", "-> (f32[2,4])", "3:3", "return types (f32[2,3]) do not match the signature (f32[2,4])"),
    ("(%x: f32[2,3])", "(%x: f32[2,4])", "2:8", "'types match inference': the registry infers f32[2,4]"),
    ("graph @g", "graph g", "1:7", "expected graph name"),
    ("  %r =", "  ? %r =", "2:3", "unexpected character '?'"),
])
def test_parse_errors_give_line_col_and_what_was_expected(old, new, where, expected):
    assert old in VALID
    with pytest.raises(tc.CarveError) as info:
        tc.parse(VALID.replace(old, new, 1))
    message = str(info.value)
    assert expected in message
    assert message.startswith(where)


def test_truncated_text_at_every_line_is_an_error():
    lines = captured("residual")[2].to_text().splitlines(keepends=True)
    for end in range(len(lines)):
        with pytest.raises(tc.ParseError, match="expected"):
            tc.parse("".join(lines[:end]))


def test_param_not_in_the_given_store_is_an_error():
    graph = captured("mlp")[2]
    with pytest.raises(tc.VerifyError, match="'params exist'"):
        tc.parse(graph.to_text(), params=tc.ParamStore())
    assert len(tc.parse(graph.to_text()).param_nodes()) == len(graph.param_nodes())  # no store: not checked


def test_non_text_input_is_a_parse_error():
    with pytest.raises(tc.ParseError, match="expected IR text"):
        tc.parse(b"graph")  # type: ignore[arg-type]


# ---- fuzzing: mutated text parses or raises a CarveError, never anything else ------------

FUZZ_TEXT = '''\
graph @fuzz(%x: f32[batch,3,8,8], %ids: i64[batch,4]) -> (f32[batch,4,8,8], f32[batch,4,16], f32[batch*4,8]) {
  %w = param "conv.weight" : f32[4,3,3,3]
  %table = param "emb.weight" : f32[10,16]
  %c = aten.conv2d(%x, %w) {padding=[1, 1], dilation=[1, 1], groups=1} : f32[batch,4,8,8] loc("conv")
  %e = aten.embedding(%table, %ids) : f32[batch,4,16]
  %s, %t = aten.split.Tensor(%e) {split_size=8, dim=-1} : f32[batch,4,8], f32[batch,4,8]
  %v = aten.view(%s) {size=[-1, 8]} : f32[batch*4,8]
  %g = aten.gelu(%v) {approximate="tanh"} : f32[batch*4,8]
  %f = aten.full() {size=[2], fill_value=-inf, dtype=f32} : f32[2]
  return %c, %e, %g
}
'''

FUZZ_PARAMS = tc.ParamStore({"conv.weight": torch.zeros(4, 3, 3, 3), "emb.weight": torch.zeros(10, 16)})
ALPHABET = st.sampled_from(list('%@"{}[](),:=*-.\\ \n\tabcfgilmnprstuvwx0123456789_') + ["->", "//", "f32", "batch",
                                                                                          "aten.", "param", "inf"])


@st.composite
def mutated(draw) -> str:
    text = draw(st.sampled_from([FUZZ_TEXT, VALID]))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "replace", "swap_lines", "duplicate_line"]))
        at = draw(st.integers(0, max(len(text) - 1, 0)))
        if kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 8)):]
        elif kind == "insert":
            text = text[:at] + draw(ALPHABET) + text[at:]
        elif kind == "replace":
            text = text[:at] + draw(ALPHABET) + text[at + 1:]
        else:
            lines = text.splitlines(keepends=True)
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if kind == "swap_lines":
                lines[i], lines[j] = lines[j], lines[i]
            else:
                lines.insert(j, lines[i])
            text = "".join(lines)
    return text


def test_fuzz_seed_texts_are_valid():
    assert tc.parse(FUZZ_TEXT, params=FUZZ_PARAMS).to_text() == FUZZ_TEXT
    assert tc.parse(VALID).to_text() == VALID


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(mutated())
def test_mutated_text_parses_or_raises_a_carve_error(text):
    for params in (None, FUZZ_PARAMS):
        try:
            graph = tc.parse(text, params=params)
        except tc.CarveError:
            continue
        assert tc.parse(graph.to_text(), params=params).to_text() == graph.to_text()


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(max_size=200))
def test_arbitrary_text_parses_or_raises_a_carve_error(text):
    try:
        tc.parse(text)
    except tc.CarveError:
        pass
