"""MoE capture: routed MoE layers (user-written and HF) become one dense carve.moe node that matches the
model in PyTorch and onnxruntime at several batch sizes; the model is left as it was."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcarve as tc
from torchcarve.errors import CaptureError

from ..models import MODELS, MoENet, TopKMoE

transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

RTOL, ATOL = 1e-4, 1e-5
BATCHES = (1, 5, 16)


def run_ort(path, inputs) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return torch.from_numpy(session.run(None, feeds)[0])


def moe_nodes(graph: tc.Graph) -> list:
    return [n for n in graph.nodes if n.op == "carve.moe"]


@pytest.mark.parametrize("name, attrs", [
    ("topk_moe", {"top_k": 2, "act": "gelu", "norm_topk": True, "gated": False, "expert_bias": True}),
    ("scatter_moe", {"top_k": 2, "act": "silu", "norm_topk": False, "gated": True, "router_bias": True}),
])
def test_user_moe_captures_dense_and_matches_at_every_batch(name, attrs, tmp_path):
    model, inputs = MODELS[name]()
    original = model.moe
    graph = tc.capture(model, inputs, dynamic_batch=True)
    assert model.moe is original, "capture must put the model's own module back"
    (node,) = moe_nodes(graph)
    assert attrs.items() <= node.attrs.items()
    assert not any(n.op.startswith("aten.index") or "nonzero" in n.op for n in graph.nodes)
    tc.to_onnx(graph, tmp_path / "moe.onnx")
    module = tc.to_torch(graph)
    for batch in BATCHES:
        x = (torch.randn(batch, 12),)
        with torch.no_grad():
            expected = model(*x)
            torch.testing.assert_close(module(*x), expected, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(run_ort(tmp_path / "moe.onnx", x), expected, rtol=RTOL, atol=ATOL)


def test_the_moe_module_itself_captures():
    torch.manual_seed(0)
    model, x = TopKMoE().eval(), torch.randn(6, 16)
    graph = tc.capture(model, (x,))
    assert [n.op for n in graph.nodes if n.op != "param"] == ["carve.moe"]
    with torch.no_grad():
        torch.testing.assert_close(tc.to_torch(graph)(x), model(x), rtol=RTOL, atol=ATOL)


class CubeGate(TopKMoE):
    """Looks like a top-k MoE but weighs experts by cubed probabilities: no dense form matches it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, index = torch.topk(torch.softmax(self.gate(x), dim=-1) ** 3, self.top_k, dim=-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(index == e)
            out = out.index_add(0, token, expert(x[token]) * weights[token, slot, None])
        return out


def test_a_moe_no_form_matches_is_not_swapped():
    torch.manual_seed(0)
    model = MoENet(CubeGate()).eval()
    original = model.moe
    with pytest.raises(CaptureError, match="not a product of the dynamic dims"):
        tc.capture(model, (torch.randn(6, 12),), method="export")
    assert model.moe is original


def test_global_local_gate_model_matches_at_every_batch(tmp_path):
    model, inputs = MODELS["global_local"]()
    graph = tc.capture(model, inputs, dynamic_batch=True)
    assert not moe_nodes(graph)
    tc.to_onnx(graph, tmp_path / "gl.onnx")
    for batch in BATCHES:
        x = (torch.randn(batch, 16),)
        with torch.no_grad():
            expected = model(*x)
            torch.testing.assert_close(tc.to_torch(graph)(*x), expected, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(run_ort(tmp_path / "gl.onnx", x), expected, rtol=RTOL, atol=ATOL)


def hf_moe(family: str) -> nn.Module:
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, vocab_size=100, max_position_embeddings=64, use_cache=False,
                  attn_implementation="eager")
    configs = {
        "mixtral": (transformers.MixtralConfig, transformers.MixtralModel, dict(num_local_experts=4)),
        "olmoe": (transformers.OlmoeConfig, transformers.OlmoeModel, dict(num_experts=4)),
        "qwen2_moe": (transformers.Qwen2MoeConfig, transformers.Qwen2MoeModel,
                      dict(num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=48)),
    }
    config_class, model_class, extra = configs[family]
    torch.manual_seed(0)
    return model_class(config_class(**common, num_experts_per_tok=2, **extra)).eval()


@pytest.mark.parametrize("family", ["mixtral", "olmoe", "qwen2_moe"])
def test_hf_moe_models_capture_dense_and_match(family, tmp_path):
    model = hf_moe(family)
    graph = tc.capture(model, (torch.randint(0, 100, (2, 8)),), dynamic_batch=True)
    assert len(moe_nodes(graph)) == 2 and all(n.attrs["gated"] for n in moe_nodes(graph))
    tc.to_onnx(graph, tmp_path / "hf.onnx")
    for batch in (1, 3):
        ids = (torch.randint(0, 100, (batch, 8)),)
        with torch.no_grad():
            expected = model(*ids).last_hidden_state
            actual = tc.to_torch(graph)(*ids)
        torch.testing.assert_close(actual[0] if isinstance(actual, tuple) else actual, expected, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(run_ort(tmp_path / "hf.onnx", ids), expected, rtol=RTOL, atol=ATOL)
