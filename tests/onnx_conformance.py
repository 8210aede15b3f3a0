"""The ONNX node conformance harness: one `load_model_tests(kind="node")` case through onnxruntime on the
original model, ONNX -> IR -> ONNX -> onnxruntime, and ONNX -> IR -> PyTorch, against the expected outputs.
tests/test_onnx_conformance.py runs a fast subset; benchmarks/onnx_conformance.py runs every case."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

import torchcarve as tc
from tests.onnx_cases import CASE_SECONDS, case_data, matches, time_limit, torch_outputs

PATHS = ("ort", "onnx", "torch")


@dataclass
class CaseResult:
    name: str
    ops: list[str]
    passed: dict[str, bool] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def run_ort(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs)))


def run_torch(graph: tc.Graph, inputs: list[np.ndarray]) -> list[torch.Tensor]:
    return torch_outputs(tc.to_torch(graph), inputs)


def run_case(case: Any) -> CaseResult:
    """One conformance case through the three paths."""
    data = case_data(case)
    result = CaseResult(case.name, sorted({n.op_type for n in case.model.graph.node}) if case.model else [])
    if data is None:
        result.errors = {p: "test data is not plain tensors" for p in PATHS}
        result.passed = {p: False for p in PATHS}
        return result
    model, inputs, expected = data
    graph = None
    for path in PATHS:
        try:
            with time_limit(CASE_SECONDS), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if path == "ort":
                    actual = run_ort(model, inputs)
                elif path == "onnx":
                    graph = graph or tc.from_onnx(model)
                    actual = run_ort(tc.to_onnx(graph), inputs)
                else:
                    graph = graph or tc.from_onnx(model)
                    actual = run_torch(graph, inputs)
            result.passed[path] = matches(actual, expected)
            if not result.passed[path]:
                result.errors[path] = "wrong output"
        except BaseException as e:  # noqa: BLE001 - a benchmark records every failure and goes on
            if isinstance(e, KeyboardInterrupt):
                raise
            result.passed[path] = False
            result.errors[path] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e).strip() else ''}"
    return result
