"""What an ONNX file may ask of the importer: the size limits, and the checks made before any node is built.

A model file is untrusted input. Every size it implies is computed from shapes (Python ints, so no
overflow) before anything is allocated: an initializer must hold exactly the data its dims say, a
constant is folded only when its result is at most FOLD_LIMIT elements, and a value with more than
`max_elements` (MAX_ELEMENTS unless `tc.from_onnx(..., max_elements=N)` says otherwise) is an error.
onnx's shape inference with data propagation is run only when no Range could make it build a huge
list. Op types, domains and attribute keys must be plain names the op's schema knows.
"""
from __future__ import annotations

import keyword
import math
import re
from typing import Iterator

import onnx

from ..errors import FileFormatError
from ..ir.ops.onnx_ops import INTERNAL_ATTRS

FOLD_LIMIT = 1 << 24        # elements: a constant result larger than this stays an op (nothing is evaluated)
MAX_ELEMENTS = 1 << 32      # elements of any one value with a static shape (the `max_elements` keyword's default)
MAX_NODES = 1 << 21         # nodes in a model, subgraphs included
DATA_PROP_LIMIT = 1 << 16   # elements of a Range output that onnx data propagation may compute

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DOMAIN = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
DEFAULT_DOMAINS = ("", "ai.onnx")


def element_count(dims: list[int] | tuple[int, ...], what: str, max_elements: int) -> int:
    """The element count of `dims` (exact, no overflow); FileFormatError for negative or too many."""
    if any(d < 0 for d in dims):
        raise FileFormatError(f"{what} has a negative dimension: {list(dims)}", hint="the file is malformed")
    count = math.prod(dims)
    if count > max_elements:
        raise FileFormatError(f"{what} has {count} elements (shape {list(dims)}), over the limit of {max_elements}",
                              hint="pass max_elements=N to tc.from_onnx to raise the limit if the model is real")
    return count


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of the graph and of its subgraphs, at any depth."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from all_nodes(sub)


def check_model(model: onnx.ModelProto) -> None:
    """Node count, op types, domains and attribute keys of every node (subgraphs included)."""
    versions = {o.domain or "": o.version for o in model.opset_import}
    for count, node in enumerate(all_nodes(model.graph), 1):
        if count > MAX_NODES:
            raise FileFormatError(f"the model has more than {MAX_NODES} nodes",
                                  hint="raise torchcarve.frontends.onnx_limits.MAX_NODES if the model is real")
        check_node(node, versions)


def check_node(node: onnx.NodeProto, versions: dict[str, int]) -> None:
    """A node's op type and domain are plain names; its attribute keys are known to its schema."""
    where = f"{node.op_type!r} node {node.name!r}"
    if not IDENTIFIER.fullmatch(node.op_type):
        raise FileFormatError(f"{where}: the op type is not a plain identifier", hint="the file is malformed")
    if node.domain and not DOMAIN.fullmatch(node.domain):
        raise FileFormatError(f"{where}: domain {node.domain!r} is not a dotted name", hint="the file is malformed")
    known = schema_attributes(node, versions)
    for attr in node.attribute:
        if not _allowed_key(attr.name, known):
            raise FileFormatError(f"{where}: unknown attribute {attr.name!r}",
                                  hint=f"the op's schema knows {sorted(known) if known is not None else 'plain names'}")


def schema_attributes(node: onnx.NodeProto, versions: dict[str, int]) -> set[str] | None:
    """The attribute names onnx.defs gives the op at the model's opset, or None where onnx has no schema."""
    domain = "" if node.domain in DEFAULT_DOMAINS else node.domain
    if not onnx.defs.has(node.op_type, domain):
        return None
    version = versions.get(domain, versions.get("ai.onnx", 1)) if domain == "" else versions.get(domain, 1)
    try:
        return set(onnx.defs.get_schema(node.op_type, version, domain).attributes)
    except onnx.defs.SchemaError:
        return None


def _allowed_key(key: str, known: set[str] | None) -> bool:
    if key in INTERNAL_ATTRS:
        return False
    if known is not None:
        return key in known
    return bool(IDENTIFIER.fullmatch(key)) and not keyword.iskeyword(key) and not keyword.issoftkeyword(key)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx shape inference, with data propagation only when every Range has a known, small output."""
    options = {"check_type": True, "strict_mode": True}
    try:
        if _has_range(model):
            model = onnx.shape_inference.infer_shapes(model, **options, data_prop=False)
            if not _ranges_small(model):
                return model
        return onnx.shape_inference.infer_shapes(model, **options, data_prop=True)
    except Exception as e:
        text = (str(e).strip() or repr(e)).splitlines()[0][:300]
        raise FileFormatError(f"invalid ONNX model: shape/type inference fails: {text}",
                              hint="check the model with onnx.checker.check_model(model, full_check=True)") from e


def _has_range(model: onnx.ModelProto) -> bool:
    return any(node.op_type == "Range" for node in all_nodes(model.graph))


def _ranges_small(model: onnx.ModelProto) -> bool:
    """Whether first-pass inference gives every Range output a static length within DATA_PROP_LIMIT."""
    lengths = {info.name: info.type.tensor_type.shape.dim
               for info in [*model.graph.value_info, *model.graph.output]
               if info.type.tensor_type.HasField("shape")}
    for node in all_nodes(model.graph):
        if node.op_type != "Range":
            continue
        dims = lengths.get(node.output[0]) if node.output else None
        if not dims or len(dims) != 1 or not dims[0].HasField("dim_value") or dims[0].dim_value > DATA_PROP_LIMIT:
            return False
    return True
