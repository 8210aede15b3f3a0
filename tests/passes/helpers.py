"""Shared checks for pass tests: run a pipeline, compare with eager PyTorch and onnxruntime, rerun for idempotence."""
from __future__ import annotations

import torch

import torchcarve as tc
from torchcarve.ir.ops.onnx_ops import DEFAULT_OPSET

RTOL, ATOL = 1e-4, 1e-5


def first(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def optimize_checked(model: torch.nn.Module, inputs: tuple, pipeline: str) -> tc.OptimizeResult:
    """Capture, optimize (verifier + check-numerics on), compare with eager, check a rerun changes nothing."""
    graph = tc.capture(model, inputs)
    before = graph.to_text()
    result = tc.optimize(graph, pipeline, check_numerics=True)
    assert graph.to_text() == before, "the input graph must be untouched"
    with torch.no_grad():
        expected, actual = first(model(*inputs)), first(tc.to_torch(result.graph)(*inputs))
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)
    rerun = tc.optimize(result.graph, pipeline)
    assert not rerun.changed, [line for line in rerun.report if line.changed]
    return result


def onnx_parity(graph: tc.Graph, inputs: tuple, tmp_path, opset: int = DEFAULT_OPSET) -> None:
    """The exported ONNX model runs in onnxruntime and matches the PyTorch backend."""
    import pytest

    ort = pytest.importorskip("onnxruntime")
    to_onnx = pytest.importorskip("torchcarve.backends.onnx").to_onnx

    path = tmp_path / "model.onnx"
    to_onnx(graph, path, opset=opset)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    actual = torch.from_numpy(session.run(None, feeds)[0])
    with torch.no_grad():
        expected = first(tc.to_torch(graph)(*inputs))
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)


def ops(graph: tc.Graph) -> list[str]:
    return [n.op for n in graph.nodes if n.op != "param"]
