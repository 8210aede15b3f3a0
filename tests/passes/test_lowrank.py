"""low-rank: golden IR, exactness at full rank, reported errors, whitening, budgets, option errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcarve as tc
from torchcarve.analysis.cost import param_count
from torchcarve.passes import PassContext
from torchcarve.passes.lowrank import LowRank
from torchcarve.passes.pipeline import parse_pipeline

RTOL, ATOL = 1e-4, 1e-5
ALLOW_GROWTH = -10.0  # min-gain below 0: factorize even at full rank (more params), for exactness checks


def carve(model: nn.Module, x: torch.Tensor, low_rank: LowRank, calibration=None) -> tuple[tc.Graph, dict]:
    """Capture, run the pass on a copy, verify; returns (factored graph, stats)."""
    graph = tc.capture(model.eval(), (x,)).clone()
    result = low_rank.run(graph, PassContext(calibration=calibration))
    tc.verify(graph)
    return graph, result.stats


def ops(graph: tc.Graph) -> list[str]:
    return [n.op for n in graph.nodes if n.op != "param"]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


GOLDEN_MLP = """\
graph @Sequential(%input: f32[2,16]) -> (f32[2,8] "output") {
  %v0_bias = param "0.bias" : f32[32]
  %v2_bias = param "2.bias" : f32[8]
  %v0_lowrank_in_weight = param "0.lowrank_in.weight" : f32[4,16]
  %v0_lowrank_out_weight = param "0.lowrank_out.weight" : f32[32,4]
  %v2_lowrank_in_weight = param "2.lowrank_in.weight" : f32[4,32]
  %v2_lowrank_out_weight = param "2.lowrank_out.weight" : f32[8,4]
  %linear_2 = aten.linear(%input, %v0_lowrank_in_weight) : f32[2,4] loc("0")
  %linear_3 = aten.linear(%linear_2, %v0_lowrank_out_weight, %v0_bias) : f32[2,32] loc("0")
  %relu = aten.relu(%linear_3) : f32[2,32] loc("1")
  %linear = aten.linear(%relu, %v2_lowrank_in_weight) : f32[2,4] loc("2")
  %linear_4 = aten.linear(%linear, %v2_lowrank_out_weight, %v2_bias) : f32[2,8] loc("2")
  return %linear_4
}
"""


def test_low_rank_golden_mlp():
    graph, stats = carve(mlp(), torch.randn(2, 16), LowRank(rank=4, round_to=1))
    assert graph.to_text() == GOLDEN_MLP
    assert stats["factorized"] == 2
    assert stats["layers"]["0"]["params"] == [512, 4 * (16 + 32)]
    assert set(graph.params) == {"0.bias", "2.bias", "0.lowrank_in.weight", "0.lowrank_out.weight",
                                 "2.lowrank_in.weight", "2.lowrank_out.weight"}


@pytest.mark.parametrize("rule", [{"energy": 1.0}, {"rank": 16}])
def test_low_rank_full_rank_is_exact_linear(rule):
    model, x = mlp(), torch.randn(5, 16)
    graph, stats = carve(model, x, LowRank(**rule, min_gain=ALLOW_GROWTH, round_to=1))
    assert ops(graph).count("aten.linear") == 4
    assert stats["layers"]["0"]["rank"] == 16 and stats["layers"]["2"]["rank"] == 8
    torch.testing.assert_close(tc.to_torch(graph)(x), model(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 8, 3, stride=2, padding=1, dilation=2, bias=True),
    nn.Conv2d(4, 6, 3, padding=2, bias=False),
    nn.Conv2d(5, 4, (1, 3), stride=(2, 1)),
], ids=["stride-pad-dilation-bias", "no-bias", "rect-kernel"])
def test_low_rank_full_rank_is_exact_conv(conv):
    torch.manual_seed(0)
    model, x = nn.Sequential(conv, nn.ReLU()), torch.randn(2, conv.in_channels, 11, 9)
    graph, stats = carve(model, x, LowRank(energy=1.0, min_gain=ALLOW_GROWTH, round_to=1))
    convs = [n for n in graph.nodes if n.op == "aten.conv2d"]
    assert len(convs) == 2
    assert convs[1].inputs[1].type.shape[2:] == (1, 1)          # then a 1x1 conv
    torch.testing.assert_close(tc.to_torch(graph)(x), model(x), rtol=RTOL, atol=ATOL)


def test_low_rank_conv_keeps_stride_on_first_conv():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1)), torch.randn(1, 8, 8, 8)
    graph, _ = carve(model, x, LowRank(rank=4, round_to=1))
    first, second = [n for n in graph.nodes if n.op == "aten.conv2d"]
    assert first.attrs["stride"] == [2, 2] and first.attrs["padding"] == [1, 1]
    assert "stride" not in second.attrs and "padding" not in second.attrs
    assert tuple(first.output.type.shape) == (1, 4, 4, 4)


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(12, 12)

    def forward(self, x):
        return self.proj(torch.relu(self.proj(x)))


def test_low_rank_shared_layer_factorized_once():
    torch.manual_seed(0)
    model, x = Shared(), torch.randn(3, 12)
    graph, stats = carve(model, x, LowRank(rank=12, min_gain=ALLOW_GROWTH))
    assert list(stats["layers"]) == ["proj"]
    assert ops(graph).count("aten.linear") == 4
    assert sorted(n for n in graph.params if "weight" in n) == ["proj.lowrank_in.weight", "proj.lowrank_out.weight"]
    torch.testing.assert_close(tc.to_torch(graph)(x), model(x), rtol=RTOL, atol=ATOL)


def factors(graph: tc.Graph, name: str) -> torch.Tensor:
    return (graph.params[f"{name}.lowrank_out.weight"].double().flatten(1)
            @ graph.params[f"{name}.lowrank_in.weight"].double().flatten(1))


def test_low_rank_truncation_lowers_params_and_reports_measured_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 64))
    calibration = [(torch.randn(20, 48),) for _ in range(3)]
    graph, stats = carve(model, calibration[0][0], LowRank(rank=8), calibration)
    line = stats["layers"]["0"]
    assert line["params"] == [48 * 64, 8 * (48 + 64)]
    assert param_count(graph) < sum(p.numel() for p in model.parameters())
    weight = model[0].weight.detach().double()
    measured = float((weight - factors(graph, "0")).norm() / weight.norm())
    assert line["weight_error"] == pytest.approx(measured, rel=1e-4)
    module, bias = tc.to_torch(graph), model[0].bias
    with torch.no_grad():
        delta = torch.cat([module(x) - model(x) for (x,) in calibration])
        signal = torch.cat([model(x) - bias for (x,) in calibration])
    assert line["output_error"] == pytest.approx(float(delta.norm() / signal.norm()), rel=1e-3)
    assert 0.3 < line["output_error"] < 1


def correlated(n: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    """Inputs living near a 6-dimensional subspace, with uneven scales: what whitening exploits."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(6, dim, generator=torch.Generator().manual_seed(99)) * torch.linspace(3, 0.5, 6)[:, None]
    return torch.randn(n, 6, generator=generator) @ mixing + 0.05 * torch.randn(n, dim, generator=generator)


def test_low_rank_whitened_beats_svd_on_output_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)).eval()
    calibration = [(correlated(256, seed=s),) for s in range(4)]  # shaped like the captured input
    held_out = correlated(256, seed=100)
    errors = {}
    for method in ("svd", "whitened"):
        graph, stats = carve(model, held_out, LowRank(method=method, rank=8, layers=("0",)), calibration)
        assert stats["layers"]["0"]["rank"] == 8
        with torch.no_grad():
            errors[method] = float((tc.to_torch(graph)(held_out) - model(held_out)).norm() / model(held_out).norm())
    assert errors["whitened"] < 0.2 * errors["svd"]
    assert errors["whitened"] < 0.05


def test_low_rank_whitened_needs_calibration():
    with pytest.raises(tc.CarveError, match="calibration"):
        carve(mlp(), torch.randn(2, 16), LowRank(method="whitened"))


def test_low_rank_leaves_layers_without_gain_alone():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)), torch.randn(2, 64)
    graph, stats = carve(model, x, LowRank(rank=8))
    assert list(stats["layers"]) == ["0"]                      # 8*(64+64) < 64*64
    assert "min-gain" in stats["skipped"]["2"]                 # rank 4 of a 64x4 layer costs more than it saves
    assert "2.weight" in graph.params and ops(graph).count("aten.linear") == 3
    graph, stats = carve(model, x, LowRank(rank=32))           # 32*128 == 64*64: no saving
    assert stats["factorized"] == 0 and ops(graph).count("aten.linear") == 2


def test_low_rank_layers_and_protect_patterns():
    model, x = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64)), torch.randn(2, 64)
    _, stats = carve(model, x, LowRank(rank=8, layers=("0", "1")))
    assert list(stats["layers"]) == ["0", "1"] and stats["skipped"]["2"] == "not in layers"
    _, stats = carve(model, x, LowRank(rank=8, protect=("1",), targets=("linear",)))
    assert list(stats["layers"]) == ["0", "2"] and stats["skipped"]["1"] == "protected"


def test_low_rank_global_budget_spends_rank_where_it_loses_least():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    with torch.no_grad():  # layer 0 is exactly rank 4; layer 1 is full rank
        model[0].weight.copy_(torch.randn(64, 4) @ torch.randn(4, 64))
    x = torch.randn(2, 64)
    graph, stats = carve(model, x, LowRank(budget_params=0.5))
    before, after = stats["params"]
    assert after <= 0.5 * 2 * 64 * 64
    assert stats["layers"]["0"]["rank"] == 8                   # the smallest multiple of 8 holds rank 4
    assert stats["layers"]["0"]["weight_error"] < 1e-6
    assert stats["layers"]["1"]["rank"] > 8
    graph, stats = carve(model, x, LowRank(budget_macs=0.5))
    assert len(stats["layers"]) == 2 and stats["macs"][1] <= 0.5 * stats["macs"][0]


def test_low_rank_budget_that_cannot_be_met():
    with pytest.raises(tc.CarveError, match="can't be met"):
        carve(nn.Sequential(nn.Linear(64, 64)), torch.randn(2, 64), LowRank(budget_params=0.05, min_rank=16))


@pytest.mark.parametrize("spec, message", [
    ("low-rank{energy=1.5}", "energy must be in"),
    ("low-rank{method=foo}", "expects one of svd, whitened"),
    ("low-rank{energy=0.9,rank=4}", "one rank rule"),
    ("low-rank{targets=[lstm]}", "unknown targets"),
    ("low-rank{budget-params=0}", "budget-params must be in"),
])
def test_low_rank_bad_options(spec, message):
    with pytest.raises(tc.PipelineError, match=message):
        parse_pipeline(spec)


def test_low_rank_spec_round_trips():
    each = LowRank(method="whitened", budget_params=0.75, targets=("linear",), protect=("head*",), min_gain=0.2)
    assert parse_pipeline(each.spec()) == [each]


def test_low_rank_transformer_encoder_factorizes_and_runs():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    model, x = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval(), torch.randn(2, 6, 64)
    calibration = [(torch.randn(2, 6, 64),) for _ in range(2)]
    graph, stats = carve(model, x, LowRank(method="whitened", budget_params=0.75), calibration)
    assert stats["factorized"] >= 4
    assert stats["params"][1] < stats["params"][0]
    with torch.no_grad():
        out, ref = tc.to_torch(graph)(x), model(x)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    exact, _ = carve(model, x, LowRank(energy=1.0, min_gain=ALLOW_GROWTH, round_to=1))
    with torch.no_grad():
        torch.testing.assert_close(tc.to_torch(exact)(x), ref, rtol=RTOL, atol=1e-4)


def test_low_rank_in_a_pipeline_with_other_passes():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)).eval(), torch.randn(4, 64)
    graph = tc.capture(model, (x,))
    result = tc.optimize(graph, "fuse,low-rank{ratio=0.25},dce", calibration=[(x,)], check_numerics=True)
    line = next(r for r in result.report if r.spec.startswith("low-rank"))
    assert line.changed and line.stats["factorized"] == 2 and line.params[1] < line.params[0]
    assert ops(result.graph).count("aten.linear") == 4 and ops(graph).count("aten.linear") == 2
    assert line.max_error > 0     # approximate: the report carries the error it introduced


@pytest.mark.skipif(not hasattr(tc, "to_onnx"), reason="the ONNX backend is not there yet")
def test_low_rank_onnx_parity():
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 32)), \
        torch.randn(2, 4, 6, 6)
    graph, stats = carve(model, x, LowRank(rank=4, round_to=1))
    assert stats["factorized"] == 2
    session = ort.InferenceSession(tc.to_onnx(graph).SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = tc.to_torch(graph)(x)
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=RTOL, atol=ATOL)


def test_low_rank_hf_bert_factorizes_verifies_and_runs():
    models = pytest.importorskip("tests.models")
    if "hf_bert" not in models.MODELS:
        pytest.skip("transformers is not installed")
    model, inputs = models.MODELS["hf_bert"]()
    graph = tc.capture(model, inputs)
    result = tc.optimize(graph, "low-rank{method=whitened,energy=0.9,round-to=4}", calibration=[inputs])
    line = result.report[0]
    assert line.stats["factorized"] >= 1 and line.params[1] < line.params[0]
    with torch.no_grad():
        out = tc.to_torch(result.graph)(*inputs)
        ref = model(*inputs).last_hidden_state
    out = out[0] if isinstance(out, (tuple, list)) else out
    assert out.shape == ref.shape and torch.isfinite(out).all()


def test_low_rank_trained_digits_cnn_keeps_accuracy():
    demo = pytest.importorskip("torchcarve.cli.demo")
    pytest.importorskip("sklearn")
    torch.manual_seed(0)
    data, model = demo.load_digits(), demo.DigitsCNN()
    demo.train(model, data, epochs=2)           # 2 epochs: ~98% test accuracy, a few seconds
    before = demo.accuracy(model, data)
    result = tc.optimize(tc.capture(model, (data.test_x[:8],)), "low-rank{energy=0.9}")
    line = result.report[0]
    assert line.stats["factorized"] >= 1 and line.params[1] < line.params[0]
    after = demo.accuracy(tc.to_torch(result.graph), data)
    assert before > 0.9                          # energy 0.9 factorizes only features.7 (rank 40 of 64)
    assert after >= before - 0.02


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))


def small_transformer() -> nn.Module:
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    return nn.Sequential(nn.TransformerEncoder(layer, 1, enable_nested_tensor=False), nn.Linear(32, 64), nn.GELU(),
                         nn.Linear(64, 32))


def onnx_run(graph: tc.Graph, x: torch.Tensor) -> torch.Tensor:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(tc.to_onnx(graph).SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


@pytest.mark.parametrize("make, shape, low_rank", [
    (small_cnn, (2, 3, 8, 8), "low-rank{ratio=0.5}"),
    (small_transformer, (2, 5, 32), "low-rank{ratio=0.5}"),
    (small_transformer, (2, 5, 32), "low-rank{structure=block-diagonal,blocks=2}"),
], ids=["cnn", "transformer", "transformer-block-diagonal"])
def test_low_rank_composes_with_fuse_prune_dce_and_exports(make, shape, low_rank):
    torch.manual_seed(0)
    model, x = make().eval(), torch.randn(*shape)
    calibration = [(torch.randn(*shape),) for _ in range(2)]
    result = tc.optimize(tc.capture(model, (x,)), f"fuse,prune{{ratio=0.3}},{low_rank},dce", calibration=calibration)
    tc.verify(result.graph)
    line = next(r for r in result.report if r.spec.startswith("low-rank"))
    assert line.changed and line.params[1] < line.params[0]
    with torch.no_grad():
        out = tc.to_torch(result.graph)(x)
    assert out.shape == model(x).shape
    torch.testing.assert_close(onnx_run(result.graph, x), out, rtol=RTOL, atol=ATOL)


def hidden_block_diagonal(n_out: int, n_in: int, blocks: int) -> torch.Tensor:
    """A weight that is block-diagonal once its rows and columns are put back in a hidden order."""
    generator = torch.Generator().manual_seed(3)
    weight = torch.block_diag(*[torch.randn(n_out // blocks, n_in // blocks, generator=generator) for _ in range(blocks)])
    return weight[torch.randperm(n_out, generator=generator)][:, torch.randperm(n_in, generator=generator)]


def dense_equivalent(graph: tc.Graph, n_in: int, bias: torch.Tensor) -> torch.Tensor:
    """W' of a graph computing one (possibly restructured) linear x -> x W'^T + b, read off the identity."""
    with torch.no_grad():
        return (tc.to_torch(graph)(torch.eye(n_in)) - bias).T.double()


BLOCKS_4 = LowRank(structure="block-diagonal", blocks=4)

GOLDEN_BLOCK_DIAGONAL = """\
graph @Sequential(%input: f32[2,8]) -> (f32[2,4] "output") {
  %v0_bias = param "0.bias" : f32[4]
  %v0_blockdiag_weight = param "0.blockdiag.weight" : f32[2,4,2]
  %v0_blockdiag_in_perm = param "0.blockdiag.in_perm" : i64[8]
  %v0_blockdiag_out_perm = param "0.blockdiag.out_perm" : i64[4]
  %index = aten.index.Tensor(%input, %v0_blockdiag_in_perm) {indices=[none, true]} : f32[2,8] loc("0")
  %view = aten.view(%index) {size=[-1, 2, 1, 4]} : f32[2,2,1,4] loc("0")
  %matmul = aten.matmul(%view, %v0_blockdiag_weight) : f32[2,2,1,2] loc("0")
  %view_1 = aten.view(%matmul) {size=[-1, 4]} : f32[2,4] loc("0")
  %index_1 = aten.index.Tensor(%view_1, %v0_blockdiag_out_perm) {indices=[none, true]} : f32[2,4] loc("0")
  %add = aten.add.Tensor(%index_1, %v0_bias) : f32[2,4] loc("0")
  return %add
}
"""


def test_low_rank_block_diagonal_golden():
    torch.manual_seed(0)
    graph, stats = carve(nn.Sequential(nn.Linear(8, 4)), torch.randn(2, 8), LowRank(structure="block-diagonal", blocks=2))
    assert graph.to_text() == GOLDEN_BLOCK_DIAGONAL
    assert stats["layers"]["0"]["params"] == [32, 16] and stats["layers"]["0"]["blocks"] == 2


def test_low_rank_block_diagonal_recovers_a_hidden_permutation_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 48)).eval()
    with torch.no_grad():
        model[0].weight.copy_(hidden_block_diagonal(64, 32, 4))
    x = torch.randn(3, 5, 32)
    graph, stats = carve(model, x, LowRank(structure="block-diagonal", blocks=4, layers=("0",)), [(x,)])
    line = stats["layers"]["0"]
    assert line["weight_error"] < 1e-12 and line["output_error"] < 1e-12
    assert line["params"] == [64 * 32, 64 * 32 // 4]
    assert graph.params["0.blockdiag.weight"].shape == (4, 8, 16)
    assert "aten.matmul" in ops(graph) and ops(graph).count("aten.index.Tensor") == 2
    with torch.no_grad():
        torch.testing.assert_close(tc.to_torch(graph)(x), model(x), rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(onnx_run(graph, x), model(x), rtol=RTOL, atol=ATOL)


def test_low_rank_block_diagonal_cuts_params_and_reports_measured_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96)).eval()
    calibration = [(correlated(40, dim=64, seed=s),) for s in range(3)]
    graph, stats = carve(model, calibration[0][0], BLOCKS_4, calibration)
    line = stats["layers"]["0"]
    assert line["params"] == [64 * 96, 64 * 96 // 4]
    float_params = sum(t.numel() for t in graph.params.values() if t.is_floating_point())
    assert float_params == 64 * 96 // 4 + 96                   # blocks x fewer weights (+ bias); perms are int64
    weight = model[0].weight.detach().double()
    approx = dense_equivalent(graph, 64, model[0].bias)
    assert line["weight_error"] == pytest.approx(float((weight - approx).norm() / weight.norm()), rel=1e-4)
    assert 0 < line["weight_error"] < 1
    module, bias = tc.to_torch(graph), model[0].bias
    with torch.no_grad():
        delta = torch.cat([module(x) - model(x) for (x,) in calibration])
        signal = torch.cat([model(x) - bias for (x,) in calibration])
        torch.testing.assert_close(onnx_run(graph, calibration[0][0]), module(calibration[0][0]), rtol=RTOL, atol=ATOL)
    assert line["output_error"] == pytest.approx(float(delta.norm() / signal.norm()), rel=1e-3)


def test_low_rank_block_diagonal_keeps_more_than_the_identity_order():
    weight = hidden_block_diagonal(64, 64, 4) + 0.1 * torch.randn(64, 64, generator=torch.Generator().manual_seed(5))
    model, x = nn.Sequential(nn.Linear(64, 64)), torch.randn(2, 64)
    with torch.no_grad():
        model[0].weight.copy_(weight)
    _, stats = carve(model, x, BLOCKS_4)
    unpermuted = weight * torch.block_diag(*[torch.ones(16, 16)] * 4)
    assert stats["layers"]["0"]["weight_error"] < 0.2 < float((weight - unpermuted).norm() / weight.norm())


def test_low_rank_block_diagonal_skips_what_it_cannot_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 10), nn.Linear(10, 12))
    graph, stats = carve(model, torch.randn(2, 4, 6, 6), LowRank(structure="block-diagonal", blocks=2, min_gain=0.6))
    assert stats["factorized"] == 0
    assert stats["skipped"]["0"] == "block-diagonal: linear layers only"
    assert "below min-gain" in stats["skipped"]["2"]
    _, stats = carve(model, torch.randn(2, 4, 6, 6), BLOCKS_4)
    assert "not divisible" in stats["skipped"]["2"] and "not divisible" in stats["skipped"]["3"]


@pytest.mark.parametrize("spec, message", [
    ("low-rank{structure=block-diagonal,ratio=0.5}", "takes no rank rule"),
    ("low-rank{structure=block-diagonal,blocks=1}", "blocks must be at least 2"),
    ("low-rank{structure=monarch}", "expects one of low-rank, block-diagonal"),
])
def test_low_rank_block_diagonal_bad_options(spec, message):
    with pytest.raises(tc.PipelineError, match=message):
        parse_pipeline(spec)


def test_low_rank_block_diagonal_spec_round_trips():
    each = LowRank(structure="block-diagonal", blocks=8, targets=("linear",))
    assert parse_pipeline(each.spec()) == [each]
    assert each.spec() == "low-rank{targets=[linear],structure=block-diagonal,blocks=8}"
