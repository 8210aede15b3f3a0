"""Block-diagonal linears: permute inputs, a grouped (batched) matmul, permute outputs back (Monarch-style, Dao et al. 2022).

The permutations are chosen without learning: output rows and input columns are split into
`blocks` equal groups so that the blocks keep as much of the weight's energy (sum of W², each
column weighted by its input's second moment when calibration is given) as a balanced greedy
assignment finds. Rows are seeded by similarity of their |W| patterns, then rows and columns
are reassigned in turn while the kept energy grows. A weight that is block-diagonal under some
hidden permutation is recovered exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...ir import Graph
from ...ir.node import Node
from ...ir.ops.aten import arguments, encode_arguments
from ...ir.value import Value
from .layers import Layer

REFINE_STEPS = 8


@dataclass(frozen=True)
class Blocks:
    """A balanced assignment of a weight's rows and columns to blocks."""

    rows: torch.Tensor   # int64 [out]: block of each output
    cols: torch.Tensor   # int64 [in]: block of each input

    def mask(self) -> torch.Tensor:
        """True where W[r, c] lies inside a block (the entries the grouped layer keeps)."""
        return self.rows[:, None] == self.cols[None, :]

    def grouped_weight(self, weight: torch.Tensor, blocks: int) -> torch.Tensor:
        """The kept blocks as a batched matmul weight [blocks, in/blocks, out/blocks]."""
        rows, cols = self.rows.argsort(stable=True), self.cols.argsort(stable=True)
        permuted = weight[rows][:, cols]
        n_out, n_in = weight.shape[0] // blocks, weight.shape[1] // blocks
        return torch.stack([permuted[g * n_out:(g + 1) * n_out, g * n_in:(g + 1) * n_in].T for g in range(blocks)])


def assign_blocks(weight: torch.Tensor, blocks: int, column_scale: torch.Tensor | None = None) -> Blocks:
    """Balanced row/column groups keeping the most of sum(W² · column_scale) inside the blocks."""
    score = weight.double().square()
    if column_scale is not None:
        score = score * column_scale.double().clamp(min=0)[None, :]
    rows = _seed_rows(score, blocks)
    best, best_kept = None, -1.0
    for _ in range(REFINE_STEPS):
        cols = _balanced(score.T @ _one_hot(rows, blocks), blocks)
        rows = _balanced(score @ _one_hot(cols, blocks), blocks)
        kept = _kept(score, Blocks(rows, cols))
        if kept <= best_kept + 1e-12 * max(best_kept, 1.0):
            break
        best, best_kept = Blocks(rows, cols), kept
    return best


def _seed_rows(score: torch.Tensor, blocks: int) -> torch.Tensor:
    """Greedy groups of rows: the strongest free row and the free rows whose |W| pattern is most like it."""
    pattern = score.sqrt()
    pattern = pattern / pattern.norm(dim=1, keepdim=True).clamp(min=1e-300)
    similarity, strength = pattern @ pattern.T, score.sum(1)
    size, free = score.shape[0] // blocks, torch.ones(score.shape[0], dtype=torch.bool)
    groups = torch.empty(score.shape[0], dtype=torch.long)
    for g in range(blocks):
        seed = int(torch.where(free, strength, -1.0).argmax())
        members = torch.where(free, similarity[seed], -2.0).topk(size).indices
        groups[members], free[members] = g, False
    return groups


def _balanced(gain: torch.Tensor, blocks: int) -> torch.Tensor:
    """Each item (row of `gain`, [n, blocks]) to a block, n/blocks per block, largest gains first."""
    n, size = gain.shape[0], gain.shape[0] // blocks
    groups, filled = torch.full((n,), -1, dtype=torch.long), [0] * blocks
    for flat in gain.flatten().argsort(descending=True, stable=True).tolist():
        item, block = divmod(flat, blocks)
        if groups[item] < 0 and filled[block] < size:
            groups[item] = block
            filled[block] += 1
    return groups


def _one_hot(groups: torch.Tensor, blocks: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(groups, blocks).double()


def _kept(score: torch.Tensor, assignment: Blocks) -> float:
    return float(score[assignment.mask()].sum())


# ---- the rewrite ---------------------------------------------------------------------------

def lead_sizes(node: Node) -> list[int] | None:
    """The input's leading sizes for the views (first one -1, so any batch works); None when not static."""
    shape = list(node.inputs[0].type.shape[:-1])
    if not all(isinstance(d, int) for d in shape[1:]):
        return None
    return [-1, *shape[1:]] if shape else []


def make_block_diagonal(graph: Graph, layer: Layer, assignment: Blocks, blocks: int) -> None:
    """Replace every call site of `layer` by gather -> view -> batched matmul -> view -> gather (+ bias)."""
    original = graph.params[layer.weight_name]
    grouped = assignment.grouped_weight(layer.matrix, blocks).to(original.dtype).contiguous()
    weight = graph.add_param(graph.params.unique_name(f"{layer.name}.blockdiag.weight"), grouped, trainable=True)
    gather_in = graph.add_param(graph.params.unique_name(f"{layer.name}.blockdiag.in_perm"),
                                assignment.cols.argsort(stable=True))
    gather_out = graph.add_param(graph.params.unique_name(f"{layer.name}.blockdiag.out_perm"),
                                 assignment.rows.argsort(stable=True).argsort())
    readers = [p for p in graph.param_nodes() if p.attrs["name"] == layer.weight_name]
    for node in layer.nodes:
        _replace_node(graph, node, (gather_in, weight, gather_out), blocks)
    graph.erase_unused(readers)
    del graph.params[layer.weight_name]


def _replace_node(graph: Graph, node: Node, params: tuple[Value, Value, Value], blocks: int) -> None:
    gather_in, weight, gather_out = params
    lead, args = lead_sizes(node), arguments(node)
    n_in, n_out = gather_in.type.shape[0], gather_out.type.shape[0]
    x = _add(graph, node, "aten.view", {"self": _gather(graph, node, args["input"], gather_in),
                                        "size": [*lead, blocks, 1, n_in // blocks]})
    y = _add(graph, node, "aten.matmul", {"self": x, "other": weight})
    out = _gather(graph, node, _add(graph, node, "aten.view", {"self": y, "size": [*lead, n_out]}), gather_out)
    if args["bias"] is not None:
        out = _add(graph, node, "aten.add.Tensor", {"self": out, "other": args["bias"]})
    node.output.replace_all_uses_with(out, replace_graph_outputs=True)
    graph.erase(node)


def _add(graph: Graph, anchor: Node, op: str, named: dict) -> Value:
    """A new aten node from schema arguments, placed before `anchor` in its scope."""
    inputs, attrs = encode_arguments(op, named)
    return graph.add_node(op, inputs, attrs, scope=anchor.scope, before=anchor).output


def _gather(graph: Graph, anchor: Node, x: Value, index: Value) -> Value:
    """x[..., index]: a permutation of the last dim (a Gather in ONNX)."""
    attrs = {"indices": [None] * (len(x.type.shape) - 1) + [True]}
    return graph.add_node("aten.index.Tensor", [x, index], attrs, scope=anchor.scope, before=anchor).output
