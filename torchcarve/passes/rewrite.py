"""Local rewrites as tables of `(pattern, function)` rules, driven by a worklist to a fixed point.

As in tinygrad's PatternMatcher: a pattern matches a value by its producer's op and inputs and
captures values by name; the function gets the Rewriter then the captures as keywords and returns
the replacement value(s), or None to decline. Tables are module constants combined with `+`.
As in xDSL's driver: a worklist, a changed flag, and an iteration cap that names the rule.
"""
from __future__ import annotations

from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..errors import CarveError
from ..ir import Graph
from ..ir.node import Node
from ..ir.value import Value


@dataclass(frozen=True)
class Pat:
    """Matches a value: any value (ops None), or output 0 of a node whose op is in `ops`.

    src: patterns for all the node's inputs (None: any inputs). name: capture the value; a name
    used twice must bind the same value. one_use: the value has a single use and is no graph output.
    """

    ops: tuple[str, ...] | None = None
    src: tuple["Pat", ...] | None = None
    name: str | None = None
    one_use: bool = False
    prefix: bool = False  # src matches the first len(src) inputs only

    def match(self, value: Value, captures: dict[str, Value]) -> bool:
        if self.name in captures and captures[self.name] is not value:
            return False
        if self.one_use and (len(value.uses) != 1 or value.is_graph_output):
            return False
        if self.ops is not None and not self._match_producer(value, captures):
            return False
        if self.name:
            captures[self.name] = value
        return True

    def _match_producer(self, value: Value, captures: dict[str, Value]) -> bool:
        node = value.producer
        if node is None or node.op not in self.ops or value.index != 0:
            return False
        if self.src is None:
            return True
        if len(node.inputs) < len(self.src) or (len(node.inputs) != len(self.src) and not self.prefix):
            return False
        return all(p.match(v, captures) for p, v in zip(self.src, node.inputs))


def P(ops: str | Sequence[str], *src: Pat, name: str | None = None, one_use: bool = False, any_src: bool = False,
      prefix: bool = False) -> Pat:
    """A pattern on a node's output: P("aten.relu", ANY("x"), name="out"); prefix: more inputs may follow."""
    ops = (ops,) if isinstance(ops, str) else tuple(ops)
    return Pat(ops, None if any_src else tuple(src), name, one_use, prefix)


def ANY(name: str | None = None, one_use: bool = False) -> Pat:
    """Any value (a graph input, a param, a node output)."""
    return Pat(None, None, name, one_use)


def PARAM(name: str | None = None) -> Pat:
    """A value read from the ParamStore."""
    return Pat(("param",), (), name)


Rule = tuple[Pat, Callable[..., Any]]


class Rewriter:
    """What a rule function may do: add nodes (before the matched node), add params, read params."""

    def __init__(self, graph: Graph, options: Any) -> None:
        self.graph = graph
        self.options = options  # the pass instance, for rules that take options
        self.root: Node | None = None
        self.created: list[Node] = []
        self.replaced: list[Node] = []

    def add(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any] | None = None, **kwargs: Any) -> Node:
        """Insert a node (types inferred) right before the matched node, unless before=/after= say otherwise."""
        kwargs.setdefault("scope", self.root.scope if self.root else "")
        if "after" not in kwargs:
            kwargs.setdefault("before", self.root)
        node = self.graph.add_node(op, inputs, attrs, **kwargs)
        self.created.append(node)
        return node

    def replace(self, old: Value, new: Value) -> None:
        """Retarget the uses of a value other than the matched node's outputs (erased when dead)."""
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        self.replaced.append(old.producer)

    def param(self, tensor: torch.Tensor, base: str) -> Value:
        """Store `tensor` under a fresh name derived from `base` and read it with a param node."""
        name = self.graph.params.unique_name(base)
        return self.graph.add_param(name, tensor.detach().contiguous())

    def tensor(self, value: Value) -> torch.Tensor | None:
        """The stored tensor a param value reads, or None when `value` is not a param."""
        node = value.producer
        if node is None or node.op != "param":
            return None
        return self.graph.params[node.attrs["name"]]


def erase_dead(graph: Graph, nodes: Sequence[Node]) -> int:
    """Erase `nodes` that have no uses, then their producers that became unused; returns how many.
    An erased param's file-backed weight is released, so a rewrite holds one group's weights at a time."""
    stack, erased = list(nodes), 0
    while stack:
        node = stack.pop()
        if node.graph is not graph or node.has_uses:
            continue
        producers = [v.producer for v in node.inputs if v.producer is not None]
        graph.erase(node)
        if node.op == "param":
            graph.params.release(node.attrs["name"])
        erased += 1
        stack.extend(producers)
    return erased


def apply_rules(graph: Graph, rules: Sequence[Rule], options: Any, max_rewrites: int | None = None) -> Counter:
    """Rewrite `graph` with `rules` until none fires; returns how often each rule fired.

    `options` is the pass (its spec names errors; rules read their options from it).
    """
    by_op: dict[str, list[Rule]] = defaultdict(list)
    for rule in rules:
        for op in rule[0].ops or ():
            by_op[op].append(rule)
    fired: Counter = Counter()
    cap = max_rewrites or 10 * len(graph) + 100
    worklist = deque(graph.nodes)
    queued = set(worklist)
    rewriter = Rewriter(graph, options)
    while worklist:
        node = worklist.popleft()
        queued.discard(node)
        if node.graph is not graph:
            continue
        for rule in by_op.get(node.op, ()):
            new_work = _try_rule(graph, rule, node, rewriter, options)
            if new_work is None:
                continue
            fired[_rule_name(rule)] += 1
            if sum(fired.values()) > cap:
                name, count = fired.most_common(1)[0]
                raise CarveError(f"{options.spec()}: no fixed point after {cap} rewrites; rule {name} fired {count} times",
                                 hint="a rule probably undoes another; report this with the graph")
            fresh = [n for n in new_work if n not in queued]
            worklist.extend(fresh)
            queued.update(fresh)
            break
    return fired


def _rule_name(rule: Rule) -> str:
    return rule[1].__name__


def _try_rule(graph: Graph, rule: Rule, node: Node, rewriter: Rewriter, options: Any) -> list[Node] | None:
    """Run one rule on `node`; on a rewrite, returns the nodes to revisit."""
    pattern, function = rule
    captures: dict[str, Value] = {}
    if not pattern.match(node.outputs[0], captures):
        return None
    rewriter.root, rewriter.created, rewriter.replaced = node, [], []
    try:
        result = function(rewriter, **captures)
    except CarveError:
        raise
    except Exception as e:
        raise CarveError(f"{options.spec()}: rule {_rule_name(rule)} failed on {node!r}: {e}") from e
    replacements = [] if result is None else list(result) if isinstance(result, (tuple, list)) else [result]
    if all(new is old for new, old in zip(replacements, node.outputs)):  # declined, or nothing to do
        erase_dead(graph, rewriter.created)
        return None
    _replace_outputs(node, replacements, rule, options)
    users = [u for v in replacements for u in v.users]
    erase_dead(graph, [node, *rewriter.replaced])
    return [n for n in rewriter.created if n.graph is graph] + users


def _replace_outputs(node: Node, replacements: list[Value], rule: Rule, options: Any) -> None:
    if len(replacements) != len(node.outputs):
        raise CarveError(f"{options.spec()}: rule {_rule_name(rule)} returned {len(replacements)} values for {node!r}")
    for old, new in zip(node.outputs, replacements):
        if old.type != new.type:
            raise CarveError(f"{options.spec()}: rule {_rule_name(rule)} changed the type of %{old.name} "
                             f"from {old.type} to {new.type} ({node!r})")
        if old is not new:
            old.replace_all_uses_with(new, replace_graph_outputs=True)
