"""ONNX ModelProto -> IR: `onnx.<OpType>` nodes (ir/ops/onnx_ops.py), initializers in the ParamStore.

Import folds what is constant (initializers, Constant, Shape of static tensors, any op on
constants, when the result's size, computed from shapes first, is within FOLD_LIMIT), so shape
subgraphs vanish and static operands become attributes. The file is untrusted: onnx_limits.py
bounds the work it can ask for, and every failure on a malformed file is a CarveError. Older opsets are
normalised to the current forms (attribute-vs-input, Softmax's axis); types come from our own
inference, else from onnx shape inference.
"""
from __future__ import annotations

import copy
import math
from contextlib import suppress
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import numpy_helper

from ..errors import CarveError, FileFormatError, UnsupportedOpError
from ..ir import Graph, TensorType, verify
from ..ir.names import first_free, sanitize_identifier
from ..ir.infer import InferenceUnavailable, infer_types
from ..ir.ops import get_op
from ..ir.ops.onnx_ops import COUNTED_OUTPUTS, DEFAULT_OPSET, DOMAINS, KERNELS, RANK_RULES, SIZE_RULES, STATIC_INPUTS
from ..ir.types import DTYPE_NAMES, size_attr
from ..ir.value import Value
from ..opset.onnx_proto import ONNX_TO_DTYPE, subgraph_defines
from . import onnx_limits
from .onnx_canonical import canonicalize as to_aten
from .onnx_external import Constants, is_external, locate
from .onnx_shapes import evaluate as evaluate_shape, shape_dims
from .onnx_limits import FOLD_LIMIT, MAX_ELEMENTS, element_count

# 4-bit data has no IR dtype: held unpacked, one value a byte (the ONNX backend packs blocked int4 weights again)
WIDENED = {onnx.TensorProto.INT4: "int8", onnx.TensorProto.UINT4: "uint8"}
DTYPE_ATTRS = {"to", "dtype", "output_dtype"}
RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
# deprecated ops -> their successor (see Importer._normalise)
RENAMED = {"Upsample": "Resize", "Scatter": "ScatterElements"}


def load_onnx(source: str | Path | onnx.ModelProto, canonicalize: bool = True,
              max_elements: int = MAX_ELEMENTS) -> Graph:
    """Read an ONNX model (path or ModelProto, never modified) into a verified IR graph.

    canonicalize: ops with an exact aten equivalent become it (onnx_canonical.py), so passes apply.
    max_elements: the most elements any one statically shaped value may have (onnx_limits.py)."""
    path = None if isinstance(source, onnx.ModelProto) else Path(source)
    model = _read(source)
    _check(model, path)
    model = onnx_limits.infer_shapes(model)
    graph = Importer(model, max_elements, path.parent if path is not None else None).run()
    if canonicalize:
        to_aten(graph)
    verify(graph)
    return graph


def _read(source: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(source, onnx.ModelProto):
        return copy.deepcopy(source)
    path = Path(source)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file", hint="pass the path of an .onnx file")
    try:
        return onnx.load(str(path), load_external_data=False)  # external data is read per use (onnx_external.py)
    except Exception as e:  # protobuf DecodeError, missing external data, ...
        raise FileFormatError(f"{path}: not a readable ONNX model ({_first_line(e)})",
                              hint="the file may be truncated or not an ONNX protobuf") from e


def _check(model: onnx.ModelProto, path: Path | None) -> None:
    """onnx.checker on the model; with external data, on the file (the checker finds data files beside it)."""
    if not model.graph.node and not model.graph.output:
        raise FileFormatError("the ONNX model has an empty graph", hint="the file may be truncated or not ONNX")
    external = path is not None and any(is_external(init) for init in model.graph.initializer)
    try:
        onnx.checker.check_model(str(path) if external else model)
    except Exception as e:
        raise FileFormatError(f"invalid ONNX model: {_first_line(e)}",
                              hint="onnx.checker.check_model rejects it; fix the exporter that wrote it") from e
    onnx_limits.check_model(model)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _tensor(proto: onnx.TensorProto, max_elements: int) -> torch.Tensor:
    """The tensor a TensorProto holds; its size is checked from its dims before any data is read."""
    if proto.data_type not in ONNX_TO_DTYPE and proto.data_type not in WIDENED:
        raise UnsupportedOpError(f"tensor '{proto.name}' has ONNX dtype {_dtype_name(proto.data_type)}, "
                                 "which the IR does not support")
    if proto.data_location == onnx.TensorProto.EXTERNAL:
        raise FileFormatError(f"tensor '{proto.name}' has external data that was not loaded",
                              hint="pass the .onnx path (its data files beside it), not a ModelProto")
    element_count(list(proto.dims), f"tensor '{proto.name}'", max_elements)
    try:
        array = numpy_helper.to_array(proto)
    except Exception as e:  # data length disagrees with the dims, ...
        raise FileFormatError(f"tensor '{proto.name}' (shape {list(proto.dims)}): its data does not match "
                              f"({_first_line(e)})", hint="the file is malformed") from e
    if proto.data_type in WIDENED:
        return torch.from_numpy(array.astype(WIDENED[proto.data_type]))
    if proto.data_type == onnx.TensorProto.BFLOAT16:
        return torch.from_numpy(array.astype("float32")).to(torch.bfloat16)
    return torch.from_numpy(array.copy())


def _dtype_name(data_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(data_type)
    except ValueError:
        return f"#{data_type}"


class Importer:
    """Walks the ONNX graph in order, folding constants and building IR nodes."""

    def __init__(self, model: onnx.ModelProto, max_elements: int = MAX_ELEMENTS, folder: Path | None = None) -> None:
        self.model = model
        self.max_elements = max_elements
        self.folder = folder  # where external data files are; None for a ModelProto (its data must be inside)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.domains = {o.domain: o.version for o in model.opset_import}
        self.graph = Graph(model.graph.name or "onnx_model")
        self.values: dict[str, Value] = {}
        self.constants = Constants()
        self.types: dict[str, TensorType] = {}
        self.symbols: dict[str, str] = {}
        self.shapes: dict[str, Any] = {}  # int64 values that are dims computed from symbolic shapes (onnx_shapes)
        self.symbols: dict[str, str] = {}  # dim_param (or "<value>:<axis>" for a fresh dim) -> IR symbol
        self.symbol_names: set[str] = set()
        self.symbol_suffixes: dict[str, int] = {}

    def run(self) -> Graph:
        for info in [*self.model.graph.value_info, *self.model.graph.output, *self.model.graph.input]:
            self._remember_type(info)
        for init in self.model.graph.initializer:
            self._initializer(init)
        for info in self.model.graph.input:
            if info.name not in self.constants:
                self.values[info.name] = self.graph.add_input(info.name, self._type(info.name))
        for node in self.model.graph.node:
            self._import_guarded(node)
        outputs = self.model.graph.output
        self.graph.set_outputs([self._value(o.name) for o in outputs], [o.name for o in outputs])
        return self.graph

    def _initializer(self, init: onnx.TensorProto) -> None:
        if not is_external(init) or self.folder is None:
            self.constants[init.name] = _tensor(init, self.max_elements)
            return
        element_count(list(init.dims), f"tensor '{init.name}'", self.max_elements)
        self.constants.set_file(init.name, locate(init, self.folder))

    def _import_guarded(self, node: onnx.NodeProto) -> None:
        """Import one node; a failure that is not already a CarveError becomes one naming the node."""
        try:
            self._import_node(node)
        except CarveError as e:  # name the node, keep the error's class and hint
            e.args = (f"{node.op_type} node '{node.name}': {e.args[0] if e.args else ''}", *e.args[1:])
            raise
        except Exception as e:
            raise FileFormatError(f"{node.op_type} node '{node.name}': cannot be imported ({_first_line(e)})",
                                  hint="the node's inputs or attributes do not fit the op") from e

    # ---- types -------------------------------------------------------------------------
    def _remember_type(self, info: onnx.ValueInfoProto) -> None:
        tensor = info.type.tensor_type
        if not info.type.HasField("tensor_type") or not tensor.HasField("shape"):
            return
        if tensor.elem_type not in ONNX_TO_DTYPE:
            return
        dims = [d.dim_value if d.HasField("dim_value") else self._symbol(d.dim_param, info.name, i)
                for i, d in enumerate(tensor.shape.dim)]
        element_count([d for d in dims if isinstance(d, int)], f"value '{info.name}'", self.max_elements)
        self.types[info.name] = TensorType(tuple(dims), ONNX_TO_DTYPE[tensor.elem_type])

    def _symbol(self, param: str, name: str, index: int) -> str:
        key = param or f"{name}:{index}"
        if key not in self.symbols:
            base = sanitize_identifier(param) if param else f"d{len(self.symbols)}"
            self.symbols[key] = first_free(base, self.symbol_names, self.symbol_suffixes)
            self.symbol_names.add(self.symbols[key])
        return self.symbols[key]

    def _type(self, name: str) -> TensorType:
        if name not in self.types:
            raise UnsupportedOpError(f"value '{name}' has no known type (dtype and rank)",
                                     hint="the model needs shapes that onnx shape inference can work out")
        return self.types[name]

    # ---- values ------------------------------------------------------------------------
    def _value(self, name: str) -> Value:
        """The IR value of an ONNX name; constants become param nodes on first use."""
        if name in self.values:
            return self.values[name]
        if name not in self.constants:
            raise FileFormatError(f"'{name}' is used but never produced (no node, input or initializer)",
                                  hint="the model is missing an initializer or a node")
        param = self.graph.params.unique_name(name) if name not in self.graph.params else name
        location = self.constants.location(name)
        if location is not None:  # still on disk: the entry points at it
            self.graph.params.set_file(param, location)
        self.values[name] = self.graph.add_param(param, self.constants[name] if location is None else None)
        return self.values[name]

    # ---- nodes -------------------------------------------------------------------------
    def _import_node(self, node: onnx.NodeProto) -> None:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            self.constants[node.output[0]] = self._constant(node)
            return
        attrs = self._attributes(node)
        op_type = RENAMED.get(node.op_type, node.op_type)
        known = op_type in KERNELS and _domain(node) == DOMAINS.get(op_type, "")
        if op_type in KERNELS and not known:
            raise UnsupportedOpError(f"{node.op_type} in domain {node.domain!r} has the name of the "
                                     f"{DOMAINS.get(op_type) or 'default'}-domain op, which is not supported",
                                     hint="an op of another domain must not reuse a known op's name")
        inputs = list(node.input)
        if known:
            inputs, attrs = self._normalise(node, inputs, attrs)
            if self._fold(op_type, node, inputs, attrs):
                return
            self._track_shape(op_type, node, inputs, attrs)
            inputs, attrs = self._static_operands(op_type, inputs, attrs)
        captures = sorted(name for name in outer_names(node) if name in self.values or name in self.constants)
        if captures:  # outer-scope values a subgraph reads: inputs here, so they stay alive and get renamed
            inputs, attrs["captures"] = inputs + captures, captures
        if _domain(node):
            attrs.update(domain=node.domain, domain_version=self.domains.get(node.domain, 1))
        elif self.opset > DEFAULT_OPSET:  # written back at the opset it came from
            attrs["domain_version"] = self.opset
        self._add(op_type, node, inputs, attrs, known)

    def _constant(self, node: onnx.NodeProto) -> torch.Tensor:
        attr = node.attribute[0]
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, onnx.TensorProto):
            return _tensor(value, self.max_elements)
        dtype = torch.float32 if attr.name.startswith("value_float") else torch.int64
        if attr.name.startswith("value_int") or attr.name.startswith("value_float"):
            return torch.tensor(value, dtype=dtype)
        raise UnsupportedOpError(f"Constant '{node.output[0]}' uses attribute '{attr.name}', which is not supported")

    def _attributes(self, node: onnx.NodeProto) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        for attr in node.attribute:
            value = onnx.helper.get_attribute_value(attr)
            attrs[attr.name] = self._attribute(node, attr.name, value)
        return attrs

    def _attribute(self, node: onnx.NodeProto, name: str, value: Any) -> Any:
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        if isinstance(value, list) and value and isinstance(value[0], bytes):
            return [v.decode("utf-8", errors="replace") for v in value]
        if name in DTYPE_ATTRS and isinstance(value, int) and value in ONNX_TO_DTYPE:
            return TensorType((), ONNX_TO_DTYPE[value]).torch_dtype
        if isinstance(value, onnx.TensorProto):
            tensor = _tensor(value, self.max_elements)
            if node.op_type == "ConstantOfShape":
                return tensor
            param = self.graph.params.unique_name(f"{node.name or node.op_type}.{name}")
            self.graph.params[param] = tensor
            return f"tensor:{param}"
        if isinstance(value, onnx.GraphProto):  # control flow body: kept as bytes, written back unchanged
            param = self.graph.params.unique_name(f"{node.name or node.op_type}.{name}")
            self.graph.params[param] = torch.frombuffer(bytearray(value.SerializeToString()), dtype=torch.uint8)
            return f"graph:{param}"
        if isinstance(value, list) and any(isinstance(v, (onnx.GraphProto, onnx.TensorProto)) for v in value):
            raise UnsupportedOpError(f"{node.op_type} '{node.name}' has a graph/tensor-list attribute '{name}'",
                                     hint="lists of graphs or tensors are not supported")
        if isinstance(value, (onnx.SparseTensorProto, onnx.TypeProto)):
            raise UnsupportedOpError(f"{node.op_type} '{node.name}': attribute '{name}' has an unsupported kind")
        return list(value) if isinstance(value, list) else value

    def _normalise(self, node: onnx.NodeProto, inputs: list[str], attrs: dict[str, Any]) -> tuple[list[str], dict]:
        """Older opsets -> the current form (same meaning, current attribute names and defaults)."""
        op = node.op_type
        if op == "ConstantOfShape":
            tensor = attrs.pop("value", torch.zeros(1))
            attrs.update({"value": tensor.reshape(-1)[0].item(), "dtype": tensor.dtype})
        if op == "Pad" and "value" in attrs:
            attrs["constant_value"] = attrs.pop("value")
        if op == "Resize" and self.opset < 11 and len(inputs) > 1:
            inputs = [inputs[0], "", inputs[1]]
        if op == "Upsample":  # deprecated: the same resampling as Resize with asymmetric coordinates
            attrs.update(coordinate_transformation_mode="asymmetric", nearest_mode="floor")
            inputs = [inputs[0], "", inputs[1]] if len(inputs) > 1 else inputs
        if op == "Split" and "num_outputs" in attrs:
            del attrs["num_outputs"]
        if op in ("Softmax", "LogSoftmax", "Hardmax") and self.opset < 13:
            attrs["axis"] = self._coerced_softmax_axis(node, inputs[0], attrs.get("axis", 1))
        for name in ("consumed_inputs", "spatial", "is_test"):
            attrs.pop(name, None)
        if op in COUNTED_OUTPUTS:
            attrs["outputs"] = len(node.output)
        return inputs, attrs

    def _coerced_softmax_axis(self, node: onnx.NodeProto, source: str, axis: int) -> int:
        """Before opset 13, Softmax flattened the input to 2-D at `axis`; with only 1s after the
        axis (or the last axis) that is a softmax over `axis` itself."""
        shape = self._static(source).shape if self._static(source) else self._type(source).shape
        axis = axis % max(len(shape), 1)
        if all(d == 1 for d in shape[axis + 1:]):
            return axis
        raise UnsupportedOpError(f"{node.op_type} '{node.name}' (opset {self.opset}) flattens axes {axis}.. of "
                                 f"{list(shape)}, which is not supported", hint="re-export the model with opset >= 13")

    def _fold(self, op_type: str, node: onnx.NodeProto, inputs: list[str], attrs: dict[str, Any]) -> bool:
        """Evaluate the node now when its inputs are known (Shape reads only a static type); never
        random ops, nor ops whose results stay ops in an export (DequantizeLinear keeps integer weights)."""
        opdef = get_op(f"onnx.{op_type}")
        if node.op_type in RANDOM_OPS or opdef.extra.get("keep_in_export"):
            return False
        if node.op_type in ("Shape", "Size") and self._static(inputs[0]):
            operands: list[Any] = [torch.empty(self._static(inputs[0]).shape, device="meta")]
        elif all(i == "" or self._foldable_constant(i) for i in inputs):
            operands = [None if i == "" else self.constants[i] for i in inputs]
        else:
            return False
        size = self._folded_size(op_type, inputs, attrs, operands)
        if size is None or size > FOLD_LIMIT:
            return False
        args, kwargs = opdef.bind([o for o in operands if o is not None], {**attrs, "absent": _absent(inputs)})
        with torch.no_grad():
            results = opdef.fn(*args, **kwargs)
        results = list(results) if isinstance(results, (list, tuple)) else [results]
        for name, result in zip(node.output, results):
            if name:
                self.constants[name] = result
        return True

    def _foldable_constant(self, name: str) -> bool:
        """A constant in memory, or one on disk small enough to fold (a weight on disk is never read to fold)."""
        return name in self.constants and (self.constants.location(name) is None
                                           or self.constants.type_of(name).numel() <= FOLD_LIMIT)

    def _folded_size(self, op_type: str, inputs: list[str], attrs: dict[str, Any], operands: list[Any]) -> int | None:
        """Elements the folded results would have, from shapes alone (nothing is evaluated); None if unknown."""
        if op_type in SIZE_RULES:
            return SIZE_RULES[op_type]([o for o in operands if o is not None], attrs)
        if op_type in ("Shape", "Size"):
            return len(operands[0].shape)
        static_inputs, static_attrs = self._static_operands(op_type, inputs, dict(attrs))
        absent = _absent(static_inputs)
        types = [self.constants.type_of(i) for i in static_inputs if i]
        try:
            outputs = infer_types(f"onnx.{op_type}", {**static_attrs, **({"absent": absent} if absent else {})}, types)
        except InferenceUnavailable:
            return None
        return sum(math.prod(d if isinstance(d, int) else 1 for d in t.shape) for t in outputs)

    def _static(self, name: str) -> TensorType | None:
        if name in self.constants:
            return self.constants.type_of(name)
        value = self.values.get(name)
        return value.type if value is not None and value.type.is_static else None

    def _track_shape(self, op_type: str, node: onnx.NodeProto, inputs: list[str], attrs: dict[str, Any]) -> None:
        """Remember the dims an int64 op computes from symbolic shapes (Shape(x)[0] is "N")."""
        if op_type == "Shape" and inputs[0] in self.values:
            result = shape_dims(self.values[inputs[0]].type.shape, attrs)
        else:
            result = evaluate_shape(op_type, [self._dims(name) for name in inputs if name], attrs)
        if result is not None:
            self.shapes[node.output[0]] = result

    def _dims(self, name: str) -> Any:
        if name in self.shapes:
            return self.shapes[name]
        if name not in self.constants or self.constants.type_of(name).dtype != "i64" or self.constants.type_of(name).rank > 1:
            return None
        return self.constants[name].tolist()

    def _static_operand(self, source: str, name: str) -> Any:
        """A constant operand as an attribute value; a shape computed from symbolic dims as SymSizes."""
        if source in self.constants:
            tensor = self.constants[source]
            return tensor.tolist() if tensor.dim() else tensor.item()
        dims = self.shapes.get(source)
        return [size_attr(d) for d in dims] if name == "shape" and isinstance(dims, list) else None

    def _static_operands(self, op: str, inputs: list[str], attrs: dict[str, Any]) -> tuple[list[str], dict]:
        """Constant shape-like operands become attributes (when all of them are constant)."""
        slots = [(p, name) for p, name, _, _ in STATIC_INPUTS.get(op, []) if p < len(inputs) and inputs[p]]
        operands = {p: self._static_operand(inputs[p], name) for p, name in slots}
        if not slots or any(v is None for v in operands.values()):
            return inputs, attrs
        for position, name in slots:
            attrs[name] = operands[position]
        first = min(p for p, _, _, _ in STATIC_INPUTS[op])
        return inputs[:first], attrs

    def _add(self, op_type: str, node: onnx.NodeProto, inputs: list[str], attrs: dict[str, Any], known: bool) -> None:
        absent = _absent(inputs)
        if absent:
            attrs["absent"] = absent
        values = [self._value(i) for i in inputs if i]
        op = f"onnx.{op_type}"
        outputs = [o for o in node.output]
        types = self._output_types(op, attrs, values, outputs, known)
        for name, type in zip(outputs, types):
            element_count([d for d in type.shape if isinstance(d, int)], f"{node.op_type} output '{name}'",
                          self.max_elements)
        names = [sanitize_identifier(o) if o else f"{node.op_type}_unused" for o in outputs]
        ir_node = self.graph.add_node(op, values, attrs, output_types=types, names=names, scope=node.name)
        for name, value in zip(outputs, ir_node.outputs):
            if name:
                self.values[name] = value

    def _output_types(self, op: str, attrs: dict, values: list[Value], outputs: list[str], known: bool) -> list[TensorType]:
        if known:
            with suppress(InferenceUnavailable):  # data-dependent sizes: fall back to ONNX's own types
                types = infer_types(op, attrs, [v.type for v in values])
                if len(types) == len(outputs):
                    return types
        return [self.types.get(o) or self._ranked_type(op, attrs, values, o) if o else TensorType((0,))
                for o in outputs]

    def _ranked_type(self, op: str, attrs: dict, values: list[Value], name: str) -> TensorType:
        """An output with data-dependent sizes but a known rank (RANK_RULES): fresh symbolic dims."""
        rule = RANK_RULES.get(op.split(".", 1)[1])
        lengths = [v.type.shape[0] if v.type.rank == 1 and isinstance(v.type.shape[0], int) else None for v in values]
        rank = rule(attrs, [v.type.rank for v in values], lengths) if rule and values else None
        if rank is None:
            return self._type(name)
        return TensorType(tuple(self._symbol("", name, i) for i in range(rank)), values[0].type.dtype)


def outer_names(node: onnx.NodeProto) -> set[str]:
    """Names the node's subgraphs (at any depth) read from the enclosing scope."""
    return {name for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH for name in _free(attr.g)}


def _free(graph: onnx.GraphProto) -> set[str]:
    used = {*(i for n in graph.node for i in n.input if i), *(o.name for o in graph.output)}
    return (used | {name for n in graph.node for name in outer_names(n)}) - subgraph_defines(graph)


def _domain(node: onnx.NodeProto) -> str:
    """The node's domain, "" for the default one (also spelled "ai.onnx")."""
    return "" if node.domain == "ai.onnx" else node.domain


def _absent(inputs: list[str]) -> list[int]:
    return [i for i, name in enumerate(inputs) if name == ""]


def from_onnx(source: str | Path | onnx.ModelProto, canonicalize: bool = True,
              max_elements: int = MAX_ELEMENTS) -> Graph:
    """Public alias of `load_onnx` (`tc.from_onnx`)."""
    return load_onnx(source, canonicalize, max_elements)


__all__ = ["DTYPE_NAMES", "from_onnx", "load_onnx"]
