"""ONNX lowerings of roll, einsum, swapaxes and adaptive max pooling: capture, export, ORT parity."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcarve as tc
from torchcarve.errors import UnsupportedOpError
from tests.test_onnx_backend import assert_ort_matches_eager


class Roll(nn.Module):
    """Swin's cyclic shift (two dims, negative shift) and a flat roll (no dims)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.roll(x, shifts=(-2, 3), dims=(1, 2)), torch.roll(x, 5), torch.roll(x, 7, dims=-1)


class Einsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 4))

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k)
        return torch.einsum("bhqk,bhkd->bqhd", scores.softmax(-1), k) @ self.weight.T


class SwapAxes(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.swapaxes(x, 1, -1) * 2, torch.swapdims(x, 0, 2) + 1


class AdaptiveMax1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return nn.functional.adaptive_max_pool1d(y, 1).flatten(1), nn.functional.adaptive_max_pool1d(y, 4)


class AdaptiveMaxIndices(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_max_pool1d(x, 2, return_indices=True)[1]


CASES = {
    "roll": (Roll, lambda: (torch.randn(2, 5, 6, 7),), "aten.roll"),
    "einsum": (Einsum, lambda: (torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4)), "aten.einsum"),
    "swapaxes": (SwapAxes, lambda: (torch.randn(2, 3, 4, 5),), "aten.swapaxes"),
    "adaptive_max_pool1d": (AdaptiveMax1d, lambda: (torch.randn(2, 3, 16),), "aten.adaptive_max_pool1d"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_lowering_matches_eager_in_onnxruntime(name: str) -> None:
    torch.manual_seed(0)
    make, inputs, op = CASES[name]
    model, example = make().eval(), inputs()
    assert op in {n.op for n in tc.capture(model, example).nodes}, "the test must exercise the op it names"
    proto = assert_ort_matches_eager(model, example)
    assert not any(n.op_type.startswith("aten") for n in proto.graph.node)


def test_adaptive_max_pool_indices_are_refused_with_a_carve_error() -> None:
    graph = tc.capture(AdaptiveMaxIndices().eval(), (torch.randn(1, 3, 8),))
    with pytest.raises(UnsupportedOpError, match="indices"):
        tc.to_onnx(graph)
