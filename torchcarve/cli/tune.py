"""`carve tune GRAPH --calibration … --eval … --max-drop 0.01 --objective ort-latency:8x32 -o best.carve`:
search pipelines for the fastest/smallest graph within an accuracy budget, print the Pareto front."""
from __future__ import annotations

import argparse
import shlex
import sys

from rich.console import Console
from rich.table import Table

from ..api import SAVE_FILES, save
from ..errors import CarveError
from ..tune import METRICS, TuneResult, tune
from .common import cell, load_calibration, read_graph, refuse_overwriting_input


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tune", help="search the fastest pipeline within an accuracy budget")
    parser.add_argument("graph", help="a saved graph directory, .ir file or .onnx file")
    parser.add_argument("-o", "--output", required=True, help="where to write the best graph (a directory)")
    parser.add_argument("--calibration", metavar="FILE|random:N", help="data for the passes (as in carve opt)")
    parser.add_argument("--eval", required=True, metavar="FILE|random:N",
                        help="held-apart data the metric is measured on (same format as --calibration)")
    parser.add_argument("--calibration-batch", type=int, default=None, help="samples per batch of both data sets")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-drop", type=float, help="largest acceptable drop of the metric below the original's")
    budget.add_argument("--budget", type=float, help="lowest acceptable metric value")
    parser.add_argument("--metric", default="cosine",
                        help=f"{', '.join(METRICS)} (to the original's outputs), or module:function(model, eval)")
    parser.add_argument("--objective", action="append", metavar="KIND[:BxS][@THREADS]",
                        help="ort-latency, file-size, params or macs; repeat (or comma-separate) for a Pareto "
                             "front (default: ort-latency,file-size)")
    parser.add_argument("--trials", type=int, default=20, help="candidates to evaluate (default 20)")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes (default 1: this process)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (ORT threads: @N in --objective)")
    parser.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                        help="run candidates as Ray tasks (a local cluster, or the one at ADDRESS)")
    parser.add_argument("--sampler", choices=("tpe", "nsga2"), default="tpe", help="Optuna sampler (default tpe)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search and of randomized passes")
    parser.add_argument("--cache", help="cache directory (default ~/.cache/torchcarve/tune); results resume from it")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = Console(width=None if sys.stdout.isatty() else 160)
    refuse_overwriting_input(args.graph, args.output, SAVE_FILES)
    graph = read_graph(args.graph)
    objectives = [o for text in (args.objective or ["ort-latency,file-size"]) for o in text.split(",") if o]
    result = tune(graph, calibration=load_calibration(args.calibration, graph, args.calibration_batch),
                  eval_data=load_calibration(args.eval, graph, args.calibration_batch), metric=args.metric,
                  budget=args.budget, max_drop=args.max_drop, objective=objectives, trials=args.trials,
                  seed=args.seed, workers=args.workers, ray=args.ray, threads=args.threads, sampler=args.sampler,
                  cache=args.cache)
    console.print(front_table(result))
    console.print(f"{len(result.candidates)} candidates ({result.evaluated} run, {result.cached} from the cache, "
                  f"{len(result.failed)} failed); budget {args.metric} >= {result.budget:.4g}")
    if result.best is None:
        raise CarveError(f"no candidate reached the budget ({args.metric} >= {result.budget:.4g})",
                         hint="allow a larger --max-drop, or more --trials")
    save(result.best.graph, args.output)
    console.print(f"best: {cell(result.best.spec)}")
    console.print(f"re-run: carve opt {cell(shlex.quote(args.graph))} -p {cell(shlex.quote(result.best.spec))} -o OUT")
    console.print(f"wrote {cell(args.output)}")
    return 0


def front_table(result: TuneResult) -> Table:
    """The Pareto front: one row per candidate, best first (spec, metric, objective values)."""
    table = Table(title=f"Pareto front ({len(result.front)} of {len(result.candidates)} candidates)")
    table.add_column("pipeline")
    table.add_column("metric", justify="right")
    for objective in result.objectives:
        table.add_column(objective.label + (f" ({objective.unit})" if objective.unit else ""), justify="right")
    for candidate in result.front:
        values = [f"{candidate.objectives[o.label]:.4g}" for o in result.objectives]
        table.add_row(cell(candidate.spec), f"{candidate.metric:.4f}", *values)
    return table
