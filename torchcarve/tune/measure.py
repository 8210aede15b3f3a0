"""Scoring a candidate: the metric (how close to the original) and the objectives (what to minimize).

Metrics are "higher is better". Built-ins compare the candidate's outputs with the original's on the
eval batches; a user metric is a function `fn(model, eval_data) -> float` scoring a runnable model.
Objectives are parsed from text: `ort-latency[:BxS...][@THREADS]`, `file-size`, `params`, `macs[:BxS...]`.
"""
from __future__ import annotations

import importlib
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..analysis.cost import graph_cost
from ..errors import CarveError
from ..ir import Graph
from ..passes.manager import run_graph
from ..passes.quantize.sensitivity import output_error

Outputs = list[list[torch.Tensor]]  # per eval batch, per graph output


def cosine(expected: Outputs, actual: Outputs) -> float:
    """Mean cosine similarity of output rows (last dim), the worst over outputs."""
    return min(_pooled(expected, actual, index, _cosine_rows) for index in range(len(expected[0])))


def top1(expected: Outputs, actual: Outputs) -> float:
    """Fraction of output rows whose argmax (last dim) agrees with the original's, the worst over outputs."""
    return min(_pooled(expected, actual, index, _agreement_rows) for index in range(len(expected[0])))


def rel_l2(expected: Outputs, actual: Outputs) -> float:
    """1 - ||y - y0|| / ||y0|| (relative L2 error as a score), the worst over outputs."""
    return 1.0 - output_error(expected, actual)


def _pooled(expected: Outputs, actual: Outputs, index: int, rows: Callable) -> float:
    values = torch.cat([rows(e[index], a[index]) for e, a in zip(expected, actual)])
    return float(values.double().mean())


def _cosine_rows(expected: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(actual.double(), expected.double(), dim=-1, eps=1e-12).flatten()


def _agreement_rows(expected: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    return (actual.argmax(-1) == expected.argmax(-1)).flatten().double()


METRICS: dict[str, Callable[[Outputs, Outputs], float]] = {"cosine": cosine, "top1": top1, "rel-l2": rel_l2}
UserMetric = Callable[[torch.nn.Module, Any], float]


def resolve_metric(metric: str | UserMetric) -> str | UserMetric:
    """A built-in metric name, or a callable (given itself or as `module:function` text)."""
    if callable(metric) or metric in METRICS:
        return metric
    module, _, name = str(metric).partition(":")
    if not name:
        raise CarveError(f"unknown metric '{metric}'", hint=f"use one of {', '.join(METRICS)} or module:function")
    try:
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise CarveError(f"metric '{metric}': cannot import it ({e})", hint="give an importable module:function") from e
    if not callable(function):
        raise CarveError(f"metric '{metric}' is not a function")
    return function


def run_outputs(graph: Graph, batches: Sequence[tuple]) -> Outputs:
    return [run_graph(graph, batch) for batch in batches]


def score(metric: str | UserMetric, graph: Graph, eval_data: Sequence[tuple], reference: Outputs | None) -> float:
    """The metric of `graph`: against the reference outputs (built-ins) or by the user's function."""
    if isinstance(metric, str):
        return METRICS[metric](reference, run_outputs(graph, eval_data))
    from ..backends.torch import to_torch

    with torch.no_grad():
        return float(metric(to_torch(graph).eval(), eval_data))


# ---- objectives ----------------------------------------------------------------------------
LATENCY_WARMUP = 2
LATENCY_RUNS = 10


@dataclass(frozen=True)
class Objective:
    """One quantity to minimize: `kind` in OBJECTIVES, `shape` (leading input dims), ORT `threads`."""

    kind: str
    shape: tuple[int, ...] = ()
    threads: int = 1

    @property
    def label(self) -> str:
        shape = ":" + "x".join(map(str, self.shape)) if self.shape else ""
        threads = f"@{self.threads}" if self.kind == "ort-latency" and self.threads != 1 else ""
        return f"{self.kind}{shape}{threads}"

    @property
    def unit(self) -> str:
        return UNITS[self.kind]


UNITS = {"ort-latency": "ms", "file-size": "MiB", "params": "", "macs": ""}


def parse_objective(text: str) -> Objective:
    """`ort-latency:8x32@2` -> Objective("ort-latency", (8, 32), 2)."""
    head, _, threads = text.strip().partition("@")
    kind, _, shape = head.partition(":")
    if kind not in UNITS:
        raise CarveError(f"unknown objective '{text}'", hint=f"use {', '.join(UNITS)} (e.g. ort-latency:8x32@1)")
    try:
        dims = tuple(int(d) for d in shape.lower().split("x")) if shape else ()
        count = int(threads) if threads else 1
    except ValueError:
        raise CarveError(f"bad objective '{text}'", hint="write e.g. ort-latency:8x32@1 (shape, then @threads)") from None
    if any(d <= 0 for d in dims) or count <= 0:
        raise CarveError(f"bad objective '{text}': sizes and threads must be positive")
    return Objective(kind, dims, count)


def shaped_inputs(graph: Graph, shape: tuple[int, ...]) -> list[torch.Tensor]:
    """Inputs whose leading dims are `shape` (the rest from the graph's types); ints are 0/1."""
    generator = torch.Generator().manual_seed(0)
    tensors = []
    for value in graph.inputs:
        dims = list(value.type.shape)
        for index, size in enumerate(shape[:len(dims)]):
            if isinstance(dims[index], int) and dims[index] != size:
                raise CarveError(f"objective shape {'x'.join(map(str, shape))} does not fit input %{value.name} "
                                 f"{value.type} (dim {index} is fixed to {dims[index]})")
            dims[index] = size
        if not all(isinstance(d, int) for d in dims):
            raise CarveError(f"input %{value.name} {value.type} has symbolic dims the objective shape leaves open",
                             hint="give every symbolic dim in the objective, e.g. ort-latency:8x32")
        dtype = value.type.torch_dtype
        tensors.append(torch.randn(dims, generator=generator).to(dtype) if dtype.is_floating_point
                       else torch.randint(0, 2, dims, generator=generator).to(dtype))
    return tensors


def measure(objectives: Sequence[Objective], graph: Graph) -> dict[str, float]:
    """Every objective's value for `graph` (one ONNX export shared by size and latency)."""
    proto = None
    values = {}
    for objective in objectives:
        if objective.kind in ("ort-latency", "file-size") and proto is None:
            from ..backends.onnx import to_onnx

            proto = to_onnx(graph)
        values[objective.label] = _measure_one(objective, graph, proto)
    return values


def _measure_one(objective: Objective, graph: Graph, proto: Any) -> float:
    if objective.kind == "file-size":
        return proto.ByteSize() / 2**20
    if objective.kind == "params":
        return float(graph_cost(graph).params)
    if objective.kind == "macs":
        return float(graph_cost(graph, _symbol_sizes(graph, objective.shape)).macs)
    return ort_latency(proto, graph, objective)


def _symbol_sizes(graph: Graph, shape: tuple[int, ...]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for value in graph.inputs:
        for dim, size in zip(value.type.shape, shape):
            if isinstance(dim, str):
                sizes.setdefault(dim, size)
    return sizes


def ort_latency(proto: Any, graph: Graph, objective: Objective) -> float:
    """Median onnxruntime latency (ms) of `proto` at the objective's shape, on `threads` intra-op threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = objective.threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = {name: tensor.numpy() for name, tensor in zip(names, shaped_inputs(graph, objective.shape))}
    for _ in range(LATENCY_WARMUP):
        session.run(None, feeds)
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
