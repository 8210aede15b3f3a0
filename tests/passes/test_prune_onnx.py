"""prune on graphs imported from ONNX (canonicalized to aten ops): the oracle holds, the result is
smaller, verifies and runs in onnxruntime; an op that blocks a group leaves it alone, reported."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import torchcarve as tc
from torchcarve.passes.prune.oracle import check_equivalence
from torchcarve.passes import optimize

ort = pytest.importorskip("onnxruntime")
LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def _ort_run(graph: tc.Graph, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    session = ort.InferenceSession(tc.to_onnx(graph).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)})


@pytest.fixture(scope="module")
def squeezenet():
    """The smallest light model (fire modules: squeeze conv, two expand convs concatenated)."""
    graph = tc.from_onnx(os.path.join(LIGHT, "light_squeezenet.onnx"))
    torch.manual_seed(0)
    return graph, (torch.randn(*graph.inputs[0].type.shape),)


def test_squeezenet_from_onnx_prunes_and_the_oracle_holds(squeezenet):
    graph, inputs = squeezenet
    checks = check_equivalence(graph, inputs, limit=2)
    assert checks and all(c.ok for c in checks), checks
    line = optimize(graph, "prune{ratio=0.5}").report[0]
    assert line.params[1] < 0.6 * line.params[0] and line.macs[1] < 0.6 * line.macs[0]
    assert any("fire" in row["layer"] for row in line.stats["layers"])


def test_pruned_squeezenet_runs_in_onnxruntime(squeezenet):
    graph, inputs = squeezenet
    pruned = optimize(graph, "prune{ratio=0.5}").graph
    tc.verify(pruned)
    (got,) = _ort_run(pruned, inputs)
    with torch.no_grad():
        expected = tc.to_torch(pruned)(*inputs)
    assert got.shape == tuple(graph.outputs[0].type.shape)
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)


def test_a_blocking_op_in_an_onnx_model_is_left_alone_and_reported(tmp_path):
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 1), nn.Conv2d(16, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(torch.cumsum(torch.relu(self.b(torch.relu(self.a(x)))), dim=1))  # cumsum mixes channels

    inputs = (torch.randn(1, 3, 8, 8),)
    tc.to_onnx(tc.capture(Odd().eval(), inputs), tmp_path / "odd.onnx")
    graph = tc.from_onnx(tmp_path / "odd.onnx")
    assert "onnx.CumSum" in graph.to_text()
    result = optimize(graph, "prune{ratio=0.5,round-to=1}")
    stats = result.report[0].stats
    assert [(row["layer"], row["after"]) for row in stats["layers"]] == [("a", 8)]  # a -> b is prunable
    assert stats["blocked"].get("onnx.CumSum has no pruning rule") == 2              # b's outputs, c's inputs
    assert result.graph.params["b.weight"].shape[0] == 16
    (got,) = _ort_run(result.graph, inputs)
    assert got.shape == (1, 4, 8, 8)


class _ShuffleUnit(nn.Module):
    """ShuffleNet v1 unit as in the caffe2 light_shufflenet: grouped 1x1 -> BN -> ReLU -> channel
    shuffle (reshape [N, g, C/g, H, W] -> transpose -> reshape) -> depthwise 3x3 -> BN -> grouped 1x1
    -> BN, plus the residual."""

    def __init__(self, channels: int, mid: int, groups: int = 4) -> None:
        super().__init__()
        self.groups = groups
        self.a, self.bn_a = nn.Conv2d(channels, mid, 1, groups=groups, bias=False), nn.BatchNorm2d(mid)
        self.dw, self.bn_dw = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False), nn.BatchNorm2d(mid)
        self.b, self.bn_b = nn.Conv2d(mid, channels, 1, groups=groups, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn_a(self.a(x)))
        n, c, h, w = y.shape
        y = y.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)
        return torch.relu(self.bn_b(self.b(self.bn_dw(self.dw(y)))) + x)


class _ShuffleNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.units = nn.Sequential(_ShuffleUnit(32, 64), _ShuffleUnit(32, 64))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.units(self.stem(x)).mean((2, 3)))


def test_shufflenet_like_onnx_prunes_through_channel_shuffle_and_grouped_convs(tmp_path):
    """The bottleneck of each unit (grouped 1x1 out -> shuffle -> depthwise -> grouped 1x1 in) is one
    group whose units are merged so every conv group keeps the same slots; the oracle holds.
    (light_shufflenet.onnx itself prunes its 272/544-channel stages the same way, but takes ~25 s.)"""
    torch.manual_seed(0)
    model = _ShuffleNetLike().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 1.5)
    inputs = (torch.randn(1, 3, 16, 16),)
    tc.to_onnx(tc.capture(model, inputs), tmp_path / "shuffle.onnx")
    graph = tc.from_onnx(tmp_path / "shuffle.onnx")
    assert "aten.permute" in graph.to_text() or "aten.transpose" in graph.to_text()
    from torchcarve.passes.prune import find_groups

    groups = {g.label: (g.kind, g.units, g.unit_size) for g in find_groups(graph) if not g.blocked}
    # stem/residual channels: uniform slots of the 4 conv groups; bottlenecks: 4 slots x 4 groups
    assert groups == {"stem.0": ("conv-groups", 8, 4), "units.0.a": ("conv-groups", 4, 16),
                      "units.1.a": ("conv-groups", 4, 16)}, groups
    checks = check_equivalence(graph, inputs)
    assert checks and all(c.ok for c in checks), checks
    result = optimize(graph, "prune{ratio=0.5,round-to=1}")
    stats = result.report[0].stats
    assert stats["pruned"] >= 2 and stats["macs"][1] < stats["macs"][0]
    pruned = result.graph
    tc.verify(pruned)
    (got,) = _ort_run(pruned, inputs)
    with torch.no_grad():
        expected = tc.to_torch(pruned)(*inputs)
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)
