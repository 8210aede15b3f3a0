"""Calibration block by block, the sequential scheme of GPTQ (Frantar et al. 2023) and SVD-LLM (Wang et al. 2024).

The graph is cut into segments: a preamble, one segment per repeated block (a decoder layer, found
from the nodes' module paths `layers.7.…`, else after each residual join), and a tail. Calibration
runs one segment at a time over every batch, keeping only the values live across the cut (the
residual stream, plus what every block reads, like the attention mask and rotary tables). A
segment's weights are read from the ParamStore when used and released after it. With `compress`,
the pass rewrites each segment once its statistics are in, and the next segment is fed the outputs
of the rewritten one (sequential error correction).

Boundary activations stay in memory up to a budget (a quarter of max_memory: two cuts are alive at
once), past it they go to a staging safetensors file per batch.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..analysis.activations import Observer, as_batches, evaluate, run_observed
from ..errors import CarveError
from ..ir import Graph
from ..ir.node import Node
from ..ir.signature import bind_inputs
from ..ir.tensorfile import read_tensor, safetensors_index, write_safetensors
from ..ir.value import Value
from ..progress import track
from .blocks import find_blocks

NUMBERED = re.compile(r"^(.*?\.)?(\d+)(?:\.|$)")  # the first all-digit component of a module path
BOUNDARY_SHARE = 4  # one cut's activations may use max_memory / BOUNDARY_SHARE before spilling
Compress = Callable[[set[Value]], bool]  # values observed in full so far -> rewrite what is ready; changed?


@dataclass(frozen=True)
class Segment:
    """A contiguous run of non-param nodes in topological order."""

    name: str
    nodes: list[Node]


# ---- finding the blocks ----------------------------------------------------------------------

def find_segments(graph: Graph) -> list[Segment]:
    """The graph as preamble, repeated blocks in order, tail (empty parts left out)."""
    nodes = [node for node in graph.nodes if node.op != "param"]
    spans = scope_blocks(nodes) or residual_blocks(graph, nodes)
    if not spans:
        return [Segment("graph", nodes)] if nodes else []
    segments = [Segment("preamble", nodes[:spans[0][1]])]
    previous = spans[0][1] - 1
    for name, _, end in spans:
        segments.append(Segment(name, nodes[previous + 1:end + 1]))
        previous = end
    segments.append(Segment("tail", nodes[previous + 1:]))
    return [segment for segment in segments if segment.nodes]


def block_name(scope: str) -> str | None:
    """The module path up to its first numbered component: `layers.7.mlp` -> `layers.7`; None without one."""
    match = NUMBERED.match(scope)
    return f"{match[1] or ''}{match[2]}" if match else None


def scope_blocks(nodes: list[Node]) -> list[tuple[str, int, int]]:
    """(block name, first, last position) of each numbered module (`layers.0`, `layers.1`, ...), when there
    are two or more and their spans do not interleave; else []."""
    spans: dict[str, list[int]] = {}
    for position, node in enumerate(nodes):
        name = block_name(node.scope)
        if name is not None:
            spans.setdefault(name, [position, position])[1] = position
    ordered = sorted(spans.items(), key=lambda item: item[1][0])
    disjoint = all(a[1][1] < b[1][0] for a, b in zip(ordered, ordered[1:]))
    return [(name, first, last) for name, (first, last) in ordered] if len(ordered) > 1 and disjoint else []


def residual_blocks(graph: Graph, nodes: list[Node]) -> list[tuple[str, int, int]]:
    """The structural fallback: a block ends where a residual branch joins the trunk (`x + f(x)`, and the
    norm after it in post-LN models), as depth pruning finds them."""
    position = {node: i for i, node in enumerate(nodes)}
    ends = sorted({position[b.end.producer] for b in find_blocks(graph) if b.kind == "residual"})
    starts = [0] + [end + 1 for end in ends[:-1]]
    return [(f"block {k}", start, end) for k, (start, end) in enumerate(zip(starts, ends))] if len(ends) > 1 else []


# ---- boundary activations --------------------------------------------------------------------

class Boundary:
    """The live values of every calibration batch at one cut; batches past the memory budget go to a
    safetensors file each (tensors only; other values are small and stay)."""

    def __init__(self, folder: Path, label: str, budget: int | None) -> None:
        self.folder, self.label, self.budget = folder, label, budget
        self.resident = 0
        self.spilled = 0
        self._memory: dict[int, dict[Value, Any]] = {}
        self._files: dict[int, tuple[Path, list[Value], dict[Value, Any]]] = {}

    def put(self, index: int, values: dict[Value, Any]) -> None:
        size = sum(t.numel() * t.element_size() for t in values.values() if isinstance(t, torch.Tensor))
        if self.budget is None or self.resident + size <= self.budget:
            self._memory[index] = values
            self.resident += size
            return
        tensors = [v for v, t in values.items() if isinstance(t, torch.Tensor)]
        others = {v: t for v, t in values.items() if not isinstance(t, torch.Tensor)}
        path = self.folder / f"{self.label}-{index}.safetensors"
        named = {str(k): values[v] for k, v in enumerate(tensors)}
        write_safetensors(path, [(name, t.dtype, tuple(t.shape)) for name, t in named.items()], named.__getitem__)
        self._files[index] = (path, tensors, others)
        self.spilled += size

    def get(self, index: int) -> dict[Value, Any]:
        if index in self._memory:
            return dict(self._memory[index])
        path, tensors, others = self._files[index]
        locations, _ = safetensors_index(path)
        return {**others, **{v: read_tensor(locations[str(k)]) for k, v in enumerate(tensors)}}

    def rename(self, mapping: dict[Value, Value]) -> None:
        """Key the stored values by their replacements (a rewrite replaced values read across the cut)."""
        self._memory = {i: {mapping.get(v, v): t for v, t in values.items()} for i, values in self._memory.items()}
        self._files = {i: (path, [mapping.get(v, v) for v in tensors], {mapping.get(v, v): t for v, t in others.items()})
                       for i, (path, tensors, others) in self._files.items()}

    def discard(self) -> None:
        """Forget every batch (and delete their files); the boundary can be filled again."""
        self._memory.clear()
        self.resident = 0
        for path, _, _ in self._files.values():
            path.unlink(missing_ok=True)
        self._files.clear()


# ---- running segment by segment --------------------------------------------------------------

@dataclass
class Run:
    """What a sequential run did: segments run, bytes of boundary activations spilled, final outputs."""

    segments: list[str]
    spilled: int
    outputs: list[list[torch.Tensor]]


Paired = Callable[[torch.Tensor, torch.Tensor], None]  # (the uncompressed model's tensor, the compressed one's)


def run_sequential(graph: Graph, batches: Sequence[Any], observers: dict[Value, list[Observer]], *,
                   paired: dict[Value, list[Paired]] | None = None, max_memory: int | None = None,
                   compress: Compress | None = None, keep_outputs: bool = False,
                   description: str = "calibrating") -> Run:
    """Run `graph` on every batch one segment at a time, calling each observer with its value's tensor.

    compress: called after each segment with the observed values whose statistics are complete; it
    rewrites the layers those make ready, and the segment is run again, so the next one reads the
    rewritten segment's outputs. paired: observers (no value in both dicts) called with a value as the
    uncompressed graph makes it and as the partly compressed one does, batch by batch; a second
    stream of boundaries, of the uncompressed graph, is kept for them. keep_outputs: return the graph
    outputs of every batch."""
    batches = as_batches(batches)
    with tempfile.TemporaryDirectory(prefix="carve-boundary-") as folder:
        run = _Sequential(graph, batches, Path(folder), max_memory, observers, paired or {})
        names = [segment.name for segment in find_segments(graph)]
        complete: set[Value] = set()
        for name in track(names, description):
            watched = run.step(name)
            complete |= watched
            reads = run.reads_after(name) if run.reference is not None else {}
            if compress is not None and compress(complete):
                run.rerun(name, reads)
            run.advance(name)
        return Run(names, run.spilled + run.cut.spilled, run.outputs() if keep_outputs else [])


class _Sequential:
    """The state between segments: the cut of the graph being run (and of the uncompressed graph)."""

    def __init__(self, graph: Graph, batches: list[tuple], folder: Path, max_memory: int | None,
                 observers: dict[Value, list[Observer]], paired: dict[Value, list[Paired]]) -> None:
        self.graph, self.folder, self.observers, self.paired = graph, folder, observers, paired
        self.sizes = [bind_inputs(graph.inputs, batch, "calibration batch") for batch in batches]
        self.budget = max_memory // BOUNDARY_SHARE if max_memory is not None else None
        self.cut = self._first_cut("cut", batches)
        self.reference = self._first_cut("reference", batches) if paired else None
        self.following: Boundary | None = None
        self.reference_following: Boundary | None = None
        self.spilled = 0
        self.count = 0

    def _first_cut(self, label: str, batches: list[tuple]) -> Boundary:
        cut = Boundary(self.folder, f"{label}0", self.budget)
        for index, batch in enumerate(batches):
            cut.put(index, dict(zip(self.graph.inputs, batch)))
        return cut

    def step(self, name: str) -> set[Value]:
        """Run segment `name` over every batch, observing; returns the values observed in full."""
        segment = _segment(self.graph, name)
        watched = _observed_here(self.graph, segment, {**self.observers, **self.paired})
        single = {v: self.observers[v] for v in watched if v in self.observers}
        pairs = _Pairs({v: self.paired[v] for v in watched if v in self.paired})
        self.count += 1
        self.following = Boundary(self.folder, f"cut{self.count}", self.budget)
        if self.reference is not None:
            self.reference_following = Boundary(self.folder, f"reference{self.count}", self.budget)
        plan = _plan(self.graph, segment)
        for index, sizes in enumerate(self.sizes):
            if self.reference is not None:
                self.reference_following.put(index, _run_batch(self.graph, plan, self.reference.get(index),
                                                               sizes, pairs.keep()))
            self.following.put(index, _run_batch(self.graph, plan, self.cut.get(index), sizes,
                                                 {**single, **pairs.feed()}))
        return watched

    def reads_after(self, name: str) -> dict[tuple, Value]:
        """Where the values live after segment `name` are read: (node, input position) or ("output", index)."""
        nodes = self.graph.nodes
        later = nodes[nodes.index(_segment(self.graph, name).nodes[-1]) + 1:]
        reads: dict[tuple, Value] = {("output", i): v for i, v in enumerate(self.graph.outputs)}
        reads.update(((node, i), v) for node in later for i, v in enumerate(node.inputs))
        return reads

    def rerun(self, name: str, reads: dict[tuple, Value]) -> None:
        """Run segment `name` again (rewritten) from the same cut, without observing; the reference cut's
        values that the rewrite replaced are renamed to their replacements."""
        if self.reference_following is not None:
            self.reference_following.rename(_replacements(self.graph, reads))
        plan = _plan(self.graph, _segment(self.graph, name))
        self.spilled += self.following.spilled
        self.following.discard()
        for index, sizes in enumerate(self.sizes):
            self.following.put(index, _run_batch(self.graph, plan, self.cut.get(index), sizes, {}))

    def advance(self, name: str) -> None:
        """Release the segment's weights and move to the cut after it."""
        _release_weights(self.graph, _segment(self.graph, name))
        for cut in (self.cut, self.reference):
            if cut is not None:
                self.spilled += cut.spilled
                cut.discard()
        self.cut, self.reference = self.following, self.reference_following

    def outputs(self) -> list[list[torch.Tensor]]:
        with torch.no_grad():
            return [[_value(self.graph, self.cut.get(i), v, sizes) for v in self.graph.outputs]
                    for i, sizes in enumerate(self.sizes)]


def _replacements(graph: Graph, reads: dict[tuple, Value]) -> dict[Value, Value]:
    """old -> new for each value read at `reads` that a rewrite replaced (readers it erased are skipped)."""
    mapping = {}
    for (reader, index), old in reads.items():
        if reader == "output":
            new = graph.outputs[index]
        elif reader.graph is graph:
            new = reader.inputs[index]
        else:
            continue
        if new is not old:
            mapping[old] = new
    return mapping


class _Pairs:
    """Hands paired observers one batch's (reference, actual) tensors: the reference run keeps its
    tensors, the actual run feeds them on."""

    def __init__(self, paired: dict[Value, list[Paired]]) -> None:
        self.paired = paired
        self.reference: dict[Value, torch.Tensor] = {}

    def keep(self) -> dict[Value, list[Observer]]:
        return {value: [partial(self.reference.__setitem__, value)] for value in self.paired}

    def feed(self) -> dict[Value, list[Observer]]:
        return {value: [partial(self._call, value)] for value in self.paired}

    def _call(self, value: Value, tensor: torch.Tensor) -> None:
        reference = self.reference.pop(value)
        for observer in self.paired[value]:
            observer(reference, tensor)


def _segment(graph: Graph, name: str) -> Segment:
    """The segment `name` as the graph is now (a rewrite may have added nodes to it, or new parts
    around the blocks: those are computed from the cut when read, see `_value`)."""
    found = [segment for segment in find_segments(graph) if segment.name == name]
    if not found:
        raise CarveError(f"sequential calibration: a rewrite removed the block {name}",
                         hint="report it; meanwhile run without sequential=true or max-memory")
    return found[0]


@dataclass(frozen=True)
class _Plan:
    """A segment ready to run: its nodes, where each value is read last, what is read after it."""

    nodes: list[Node]
    last_use: dict[Value, int]
    needed_after: set[Value]


def _plan(graph: Graph, segment: Segment) -> _Plan:
    return _Plan(segment.nodes, _last_uses(segment), _needed_after(graph, segment))


def _run_batch(graph: Graph, plan: _Plan, env: dict[Value, Any], sizes: dict[str, int],
               observers: dict[Value, list[Observer]]) -> dict[Value, Any]:
    """Run a segment on one batch's live values `env` (observing the values in `observers`, from the cut
    or as made); returns the values live after it."""
    with torch.no_grad():
        _observe_all(observers, env)
        for position, node in enumerate(plan.nodes):
            results = evaluate(graph, node, [_value(graph, env, v, sizes) for v in node.inputs], sizes)
            produced = dict(zip(node.outputs, results))
            env.update(produced)
            _observe_all(observers, produced)
            for value in set(node.inputs):
                if plan.last_use[value] == position and value not in plan.needed_after:
                    env.pop(value, None)
    return {v: t for v, t in env.items() if v in plan.needed_after}


def _observed_here(graph: Graph, segment: Segment, observers: dict[Value, Any]) -> set[Value]:
    """The observed values whose first reader is in `segment` (or, read by none, made in it): each is
    observed there, so with compression it is seen as the rewritten earlier blocks make it."""
    if not observers:
        return set()
    position = {node: i for i, node in enumerate(graph.nodes)}
    members = set(segment.nodes)
    here = set()
    for value in observers:
        readers = [node for node in value.users if node in position]
        owner = min(readers, key=position.__getitem__) if readers else value.producer
        if owner in members:
            here.add(value)
    return here


def _value(graph: Graph, env: dict[Value, Any], value: Value, sizes: dict[str, int]) -> Any:
    """A node input: a weight from the store, a live value, or one a rewrite inserted before the cut
    (a quantize/dequantize of a live value), computed here."""
    producer = value.producer
    if producer is not None and producer.op == "param":
        return graph.params[producer.attrs["name"]]
    if value not in env:
        if producer is None:
            raise CarveError(f"sequential calibration: input %{value.name} is missing at a block boundary")
        inputs = [_value(graph, env, v, sizes) for v in producer.inputs]
        env.update(zip(producer.outputs, evaluate(graph, producer, inputs, sizes)))
    return env[value]


def _needed_after(graph: Graph, segment: Segment) -> set[Value]:
    """Values read after the segment's last node (graph outputs included), params aside."""
    nodes = graph.nodes
    start = nodes.index(segment.nodes[-1]) + 1
    needed = {v for node in nodes[start:] for v in node.inputs
              if v.producer is None or v.producer.op != "param"}
    return needed | set(graph.outputs)


def _last_uses(segment: Segment) -> dict[Value, int]:
    last: dict[Value, int] = {}
    for position, node in enumerate(segment.nodes):
        for value in node.inputs:
            last[value] = position
    return last


def _observe_all(observers: dict[Value, list[Observer]], values: dict[Value, Any]) -> None:
    for value, tensor in values.items():
        for observer in observers.get(value, ()):
            observer(tensor)


def _release_weights(graph: Graph, segment: Segment) -> None:
    """Hand the segment's file-backed weights back to their files (entries a pass created stay)."""
    for node in segment.nodes:
        for value in node.inputs:
            if value.producer is not None and value.producer.op == "param":
                graph.params.release(value.producer.attrs["name"])


# ---- the calibration entry point --------------------------------------------------------------

def observe(graph: Graph, batches: Sequence[Any], observers: dict[Value, list[Observer]],
            max_memory: int | None, description: str) -> None:
    """Feed every observer its value on every batch: whole-graph per batch, or block by block under max_memory."""
    if max_memory is not None:
        run_sequential(graph, batches, observers, max_memory=max_memory, description=description)
        return
    for batch in track(as_batches(batches), description):
        run_observed(graph, batch, observers)
