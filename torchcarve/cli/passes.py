"""`carve passes [NAME]`: every registered pass and named pipeline, or one pass in full."""
from __future__ import annotations

import argparse
import inspect

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import PipelineError
from ..passes import ALIASES, PASSES
from ..passes.base import option_fields, option_text, type_text


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("passes", help="list the passes and their options, or show one in full")
    parser.add_argument("name", nargs="?", help="a pass or named pipeline (e.g. prune); omit to list all")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = Console()
    if args.name is None:
        console.print(_all_passes_table())
        return 0
    if args.name in ALIASES:
        console.print(f"[bold]{args.name}[/]: named pipeline = {escape(ALIASES[args.name])}")
        return 0
    if args.name not in PASSES:
        raise PipelineError(f"no pass named {args.name!r}", hint="valid names: " + ", ".join(sorted(PASSES) + sorted(ALIASES)))
    _print_one_pass(console, args.name)
    return 0


def _options_text(cls: type) -> str:
    return "\n".join(f"{field.replace('_', '-')}: {type_text(tp)} = {option_text(default)}" for field, tp, default in option_fields(cls))


def _all_passes_table() -> Table:
    table = Table(title="passes (carve passes NAME for one in full)")
    for column in ("pass", "options", "what"):
        table.add_column(column)
    for name in sorted(PASSES):
        cls = PASSES[name]
        summary = (inspect.getdoc(cls) or "").split("\n\n")[0]
        table.add_row(name, escape(_options_text(cls)) or "-", escape(summary))
    for name, pipeline in ALIASES.items():
        table.add_row(name, "-", f"named pipeline: {pipeline}")
    return table


def _print_one_pass(console: Console, name: str) -> None:
    """The idea (docstring), each option with its type and default, exactness, and an example."""
    cls = PASSES[name]
    console.print(f"[bold]{name}[/]  ({'exact: outputs unchanged' if cls.exact else 'approximate: reports its error'})")
    for paragraph in (inspect.getdoc(cls) or "").split("\n\n"):
        console.print(escape(" ".join(paragraph.split())) + "\n")
    options = option_fields(cls)
    if options:
        table = Table(title="options")
        for column in ("option", "type", "default"):
            table.add_column(column)
        for field, tp, default in options:
            table.add_row(field.replace("_", "-"), escape(type_text(tp)), escape(option_text(default)))
        console.print(table)
    example = name if not options else f"{name}{{{options[0][0].replace('_', '-')}={option_text(options[0][2])}}}"
    console.print(f"example: carve opt model.carve -p '{escape(example)}' -o out.carve")
