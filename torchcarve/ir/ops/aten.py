"""torch.ops overloads as IR ops: signatures from the op schema (what the compiler knows about an op
beyond its schema is in the op catalog, torchcarve/opset).

Encoding (shared by capture, the kernel call and the code generator): tensor arguments are node
inputs in schema order; every other argument is an attribute named after its schema argument,
omitted when it equals the schema default. A list-of-tensors argument (`cat`'s `tensors`) takes
all the inputs left over; when it holds Nones (`index`), an attribute masks where they go.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Sequence

import torch

from .opdef import OpDef

TENSOR_TYPES = {"Tensor", "Optional[Tensor]"}
TENSOR_LIST_TYPES = {"List[Tensor]", "List[Optional[Tensor]]"}
DROPPED_ARGS = {"device", "layout", "pin_memory"}  # placement, not math
MISSING = object()
# memory_format changes strides (clone(x, memory_format=contiguous) makes a later view valid), so it
# is kept, as its name: attrs stay plain text-form literals
MEMORY_FORMATS = {str(f).removeprefix("torch."): f for f in (
    torch.contiguous_format, torch.preserve_format, torch.channels_last, torch.channels_last_3d)}


def overload_op_name(overload: torch._ops.OpOverload) -> str:
    """`aten::conv2d` default -> "aten.conv2d"; `aten::add.Tensor` -> "aten.add.Tensor"."""
    namespace, name = overload._schema.name.split("::")
    suffix = "" if overload._overloadname == "default" else f".{overload._overloadname}"
    return f"{namespace}.{name}{suffix}"


def resolve_overload(name: str) -> torch._ops.OpOverload | None:
    """The torch overload an IR op name stands for, or None."""
    parts = name.split(".")
    if len(parts) not in (2, 3) or not all(p.isidentifier() for p in parts):
        return None
    namespace, op, overload = parts[0], parts[1], parts[2] if len(parts) == 3 else "default"
    try:
        packet = getattr(getattr(torch.ops, namespace), op)
        overload = getattr(packet, overload)
    except (AttributeError, RuntimeError):
        return None
    return overload if isinstance(overload, torch._ops.OpOverload) else None  # not `aten.__dict__.keys`


def _kind(arg: Any) -> str:
    type_name = str(arg.type)
    if type_name in TENSOR_TYPES:
        return "tensor"
    if type_name in TENSOR_LIST_TYPES:
        return "tensor-list"
    return "attr"


def _default(arg: Any) -> Any:
    return arg.default_value if arg.has_default_value() else MISSING


def _same(a: Any, b: Any) -> bool:
    """Equality that tells 1 from True and 1.0 from 1 (schema defaults are typed)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def attr_value(value: Any) -> Any:
    """Normalise an argument for storage as an attribute (tuples become lists, memory formats names)."""
    if isinstance(value, (list, tuple)):
        return [attr_value(v) for v in value]
    if isinstance(value, torch.memory_format):
        return str(value).removeprefix("torch.")
    return value


def _bound_value(arg: Any, value: Any) -> Any:
    """An attribute as the kernel takes it (a memory format name back to the torch object)."""
    if arg.name == "memory_format" and isinstance(value, str):
        return MEMORY_FORMATS.get(value, value)
    return value


class Signature:
    """Encodes call arguments into (inputs, attrs) and binds them back, from a torch schema."""

    def __init__(self, overload: torch._ops.OpOverload) -> None:
        self.overload = overload
        self.args = [a for a in overload._schema.arguments if a.name not in DROPPED_ARGS]
        self.schema_index = {a.name: i for i, a in enumerate(overload._schema.arguments)}  # positions count dropped args
        self.attr_names = frozenset(a.name for a in self.args)
        # with two tensor lists (lstm's hx and params) the inputs left over can't say where one ends:
        # each list then records its length as a mask attribute
        self.masked_lists = sum(_kind(a) == "tensor-list" for a in self.args) > 1

    def encode(self, args: Sequence[Any], kwargs: dict[str, Any], is_tensor: Callable[[Any], bool]) -> tuple[list[Any], dict[str, Any]]:
        """Split a call's arguments into tensor inputs (in order) and attributes."""
        schema_args = list(self.overload._schema.arguments)
        values = [args[i] if i < len(args) else kwargs.get(a.name, MISSING) for i, a in enumerate(schema_args)]
        inputs: list[Any] = []
        attrs: dict[str, Any] = {}
        for index, (arg, value) in enumerate(zip(schema_args, values)):
            if value is MISSING or arg.name in DROPPED_ARGS:
                continue
            kind = _kind(arg)
            if kind == "tensor-list":
                inputs.extend(v for v in value if v is not None)
                if self.masked_lists or any(v is None for v in value):
                    attrs[arg.name] = [None if v is None else True for v in value]
            elif kind == "tensor" and is_tensor(value):
                inputs.append(value)
            elif kind == "tensor" and value is None:
                later = values[index + 1:]
                needed = _default(arg) is MISSING or any(is_tensor(v) or isinstance(v, (list, tuple)) for v in later)
                if needed:
                    attrs[arg.name] = None
            elif not _same(value, _default(arg)):
                attrs[arg.name] = attr_value(value)
        return inputs, attrs

    def bind(self, inputs: Sequence[Any], attrs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Rebuild (args, kwargs) for the overload; inputs are placed by the encoding rules."""
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        position = 0
        for index, arg in enumerate(self.args):
            kind = _kind(arg)
            if arg.name in attrs and kind != "tensor-list":
                value = _bound_value(arg, attrs[arg.name])
            elif kind == "tensor-list":
                mask = attrs.get(arg.name)
                later = sum(1 for a in self.args[index + 1:] if _kind(a) == "tensor" and a.name not in attrs)
                count = len(inputs) - position - later if mask is None else sum(m is not None for m in mask)
                value, position = self._take_list(inputs, position, count, mask)
            elif kind == "tensor" and position < len(inputs):
                value, position = inputs[position], position + 1
            else:
                continue  # omitted: the schema default applies
            if arg.kwarg_only or kwargs or len(args) != self.schema_index[arg.name]:
                kwargs[arg.name] = value
            else:
                args.append(value)
        if position < len(inputs):
            raise TypeError(f"{len(inputs)} tensor inputs given but the schema takes {position}")
        return args, kwargs

    @staticmethod
    def _take_list(inputs: Sequence[Any], position: int, count: int, mask: list | None) -> tuple[list[Any], int]:
        taken = list(inputs[position:position + count])
        if mask is None:
            return taken, position + count
        it = iter(taken)
        return [next(it) if m is not None else None for m in mask], position + count


def arguments(node: Any) -> dict[str, Any]:
    """Every schema argument of an aten node by name: tensor inputs as Values, attrs, defaults applied."""
    signature = schema_opdef(node.op).extra["signature"]
    args, kwargs = signature.bind(list(node.inputs), node.attrs)
    named = {a.name: _default(a) for a in signature.args}
    named.update(zip((a.name for a in signature.args), args))
    named.update(kwargs)
    return {name: (None if value is MISSING else value) for name, value in named.items()}


def attr_with_default(node: Any, name: str) -> Any:
    """One argument of an aten node, with the schema default applied when the attr is omitted."""
    return arguments(node)[name]


def encode_arguments(op: str, named: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """(inputs, attrs) for `op` called with `named` schema arguments (Values are the tensor inputs)."""
    from ..value import Value

    signature = schema_opdef(op).extra["signature"]
    defaults = {a.name: _default(a) for a in signature.args}
    given = {k: v for k, v in named.items() if not _same(v, defaults.get(k, MISSING))}
    return signature.encode([], given, lambda v: isinstance(v, Value))


# ---- shape rules the meta kernels cannot give --------------------------------------------

def slice_infer(attrs: dict[str, Any], input_types: list) -> list:
    """x[:seq] on a static dim: the kernel clamps the (huge) sentinel of `seq` to the dim, but torch.export
    captured the slice assuming seq fits, so the result has `seq` entries (start 0, step 1)."""
    from ..infer import meta_infer
    from ..types import SymSize, TensorType

    types = meta_infer(schema_opdef("aten.slice.Tensor"), attrs, input_types)
    end = attrs.get("end")
    if not isinstance(end, SymSize) or attrs.get("start", 0) not in (0, None) or attrs.get("step", 1) != 1:
        return types
    shape = list(types[0].shape)
    shape[attrs.get("dim", 0) % len(shape)] = end.dim
    return [TensorType(tuple(shape), types[0].dtype)]


# ---- the ops whose shapes the meta kernels cannot give ------------------------------------
SHAPE_RULES: dict[str, Callable[[dict[str, Any], list], list]] = {"aten.slice.Tensor": slice_infer}


@lru_cache(maxsize=None)
def schema_opdef(name: str) -> OpDef | None:
    """Build the OpDef of a torch.ops overload from its schema (and SHAPE_RULES)."""
    overload = resolve_overload(name)
    if overload is None:
        return None
    signature = Signature(overload)
    return OpDef(name=name, fn=overload, bind=signature.bind, attrs=signature.attr_names,
                 infer=SHAPE_RULES.get(name), extra={"signature": signature})
