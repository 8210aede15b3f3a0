"""`tune`: search pipelines for the Pareto front of objectives among candidates within a metric budget.

Optuna proposes pipelines (TPE or NSGA-II, seeded) in batches of BATCH; the batch runs wherever the
executor runs it; the results are told back in proposal order. With the disk cache, a re-run replays
the same proposals and finds every result already there, so an interrupted search resumes and a
finished one returns at once.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import CarveError
from ..ir import Graph
from ..ir.signature import check_batches
from ..passes import optimize
from ..progress import step
from .evaluate import Cache, Job, graph_digest, job_key
from .execute import executor
from .measure import Objective, UserMetric, parse_objective, resolve_metric, run_outputs, score, shaped_inputs
from .space import SearchSpace

BATCH = 4  # candidates proposed before any of them is told back: fixed, so results do not depend on workers
SENSITIVITY_FILE = "sensitivity.json"


@dataclass
class Candidate:
    """One evaluated pipeline: its metric, objective values, and the error when it failed."""

    spec: str
    metric: float | None
    objectives: dict[str, float]
    error: str | None = None
    feasible: bool = False
    graph: Graph | None = None

    def dominates(self, other: "Candidate") -> bool:
        mine, theirs = list(self.objectives.values()), list(other.objectives.values())
        return all(a <= b for a, b in zip(mine, theirs)) and mine != theirs


@dataclass
class TuneResult:
    """The search's outcome: every candidate, the Pareto front of the feasible ones, and the best."""

    candidates: list[Candidate]
    front: list[Candidate]
    best: Candidate | None
    budget: float
    reference: float
    objectives: list[Objective]
    evaluated: int = 0   # candidates run in this call (the rest came from the cache)
    cached: int = 0
    failed: list[Candidate] = field(default_factory=list)


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "torchcarve" / "tune"


def tune(graph: Graph, *, calibration: Any = None, eval_data: Any, metric: str | UserMetric = "cosine",
         budget: float | None = None, max_drop: float | None = None,
         objective: str | Sequence[str] = ("ort-latency", "file-size"), trials: int = 20, seed: int = 0,
         workers: int = 1, ray: bool | str | None = None, threads: int = 1, sampler: str = "tpe",
         space: SearchSpace | None = None, cache: str | Path | None | bool = None) -> TuneResult:
    """Search pipelines of the registered passes for the fastest/smallest graphs scoring >= budget.

    budget: the lowest acceptable metric (or max_drop: below the original's score); objective: one or
    more of ort-latency[:BxS][@THREADS], file-size, params, macs[:BxS]; workers > 1: a process pool;
    ray: True or a cluster address; cache: a directory (None: the user cache, False: none).
    """
    if trials < 1 or workers < 1 or threads < 1:
        raise CarveError("tune needs trials >= 1, workers >= 1 and threads >= 1")
    objectives = _objectives(graph, objective)
    job = _job(graph, calibration, eval_data, resolve_metric(metric), objectives, seed, threads)
    reference = _reference_score(job.metric, graph, job.eval_data)
    budget = _budget(budget, max_drop, reference)
    store = _cache(cache)
    space = space or SearchSpace(sensitive_layers=_sensitive_layers(graph, job.calibration, store, job.key))
    records = _search(job, space, store, trials, seed, budget, executor(job, workers, ray), sampler)
    return _result(records, graph, job.calibration, seed, budget, reference, objectives)


def measure_pipelines(graph: Graph, pipelines: Sequence[str], *, calibration: Any = None, eval_data: Any,
                      metric: str | UserMetric = "cosine", objective: str | Sequence[str] = ("ort-latency", "file-size"),
                      seed: int = 0, threads: int = 1, cache: str | Path | None | bool = False) -> list[Candidate]:
    """Measure given pipelines exactly as `tune` measures its candidates (e.g. hand-picked baselines)."""
    job = _job(graph, calibration, eval_data, resolve_metric(metric), _objectives(graph, objective), seed, threads)
    with step("measuring pipelines", len(pipelines)) as advance:
        records = _run_batch(job, _cache(cache), list(pipelines), executor(job, 1, None), advance)
    return [Candidate(r["spec"], r["metric"], r["objectives"], r["error"]) for r in records]


def _objectives(graph: Graph, texts: str | Sequence[str]) -> list[Objective]:
    objectives = [parse_objective(text) for text in ([texts] if isinstance(texts, str) else texts)]
    if not objectives:
        raise CarveError("tune needs at least one objective", hint="e.g. ort-latency:8x32, file-size")
    for each in objectives:
        if each.kind == "ort-latency":
            shaped_inputs(graph, each.shape)  # a shape that does not fit the graph is an error now, not per candidate
    return objectives


def _job(graph: Graph, calibration: Any, eval_data: Any, metric: str | UserMetric, objectives: list[Objective],
         seed: int, threads: int) -> Job:
    batches = check_batches(graph.inputs, calibration) if calibration is not None else None
    eval_batches = check_batches(graph.inputs, eval_data, "eval batch") if isinstance(metric, str) else eval_data
    key = job_key(graph_digest(graph), batches, eval_batches, metric, objectives, seed)
    return Job(key, graph.to_text(), {name: graph.params[name] for name in graph.params}, batches, eval_batches,
               metric, tuple(objectives), seed, threads)


def _cache(cache: str | Path | None | bool) -> Cache:
    return Cache(None if cache is False else Path(cache) if cache else default_cache())


def _reference_score(metric: str | UserMetric, graph: Graph, eval_data: Any) -> float:
    reference = run_outputs(graph, eval_data) if isinstance(metric, str) else None
    return score(metric, graph, eval_data, reference)


def _budget(budget: float | None, max_drop: float | None, reference: float) -> float:
    if (budget is None) == (max_drop is None):
        raise CarveError("tune needs exactly one of budget= (lowest acceptable metric) or max_drop=")
    return budget if budget is not None else reference - max_drop


def _sensitive_layers(graph: Graph, calibration: Any, store: Cache, key: str) -> tuple[str, ...]:
    """Quantizable layers, most sensitive first (quantize{sensitivity=true} on the fused graph), cached."""
    cached = store.load_json(key, SENSITIVITY_FILE)
    if isinstance(cached, list) and all(isinstance(name, str) for name in cached):
        return tuple(cached)
    if not calibration:
        return ()
    try:
        report = optimize(graph, "fuse,quantize{sensitivity=true}", calibration=calibration).report
    except CarveError:
        return ()  # nothing quantizes here: the quantize stage's candidates will record why
    layers = report[-1].stats.get("layers") or {}
    errors = {name: row["error alone"] for name, row in layers.items() if "error alone" in row}
    ranked = sorted(errors, key=errors.get, reverse=True)
    store.save_json(key, SENSITIVITY_FILE, ranked)
    return tuple(ranked)


def _search(job: Job, space: SearchSpace, store: Cache, trials: int, seed: int, budget: float,
            runner: Any, sampler: str) -> list[dict[str, Any]]:
    optuna = _optuna()
    study = optuna.create_study(directions=["minimize"] * len(job.objectives), sampler=_sampler(optuna, sampler, seed))
    for point in space.starting_points()[:trials]:
        study.enqueue_trial(point, skip_if_exists=True)
    records: list[dict[str, Any]] = []
    try:
        with step("tune: candidates", trials) as advance:
            while len(records) < trials:
                asked = [study.ask() for _ in range(min(BATCH, trials - len(records)))]
                specs = [space.pipeline(trial) for trial in asked]
                batch = _run_batch(job, store, specs, runner, advance)
                for trial, record in zip(asked, batch):
                    _tell(optuna, study, trial, record, budget, job.objectives)
                records += batch
    finally:
        runner.close()
    return records


def _run_batch(job: Job, store: Cache, specs: list[str], runner: Any, advance: Any) -> list[dict[str, Any]]:
    """Records for `specs` in order: from the cache where present, the rest run (each distinct spec once)."""
    found = {spec: store.get(job.key, spec) for spec in dict.fromkeys(specs)}
    for record in found.values():
        if record is not None:
            record["cached"] = True
    missing = [spec for spec, record in found.items() if record is None]
    advance(len(specs) - len(missing))
    for record in runner.run(missing, advance):
        store.put(job.key, record)
        found[record["spec"]] = record
    return [dict(found[spec]) for spec in specs]


def _tell(optuna: Any, study: Any, trial: Any, record: dict[str, Any], budget: float,
          objectives: Sequence[Objective]) -> None:
    if record["error"]:
        trial.set_user_attr("error", record["error"])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    trial.set_user_attr("constraint", [budget - record["metric"]])
    study.tell(trial, [record["objectives"][o.label] for o in objectives])


def _constraint(trial: Any) -> list[float]:
    return trial.user_attrs["constraint"]


def _sampler(optuna: Any, name: str, seed: int) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constraints and multivariate are marked experimental
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=BATCH * 2,
                                              constraints_func=_constraint)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=BATCH * 2, constraints_func=_constraint)
    raise CarveError(f"unknown sampler '{name}'", hint="use tpe or nsga2")


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as e:
        raise CarveError("tune needs Optuna", hint='install it with: pip install "torchcarve[tune]"') from e
    optuna.logging.set_verbosity(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _result(records: list[dict[str, Any]], graph: Graph, calibration: Any, seed: int, budget: float,
            reference: float, objectives: list[Objective]) -> TuneResult:
    unique: dict[str, dict[str, Any]] = {}
    for record in records:
        unique.setdefault(record["spec"], record)  # a spec proposed again reads its first run from the cache
    candidates = [Candidate(r["spec"], r["metric"], r["objectives"], r["error"],
                            r["error"] is None and r["metric"] >= budget) for r in unique.values()]
    feasible = [c for c in candidates if c.feasible]
    front = sorted((c for c in feasible if not any(o.dominates(c) for o in feasible)),
                   key=lambda c: (list(c.objectives.values()), c.spec))
    best = front[0] if front else None
    if best is not None:
        best.graph = optimize(graph, best.spec, calibration=calibration, seed=seed).graph
    return TuneResult(candidates, front, best, budget, reference, objectives,
                      evaluated=sum(1 for r in unique.values() if not r.get("cached")),
                      cached=sum(1 for r in unique.values() if r.get("cached")),
                      failed=[c for c in candidates if c.error])
