"""Equivalence oracle for structured pruning: zeroing a group's weights in the original graph and
removing the group in a pruned copy must give the same outputs (DESIGN.md, Pruning)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ...ir import Graph, verify
from ...opset.prune_rules import fill
from ..manager import run_graph
from .groups import find_groups
from .rewrite import remove_units


@dataclass(frozen=True)
class OracleCheck:
    """One group checked: its label, how many units were removed, and the largest output difference."""

    label: str
    removed: int
    units: int
    max_error: float
    ok: bool


def zero_units(graph: Graph, group, units: torch.Tensor) -> None:
    """Zero, in place, every weight slice of `group`'s `units` (the graph keeps its shapes)."""
    for name, axis, idx in group.params():
        tensor = graph.params[name]
        graph.params[name] = fill(tensor, axis, idx[units].flatten(), 0)


def check_group(graph: Graph, index: int, inputs: Sequence[torch.Tensor], units: torch.Tensor,
                rtol: float = 1e-4, atol: float = 1e-5) -> OracleCheck:
    """Compare zeroing and removing `units` of the `index`-th group of `find_groups(graph)`."""
    zeroed, pruned = graph.clone(), graph.clone()
    zero_group = find_groups(zeroed)[index]
    prune_group = find_groups(pruned)[index]
    zero_units(zeroed, zero_group, units)
    remove_units(pruned, [(prune_group, units)])
    verify(pruned)
    expected, actual = run_graph(zeroed, inputs), run_graph(pruned, inputs)
    error = max((float((e.double() - a.double()).abs().max()) for e, a in zip(expected, actual)), default=0.0)
    ok = all(e.shape == a.shape and torch.allclose(a, e, rtol=rtol, atol=atol) for e, a in zip(expected, actual))
    return OracleCheck(prune_group.label, int(units.numel()), prune_group.units, error, ok)


def check_equivalence(graph: Graph, inputs: Sequence[torch.Tensor], fraction: float = 0.5, seed: int = 0,
                      limit: int | None = None) -> list[OracleCheck]:
    """Check every exact prunable group (or `limit` of them, one of each kind first), removing a random
    `fraction` of its units (at least one, never all). Approximate groups (through a LayerNorm's
    normalized axis) change the kept outputs too, so zeroing is no model of removing them."""
    generator = torch.Generator().manual_seed(seed)
    candidates = [(i, g) for i, g in enumerate(find_groups(graph)) if not g.blocked and not g.approximate]
    firsts = {g.kind: (i, g) for i, g in reversed(candidates)}
    ordered = list(dict.fromkeys(sorted(firsts.values(), key=lambda c: c[0]) + candidates))
    checks = []
    for index, group in ordered[:limit]:
        checks.append(check_group(graph, index, inputs, _random_units(group, fraction, generator)))
    return checks


def _random_units(group, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """A random `fraction` of the units (at least one, never all), as many from every slice of a segmented group."""
    labels = group.segments if group.segments is not None else torch.zeros(group.units, dtype=torch.long)
    per_slice = group.units // (int(labels.max()) + 1)
    count = min(per_slice - 1, max(1, int(per_slice * fraction)))
    picks = [torch.nonzero(labels == s).flatten()[torch.randperm(per_slice, generator=generator)[:count]]
             for s in labels.unique()]
    return torch.cat(picks).sort().values
