"""quantize: IR before/after, numerics vs eager, ORT parity, round trips, the digits CNN, bad input.

Tolerances: dynamic mode runs exactly ORT's integer arithmetic (7-bit weights cannot saturate AVX2's
u8*s8 pairs), so ORT and the PyTorch backend agree to float32 rounding of the rescale (1e-5). Static
QDQ rounds activations to uint8 at each Q: ORT (QLinearConv/requantize) and PyTorch may round a
value sitting on a .5 boundary differently, i.e. one quantization step, so parity there is checked
to a few output steps and on predictions.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import torchcarve as tc
from torchcarve.ir.ops.quant import carve_dequantize, carve_dynamic_linear, carve_quantize
from torchcarve.passes.quantize.observers import OBSERVERS, HistogramObserver, mse_range, quantize_weight

ort = pytest.importorskip("onnxruntime")


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval(), torch.randn(2, 4)


def _batches(count: int = 4, shape=(2, 4)) -> list[tuple[torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(*shape, generator=generator),) for _ in range(count)]


def _quantized(model: nn.Module, x: torch.Tensor, pipeline: str, calibration=None) -> tc.Graph:
    graph = tc.capture(model, (x,))
    return tc.optimize(graph, pipeline, calibration=calibration).graph


def _ort(graph: tc.Graph, inputs: tuple, tmp_path, opset: int | None = None) -> np.ndarray:
    from torchcarve.backends.onnx import to_onnx

    path = tmp_path / "model.onnx"
    to_onnx(graph, path, **({"opset": opset} if opset else {}))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)})[0]


# ---- IR before/after ----------------------------------------------------------------------

DYNAMIC_AFTER = """\
graph @Sequential(%input: f32[2,4]) -> (f32[2,2]) {
  %v0_bias = param "0.bias" : f32[8]
  %v2_bias = param "2.bias" : f32[2]
  %v0_weight_q = param "0.weight_q" : i8[8,4]
  %v0_weight_scale = param "0.weight_scale" : f32[8]
  %v2_weight_q = param "2.weight_q" : i8[2,8]
  %v2_weight_scale = param "2.weight_scale" : f32[2]
  %linear_q = carve.dynamic_linear(%input, %v0_weight_q, %v0_weight_scale, %v0_bias) : f32[2,8] loc("0")
  %relu = aten.relu(%linear_q) : f32[2,8] loc("1")
  %linear_1_q = carve.dynamic_linear(%relu, %v2_weight_q, %v2_weight_scale, %v2_bias) : f32[2,2] loc("2")
  return %linear_1_q
}
"""

STATIC_AFTER_LINES = [
    '%input_q = carve.quantize(%input, %input_scale, %input_zero_point) : u8[2,4]',
    '%input_dq = carve.dequantize(%input_q, %input_scale, %input_zero_point) : f32[2,4]',
    '%v0_weight_dq = carve.dequantize(%v0_weight_q, %v0_weight_scale) {axis=0} : f32[8,4]',
    '%linear = aten.linear(%input_dq, %v0_weight_dq, %v0_bias) : f32[2,8] loc("0")',
    '%linear_q = carve.quantize(%linear, %linear_scale, %linear_zero_point) : u8[2,8]',
    '%relu = aten.relu(%linear_dq) : f32[2,8] loc("1")',
]


def test_dynamic_ir_before_after():
    model, x = _mlp()
    graph = tc.capture(model, (x,))
    assert graph.op_histogram()["aten.linear"] == 2
    assert _quantized(model, x, "quantize").to_text() == DYNAMIC_AFTER


def test_static_ir_has_qdq_around_layers():
    model, x = _mlp()
    text = _quantized(model, x, "quantize{mode=static}", _batches()).to_text()
    for line in STATIC_AFTER_LINES:
        assert line in text
    assert "aten.linear(%input," not in text


def test_int4_ir_is_group_wise():
    model, x = _mlp()
    text = _quantized(model, x, "quantize{mode=weight-only,dtype=int4,group-size=2}").to_text()
    assert '%v0_weight_scale = param "0.weight_scale" : f32[8,2]' in text
    assert "carve.dequantize(%v0_weight_q, %v0_weight_scale) {axis=1, block_size=2} : f32[8,4]" in text


# ---- numerics -----------------------------------------------------------------------------

@pytest.mark.parametrize("pipeline, tolerance", [
    ("quantize", 0.03),                                            # 7-bit weights, 8-bit activations
    ("quantize{reduce-range=false}", 0.015),
    ("quantize{mode=weight-only}", 0.015),
    ("quantize{mode=weight-only,dtype=int4,group-size=4}", 0.15),
    ("quantize{mode=static,activations=percentile}", 0.05),
    ("quantize{mode=dynamic,smooth=0.5}", 0.03),
])
def test_close_to_eager(pipeline, tolerance):
    """Relative L2 error of the quantized model on held-out data (bounds from the bit widths)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32)).eval()
    calibration = _batches(8, (16, 64))
    graph = _quantized(model, calibration[0][0], pipeline, calibration)
    x = torch.randn(16, 64)
    with torch.no_grad():
        expected, actual = model(x), tc.to_torch(graph)(x)
    error = float((actual - expected).norm() / expected.norm())
    assert 0 < error < tolerance


def test_kernels_follow_onnx_semantics():
    x = torch.tensor([-1.0, 0.25, 0.75, 300.0])
    q = carve_quantize(x, torch.tensor(0.5), torch.tensor(10, dtype=torch.uint8))
    assert q.tolist() == [8, 10, 12, 255]  # round half to even, then saturate
    assert carve_dequantize(q, torch.tensor(0.5), torch.tensor(10, dtype=torch.uint8)).tolist() == [-1.0, 0.0, 1.0, 122.5]
    blocks = carve_dequantize(torch.ones(2, 4, dtype=torch.int8), torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
                              axis=1, block_size=2)
    assert blocks.tolist() == [[1, 1, 2, 2], [3, 3, 4, 4]]


def test_dynamic_kernel_matches_float_reference():
    torch.manual_seed(0)
    x, w = torch.randn(3, 5, 16), torch.randn(8, 16)
    q, scale = quantize_weight(w, 63, per_channel=True)
    y = carve_dynamic_linear(x, q, scale, torch.zeros(8))
    assert torch.allclose(y, x @ w.t(), atol=0.15)


# ---- observers ----------------------------------------------------------------------------

def test_observers_clip_outliers_but_minmax_does_not():
    torch.manual_seed(0)
    data = torch.cat([torch.randn(20000), torch.tensor([50.0])])
    ranges = {}
    for name, make in OBSERVERS.items():
        observer = make(99.9)
        for chunk in data.chunk(4):
            observer.observe(chunk)
        ranges[name] = observer.range()
    assert ranges["minmax"][1] == 50.0
    assert ranges["percentile"][1] < 4.0
    assert ranges["entropy"][1] < 20.0
    assert all(r[0] < -2.0 for r in ranges.values())


def test_histogram_keeps_counts_when_range_widens():
    observer = HistogramObserver(mse_range)
    observer.observe(torch.linspace(-1, 1, 1000))
    observer.observe(torch.linspace(-4, 4, 1000))
    assert observer.counts.sum() == pytest.approx(2000)
    assert (observer.low, observer.high) == (-4.0, 4.0)


# ---- ONNX Runtime parity ------------------------------------------------------------------

def test_dynamic_matches_onnxruntime_exactly(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 8)).eval()
    x = torch.randn(3, 7, 64) * 4
    graph = _quantized(model, x, "quantize")
    with torch.no_grad():
        expected = tc.to_torch(graph)(x).numpy()
    np.testing.assert_allclose(_ort(graph, (x,), tmp_path), expected, rtol=1e-5, atol=1e-5)


def test_weight_only_int4_matches_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    x = torch.randn(4, 64)
    graph = _quantized(model, x, "quantize{mode=weight-only,dtype=int4,group-size=16}")
    with torch.no_grad():
        expected = tc.to_torch(graph)(x).numpy()
    np.testing.assert_allclose(_ort(graph, (x,), tmp_path, opset=21), expected, rtol=1e-5, atol=1e-5)


# ---- round trips --------------------------------------------------------------------------

@pytest.mark.parametrize("pipeline", ["quantize", "quantize{mode=static}", "quantize{mode=weight-only,dtype=int4,group-size=2}"])
def test_text_and_save_load_round_trip(pipeline, tmp_path):
    model, x = _mlp()
    graph = _quantized(model, x, pipeline, _batches())
    text = graph.to_text()
    assert tc.parse(text, params=graph.params).to_text() == text
    tc.save(graph, tmp_path / "q.carve")
    loaded = tc.load(tmp_path / "q.carve")
    assert loaded.to_text() == text
    assert loaded.params["0.weight_q"].dtype == torch.int8
    with torch.no_grad():
        assert torch.equal(tc.to_torch(loaded)(x), tc.to_torch(graph)(x))


def test_static_onnx_has_qdq_and_runs(tmp_path):
    from torchcarve.backends.onnx import to_onnx

    model, x = _mlp()
    graph = _quantized(model, x, "quantize{mode=static}", _batches())
    proto = to_onnx(graph, tmp_path / "m.onnx")
    op_types = [n.op_type for n in proto.graph.node]
    assert op_types.count("QuantizeLinear") == 3 and op_types.count("DequantizeLinear") == 5
    weights = {i.name: i.data_type for i in proto.graph.initializer}
    assert weights["0.weight_q"] == 3  # INT8: weights stay integers in the file
    with torch.no_grad():
        expected = tc.to_torch(graph)(x).numpy()
    np.testing.assert_allclose(_ort(graph, (x,), tmp_path), expected, atol=0.05)


# ---- the digits CNN -----------------------------------------------------------------------

class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(32 * 16, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target)
    torch.manual_seed(0)
    order = torch.randperm(len(labels))
    train, test = order[:1400], order[1400:]
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: threading overhead dominates on a shared machine
    try:
        for _ in range(3):
            for batch in train.split(64):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), images[train], images[test], labels[test], labels[train]


def test_digits_cnn_static_int8_accuracy_and_size(tmp_path):
    from torchcarve.backends.onnx import to_onnx

    model, train_images, test_images, test_labels, _ = _digits()
    calibration = [(b,) for b in train_images[:256].split(32)]
    graph = tc.capture(model, (test_images[:8],), dynamic_batch=True)
    quantized = tc.optimize(graph, "quantize{mode=static,activations=mse}", calibration=calibration).graph
    with torch.no_grad():
        float_accuracy = (model(test_images).argmax(1) == test_labels).float().mean().item()
        int8_accuracy = (tc.to_torch(quantized)(test_images).argmax(1) == test_labels).float().mean().item()
    assert float_accuracy > 0.9
    assert int8_accuracy >= float_accuracy - 0.01
    to_onnx(graph, tmp_path / "fp32.onnx")
    to_onnx(quantized, tmp_path / "int8.onnx")
    ratio = (tmp_path / "fp32.onnx").stat().st_size / (tmp_path / "int8.onnx").stat().st_size
    assert ratio > 3.5
    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    ort_logits = session.run(None, {session.get_inputs()[0].name: test_images.numpy()})[0]
    with torch.no_grad():
        torch_logits = tc.to_torch(quantized)(test_images).numpy()
    assert (ort_logits.argmax(1) == torch_logits.argmax(1)).mean() > 0.99


# ---- mixed precision ----------------------------------------------------------------------

def test_sensitivity_keeps_sensitive_layers_float():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    calibration = _batches(2, (16, 32))
    graph = tc.capture(model, calibration[0])
    loose = tc.optimize(graph, "quantize{sensitivity=true}", calibration=calibration).report[0].stats
    assert set(loose["sensitivity"]) == {"0", "2"} and loose["quantized"] == 2
    strict = tc.optimize(graph, "quantize{max-error=0.0}", calibration=calibration)
    assert strict.report[0].stats["float"] == 2 and "carve.dynamic_linear" not in strict.graph.to_text()


def test_skip_keeps_named_layer_float():
    model, x = _mlp()
    result = tc.optimize(tc.capture(model, (x,)), "quantize{skip=[2]}")
    assert result.report[0].stats["float_layers"] == ["2"]
    assert result.graph.op_histogram()["aten.linear"] == 1


# ---- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("pipeline, message", [
    ("quantize{mode=static}", "needs calibration data"),
    ("quantize{skip=[nosuchlayer]}", "skip pattern 'nosuchlayer' matches no quantizable layer"),
    ("quantize{mode=static,dtype=int4}", "int4 is supported only with mode=weight-only"),
    ("quantize{smooth=0.5}", "needs calibration data"),
])
def test_bad_input_is_one_clear_error(pipeline, message):
    model, x = _mlp()
    with pytest.raises(tc.CarveError, match=message.replace("[", r"\[")):
        tc.optimize(tc.capture(model, (x,)), pipeline)


def test_bad_option_value_lists_choices():
    model, x = _mlp()
    with pytest.raises(tc.CarveError, match="dynamic, static, weight-only"):
        tc.optimize(tc.capture(model, (x,)), "quantize{mode=fast}")


@pytest.mark.parametrize("pipeline", ["quantize{mode=static}", "quantize{mode=weight-only}"])
def test_onnx_export_and_reimport(pipeline, tmp_path):
    """QDQ and weight-only models come back from ONNX and compute the same outputs."""
    model, x = _mlp()
    graph = _quantized(model, x, pipeline, _batches())
    tc.to_onnx(graph, tmp_path / "q.onnx")
    back = tc.from_onnx(tmp_path / "q.onnx")
    if pipeline.endswith("static}"):
        assert back.op_histogram()["carve.quantize"] == 3
    with torch.no_grad():
        assert torch.equal(tc.to_torch(back)(x), tc.to_torch(graph)(x))


def test_cleanup_after_quantize_keeps_integer_weights():
    model, x = _mlp()
    graph = tc.optimize(tc.capture(model, (x,)), "quantize{mode=weight-only},cleanup").graph
    assert graph.op_histogram()["carve.dequantize"] == 2
    assert graph.params["0.weight_q"].dtype == torch.int8


def test_composes_with_fuse_prune_lowrank_and_runs_in_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 64), nn.ReLU(),
                          nn.Linear(64, 10)).eval()
    x = torch.randn(2, 3, 16, 16)
    calibration = [(torch.randn(2, 3, 16, 16),) for _ in range(4)]
    result = tc.optimize(tc.capture(model, (x,)), "fuse,prune{ratio=0.3},low-rank{ratio=0.5},quantize{mode=static}",
                         calibration=calibration)
    assert result.report[-1].changed and result.graph.op_histogram()["carve.quantize"] > 0
    with torch.no_grad():
        expected = tc.to_torch(result.graph)(x).numpy()
    np.testing.assert_allclose(_ort(result.graph, (x,), tmp_path), expected, atol=0.01)
