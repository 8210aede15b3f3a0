"""fuse-attention: the explicit attention chain becomes scaled_dot_product_attention; with the head split/merge
around it, carve.multi_head_attention (ONNX: MultiHeadAttention at opset < 23, Attention from 23)."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from torch import nn

import torchcarve as tc
from tests.models import MODELS
from tests.passes.helpers import onnx_parity, ops, optimize_checked


class Attention(nn.Module):
    def __init__(self, mask=False, divide=False, keep_probs=False):
        super().__init__()
        self.mask, self.divide, self.keep_probs = mask, divide, keep_probs

    def forward(self, q, k, v, m):
        scores = q @ k.transpose(-2, -1)
        scores = scores / math.sqrt(q.shape[-1]) if self.divide else scores * 0.3
        if self.mask:
            scores = scores + m
        probs = torch.softmax(scores, dim=-1)
        out = probs @ v
        return (out, probs) if self.keep_probs else out


def inputs():
    return tuple(torch.randn(2, 4, 6, 8) for _ in range(3)) + (torch.randn(1, 1, 6, 6),)


@pytest.mark.parametrize("kw", [{}, {"mask": True}, {"divide": True, "mask": True}])
def test_attention_fuses(kw):
    result = optimize_checked(Attention(**kw), inputs(), "fuse-attention")
    assert ops(result.graph) == ["aten.scaled_dot_product_attention"]


def test_returned_probabilities_block_fusion():
    result = optimize_checked(Attention(keep_probs=True), inputs(), "fuse-attention")
    assert not result.changed and "aten.softmax.int" in ops(result.graph)


@pytest.mark.parametrize("name", ["hf_bert", "hf_vit"])
def test_hf_models_fuse(name):
    if name not in MODELS:
        pytest.skip("transformers is not installed")
    model, x = MODELS[name]()
    result = optimize_checked(model, x, "fuse")
    assert ops(result.graph).count("carve.multi_head_attention") == 2  # sdpa with its head split/merge folded in
    assert result.report[-1].nodes[1] < result.report[0].nodes[0]


# ---- head split -> sdpa -> head merge becomes carve.multi_head_attention -----------------------

MHA = "carve.multi_head_attention"

HEADS_BEFORE = """graph @g(%q: f32[2,5,16], %k: f32[2,7,16], %v: f32[2,7,16], %m: f32[2,1,1,7]) -> (f32[2,5,16]) {
  %qh = aten.view(%q) {size=[2, 5, 4, 4]} : f32[2,5,4,4]
  %qt = aten.transpose.int(%qh) {dim0=1, dim1=2} : f32[2,4,5,4]
  %kh = aten.view(%k) {size=[2, 7, 4, 4]} : f32[2,7,4,4]
  %kt = aten.transpose.int(%kh) {dim0=1, dim1=2} : f32[2,4,7,4]
  %vh = aten.view(%v) {size=[2, 7, 4, 4]} : f32[2,7,4,4]
  %vt = aten.transpose.int(%vh) {dim0=1, dim1=2} : f32[2,4,7,4]
  %a = aten.scaled_dot_product_attention(%qt, %kt, %vt, %m) {scale=0.5} : f32[2,4,5,4]
  %at = aten.transpose.int(%a) {dim0=1, dim1=2} : f32[2,5,4,4]
  %c = aten.contiguous(%at) : f32[2,5,4,4]
  %o = aten.reshape(%c) {shape=[2, 5, -1]} : f32[2,5,16]
  return %o
}
"""
HEADS_AFTER = """graph @g(%q: f32[2,5,16], %k: f32[2,7,16], %v: f32[2,7,16], %m: f32[2,1,1,7]) -> (f32[2,5,16]) {
  %multi_head_attention = carve.multi_head_attention(%q, %k, %v, %m) {num_heads=4, scale=0.5} : f32[2,5,16]
  return %multi_head_attention
}
"""


def run_text(text: str, params=None) -> tc.OptimizeResult:
    result = tc.optimize(tc.parse(text, params=params), "fuse-attention", check_numerics=True)
    assert not tc.optimize(result.graph, "fuse-attention").changed  # idempotent
    return result


def test_fuse_attention_golden_head_fold():
    result = run_text(HEADS_BEFORE)
    assert result.graph.to_text() == HEADS_AFTER
    assert result.report[0].stats == {"fused": 0, "heads_folded": 1, "masks_dropped": 0}


@pytest.mark.parametrize("mask, dropped", [("all-true", True), ("all-zero", True), ("one-false", False),
                                           ("one-nonzero", False)])
def test_fuse_attention_golden_constant_mask(mask, dropped):
    tensors = {"all-true": torch.ones(1, 1, 5, 7, dtype=torch.bool), "all-zero": torch.zeros(1, 1, 5, 7)}
    tensors["one-false"] = tensors["all-true"].clone().index_fill_(3, torch.tensor([2]), False)
    tensors["one-nonzero"] = tensors["all-zero"].clone().index_fill_(3, torch.tensor([2]), -1.0)
    dtype = "bool" if tensors[mask].dtype == torch.bool else "f32"
    text = HEADS_BEFORE.replace(", %m: f32[2,1,1,7]", "").replace(
        "{\n", f'{{\n  %m = param "mask" : {dtype}[1,1,5,7]\n', 1)
    result = run_text(text, params=tc.ParamStore({"mask": tensors[mask]}))
    fused = next(n for n in result.graph.nodes if n.op == MHA)
    assert len(fused.inputs) == (3 if dropped else 4)
    assert ("mask" in result.graph.params) is not dropped  # the unused weight goes too
    assert result.report[0].stats["masks_dropped"] == int(dropped)


class HeadAttention(nn.Module):
    """q/k/v projections, head split (view + transpose), sdpa, head merge (transpose + reshape), out projection.

    kv_heads < heads is GQA; `near_miss` writes a step that looks like the head split/merge but is not it.
    """

    def __init__(self, heads=4, kv_heads=4, causal=False, kv_len=None, near_miss=None):
        super().__init__()
        self.heads, self.kv_heads, self.causal, self.kv_len, self.near_miss = heads, kv_heads, causal, kv_len, near_miss
        self.q, self.o = nn.Linear(16, 16), nn.Linear(16, 16)
        self.k, self.v = nn.Linear(16, 4 * kv_heads), nn.Linear(16, 4 * kv_heads)

    def forward(self, x, mask=None):
        b, s, _ = x.shape
        memory = x[:, :self.kv_len] if self.kv_len else x
        q = self.q(x).view(b, s, self.heads, 4).transpose(1, 2)
        k = self.k(memory).view(b, memory.shape[1], self.kv_heads, 4).transpose(1, 2)
        v = self.v(memory).view(b, memory.shape[1], self.kv_heads, 4).transpose(1, 2)
        if self.near_miss == "heads-first-view":  # [B, S, D] read as [B, N, S, H]: not a head split
            v = self.v(memory).view(b, self.kv_heads, memory.shape[1], 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v, mask, is_causal=self.causal,
                                                         enable_gqa=self.kv_heads != self.heads)
        if self.near_miss == "wrong-merge":  # [B, N, H, S] flattened: same shape, other order
            return self.o(out.transpose(2, 3).reshape(b, s, 16))
        merged = out.transpose(1, 2).reshape(b, s, 16)
        return (self.o(merged), out) if self.near_miss == "heads-returned" else self.o(merged)


def head_attention(mask: str | None = None, **kw) -> tuple:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 16)
    masks = {"bool": torch.rand(2, 1, 6, 6) > 0.3, "float": torch.randn(2, 1, 1, 6), None: None}
    if mask == "bool":
        masks["bool"][..., 0] = True  # no fully masked row
    return HeadAttention(**kw).eval(), (x,) if mask is None else (x, masks[mask])


@pytest.mark.parametrize("case", ["heads-first-view", "wrong-merge", "heads-returned"])
def test_near_misses_keep_sdpa(case):
    model, inputs = head_attention(near_miss=case)
    result = optimize_checked(model, inputs, "fuse-attention")
    assert MHA not in ops(result.graph) and "aten.scaled_dot_product_attention" in ops(result.graph)


CASES = {  # name -> (head_attention kwargs, the op at opset 18, the op at opset 23)
    "plain": ({}, "MultiHeadAttention", "Attention"),
    "bool-mask": ({"mask": "bool"}, "MultiHeadAttention", "Attention"),
    "float-mask": ({"mask": "float"}, "MultiHeadAttention", "Attention"),
    "causal": ({"causal": True}, "MultiHeadAttention", "Attention"),
    "causal-cross": ({"causal": True, "kv_len": 4}, None, "Attention"),  # MHA's causal mask is bottom-right
    "gqa": ({"kv_heads": 2, "mask": "float"}, None, "Attention"),
}


@pytest.mark.parametrize("opset", [18, 23])
@pytest.mark.parametrize("case", list(CASES))
def test_multi_head_attention_runs_in_onnxruntime(case, opset, tmp_path):
    kwargs, *onnx_ops = CASES[case]
    model, inputs = head_attention(**kwargs)
    result = optimize_checked(model, inputs, "fuse-attention")
    assert ops(result.graph).count(MHA) == 1 and "aten.transpose.int" not in ops(result.graph)
    onnx_parity(result.graph, inputs, tmp_path, opset=opset)
    exported = {n.op_type for n in tc.to_onnx(result.graph, opset=opset).graph.node}
    expected = onnx_ops[opset == 23]
    assert expected in exported if expected else exported.isdisjoint({"MultiHeadAttention", "Attention"})


def bert_with_mask(attn_implementation: str) -> tuple:
    """Tiny HF Bert fed a real attention mask (the second row padded)."""
    transformers = pytest.importorskip("transformers")
    from tests.models import TINY_TEXT

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            config = transformers.BertConfig(**TINY_TEXT, max_position_embeddings=64,
                                             attn_implementation=attn_implementation)
            self.bert = transformers.BertModel(config)

        def forward(self, ids, mask):
            return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state

    torch.manual_seed(0)
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[1, 5:] = 0
    return Encoder().eval(), (torch.randint(0, 100, (2, 8)), mask)


@pytest.mark.parametrize("source", ["hf_bert", "bert-mask-eager", "bert-mask-sdpa"])
def test_bert_attention_folds_and_runs_in_onnxruntime(source, tmp_path):
    if source == "hf_bert" and source not in MODELS:
        pytest.skip("transformers is not installed")
    model, inputs = MODELS[source]() if source == "hf_bert" else bert_with_mask(source.split("-")[-1])
    result = optimize_checked(model, inputs, "fuse")
    graph_ops = ops(result.graph)
    assert graph_ops.count(MHA) == 2 and "aten.transpose.int" not in graph_ops
    masked = [len(n.inputs) == 4 for n in result.graph.nodes if n.op == MHA]
    assert masked == [source != "hf_bert"] * 2  # the constant all-zero mask of the unmasked capture is gone
    for opset, fused in ((18, "MultiHeadAttention"), (23, "Attention")):
        onnx_parity(result.graph, inputs, tmp_path, opset=opset)
        exported = [n.op_type for n in tc.to_onnx(result.graph, opset=opset).graph.node]
        assert exported.count(fused) == 2 and "Transpose" not in exported and "Softmax" not in exported


@pytest.mark.parametrize("name", ["hf_llama", "transformer_encoder"])
def test_models_whose_heads_do_not_fold_keep_sdpa_and_numerics(name):
    """Llama rotates q/k between the head split and sdpa; nn.TransformerEncoder is sequence-first."""
    if name not in MODELS:
        pytest.skip("transformers is not installed")
    model, inputs = MODELS[name]()
    result = optimize_checked(model, inputs, "fuse")
    assert MHA not in ops(result.graph)
    assert ops(result.graph).count("aten.scaled_dot_product_attention") == 2


def test_dynamic_batch_folds_and_exports(tmp_path):
    model, (x, mask) = head_attention(mask="float")
    graph = tc.capture(model, (x, mask), dynamic_batch=True)
    result = tc.optimize(graph, "fuse-attention")
    fused = next(n for n in result.graph.nodes if n.op == MHA)
    assert fused.outputs[0].type.shape == ("batch", 6, 16)
    bigger = (torch.randn(3, 6, 16), torch.randn(3, 1, 1, 6))
    with torch.no_grad():
        torch.testing.assert_close(tc.to_torch(result.graph)(*bigger), model(*bigger), rtol=1e-4, atol=1e-5)
    for opset in (18, 23):
        onnx_parity(result.graph, bigger, tmp_path, opset=opset)


def test_multi_head_attention_round_trips_text_files_and_generated_code(tmp_path):
    model, inputs = head_attention(kv_heads=2, causal=True)
    graph = tc.optimize(tc.capture(model, inputs), "fuse").graph
    text = graph.to_text()
    assert "kv_num_heads=2" in text and "is_causal=true" in text
    assert tc.parse(text, params=graph.params).to_text() == text
    loaded = tc.load(tc.save(graph, tmp_path / "model.carve"))
    assert loaded.to_text() == text
    exported = tc.export_torch(graph, tmp_path / "torch")
    spec = importlib.util.spec_from_file_location("carved_attention", exported / "model.py")
    generated = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generated)
    assert "def carve_multi_head_attention(" in (exported / "model.py").read_text()
    with torch.no_grad():
        expected = model(*inputs)
        for module in (tc.to_torch(loaded), generated.load()):
            torch.testing.assert_close(module(*inputs), expected, rtol=1e-4, atol=1e-5)


def test_symbolic_lengths_export_with_a_runtime_mask_shape(tmp_path):
    """A [B, 1, 1, L] mask is expanded to [B, 1, L, L] for the fused kernels; with a symbolic L from Shape."""
    text = """graph @g(%x: f32[2,seq,16], %m: f32[2,1,1,seq]) -> (f32[2,seq,16]) {
  %a = carve.multi_head_attention(%x, %x, %x, %m) {num_heads=4} : f32[2,seq,16]
  return %a
}
"""
    graph = tc.parse(text)
    assert graph.to_text() == text
    torch.manual_seed(0)
    inputs = (torch.randn(2, 5, 16), torch.randn(2, 1, 1, 5))
    for opset in (18, 23):
        onnx_parity(graph, inputs, tmp_path, opset=opset)
        assert "Shape" in {n.op_type for n in tc.to_onnx(graph, opset=opset).graph.node}
