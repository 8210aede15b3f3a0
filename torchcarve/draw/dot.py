"""DOT text for a Graph, in the style of Neural Circuit Diagrams: every wire carries its axes.

Ops are boxes coloured by family, weights small boxes with their shapes, nodes grouped in clusters
by module path (`loc`), residual/skip wires drawn apart, and repeated sibling blocks
(`encoder.layer.0` ... `encoder.layer.11` with identical ops) drawn once as `×N` unless expanded.
Every name taken from the graph goes through `quote` (DOT string escaping).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from ..errors import CarveError
from ..ir import Graph, Node, TensorType, Value
from .families import COLOURS, base_name, family_of

HEADER = """digraph G {
  graph [rankdir=TB, nodesep=0.25, ranksep=0.3, fontname="Helvetica", fontsize=11, labeljust=l, bgcolor="white"];
  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11, height=0.3, margin="0.08,0.03"];
  edge [fontname="Helvetica", fontsize=9, color="#555555", fontcolor="#333333", arrowsize=0.6];
"""
WEIGHT_STYLE = 'shape=box, style="filled", fillcolor="#f2f2f2", color="#999999", fontsize=8, height=0.2'
IO_STYLE = 'shape=ellipse, style="filled", fillcolor="#ffffff", fontsize=10'
SKIP_STYLE = 'color="#2b6cb0", fontcolor="#2b6cb0", penwidth=1.4, style=dashed'
MARK_STYLES = {  # node mark -> extra DOT attributes
    "removed": 'color="#d62728", fontcolor="#d62728", penwidth=2, style="rounded,filled,dashed"',
    "added": 'color="#2ca02c", penwidth=2',
}
CHANGED_WIRE_STYLE = 'color="#d62728", fontcolor="#d62728", penwidth=1.6'


@dataclass(frozen=True)
class Marks:
    """Highlights for before/after pictures: node keys (see `node_key`) and wire labels by value name."""

    removed: frozenset[str] = frozenset()
    added: frozenset[str] = frozenset()
    wires: Mapping[str, str] = field(default_factory=dict)   # value name -> label, e.g. "batch × 768 → 384"


def node_key(node: Node) -> str:
    """A node's identity across clones of a graph: its first output's name (names are unique in a graph)."""
    return node.outputs[0].name if node.outputs else f"{node.op}@{id(node)}"


def shape_label(type: TensorType) -> str:
    """A wire's axes, symbols kept: `batch × 197 × 768` (dtype added when not f32)."""
    axes = " × ".join(str(d) for d in type.shape) or "scalar"
    return axes if type.dtype == "f32" else f"{axes} {type.dtype}"


def quote(text: str) -> str:
    """A DOT double-quoted string holding `text` literally (quotes, backslashes, newlines escaped)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "\\n")
    return f'"{escaped}"'


def lines(*parts: str) -> str:
    """A multi-line DOT label from literal parts (each escaped; joined by DOT's centred line break)."""
    return '"' + "\\n".join(quote(part)[1:-1] for part in parts if part) + '"'


# ---- repeated blocks ----------------------------------------------------------------------------
@dataclass
class Folding:
    """Repeated blocks drawn once: hidden node -> its twin in the drawn block; block path -> label."""

    twin: dict[Node, Node] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    blocks: list[str] = field(default_factory=list)     # every foldable block path (for error messages)


def _in_block(scope: str, path: str) -> bool:
    return scope == path or scope.startswith(path + ".")


def _indexed_blocks(ops: Sequence[Node]) -> dict[str, list[str]]:
    """parent path -> child paths ending in an integer (`encoder.layer` -> `encoder.layer.0`, ...), in index order."""
    children: dict[str, set[str]] = defaultdict(set)
    for node in ops:
        parts = node.scope.split(".") if node.scope else []
        for depth in range(1, len(parts)):
            if parts[depth].isdigit():
                children[".".join(parts[:depth])].add(".".join(parts[:depth + 1]))
    return {parent: sorted(paths, key=lambda p: int(p.rsplit(".", 1)[1])) for parent, paths in children.items()}


def _signature(block: list[Node], path: str) -> tuple:
    """What makes two blocks the same picture: ops, relative scopes and output types, in order."""
    return tuple((n.op, n.scope[len(path):], tuple(str(v.type) for v in n.outputs)) for n in block)


def _expanded(path: str, expand: Iterable[str]) -> bool:
    parent = path.rsplit(".", 1)[0]
    return any(path == e or path.endswith("." + e) or parent == e or parent.endswith("." + e) for e in expand)


def fold_repeats(ops: Sequence[Node], expand: Sequence[str] = ()) -> Folding:
    """Find runs of sibling blocks (two or more ops each) with identical ops; keep the first of each run
    and map the others onto it. Outer blocks go first; blocks inside a folded-away block stay folded."""
    folding = Folding()
    blocks = _indexed_blocks(ops)
    members = {path: [n for n in ops if _in_block(n.scope, path)] for paths in blocks.values() for path in paths}
    folding.blocks = [path for path, nodes in members.items() if len(nodes) >= 2]
    for parent in sorted(blocks, key=lambda p: p.count(".")):
        run: list[str] = []
        for path in blocks[parent]:
            block = members[path]
            if len(block) < 2 or _expanded(path, expand) or _hidden(block, folding):
                _fold_run(run, members, folding)
                run = []
                continue
            if run and _signature(block, path) != _signature(members[run[0]], run[0]):
                _fold_run(run, members, folding)
                run = []
            run.append(path)
        _fold_run(run, members, folding)
    unknown = [e for e in expand if not any(_expanded(p, [e]) for p in folding.blocks)]
    if unknown:
        shown = ", ".join(folding.blocks[:8]) or "none"
        raise CarveError(f"--expand {unknown[0]!r} names no repeated block of this graph",
                         hint=f"blocks: {shown}{' …' if len(folding.blocks) > 8 else ''}")
    return folding


def _hidden(block: list[Node], folding: Folding) -> bool:
    return any(n in folding.twin for n in block)


def _fold_run(run: list[str], members: dict[str, list[Node]], folding: Folding) -> None:
    if len(run) < 2:
        return
    first = members[run[0]]
    for path in run[1:]:
        folding.twin.update(zip(members[path], first))
    prefix, _, start = run[0].rpartition(".")
    folding.labels[run[0]] = f"{prefix}.{start} … {run[-1].rsplit('.', 1)[1]} (×{len(run)})"


# ---- clusters by module path --------------------------------------------------------------------
def _cluster_paths(ops: Sequence[Node]) -> tuple[dict[Node, str], dict[str, list[str]]]:
    """Each op's cluster (the deepest module path holding two or more drawn ops) and the cluster tree."""
    counts: dict[str, int] = defaultdict(int)   # path -> ops inside (dict order: first appearance)
    for node in ops:
        parts = node.scope.split(".") if node.scope else []
        for depth in range(1, len(parts) + 1):
            counts[".".join(parts[:depth])] += 1
    home: dict[Node, str] = {}
    for node in ops:
        path = node.scope
        while path and counts[path] < 2:
            path = path.rpartition(".")[0]
        home[node] = path
    tree: dict[str, list[str]] = defaultdict(list)
    for path in sorted((p for p in counts if counts[p] >= 2), key=lambda p: p.count(".")):
        parent = path.rpartition(".")[0]
        while parent and counts[parent] < 2:
            parent = parent.rpartition(".")[0]
        tree[parent].append(path)
    return home, tree


# ---- the picture --------------------------------------------------------------------------------
@dataclass
class _Drawing:
    graph: Graph
    folding: Folding
    marks: Marks
    weights: bool
    scope_sizes: Counter = field(default_factory=Counter)
    ids: dict[object, str] = field(default_factory=dict)
    out: list[str] = field(default_factory=list)

    def id_of(self, thing: object) -> str:
        return self.ids.setdefault(thing, f"n{len(self.ids)}")


def to_dot(graph: Graph, *, expand: Sequence[str] = (), marks: Marks | None = None, weights: bool = True) -> str:
    """The DOT text of `graph`'s picture; `expand` lists repeated blocks to draw in full."""
    ops = [n for n in graph.nodes if n.op != "param"]
    drawing = _Drawing(graph, fold_repeats(ops, expand), marks or Marks(), weights)
    shown = [n for n in ops if n not in drawing.folding.twin]
    drawing.scope_sizes.update(n.scope for n in shown)
    home, tree = _cluster_paths(shown)
    by_cluster: dict[str, list[Node]] = defaultdict(list)
    for node in shown:
        by_cluster[home[node]].append(node)
    drawing.out.append(HEADER)
    for value in graph.inputs:
        drawing.out.append(f'  {drawing.id_of(value)} [{IO_STYLE}, class="input", '
                           f'label={lines("%" + value.name, shape_label(value.type))}];\n')
    _emit_cluster(drawing, "", tree, by_cluster, indent="  ")
    _emit_edges(drawing, shown)
    drawing.out.append("}\n")
    return "".join(drawing.out)


def _emit_cluster(drawing: _Drawing, path: str, tree: dict[str, list[str]], by_cluster: dict[str, list[Node]],
                  indent: str) -> None:
    for node in by_cluster.get(path, []):
        drawing.out.append(indent + _op_statement(drawing, node))
    for child in tree.get(path, []):
        while not by_cluster.get(child) and len(tree.get(child, [])) == 1 and child not in drawing.folding.labels:
            child = tree[child][0]   # a cluster holding only one cluster: draw just the inner one
        folded = child in drawing.folding.labels
        label = drawing.folding.labels.get(child, child)
        style = 'style="rounded,filled"; fillcolor="#eef4fb"; color="#2b6cb0"; penwidth=1.6' if folded \
            else 'style="rounded"; color="#bbbbbb"'
        drawing.out.append(f'{indent}subgraph cluster_{drawing.id_of(("cluster", child))} {{\n'
                           f'{indent}  label={quote(label)}; {style}; class={quote("cluster" + (" folded" if folded else ""))};\n')
        _emit_cluster(drawing, child, tree, by_cluster, indent + "  ")
        drawing.out.append(f"{indent}}}\n")


def _op_statement(drawing: _Drawing, node: Node) -> str:
    family = family_of(node.op)
    leaf = node.scope.rpartition(".")[2] if node.scope else ""
    if leaf.isdigit() or drawing.scope_sizes[node.scope] > 1:   # only a module's own name says something
        leaf = ""
    mark = _mark(drawing, node)
    extra = f", {MARK_STYLES[mark]}" if mark else ""
    tooltip = f"{', '.join('%' + v.name for v in node.outputs)} = {node.op}" + (f" loc({node.scope})" if node.scope else "")
    classes = " ".join(filter(None, ["op", f"family-{family}", mark]))
    dead = [shape_label(v.type) for v in node.outputs if not v.users and not v.is_graph_output]  # no wire shows them
    return (f'{drawing.id_of(node)} [label={lines(base_name(node.op), leaf, *dead)}, fillcolor="{COLOURS[family]}", '
            f'class="{classes}", tooltip={quote(tooltip)}{extra}];\n')


def _mark(drawing: _Drawing, node: Node) -> str:
    key = node_key(node)
    return "removed" if key in drawing.marks.removed else "added" if key in drawing.marks.added else ""


def _emit_edges(drawing: _Drawing, shown: list[Node]) -> None:
    twin = drawing.folding.twin
    depth = _depths(shown, twin)
    seen: set[tuple[str, str, str]] = set()
    for node in shown:
        for value in node.inputs:
            source = _drawn_value(value, twin)
            producer = source.producer
            if producer is not None and producer.op == "param":
                _emit_weight(drawing, source, node, seen)
                continue
            skip = producer is not None and depth[node] - depth[producer] > 1   # a longer path runs beside it
            _emit_wire(drawing, source, drawing.id_of(node), seen, skip)
    for index, value in enumerate(drawing.graph.outputs):
        out_id = drawing.id_of(("output", index))
        drawing.out.append(f'  {out_id} [{IO_STYLE}, class="output", label={lines("output " + str(index))}];\n')
        _emit_wire(drawing, _drawn_value(value, twin), out_id, seen, False)


def _drawn_value(value: Value, twin: dict[Node, Node]) -> Value:
    """The value the picture shows for `value`: its twin in the drawn block when its producer is folded away."""
    producer = value.producer
    return twin[producer].outputs[value.index] if producer in twin else value


def _depths(shown: list[Node], twin: dict[Node, Node]) -> dict[Node, int]:
    """Longest-path depth of each drawn op (graph order is topological; folded producers count as their twins)."""
    depth: dict[Node, int] = {}
    for node in shown:
        producers = [_drawn_value(v, twin).producer for v in node.inputs]
        depth[node] = 1 + max((depth.get(p, 0) for p in producers if p is not None and p is not node), default=0)
    return depth


def _source_id(drawing: _Drawing, value: Value) -> str:
    return drawing.id_of(value) if value.producer is None else drawing.id_of(value.producer)


def _emit_wire(drawing: _Drawing, value: Value, target: str, seen: set, skip: bool) -> None:
    key = (_source_id(drawing, value), target, value.name)
    if key in seen:
        return
    seen.add(key)
    changed = drawing.marks.wires.get(value.name)
    label = changed or shape_label(value.type)
    style = CHANGED_WIRE_STYLE if changed else SKIP_STYLE if skip else ""
    classes = "wire" + (" skip" if skip else "") + (" changed" if changed else "")
    drawing.out.append(f'  {key[0]} -> {target} [label={quote(label)}, class="{classes}"'
                       f'{", " + style if style else ""}];\n')


def _emit_weight(drawing: _Drawing, value: Value, node: Node, seen: set) -> None:
    if not drawing.weights:
        return
    weight_id = drawing.id_of(value.producer)
    if (weight_id, "", "") not in seen:
        seen.add((weight_id, "", ""))
        name = str(value.producer.attrs.get("name", value.name))
        changed = drawing.marks.wires.get(value.name)
        mark = _mark(drawing, value.producer) or ("changed" if changed else "")
        style = {"changed": CHANGED_WIRE_STYLE, "": ""}.get(mark, MARK_STYLES.get(mark, ""))
        drawing.out.append(f'  {weight_id} [{WEIGHT_STYLE}, class="{" ".join(filter(None, ["weight", mark]))}", '
                           f'label={lines(name.rpartition(".")[2], changed or shape_label(value.type))}, '
                           f'tooltip={quote(name)}{", " + style if style else ""}];\n')
    drawing.out.append(f'  {weight_id} -> {drawing.id_of(node)} [class="wire param", color="#aaaaaa", arrowsize=0.4];\n')
