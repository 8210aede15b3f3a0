"""quantize: IR before/after, numerics vs eager, ORT parity, round trips, the digits CNN, bad input.

Tolerances: dynamic mode runs exactly ORT's integer arithmetic (reduce-range=auto: 7-bit weights where
AVX2's u8*s8 pairs could saturate, 8 bits where VNNI/AMX accumulate in int32), so ORT and the PyTorch
backend agree to float32 rounding of the rescale (1e-5) on the CPU that runs the tests. Static
QDQ rounds activations to uint8 at each Q: ORT (QLinearConv/requantize) and PyTorch may round a
value sitting on a .5 boundary differently, i.e. one quantization step, so parity there is checked
to a few output steps and on predictions. Weight-only linears (MatMulNBits, accuracy_level 0) dequantize
to the same float weights in both, so they agree to float32 summation order (1e-5); quantized embedding
lookups (Gather, Cast, Mul) are bit-exact.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import torchcarve as tc
from torchcarve.ir.ops.quant import (carve_dequantize, carve_dynamic_linear, carve_quantize, carve_weight_only_linear,
                                    pack_nbits)
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
graph @Sequential(%input: f32[2,4]) -> (f32[2,2] "output") {
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


WEIGHT_ONLY_AFTER = """\
graph @Sequential(%input: f32[2,4]) -> (f32[2,2] "output") {
  %v0_bias = param "0.bias" : f32[8]
  %v2_bias = param "2.bias" : f32[2]
  %v0_weight_q = param "0.weight_q" : i8[8,4]
  %v0_weight_scale = param "0.weight_scale" : f32[8,1]
  %v2_weight_q = param "2.weight_q" : i8[2,8]
  %v2_weight_scale = param "2.weight_scale" : f32[2,1]
  %linear_q = carve.weight_only_linear(%input, %v0_weight_q, %v0_weight_scale, %v0_bias) {bits=4, block_size=16} : f32[2,8] loc("0")
  %relu = aten.relu(%linear_q) : f32[2,8] loc("1")
  %linear_1_q = carve.weight_only_linear(%relu, %v2_weight_q, %v2_weight_scale, %v2_bias) {bits=4, block_size=16} : f32[2,2] loc("2")
  return %linear_1_q
}
"""


def test_weight_only_ir_before_after():
    model, x = _mlp()
    assert _quantized(model, x, "quantize{mode=weight-only,dtype=int4,group-size=16}").to_text() == WEIGHT_ONLY_AFTER
    int8 = _quantized(model, x, "quantize{mode=weight-only}").to_text()
    assert "carve.weight_only_linear(%input, %v0_weight_q, %v0_weight_scale, %v0_bias) {bits=8} : f32[2,8]" in int8


def test_int4_ir_is_group_wise():
    model, x = _mlp()
    text = _quantized(model, x, "quantize{mode=weight-only,dtype=int4,group-size=2}").to_text()
    assert '%v0_weight_scale = param "0.weight_scale" : f32[8,2]' in text
    assert "{bits=4, block_size=2} : f32[2,8]" in text


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


def test_weight_only_kernel_is_linear_with_dequantized_weight():
    torch.manual_seed(0)
    x, w, bias = torch.randn(3, 5, 40), torch.randn(8, 40), torch.randn(8)
    q, scale = quantize_weight(w, 7, per_channel=True, group_size=16)  # 40 inputs: the last group is short
    dequantized = carve_dequantize(q, scale, axis=1, block_size=16)
    expected = torch.nn.functional.linear(x, dequantized, bias)
    assert torch.equal(carve_weight_only_linear(x, q, scale, bias, bits=4, block_size=16), expected)


def test_pack_nbits_layout():
    """MatMulNBits' B: codes q + 2^(bits-1), low nibble first, rows padded to whole blocks with the zero code
    (onnxruntime computing with these is checked in test_weight_only_matches_onnxruntime)."""
    q = torch.tensor([[-8, 7, 0, 1] + [0] * 12, [1] * 16], dtype=torch.int8)
    packed = pack_nbits(q, 4, 16)
    assert packed.shape == (2, 1, 8) and packed.dtype == torch.uint8
    assert packed[0, 0, :3].tolist() == [0x0 | 0xF << 4, 0x8 | 0x9 << 4, 0x88]
    assert packed[1, 0].tolist() == [0x99] * 8
    q = torch.tensor([[-128, 127] + [5] * 38], dtype=torch.int8)
    packed = pack_nbits(q, 8, 32)
    assert packed.shape == (1, 2, 32)
    assert packed[0, 0, :3].tolist() == [0, 255, 133] and packed[0, 1, 8:].eq(128).all()  # padding: zero code


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


@pytest.mark.parametrize("pipeline, opset, onnx_op", [
    ("quantize{mode=weight-only,dtype=int4,group-size=16}", None, "MatMulNBits"),
    ("quantize{mode=weight-only,dtype=int4,group-size=0}", None, "MatMulNBits"),     # one scale per row
    ("quantize{mode=weight-only}", None, "MatMulNBits"),                             # bits=8
    ("quantize{mode=weight-only,weights=per-tensor}", None, "MatMulNBits"),
    ("quantize{mode=weight-only,dtype=int4,group-size=4}", 21, "DequantizeLinear"),  # no MatMulNBits block
])
def test_weight_only_matches_onnxruntime(pipeline, opset, onnx_op, tmp_path):
    """40 inputs: a short last block (padded in MatMulNBits); 3-D and 2-D activations; with and without bias."""
    from torchcarve.backends.onnx import to_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 8, bias=False)).eval()
    for x in (torch.randn(3, 5, 40), torch.randn(4, 40)):
        graph = _quantized(model, x, pipeline)
        proto = to_onnx(graph, **({"opset": opset} if opset else {}))
        assert [n.op_type for n in proto.graph.node].count(onnx_op) == 2
        with torch.no_grad():
            expected = tc.to_torch(graph)(x).numpy()
        np.testing.assert_allclose(_ort(graph, (x,), tmp_path, opset=opset), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pipeline, ratio", [
    ("quantize{mode=weight-only,dtype=int4,group-size=32}", 0.18),  # 4 bits + a f32 scale per 32: 0.156
    ("quantize{mode=weight-only}", 0.27),                           # 8 bits + a f32 scale per row: 0.25
])
def test_weight_only_onnx_file_size(pipeline, ratio, tmp_path):
    from torchcarve.backends.onnx import to_onnx

    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256)).eval()
    x = torch.randn(2, 256)
    to_onnx(tc.capture(model, (x,)), tmp_path / "fp32.onnx")
    to_onnx(_quantized(model, x, pipeline), tmp_path / "q.onnx")
    assert (tmp_path / "q.onnx").stat().st_size < ratio * (tmp_path / "fp32.onnx").stat().st_size


# ---- embeddings ---------------------------------------------------------------------------

class Tokens(nn.Module):
    """Word embeddings (looked up by the input) plus position embeddings (looked up at constant ids)."""

    def __init__(self, vocab: int = 200, dim: int = 32) -> None:
        super().__init__()
        self.words = nn.Embedding(vocab, dim, padding_idx=0)
        self.positions = nn.Embedding(16, dim)
        self.register_buffer("position_ids", torch.arange(16)[None])
        self.head = nn.Linear(dim, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.words(ids) + self.positions(self.position_ids[:, :ids.shape[1]]))


def _tokens(vocab: int = 200, dim: int = 32) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (2, 8))
    ids[0, :2] = 0  # the padding row
    return Tokens(vocab, dim).eval(), ids


EMBEDDING_AFTER_LINES = [
    '%words_weight_q = param "words.weight_q" : i8[200,32]',
    '%words_weight_scale = param "words.weight_scale" : f32[200]',
    '%embedding_q = carve.quantized_embedding(%words_weight_q, %words_weight_scale, %ids) : f32[2,8,32] loc("words")',
    '%embedding_1 = aten.embedding(%positions_weight, %slice_1) : f32[1,8,32] loc("positions")',
    '%add = aten.add.Tensor(%embedding_q, %embedding_1) : f32[2,8,32]',
]


@pytest.mark.parametrize("pipeline", ["quantize", "quantize{mode=weight-only,dtype=int4}", "quantize{mode=static}"])
def test_embedding_ir_before_after(pipeline):
    """Every mode stores the word table as int8 per row; the constant position lookup stays float."""
    model, ids = _tokens()
    graph = tc.capture(model, (ids,))
    assert graph.op_histogram()["aten.embedding"] == 2
    text = tc.optimize(graph, pipeline, calibration=[(ids,)]).graph.to_text()
    for line in EMBEDDING_AFTER_LINES:
        assert line in text
    assert 'param "words.weight" ' not in text


def test_embedding_lookup_is_within_half_a_step_of_each_row():
    """Per-row symmetric int8: every looked-up value is within scale/2 = max|row|/254 of the float one;
    the padding row (zeros) stays exactly zero."""
    model, ids = _tokens()
    words = model.words
    with torch.no_grad():
        words.weight[5] *= 100  # an outlier row must not coarsen the others
        expected, actual = words(ids), tc.to_torch(_quantized(words, ids, "quantize"))(ids)
    half_step = words.weight.detach().abs().amax(1)[ids].unsqueeze(-1) / 254
    assert ((actual - expected).abs() <= half_step * (1 + 1e-6)).all()
    assert actual[0, :2].eq(0).all()
    assert 0 < float((actual - expected).norm() / expected.norm()) < 0.01  # Gaussian rows: ~0.005


@pytest.mark.parametrize("pipeline, embedding_ops", [
    ("quantize{embeddings=false}", {"aten.embedding": 2}),
    ("quantize{skip=[words]}", {"aten.embedding": 2}),
    ("quantize{weights=per-tensor}", {"aten.embedding": 1, "carve.quantized_embedding": 1}),
])
def test_embedding_options(pipeline, embedding_ops):
    model, ids = _tokens()
    graph = _quantized(model, ids, pipeline)
    histogram = graph.op_histogram()
    assert {op: histogram[op] for op in embedding_ops} == embedding_ops
    assert histogram["carve.dynamic_linear"] == 1
    if "per-tensor" in pipeline:
        assert graph.params["words.weight_scale"].shape == ()


@pytest.mark.parametrize("weights", ["per-channel", "per-tensor"])
def test_embedding_matches_onnxruntime_exactly(weights, tmp_path):
    """Gather int8 rows, Cast, Mul by the gathered row scale: the same float32 products as PyTorch."""
    from torchcarve.backends.onnx import to_onnx

    model, ids = _tokens()
    graph = _quantized(model.words, ids, f"quantize{{weights={weights}}}")
    proto = to_onnx(graph)
    tables = {i.name: (i.data_type, list(i.dims)) for i in proto.graph.initializer}
    assert tables["embedding.weight_q"] == (3, [200, 32])  # INT8
    assert all(dims != [200, 32] for dtype, dims in tables.values() if dtype == 1)  # no float table
    with torch.no_grad():
        expected = tc.to_torch(graph)(ids).numpy()
    np.testing.assert_array_equal(_ort(graph, (ids,), tmp_path), expected)


def test_embedding_table_dominated_file_shrinks_like_onnxruntimes(tmp_path):
    """ORT's quantize_dynamic quantizes Gather tables too; so do we: a 2000-word model's file < 0.3x."""
    from torchcarve.backends.onnx import to_onnx

    model, ids = _tokens(vocab=2000, dim=64)
    to_onnx(tc.capture(model, (ids,)), tmp_path / "fp32.onnx")
    to_onnx(_quantized(model, ids, "quantize"), tmp_path / "int8.onnx")
    assert (tmp_path / "int8.onnx").stat().st_size < 0.3 * (tmp_path / "fp32.onnx").stat().st_size


def test_hf_bert_quantizes_word_embeddings_and_matches_onnxruntime(tmp_path):
    """A random tiny BERT: the word table becomes int8; position and token-type lookups (constant ids) stay."""
    from tests.models import MODEL_NAMES, captured

    if "hf_bert" not in MODEL_NAMES:
        pytest.skip("transformers is not installed")
    model, (ids,), graph = captured("hf_bert")
    quantized = tc.optimize(graph, "quantize{mode=weight-only,dtype=int4,group-size=16}").graph
    histogram = quantized.op_histogram()
    assert histogram["carve.quantized_embedding"] == 1 and histogram["aten.embedding"] == 2
    assert histogram["carve.weight_only_linear"] == graph.op_histogram()["aten.linear"]
    with torch.no_grad():
        expected = tc.to_torch(quantized)(ids)[0].numpy()
        error = np.linalg.norm(expected - model(ids)[0].numpy()) / np.linalg.norm(expected)
    assert 0 < error < 0.02
    np.testing.assert_allclose(_ort(quantized, (ids,), tmp_path), expected, rtol=1e-5, atol=1e-5)


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
    assert {name for name, row in loose["layers"].items() if "error alone" in row} == {"0", "2"}
    assert loose["quantized"] == 2
    strict = tc.optimize(graph, "quantize{max-error=0.0}", calibration=calibration)
    assert strict.report[0].stats["float"] == 2 and "carve.dynamic_linear" not in strict.graph.to_text()


def test_skip_keeps_named_layer_float():
    model, x = _mlp()
    result = tc.optimize(tc.capture(model, (x,)), "quantize{skip=[2],reduce-range=true}")
    stats = result.report[0].stats
    assert stats["float"] == 1 and stats["layers"]["2"]["precision"] == "float"
    assert stats["layers"]["0"]["precision"] == "int7 dynamic"
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
    """QDQ models and weight-only convs (DequantizeLinear) come back from ONNX and compute the same outputs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    if pipeline.endswith("static}"):
        model, x = _mlp()
    else:
        x = torch.randn(2, 3, 6, 6)
    graph = _quantized(model, x, pipeline, _batches() if pipeline.endswith("static}") else [x])  # batches fit the model
    tc.to_onnx(graph, tmp_path / "q.onnx")
    back = tc.from_onnx(tmp_path / "q.onnx")
    if pipeline.endswith("static}"):
        assert back.op_histogram()["carve.quantize"] == 3
    with torch.no_grad():
        assert torch.equal(tc.to_torch(back)(x), tc.to_torch(graph)(x))


def test_cleanup_after_quantize_keeps_integer_weights():
    model, x = _mlp()
    graph = tc.optimize(tc.capture(model, (x,)), "quantize{mode=weight-only},cleanup").graph
    assert graph.op_histogram()["carve.weight_only_linear"] == 2
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
