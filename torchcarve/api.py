"""The public API: capture, text form, save/load, backends, compile."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .backends.torch import to_torch
from .errors import CarveError, FileFormatError
from .fileio import atomic_directory, committed_file
from .frontends import capture
from .ir import Graph, ParamStore, parse, verify

# to_onnx(contrib=...) -> the passes that rewrite the graph into that runtime's fused ops
CONTRIB_PASSES = {"onnxruntime": "simplify,fuse-attention,ort-contrib"}
GRAPH_FILE = "graph.ir"
WEIGHTS_FILE = "weights.safetensors"
SAVE_FILES = (GRAPH_FILE, WEIGHTS_FILE)   # what `save` writes; the first names the rest (see fileio)


def save(graph: Graph, path: str | Path) -> Path:
    """Write `graph` to a directory: graph.ir (text form) + weights.safetensors, each replaced atomically;
    other files in the directory are left alone (docs/safety-outputs.md)."""
    path = Path(path)
    with atomic_directory(path, SAVE_FILES) as staging:
        (staging / GRAPH_FILE).write_text(graph.to_text())
        graph.params.save(staging / WEIGHTS_FILE)
    return path


def load(path: str | Path) -> Graph:
    """Read a directory written by `save` (or a bare .ir file); verifies the result."""
    path = Path(path)
    if not path.exists():
        raise FileFormatError(f"{path}: no such file or directory")
    text_path = path / GRAPH_FILE if path.is_dir() else path
    weights_path = committed_file(path, WEIGHTS_FILE, GRAPH_FILE) if path.is_dir() else path.with_name(WEIGHTS_FILE)
    if not text_path.is_file():
        raise FileFormatError(f"{path}: no {GRAPH_FILE} inside", hint="expected a directory written by tc.save")
    try:
        text = text_path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise FileFormatError(f"{text_path}: cannot read IR text ({e})") from e
    params = ParamStore.load(weights_path) if weights_path.is_file() else ParamStore()
    graph = parse(text, params=params, verify=False)
    verify(graph, check_params=True)
    return graph


def to_onnx(graph: Graph, path: str | Path | None = None, opset: int | None = None,
            contrib: str | None = None, external_data: bool | None = None) -> Any:
    """Lower `graph` to ONNX (`torchcarve.backends.onnx.to_onnx`); returns the ModelProto.

    contrib="onnxruntime" first rewrites a copy of the graph with `simplify,fuse-attention,ort-contrib`, so the
    file holds ONNX Runtime's fused com.microsoft kernels (SkipLayerNormalization, BiasGelu/FastGelu,
    Attention/QAttention) wherever the structure allows; None writes standard ONNX ops only (docs/onnx.md).
    external_data=True writes the weights to `path`.data one tensor at a time (docs/big-models.md).
    """
    from .backends.onnx import to_onnx as lower

    if contrib is not None:
        if contrib not in CONTRIB_PASSES:
            raise CarveError(f"contrib={contrib!r} is not known; the choices are: {', '.join(CONTRIB_PASSES)}",
                             hint="leave contrib unset for standard ONNX ops only")
        from .passes import optimize

        graph = optimize(graph, CONTRIB_PASSES[contrib]).graph
    return lower(graph, path, opset=opset, external_data=external_data)


@dataclass
class Compiled:
    """What `compile` returns: the graph, the PyTorch module running it, and the pass report."""

    graph: Graph
    module: torch.nn.Module
    report: list[Any] = field(default_factory=list)

    def to_onnx(self, path: str | Path | None = None, opset: int | None = None, contrib: str | None = None,
                external_data: bool | None = None) -> Any:
        """Write the compiled graph as ONNX (see `to_onnx`); returns the ModelProto."""
        return to_onnx(self.graph, path, opset=opset, contrib=contrib, external_data=external_data)


def compile(model: torch.nn.Module, example_inputs: Any, pipeline: str = "", *, method: str = "auto",
            dynamic_batch: bool = False, dynamic: dict | None = None, calibration: Any = None,
            weights: str = "model", checkpoint: str | Path | None = None,
            max_memory: int | str | None = None) -> Compiled:
    """Capture `model`, run `pipeline` over it (calibration checked against the graph's inputs),
    and build the PyTorch module of the result. dynamic_batch/dynamic: see docs/dynamic-shapes.md;
    weights/checkpoint/max_memory (a meta model, its weights on disk, a memory budget): docs/big-models.md."""
    graph = capture(model, example_inputs, method=method, dynamic_batch=dynamic_batch, dynamic=dynamic,
                    weights=weights, checkpoint=checkpoint)
    report: list[Any] = []
    if pipeline:
        from .passes import optimize

        result = optimize(graph, pipeline, calibration=calibration, max_memory=max_memory)
        graph, report = result.graph, result.report
    return Compiled(graph, to_torch(graph), report)
