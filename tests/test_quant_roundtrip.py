"""Quantized graphs through every round trip, and int8 ONNX files from onnxruntime.quantization run in PyTorch.

Each quantize mode on the shared MLP (tests/models.py): quantize -> text form -> save/load -> to_onnx ->
from_onnx -> to_torch. The re-imported graph has the same carve.* ops and the same integer params, computes
what the quantized graph computed (the same kernels on the same integers; 1e-6 because the MLP's GELU comes
back as ONNX's Erf form, float32 rounding apart), and exports to the same ONNX file again (same nodes, same
initializers).

Tolerances against onnxruntime on the exported file: dynamic and weight-only agree to float32 rounding
(1e-5; dynamic mode's weights are 7-bit, so the int16 pair sums of ORT's AVX2 u8*s8 kernel cannot
saturate); static QDQ within a few output quantization steps (ORT requantizes with its own rounding of a
value on a .5 boundary, see tests/passes/test_quantize.py).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import torchcarve as tc
from tests.models import MODELS

ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")

# mode -> (pipeline, export opset, tolerance against ORT)
MODES = {
    "dynamic": ("quantize", 18, 1e-5),
    "static": ("quantize{mode=static}", 18, 0.05),
    "weight-only-int8": ("quantize{mode=weight-only}", 18, 1e-5),
    "weight-only-int4": ("quantize{mode=weight-only,dtype=int4,group-size=16}", 21, 1e-5),
    "weight-only-int4-g8": ("quantize{mode=weight-only,dtype=int4,group-size=8}", 21, 1e-5),  # no MatMulNBits form
}


def _mlp_quantized(pipeline: str) -> tuple[tc.Graph, torch.Tensor]:
    model, (x,) = MODELS["mlp"]()
    calibration = [(torch.randn(4, 16, generator=torch.Generator().manual_seed(i)),) for i in range(4)]
    return tc.optimize(tc.capture(model, (x,)), pipeline, calibration=calibration).graph, x


def _run(graph: tc.Graph, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return tc.to_torch(graph)(x)


def _ort(path, *inputs: torch.Tensor) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)})[0]


def _carve_ops(graph: tc.Graph) -> dict[str, int]:
    return {op: count for op, count in graph.op_histogram().items() if op.startswith("carve.")}


def _integer_params(graph: tc.Graph) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in graph.params.items() if tensor.dtype in (torch.int8, torch.uint8)}


def _file_contents(proto: onnx.ModelProto) -> tuple[list, dict]:
    """What makes two ONNX files equivalent: the nodes (type, domain, attributes) and the initializers."""
    nodes = [(n.op_type, n.domain, sorted(helper.get_attribute_value(a) for a in n.attribute)) for n in proto.graph.node]
    initializers = {i.name: (i.data_type, numpy_helper.to_array(i).tolist()) for i in proto.graph.initializer}
    return nodes, initializers


@pytest.mark.parametrize("mode", MODES)
def test_quantized_graph_survives_every_round_trip(mode, tmp_path):
    pipeline, opset, tolerance = MODES[mode]
    graph, x = _mlp_quantized(pipeline)
    carve_ops = _carve_ops(graph)
    assert sum(carve_ops.values()) >= 3 and len(_integer_params(graph)) >= 3
    text = graph.to_text()
    assert tc.parse(text, params=graph.params).to_text() == text
    tc.save(graph, tmp_path / "q.carve")
    loaded = tc.load(tmp_path / "q.carve")
    assert loaded.to_text() == text

    exported = tc.to_onnx(loaded, tmp_path / "q.onnx", opset=opset)
    back = tc.from_onnx(tmp_path / "q.onnx")
    assert _carve_ops(back) == carve_ops
    assert _integer_params(back).keys() == _integer_params(graph).keys()
    for name, tensor in _integer_params(graph).items():
        assert torch.equal(back.params[name], tensor), name
    torch.testing.assert_close(_run(back, x), _run(graph, x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_ort(tmp_path / "q.onnx", x), _run(back, x).numpy(), rtol=tolerance, atol=tolerance)

    again = tc.to_onnx(back, tmp_path / "again.onnx", opset=opset)
    assert _file_contents(again) == _file_contents(exported)


@pytest.mark.parametrize("weights", ["per-channel", "per-tensor"])
def test_quantized_embedding_survives_export_and_reimport(weights, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 8)).eval()
    x = torch.randint(0, 50, (2, 5))
    graph = tc.optimize(tc.capture(model, (x,)), f"quantize{{weights={weights}}}").graph
    exported = tc.to_onnx(graph, tmp_path / "q.onnx")
    back = tc.from_onnx(tmp_path / "q.onnx")
    assert _carve_ops(back) == _carve_ops(graph)
    assert torch.equal(_run(back, x), _run(graph, x))
    assert _file_contents(tc.to_onnx(back, tmp_path / "again.onnx")) == _file_contents(exported)


@pytest.mark.parametrize("mode", MODES)
def test_without_canonicalization_the_onnx_ops_compute_the_same(mode, tmp_path):
    """`from_onnx(canonicalize=False)` keeps onnx.DequantizeLinear etc., unfolded, and their kernels agree."""
    pipeline, opset, _ = MODES[mode]
    graph, x = _mlp_quantized(pipeline)
    tc.to_onnx(graph, tmp_path / "q.onnx", opset=opset)
    raw = tc.from_onnx(tmp_path / "q.onnx", canonicalize=False)
    assert not _carve_ops(raw)
    assert len(_integer_params(raw)) >= 3
    torch.testing.assert_close(_run(raw, x), _run(graph, x), rtol=1e-6, atol=1e-6)


def test_dynamic_matmul_with_a_zero_point_stays_an_onnx_op(tmp_path):
    """uint8 weights with a zero point have no carve.dynamic_linear form: kept, and run by their kernel."""
    rng = np.random.default_rng(0)
    b = helper.make_tensor("B", TensorProto.UINT8, [16, 8], rng.integers(0, 128, (16, 8)).ravel().tolist())
    zero = helper.make_tensor("zero", TensorProto.UINT8, [8], rng.integers(50, 70, 8).tolist())
    scale = numpy_helper.from_array(rng.uniform(0.01, 0.02, 8).astype(np.float32), "scale")
    bias = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bias")
    node = helper.make_node("DynamicQuantizeMatMul", ["x", "B", "scale", "zero", "bias"], ["y"], domain="com.microsoft")
    model = _model([node], [b, zero, scale, bias], ("x", [3, 16]), ("y", [3, 8]))
    onnx.save(model, tmp_path / "m.onnx")
    graph = tc.from_onnx(tmp_path / "m.onnx")
    assert graph.op_histogram()["onnx.DynamicQuantizeMatMul"] == 1
    x = torch.randn(3, 16)
    np.testing.assert_allclose(_run(graph, x).numpy(), _ort(tmp_path / "m.onnx", x), rtol=1e-5, atol=1e-5)


def test_integer_kernels_match_onnxruntime(tmp_path):
    """MatMulInteger (per-row/column zero points), MatMulIntegerToFloat and DynamicQuantizeLinear, exactly."""
    rng = np.random.default_rng(0)
    initializers = [
        helper.make_tensor("B", TensorProto.UINT8, [16, 8], rng.integers(0, 256, (16, 8)).ravel().tolist()),
        helper.make_tensor("b_zero", TensorProto.UINT8, [8], rng.integers(100, 150, 8).tolist()),
        numpy_helper.from_array(np.float32(0.02), "b_scale"),
    ]
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "q_scale", "q_zero"]),
        helper.make_node("MatMulInteger", ["q", "B", "q_zero", "b_zero"], ["acc"]),
        helper.make_node("MatMulIntegerToFloat", ["q", "B", "q_scale", "b_scale", "q_zero", "b_zero"], ["f"],
                         domain="com.microsoft"),
        helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["acc_f", "q_scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "f"], ["y"]),
    ]
    onnx.save(_model(nodes, initializers, ("x", [5, 16]), ("y", [5, 8])), tmp_path / "m.onnx")
    x = torch.randn(5, 16) * 3
    np.testing.assert_allclose(_run(tc.from_onnx(tmp_path / "m.onnx"), x).numpy(), _ort(tmp_path / "m.onnx", x),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("symmetric", [True, False])
def test_ort_matmul_nbits_file_runs_in_pytorch(symmetric, tmp_path):
    """A 4-bit file from onnxruntime's MatMulNBitsQuantizer: symmetric weights become carve.weight_only_linear,
    asymmetric ones (zero points) stay com.microsoft MatMulNBits with a kernel; both match ORT's fp32 compute."""
    nbits = pytest.importorskip("onnxruntime.quantization.matmul_nbits_quantizer")
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32), "W")
    model = _model([helper.make_node("MatMul", ["x", "W"], ["y"])], [weight], ("x", [3, 64]), ("y", [3, 32]))
    quantizer = nbits.MatMulNBitsQuantizer(model, block_size=32, is_symmetric=symmetric)
    quantizer.process()
    onnx.save(quantizer.model.model, tmp_path / "int4.onnx")
    graph = tc.from_onnx(tmp_path / "int4.onnx")
    assert graph.op_histogram()["onnx.MatMulNBits"] == (0 if symmetric else 1)
    x = torch.randn(3, 64)
    np.testing.assert_allclose(_run(graph, x).numpy(), _ort(tmp_path / "int4.onnx", x), rtol=1e-5, atol=1e-4)


def _model(nodes, initializers, x: tuple[str, list], y: tuple[str, list]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(x[0], TensorProto.FLOAT, x[1])],
                              [helper.make_tensor_value_info(y[0], TensorProto.FLOAT, y[1])], initializers)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


# ---- files from onnxruntime.quantization ----------------------------------------------------

def _float_file(name: str, tmp_path) -> tuple[torch.nn.Module, torch.Tensor, str]:
    model, (x,) = MODELS[name]()
    path = str(tmp_path / f"{name}.onnx")
    tc.to_onnx(tc.capture(model, (x,)), path)
    return model, x, path


@pytest.mark.parametrize("name, linears, convs", [("mlp", 3, 0), ("cnn_bn", 1, 2)])
def test_ort_quantize_dynamic_7bit_runs_in_pytorch_exactly(name, linears, convs, tmp_path):
    """DynamicQuantizeLinear + MatMulInteger (-> carve.dynamic_linear) / ConvInteger (kept, with a kernel)
    files: 7-bit weights, so ORT's result is exact too."""
    _, x, path = _float_file(name, tmp_path)
    quantized = str(tmp_path / "int8.onnx")
    quantization.quantize_dynamic(path, quantized, weight_type=quantization.QuantType.QInt8, per_channel=True,
                                  reduce_range=True)
    graph = tc.from_onnx(quantized)
    histogram = graph.op_histogram()
    assert histogram["carve.dynamic_linear"] == linears and histogram["onnx.ConvInteger"] == convs
    assert histogram["onnx.MatMulInteger"] == 0 and histogram["onnx.DynamicQuantizeLinear"] == convs
    np.testing.assert_allclose(_run(graph, x).numpy(), _ort(quantized, x), rtol=1e-5, atol=1e-5)
    tc.to_onnx(graph, tmp_path / "again.onnx")
    np.testing.assert_allclose(_ort(tmp_path / "again.onnx", x), _ort(quantized, x), rtol=1e-6, atol=1e-6)


def test_ort_quantize_dynamic_full_range_is_accurate_in_pytorch(tmp_path):
    """Full-range int8 weights (ORT's default): PyTorch computes the exact integer products and stays within
    int8 error of the float model. ORT on AVX2 without VNNI saturates u8*s8 pair sums in int16 (its error
    here is 5-20%), so it is not the reference for this file."""
    model, x, path = _float_file("mlp", tmp_path)
    quantized = str(tmp_path / "int8.onnx")
    quantization.quantize_dynamic(path, quantized, weight_type=quantization.QuantType.QInt8)
    graph = tc.from_onnx(quantized)
    with torch.no_grad():
        expected = model(x)
    error = float((_run(graph, x) - expected).norm() / expected.norm())
    assert 0 < error < 0.03


def test_ort_quantize_static_qdq_imports_as_carve_ops(tmp_path):
    """A QDQ file from quantize_static: carve.quantize/dequantize, int8 weights kept (not folded to float)."""
    _, x, path = _float_file("mlp", tmp_path)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": torch.randn(4, 16, generator=torch.Generator().manual_seed(i)).numpy()}
                                 for i in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantized = str(tmp_path / "qdq.onnx")
    quantization.quantize_static(path, quantized, Reader(), quant_format=quantization.QuantFormat.QDQ,
                                 per_channel=True, weight_type=quantization.QuantType.QInt8)
    graph = tc.from_onnx(quantized)
    histogram = graph.op_histogram()
    assert histogram["carve.quantize"] > 0 and histogram["carve.dequantize"] > histogram["carve.quantize"]
    assert histogram["aten.linear"] == 3
    assert sum(t.dtype == torch.int8 and t.dim() == 2 for t in graph.params.values()) == 3
    np.testing.assert_allclose(_run(graph, x).numpy(), _ort(quantized, x), atol=0.05)
