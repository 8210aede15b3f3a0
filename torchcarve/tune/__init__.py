"""`tc.tune`: the fastest (or smallest) pipeline within an accuracy budget, searched over the registered
passes and their options; candidates run here, in a process pool, or on a Ray cluster (docs/tune.md)."""
from .measure import METRICS, Objective, parse_objective
from .search import Candidate, TuneResult, measure_pipelines, tune
from .space import STAGES, SearchSpace, Stage

__all__ = ["METRICS", "STAGES", "Candidate", "Objective", "SearchSpace", "Stage", "TuneResult", "measure_pipelines", "parse_objective", "tune"]
