"""IR -> onnx.ModelProto: per-op lowering rules (the op catalog, torchcarve/opset), typed value_info, checker-clean.

Constant subgraphs (param-only inputs, arange, masks built from static shapes) are evaluated in
torch and written as initializers, so only the data path needs ONNX rules.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import helper

from ..errors import CarveError, OpsetError, UnsupportedOpError
from ..fileio import atomic_file
from ..ir import Graph, ParamStore
from ..ir.names import first_free
from ..ir.node import Node
from ..ir.ops.onnx_ops import DEFAULT_OPSET, OPSET_RANGE, STATIC_INPUTS
from ..ir.ops import get_op
from ..ir.types import TensorType, concrete_dim
from ..ir.value import Value
from ..opset import lowering, shape_only
from ..opset.onnx_proto import ONNX_DTYPES, TORCH_TO_ONNX, tensor_proto, value_info
from .onnx_data import Constants, Lowered
from .onnx_opset import first_opset_with, first_opset_with_value, schema_at

TWO_GB = 2**31 - 2**20                      # protobuf's limit, less headroom for the graph itself
INLINE_BYTES = 4096                         # a tensor up to this size is an initializer with its data at once;
                                            # a larger one is filled in (or streamed to external data) when written
FOLD_LIMIT = 1 << 16                        # fold a constant node when its result is at most this many elements ...

class LoweringContext:
    """What a lowering rule emits into: ONNX nodes, initializers, and value names."""

    def __init__(self, graph: Graph, opset: int) -> None:
        self.graph = graph
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.made = ParamStore(budget=graph.params.budget)   # large tensors the export computed (W.T, folds)
        self.deferred: dict[str, tuple[ParamStore, str]] = {}  # initializer -> (store, entry) holding its data
        self.constants = Constants(graph.params, self.made)
        self.names: dict[Value, str] = {}
        self.used: set[str] = set()
        self.node: Node | None = None
        self.extra_domains: dict[str, int] = {}
        self.symbol_sizes: dict[str, str] = {}

    # ---- names -------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        name = first_free(base, self.used)
        self.used.add(name)
        return name

    def name(self, value: Value) -> str:
        """The ONNX name of an IR value; constants are written as initializers on first use."""
        if value in self.names:
            return self.names[value]
        if value not in self.constants:
            raise CarveError(f"%{value.name} is used before it is defined in the ONNX output")
        base = value.producer.attrs["name"] if value.producer and value.producer.op == "param" else value.name
        store, key = self.constants.entry(value)
        if store.nbytes(key) <= INLINE_BYTES:
            self.names[value] = self.const(store[key], base)
        else:
            self.names[value] = self.fresh(base)
            self._defer(self.names[value], store, key)
        return self.names[value]

    def output_names(self, node: Node) -> list[str]:
        for value in node.outputs:
            if value not in self.names:
                self.names[value] = self.fresh(value.name)
        return [self.names[v] for v in node.outputs]

    def alias(self, value: Value, name: str) -> None:
        """`value` is the same tensor as `name` (no node emitted)."""
        self.names[value] = name

    # ---- emitting ----------------------------------------------------------------------
    def const(self, tensor: Any, base: str = "const") -> str:
        name = self.fresh(base)
        tensor = torch.as_tensor(tensor)
        if tensor.numel() * tensor.element_size() <= INLINE_BYTES:
            self.initializers[name] = tensor_proto(name, tensor)
        else:
            self.made[name] = tensor
            self._defer(name, self.made, name)
        return name

    def int4(self, tensor: torch.Tensor, base: str) -> str:
        """An INT4 initializer of `tensor` (integers in [-8, 7]): packed two to a byte, the first in the low
        nibble, and kept in a store like any large tensor (streamed to external data when asked)."""
        name = self.fresh(base)
        nibbles = (tensor.flatten().to(torch.int16) & 0xF).to(torch.uint8)
        if nibbles.numel() % 2:
            nibbles = torch.cat([nibbles, nibbles.new_zeros(1)])
        self.made[name] = nibbles[0::2] | (nibbles[1::2] << 4)
        self.initializers[name] = onnx.TensorProto(name=name, data_type=onnx.TensorProto.INT4, dims=list(tensor.shape))
        self.deferred[name] = (self.made, name)
        return name

    def _defer(self, name: str, store: ParamStore, key: str) -> None:
        """An initializer whose data stays in `store` until the model is written (see `Lowered`)."""
        type = store.type_of(key)
        self.initializers[name] = onnx.TensorProto(name=name, data_type=TORCH_TO_ONNX[type.torch_dtype],
                                                   dims=list(type.shape))
        self.deferred[name] = (store, key)

    def ints(self, values: list[int], base: str = "ints") -> str:
        return self.const(torch.tensor(list(values), dtype=torch.int64), base)

    def scalar(self, value: Any, dtype: str, base: str = "scalar") -> str:
        return self.const(torch.tensor(value, dtype=TensorType((), dtype).torch_dtype), base)

    def emit(self, op_type: str, inputs: list[str], outputs: list[str] | int = 1, domain: str = "",
             **attrs: Any) -> list[str]:
        """Append one ONNX node; returns its output names (fresh ones when given a count)."""
        scope = self.node.scope if self.node is not None and self.node.scope else ""
        prefix = "/" + scope.replace(".", "/") if scope else ""
        if isinstance(outputs, int):
            outputs = [self.fresh(f"{scope.replace('.', '_') or op_type}_{op_type}") for _ in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.append(helper.make_node(op_type, inputs, outputs, name=self.fresh(f"{prefix}/{op_type}"),
                                     domain=domain or None, **attrs))
        return outputs

    def append(self, proto: onnx.NodeProto) -> None:
        """Add one ONNX node, in the target opset's form."""
        if not proto.domain and first_opset_with(proto.op_type):  # ops onnx does not know are left to the checker
            self._to_opset_form(proto)
        self.nodes.append(proto)

    def _to_opset_form(self, proto: onnx.NodeProto) -> None:
        """Static operands that became inputs in a later opset go back to attributes; an op, attribute or
        attribute value the opset lacks is an OpsetError."""
        self._require(proto.op_type, first_opset_with(proto.op_type))
        self._to_attributes(proto)
        schema = schema_at(proto.op_type, self.opset)
        for attr in proto.attribute:
            if attr.name not in schema.attributes:
                self._require(f"{proto.op_type}'s attribute {attr.name}", first_opset_with(proto.op_type, attr.name))
            if first_opset_with_value(proto.op_type, attr) > self.opset:
                self._require(f"{proto.op_type} with {attr.name}={attr.s.decode(errors='replace')!r}",
                              first_opset_with_value(proto.op_type, attr))

    def _to_attributes(self, proto: onnx.NodeProto) -> None:
        for position, name, since, _ in sorted(STATIC_INPUTS.get(proto.op_type, []), reverse=True):
            if since <= self.opset or len(proto.input) <= position or not proto.input[position]:
                continue
            if proto.input[position] not in self.initializers:
                self._require(f"{proto.op_type} with a computed {name}", since)
            value = onnx.numpy_helper.to_array(self.initializers[proto.input[position]]).tolist()
            proto.attribute.append(helper.make_attribute(name, value))
            proto.input[position] = ""
        while proto.input and not proto.input[-1]:
            proto.input.pop()

    def _require(self, what: str, needed: int) -> None:
        if needed > self.opset:
            where = f"{self.node!r} ({self.node.op})" if self.node is not None else "the graph"
            raise OpsetError(f"{where} lowers to ONNX {what}, which needs opset {needed}; opset {self.opset} was asked",
                             needed, hint=f"export with opset {needed} or newer (carve export --opset {needed})")

    def cast(self, name: str, source: str, target: str) -> str:
        """`name` converted from dtype `source` to `target` (no node when they agree)."""
        if source == target:
            return name
        return self.emit("Cast", [name], to=ONNX_DTYPES[target])[0]

    def sizes(self, dims: list[Any], base: str = "shape") -> str:
        """A 1-D int64 tensor of `dims` (ints, SymSize or symbolic dims): symbolic ones are computed at run
        time from the graph inputs' shapes (Shape -> Gather -> Mul -> Concat)."""
        if all(isinstance(d, int) for d in dims):
            return self.ints(list(dims), base)
        parts = [self.ints([d]) if isinstance(d, int) else self.symbolic_size(str(d)) for d in dims]
        return parts[0] if len(parts) == 1 else self.emit("Concat", parts, axis=0)[0]

    def symbolic_size(self, dim: str) -> str:
        """A [1] int64 tensor holding the size of a symbolic dim ("batch", "batch*12")."""
        if dim in self.symbol_sizes:
            return self.symbol_sizes[dim]
        parts = dim.split("*")
        if len(parts) == 1:
            self.symbol_sizes[dim] = self._symbol_from_inputs(dim)
            return self.symbol_sizes[dim]
        result = self.symbolic_size(parts[0])
        for part in parts[1:]:
            factor = self.ints([int(part)]) if part.isdigit() else self.symbolic_size(part)
            result = self.emit("Mul", [result, factor])[0]
        self.symbol_sizes[dim] = result
        return result

    def _symbol_from_inputs(self, symbol: str) -> str:
        for value in self.graph.inputs:
            if symbol in value.type.shape:
                shape = self.emit("Shape", [self.names[value]])[0]
                return self.emit("Gather", [shape, self.ints([value.type.shape.index(symbol)], "dim")], axis=0)[0]
        raise CarveError(f"symbol '{symbol}' sizes a node of @{self.graph.name} but is no dim of a graph input",
                         hint="symbolic sizes are bound from the graph inputs' shapes")

    def input(self, value: Value, dtype: str | None = None) -> str:
        """An input's name, cast to `dtype` when given and different."""
        return self.cast(self.name(value), value.type.dtype, dtype or value.type.dtype)


def to_onnx(graph: Graph, path: str | Path | None = None, opset: int | None = None,
            external_data: bool | None = None) -> onnx.ModelProto:
    """Lower `graph` to ONNX (checker-clean); write it atomically to `path` when given.

    `opset` is one of OPSET_RANGE, every op written in that opset's form; None picks the lowest opset
    the graph needs, at least DEFAULT_OPSET (or the opset of an imported model when that is newer).
    `external_data`: write the weights to `<name>.data` beside the model, streamed one tensor at a time
    (None: when the model would pass protobuf's 2 GB). The model returned then refers to that file.
    """
    missing = _unsupported_ops(graph)
    if missing:
        raise UnsupportedOpError(f"no ONNX lowering for: {', '.join(missing)}",
                                 hint="declare the op's lowering in its torchcarve/opset family module (docs/adding-an-op.md)")
    if opset is not None and opset not in OPSET_RANGE:
        raise CarveError(f"ONNX opset {opset} is not supported; torchcarve writes opsets "
                         f"{OPSET_RANGE.start}-{OPSET_RANGE.stop - 1}", hint="pick an opset in that range")
    lowered = _lower(graph, opset) if opset is not None else _lower_at_lowest(graph)
    if path is not None:
        return _save(lowered, Path(path), external_data)
    model = lowered.filled()
    _check(model)
    return model


def _lower_at_lowest(graph: Graph) -> Lowered:
    """Lower at the floor (or an imported model's opset); an op that needs more raises the opset to what it needs."""
    opset = max([DEFAULT_OPSET] + [n.attrs.get("domain_version", 0) for n in graph.nodes
                                   if n.op.startswith("onnx.") and not n.attrs.get("domain")])
    while True:
        try:
            return _lower(graph, opset)
        except OpsetError as e:
            if e.needed <= opset or e.needed not in OPSET_RANGE:
                raise
            opset = e.needed


def _lower(graph: Graph, opset: int) -> Lowered:
    ctx = LoweringContext(graph, opset)
    input_names, output_names = graph.signature_names()
    ctx.used.update(input_names + output_names)  # the external names are kept exactly
    inputs = [_graph_input(ctx, v, name) for v, name in zip(graph.inputs, input_names)]
    _name_outputs(ctx, output_names)
    for node in graph.nodes:
        _lower_node(ctx, node)
    outputs = [_graph_output(ctx, v, name) for v, name in zip(graph.outputs, output_names)]
    return _assemble(ctx, inputs, outputs)


def _unsupported_ops(graph: Graph) -> list[str]:
    constant = _constant_values(graph)
    ops = {n.op for n in graph.nodes if n.op != "param" and not all(v in constant for v in n.outputs)}
    return sorted(op for op in ops if lowering(op) is None)


def _constant_values(graph: Graph) -> set[Value]:
    """Values the exporter folds (computed from params and static shapes only)."""
    constant: set[Value] = set()
    for node in graph.nodes:
        if _foldable(node, constant):
            constant.update(node.outputs)
    return constant


def _foldable(node: Node, constant: set[Value]) -> bool:
    if node.op == "param":
        return True
    if get_op(node.op).extra.get("keep_in_export"):  # e.g. quantized weights stay integers in the file
        return False
    if node.op.startswith("onnx.") and not _has_kernel(node.op):
        return False
    static = all(v.type.is_static for v in node.outputs)
    size_ok = static and sum(v.type.numel() for v in node.outputs) <= max(
        FOLD_LIMIT, sum(v.type.numel() for v in node.inputs))
    if shape_only(node.op):
        return size_ok
    return size_ok and all(v in constant for v in node.inputs)


def _has_kernel(op: str) -> bool:
    return not get_op(op).extra.get("opaque", False)


def _fold(ctx: LoweringContext, node: Node) -> bool:
    """Evaluate a constant node in torch; True when done."""
    if not _foldable(node, set(ctx.constants)):
        return False
    if node.op == "param":
        ctx.constants.set_param(node.output, node.attrs["name"])
        return True
    inputs = [ctx.constants.get(v) for v in node.inputs]
    if shape_only(node.op):
        inputs = [t if t is not None else torch.zeros(_stand_in_shape(v.type), dtype=v.type.torch_dtype)
                  for t, v in zip(inputs, node.inputs)]
    with torch.no_grad():
        results = get_op(node.op).run(inputs, node.attrs)
    for value, result in zip(node.outputs, results):
        ctx.constants[value] = result
    return True


def _stand_in_shape(type: TensorType) -> list[int]:
    """A shape-only op with a static result reads no symbolic size of its input: any size stands in."""
    return [concrete_dim(d, {}) for d in type.shape]


def _lower_node(ctx: LoweringContext, node: Node) -> None:
    if _fold(ctx, node):
        return
    ctx.node = node
    lowering(node.op)(ctx, node)
    for value in node.outputs:
        if value not in ctx.names:
            ctx.names[value] = ctx.fresh(value.name)  # an unused secondary output (indices, stats)
    ctx.node = None


def _graph_input(ctx: LoweringContext, value: Value, name: str) -> onnx.ValueInfoProto:
    ctx.names[value] = name
    return value_info(name, value.type)


def _name_outputs(ctx: LoweringContext, output_names: list[str]) -> None:
    """A computed node result that is one graph output is written under that output's name."""
    constant = _constant_values(ctx.graph)
    for value, name in zip(ctx.graph.outputs, output_names):
        if value.producer is not None and value not in constant and ctx.graph.outputs.count(value) == 1:
            ctx.names[value] = name


def _graph_output(ctx: LoweringContext, value: Value, name: str) -> onnx.ValueInfoProto:
    """An output under its external name; anything else (an input, a constant, an alias) gets an Identity."""
    if ctx.name(value) != name:
        ctx.emit("Identity", [ctx.name(value)], [name])
    return value_info(name, value.type)


def _assemble(ctx: LoweringContext, inputs: list, outputs: list) -> Lowered:
    io_names = {v.name for v in inputs} | {v.name for v in outputs}
    produced = {out for n in ctx.nodes for out in n.output}
    infos = [value_info(name, value.type) for value, name in ctx.names.items()
             if name in produced and name not in io_names and value.uses]  # unused: an output the model omits
    used = {i for n in ctx.nodes for i in n.input} | {o.name for o in outputs}
    initializers = [t for name, t in ctx.initializers.items() if name in used]
    graph = helper.make_graph(ctx.nodes, ctx.graph.name, inputs, outputs, initializers, value_info=infos)
    opsets = [helper.make_opsetid("", ctx.opset)] + [helper.make_opsetid(d, v) for d, v in ctx.extra_domains.items()]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="torchcarve")
    model.ir_version = min(model.ir_version, 10)  # onnxruntime reads up to IR 10
    return Lowered(model, ctx.deferred)


def _check(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise CarveError(f"the ONNX model fails onnx.checker: {str(e).splitlines()[0]}",
                         hint="this is a lowering bug; please report it with the graph text") from e


def _save(lowered: Lowered, path: Path, external_data: bool | None) -> onnx.ModelProto:
    """Write atomically; with external data (beyond 2 GB by default) the weights stream to `<name>.data` beside
    the model, written afresh in the staging folder (never appended to an old one) and renamed into place first."""
    external = lowered.nbytes() > TWO_GB if external_data is None else external_data
    if not external:
        model = lowered.filled()
        _check(model)
        with atomic_file(path) as temp:
            onnx.save_model(model, str(temp))
        return model
    data = f"{path.name}.data"
    with atomic_file(path, siblings=[data]) as temp:
        model = lowered.write_external(temp.parent / data, data)
        onnx.save_model(model, str(temp))
        onnx.checker.check_model(str(temp))
    return model
