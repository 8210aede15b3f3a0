"""Helpers shared by the subcommands: reading a GRAPH argument, parsing shapes, printing names safely."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from rich.markup import escape

from ..errors import CarveError, FileFormatError, OutputPathError
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


# C0 controls but newline, DEL, C1 controls (ESC starts terminal sequences), and the invisible
# format characters that reorder or hide text (bidi overrides, zero-width)
UNPRINTABLE_RE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def printable(text: object) -> str:
    """`text` safe to write to a terminal: unprintable characters shown as \\xNN or \\uNNNN, newlines kept.

    Every name from a model file passes through here on its way to the terminal."""
    return UNPRINTABLE_RE.sub(_escape_char, str(text))


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def cell(text: object) -> str:
    """`printable(text)` for a rich table cell or markup string: rich markup escaped too."""
    return escape(printable(text))


def refuse_overwriting_input(graph: str, output: str, files: Sequence[str] = ()) -> None:
    """An output that would write the input graph (its path, or one of `files` of a directory output
    landing on or inside it) is an error: inputs are never modified."""
    from ..api import WEIGHTS_FILE

    source = Path(graph).resolve()
    read = [source, source.with_name(WEIGHTS_FILE)] if source.suffix == ".ir" else [source]
    target = Path(output).resolve()
    for path in [target, *(target / name for name in files)]:
        if any(path == r or r in path.parents for r in read):
            raise OutputPathError(f"{output} would write over the input graph {graph}",
                                  hint="write the output to another path; inputs are never modified")


def parse_shape(text: str) -> tuple[int, ...]:
    """'1x3x32x32' -> (1, 3, 32, 32)."""
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise CarveError(f"bad input shape '{text}'", hint="write shapes like 1x3x32x32") from None
    if not dims or any(d <= 0 for d in dims):
        raise CarveError(f"bad input shape '{text}': dims must be positive", hint="write shapes like 1x3x32x32")
    return dims


def load_calibration(spec: str | None, graph: Graph, batch_size: int | None = None) -> list[tuple] | None:
    """Calibration batches for passes that need data, from `--calibration`:

    - `random:N`: N batches of random inputs matching the graph's input types;
    - a `.safetensors` file with one tensor per graph input (named like the input, or input0,
      input1, ...), samples along dim 0, cut into batches of `batch_size` (default: the graph's
      fixed batch size when every input has the same static dim 0, else 8).
    """
    if spec is None:
        return None
    batch_size = batch_size or _fixed_batch(graph) or 8
    if spec.startswith("random:"):
        from ..passes.manager import random_inputs

        count = spec.removeprefix("random:")
        if not count.isdigit() or int(count) == 0:
            raise CarveError(f"bad --calibration '{spec}'", hint="write random:N with N >= 1, or a .safetensors file")
        return [tuple(random_inputs(graph, seed=k, batch=batch_size)) for k in range(int(count))]
    return _calibration_file(Path(spec), graph, batch_size)


def _fixed_batch(graph: Graph) -> int | None:
    firsts = {v.type.shape[0] for v in graph.inputs if v.type.rank}
    first = firsts.pop() if len(firsts) == 1 else None
    return first if isinstance(first, int) and first > 0 else None


def _calibration_file(path: Path, graph: Graph, batch_size: int) -> list[tuple]:
    from ..ir.params import ParamStore

    if not path.is_file():
        raise FileFormatError(f"{path}: no such calibration file", hint="give a .safetensors file or random:N")
    store = ParamStore.load(path)
    tensors = []
    for index, value in enumerate(graph.inputs):
        name = value.name if value.name in store else f"input{index}"
        if name not in store:
            raise CarveError(f"{path} has no tensor for graph input %{value.name}",
                             hint=f"name the tensors {', '.join(v.name for v in graph.inputs)} (or input0, input1, ...)")
        tensors.append(store[name])
    samples = {t.shape[0] for t in tensors if t.dim() > 0}
    if len(samples) != 1:
        raise CarveError(f"{path}: the inputs hold different sample counts {sorted(samples)} along dim 0")
    return [tuple(t[start:start + batch_size] for t in tensors) for start in range(0, samples.pop(), batch_size)]
