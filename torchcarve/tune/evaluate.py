"""One candidate, start to end: run its pipeline (verified after every pass), score it, measure it.

A `Job` holds everything a worker needs (graph text and weights, data, metric, objectives), so the
same `evaluate(job, spec)` runs in this process, in a process pool or as a Ray task. A failing
candidate is a record with its error, never an exception.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..fileio import atomic_file
from ..ir import Graph, ParamStore, parse
from ..passes import optimize
from .measure import Objective, Outputs, UserMetric, measure, run_outputs, score


@dataclass(frozen=True)
class Job:
    """What every candidate of one search shares; `key` names it (and its cache entries)."""

    key: str
    graph_text: str
    weights: dict[str, torch.Tensor]
    calibration: list[tuple] | None
    eval_data: Any
    metric: str | UserMetric
    objectives: tuple[Objective, ...]
    seed: int = 0
    threads: int = 1


_PREPARED: dict[str, tuple[Graph, Outputs | None]] = {}  # per process: the job's graph and reference outputs


def prepared(job: Job) -> tuple[Graph, Outputs | None]:
    """The job's graph and the original's outputs on the eval data, built once per process."""
    if job.key not in _PREPARED:
        _PREPARED.clear()  # one job at a time: memory stays bounded
        graph = parse(job.graph_text, params=ParamStore(dict(job.weights)))
        reference = run_outputs(graph, job.eval_data) if isinstance(job.metric, str) else None
        _PREPARED[job.key] = (graph, reference)
    return _PREPARED[job.key]


def evaluate(job: Job, spec: str) -> dict[str, Any]:
    """The record of one candidate: spec, metric, objectives, error (None when it ran), seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(job.threads)
    start = time.perf_counter()
    record: dict[str, Any] = {"spec": spec, "metric": None, "objectives": {}, "error": None}
    try:
        graph, reference = prepared(job)
        candidate = optimize(graph, spec, calibration=job.calibration, seed=job.seed).graph
        record["metric"] = score(job.metric, candidate, job.eval_data, reference)
        record["objectives"] = measure(job.objectives, candidate)
    except Exception as e:  # noqa: BLE001  (any failure of a candidate is its result, not the search's end)
        record["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        torch.set_num_threads(threads)
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


# ---- keys and the disk cache ----------------------------------------------------------------
def digest(value: Any) -> str:
    """A stable hash of tensors, numbers, strings and containers of them."""
    sha = hashlib.sha256()
    _feed(sha, value)
    return sha.hexdigest()


def _feed(sha: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        sha.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        sha.update(tensor.flatten().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            _feed(sha, str(key))
            _feed(sha, value[key])
    elif isinstance(value, (list, tuple)):
        sha.update(f"L{len(value)}".encode())
        for item in value:
            _feed(sha, item)
    else:
        sha.update(f"{type(value).__name__}:{value!r};".encode())


def graph_digest(graph: Graph) -> str:
    return digest([graph.to_text(), {name: graph.params[name] for name in graph.params}])


def metric_name(metric: str | UserMetric) -> str:
    return metric if isinstance(metric, str) else f"{getattr(metric, '__module__', '?')}:{getattr(metric, '__qualname__', repr(metric))}"


def job_key(graph_hash: str, calibration: Any, eval_data: Any, metric: str | UserMetric,
            objectives: Sequence[Objective], seed: int) -> str:
    from .. import __version__  # the package finishes importing after this module

    return digest([__version__, graph_hash, calibration, eval_data, metric_name(metric),
                   [o.label for o in objectives], seed])


class Cache:
    """Candidate records as JSON files, one per (job, spec); written atomically, read back as plain data."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def _path(self, job_key: str, spec: str) -> Path:
        return self.root / job_key[:24] / f"{hashlib.sha256(spec.encode()).hexdigest()[:32]}.json"

    def get(self, job_key: str, spec: str) -> dict[str, Any] | None:
        if self.root is None:
            return None
        path = self._path(job_key, spec)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # absent, or a damaged file: evaluate again
        return record if isinstance(record, dict) and record.get("spec") == spec else None

    def put(self, job_key: str, record: dict[str, Any]) -> None:
        if self.root is None or record.get("transient"):
            return
        with atomic_file(self._path(job_key, record["spec"])) as temporary:
            temporary.write_text(json.dumps(record, sort_keys=True))

    def load_json(self, job_key: str, name: str) -> Any:
        if self.root is None:
            return None
        try:
            return json.loads((self.root / job_key[:24] / name).read_text())
        except (OSError, ValueError):
            return None

    def save_json(self, job_key: str, name: str, value: Any) -> None:
        if self.root is None:
            return
        with atomic_file(self.root / job_key[:24] / name) as temporary:
            temporary.write_text(json.dumps(value))
