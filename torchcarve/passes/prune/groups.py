"""Dependency groups: sets of (value, axis, indices) that must be removed together.

From a seed axis (an out-channel weight first, then every other weight axis) the per-op rules are
followed through producers and users until closed. A group's units are rows of index tensors:
removing unit u removes idx[u] from every member axis. Each index is claimed by one group, so
grouping is linear in graph size (plus a few restarts when units must be merged into heads/conv
groups). A group touching a graph input/output, a protected weight, an op without a rule or a
barrier is kept but `blocked`, with the reason. A group crossing a normalized axis (LayerNorm,
RMSNorm, one-group GroupNorm) is `approximate` (the reason), or blocked when norms are not allowed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...ir import Graph, Value
from ...ir.node import Node
from ...opset import dim_rule, prune_sources
from ...opset.prune_rules import Approximate, Axis, Barrier, Divide, Merge, Port, axis_size, port_value

Slot = tuple[Value, Axis]
MAX_ATTEMPTS = 64  # restarts (merges, divisions, alternatives) allowed per seed


@dataclass(eq=False)
class Group:
    """Coupled axes; `members[(value, axis)]` is an index tensor (units, k) into that axis."""

    members: dict[Slot, torch.Tensor]
    label: str
    kind: str = "channels"      # "channels", "heads" or "conv-groups": what one unit is
    blocked: str = ""           # why this group must not be pruned ("" if it may)
    approximate: str = ""       # why removing units changes the kept outputs too ("" if exact)

    @property
    def units(self) -> int:
        return next(iter(self.members.values())).shape[0]

    @property
    def unit_size(self) -> int:
        return next(iter(self.members.values())).shape[1]

    @property
    def segments(self) -> torch.Tensor | None:
        """Per unit, its slice of an axis pair (its expert), or None: each slice must lose as many units
        as the others so the stacked weights stay rectangular."""
        for (value, axis), idx in self.members.items():
            if not isinstance(axis, int):
                return idx[:, 0] // value.type.shape[axis[1]]
        return None

    def params(self) -> list[tuple[str, Axis, torch.Tensor]]:
        """(param name, axis, idx) of every weight in the group."""
        return [(value.producer.attrs["name"], axis, idx) for (value, axis), idx in self.members.items()
                if value.producer is not None and value.producer.op == "param"]


@dataclass
class _Search:
    graph: Graph
    protect: tuple[str, ...]
    norms: bool
    covered: dict[Slot, torch.Tensor] = field(default_factory=dict)
    attempts: int = 0
    fence: frozenset[Node] = frozenset()  # nodes the search does not cross


def find_groups(graph: Graph, protect: tuple[str, ...] = (), norms: bool = True) -> list[Group]:
    """Every dependency group of `graph`, prunable ones and blocked ones (with reasons); `norms`
    allows groups through normalized axes (approximate) instead of blocking them."""
    search = _Search(graph, protect, norms)
    groups: list[Group] = []
    for slot in _seeds(graph):
        while (root := _uncovered(search, slot)) is not None:  # a divided seed is seeded again
            search.attempts = 0
            group = _build(search, slot, root, "channels")
            _claim(search, group if not group.blocked or group.units > 1 else Group({slot: root}, group.label))
            groups.append(group)
    return groups


def reader_group(graph: Graph, value: Value, axis: int, indices: torch.Tensor) -> Group | None:
    """`indices` of `value`'s `axis` as one unit, followed through what reads them but never back through
    `value`'s producer (the channels a concat join's branch feeds); None when units would be merged or split."""
    search = _Search(graph, (), True, fence=frozenset({value.producer}))
    try:
        return _explore(search, (value, axis), indices.view(1, -1), "channels")
    except (Merge, Divide):
        return None


def _seeds(graph: Graph) -> list[Slot]:
    """Out-channel weight axes first (so groups are named after the layer that makes them), then all."""
    first: list[Slot] = []
    for node in graph.nodes:
        sources = prune_sources(node.op)
        for position, axis in (sources(node) if callable(sources) else sources):
            if position < len(node.inputs) and _is_param(node.inputs[position]):
                first.append((node.inputs[position], axis))
    rest = [(node.output, axis) for node in graph.param_nodes() for axis in range(node.output.type.rank)]
    return list(dict.fromkeys(first + rest))


def _is_param(value: Value) -> bool:
    return value.producer is not None and value.producer.op == "param"


def _uncovered(search: _Search, slot: Slot) -> torch.Tensor | None:
    value, axis = slot
    size = axis_size(value.type.shape, axis)
    if not isinstance(size, int) or size < 2:
        return None
    mask = search.covered.get(slot)
    free = torch.arange(size) if mask is None else (~mask).nonzero().flatten()
    return free.view(-1, 1) if free.numel() > 1 else None


def _build(search: _Search, seed: Slot, root: torch.Tensor, kind: str) -> Group:
    """Explore from `seed`; on Merge try each candidate (best first); on Divide build the first part
    (the caller seeds the rest again)."""
    search.attempts += 1
    if search.attempts > MAX_ATTEMPTS:
        return Group({seed: root}, _label(seed), kind, "too many refinements")
    try:
        return _explore(search, seed, root, kind)
    except Divide as divide:
        return _build(search, seed, root[divide.labels == divide.labels[0]], kind)
    except Merge as merge:
        fallback: Group | None = None
        for labels in merge.candidates:
            group = _build(search, seed, _merge_units(root, labels), merge.kind)
            if not group.blocked:
                return group
            fallback = fallback or group
        return fallback


def _merge_units(root: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.stack([root[labels == label].flatten() for label in labels.unique()])


def _explore(search: _Search, seed: Slot, root: torch.Tensor, kind: str) -> Group:
    group = Group({seed: root.sort(dim=1).values}, _label(seed), kind)
    queue = [seed]
    while queue and not group.blocked:  # a blocked closure is left alone: the rest of it, seeded
        value, axis = slot = queue.pop()  # later, reaches this claimed part ("overlaps") or the barrier
        for node, port in _endpoints(value):
            if node in search.fence:
                continue
            for link in _links(group, node, port, axis, group.members[slot], search.norms):
                if _add(group, link):
                    queue.append(link[0])
    group.blocked = group.blocked or _protection(search, group)
    return group


def _endpoints(value: Value) -> list[tuple[Node, Port]]:
    ends = [(node, ("in", position)) for node, position in value.uses]
    return ends + ([(value.producer, ("out", value.index))] if value.producer is not None else [])


def _links(group: Group, node: Node, port: Port, axis: Axis, idx: torch.Tensor,
           norms: bool) -> list[tuple[Slot, torch.Tensor]]:
    rule = dim_rule(node.op)
    if not isinstance(axis, int) and len(port_value(node, port).uses) > 1:
        group.blocked = group.blocked or f"{node.op}: an axis pair of a tensor other ops read too"
        return []
    if rule is None:
        group.blocked = group.blocked or f"{node.op} has no pruning rule"
        return []
    try:
        links = rule(node, port, axis, idx)
    except Barrier as barrier:
        group.blocked = group.blocked or f"{node.op}: {barrier}"
        return []
    except Approximate as approximate:
        if not norms:
            group.blocked = group.blocked or f"{node.op}: {approximate} (norms=false)"
            return []
        group.approximate = group.approximate or str(approximate)
        links = approximate.links
    return [((port_value(node, p), a), i) for p, a, i in links]


def _add(group: Group, link: tuple[Slot, torch.Tensor]) -> bool:
    """Record a member; True if it is new or grew (then it is explored again)."""
    slot, idx = link
    idx = idx.sort(dim=1).values
    old = group.members.get(slot)
    if old is None:
        group.members[slot] = idx
        return True
    if old.shape == idx.shape and torch.equal(old, idx):
        return False
    merged = _union_rows(old, idx)
    if merged is None:
        group.blocked = group.blocked or "a channel axis is reached in two inconsistent ways"
        return False
    if torch.equal(merged, old):
        return False
    group.members[slot] = merged  # reached by two paths, e.g. cat([x, x]) or q/k/v of one projection
    return True


def _union_rows(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor | None:
    """Per-unit union of two index sets; None unless the units stay equal-size and disjoint."""
    if old.shape[0] != new.shape[0]:
        return None
    rows = [torch.cat([a, b]).unique() for a, b in zip(old, new)]
    if len({row.numel() for row in rows}) != 1:
        return None
    merged = torch.stack(rows)
    return merged if merged.unique().numel() == merged.numel() else None


def _protection(search: _Search, group: Group) -> str:
    for (value, axis), idx in group.members.items():
        if value.is_graph_input or value.is_graph_output:
            return f"reaches a graph {'input' if value.is_graph_input else 'output'}"
        mask = search.covered.get((value, axis))
        if mask is not None and mask[idx].any():
            return f"overlaps another group at %{value.name} axis {axis}"
    for name, _, _ in group.params():
        if any(name == p or name.startswith(p + ".") for p in search.protect):
            return f"protected weight {name}"
    return ""


def _claim(search: _Search, group: Group) -> None:
    for (value, axis), idx in group.members.items():
        size = axis_size(value.type.shape, axis)
        if not isinstance(size, int):
            continue
        mask = search.covered.setdefault((value, axis), torch.zeros(size, dtype=torch.bool))
        mask[idx.flatten()] = True


def _label(seed: Slot) -> str:
    value, axis = seed
    name = value.producer.attrs["name"] if _is_param(value) else value.name
    if not isinstance(axis, int):
        return name.removesuffix(".weight") + f"[axis {axis[1]} per slice of axis {axis[0]}]"
    return name.removesuffix(".weight") + ("" if axis == 0 else f"[axis {axis}]")
