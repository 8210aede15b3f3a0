"""Depth pruning: remove whole residual blocks and parallel branches of the DAG.

A candidate block is one input of an add join whose other input has the join's type: `x + f(x)`
(a residual branch) or `g(x) + f(x)` (one edge of a parallel join). Removing it replaces the
block's end (the join, or the end of the same-type chain of norms/activations after it, as in
post-LN transformers and ResNet's add-relu) by the kept input; everything only the removed
branch used dies. Scores: `flow` = ||end - kept|| / ||end|| (||f(x)|| / ||x + f(x)|| for a plain
residual; the flow-based DAG reduction of "Dynamic Neural Network for Multi-Task Learning
Searching across Diverse Network Topologies"), `output-error` = the relative change of every
graph output (each head weighs the same) when the block alone is removed.
"""
from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from ..analysis.cost import graph_cost
from ..errors import CarveError
from ..ir import Graph
from ..ir.node import Node
from ..ir.ops import get_op
from ..ir.ops.aten import arguments
from ..ir.signature import bind_inputs
from ..ir.value import Value
from .base import Pass, PassContext, PassResult, register_pass

JOINS = ("aten.add.Tensor",)


@dataclass
class Block:
    """Replace `end` by `kept`: the nodes in `dead` go. `span` consecutive branches along the trunk."""

    kept: Value
    end: Value
    dead: set[Node]
    name: str
    kind: str  # residual | branch


def find_blocks(graph: Graph, span: int = 1) -> list[Block]:
    """Every removable branch of an add join, merged `span` at a time along chains of residual blocks."""
    position = {node: i for i, node in enumerate(graph.nodes)}
    raw = {node: _join_blocks(node, position) for node in graph.nodes if _is_join(node)}
    joins = {join for join, found in raw.items() if found}
    blocks = [b for join, found in raw.items() for b in found  # a branch holding other blocks is no leaf
              if not any(n in joins and n is not join for n in b.dead)]
    return blocks if span == 1 else _spans(blocks, span)


def _is_join(node: Node) -> bool:
    return (node.op in JOINS and len(node.inputs) == 2 and arguments(node).get("alpha", 1) == 1
            and node.inputs[0] is not node.inputs[1])


def _join_blocks(join: Node, position: dict[Node, int]) -> list[Block]:
    chain = _chain_after(join)
    end = chain[-1].output
    blocks = []
    for kept in join.inputs:
        if kept.type != end.type or (kept.is_graph_input and end.is_graph_output):
            continue
        dead = _dying(set(chain), _ancestors(kept), position)
        branch = {n for n in dead if n.op != "param"} - set(chain)
        if branch:
            kind = "residual" if _reaches(kept, branch) else "branch"
            blocks.append(Block(kept, end, dead, _block_name(dead, end), kind))
    return blocks


def _chain_after(join: Node) -> list[Node]:
    """The join and the same-type single-user ops after it that read only weights besides the trunk."""
    chain = [join]
    value = join.output
    while len(value.uses) == 1 and not value.is_graph_output:
        user = value.users[0]
        others = [v for v in user.inputs if v is not value]
        if _is_join(user) or user.output.type != value.type or len(user.outputs) != 1 or \
                any(v.producer is None or v.producer.op != "param" for v in others) or not _same_module(join, user):
            break
        chain.append(user)
        value = user.output
    return chain


def _same_module(join: Node, node: Node) -> bool:
    """False when scopes say `node` is outside the join's module (a pre-LN model's final norm is not the
    last block's)."""
    if not join.scope or not node.scope:
        return True
    return _module_path(node.scope).startswith(_module_path(join.scope))


def _module_path(scope: str) -> str:
    """`encoder.layer.0.output` as it is; an ONNX node name `/encoder/layer.0/output/Add` without its op part."""
    return scope.rsplit("/", 1)[0] + "/" if scope.startswith("/") else scope


def _ancestors(value: Value) -> set[Node]:
    seen: set[Node] = set()
    stack = [value.producer] if value.producer is not None else []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(v.producer for v in node.inputs if v.producer is not None and v.producer not in seen)
    return seen


def _dying(start: set[Node], keep: set[Node], position: dict[Node, int]) -> set[Node]:
    """`start` and every node whose readers all die with it (never `keep`, never a graph output's producer)."""
    dead = set(start)
    pending = {v.producer for n in start for v in n.inputs if v.producer is not None}
    frontier = [(-position[node], id(node), node) for node in pending]
    heapq.heapify(frontier)
    while frontier:  # latest first, so every reader is decided before its producer
        node = heapq.heappop(frontier)[2]
        if node in dead or node in keep or any(v.is_graph_output for v in node.outputs):
            continue
        if not all(user in dead for v in node.outputs for user in v.users):
            continue
        dead.add(node)
        for producer in {v.producer for v in node.inputs if v.producer is not None} - pending:
            heapq.heappush(frontier, (-position[producer], id(producer), producer))
            pending.add(producer)
    return dead


def _reaches(source: Value, nodes: set[Node]) -> bool:
    return any(source in n.inputs for n in nodes)


def _block_name(dead: set[Node], end: Value) -> str:
    """The longest module path all of the block's computing nodes share, else the end value's name."""
    scopes = [n.scope.split(".") for n in dead if n.op != "param" and n.scope]
    if not scopes:
        scopes = [n.attrs["name"].split(".")[:-1] for n in dead if n.op == "param"]
    prefix = _common_prefix(scopes) if scopes else []
    return ".".join(prefix) or end.name


def _common_prefix(paths: list[list[str]]) -> list[str]:
    prefix = paths[0]
    for path in paths[1:]:
        size = next((i for i, (a, b) in enumerate(zip(prefix, path)) if a != b), min(len(prefix), len(path)))
        prefix = prefix[:size]
    return prefix


def _spans(blocks: list[Block], span: int) -> list[Block]:
    """Merge runs of `span` consecutive residual blocks (one's kept value is the previous one's end)."""
    residual = [b for b in blocks if b.kind == "residual"]
    by_kept: dict[Value, list[Block]] = {}
    for block in residual:
        by_kept.setdefault(block.kept, []).append(block)
    ends = {b.end for b in residual}
    merged = []
    for head in (b for b in residual if b.kept not in ends):
        run = _follow(head, by_kept)
        for i in range(0, len(run) - span + 1, span):
            part = run[i:i + span]
            dead = set().union(*(b.dead for b in part))
            merged.append(Block(part[0].kept, part[-1].end, dead, _block_name(dead, part[-1].end), "residual"))
    return merged


def _follow(block: Block, by_kept: dict[Value, list[Block]]) -> list[Block]:
    run = [block]
    while len(by_kept.get(run[-1].end, ())) == 1:
        run.append(by_kept[run[-1].end][0])
    return run


# ---- scores ---------------------------------------------------------------------------------

def _forward(graph: Graph, inputs: Sequence[torch.Tensor], env: dict[Value, Any] | None = None,
             changed: dict[Value, Any] | None = None) -> dict[Value, Any]:
    """Every value of `graph` on `inputs`; with `env` and `changed`, recompute only what `changed` reaches."""
    sizes = bind_inputs(graph.inputs, inputs, "calibration batch")
    values: dict[Value, Any] = dict(env) if env is not None else dict(zip(graph.inputs, inputs))
    values.update(changed or {})
    dirty = set(changed or ())
    with torch.no_grad():
        for node in graph.nodes:
            if env is not None and not any(v in dirty for v in node.inputs):
                continue
            if node.op == "param":
                results = [graph.params[node.attrs["name"]]]
            else:
                results = get_op(node.op).run([values[v] for v in node.inputs], node.attrs, sizes)
            values.update(zip(node.outputs, results))
            dirty.update(node.outputs)
    return values


def flow_scores(graph: Graph, blocks: list[Block], batches: Sequence[tuple]) -> list[float]:
    """||end - kept|| / ||end|| of each block over all batches."""
    branch = torch.zeros(len(blocks), dtype=torch.float64)
    total = torch.zeros(len(blocks), dtype=torch.float64)
    for batch in batches:
        values = _forward(graph, batch)
        for i, block in enumerate(blocks):
            end = values[block.end].double()
            branch[i] += (end - values[block.kept].double()).square().sum()
            total[i] += end.square().sum()
    return (branch / total.clamp_min(1e-30)).sqrt().tolist()


def output_error_scores(graph: Graph, blocks: list[Block], batches: Sequence[tuple]) -> list[float]:
    """Sum over graph outputs of ||out without the block - out|| / ||out||, one forward per block
    recomputing only what the block's end reaches."""
    change = torch.zeros(len(blocks), len(graph.outputs), dtype=torch.float64)
    norm = torch.zeros(len(graph.outputs), dtype=torch.float64)
    for batch in batches:
        values = _forward(graph, batch)
        outs = [values[v].double() for v in graph.outputs]
        norm += torch.stack([o.square().sum() for o in outs])
        for i, block in enumerate(blocks):
            pruned = _forward(graph, batch, values, {block.end: values[block.kept]})
            change[i] += torch.stack([(pruned[v].double() - o).square().sum() for v, o in zip(graph.outputs, outs)])
    return (change / norm.clamp_min(1e-30)).sqrt().sum(dim=1).tolist()


# ---- the pass -------------------------------------------------------------------------------

@register_pass("prune-blocks")
@dataclass(frozen=True)
class PruneBlocks(Pass):
    """Depth pruning: remove the residual blocks / join branches that carry least (flow-based DAG reduction).

    n: how many blocks go (1 when neither is given) | ratio: the fraction of candidate blocks that goes.
    criterion: flow (||f(x)|| / ||x + f(x)||, calibration) | output-error (output change with the
    block removed, calibration) | last (the blocks nearest the outputs; a baseline) | random (a baseline).
    span: consecutive residual blocks removed together (a transformer layer is 2: attention + MLP).
    """

    n: int | None = None
    ratio: float | None = None
    criterion: Literal["flow", "output-error", "last", "random"] = "flow"
    span: int = 1

    def __post_init__(self) -> None:
        if self.n is not None and self.ratio is not None:
            raise CarveError(f"{self.spec()}: give n= or ratio=, not both")
        if self.n is not None and self.n < 0:
            raise CarveError(f"{self.spec()}: n must be >= 0, got {self.n}")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise CarveError(f"{self.spec()}: ratio must be in [0, 1), got {self.ratio}")
        if self.span < 1:
            raise CarveError(f"{self.spec()}: span must be at least 1, got {self.span}")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        blocks = find_blocks(graph, self.span)
        count = round(self.ratio * len(blocks)) if self.ratio is not None else (1 if self.n is None else self.n)
        if count > len(blocks):
            raise CarveError(f"{self.spec()}: asks to remove {count} blocks, the graph has {len(blocks)} candidates",
                             hint="lower n=, or list the candidates with prune-blocks{n=0,criterion=last}")
        scores = self._scores(graph, blocks, ctx)
        chosen = _choose(blocks, scores, count)
        before = graph_cost(graph)
        feeds = [_feeds(graph, b.end) for b in blocks]
        position = {node: i for i, node in enumerate(graph.nodes)}
        for block in sorted(chosen, key=lambda b: position[b.end.producer], reverse=True):  # later layers first
            block.end.replace_all_uses_with(block.kept, replace_graph_outputs=True)
        removed_nodes = graph.erase_unused(set().union(*(b.dead for b in chosen))) if chosen else 0
        after = graph_cost(graph)
        return PassResult(bool(chosen), {
            "candidates": len(blocks), "removed": len(chosen), "removed_nodes": removed_nodes,
            "params": (before.params, after.params), "macs": (before.macs, after.macs),
            "layers": [_row(b, s, b in chosen, f) for b, s, f in zip(blocks, scores, feeds)],
        })

    def _scores(self, graph: Graph, blocks: list[Block], ctx: PassContext) -> list[float]:
        if self.criterion == "last":
            return [-float(i) for i in range(len(blocks))]
        if self.criterion == "random":
            rng = random.Random(ctx.seed)
            return [rng.random() for _ in blocks]
        batches = ctx.require_calibration(self.spec())
        rule = flow_scores if self.criterion == "flow" else output_error_scores
        return rule(graph, blocks, batches)


def _choose(blocks: list[Block], scores: list[float], count: int) -> list[Block]:
    """The lowest-scoring blocks that do not overlap (a block inside a removed one is gone with it); a
    chosen block may start at another's end (consecutive layers)."""
    chosen: list[Block] = []
    taken: set[Node] = set()
    for i in sorted(range(len(blocks)), key=lambda i: scores[i]):
        if len(chosen) == count:
            break
        block = blocks[i]
        if block.dead & taken or any(_cuts(block, b) or _cuts(b, block) for b in chosen):
            continue
        chosen.append(block)
        taken |= block.dead
    if len(chosen) < count:
        raise CarveError(f"only {len(chosen)} of the {count} blocks asked for can be removed together "
                         "(the others overlap them)", hint="lower n= or ratio=")
    return chosen


def _cuts(block: Block, other: Block) -> bool:
    """Removing `block` would take away what `other` keeps (unless `other` starts right at its end)."""
    return other.kept.producer in block.dead and other.kept is not block.end


def _feeds(graph: Graph, value: Value) -> str:
    """The graph outputs (heads) `value` reaches."""
    names = graph.signature_names()[1]
    reached, stack, seen = set(), [value], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        reached |= {i for i, out in enumerate(graph.outputs) if out is current}
        stack.extend(out for user in current.users for out in user.outputs)
    return ",".join(names[i] or f"output_{i}" for i in sorted(reached))


def _row(block: Block, score: float, removed: bool, feeds: str) -> dict[str, Any]:
    params = sum(n.output.type.numel() for n in block.dead if n.op == "param")
    nodes = sum(1 for n in block.dead if n.op != "param")
    return {"layer": block.name, "kind": block.kind, "nodes": nodes, "params": params, "score": score,
            "removed": "yes" if removed else "-", "feeds": feeds}
