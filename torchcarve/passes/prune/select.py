"""Importance criteria and budgets: which units of which groups to remove.

Importance of a unit sums a per-weight score (|w|, w^2, |w * dL/dw|, BN |gamma|, random) over every
coupled weight slice. A budget removes a fraction of channels, parameters, MACs or measured latency:
one scalar (a per-group fraction for `local`, a threshold on mean-normalised importance for
`global`) is bisected until the cost model says the target is met; per-group caps and rounding
to hardware-friendly channel multiples apply at every step.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Callable, Sequence

import torch

from ...analysis.cost import node_cost
from ...ir import Graph, Value
from ...ir.node import Node
from ...ir.ops import get_op
from ...ir.types import attr_symbols
from ...opset.prune_rules import axis_sums, resized
from ...progress import track
from .groups import Group
from .rewrite import Removal, kept_indices

BN_OPS = {"aten.batch_norm", "aten._native_batch_norm_legit_no_training"}


# ---- importance --------------------------------------------------------------------------------

def weight_scores(graph: Graph, criterion: str, calibration: Sequence | None, seed: int) -> dict[str, torch.Tensor]:
    """Per-weight element scores (same shape as the weight) for trainable float weights."""
    types = {node.attrs["name"]: node.output.type for node in graph.param_nodes()}
    names = [n for n, t in types.items() if n in graph.params.trainable and t.torch_dtype.is_floating_point]
    if criterion == "taylor":
        grads = _gradients(graph, calibration or ())
        return {n: (graph.params[n] * grads[n]).abs() for n in names if n in grads}
    if criterion == "random":
        generator = torch.Generator().manual_seed(seed)
        return {n: torch.rand(graph.params[n].shape, generator=generator) for n in names}
    if criterion == "bn-scale":
        return _LazyScores(graph, [n for n in _bn_weights(graph) if n in names], 1)
    return _LazyScores(graph, names, 2 if criterion == "l2" else 1)


class _LazyScores(Mapping):
    """|w|^power computed when read, so scoring never holds a second copy of every weight (nor the
    weights: a file-backed one is released once scored)."""

    def __init__(self, graph: Graph, names: Sequence[str], power: int) -> None:
        self.graph, self.names, self.power = graph, dict.fromkeys(names), power

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.names:
            raise KeyError(name)
        score = self.graph.params[name].abs()
        self.graph.params.release(name)
        return score.pow_(self.power) if self.power != 1 else score

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _bn_weights(graph: Graph) -> set[str]:
    return {node.inputs[1].producer.attrs["name"] for node in graph.nodes
            if node.op in BN_OPS and len(node.inputs) > 1 and node.inputs[1].producer is not None
            and node.inputs[1].producer.op == "param"}


def _gradients(graph: Graph, calibration: Sequence) -> dict[str, torch.Tensor]:
    """dL/dw over the calibration batches, L = mean squared output (no labels needed)."""
    from ...backends.torch import to_torch

    module = to_torch(graph)
    attributes = dict(module.named_parameters())
    for batch in track(calibration, "taylor importance"):
        inputs = (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)
        outputs = module(*inputs)
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        loss = sum(o.float().pow(2).mean() for o in outputs if o.is_floating_point())
        loss.backward()
    return {module.weight_names[a]: p.grad.detach() for a, p in attributes.items() if p.grad is not None}


def unit_importance(group: Group, scores: dict[str, torch.Tensor], fallback: dict[str, torch.Tensor]) -> torch.Tensor:
    """Importance of each unit: scores summed over every coupled weight slice (fallback if none)."""
    total = torch.zeros(group.units, dtype=torch.float64)
    for table in (scores, fallback):
        for name, axis, idx in group.params():
            if name in table:
                score = table[name]  # per-index sums first: no copy of the weight is made
                per_index = axis_sums(score, axis).double()  # (dtype=float64 would copy)
                del score
                total += per_index[idx].sum(dim=1)
        if total.any():
            break
    return total


# ---- cost model ----------------------------------------------------------------------------------

Axis = tuple[object, int]  # (value, axis) of the graph, or (group, 0) counting a group's units


@dataclass
class CostModel:
    """cost = sum of terms, each a base cost scaled by the kept fraction of the axes it depends on."""

    terms: list[tuple[float, list[tuple[Axis, int]]]]  # base, [(axis, its full size)]

    def total(self, kept: dict[Axis, int] | None = None) -> float:
        kept = kept or {}
        return sum(base * math.prod(kept.get(axis, size) / size for axis, size in axes) for base, axes in self.terms)


def cost_model(graph: Graph, target: str, groups: Sequence[Group]) -> CostModel:
    """Params: every weight scales with its own axes. MACs/latency: a node scales with its weight's
    axes (conv, linear) or else with its output's axes. Channels: count of units kept."""
    if target == "channels":
        return CostModel([(float(g.units * g.unit_size), [((g, 0), g.units)]) for g in groups])
    if target == "params":
        weights = {node.attrs["name"]: node.output for node in graph.param_nodes()}
        return CostModel([(float(v.type.numel()), _axes(v)) for v in weights.values()])
    base = measure_latency(graph) if target == "latency" else {n: float(node_cost(n).macs) for n in graph.nodes}
    return CostModel([(base[node], _scaling_axes(node)) for node in graph.nodes if base.get(node)])


def _axes(value: Value) -> list[tuple[Axis, int]]:
    return [((value, a), d) for a, d in enumerate(value.type.shape) if isinstance(d, int) and d > 0]


def _scaling_axes(node: Node) -> list[tuple[Axis, int]]:
    """The axes of the node's largest weight (a conv/linear weight, a mixture's stacked expert weights),
    else of its output."""
    weights = [v for v in node.inputs if v.producer is not None and v.producer.op == "param" and v.type.rank >= 2]
    return _axes(max(weights, key=lambda v: v.type.numel()) if weights else node.outputs[0])


def measure_latency(graph: Graph, repeats: int = 5) -> dict[Node, float]:
    """Seconds per node, each run alone by its torch kernel on random inputs of its input types."""
    times = {}
    values: dict[Value, torch.Tensor] = {}
    sizes = {s: 1 for node in graph.nodes for s in attr_symbols(node.attrs)}  # as _random sizes symbolic dims
    for node in track(list(graph.nodes), "timing each op (target=latency)"):
        if node.op == "param":
            values[node.output] = graph.params[node.attrs["name"]]
            continue
        inputs = [values.get(v) if v in values else _random(v) for v in node.inputs]
        times[node] = _time(lambda: get_op(node.op).run(inputs, node.attrs, sizes), repeats)
    return times


def _random(value: Value) -> torch.Tensor:
    shape = [d if isinstance(d, int) else 1 for d in value.type.shape]
    dtype = value.type.torch_dtype
    return torch.randn(shape).to(dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)


def _time(run: Callable[[], object], repeats: int) -> float:
    try:
        with torch.no_grad():
            run()
            best = math.inf
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - start)
    except Exception:  # kernels needing real data (index ops on random ints): no cost known
        return 0.0
    return best


# ---- selection -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    ratio: float
    scope: str
    round_to: int
    max_per_layer: float


def select_units(groups: Sequence[Group], importance: Sequence[torch.Tensor], cost: CostModel,
                 budget: Budget) -> list[Removal]:
    """Bisect the scope's knob until the cost reduction reaches `budget.ratio` (or caps stop it)."""
    normalized = [imp / imp.mean() if imp.mean() > 0 else imp for imp in importance]
    orders = [torch.argsort(imp, stable=True) for imp in importance]
    full = cost.total()
    high = 1.0 if budget.scope == "local" else float(max((n.max() for n in normalized), default=0.0)) * 1.0001 + 1e-9

    def plan(knob: float) -> list[Removal]:
        return [(g, _units_to_remove(g, order, norm, knob, budget)) for g, order, norm in zip(groups, orders, normalized)]

    def reduction(knob: float) -> float:
        return 1.0 - cost.total(_kept_counts(plan(knob))) / full if full else 0.0

    low = 0.0
    if reduction(high) <= budget.ratio:
        return plan(high)
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if reduction(middle) < budget.ratio else (low, middle)
    return plan(high)


def _units_to_remove(group: Group, order: torch.Tensor, normalized: torch.Tensor, knob: float,
                     budget: Budget) -> torch.Tensor:
    """The least important units; a segmented group (each expert's hidden units) loses as many from every
    slice, each slice its own least important ones."""
    n = group.units
    wanted = int(n * knob) if budget.scope == "local" else int((normalized < knob).sum())
    labels = group.segments
    if labels is None:
        return order[: n - _kept(n, wanted, group.unit_size, budget)].sort().values
    slices = int(labels.max()) + 1
    per_slice = n // slices
    drop = per_slice - _kept(per_slice, wanted // slices, group.unit_size, budget)
    return torch.cat([order[labels[order] == s][:drop] for s in range(slices)]).sort().values


def _kept(n: int, wanted: int, unit_size: int, budget: Budget) -> int:
    """Units kept of `n` when `wanted` should go: capped per layer, rounded up to the channel multiple."""
    wanted = min(wanted, int(n * budget.max_per_layer))
    step = max(1, budget.round_to // unit_size)
    keep = max(n - wanted, min(n, step))
    return min(n, math.ceil(keep / step) * step)


def _kept_counts(removals: list[Removal]) -> dict[Axis, int]:
    kept: dict[Axis, int] = {}
    for (value, axis), idx in kept_indices([(g, u) for g, u in removals if len(u)]).items():
        plain = axis if isinstance(axis, int) else axis[1]  # an axis pair: the inner axis, per slice
        kept[(value, plain)] = int(resized(value.type.shape, axis, idx.numel())[plain])
    kept.update({(group, 0): group.units - len(units) for group, units in removals})
    return kept
