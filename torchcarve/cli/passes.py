"""`carve passes`: every registered pass and named pipeline, with options, types, defaults and docs."""
from __future__ import annotations

import argparse
import inspect

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..passes import ALIASES, PASSES
from ..passes.base import option_fields, type_text


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("passes", help="list the passes and their options")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = Console()
    table = Table(title="passes")
    for column in ("pass", "options", "what"):
        table.add_column(column)
    for name in sorted(PASSES):
        cls = PASSES[name]
        options = "\n".join(f"{field.replace('_', '-')}: {type_text(tp)} = {default!r}"
                            for field, tp, default in option_fields(cls))
        table.add_row(name, escape(options) or "-", escape(inspect.getdoc(cls) or ""))
    for name, pipeline in ALIASES.items():
        table.add_row(name, "-", f"named pipeline: {pipeline}")
    console.print(table)
    return 0
