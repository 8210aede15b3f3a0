"""quantize{outliers=k}: a linear's largest input channels out of the int8 range, in the LLM.int8()-style
float side path, folded into the producing linear, or scaled into range inside the int8 GEMM.

Each form is exact in float (checked to 1e-5, float32 summation order); quantized, it must cut the
error that a few huge channels cause, and ORT must compute what the PyTorch backend does.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import torchcarve as tc
from torchcarve.passes.manager import run_graph
from torchcarve.passes.quantize.outliers import channel_errors, fewest_channels, split_outliers
from torchcarve.passes.quantize.rewrite import find_layers

ort = pytest.importorskip("onnxruntime")

HUGE_CHANNELS = (3, 17)


class Outliers(nn.Module):
    """A transformer-like block whose activations carry two huge channels (as LayerNorm outputs do)."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)
        gain = torch.ones(32)
        gain[list(HUGE_CHANNELS)] = 40.0
        self.register_buffer("gain", gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * self.gain
        return self.down(torch.relu(self.up(h)))


def _setup(count: int = 6) -> tuple[nn.Module, list[tuple[torch.Tensor]], torch.Tensor]:
    torch.manual_seed(0)
    model = Outliers().eval()
    generator = torch.Generator().manual_seed(1)
    calibration = [(torch.randn(4, 8, 32, generator=generator),) for _ in range(count)]
    return model, calibration, torch.randn(4, 8, 32, generator=generator)


def _error(model: nn.Module, graph: tc.Graph, x: torch.Tensor) -> float:
    with torch.no_grad():
        expected, actual = model(x), tc.to_torch(graph)(x)
    return float((actual - expected).norm() / expected.norm())


def test_split_is_exact_and_finds_the_huge_channels():
    model, calibration, x = _setup()
    graph = tc.capture(model, (x,))
    layers = find_layers(graph, "dynamic")
    assert split_outliers(graph, layers, calibration, 2) == {"up": 2}  # down's input has no huge channel
    histogram = graph.op_histogram()
    assert histogram["aten.index_select"] == 1 and histogram["aten.addmm"] == 1  # the side path: one Gemm
    up_index = graph.params["up.outlier_index"].tolist()
    assert up_index == sorted(HUGE_CHANNELS)
    assert graph.params["up.weight_inliers"][:, up_index].abs().max() == 0
    with torch.no_grad():
        torch.testing.assert_close(run_graph(graph, (x,))[0], model(x), rtol=1e-5, atol=1e-5)


def test_outliers_cut_the_quantization_error():
    model, calibration, x = _setup()
    graph = tc.capture(model, (x,))
    plain = tc.optimize(graph, "quantize", calibration=calibration).graph
    result = tc.optimize(graph, "quantize{outliers=2}", calibration=calibration)
    rows, split = result.report[0].stats["layers"], result.graph
    assert rows["up"]["outlier channels"] == 2 and rows["down"]["outlier channels"] == 0
    assert split.op_histogram()["carve.dynamic_linear"] == 2
    assert split.op_histogram()["aten.addmm"] == 1 and "aten.linear" not in split.op_histogram()  # side path float
    assert _error(model, split, x) < _error(model, plain, x) / 2.5  # measured 3.2x lower


def test_outliers_with_static_mode_calibrate_the_inliers():
    model, calibration, x = _setup()
    graph = tc.capture(model, (x,))
    plain = tc.optimize(graph, "quantize{mode=static}", calibration=calibration).graph
    split = tc.optimize(graph, "quantize{mode=static,outliers=2}", calibration=calibration).graph
    assert _error(model, split, x) < _error(model, plain, x) / 1.4  # measured 1.75x lower


def test_onnxruntime_matches_pytorch_backend(tmp_path):
    model, calibration, x = _setup()
    graph = tc.optimize(tc.capture(model, (x,)), "quantize{outliers=2}", calibration=calibration).graph
    path = tmp_path / "model.onnx"
    tc.to_onnx(graph, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = tc.to_torch(graph)(x).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pipeline, message", [
    ("quantize{outliers=2}", "needs calibration data"),
    ("quantize{outliers=-1}", "outliers is a channel count"),
    ("quantize{outliers=2,outlier-gain=0.5}", "outlier-gain is an error ratio"),
])
def test_bad_outlier_options_are_clear_errors(pipeline, message):
    model, _, x = _setup()
    with pytest.raises(tc.CarveError, match=message):
        tc.optimize(tc.capture(model, (x,)), pipeline)


def test_symbolic_sequence_length_takes_the_linear_and_add_form(tmp_path):
    """With a symbolic dim inside the leading ones the 2-D Gemm view is not expressible: linear + add."""
    import onnx

    model, calibration, x = _setup()
    path = tmp_path / "model.onnx"
    tc.to_onnx(tc.capture(model, (x,)), path)
    proto = onnx.load(str(path))
    for dim, name in zip(proto.graph.input[0].type.tensor_type.shape.dim, ("batch", "seq")):
        dim.dim_param = name
    onnx.save(proto, str(path))
    graph = tc.optimize(tc.from_onnx(path), "fuse,quantize{outliers=2}", calibration=calibration).graph
    assert graph.op_histogram()["aten.linear"] == 1 and "aten.addmm" not in graph.op_histogram()
    with torch.no_grad():
        shorter = x[:, :5]
        assert _error(model, graph, shorter) < 0.02


class GeluFFN(nn.Module):
    """An FFN whose hidden activation (GELU output) carries huge channels: made by `up`'s rows."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(16, 48), nn.Linear(48, 16)
        with torch.no_grad():
            self.up.weight[[5, 30]] *= 40.0
            self.up.bias[[5, 30]] += 20.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


def _ffn() -> tuple[nn.Module, list[tuple[torch.Tensor]], torch.Tensor]:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(2)
    calibration = [(torch.randn(2, 8, 16, generator=generator),) for _ in range(4)]
    return GeluFFN().eval(), calibration, torch.randn(2, 8, 16, generator=generator)


def test_folded_outlier_path_equals_the_unfolded_one():
    """Zeroing the GELU input's producer rows computes what the Mul + Gather path does, to float rounding,
    quantized or not, and leaves no pass over the hidden activation."""
    model, calibration, x = _ffn()
    graph = tc.capture(model, (x,))
    folded, unfolded = graph.clone(), graph.clone()
    assert split_outliers(folded, find_layers(folded, "dynamic"), calibration, 2) == {"down": 2}
    assert split_outliers(unfolded, find_layers(unfolded, "dynamic"), calibration, 2, fold=False) == {"down": 2}
    histogram = folded.op_histogram()
    assert "aten.mul.Tensor" not in histogram and "aten.index_select" not in histogram
    assert histogram["aten.gelu"] == 2 and histogram["aten.linear"] == 3  # up, its 2-row copy, down
    assert unfolded.op_histogram()["aten.index_select"] == 1
    with torch.no_grad():
        a, b = run_graph(folded, (x,))[0], run_graph(unfolded, (x,))[0]
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, model(x), rtol=1e-5, atol=1e-5)
    quantized = {fold: tc.optimize(graph, f"quantize{{outliers=2,fold-outliers={fold}}}", calibration=calibration).graph
                 for fold in ("true", "false")}
    with torch.no_grad():
        outs = {fold: tc.to_torch(g)(x) for fold, g in quantized.items()}
    scale = float(outs["false"].abs().max())
    # the folded graph quantizes `up` without its 2 outlier rows (they are float): close, not bit-equal
    assert float((outs["true"] - outs["false"]).abs().max()) < 0.02 * scale
    assert _error(model, quantized["true"], x) <= _error(model, quantized["false"], x) * 1.05


def test_folded_outlier_path_runs_in_onnxruntime(tmp_path):
    model, calibration, x = _ffn()
    graph = tc.optimize(tc.capture(model, (x,)), "quantize{outliers=2}", calibration=calibration).graph
    assert "aten.index_select" not in graph.op_histogram()
    path = tmp_path / "folded.onnx"
    tc.to_onnx(graph, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = tc.to_torch(graph)(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


class SharedHidden(GeluFFN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.gelu(self.up(x))
        return self.down(h) + h.mean(-1, keepdim=True)


@pytest.mark.parametrize("make", [SharedHidden, Outliers])
def test_no_fold_without_a_private_producing_linear(make):
    """A hidden value read elsewhere too, or made by no linear, keeps the Mul + Gather (and stays exact)."""
    _, calibration, _ = _ffn() if make is SharedHidden else _setup()
    torch.manual_seed(0)
    model, x = make().eval(), calibration[0][0]
    graph = tc.capture(model, (x,))
    split_outliers(graph, find_layers(graph, "dynamic"), calibration, 2)
    assert graph.op_histogram()["aten.index_select"] == 1 and graph.op_histogram()["aten.mul.Tensor"] >= 1
    with torch.no_grad():
        torch.testing.assert_close(run_graph(graph, (x,))[0], model(x), rtol=1e-5, atol=1e-5)


def test_channel_count_is_chosen_by_measured_error():
    """fewest_channels keeps a channel out of range only where it measurably cuts the int8 error."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(256, 64, generator=generator)
    weight = torch.randn(32, 64, generator=generator)
    x[:, 9] *= 60.0                                   # huge: stretches the per-tensor range 15x
    x[:, 40] *= 1.2                                   # a candidate that barely moves the range
    candidates = torch.tensor([9, 40])
    assert fewest_channels(channel_errors(x, weight, candidates, 127)) == 1
    x[:, 40] *= 50.0                                  # now both are huge: both must go
    assert fewest_channels(channel_errors(x, weight, candidates, 127)) == 2
    assert fewest_channels(channel_errors(x, weight, torch.tensor([], dtype=torch.int64), 127)) == 0
    assert fewest_channels([0.03, 0.022]) == 0        # 1.36x better: below the 1.5x a side path must buy
    assert fewest_channels([0.03, 0.022], min_gain=1.25) == 1


class QuietOutliers(Outliers):
    """Huge input channels that meet small weights (as all-MiniLM-L6's do): scaling them into range is
    about as accurate as a float side path."""

    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            self.up.weight[:, list(HUGE_CHANNELS)] *= 0.02


def _quiet() -> tuple[nn.Module, list[tuple[torch.Tensor]], torch.Tensor]:
    _, calibration, x = _setup()
    torch.manual_seed(0)
    return QuietOutliers().eval(), calibration, x


def test_scaled_outliers_equal_the_side_path_in_float():
    """Where scaling measures near the side path's error it is chosen: one Mul, no Gather, no Gemm; in
    float it computes what the side path and the original do, to float rounding."""
    model, calibration, x = _quiet()
    graph = tc.capture(model, (x,))
    scaled, side = graph.clone(), graph.clone()
    assert split_outliers(scaled, find_layers(scaled, "dynamic"), calibration, 2) == {"up": 2}
    assert split_outliers(side, find_layers(side, "dynamic"), calibration, 2, scale=False) == {"up": 2}
    assert "%mul_outliers_scaled = aten.mul.Tensor(%mul, %up_outlier_scale) : f32[4,8,32]" in scaled.to_text()
    assert "aten.linear(%mul_outliers_scaled, %up_weight_scaled, %up_bias)" in scaled.to_text()
    histogram = scaled.op_histogram()
    assert "aten.index_select" not in histogram and "aten.addmm" not in histogram
    assert side.op_histogram()["aten.addmm"] == 1 and side.op_histogram()["aten.index_select"] == 1
    scale = scaled.params["up.outlier_scale"]
    assert torch.nonzero(scale < 1).flatten().tolist() == sorted(HUGE_CHANNELS)
    magnitude = (x * model.gain).abs().amax((0, 1))
    assert float((magnitude * scale).max()) < 2 * float(magnitude[scale == 1].max())  # in the inliers' range
    torch.testing.assert_close(scaled.params["up.weight_scaled"], model.up.weight / scale)
    with torch.no_grad():
        a, b = run_graph(scaled, (x,))[0], run_graph(side, (x,))[0]
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, model(x), rtol=1e-5, atol=1e-5)


def test_scaled_outliers_cut_the_error_in_onnxruntime(tmp_path):
    model, calibration, x = _quiet()
    graph = tc.capture(model, (x,))
    errors = {spec: _error(model, tc.optimize(graph, spec, calibration=calibration).graph, x)
              for spec in ("quantize", "quantize{outliers=2,scale-outliers=false}")}
    result = tc.optimize(graph, "quantize{outliers=2}", calibration=calibration)
    assert result.report[0].stats["layers"]["up"]["outlier channels"] == 2
    assert "aten.addmm" not in result.graph.op_histogram()
    error = _error(model, result.graph, x)
    assert error < errors["quantize"] / 10                                       # measured 19x lower
    assert error < errors["quantize{outliers=2,scale-outliers=false}"] * 1.5    # measured 1.22x the side path's
    path = tmp_path / "scaled.onnx"
    tc.to_onnx(result.graph, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = tc.to_torch(result.graph)(x).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_outlier_gain_leaves_inputs_where_channels_do_not_pay():
    model, calibration, x = _setup()
    graph = tc.capture(model, (x,))
    result = tc.optimize(graph, "quantize{outliers=2,outlier-gain=100.0}", calibration=calibration)
    assert result.report[0].stats["layers"]["up"].get("outlier channels", 0) == 0
    plain = tc.optimize(graph, "quantize", calibration=calibration).graph
    assert result.graph.op_histogram() == plain.op_histogram()


def test_bert_fuse_outliers_folded_in_onnxruntime(tmp_path):
    """A BERT-like random model with a huge FFN channel: `fuse` does not grow the weights (the token-type
    lookup broadcast to [batch, seq, hidden] stays a lookup), the outlier zeroing folds into the FFN's first
    linear, and ORT computes what the PyTorch backend does."""
    transformers = pytest.importorskip("transformers")
    from tests.models import TINY_TEXT
    from torchcarve.passes.quantize.report import weight_bytes

    torch.manual_seed(0)
    config = transformers.BertConfig(**TINY_TEXT, max_position_embeddings=64, attn_implementation="eager")
    bert = transformers.BertModel(config).eval()
    with torch.no_grad():
        for layer in bert.encoder.layer:
            layer.intermediate.dense.weight[7] *= 30.0
            layer.intermediate.dense.bias[7] += 10.0

    class Hidden(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=ids).last_hidden_state

    generator = torch.Generator().manual_seed(5)
    ids = [torch.randint(0, 100, (16, 32), generator=generator) for _ in range(3)]
    graph = tc.capture(Hidden().eval(), (ids[0],))
    fused = tc.optimize(graph, "fuse").graph
    assert weight_bytes(fused) <= weight_bytes(graph)
    result = tc.optimize(fused, "quantize{outliers=2}", calibration=[(t,) for t in ids[1:]])
    rows = result.report[0].stats["layers"]
    assert all(rows[f"bert.encoder.layer.{i}.output.dense"]["outlier channels"] >= 1 for i in range(2))
    assert result.graph.op_histogram()["aten.gelu"] == 4  # each FFN's GELU and its outlier copy: folded
    path = tmp_path / "bert.onnx"
    tc.to_onnx(result.graph, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: ids[0].numpy()})[0]
    with torch.no_grad():
        expected = tc.to_torch(result.graph)(ids[0]).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
