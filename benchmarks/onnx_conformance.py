"""ONNX node conformance: every `load_model_tests(kind="node")` case through
(a) ONNX -> IR -> ONNX -> onnxruntime and (b) ONNX -> IR -> PyTorch, against the expected outputs,
beside onnxruntime on the original model. Prints counts per path and failures by op.

    python benchmarks/onnx_conformance.py [--filter SUBSTRING] [--limit N] [--verbose]

onnx2torch column: not run here (it needs its own venv with torchvision; see docs/onnx.md).
"""
from __future__ import annotations

import argparse
import copy
import os
import signal
import sys
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx.backend.test.loader import load_model_tests

import torchcarve as tc

RTOL, ATOL = 1e-3, 1e-5  # the onnx backend test suite's tolerance (rtol 1e-3), atol a little looser
CASE_SECONDS = 30
PATHS = ("ort", "onnx", "torch")


@dataclass
class CaseResult:
    name: str
    ops: list[str]
    passed: dict[str, bool] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class CaseTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def expire(*_: Any) -> None:
        raise CaseTimeout(f"over {seconds}s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def case_data(case: Any) -> tuple[onnx.ModelProto, list[Any], list[Any]] | None:
    """Model, inputs and expected outputs of a case's first data set (None: not plain tensors)."""
    if case.model is None or not case.data_sets:
        return None
    inputs, outputs = case.data_sets[0]
    if not all(isinstance(a, (np.ndarray, np.generic)) for a in [*inputs, *outputs]):
        return None
    return case.model, [np.asarray(a) for a in inputs], [np.asarray(a) for a in outputs]


def with_input_shapes(model: onnx.ModelProto, inputs: list[np.ndarray]) -> onnx.ModelProto:
    """A copy whose graph inputs have the data's static shapes (ORT sees the same data)."""
    model = copy.deepcopy(model)
    initializers = {i.name for i in model.graph.initializer}
    feeds = [i for i in model.graph.input if i.name not in initializers]
    for info, array in zip(feeds, inputs):
        if not info.type.HasField("tensor_type"):
            continue
        shape = info.type.tensor_type.shape
        shape.ClearField("dim")
        for size in array.shape:
            shape.dim.add().dim_value = size
    return model


def matches(actual: list[Any], expected: list[np.ndarray]) -> bool:
    if len(actual) != len(expected):
        return False
    for a, e in zip(actual, expected):
        a = np.asarray(a.detach().numpy() if isinstance(a, torch.Tensor) else a)
        if a.shape != e.shape:
            return False
        if e.dtype.kind in "fc":
            if not np.allclose(a.astype(e.dtype), e, rtol=RTOL, atol=ATOL, equal_nan=True):
                return False
        elif not np.array_equal(a, e):
            return False
    return True


def run_ort(model: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs)))


def run_torch(graph: tc.Graph, inputs: list[np.ndarray]) -> list[torch.Tensor]:
    module = tc.to_torch(graph)
    with torch.no_grad():
        out = module(*[torch.from_numpy(np.array(x)) for x in inputs])
    return [out] if isinstance(out, torch.Tensor) else list(out)


def run_case(case: Any) -> CaseResult:
    """One conformance case through the three paths."""
    data = case_data(case)
    result = CaseResult(case.name, sorted({n.op_type for n in case.model.graph.node}) if case.model else [])
    if data is None:
        result.errors = {p: "test data is not plain tensors" for p in PATHS}
        result.passed = {p: False for p in PATHS}
        return result
    model, inputs, expected = data
    model = with_input_shapes(model, inputs)
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


def node_cases(name_filter: str = "") -> list[Any]:
    """The node test cases (models and data sets in memory)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = load_model_tests(kind="node")
    return [c for c in cases if name_filter in c.name]


def summarize(results: list[CaseResult], verbose: bool) -> None:
    total = len(results)
    counts = {p: sum(r.passed.get(p, False) for r in results) for p in PATHS}
    ort_ok = [r for r in results if r.passed.get("ort")]
    print(f"\nONNX node conformance: {total} cases")
    print("| path | passed | of the cases ORT passes |")
    print("|---|---|---|")
    print(f"| onnxruntime on the original | {counts['ort']}/{total} | - |")
    for path, label in (("onnx", "(a) ONNX -> IR -> ONNX -> onnxruntime"), ("torch", "(b) ONNX -> IR -> PyTorch")):
        within = sum(r.passed.get(path, False) for r in ort_ok)
        print(f"| {label} | {counts[path]}/{total} | {within}/{len(ort_ok)} ({100 * within / max(len(ort_ok), 1):.1f}%) |")
    print("| onnx2torch, path (b) | not run (needs torchvision in a separate venv) | - |")
    for path in ("onnx", "torch"):
        failed = Counter(op for r in ort_ok if not r.passed.get(path) for op in r.ops[:1])
        print(f"\nfailures of path {path} by op (cases ORT passes): "
              + ", ".join(f"{op} {n}" for op, n in failed.most_common()))
        if verbose:
            for r in ort_ok:
                if not r.passed.get(path):
                    print(f"  {r.name}: {r.errors.get(path)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="", help="only cases whose name contains this")
    parser.add_argument("--limit", type=int, default=0, help="at most this many cases")
    parser.add_argument("--verbose", action="store_true", help="list every failure with its error")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = node_cases(args.filter)
    cases = cases[: args.limit] if args.limit else cases
    start = time.time()
    results = [run_case(c) for c in cases]
    summarize(results, args.verbose)
    print(f"\n{len(results)} cases in {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
