"""Dynamic shapes end to end: capture at one size with symbolic dims, run at others in PyTorch and ORT.

Each model is captured at batch 2 (seq 8) and run at batches 1, 3 and 7 through the generated module
and the exported ONNX file, against eager PyTorch (rtol 1e-4, atol 1e-5; ORT's kernels sum in another
order, so 1e-4 there).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import torchcarve as tc
from tests.models import MODELS

BATCHES = (1, 3, 7)


class FlattenCNN(nn.Module):
    """The classic CNN head: `x.view(x.size(0), -1)` before the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.view(x.size(0), -1))


def t5_encoder():
    import transformers

    torch.manual_seed(0)
    config = transformers.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=100)
    return transformers.T5EncoderModel(config).eval(), (torch.randint(0, 100, (2, 8)),)


def flatten_cnn():
    torch.manual_seed(0)
    return FlattenCNN().eval(), (torch.randn(2, 3, 8, 8),)


FAMILIES = {"cnn": flatten_cnn, **{name: MODELS[name] for name in ("hf_bert", "hf_gpt2", "hf_llama", "hf_vit")
                                   if name in MODELS}, "hf_t5_encoder": t5_encoder}


def first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    return output[0]


def resized(x: torch.Tensor, sizes: dict[int, int]) -> torch.Tensor:
    shape = [sizes.get(i, d) for i, d in enumerate(x.shape)]
    return torch.randint(0, 100, shape) if x.dtype == torch.int64 else torch.randn(shape)


def check_runs_at(model, graph, example, sizes_list, tmp_path):
    path = tmp_path / "model.onnx"
    tc.to_onnx(graph, path)
    session = ort.InferenceSession(str(path))
    module = tc.to_torch(graph)
    for sizes in sizes_list:
        x = resized(example, sizes)
        with torch.no_grad():
            expected = first_tensor(model(x))
            actual = first_tensor(module(x))
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)
    return onnx.load(str(path))


def dim_params(proto: onnx.ModelProto, position: int = 0) -> list:
    return [d.dim_param or d.dim_value for d in proto.graph.input[position].type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_dynamic_batch_runs_at_other_batch_sizes(name, tmp_path):
    if name.startswith("hf_"):
        pytest.importorskip("transformers")
    model, (x,) = FAMILIES[name]()
    graph = tc.capture(model, (x,), dynamic_batch=True)
    assert graph.inputs[0].type.shape[0] == "batch" and all(v.type.shape[0] == "batch" for v in graph.outputs)
    proto = check_runs_at(model, graph, x, [{0: b} for b in BATCHES], tmp_path)
    assert dim_params(proto)[0] == "batch"
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_view_by_batch_size_is_a_symbolic_size_in_the_ir():
    model, inputs = flatten_cnn()
    graph = tc.capture(model, inputs, dynamic_batch=True)
    view = next(n for n in graph.nodes if n.op == "aten.view")
    assert "size=[batch, -1]" in graph.to_text()
    assert view.outputs[0].type == tc.TensorType(("batch", 144))
    reparsed = tc.parse(graph.to_text(), params=graph.params)
    assert reparsed.to_text() == graph.to_text()
    assert "batch = x.shape[0]" in tc.to_torch(graph).code


@pytest.mark.parametrize("name", ["hf_bert", "hf_gpt2", "hf_llama", "hf_t5_encoder"])
def test_dynamic_sequence_length(name, tmp_path):
    pytest.importorskip("transformers")
    model, (ids,) = FAMILIES[name]()
    graph = tc.capture(model, (ids,), dynamic={"input_ids": {0: "batch", 1: "seq"}})
    assert graph.inputs[0].type.shape == ("batch", "seq")
    proto = check_runs_at(model, graph, ids, [{0: 1, 1: 5}, {0: 3, 1: 11}, {0: 7, 1: 5}], tmp_path)
    assert dim_params(proto) == ["batch", "seq"]


def test_dynamic_by_position_equals_by_name():
    pytest.importorskip("transformers")
    model, inputs = MODELS["hf_bert"]()
    by_name = tc.capture(model, inputs, dynamic={"input_ids": {0: "batch", 1: "seq"}})
    by_position = tc.capture(model, inputs, dynamic={0: {0: "batch", 1: "seq"}})
    assert by_name.to_text() == by_position.to_text()


@pytest.mark.parametrize("dynamic, message", [
    ({"pixels": {0: "batch"}}, "does not take"),
    ({0: {4: "batch"}}, "dim 4 does not exist"),
    ({0: {0: "f32"}}, "not a valid name"),
    ({0: [0]}, "must map dims to symbol names"),
])
def test_bad_dynamic_specs_are_capture_errors(dynamic, message):
    model, inputs = flatten_cnn()
    with pytest.raises(tc.CaptureError, match=message):
        tc.capture(model, inputs, dynamic=dynamic)


@pytest.mark.parametrize("pipeline", ["cleanup,fuse", "prune{ratio=0.5}", "quantize{mode=dynamic}",
                                      "quantize{mode=static}"])
def test_passes_keep_symbolic_sizes(pipeline, tmp_path):
    model, inputs = flatten_cnn()
    graph = tc.capture(model, inputs, dynamic_batch=True)
    result = tc.optimize(graph, pipeline, calibration=[inputs, (torch.randn(5, 3, 8, 8),)])
    assert "size=[batch, " in result.graph.to_text()
    x = torch.randn(7, 3, 8, 8)
    out = tc.to_torch(result.graph)(x)
    assert out.shape == (7, 5)
    if pipeline == "cleanup,fuse":
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)
    path = tmp_path / "opt.onnx"
    tc.to_onnx(result.graph, path)
    session = ort.InferenceSession(str(path))
    atol = 5e-2 if "static" in pipeline else 1e-4  # ORT's int8 kernels may round an activation one step apart
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], out.detach().numpy(), rtol=1e-3, atol=atol)


def flatten_cnn_onnx() -> onnx.ModelProto:
    """What torch.onnx writes for FlattenCNN without BN: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    rng = np.random.default_rng(0)
    arrays = {"conv.weight": rng.standard_normal((4, 3, 3, 3)), "fc.weight": rng.standard_normal((5, 144)),
              "fc.bias": rng.standard_normal(5)}
    initializers = [numpy_helper.from_array(a.astype(np.float32), k) for k, a in arrays.items()] + [
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one")]
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight"], ["conv"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Shape", ["relu"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["relu", "target"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(nodes, "flatten_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_shape_gather_concat_reshape_imports_and_runs_at_other_batches(tmp_path):
    proto = flatten_cnn_onnx()
    onnx.checker.check_model(proto, full_check=True)
    graph = tc.from_onnx(proto)
    reshape = next(n for n in graph.nodes if n.op == "aten.reshape")
    assert [str(d) for d in reshape.attrs["shape"]] == ["N", "-1"]
    assert reshape.outputs[0].type == tc.TensorType(("N", 144))
    original = ort.InferenceSession(proto.SerializeToString())
    path = tmp_path / "reexported.onnx"
    tc.to_onnx(tc.optimize(graph, "cleanup,fuse").graph, path)
    reexported = ort.InferenceSession(str(path))
    module = tc.to_torch(graph)
    for batch in BATCHES:
        x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
        expected = original.run(None, {"x": x})[0]
        np.testing.assert_allclose(module(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(reexported.run(None, {"x": x})[0], expected, rtol=1e-4, atol=1e-4)
    assert dim_params(onnx.load(str(path)))[0] == "N"


def test_cli_dynamic_flag(tmp_path, monkeypatch):
    from torchcarve.cli import main

    (tmp_path / "dynmodels.py").write_text(
        "import torch\nfrom tests.test_dynamic import FlattenCNN\n\ndef cnn():\n    torch.manual_seed(0)\n"
        "    return FlattenCNN()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["capture", "dynmodels:cnn", "--input", "2x3x8x8", "--dynamic", "batch", "-o", "out.carve"]) == 0
    graph = tc.load(tmp_path / "out.carve")
    assert graph.inputs[0].type.shape == ("batch", 3, 8, 8)
    assert tc.to_torch(graph)(torch.randn(3, 3, 8, 8)).shape == (3, 5)
