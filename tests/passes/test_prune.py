"""prune: dependency groups hold (oracle), the pruned graph is smaller and verifies, options behave."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import torchcarve as tc
from torchcarve.analysis.memory import CLEAR_REFS, peak_extra_memory
from torchcarve.passes.prune.oracle import check_equivalence
from torchcarve.errors import CarveError
from torchcarve.passes import PASSES, optimize, parse_pipeline
from torchcarve.passes.prune import find_groups

from ..models import MODELS, ShuffleBlock, _randomize_batchnorm

transformers = pytest.importorskip("transformers")


class Head(nn.Module):
    """A block followed by a 1x1 conv, pooling and a classifier, so its channels are not graph outputs."""

    def __init__(self, block: nn.Module, channels: int) -> None:
        super().__init__()
        self.block, self.conv = block, nn.Conv2d(channels, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.block(x)).mean((2, 3)))


class Stem(nn.Module):
    """conv+BN stem in front of a block, so the block's input channels are prunable too."""

    def __init__(self, block: nn.Module, channels: int) -> None:
        super().__init__()
        self.conv, self.bn, self.block = nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(torch.relu(self.bn(self.conv(x))))


class DepthwiseSeparable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dw, self.bn1 = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16)
        self.pw, self.bn2 = nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.pw(torch.relu(self.bn1(self.dw(x))))))


class Dense(nn.Module):
    """DenseNet: every layer reads the concat of all earlier features."""

    def __init__(self, channels: int = 16, growth: int = 8) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.BatchNorm2d(channels + i * growth), nn.ReLU(),
                                                  nn.Conv2d(channels + i * growth, growth, 3, padding=1))
                                    for i in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class Shuffle(nn.Module):
    """ShuffleNet unit without the identity shortcut: grouped conv, shuffle, depthwise, grouped conv."""

    def __init__(self) -> None:
        super().__init__()
        self.block = ShuffleBlock(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        out = torch.relu(b.bn1(b.gconv1(x)))
        n, c, h, w = out.shape
        out = out.view(n, b.groups, c // b.groups, h, w).transpose(1, 2).reshape(n, c, h, w)
        return b.gconv2(b.bn2(b.dwconv(out)))


def _image(channels: int = 3) -> tuple[torch.Tensor]:
    return (torch.randn(2, channels, 8, 8),)


def _conv_model(block: nn.Module, width: int, out: int):
    return lambda: (_randomize_batchnorm(Head(Stem(block, width), out)).eval(), _image())


CASES = {
    "cnn_bn": (MODELS["cnn_bn"], {"channels"}),
    "residual": (MODELS["residual"], {"channels"}),
    "depthwise_separable": (_conv_model(DepthwiseSeparable(), 16, 24), {"channels"}),
    "dense_concat": (_conv_model(Dense(), 16, 32), {"channels"}),
    "grouped_shuffle": (_conv_model(Shuffle(), 16, 16), {"channels", "conv-groups"}),
    "squeeze_excitation": (MODELS["squeeze_excitation"], {"channels"}),
    "transformer_encoder": (MODELS["transformer_encoder"], {"heads", "channels"}),
    "hf_bert": (MODELS["hf_bert"], {"heads", "channels"}),
    "hf_llama": (MODELS["hf_llama"], {"heads", "channels"}),
    "hf_vit": (MODELS["hf_vit"], {"heads", "channels"}),
}


@pytest.fixture(scope="module")
def captured():
    cache = {}

    def get(name: str):
        if name not in cache:
            torch.manual_seed(0)
            model, inputs = CASES[name][0]()
            cache[name] = (tc.capture(model.eval(), inputs), inputs)
        return cache[name]
    return get


@pytest.mark.parametrize("name", sorted(CASES))
def test_oracle_holds_and_pruned_graph_is_smaller(name, captured):
    graph, inputs = captured(name)
    checks = check_equivalence(graph, inputs, limit=2)
    kinds = {g.kind for g in find_groups(graph) if not g.blocked}
    assert checks, "no prunable group found"
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert CASES[name][1] <= kinds
    result = optimize(graph, "prune{ratio=0.5,round-to=1}")
    pruned = result.graph
    tc.verify(pruned)
    assert result.report[0].params[1] < result.report[0].params[0]
    expected = tc.to_torch(graph)(*inputs)
    actual = tc.to_torch(pruned)(*inputs)
    for e, a in zip(*(x if isinstance(x, tuple) else (x,) for x in (expected, actual))):
        assert e.shape == a.shape


def test_zeroing_a_group_changes_the_output(captured):
    """The oracle is not vacuous: the removed units did contribute to the output."""
    from torchcarve.passes.prune.oracle import zero_units

    graph, inputs = captured("residual")
    index = next(i for i, g in enumerate(find_groups(graph)) if not g.blocked)
    zeroed = graph.clone()
    zero_units(zeroed, find_groups(zeroed)[index], torch.arange(4))
    with torch.no_grad():
        assert not torch.allclose(tc.to_torch(graph)(*inputs), tc.to_torch(zeroed)(*inputs))


def test_ir_before_and_after():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    graph = tc.capture(model, (torch.randn(1, 4),))
    assert "aten.linear(%input, %v0_weight, %v0_bias) : f32[1,16]" in graph.to_text()
    pruned = optimize(graph, "prune{ratio=0.5,round-to=4}").graph
    text = pruned.to_text()
    assert '%v0_weight = param "0.weight" : f32[8,4]' in text
    assert '%v2_weight = param "2.weight" : f32[2,8]' in text
    assert "aten.linear(%input, %v0_weight, %v0_bias) : f32[1,8]" in text
    assert "aten.relu(%linear) : f32[1,8]" in text
    (row,) = optimize(graph, "prune{ratio=0.5,round-to=4}").report[0].stats["layers"]
    assert row["params"] == [16 * 4 + 16 + 2 * 16, 8 * 4 + 8 + 2 * 8]   # 0.weight, 0.bias, 2.weight columns
    assert row["macs"] == [16 * 4 + 2 * 16, 8 * 4 + 2 * 8]


def test_carve_opt_prints_the_per_layer_table(captured, tmp_path, capsys):
    from torchcarve.cli import main

    graph, _ = captured("cnn_bn")
    tc.save(graph, tmp_path / "m.carve")
    assert main(["opt", str(tmp_path / "m.carve"), "-p", "prune{round-to=1}", "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    rows = optimize(graph, "prune{round-to=1}").report[0].stats["layers"]
    assert "prune{round-to=1}: per layer" in out
    for row in rows:
        assert f"{row['params'][0]:,} → {row['params'][1]:,}" in out
        assert f"{row['macs'][0]:,} → {row['macs'][1]:,}" in out


def test_heads_and_ffn_are_pruned_in_bert(captured):
    graph, inputs = captured("hf_bert")
    result = optimize(graph, "prune{ratio=0.5,round-to=1}")
    rows = result.report[0].stats["layers"]
    heads = [r for r in rows if r["kind"] == "heads"]
    assert heads and all(r["after"] == r["before"] // 2 for r in heads)
    assert "reshape" in result.graph.to_text()
    no_heads = optimize(graph, "prune{ratio=0.5,round-to=1,heads=false}").report[0].stats["layers"]
    assert not [r for r in no_heads if r["kind"] == "heads"]


def test_round_to_keeps_a_minimum_and_caps_apply(captured):
    graph, _ = captured("residual")
    rows = optimize(graph, "prune{ratio=0.99,round-to=8,max-per-layer=1.0}").report[0].stats["layers"]
    assert rows and all(r["after"] >= 8 and r["after"] % 8 == 0 for r in rows)
    capped = optimize(graph, "prune{ratio=0.99,round-to=1,max-per-layer=0.5}").report[0].stats["layers"]
    assert all(r["after"] >= r["before"] // 2 for r in capped)


def test_protect_keeps_a_layer(captured):
    graph, _ = captured("cnn_bn")
    assert "3" in [r["layer"] for r in optimize(graph, "prune{round-to=1}").report[0].stats["layers"]]
    result = optimize(graph, "prune{round-to=1,protect=[3]}")
    assert "3" not in [r["layer"] for r in result.report[0].stats["layers"]]
    assert result.graph.params["3.weight"].shape == graph.params["3.weight"].shape  # not even its inputs


@pytest.mark.parametrize("spec", ["prune{target=macs,scope=global}", "prune{target=params}",
                                  "prune{criterion=l2,scope=global}", "prune{criterion=bn-scale}",
                                  "prune{criterion=random}"])
def test_budgets_and_criteria(spec, captured):
    graph, inputs = captured("dense_concat")
    line = optimize(graph, spec.replace("}", ",ratio=0.4,round-to=1}")).report[0]
    target = "macs" if "macs" in spec else "params"
    before, after = getattr(line, target)
    assert after < before
    if "target" in spec:
        assert 1 - after / before >= 0.3  # the bisection reaches (about) the asked reduction


def test_taylor_needs_calibration_and_uses_it(captured):
    graph, inputs = captured("cnn_bn")
    with pytest.raises(CarveError, match="calibration"):
        optimize(graph, "prune{criterion=taylor}")
    result = optimize(graph, "prune{criterion=taylor,round-to=1}", calibration=[inputs])
    assert result.report[0].params[1] < result.report[0].params[0]


@pytest.mark.parametrize("spec, message", [("prune{ratio=1.0}", "ratio"), ("prune{max-per-layer=0}", "max-per-layer"),
                                           ("prune{criterion=magic}", "criterion"), ("prune{protect=[nope]}", "nope")])
def test_bad_options_are_clear_errors(spec, message, captured):
    graph, _ = captured("cnn_bn")
    with pytest.raises(CarveError, match=message):
        optimize(graph, spec)


def test_spec_round_trips():
    spec = "prune{ratio=0.3,criterion=l2,scope=global,protect=[fc,layer1.0]}"
    (pass_,) = parse_pipeline(spec)
    assert isinstance(pass_, PASSES["prune"]) and pass_.spec() == spec


def test_pruned_module_still_trains(captured):
    graph, inputs = captured("cnn_bn")
    module = tc.to_torch(optimize(graph, "prune{round-to=1}").graph).train()
    params = [p for p in module.parameters()]
    assert params and all(p.requires_grad for p in params)
    optimizer = torch.optim.SGD(params, lr=0.1)
    loss = module(*inputs).pow(2).mean()
    loss.backward()
    optimizer.step()
    assert module(*inputs).pow(2).mean() < loss


def test_unsupported_ops_are_barriers_not_crashes():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.b(torch.cumsum(self.a(x), dim=1))  # mixes channels: not prunable

    graph = tc.capture(Odd(), _image())
    result = optimize(graph, "prune{round-to=1}")
    assert not result.changed
    assert any("cumsum" in reason for reason in result.report[0].stats["blocked"])


def test_onnx_parity_of_pruned_graph(captured):
    onnx_backend = pytest.importorskip("torchcarve.backends.onnx")
    ort = pytest.importorskip("onnxruntime")
    graph, inputs = captured("residual")
    pruned = optimize(graph, "prune{round-to=1}").graph
    proto = onnx_backend.to_onnx(pruned)
    session = ort.InferenceSession(proto.SerializeToString())
    (got,) = session.run(None, {session.get_inputs()[0].name: inputs[0].numpy()})
    torch.testing.assert_close(torch.from_numpy(got), tc.to_torch(pruned)(*inputs), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not os.path.exists(CLEAR_REFS), reason="needs Linux /proc")
def test_grouping_and_rewriting_stay_below_twice_the_weights():
    from torchcarve.passes.base import PassContext
    from torchcarve.passes.prune import Prune

    layers, cin = [], 3
    for width in (128, 256, 256, 512, 512):  # ~7.5M weights, 30 MB
        layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        cin = width
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)).eval()
    graph = tc.capture(model, (torch.randn(1, 3, 16, 16),))
    del model
    weights = sum(t.numel() * t.element_size() for t in graph.params.values())
    Prune(ratio=0.5).run(tc.capture(nn.Sequential(*layers[:3]).eval(), (torch.randn(1, 3, 8, 8),)), PassContext())  # warm-up
    extra = peak_extra_memory(lambda: Prune(ratio=0.5).run(graph, PassContext()))
    assert graph.params["0.weight"].shape[0] == 64
    assert extra < 2 * weights, (extra, weights)
