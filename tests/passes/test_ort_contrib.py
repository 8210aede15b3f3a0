"""ort-contrib and to_onnx(contrib="onnxruntime"): SkipLayerNormalization, BiasGelu/FastGelu and packed-QKV
Attention/QAttention found by structure; each checked by node counts and by onnxruntime against the unfused
export and eager PyTorch."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

import torchcarve as tc
from tests.passes.helpers import first, ops
from tests.passes.test_fuse_attention import bert_with_mask
from torchcarve.backends.onnx import to_onnx as plain_to_onnx

ort = pytest.importorskip("onnxruntime")
ATOL = 1e-4
CONTRIB_OPS = {"SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "Attention", "QAttention"}


def run_ort(graph: tc.Graph, inputs: tuple, path, contrib: str | None) -> tuple[torch.Tensor, Counter]:
    """The file's output on `inputs` and its node types (the file passes onnx.checker: to_onnx checks it)."""
    model = tc.to_onnx(graph, path, contrib=contrib)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return torch.from_numpy(session.run(None, feeds)[0]), Counter(n.op_type for n in model.graph.node)


def compare(graph: tc.Graph, inputs: tuple, expected: torch.Tensor, tmp_path) -> tuple[Counter, Counter]:
    """Fused and unfused files agree with each other and with `expected`; returns both files' node counts."""
    plain, before = run_ort(graph, inputs, tmp_path / "plain.onnx", None)
    fused, after = run_ort(graph, inputs, tmp_path / "fused.onnx", "onnxruntime")
    torch.testing.assert_close(plain, expected, rtol=1e-4, atol=ATOL)
    torch.testing.assert_close(fused, expected, rtol=1e-4, atol=ATOL)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=ATOL)
    assert CONTRIB_OPS.isdisjoint(before)
    return before, after


def eager(model: nn.Module, inputs: tuple) -> torch.Tensor:
    with torch.no_grad():
        return first(model(*inputs))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_bert_fuses_every_pattern(attention, tmp_path):
    model, inputs = bert_with_mask(attention)
    graph = tc.optimize(tc.capture(model, inputs), "fuse").graph
    before, after = compare(graph, inputs, eager(model, inputs), tmp_path)
    assert before["Split"] == 2 and before["LayerNormalization"] == 5
    assert after["Attention"] == 2 and after["SkipLayerNormalization"] == 4 and after["BiasGelu"] == 2
    assert after["Split"] == 0 and after["LayerNormalization"] == 1  # the embeddings' add broadcasts: left alone
    assert after["MatMul"] == before["MatMul"] - 2  # q|k|v now inside Attention
    assert sum(after.values()) < sum(before.values()) - 20


def test_three_separate_projections_pack(tmp_path):
    """Without `fuse` (no merge-linear), q, k and v come from three linears: their weights are concatenated."""
    model, inputs = bert_with_mask("sdpa")
    graph = tc.capture(model, inputs)
    _, after = compare(graph, inputs, eager(model, inputs), tmp_path)
    assert after["Attention"] == 2 and after["Split"] == 0 and after["SkipLayerNormalization"] == 4


def test_int8_linears_keep_the_fusions(tmp_path):
    model, inputs = bert_with_mask("sdpa")
    quantized = tc.optimize(tc.capture(model, inputs), "fuse,quantize", calibration=[inputs]).graph
    before, after = compare(quantized, inputs, eager(tc.to_torch(quantized), inputs), tmp_path)
    assert before["DynamicQuantizeMatMul"] == 8 and after["DynamicQuantizeMatMul"] == 6  # 2 packed QKV -> QAttention
    assert after["QAttention"] == 2 and after["SkipLayerNormalization"] == 4 and after["BiasGelu"] == 2
    assert after["Split"] == 0 and after["Add"] < before["Add"]


class GeluMLP(nn.Module):
    """A GPT-2-like MLP: linear -> tanh gelu -> linear, then a residual add and a layer norm."""

    def __init__(self, approximate: str = "tanh"):
        super().__init__()
        self.up, self.down, self.act = nn.Linear(16, 64), nn.Linear(64, 16), nn.GELU(approximate=approximate)
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        return self.norm(x + self.down(self.act(self.up(x))))


@pytest.mark.parametrize("approximate, fused", [("tanh", "FastGelu"), ("none", "BiasGelu")])
def test_gelu_mlp(approximate, fused, tmp_path):
    torch.manual_seed(0)
    model, inputs = GeluMLP(approximate).eval(), (torch.randn(2, 5, 16),)
    before, after = compare(tc.capture(model, inputs), inputs, eager(model, inputs), tmp_path)
    assert after[fused] == 1 and after["SkipLayerNormalization"] == 1
    assert after["Add"] == 0 and before["Add"] >= 3  # both biases moved into the fused ops
    skip_ln = next(n for n in tc.to_onnx(tc.capture(model, inputs), contrib="onnxruntime").graph.node
                   if n.op_type == "SkipLayerNormalization")
    assert len(skip_ln.input) == 5 and len(skip_ln.output) == 1  # x, skip, gamma, beta, the linear's bias


class PreLNBlock(nn.Module):
    """x + attn(ln1(x)) -> h; h + mlp(ln2(h)): each residual sum is also read by the next residual add."""

    def __init__(self, width: int = 16, heads: int = 4):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.ln2(x))
        return self.ln3(x)


def test_pre_ln_block_keeps_the_residual_sum(tmp_path):
    torch.manual_seed(0)
    model, inputs = PreLNBlock().eval(), (torch.randn(2, 6, 16),)
    graph = tc.optimize(tc.capture(model, inputs), "fuse").graph
    _, after = compare(graph, inputs, eager(model, inputs), tmp_path)
    assert after["SkipLayerNormalization"] == 2 and after["BiasGelu"] == 1
    nodes = [n for n in tc.to_onnx(graph, contrib="onnxruntime").graph.node if n.op_type == "SkipLayerNormalization"]
    assert [len(n.output) == 4 and bool(n.output[3]) for n in nodes] == [True, False]  # ln2's sum feeds ln3's add


class BroadcastSkip(nn.Module):
    def __init__(self, shape: tuple):
        super().__init__()
        self.skip = nn.Parameter(torch.randn(shape))
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        return self.norm(x + self.skip)


@pytest.mark.parametrize("shape", [(16,), (1, 5, 16)])
def test_broadcast_skip_is_left_alone(shape, tmp_path):
    torch.manual_seed(0)
    model, inputs = BroadcastSkip(shape).eval(), (torch.randn(2, 5, 16),)
    graph = tc.capture(model, inputs)
    before, after = compare(graph, inputs, eager(model, inputs), tmp_path)
    assert after == before
    assert not tc.optimize(graph, "ort-contrib").changed


def test_option_off_writes_todays_graph():
    model, inputs = bert_with_mask("sdpa")
    graph = tc.optimize(tc.capture(model, inputs), "fuse").graph
    assert tc.to_onnx(graph).SerializeToString() == plain_to_onnx(graph).SerializeToString()
    assert all(not n.domain for n in tc.to_onnx(graph).graph.node if n.op_type != "MultiHeadAttention")


def test_rewritten_graph_runs_in_pytorch_and_round_trips_as_text(tmp_path):
    model, inputs = bert_with_mask("sdpa")
    graph = tc.optimize(tc.capture(model, inputs), "fuse").graph
    result = tc.optimize(graph, "ort-contrib", check_numerics=True)
    assert result.report[0].stats == {"skip_layer_norm": 4, "bias_gelu": 2, "packed_qkv": 2}
    assert {"carve.skip_layer_norm", "carve.bias_gelu", "carve.qkv_attention"} <= set(ops(result.graph))
    assert "aten.split_with_sizes" not in ops(result.graph)
    text = result.graph.to_text()
    assert tc.parse(text, params=result.graph.params).to_text() == text
    with torch.no_grad():
        torch.testing.assert_close(tc.to_torch(result.graph)(*inputs), eager(model, inputs), rtol=1e-4, atol=1e-5)
    tc.export_torch(result.graph, tmp_path / "exported")
    assert "def carve_qkv_attention(" in (tmp_path / "exported" / "model.py").read_text()


def test_unknown_contrib_is_a_clear_error():
    model, inputs = GeluMLP(), (torch.randn(1, 3, 16),)
    with pytest.raises(tc.CarveError, match="contrib='tensorrt' is not known; the choices are: onnxruntime"):
        tc.to_onnx(tc.capture(model, inputs), contrib="tensorrt")


def test_cli_export_contrib(tmp_path):
    from torchcarve.cli import main

    torch.manual_seed(0)
    tc.save(tc.capture(GeluMLP().eval(), (torch.randn(2, 5, 16),)), tmp_path / "mlp.carve")
    out = tmp_path / "mlp.onnx"
    saved = str(tmp_path / "mlp.carve")
    assert main(["export", saved, "--to", "onnx", "-o", str(out), "--contrib", "onnxruntime"]) == 0
    import onnx

    assert {"FastGelu", "SkipLayerNormalization"} <= {n.op_type for n in onnx.load(str(out)).graph.node}
    assert main(["export", str(tmp_path / "mlp.carve"), "--to", "torch", "-o", str(tmp_path / "t"),
                 "--contrib", "onnxruntime"]) != 0


@pytest.mark.parametrize("pipeline, attention", [("fuse", "Attention"), ("fuse,quantize", "QAttention")])
def test_dynamic_batch(pipeline, attention, tmp_path):
    """A symbolic batch: the mask reaches the fused attention at run time; another batch size runs."""
    model, inputs = bert_with_mask("sdpa")
    graph = tc.optimize(tc.capture(model, inputs, dynamic_batch=True), pipeline, calibration=[inputs]).graph
    bigger = (torch.randint(0, 100, (3, 8)), torch.ones(3, 8, dtype=torch.int64))
    bigger[1][2, 4:] = 0
    _, after = compare(graph, bigger, eager(tc.to_torch(graph), bigger), tmp_path)
    assert after[attention] == 2 and after["SkipLayerNormalization"] == 4


def test_qattention_refuses_a_mask_it_cannot_take():
    text = """graph @g(%x: f32[2,4,8], %m: f32[2,1,4,4]) -> (f32[2,4,8]) {
  %w = param "w" : i8[24,8]
  %s = param "s" : f32[24]
  %b = param "b" : f32[24]
  %y = carve.dynamic_qkv_attention(%x, %w, %s, %b, %m) {num_heads=2} : f32[2,4,8]
  return %y
}"""
    params = tc.ParamStore()
    params["w"], params["s"], params["b"] = torch.ones(24, 8, dtype=torch.int8), torch.ones(24), torch.zeros(24)
    with pytest.raises(tc.CarveError, match="QAttention takes a bool mask"):
        tc.to_onnx(tc.parse(text, params=params))


GOLDEN_BEFORE = """graph @g(%x: f32[2,5,16]) -> (f32[2,5,16]) {
  %w1 = param "up.weight" : f32[64,16]
  %b1 = param "up.bias" : f32[64]
  %w2 = param "down.weight" : f32[16,64]
  %b2 = param "down.bias" : f32[16]
  %g = param "norm.weight" : f32[16]
  %be = param "norm.bias" : f32[16]
  %h = aten.linear(%x, %w1, %b1) : f32[2,5,64]
  %a = aten.gelu(%h) {approximate="tanh"} : f32[2,5,64]
  %d = aten.linear(%a, %w2, %b2) : f32[2,5,16]
  %s = aten.add.Tensor(%x, %d) : f32[2,5,16]
  %y = aten.layer_norm(%s, %g, %be) {normalized_shape=[16], eps=1e-05} : f32[2,5,16]
  return %y
}"""
GOLDEN_AFTER = """graph @g(%x: f32[2,5,16]) -> (f32[2,5,16]) {
  %w1 = param "up.weight" : f32[64,16]
  %b1 = param "up.bias" : f32[64]
  %w2 = param "down.weight" : f32[16,64]
  %b2 = param "down.bias" : f32[16]
  %g = param "norm.weight" : f32[16]
  %be = param "norm.bias" : f32[16]
  %linear = aten.linear(%x, %w1) : f32[2,5,64]
  %bias_gelu = carve.bias_gelu(%linear, %b1) {approximate="tanh"} : f32[2,5,64]
  %linear_1 = aten.linear(%bias_gelu, %w2) : f32[2,5,16]
  %skip_layer_norm, %skip_layer_norm_out1 = carve.skip_layer_norm(%x, %linear_1, %g, %be, %b2) {eps=1e-05} : \
f32[2,5,16], f32[2,5,16]
  return %skip_layer_norm
}
"""


def test_ort_contrib_golden():
    torch.manual_seed(0)
    shapes = {"up.weight": (64, 16), "up.bias": (64,), "down.weight": (16, 64), "down.bias": (16,),
              "norm.weight": (16,), "norm.bias": (16,)}
    params = tc.ParamStore()
    for name, shape in shapes.items():
        params[name] = torch.randn(shape)
    result = tc.optimize(tc.parse(GOLDEN_BEFORE, params=params), "ort-contrib", check_numerics=True)
    assert result.graph.to_text() == GOLDEN_AFTER
    assert result.report[0].stats == {"skip_layer_norm": 1, "bias_gelu": 1, "packed_qkv": 0}
    assert not tc.optimize(result.graph, "ort-contrib").changed  # a fixed point


@pytest.mark.parametrize("case, packed", [("plain", True), ("bool-mask", True), ("float-mask", True), ("causal", True),
                                          ("causal-cross", False), ("gqa", False)])
def test_attention_variants(case, packed, tmp_path):
    """Self-attention packs (masks as attention_bias, causal as unidirectional); cross-attention and GQA do not."""
    from tests.passes.test_fuse_attention import CASES, head_attention

    model, inputs = head_attention(**CASES[case][0])
    _, after = compare(tc.capture(model, inputs), inputs, eager(model, inputs), tmp_path)
    assert after["Attention"] == packed


@pytest.mark.parametrize("case", ["causal", "bool-mask"])
def test_int8_self_attention_variants(case, tmp_path):
    from tests.passes.test_fuse_attention import CASES, head_attention

    model, inputs = head_attention(**CASES[case][0])
    quantized = tc.optimize(tc.capture(model, inputs), "fuse,quantize", calibration=[inputs]).graph
    _, after = compare(quantized, inputs, eager(tc.to_torch(quantized), inputs), tmp_path)
    assert after["QAttention"] == 1


def test_compiled_to_onnx_passes_contrib_on():
    compiled = tc.compile(GeluMLP().eval(), (torch.randn(1, 3, 16),))
    fused = {n.op_type for n in compiled.to_onnx(contrib="onnxruntime").graph.node}
    assert {"FastGelu", "SkipLayerNormalization"} <= fused
    assert "FastGelu" not in {n.op_type for n in compiled.to_onnx().graph.node}
