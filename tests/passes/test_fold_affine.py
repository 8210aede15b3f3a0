"""fold-affine: per-channel constant Mul/Add after a conv/linear (Caffe2 Scale, layer scale) folded."""
from __future__ import annotations

import onnx
import torch
from torch import nn

import torchcarve as tc
from tests.models import _randomize_batchnorm
from tests.passes.helpers import onnx_parity, ops, optimize_checked


class ScaleShift(nn.Module):
    """conv -> * [C,1,1] -> + [C,1,1] -> relu, as Caffe2 exports its Scale-style batch norm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.register_buffer("scale", torch.rand(8, 1, 1) + 0.5)
        self.register_buffer("shift", torch.randn(8, 1, 1))

    def forward(self, x):
        return torch.relu(self.shift + self.conv(x) * self.scale)


class LayerScale(nn.Module):
    """ConvNeXt's `gamma * linear(x)`."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.gamma = nn.Parameter(torch.rand(6))

    def forward(self, x):
        return x + self.gamma * self.fc(x)


def test_scale_and_shift_fold_into_conv(tmp_path):
    model, x = ScaleShift().eval(), (torch.randn(2, 4, 8, 8),)
    result = optimize_checked(model, x, "fold-affine")
    assert ops(result.graph) == ["aten.conv2d", "aten.relu"]
    assert result.report[0].stats == {"folded": 2}
    onnx_parity(result.graph, x, tmp_path)


def test_layer_scale_folds_into_linear(tmp_path):
    model, x = LayerScale().eval(), (torch.randn(2, 3, 6),)
    result = optimize_checked(model, x, "fold-affine")
    assert ops(result.graph) == ["aten.linear", "aten.add.Tensor"]
    onnx_parity(result.graph, x, tmp_path)


def test_ir_before_and_after():
    model, x = ScaleShift().eval(), (torch.randn(1, 4, 5, 5),)
    graph = tc.capture(model, x)
    before = [line.split(" loc(")[0] for line in graph.to_text().splitlines() if "aten." in line]
    assert before == [
        "  %conv2d = aten.conv2d(%x, %conv_weight, %conv_bias) {padding=[1, 1]} : f32[1,8,5,5]",
        "  %mul = aten.mul.Tensor(%conv2d, %scale) : f32[1,8,5,5]",
        "  %add = aten.add.Tensor(%shift, %mul) : f32[1,8,5,5]",
        "  %relu = aten.relu(%add) : f32[1,8,5,5]",
    ]
    after = tc.optimize(graph, "fold-affine,dce").graph.to_text()
    assert [line.split(" loc(")[0] for line in after.splitlines() if "aten." in line] == [
        "  %conv2d = aten.conv2d(%x, %conv_fused_fused_weight, %conv_fused_fused_bias) {padding=[1, 1]} : f32[1,8,5,5]",
        "  %relu = aten.relu(%conv2d) : f32[1,8,5,5]",
    ]


def test_near_misses_do_not_fold():
    class NearMisses(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 1)
            self.register_buffer("spatial", torch.rand(1, 1, 6, 6))  # varies over pixels, not channels
            self.register_buffer("wide", torch.rand(2, 8, 1, 1))    # would broadcast the batch

        def forward(self, x):
            y = self.conv(x)
            return y * self.spatial, self.conv(x) + self.wide, y

    model, x = NearMisses().eval(), (torch.randn(1, 4, 6, 6),)
    result = tc.optimize(tc.capture(model, x), "fold-affine")
    assert not result.changed


def test_onnx_caffe2_scale_folds_and_matches_onnxruntime(tmp_path):
    model, x = ScaleShift().eval(), (torch.randn(1, 4, 8, 8),)
    path = tmp_path / "scale.onnx"
    tc.to_onnx(tc.capture(model, x), path)
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("Mul") == 1
    graph = tc.optimize(tc.from_onnx(str(path)), "fuse").graph
    assert ops(graph) == ["aten.conv2d", "aten.relu"]
    onnx_parity(graph, x, tmp_path)


def test_cse_merges_equal_constants_but_not_trainable_weights():
    class Twins(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
            self.b.load_state_dict(self.a.state_dict())

        def forward(self, x):
            return self.a(x) + self.b(x)

    model, x = Twins().eval(), (torch.randn(1, 3, 4, 4),)
    graph = tc.capture(model, x)
    assert ops(tc.optimize(graph, "cse,dce").graph).count("aten.conv2d") == 2  # trainable: stay apart
    graph.params.trainable.clear()  # as an ONNX file's initializers
    merged = tc.optimize(graph, "cse,dce").graph
    assert ops(merged).count("aten.conv2d") == 1
    with torch.no_grad():
        torch.testing.assert_close(tc.to_torch(merged)(*x), model(*x))


def test_a_conv_shared_by_affines_gives_each_its_own_copy(tmp_path):
    class Shared(nn.Module):
        """One conv read by a batch norm and by a constant scale (as after cse merged equal convs)."""

        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8)
            self.register_buffer("scale", torch.rand(8, 1, 1))

        def forward(self, x):
            y = self.conv(x)
            return torch.relu(self.bn(y)) + torch.relu(y * self.scale)

    model, x = _randomize_batchnorm(Shared()).eval(), (torch.randn(2, 4, 5, 5),)
    result = optimize_checked(model, x, "fold-bn,fold-affine")
    assert ops(result.graph) == ["aten.conv2d", "aten.relu", "aten.conv2d", "aten.relu", "aten.add.Tensor"]
    onnx_parity(result.graph, x, tmp_path)
