"""fold-bn: BN into the conv/linear before it (and after it without padding); near misses stay."""
from __future__ import annotations

import torch
from torch import nn

from tests.models import _randomize_batchnorm
from tests.passes.helpers import onnx_parity, ops, optimize_checked


class ConvBN(nn.Module):
    def __init__(self, transpose=False, groups=1):
        super().__init__()
        conv = nn.ConvTranspose2d if transpose else nn.Conv2d
        self.conv = conv(4, 8, 3, padding=1, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def test_conv_bn_golden_and_onnx(tmp_path):
    model, x = _randomize_batchnorm(ConvBN()).eval(), (torch.randn(2, 4, 8, 8),)
    result = optimize_checked(model, x, "fold-bn")
    assert ops(result.graph) == ["aten.conv2d", "aten.relu"]
    assert result.report[0].stats == {"folded": 1}
    onnx_parity(result.graph, x, tmp_path)


def test_grouped_conv_transpose_bn():
    model, x = _randomize_batchnorm(ConvBN(transpose=True, groups=2)).eval(), (torch.randn(2, 4, 8, 8),)
    result = optimize_checked(model, x, "fold-bn")
    assert ops(result.graph) == ["aten.conv_transpose2d.input", "aten.relu"]


def test_bn_before_unpadded_conv_and_linear():
    model = _randomize_batchnorm(nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 6, 3, groups=2))).eval()
    result = optimize_checked(model, (torch.randn(2, 4, 8, 8),), "fold-bn")
    assert ops(result.graph) == ["aten.conv2d"]
    model = _randomize_batchnorm(nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 3))).eval()
    result = optimize_checked(model, (torch.randn(4, 5),), "fold-bn")
    assert ops(result.graph) == ["aten.linear"]


def test_near_misses_do_not_change():
    class TwoUsers(nn.Module):  # the conv output also feeds the return value: folding would change it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    padded = nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1))  # pads are not normalised
    for model in (TwoUsers(), padded):
        model = _randomize_batchnorm(model).eval()
        result = optimize_checked(model, (torch.randn(2, 4, 6, 6),), "fold-bn")
        assert not result.changed and "aten.batch_norm" in ops(result.graph)


def test_repavit_bn_in_ffn():
    class RepFFN(nn.Module):  # BN on tokens [B, N, C] through transposes, then the FFN (RePaViT)
        def __init__(self):
            super().__init__()
            self.bn, self.fc1, self.fc2 = nn.BatchNorm1d(8), nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x):
            h = self.bn(x.transpose(1, 2)).transpose(1, 2)
            return x + self.fc2(torch.relu(self.fc1(h)))

    model = _randomize_batchnorm(RepFFN()).eval()
    for pipeline in ("fold-bn", "reparam"):
        result = optimize_checked(model, (torch.randn(2, 5, 8),), pipeline)
        assert ops(result.graph) == ["aten.linear", "aten.relu", "aten.linear", "aten.add.Tensor"]
