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
from torchcarve.analysis.oracle import check_equivalence
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
