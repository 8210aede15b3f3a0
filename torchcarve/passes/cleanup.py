"""Cleanup passes: dead code, common subexpressions, constant folding and algebraic no-ops."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from ..ir import Graph
from ..ir.node import Node
from ..ir.ops import get_op
from ..ir.ops.aten import arguments, encode_arguments
from ..ir.types import DTYPE_NAMES, TensorType
from ..ir.value import Value
from ..opset import VIEW_OPS, known
from .base import Pass, PassContext, PassResult, register_pass
from .rewrite import ANY, P, Rewriter, apply_rules

# ops whose result is not a function of their inputs: never merged or folded
RANDOM_OPS = {"rand", "randn", "randint", "rand_like", "randn_like", "randint_like", "bernoulli", "multinomial",
              "normal", "uniform", "native_dropout", "empty", "empty_like", "empty_strided"}


def is_random(node: Node) -> bool:
    parts = node.op.split(".")
    train = node.op.startswith("aten.") and "dropout" in node.op and arguments(node).get("train")
    return (len(parts) > 1 and parts[1] in RANDOM_OPS) or "Random" in node.op or bool(train)


@register_pass("dce")
@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Dead code elimination: erase nodes whose outputs nothing reads (and weights only they read)."""

    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        removed = graph.erase_unused(graph.nodes)
        return PassResult(removed > 0, {"removed": removed})


@register_pass("cse")
@dataclass(frozen=True)
class CommonSubexpressionElimination(Pass):
    """Common subexpression elimination: one node per (op, inputs, attrs); duplicates reuse it.
    Constants (params that are not trainable) with equal values count as one input."""

    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        seen: dict[tuple, Node] = {}
        merged = 0
        for node in graph.nodes:
            if is_random(node):
                continue
            key = _constant_key(graph, node) or (node.op, tuple(id(v) for v in node.inputs), _attrs_key(node.attrs))
            twin = seen.setdefault(key, node)
            if twin is node or (key[0] == "constant" and not _same_tensor(graph, node, twin)):
                continue
            for old, new in zip(node.outputs, twin.outputs):
                old.replace_all_uses_with(new, replace_graph_outputs=True)
            graph.erase(node)
            merged += 1
        return PassResult(merged > 0, {"merged": merged})


def _constant_key(graph: Graph, node: Node) -> tuple | None:
    """A frozen param's key by value (dtype, shape, a content hash); None for anything else. Trainable
    weights keep their own identity, so equal-initialised parameters never become tied."""
    if node.op != "param" or node.attrs["name"] in graph.params.trainable:
        return None
    tensor = graph.params[node.attrs["name"]]
    data = tensor.detach().contiguous().view(-1).view(torch.uint8) if tensor.numel() else tensor
    return ("constant", str(tensor.dtype), tuple(tensor.shape), hashlib.blake2b(data.numpy().tobytes()).hexdigest())


def _same_tensor(graph: Graph, node: Node, twin: Node) -> bool:
    return torch.equal(graph.params[node.attrs["name"]], graph.params[twin.attrs["name"]])


def _attrs_key(attrs: dict[str, Any]) -> str:
    return repr(sorted((k, repr(v)) for k, v in attrs.items()))


@register_pass("fold-constants")
@dataclass(frozen=True)
class FoldConstants(Pass):
    """Constant folding: evaluate nodes whose inputs are all weights/constants into new weights.

    max_elements: skip results larger than this (e.g. big zero tensors that are cheap to build).
    max_growth: a result more than this many bytes larger than its inputs (a broadcast, an expand, a
      lookup whose indices repeat) stays computed at run time, so folding never grows the file by more
      (the default lets scalars and shape vectors fold); none: no limit.
    """

    max_elements: int = 1 << 22
    max_growth: int | None = 1024
    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        constants: dict[Value, torch.Tensor] = {}
        folded: list[Node] = []
        for node in graph.nodes:
            if node.op == "param" or is_random(node) or not all(v in constants or _is_param(v) for v in node.inputs):
                continue
            if get_op(node.op).extra.get("keep_in_export"):  # quantized weights must stay integers
                continue
            outputs = self._evaluate(graph, node, constants)
            if outputs is None:
                continue
            constants.update(zip(node.outputs, outputs))
            folded.append(node)
        created = sum(self._materialize(graph, node, constants) for node in folded)
        graph.erase_unused(folded + [v.producer for n in folded for v in n.inputs if _is_param(v)])
        return PassResult(bool(folded), {"folded": len(folded), "new_params": created})

    def _evaluate(self, graph: Graph, node: Node, constants: dict[Value, torch.Tensor]) -> list[torch.Tensor] | None:
        if not all(v.type.is_static and v.type.numel() <= self.max_elements for v in node.outputs):
            return None
        tensors = [constants[v] if v in constants else graph.params[v.producer.attrs["name"]] for v in node.inputs]
        growth = sum(_bytes(v.type) for v in node.outputs) - sum(_bytes(t) for t in tensors)
        if self.max_growth is not None and growth > self.max_growth:
            return None
        try:
            with torch.no_grad():
                outputs = get_op(node.op).run(tensors, node.attrs)
        except Exception:  # no runnable kernel: leave the node to run at inference time
            return None
        good = len(outputs) == len(node.outputs) and all(
            isinstance(t, torch.Tensor) and t.dtype in DTYPE_NAMES and TensorType.of(t) == v.type
            for t, v in zip(outputs, node.outputs))
        return outputs if good else None

    @staticmethod
    def _materialize(graph: Graph, node: Node, constants: dict[Value, torch.Tensor]) -> int:
        """Give every output of a folded node that a non-folded reader needs its own param."""
        created = 0
        for value in node.outputs:
            needed = value.is_graph_output or any(user.outputs[0] not in constants for user in value.users)
            if not needed:
                continue
            name = graph.params.unique_name(f"folded.{value.name}")
            param = graph.add_param(name, constants[value].clone().contiguous())
            value.replace_all_uses_with(param, replace_graph_outputs=True)
            created += 1
        return created


def _bytes(item: TensorType | torch.Tensor) -> int:
    return item.numel() * (item.element_size() if isinstance(item, torch.Tensor) else item.itemsize)


def _is_param(value: Value) -> bool:
    return value.producer is not None and value.producer.op == "param"


# ---- simplify: algebraic no-ops as rewrite rules ---------------------------------------------
# ops that return their first input unchanged when the output type equals the input type
NOOP_WHEN_SAME_TYPE = (
    "aten.clone", "aten.contiguous", "aten.alias", "aten.detach", "aten.lift_fresh_copy", "aten.dropout",
    "aten.feature_dropout", "aten.view", "aten.reshape", "aten._unsafe_view", "aten.flatten.using_ints",
    "aten.expand", "aten._to_copy", "aten.to.dtype", "aten.type_as", "aten.squeeze", "aten.squeeze.dim",
    "aten.squeeze.dims",
)
RESHAPES = ("aten.view", "aten.reshape", "aten._unsafe_view")
LAYOUT_COPIES = ("aten.clone", "aten.contiguous")  # a later view may need the copy's contiguous layout
# op -> the scalar `other` that makes it the identity
NEUTRAL_SCALARS = {"aten.mul.Tensor": 1, "aten.mul.Scalar": 1, "aten.div.Tensor": 1, "aten.div.Scalar": 1,
                   "aten.add.Tensor": 0, "aten.add.Scalar": 0, "aten.sub.Tensor": 0, "aten.sub.Scalar": 0}


def remove_noop(rw: Rewriter, out: Value) -> Value | None:
    # identity(x) -> x   (dropout in eval, clone, contiguous, same-shape view, same-dtype cast)
    node = out.producer
    x = node.inputs[0] if node.inputs else None
    if x is None or x.type != out.type or (node.op.endswith("dropout") and arguments(node).get("train")):
        return None
    if node.op in LAYOUT_COPIES and not _surely_contiguous(x):
        return None
    return x


def _surely_contiguous(x: Value) -> bool:
    """True when `x` comes from a known op that computes a fresh tensor (not a strided view)."""
    node = x.producer
    return node is not None and known(node.op) and node.op not in VIEW_OPS


def neutral_scalar(rw: Rewriter, x: Value, out: Value) -> Value | None:
    # x*1 -> x, x/1 -> x, x+0 -> x, x-0 -> x
    node = out.producer
    other = arguments(node).get("other")
    return x if x.type == out.type and other == NEUTRAL_SCALARS[node.op] and not isinstance(other, bool) else None


def reshape_of_reshape(rw: Rewriter, x: Value, out: Value) -> Value:
    # reshape(reshape(x, s1), s2) -> reshape(x, s2)
    args = arguments(out.producer)
    shape = args.get("size", args.get("shape"))
    inputs, attrs = encode_arguments("aten.reshape", {"self": x, "shape": shape})
    return rw.add("aten.reshape", inputs, attrs).output


def transpose_pair(rw: Rewriter, x: Value, inner: Value, out: Value) -> Value | None:
    # transpose(transpose(x, a, b), a, b) -> x
    rank = x.type.rank
    first, second = arguments(inner.producer), arguments(out.producer)
    same = {first["dim0"] % rank, first["dim1"] % rank} == {second["dim0"] % rank, second["dim1"] % rank}
    return x if same else None


def double_t(rw: Rewriter, x: Value, inner: Value, out: Value) -> Value:
    # t(t(x)) -> x
    return x


def permute_pair(rw: Rewriter, x: Value, inner: Value, out: Value) -> Value:
    # permute(permute(x, p), q) -> permute(x, p∘q), or x when that is the identity
    rank = x.type.rank
    p = [d % rank for d in arguments(inner.producer)["dims"]]
    q = [d % rank for d in arguments(out.producer)["dims"]]
    composed = [p[i] for i in q]
    if composed == list(range(rank)):
        return x
    inputs, attrs = encode_arguments("aten.permute", {"self": x, "dims": composed})
    return rw.add("aten.permute", inputs, attrs).output


SIMPLIFY_RULES = [
    (P(NOOP_WHEN_SAME_TYPE, name="out", any_src=True), remove_noop),
    (P(tuple(NEUTRAL_SCALARS), ANY("x"), name="out"), neutral_scalar),
    (P(RESHAPES, P(RESHAPES + ("aten.flatten.using_ints",), ANY("x")), name="out"), reshape_of_reshape),
    (P("aten.transpose.int", P("aten.transpose.int", ANY("x"), name="inner"), name="out"), transpose_pair),
    (P("aten.t", P("aten.t", ANY("x"), name="inner"), name="out"), double_t),
    (P("aten.permute", P("aten.permute", ANY("x"), name="inner"), name="out"), permute_pair),
]


@register_pass("simplify")
@dataclass(frozen=True)
class Simplify(Pass):
    """Algebraic simplification: drop identities (eval dropout, clone, x*1, x+0, no-op casts/views), fold view and transpose pairs."""

    exact = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        fired = apply_rules(graph, SIMPLIFY_RULES, self)
        return PassResult(bool(fired), dict(fired))
