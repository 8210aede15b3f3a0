"""`tc.tune`: a seeded search is reproducible wherever candidates run, resumes from its cache, records
failing candidates, and returns a Pareto front of candidates within the budget."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

import torchcarve as tc
from tests.models import cnn_bn, mlp
from torchcarve.tune import SearchSpace, Stage, parse_objective
from torchcarve.tune.measure import measure

pytest.importorskip("optuna")

OBJECTIVES = ["file-size", "params"]  # deterministic, so whole fronts can be compared exactly


@pytest.fixture(scope="module")
def setup() -> tuple[tc.Graph, list, list]:
    model, (x,) = cnn_bn()
    graph = tc.capture(model, (x,))
    generator = torch.Generator().manual_seed(0)
    calibration = [(torch.randn(x.shape, generator=generator),) for _ in range(2)]
    evaluation = [(torch.randn(x.shape, generator=generator),) for _ in range(2)]
    return graph, calibration, evaluation


def run(setup, **options) -> tc.TuneResult:
    graph, calibration, evaluation = setup
    options = {"budget": 0.95, "objective": OBJECTIVES, "trials": 8, "seed": 0, "cache": False, **options}
    return tc.tune(graph, calibration=calibration, eval_data=evaluation, **options)


def rows(candidates) -> list[tuple]:
    return [(c.spec, round(c.metric, 9) if c.metric is not None else None, c.objectives, c.error) for c in candidates]


def test_same_seed_gives_the_same_candidates_and_front(setup) -> None:
    first, second = run(setup), run(setup)
    assert rows(first.candidates) == rows(second.candidates)
    assert rows(first.front) == rows(second.front) and first.front
    assert rows(run(setup, seed=1).candidates) != rows(first.candidates)


def test_front_holds_the_non_dominated_candidates_within_budget(setup) -> None:
    result = run(setup)
    feasible = [c for c in result.candidates if c.error is None and c.metric >= result.budget]
    assert any(c.metric < result.budget for c in result.candidates if c.error is None)  # the budget did cut
    assert {c.spec for c in result.front} <= {c.spec for c in feasible}
    for candidate in feasible:
        dominated = any(all(o.objectives[k] <= candidate.objectives[k] for k in OBJECTIVES)
                        and o.objectives != candidate.objectives for o in feasible)
        assert dominated != (candidate.spec in {c.spec for c in result.front})
    assert result.best is result.front[0]


def test_best_graph_is_its_spec_rerun_and_measures_as_reported(setup) -> None:
    graph, calibration, _ = setup
    best = run(setup).best
    rerun = tc.optimize(graph, best.spec, calibration=calibration).graph
    assert rerun.to_text() == best.graph.to_text()
    assert measure([parse_objective(o) for o in OBJECTIVES], best.graph) == best.objectives
    x = calibration[0][0]
    assert best.metric >= 0.95 and tc.to_torch(best.graph)(x).shape == tc.to_torch(graph)(x).shape


def test_process_pool_gives_the_same_front(setup) -> None:
    assert rows(run(setup, workers=2).candidates) == rows(run(setup).candidates)


def test_local_ray_cluster_gives_the_same_front(setup) -> None:
    ray = pytest.importorskip("ray")
    try:
        assert rows(run(setup, ray=True).candidates) == rows(run(setup).candidates)
    finally:
        ray.shutdown()


def test_an_interrupted_search_resumes_from_its_cache(setup, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    partial = run(setup, trials=4, cache=cache)       # the run "killed" after 4 candidates
    assert (partial.evaluated, partial.cached) == (len(partial.candidates), 0)
    resumed = run(setup, trials=8, cache=cache)
    assert resumed.cached == len(partial.candidates)  # the first four were not run again
    assert resumed.evaluated == len(resumed.candidates) - resumed.cached > 0
    assert rows(resumed.candidates) == rows(run(setup, trials=8).candidates)
    again = run(setup, trials=8, cache=cache)
    assert again.evaluated == 0 and rows(again.front) == rows(resumed.front)


def test_a_failing_candidate_is_recorded_not_raised(setup, tmp_path: Path) -> None:
    # int4 works only with mode=weight-only: the other modes fail inside the pass
    space = SearchSpace(stages=(Stage("quantize", {"mode": "all", "dtype": ("int4",)}),))
    result = run(setup, space=space, trials=6, cache=tmp_path)
    assert result.failed and all("int4 is supported only with mode=weight-only" in c.error for c in result.failed)
    assert all(c.metric is None and not c.feasible for c in result.failed)
    assert result.front and all("weight-only" in c.spec or "quantize" not in c.spec for c in result.front)
    assert run(setup, space=space, trials=6, cache=tmp_path).evaluated == 0  # failures are cached too


def _accuracy(model: torch.nn.Module, data: list, labels: list) -> float:
    hits = sum(int((model(*batch).argmax(-1) == y).sum()) for batch, y in zip(data, labels))
    return hits / sum(len(y) for y in labels)


def test_user_metric_and_max_drop(setup) -> None:
    graph, _, evaluation = setup
    with torch.no_grad():
        labels = [tc.to_torch(graph)(*batch).argmax(-1) for batch in evaluation]
    metric = functools.partial(_accuracy, labels=labels)
    result = run(setup, metric=metric, budget=None, max_drop=0.5, trials=4)
    assert result.reference == 1.0 and result.budget == 0.5
    assert all(c.metric in (0.0, 0.25, 0.5, 0.75, 1.0) for c in result.candidates if c.error is None)


def test_latency_objective_at_a_shape() -> None:
    model, (x,) = mlp()
    graph = tc.capture(model, (x,), dynamic_batch=True)
    data = [(torch.randn(4, 16),)]
    result = tc.tune(graph, calibration=data, eval_data=data, budget=0.0, objective="ort-latency:8@1",
                     trials=2, cache=False)
    assert all(c.objectives["ort-latency:8"] > 0 for c in result.candidates)


@pytest.mark.parametrize("options, message", [
    ({"objective": "speed"}, "unknown objective 'speed'"),
    ({"objective": "ort-latency:8"}, "does not fit input"),          # the graph's batch is fixed to 2
    ({"budget": None}, "exactly one of budget"),
    ({"metric": "nosuchmodule:fn"}, "cannot import"),
    ({"metric": "accuracy"}, "unknown metric"),
    ({"sampler": "grid"}, "unknown sampler"),
    ({"trials": 0}, "trials >= 1"),
    ({"objective": []}, "at least one objective"),
])
def test_bad_settings_are_carve_errors(setup, options: dict, message: str) -> None:
    with pytest.raises(tc.CarveError, match=message):
        run(setup, **options)


@pytest.mark.parametrize("stage, message", [
    (Stage("nosuchpass", {}), "no pass named"),
    (Stage("prune", {"speed": (0, 1)}), "has no option 'speed'"),
    (Stage("prune", {"ratio": "all"}), "not a choice"),
    (Stage("prune", {"criterion": ("l1", "l7")}), "not a subset"),
])
def test_search_space_is_checked_against_the_pass_options(stage: Stage, message: str) -> None:
    with pytest.raises(tc.CarveError, match=message):
        SearchSpace(stages=(stage,))


def test_builtin_metrics_on_known_outputs() -> None:
    from torchcarve.tune.measure import cosine, rel_l2, top1

    expected = [[torch.tensor([[1.0, 0.0], [0.0, 1.0]])]]
    assert cosine(expected, expected) == pytest.approx(1.0) and rel_l2(expected, expected) == pytest.approx(1.0)
    swapped = [[torch.tensor([[0.0, 1.0], [0.0, 1.0]])]]
    assert cosine(expected, swapped) == pytest.approx(0.5) and top1(expected, swapped) == pytest.approx(0.5)
    assert rel_l2(expected, swapped) == pytest.approx(1.0 - (2 / 2) ** 0.5)


def test_in_process_run_leaves_torch_threads_alone(setup) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run(setup, trials=1, threads=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
