"""merge-linear: chains multiply out, parallel linears become one wide linear + split; near misses stay."""
from __future__ import annotations

import torch
from torch import nn

from tests.passes.helpers import onnx_parity, ops, optimize_checked


def test_chain_merges():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)).eval()
    result = optimize_checked(model, (torch.randn(3, 8),), "merge-linear")
    assert ops(result.graph) == ["aten.linear"]


def test_low_rank_chain_stays_unless_allowed():
    model = nn.Sequential(nn.Linear(32, 2), nn.Linear(2, 32)).eval()
    assert not optimize_checked(model, (torch.randn(3, 32),), "merge-linear").changed
    result = optimize_checked(model, (torch.randn(3, 32),), "merge-linear{allow-growth=true}")
    assert ops(result.graph) == ["aten.linear"]


def test_pointwise_conv_after_conv_merges():
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(6, 3, 1)).eval()
    result = optimize_checked(model, (torch.randn(2, 4, 5, 5),), "merge-linear")
    assert ops(result.graph) == ["aten.conv2d"]


class QKV(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4, bias=False)

    def forward(self, x):
        return self.q(x) * self.k(x), self.v(x)


def test_parallel_linears_become_one_wide_linear():
    result = optimize_checked(QKV().eval(), (torch.randn(2, 5, 8),), "merge-linear")
    assert ops(result.graph) == ["aten.linear", "aten.split_with_sizes", "aten.mul.Tensor"]


def test_near_misses_do_not_change():
    class UsedIntermediate(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            h = self.a(x)
            return self.b(h) + h

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.b(self.a(x) + x)

    for model in (UsedIntermediate(), Residual()):
        result = optimize_checked(model.eval(), (torch.randn(2, 8),), "merge-linear")
        assert not result.changed and ops(result.graph).count("aten.linear") == 2


class MatmulAndBias(nn.Module):
    """How an ONNX MatMul + Add by initializers comes in: x @ W[K, N] + b."""

    def __init__(self, bias_shape=(4,)):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.randn(8, 4)), nn.Parameter(torch.randn(*bias_shape))

    def forward(self, x):
        return self.b + x @ self.w  # the constant first: either operand order folds


def test_matmul_by_weight_and_bias_add_become_one_linear(tmp_path):
    result = optimize_checked(MatmulAndBias().eval(), (torch.randn(2, 5, 8),), "merge-linear")
    assert ops(result.graph) == ["aten.linear"]
    onnx_parity(result.graph, (torch.randn(2, 5, 8),), tmp_path)


def test_bias_that_broadcasts_over_rows_stays_an_add():
    result = optimize_checked(MatmulAndBias(bias_shape=(5, 1)).eval(), (torch.randn(2, 5, 8),), "merge-linear")
    assert ops(result.graph) == ["aten.linear", "aten.add.Tensor"]
