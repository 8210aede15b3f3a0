"""Helpers shared by the subcommands: reading a GRAPH argument, parsing shapes."""
from __future__ import annotations

from pathlib import Path

from ..errors import CarveError, FileFormatError
from ..ir import Graph

# file suffix -> reader; the ONNX frontend adds ".onnx"
GRAPH_READERS: dict[str, str] = {".onnx": "torchcarve.frontends.onnx:load_onnx"}


def read_graph(path: str) -> Graph:
    """Load a GRAPH argument: a `tc.save` directory, a `.ir` file, or any suffix in GRAPH_READERS."""
    import importlib

    from ..api import load

    file = Path(path)
    if not file.exists():
        raise FileFormatError(f"{path}: no such file or directory")
    reader = GRAPH_READERS.get(file.suffix.lower())
    if reader is None:
        return load(file)
    module, _, function = reader.partition(":")
    return getattr(importlib.import_module(module), function)(file)


def parse_shape(text: str) -> tuple[int, ...]:
    """'1x3x32x32' -> (1, 3, 32, 32)."""
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise CarveError(f"bad input shape '{text}'", hint="write shapes like 1x3x32x32") from None
    if not dims or any(d <= 0 for d in dims):
        raise CarveError(f"bad input shape '{text}': dims must be positive", hint="write shapes like 1x3x32x32")
    return dims
