"""Mixed precision from per-layer sensitivity: quantize one layer at a time, measure the output error,
then keep the most sensitive layers in float until the whole model's error is within budget."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ...ir import Graph
from ...progress import track
from ..sequential import run_sequential

# graph, names of layers to quantize -> the quantized copy
Apply = Callable[[Graph, set[str]], Graph]


def output_error(expected: list[list[torch.Tensor]], actual: list[list[torch.Tensor]]) -> float:
    """Relative L2 error ||y_q - y|| / ||y||, the worst over outputs, pooled over batches."""
    worst = 0.0
    for index in range(len(expected[0])):
        diff = sum(float((a[index].double() - e[index].double()).pow(2).sum()) for e, a in zip(expected, actual))
        norm = sum(float(e[index].double().pow(2).sum()) for e in expected)
        worst = max(worst, (diff / max(norm, 1e-30)) ** 0.5)
    return worst


def run_batches(graph: Graph, batches: Sequence[Any], max_memory: int | None = None) -> list[list[torch.Tensor]]:
    """The graph's outputs on every batch: whole, or block by block under max_memory."""
    from ..manager import run_graph

    if max_memory is not None:
        return run_sequential(graph, batches, {}, max_memory=max_memory, keep_outputs=True,
                              description="sensitivity: block by block").outputs
    return [run_graph(graph, (b,) if isinstance(b, torch.Tensor) else tuple(b)) for b in batches]


def layer_sensitivity(graph: Graph, names: list[str], apply: Apply, batches: Sequence[Any],
                      max_memory: int | None = None) -> dict[str, float]:
    """The output error with only each one layer quantized."""
    reference = run_batches(graph, batches, max_memory)
    return {name: output_error(reference, run_batches(apply(graph, {name}), batches, max_memory))
            for name in track(names, "sensitivity: one layer quantized at a time")}


def choose_float_layers(graph: Graph, names: list[str], apply: Apply, batches: Sequence[Any],
                        sensitivity: dict[str, float], max_error: float,
                        max_memory: int | None = None) -> tuple[list[str], float]:
    """Move layers to float, most sensitive first, until the error is <= max_error; (float layers, error)."""
    reference = run_batches(graph, batches, max_memory)
    ranked = sorted(names, key=sensitivity.get, reverse=True)
    kept: list[str] = []
    for next_float in track([*ranked, None], "mixed precision: layers back to float"):
        quantized = {n for n in names if n not in kept}
        error = output_error(reference, run_batches(apply(graph, quantized), batches, max_memory))
        if error <= max_error or next_float is None:
            return kept, error
        kept.append(next_float)
    raise AssertionError("unreachable: the last candidate returns")
