"""Where candidates run: in this process, in a local process pool, or as Ray tasks.

Every executor maps specs to records in the order given, so the search sees the same results (and
proposes the same next candidates) wherever they ran. A worker lost mid-candidate gives a record
marked `transient`, which is not cached: the next run evaluates it again.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Protocol, Sequence

from ..errors import CarveError
from .evaluate import Job, evaluate

Advance = Callable[[int], None]


class Executor(Protocol):
    def run(self, specs: Sequence[str], advance: Advance) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


def lost(spec: str, error: BaseException) -> dict[str, Any]:
    """The record of a candidate whose worker died or could not be reached."""
    return {"spec": spec, "metric": None, "objectives": {}, "transient": True,
            "error": f"worker lost: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}


class InProcess:
    """One candidate after another, here."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def run(self, specs: Sequence[str], advance: Advance) -> list[dict[str, Any]]:
        records = []
        for spec in specs:
            records.append(evaluate(self.job, spec))
            advance(1)
        return records

    def close(self) -> None:
        pass


_WORKER_JOB: list[Job] = []  # the job a pool worker was started with


def _start_worker(job: Job) -> None:
    _WORKER_JOB[:] = [job]


def _evaluate_in_worker(spec: str) -> dict[str, Any]:
    return evaluate(_WORKER_JOB[0], spec)


class Pool:
    """`workers` spawned processes, each given the job once; a broken pool is replaced for the next batch."""

    def __init__(self, job: Job, workers: int) -> None:
        self.job, self.workers = job, workers
        self.pool: ProcessPoolExecutor | None = None

    def run(self, specs: Sequence[str], advance: Advance) -> list[dict[str, Any]]:
        if self.pool is None:
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_start_worker, initargs=(self.job,))
        futures = [self.pool.submit(_evaluate_in_worker, spec) for spec in specs]
        records = []
        for spec, future in zip(specs, futures):
            try:
                records.append(future.result())
            except Exception as e:  # noqa: BLE001  (a dead worker: BrokenProcessPool and the like)
                records.append(lost(spec, e))
                self.close()
            advance(1)
        return records

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


class Ray:
    """Candidates as Ray tasks on the cluster at `address` (None: a local one started here)."""

    def __init__(self, job: Job, address: str | None) -> None:
        try:
            import ray
        except ImportError as e:
            raise CarveError("--ray needs Ray", hint='install it with: pip install "torchcarve[ray]"') from e
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
        self.ray = ray
        self.job_ref = ray.put(job)
        self.task = ray.remote(num_cpus=job.threads, max_retries=1)(evaluate)

    def run(self, specs: Sequence[str], advance: Advance) -> list[dict[str, Any]]:
        refs = [self.task.remote(self.job_ref, spec) for spec in specs]
        records = []
        for spec, ref in zip(specs, refs):
            try:
                records.append(self.ray.get(ref))
            except Exception as e:  # noqa: BLE001  (a lost node or worker)
                records.append(lost(spec, e))
            advance(1)
        return records

    def close(self) -> None:
        pass


def executor(job: Job, workers: int, ray: bool | str | None) -> Executor:
    """Ray when `ray` is truthy (a string is the cluster address), a pool for workers > 1, else here."""
    if ray:
        return Ray(job, ray if isinstance(ray, str) else None)
    if workers > 1:
        return Pool(job, workers)
    return InProcess(job)
