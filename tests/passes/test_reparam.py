"""reparam: RepVGG and ACNet blocks end as exactly one conv per block with the same outputs."""
from __future__ import annotations

import functools
import operator

import torch
from torch import nn

from tests.models import MODELS, _randomize_batchnorm
from tests.passes.helpers import onnx_parity, ops, optimize_checked


class RepBlock(nn.Module):
    """3x3+BN, 1x1+BN and identity-BN branches (RepVGG), or 3x3, 1x3, 3x1 (ACNet)."""

    def __init__(self, channels=8, asymmetric=False, groups=1):
        super().__init__()
        shapes = [(3, 3), (1, 3), (3, 1)] if asymmetric else [(3, 3), (1, 1)]
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, k, padding=(k[0] // 2, k[1] // 2), groups=groups,
                                             bias=False) for k in shapes)
        self.bns = nn.ModuleList(nn.BatchNorm2d(channels) for _ in shapes)
        self.identity = None if asymmetric else nn.BatchNorm2d(channels)

    def forward(self, x):
        y = functools.reduce(operator.add, [bn(conv(x)) for conv, bn in zip(self.convs, self.bns)])
        return torch.relu(y + self.identity(x) if self.identity is not None else y)


def net(**kw):
    return _randomize_batchnorm(nn.Sequential(RepBlock(**kw), RepBlock(**kw), RepBlock(**kw))).eval()


def test_repvgg_net_has_one_conv_per_block(tmp_path):
    x = (torch.randn(2, 8, 10, 10),)
    result = optimize_checked(net(), x, "fuse")
    assert ops(result.graph) == ["aten.conv2d", "aten.relu"] * 3
    onnx_parity(result.graph, x, tmp_path)


def test_grouped_and_asymmetric_blocks():
    for model in (net(groups=2), net(asymmetric=True)):
        result = optimize_checked(model, (torch.randn(2, 8, 7, 9),), "fold-bn,reparam")
        assert ops(result.graph) == ["aten.conv2d", "aten.relu"] * 3


def test_shared_models_repvgg():
    model, x = MODELS["repvgg"]()
    result = optimize_checked(model, x, "fuse")
    assert ops(result.graph).count("aten.conv2d") == 1


def test_branches_on_different_inputs_stay():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    result = optimize_checked(TwoInputs().eval(), (torch.randn(1, 4, 5, 5), torch.randn(1, 4, 5, 5)), "reparam")
    assert not result.changed
