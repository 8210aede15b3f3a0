"""ONNX backend: captured PyTorch models -> to_onnx -> onnxruntime matches eager PyTorch."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import torchcarve as tc
from torchcarve.backends.onnx import DEFAULT_OPSET, to_onnx
from torchcarve.frontends.aten import TensorOutputs


def run_ort(model: onnx.ModelProto, inputs: tuple) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)})


def assert_ort_matches_eager(model: nn.Module, inputs: tuple) -> onnx.ModelProto:
    model.eval()
    proto = to_onnx(tc.capture(model, inputs))
    with torch.no_grad():
        expected = TensorOutputs(model)(*inputs)
    actual = run_ort(proto, inputs)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        scale = float(e.abs().max()) or 1.0
        np.testing.assert_allclose(a, e.numpy(), rtol=1e-4, atol=1e-5 * scale)
    return proto


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.bn(self.conv1(x)))))


MODELS = {
    "mlp": lambda: (nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4), nn.Softmax(-1)), (torch.randn(3, 16),)),
    "cnn_bn": lambda: (nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)), (torch.randn(2, 3, 16, 16),)),
    "residual": lambda: (Residual(), (torch.randn(2, 8, 8, 8),)),
    "depthwise": lambda: (nn.Sequential(nn.Conv2d(8, 8, 3, groups=8, padding=1), nn.Hardswish(), nn.Conv2d(8, 16, 1),
                                        nn.AvgPool2d(2), nn.SiLU()), (torch.randn(2, 8, 8, 8),)),
    "transformer": lambda: (nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2),
                            (torch.randn(2, 5, 16),)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pytorch_models_match_in_onnxruntime(name: str) -> None:
    torch.manual_seed(0)
    model, inputs = MODELS[name]()
    proto = assert_ort_matches_eager(model, inputs)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == DEFAULT_OPSET


def test_hf_bert_and_vit_match_in_onnxruntime() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                          num_attention_heads=2, intermediate_size=64))
    assert_ort_matches_eager(bert, (torch.randint(0, 100, (2, 7)),))
    vit = transformers.ViTModel(transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=2, intermediate_size=64))
    assert_ort_matches_eager(vit, (torch.randn(2, 3, 16, 16),))


def test_hf_llama_gqa_rope_mask_matches_in_onnxruntime() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    llama = transformers.LlamaModel(transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, use_cache=False))
    proto = assert_ort_matches_eager(llama, (torch.randint(0, 100, (2, 7)),))
    ops = {n.op_type for n in proto.graph.node}
    assert {"Softmax", "MatMul"} <= ops  # attention lowered to the pattern ORT fuses


def test_names_come_from_module_paths_and_weights_are_initializers() -> None:
    model, inputs = MODELS["residual"]()
    proto = to_onnx(tc.capture(model, inputs))
    assert any(n.name.startswith("/conv1/") for n in proto.graph.node)
    assert "conv1.weight" in {t.name for t in proto.graph.initializer}


def test_symbolic_batch_becomes_dim_param() -> None:
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU()).eval()
    graph = tc.capture(model, (torch.randn(3, 16),), dynamic_batch=True)
    proto = to_onnx(graph)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    out = run_ort(proto, (torch.randn(5, 16),))[0]
    assert out.shape == (5, 8)


def test_writes_file_atomically_and_api_wrappers(tmp_path) -> None:
    model, inputs = MODELS["mlp"]()
    path = tmp_path / "model.onnx"
    proto = tc.to_onnx(tc.capture(model, inputs), path)
    assert onnx.load(str(path)).graph == proto.graph
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp files left behind
    compiled = tc.compile(model, inputs)
    assert compiled.to_onnx(tmp_path / "c.onnx").graph.node


def test_opset_is_overridable() -> None:
    model, inputs = MODELS["mlp"]()
    proto = to_onnx(tc.capture(model, inputs), opset=17)
    assert proto.opset_import[0].version == 17
    assert run_ort(proto, inputs)[0].shape == (3, 4)


def test_ops_without_lowering_are_all_named() -> None:
    graph = tc.Graph("g")
    x = graph.add_input("x", tc.TensorType((4, 4)))
    y = graph.add_node("aten.cummax", [x], {"dim": 0}).outputs[0]
    z = graph.add_node("aten.logcumsumexp", [y], {"dim": 0}).output
    graph.set_outputs([z])
    with pytest.raises(tc.UnsupportedOpError, match="aten.cummax.*aten.logcumsumexp"):
        to_onnx(graph)
