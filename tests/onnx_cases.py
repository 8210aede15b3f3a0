"""The ONNX node test cases and how an output is judged: shared by the conformance benchmark and the
onnx2torch runner (which runs in its own venv, so this module needs only numpy, onnx and torch)."""
from __future__ import annotations

import copy
import signal
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import onnx
import torch
from onnx.backend.test.loader import load_model_tests

RTOL, ATOL = 1e-3, 1e-5  # the onnx backend test suite's tolerance (rtol 1e-3), atol a little looser
CASE_SECONDS = 30


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


def node_cases(name_filter: str = "") -> list[Any]:
    """The node test cases (models and data sets in memory)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = load_model_tests(kind="node")
    return [c for c in cases if name_filter in c.name]


def case_data(case: Any) -> tuple[onnx.ModelProto, list[Any], list[Any]] | None:
    """Model (inputs pinned to the data's shapes), inputs and expected outputs of a case's first
    data set (None: not plain tensors)."""
    if case.model is None or not case.data_sets:
        return None
    inputs, outputs = case.data_sets[0]
    if not all(isinstance(a, (np.ndarray, np.generic)) for a in [*inputs, *outputs]):
        return None
    inputs = [np.asarray(a) for a in inputs]
    return with_input_shapes(case.model, inputs), inputs, [np.asarray(a) for a in outputs]


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
    """Every output has the expected shape and values (floats within RTOL/ATOL, others exact)."""
    if len(actual) != len(expected):
        return False
    for a, e in zip(actual, expected):
        a = np.asarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a)
        if a.shape != e.shape:
            return False
        if e.dtype.kind in "fc":
            if not np.allclose(a.astype(e.dtype), e, rtol=RTOL, atol=ATOL, equal_nan=True):
                return False
        elif not np.array_equal(a, e):
            return False
    return True


def torch_outputs(module: Any, inputs: list[np.ndarray]) -> list[Any]:
    """A converted module run on the case's inputs, its result as a list."""
    with torch.no_grad():
        out = module(*[torch.from_numpy(np.array(x)) for x in inputs])
    return [out] if isinstance(out, torch.Tensor) else list(out)
