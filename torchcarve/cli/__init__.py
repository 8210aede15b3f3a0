"""`carve`: the command-line tool. One module per subcommand, each with `register(subparsers)`.

Errors print one line and a hint and exit 1; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

import torch

from .. import __version__
from ..errors import CarveError
from ..progress import show_progress
from .common import printable

# subcommand modules, in the order `carve --help` lists them
COMMANDS = ["capture", "show", "opt", "tune", "passes", "export", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carve", description="Make trained neural networks smaller and faster.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"carve (torchcarve) {__version__}, torch {torch.__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with show_progress():
            return args.run(args) or 0
    except CarveError as e:
        if args.debug:
            raise
        message, _, hint = str(e).partition("\n  hint: ")
        print(f"carve {args.command}: error: {printable(message.splitlines()[0])}", file=sys.stderr)
        if hint:
            print(f"  hint: {printable(hint)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"carve {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
