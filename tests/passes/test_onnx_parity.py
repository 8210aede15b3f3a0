"""Every exact pass, on every shared test model it changes: the ONNX export of the result runs in
onnxruntime and matches both the PyTorch backend and the eager model."""
from __future__ import annotations

import pytest
import torch

import torchcarve as tc
from tests.models import MODELS, captured
from tests.passes.helpers import ATOL, RTOL, first, onnx_parity

EXACT_PASSES = ["dce", "cse", "fold-constants", "simplify", "fold-bn", "merge-linear", "reparam", "fuse-attention"]
SHARED_MODELS = [name for name in ("mlp", "cnn_bn", "residual", "repvgg", "depthwise_separable",
                                   "transformer_encoder", "hf_bert", "hf_vit") if name in MODELS]


class ManualAttention(torch.nn.Module):
    """Attention written out (matmul, scale, mask add, softmax, matmul): fuse-attention's pattern."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(16, 48)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(2, 6, 3, 4, 4).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) * 0.5 + mask
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 6, 16)


def manual_attention() -> tuple:
    torch.manual_seed(0)
    model = ManualAttention().eval()
    inputs = (torch.randn(2, 6, 16), torch.randn(2, 1, 6, 6))
    return model, inputs, tc.capture(model, inputs)


def model_and_graph(name: str) -> tuple:
    return manual_attention() if name == "manual_attention" else captured(name)


@pytest.mark.parametrize("name", [*SHARED_MODELS, "manual_attention"])
@pytest.mark.parametrize("spec", EXACT_PASSES)
def test_exact_pass_keeps_onnxruntime_parity(spec: str, name: str, tmp_path) -> None:
    model, inputs, graph = model_and_graph(name)
    result = tc.optimize(graph, spec)
    with torch.no_grad():
        torch.testing.assert_close(first(tc.to_torch(result.graph)(*inputs)), first(model(*inputs)),
                                   rtol=RTOL, atol=ATOL)
    onnx_parity(result.graph, inputs, tmp_path)


def test_some_model_changes_under_every_exact_pass() -> None:
    """The parity matrix above is not vacuous: each pass rewrites at least one of the models."""
    idle = [spec for spec in EXACT_PASSES
            if not any(tc.optimize(model_and_graph(name)[2], spec).changed
                       for name in [*SHARED_MODELS, "manual_attention"])]
    assert idle in ([], ["dce"], ["cse"], ["dce", "cse"]), idle  # captured graphs have no dead/duplicate nodes
