"""Structured pruning: remove whole channels, hidden units and attention heads.

Dependency groups come from per-op dimension rules (the op catalog, torchcarve/opset/prune_rules.py), importance and budgets from
select.py, and the rewrite (rewrite.py) slices every coupled weight and fixes every shape.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

from ...analysis.cost import graph_cost, node_cost
from ...analysis.heads import Heads
from ...errors import CarveError
from ...ir import Graph
from ..base import Pass, PassContext, PassResult, register_pass
from .groups import Group, find_groups
from .rewrite import Removal, remove_units
from .select import Budget, cost_model, select_units, unit_importance, weight_scores

__all__ = ["Group", "Prune", "find_groups", "remove_units"]


@register_pass("prune")
@dataclass(frozen=True)
class Prune(Pass):
    """Structured pruning by dependency groups (DepGraph, Fang et al. 2023).

    ratio: fraction of the target removed (0 <= ratio < 1). criterion: l1 | l2 | bn-scale | taylor
    (needs calibration) | random. scope: local (the same fraction of every group) | global (one
    threshold on mean-normalised importance). target: channels | params | macs | latency (each node
    timed with torch). round-to: kept channels are multiples of this. max-per-layer: most of a
    group that may go. heads: prune attention heads too. protect: weight names or scopes to keep.
    norms: prune channels a LayerNorm/RMSNorm/one-group GroupNorm normalizes over (the hidden size
    of transformers; approximate: the statistics then run over the kept channels).
    """

    ratio: float = 0.5
    criterion: Literal["l1", "l2", "bn-scale", "taylor", "random"] = "l1"
    scope: Literal["local", "global"] = "local"
    target: Literal["channels", "params", "macs", "latency"] = "channels"
    round_to: int = 8
    max_per_layer: float = 0.9
    heads: bool = True
    protect: tuple[str, ...] = ()
    norms: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise CarveError(f"{self.spec()}: ratio must be in [0, 1), got {self.ratio}")
        if not 0.0 < self.max_per_layer <= 1.0:
            raise CarveError(f"{self.spec()}: max-per-layer must be in (0, 1], got {self.max_per_layer}")
        if self.round_to < 1:
            raise CarveError(f"{self.spec()}: round-to must be at least 1, got {self.round_to}")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        self._check_protect(graph)
        calibration = self._calibration(ctx)
        groups = find_groups(graph, self.protect, self.norms)
        prunable = [g for g in groups if not g.blocked and (self.heads or g.kind != "heads") and g.params()]
        before = graph_cost(graph)
        removals = self._choose(graph, prunable, calibration, ctx.seed) if self.ratio > 0 else []
        layer_costs = [_layer_cost(g) for g, _ in removals]
        heads = Heads(graph)
        feeds = [heads.fed_by(value for value, _ in g.members) for g, _ in removals]
        remove_units(graph, removals)
        after = graph_cost(graph)
        return PassResult(any(len(u) for _, u in removals), {
            "groups": len(groups), "prunable": len(prunable), "pruned": sum(1 for _, u in removals if len(u)),
            "approximate": sum(1 for g, u in removals if len(u) and g.approximate),
            "params": (before.params, after.params), "macs": (before.macs, after.macs),
            "layers": [_layer_row(g, u, cost, f) for (g, u), cost, f in zip(removals, layer_costs, feeds)],
            "blocked": dict(Counter(_reason(g) for g in groups if g not in prunable)),
        })

    def _choose(self, graph: Graph, groups: list[Group], calibration, seed: int) -> list[Removal]:
        scores = weight_scores(graph, self.criterion, calibration, seed)
        fallback = weight_scores(graph, "l1", None, seed) if self.criterion == "bn-scale" else {}
        importance = [unit_importance(g, scores, fallback) for g in groups]
        cost = cost_model(graph, self.target, groups)
        return select_units(groups, importance, cost, Budget(self.ratio, self.scope, self.round_to, self.max_per_layer))

    def _calibration(self, ctx: PassContext):
        if self.criterion != "taylor":
            return None
        if ctx.max_memory is not None:
            raise CarveError(f"{self.spec()}: taylor importance needs a backward pass through the whole graph, "
                             "which holds every weight at once; it does not run under max-memory",
                             hint="use criterion=l1 or l2 (weights only, streamed), or drop max-memory")
        return ctx.require_calibration(self.spec())

    def _check_protect(self, graph: Graph) -> None:
        names = list(graph.params) + [n.scope for n in graph.nodes if n.scope]
        for pattern in self.protect:
            if not any(name == pattern or name.startswith(pattern + ".") for name in names):
                raise CarveError(f"{self.spec()}: protect name '{pattern}' matches no weight or module",
                                 hint="use a parameter name (layer1.0.conv1.weight) or a module path (layer1.0)")


def _layer_row(group: Group, units, before: tuple[int, int], feeds: str) -> dict:
    """Channels (or head channels) before/after; params of the group's weights and MACs of the ops
    touching it, [before, after] (ops shared by two groups count in both rows); the graph outputs
    (task heads) its channels reach."""
    after = _layer_cost(group)
    return {"layer": group.label, "kind": group.kind, "exact": not group.approximate,
            "before": group.units * group.unit_size,
            "after": (group.units - len(units)) * group.unit_size,
            "params": [before[0], after[0]], "macs": [before[1], after[1]], "feeds": feeds}


def _layer_cost(group: Group) -> tuple[int, int]:
    """(params of the group's weights, MACs per batch item of every op reading or making a member)."""
    weights = {value.producer.attrs["name"]: value.type.numel() for (value, _), _ in group.members.items()
               if value.producer is not None and value.producer.op == "param"}
    nodes = {node for (value, _) in group.members for node, _ in value.uses}
    nodes |= {value.producer for (value, _) in group.members if value.producer is not None}
    return sum(weights.values()), sum(node_cost(n).macs for n in nodes if n.op != "param")


def _reason(group: Group) -> str:
    return group.blocked or ("heads=false" if group.kind == "heads" else "no weights")
