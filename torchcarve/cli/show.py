"""`carve show GRAPH`: the text form and a summary (params, MACs, op histogram, signature)."""
from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from ..analysis.cost import graph_cost
from ..errors import CarveError
from ..ir import Graph
from .common import cell, printable, read_graph


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("show", help="print a graph's text form and summary")
    parser.add_argument("graph", help="a saved graph directory, .ir file or .onnx file")
    parser.add_argument("--summary-only", action="store_true", help="print only the summary table")
    parser.add_argument("--svg", metavar="PATH", help="also write the graph's picture as SVG")
    parser.add_argument("--html", metavar="PATH", help="also write the picture as a self-contained HTML page")
    parser.add_argument("--expand", action="append", default=[], metavar="BLOCK",
                        help="draw this repeated block in full (e.g. encoder.layer.3); may repeat")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    graph = read_graph(args.graph)
    console = Console()
    if not args.summary_only:
        console.print(printable(graph.to_text()), markup=False, highlight=False, soft_wrap=True)
    console.print(summary_table(graph))
    _write_pictures(args, graph, console)
    return 0


def _write_pictures(args: argparse.Namespace, graph: Graph, console: Console) -> None:
    from ..draw import draw, draw_html

    if args.expand and not (args.svg or args.html):
        raise CarveError("--expand changes the picture only", hint="add --svg PATH or --html PATH")
    if args.svg:
        draw(graph, args.svg, expand=args.expand)
        console.print(f"wrote {cell(args.svg)}")
    if args.html:
        draw_html(graph, args.html, expand=args.expand)
        console.print(f"wrote {cell(args.html)}")


def summary_table(graph: Graph, title: str | None = None) -> Table:
    """Signature, node count, params, MACs (per batch item) and the op histogram, as a rich table."""
    cost = graph_cost(graph)
    table = Table(title=cell(title or f"@{graph.name}"), show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("inputs", cell(", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)))
    table.add_row("outputs", cell(", ".join(str(v.type) for v in graph.outputs)))
    table.add_row("nodes", f"{len(graph) - len(graph.param_nodes())} ops + {len(graph.param_nodes())} params")
    table.add_row("parameters", f"{cost.params:,}")
    table.add_row("MACs", f"{cost.macs:,}")
    table.add_row("bytes moved", f"{cost.bytes:,}")
    table.add_row("ops", cell(", ".join(f"{op} x{n}" for op, n in graph.op_histogram().most_common())))
    return table
