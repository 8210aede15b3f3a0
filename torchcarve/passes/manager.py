"""PassManager: runs passes on a copy of the graph, verifies after each, and reports what changed.

Instruments (the `carve opt` flags): print the IR after every pass, time every pass (always
recorded), and check numerics — run the graph before and after each pass on given or random
inputs; an exact pass that changes the outputs is an error, an approximate one reports its error.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..analysis.cost import Cost, graph_cost
from ..analysis.memory import peak_memory
from ..errors import CarveError, VerifyError
from ..ir import Graph, verify
from ..ir.params import memory_size
from ..ir.signature import check_batches
from ..progress import track
from .base import Pass, PassContext
from .pipeline import parse_pipeline

RTOL, ATOL = 1e-4, 1e-5  # float32 tolerance for exact passes (DESIGN.md, Passes)


@dataclass
class PassReport:
    """One pass's line of the report."""

    spec: str
    changed: bool
    stats: dict[str, Any]
    nodes: tuple[int, int]       # non-param nodes before -> after
    params: tuple[int, int]      # parameter elements before -> after
    macs: tuple[int, int]        # multiply-accumulates per batch item before -> after
    seconds: float
    max_error: float | None = None   # largest |output change| vs the previous graph (check-numerics)
    peak_memory: int | None = None   # peak resident bytes of the process during the pass (None: unknown here)
    bytes_read: int = 0              # weight bytes the ParamStore read from disk during the pass
    bytes_written: int = 0           # weight bytes it wrote (spilled) during the pass


@dataclass
class Stage:
    """The graph after one pass (or the input), kept for the HTML report only when asked (`report=True`)."""

    name: str
    graph: Graph
    params: int
    macs: int
    bytes: int
    latency_ms: float                # best of LATENCY_RUNS on the probe inputs, through the PyTorch backend
    max_error: float                 # largest |output change| vs the input graph on the probe inputs


LATENCY_RUNS = 5


class Report(list):
    """The report: one PassReport per pass (a list), plus each stage's graph when `optimize(..., report=True)`."""

    def __init__(self, lines: Sequence[PassReport] = (), stages: Sequence[Stage] = ()) -> None:
        super().__init__(lines)
        self.stages: list[Stage] = list(stages)

    @classmethod
    def join(cls, reports: Sequence["Report"]) -> "Report":
        """Reports of optimize runs made one after another, as one (each later run's input stage dropped)."""
        lines = [line for report in reports for line in report]
        stages = [stage for k, report in enumerate(reports) for stage in report.stages[(k > 0):]]
        return cls(lines, stages if all(report.stages for report in reports) else ())

    def to_html(self, path: Any, title: str = "torchcarve report") -> Any:
        """Write the self-contained HTML report (pictures need `report=True`); returns the path."""
        from ..draw.report import write_report

        return write_report(self, path, title=title)


@dataclass
class OptimizeResult:
    """What `optimize` returns: the new graph (the input is untouched) and one report line per pass."""

    graph: Graph
    report: Report = field(default_factory=Report)

    @property
    def changed(self) -> bool:
        return any(line.changed for line in self.report)


@dataclass
class PassManager:
    """Runs `passes` in order on a clone of the graph, verifying after each."""

    passes: Sequence[Pass]
    context: PassContext = field(default_factory=PassContext)
    print_ir: Callable[[str], None] | None = None
    check_numerics: bool = False
    numeric_inputs: Sequence[torch.Tensor] | None = None
    keep_stages: bool = False        # snapshot the graph after every pass for the HTML report

    def run(self, graph: Graph) -> OptimizeResult:
        graph = graph.clone()  # shares every weight with the input (copy-on-write)
        if self.context.max_memory is not None:
            graph.params.set_budget(self.context.max_memory)
        inputs = self._inputs(graph) if self.check_numerics else None
        outputs = run_graph(graph, inputs) if inputs is not None else None
        report = Report()
        probe = self._inputs(graph) if self.keep_stages else None
        reference = run_graph(graph, probe) if probe is not None else None
        if probe is not None:
            report.stages.append(_stage("input", graph, probe, reference))
        for each in track(self.passes, "passes"):
            line, outputs = self._run_one(each, graph, inputs, outputs)
            report.append(line)
            if probe is not None:
                report.stages.append(_stage(each.spec(), graph, probe, reference))
        return OptimizeResult(graph, report)

    def _run_one(self, each: Pass, graph: Graph, inputs: Any, outputs: Any) -> tuple[PassReport, Any]:
        before = _measure(graph)
        moved = graph.params.bytes_read, graph.params.bytes_written
        start = time.perf_counter()
        with peak_memory() as peak:
            result = each.run(graph, self.context)
            drop_unused_params(graph)
        seconds = time.perf_counter() - start
        try:
            verify(graph)
        except VerifyError as e:
            raise VerifyError(f"pass {each.spec()} broke the graph: {e}") from e
        after = _measure(graph)
        error = None
        if inputs is not None:
            new_outputs = run_graph(graph, inputs)
            error = _compare(each, outputs, new_outputs)
            outputs = new_outputs
        if self.print_ir is not None:
            self.print_ir(f"// after {each.spec()}\n{graph.to_text()}")
        line = PassReport(each.spec(), result.changed, dict(result.stats), (before[0], after[0]),
                          (before[1].params, after[1].params), (before[1].macs, after[1].macs), seconds, error,
                          peak.peak, graph.params.bytes_read - moved[0], graph.params.bytes_written - moved[1])
        return line, outputs

    def _inputs(self, graph: Graph) -> list[torch.Tensor]:
        if self.numeric_inputs is not None:
            return list(self.numeric_inputs)
        if self.context.calibration:
            batch = next(iter(self.context.calibration))
            return [batch] if isinstance(batch, torch.Tensor) else list(batch)
        return random_inputs(graph, self.context.seed)


def _stage(name: str, graph: Graph, probe: list[torch.Tensor], reference: list[torch.Tensor]) -> Stage:
    """A snapshot of `graph` with its cost, measured latency and output error vs the input graph."""
    from ..backends.torch import to_torch

    module = to_torch(graph)
    timings = []
    with torch.no_grad():
        for _ in range(LATENCY_RUNS):
            start = time.perf_counter()
            result = module(*probe)
            timings.append(time.perf_counter() - start)
    outputs = list(result) if isinstance(result, (tuple, list)) else [result]
    error = max((_max_error(e, a) for e, a in zip(reference, outputs)), default=0.0)
    cost = graph_cost(graph)
    return Stage(name, graph.clone(), cost.params, cost.macs, cost.bytes, 1e3 * min(timings), error)


def _measure(graph: Graph) -> tuple[int, Cost]:
    return sum(1 for n in graph.nodes if n.op != "param"), graph_cost(graph)


def drop_unused_params(graph: Graph) -> int:
    """Delete ParamStore entries that no param node reads; returns how many."""
    used = {node.attrs["name"] for node in graph.param_nodes()}
    unused = [name for name in graph.params if name not in used]
    for name in unused:
        del graph.params[name]
    return len(unused)


def random_inputs(graph: Graph, seed: int = 0, batch: int = 2) -> list[torch.Tensor]:
    """Inputs matching the graph's input types; symbolic dims get size `batch`, ints are in [0, 2)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for value in graph.inputs:
        shape = [d if isinstance(d, int) else batch for d in value.type.shape]
        dtype = value.type.torch_dtype
        if dtype.is_floating_point:
            tensors.append(torch.randn(shape, generator=generator).to(dtype))
        elif dtype == torch.bool:
            tensors.append(torch.randint(0, 2, shape, generator=generator).bool())
        else:
            tensors.append(torch.randint(0, 2, shape, generator=generator, dtype=dtype))
    return tensors


def run_graph(graph: Graph, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The graph's outputs on `inputs`, through the PyTorch backend."""
    from ..backends.torch import to_torch

    with torch.no_grad():
        result = to_torch(graph)(*inputs)
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _compare(each: Pass, expected: list[torch.Tensor], actual: list[torch.Tensor]) -> float:
    errors = [_max_error(e, a) for e, a in zip(expected, actual)]
    error = max(errors, default=0.0)
    mismatch = [i for i, (e, a) in enumerate(zip(expected, actual)) if not _close(e, a)]
    if each.exact and (mismatch or len(expected) != len(actual)):
        raise CarveError(f"pass {each.spec()} changed output {mismatch[0] if mismatch else 'count'} "
                         f"(max abs error {error:.3g}; exact passes allow rtol {RTOL}, atol {ATOL})",
                         hint="run with --print-ir-after-all to see the rewrite, and report it")
    return error


def _max_error(expected: torch.Tensor, actual: torch.Tensor) -> float:
    if expected.shape != actual.shape:
        return float("inf")
    if not expected.is_floating_point():
        return float((expected != actual).sum())
    return float((expected.double() - actual.double()).abs().max()) if expected.numel() else 0.0


def _close(expected: torch.Tensor, actual: torch.Tensor) -> bool:
    if expected.shape != actual.shape or expected.dtype != actual.dtype:
        return False
    if not expected.is_floating_point():
        return torch.equal(expected, actual)
    return torch.allclose(actual, expected, rtol=RTOL, atol=ATOL, equal_nan=True)


def optimize(graph: Graph, pipeline: str | Sequence[Pass], calibration: Any = None, check_numerics: bool = False, *,
             print_ir: Callable[[str], None] | None = None, seed: int = 0, report: bool = False,
             max_memory: int | str | None = None) -> OptimizeResult:
    """Run `pipeline` (a pipeline string or passes) on a copy of `graph`; the input is untouched.

    `report=True` keeps every stage's graph, latency and output error for `result.report.to_html(path)`.
    `max_memory` (bytes, or "4GB") bounds the weights held in memory: the copy shares the input's weights,
    reads them per use and spills new ones to disk past the budget (docs/big-models.md)."""
    passes = parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
    batches = check_batches(graph.inputs, calibration) if calibration is not None else None
    budget = memory_size(max_memory) if max_memory is not None else None
    context = PassContext(calibration=batches, seed=seed, max_memory=budget)
    manager = PassManager(passes, context, print_ir=print_ir, check_numerics=check_numerics, keep_stages=report)
    return manager.run(graph)
