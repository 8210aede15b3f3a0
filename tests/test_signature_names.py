"""Input and output names survive ONNX -> IR -> ONNX, capture, the text form, save/load and to_torch."""
from __future__ import annotations

import inspect

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import torchcarve as tc
from torchcarve.errors import VerifyError


def foreign_names_model() -> onnx.ModelProto:
    """Input `gpu_0/data_0`, outputs `softmax:0` and `relu out`: none of them identifiers."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "fc/w:0")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "fc/b:0")
    nodes = [helper.make_node("MatMul", ["gpu_0/data_0", "fc/w:0"], ["mm"]),
             helper.make_node("Add", ["mm", "fc/b:0"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["softmax:0"], axis=-1),
             helper.make_node("Relu", ["logits"], ["relu out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("gpu_0/data_0", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("softmax:0", TensorProto.FLOAT, [2, 4]),
                               helper.make_tensor_value_info("relu out", TensorProto.FLOAT, [2, 4])], [weight, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def io_names(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output]


@pytest.mark.parametrize("pipeline", ["", "cleanup,fuse"])
def test_onnx_round_trip_keeps_foreign_names_and_runs_fed_by_them(pipeline: str) -> None:
    original = foreign_names_model()
    graph = tc.from_onnx(original)
    if pipeline:
        graph = tc.optimize(graph, pipeline).graph
    exported = tc.to_onnx(graph)
    assert io_names(exported) == (["gpu_0/data_0"], ["softmax:0", "relu out"])
    feeds = {"gpu_0/data_0": np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)}
    expected, actual = run(original, feeds), run(exported, feeds)
    assert set(actual) == {"softmax:0", "relu out"}
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, atol=1e-6)


def test_text_form_prints_and_parses_external_names() -> None:
    graph = tc.from_onnx(foreign_names_model())
    text = graph.to_text()
    assert 'graph @g(%gpu_0_data_0: f32[2,8] "gpu_0/data_0") -> (f32[2,4] "softmax:0", f32[2,4] "relu out")' in text
    again = tc.parse(text, params=graph.params)
    assert again.to_text() == text
    assert again.signature_names() == (["gpu_0/data_0"], ["softmax:0", "relu out"])


def test_names_equal_to_value_names_are_not_printed() -> None:
    graph = tc.capture(nn.ReLU(), (torch.randn(2),))
    assert graph.to_text().startswith("graph @ReLU(%input: f32[2]) -> (f32[2] \"output\")")


def test_duplicate_external_names_are_a_verify_error() -> None:
    text = tc.from_onnx(foreign_names_model()).to_text().replace('"relu out"', '"softmax:0"')
    with pytest.raises(VerifyError, match="output names must be unique"):
        tc.parse(text)


def test_save_and_load_keep_names(tmp_path) -> None:
    graph = tc.from_onnx(foreign_names_model())
    tc.save(graph, tmp_path / "m.carve")
    assert tc.load(tmp_path / "m.carve").signature_names() == (["gpu_0/data_0"], ["softmax:0", "relu out"])


def test_to_torch_sanitizes_names_that_are_not_identifiers() -> None:
    module = tc.to_torch(tc.from_onnx(foreign_names_model()))
    assert list(inspect.signature(module.forward).parameters) == ["gpu_0_data_0"]


class DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, pixel_values: torch.Tensor, weight: torch.Tensor) -> dict:
        logits = self.linear(pixel_values)
        return {"logits": logits, "extra": (logits * weight, logits + 1)}


class TupleOutput(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple:
        return x + 1, x * 2


@pytest.mark.parametrize("method", ["export", "fx"])
@pytest.mark.parametrize("model, inputs, expected", [
    (DictOutput(), (torch.randn(2, 4), torch.randn(2, 3)), (["pixel_values", "weight"], ["logits", "extra_0", "extra_1"])),
    (TupleOutput(), (torch.randn(3),), (["x"], ["output_0", "output_1"])),
    (nn.ReLU(), (torch.randn(2, 4),), (["input"], ["output"])),
])
def test_capture_names_inputs_after_forward_and_outputs_after_the_returned_structure(
        method: str, model: nn.Module, inputs: tuple, expected: tuple) -> None:
    graph = tc.capture(model, inputs, method=method)
    assert graph.signature_names() == expected
    assert io_names(tc.to_onnx(graph)) == expected
    module = tc.to_torch(graph)
    keywords = [name if name != "input" else "input_1" for name in expected[0]]  # a builtin is not shadowed
    assert list(inspect.signature(module.forward).parameters) == keywords
    named = module(**dict(zip(keywords, inputs)))  # forward takes the model's names as keywords
    flat = named if isinstance(named, tuple) else (named,)
    eager = model(*inputs)
    eager = [eager["logits"], *eager["extra"]] if isinstance(eager, dict) else (eager if isinstance(eager, tuple) else [eager])
    for got, want in zip(flat, eager):
        torch.testing.assert_close(got, want)


def test_hf_bert_exports_with_its_argument_and_output_names() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                     vocab_size=100, max_position_embeddings=64, attn_implementation="eager")
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    ids, mask = torch.randint(0, 100, (2, 8)), torch.ones(2, 8, dtype=torch.int64)
    mask[1, 5:] = 0
    proto = tc.to_onnx(tc.capture(model, (ids, mask)))
    assert io_names(proto) == (["input_ids", "attention_mask"], ["last_hidden_state"])
    actual = run(proto, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
    np.testing.assert_allclose(actual["last_hidden_state"], expected.numpy(), rtol=1e-4, atol=1e-4)


def test_an_output_named_like_an_input_gets_a_suffix() -> None:
    class Clash(nn.Module):
        def forward(self, output: torch.Tensor) -> torch.Tensor:
            return output * 2

    graph = tc.capture(Clash(), (torch.randn(2),))
    assert graph.signature_names() == (["output"], ["output_1"])
    assert io_names(tc.to_onnx(graph)) == (["output"], ["output_1"])


def test_an_output_with_an_inputs_name_that_is_another_value_is_a_verify_error() -> None:
    text = 'graph @g(%x: f32[2] "a") -> (f32[2] "a") {\n  %y = aten.relu(%x) : f32[2]\n  return %y\n}\n'
    with pytest.raises(VerifyError, match="output 'a' has an input's name"):
        tc.parse(text)
