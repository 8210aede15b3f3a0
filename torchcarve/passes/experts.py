"""Expert pruning: drop the experts of each carve.moe layer that calibration data routes least to.

Per expert, over every calibration token: `frequency` = how often it is among the token's top-k,
`gate-mass` = the routing weight it receives (its share of the renormalised top-k). The kept experts'
router rows and weights are sliced out; top-k then runs over the remaining experts with the layer's
own renormalisation, so a token that never routed to a removed expert gets exactly the output it had
(with `norm_topk`, as Mixtral and most user MoEs do; without it the softmax now spans fewer experts).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from ..analysis.activations import run_observed
from ..analysis.cost import graph_cost
from ..errors import CarveError
from ..ir import Graph
from ..ir.node import Node
from ..ir.ops.moe import moe_routing, moe_weights
from ..ir.types import TensorType
from .base import Pass, PassContext, PassResult, register_pass

@dataclass
class Usage:
    """Per-expert routing statistics of one MoE node."""

    frequency: torch.Tensor  # [E] token-slots routed to each expert
    mass: torch.Tensor       # [E] routing weight received


def routing(node: Node, params: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-k expert indices [T, k], their routing weights [T, k]) of a carve.moe node on its input `x`."""
    roles = moe_weights(node)
    weight = params[roles["router_w"].producer.attrs["name"]]
    bias = params[roles["router_b"].producer.attrs["name"]] if roles["router_b"] is not None else None
    top, index = moe_routing(x.reshape(-1, x.shape[-1]), weight, bias, node.attrs["top_k"],
                             node.attrs.get("norm_topk", True))
    return index, top


def expert_usage(graph: Graph, nodes: list[Node], batches: Sequence[tuple]) -> dict[Node, Usage]:
    """Routing frequency and gate mass of every expert of `nodes` over the calibration batches."""
    usage = {n: Usage(torch.zeros(_experts(n)), torch.zeros(_experts(n))) for n in nodes}

    def observer(node: Node):
        def observe(x: torch.Tensor) -> None:
            index, top = routing(node, graph.params, x)
            stats = usage[node]
            stats.frequency += torch.bincount(index.flatten(), minlength=_experts(node)).float()
            stats.mass += torch.zeros(_experts(node)).index_add(0, index.flatten(), top.flatten().float())
        return observe

    observers = {}
    for node in nodes:
        observers.setdefault(node.inputs[0], []).append(observer(node))
    for batch in batches:
        run_observed(graph, batch, observers)
    return usage


def _experts(node: Node) -> int:
    return moe_weights(node)["router_w"].type.shape[0]


@register_pass("prune-experts")
@dataclass(frozen=True)
class PruneExperts(Pass):
    """Expert pruning: remove each MoE layer's least-routed experts (calibration routing statistics).

    keep: experts kept per layer (when given, instead of ratio) | ratio: fraction of each layer's experts
    removed. criterion: frequency (times among a token's top-k) | gate-mass (routing weight received).
    """

    keep: int | None = None
    ratio: float = 0.5
    criterion: Literal["frequency", "gate-mass"] = "frequency"

    def __post_init__(self) -> None:
        if self.keep is not None and self.keep < 1:
            raise CarveError(f"{self.spec()}: keep must be at least 1, got {self.keep}")
        if not 0.0 <= self.ratio < 1.0:
            raise CarveError(f"{self.spec()}: ratio must be in [0, 1), got {self.ratio}")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        nodes = [n for n in graph.nodes if n.op == "carve.moe"]
        if not nodes:
            return PassResult(False, {"moe_layers": 0})
        batches = ctx.require_calibration(self.spec())
        for node in nodes:
            self._check_weights(node)
        usage = expert_usage(graph, nodes, batches)
        before = graph_cost(graph)
        rows: list[dict[str, Any]] = []
        for node in nodes:
            stats = usage[node]
            kept = self._kept(stats)
            rows += _rows(node, stats, kept)
            if len(kept) < len(stats.frequency):
                _keep_experts(graph, node, kept)
        after = graph_cost(graph)
        removed = sum(1 for row in rows if row["kept"] == "-")
        return PassResult(removed > 0, {
            "moe_layers": len(nodes), "experts": (len(rows), len(rows) - removed),
            "params": (before.params, after.params), "macs": (before.macs, after.macs), "layers": rows,
        })

    def _kept(self, stats: Usage) -> torch.Tensor:
        total = len(stats.frequency)
        count = self.keep if self.keep is not None else total - round(self.ratio * total)
        if count > total:
            raise CarveError(f"{self.spec()}: keep={count} but a MoE layer has only {total} experts")
        score = stats.frequency if self.criterion == "frequency" else stats.mass
        order = sorted(range(total), key=lambda e: (-float(score[e]), e))
        return torch.tensor(sorted(order[:count]))

    def _check_weights(self, node: Node) -> None:
        for role, value in moe_weights(node).items():
            if value is not None and (value.producer is None or value.producer.op != "param" or len(value.uses) > 1):
                raise CarveError(f"{self.spec()}: {node!r}'s {role} is not a weight read by this layer only",
                                 hint="prune-experts slices the layer's own weights; run it before passes that share them")


def _keep_experts(graph: Graph, node: Node, kept: torch.Tensor) -> None:
    """Slice every per-expert weight of `node` to the `kept` experts and cap top-k at their number."""
    for value in moe_weights(node).values():
        if value is None:
            continue
        name = value.producer.attrs["name"]
        graph.params[name] = graph.params[name].index_select(0, kept).contiguous()
        value.type = TensorType.of(graph.params[name])
    node.attrs["top_k"] = min(node.attrs["top_k"], len(kept))


def _rows(node: Node, stats: Usage, kept: torch.Tensor) -> list[dict[str, Any]]:
    """One report row per expert: routing share, gate mass share, kept or not."""
    slots = float(stats.frequency.sum()) or 1.0
    mass = float(stats.mass.sum()) or 1.0
    layer = node.scope or node.output.name
    kept_set = set(kept.tolist())
    return [{"layer": f"{layer}.expert{e}", "routed": f"{float(stats.frequency[e]) / slots:.1%}",
             "gate mass": f"{float(stats.mass[e]) / mass:.1%}", "kept": "yes" if e in kept_set else "-"}
            for e in range(len(stats.frequency))]
