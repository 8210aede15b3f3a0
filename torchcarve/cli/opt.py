"""`carve opt GRAPH -p PIPELINE -o OUT`: run a pass pipeline and print what each pass did."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rich.console import Console
from rich.table import Table

from ..api import SAVE_FILES, save
from ..passes import PassReport, optimize
from ..passes.quantize.report import byte_size
from .common import cell, load_calibration, printable, read_graph, refuse_overwriting_input


WIDTH_WHEN_PIPED = 160  # logs and pipes get whole layer names, not rich's 80-column default


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("opt", help="run a pass pipeline over a graph")
    parser.add_argument("graph", help="a saved graph directory, .ir file or .onnx file")
    parser.add_argument("-p", "--pipeline", required=True, help='passes, e.g. "fuse,dce" (see `carve passes`)')
    parser.add_argument("-o", "--output", required=True, help="where to write the optimized graph (a directory)")
    parser.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass")
    parser.add_argument("--time-passes", action="store_true", help="add a per-pass time column and total")
    parser.add_argument("--check-numerics", action="store_true",
                        help="run the graph before/after each pass on random inputs; exact passes must match")
    parser.add_argument("--seed", type=int, default=0, help="seed for random inputs and randomized passes")
    parser.add_argument("--calibration", metavar="FILE|random:N",
                        help="data for passes that need it (quantize static, prune taylor, low-rank whitened): a "
                             ".safetensors file with one tensor per graph input, samples along dim 0, or random:N")
    parser.add_argument("--report", metavar="HTML", help="write an HTML report: pictures before/after every pass, "
                        "per-layer tables, charts (keeps a copy of the graph per pass while running)")
    parser.add_argument("--calibration-batch", type=int, default=None,
                        help="samples per calibration batch (default: the graph's fixed batch size, else 8)")
    parser.add_argument("--max-memory", metavar="SIZE", default=None,
                        help='weights to hold in memory, e.g. "4GB": the rest are read per use from the input\'s '
                             "files and new ones spilled to a temporary folder (docs/big-models.md)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = Console(width=None if sys.stdout.isatty() else WIDTH_WHEN_PIPED)
    refuse_overwriting_input(args.graph, args.output, SAVE_FILES)
    graph = read_graph(args.graph)
    print_ir = (lambda text: console.print(printable(text), markup=False, highlight=False, soft_wrap=True)) \
        if args.print_ir_after_all else None
    calibration = load_calibration(args.calibration, graph, args.calibration_batch)
    result = optimize(graph, args.pipeline, calibration=calibration, check_numerics=args.check_numerics,
                      print_ir=print_ir, seed=args.seed, report=bool(args.report), max_memory=args.max_memory)
    save(result.graph, args.output)
    if args.report:
        result.report.to_html(args.report, title=f"carve opt {args.graph}: {args.pipeline}")
    console.print(report_table(result.report, timings=args.time_passes))
    for line in result.report:
        if line.stats.get("layers"):
            console.print(layers_table(line.spec, line.stats["layers"]))
    console.print(f"wrote {cell(args.output)}" + (f" and {cell(args.report)}" if args.report else ""))
    return 0


def report_table(report: Sequence[PassReport], timings: bool = False, title: str = "passes") -> Table:
    """One row per pass: changed, nodes/params/MACs before -> after, stats, peak RSS and weight bytes read /
    written (and time, max error when known)."""
    table = Table(title=title)
    for column in ("pass", "changed", "nodes", "params", "MACs", "stats"):
        table.add_column(column, justify="right" if column in ("nodes", "params", "MACs") else "left",
                         no_wrap=column == "pass")
    table.add_column("peak RSS", justify="right")
    table.add_column("read / written", justify="right")
    checked = any(line.max_error is not None for line in report)
    if checked:
        table.add_column("max |Δ|", justify="right")
    if timings:
        table.add_column("ms", justify="right")
    for line in report:
        row = [cell(line.spec), "yes" if line.changed else "-", _arrow(line.nodes), _arrow(line.params),
               _arrow(line.macs), cell(stats_text(line.stats)),
               "-" if line.peak_memory is None else byte_size(line.peak_memory),
               f"{byte_size(line.bytes_read)} / {byte_size(line.bytes_written)}"]
        row += [f"{line.max_error:.2g}"] if checked else []
        row += [f"{line.seconds * 1e3:.1f}"] if timings else []
        table.add_row(*row)
    if timings:
        table.caption = f"total {sum(line.seconds for line in report) * 1e3:.1f} ms"
    return table


def layers_table(spec: str, layers: Sequence[dict] | dict[str, dict]) -> Table:
    """A pass's per-layer rows (a list of dicts, or a dict layer name -> dict): one column per key,
    [before, after] pairs shown as arrows."""
    rows = [{"layer": name, **row} for name, row in layers.items()] if isinstance(layers, dict) else list(layers)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    table = Table(title=f"{cell(spec)}: per layer")
    for column in columns:
        table.add_column(cell(column), justify="left" if column in ("layer", "kind") else "right")
    for row in rows:
        table.add_row(*(_cell(row.get(column, "")) for column in columns))
    return table


SHOWN_ELSEWHERE = {"layers", "params", "macs"}  # per-layer table and the params/MACs columns


def stats_text(stats: dict) -> str:
    """A pass's stats as short readable text: `pruned 4 of 20 groups`-style pairs, arrows, counts."""
    return ", ".join(f"{key.replace('_', ' ')} {_stat(value)}" for key, value in stats.items()
                     if value and key not in SHOWN_ELSEWHERE)


def _stat(value: object) -> str:
    if isinstance(value, dict):  # reason -> count, or name -> reason: how many, and the reasons in short
        if all(isinstance(v, int) for v in value.values()):
            return "; ".join(f"{count} × {reason}" for reason, count in value.items())
        return f"{len(value)} ({', '.join(list(value)[:3])}{', …' if len(value) > 3 else ''})"
    return _cell(value)


def _cell(value: object) -> str:
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return _arrow(tuple(value))
    return f"{value:.3g}" if isinstance(value, float) else cell(value)


def _arrow(pair: tuple[int, int]) -> str:
    before, after = pair
    return f"{before:,}" if before == after else f"{before:,} → {after:,}"
