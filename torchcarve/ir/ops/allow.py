"""The op allow-list: which torch.ops overloads the IR may name.

IR text is untrusted input, and parsing or verifying a graph runs every op on meta tensors (shape
inference); a saved graph is later run for real. So an op is allowed only when its schema says it
is a pure tensor computation: it lives in an allowed namespace, writes none of its arguments,
takes only plain values (tensors, numbers, bools, lists of these, and the enumeration strings named
below, never a path), returns tensors, and is not on the deny list of ops whose schema looks pure
but is not (unannotated writes, unchecked memory access, I/O). docs/safety-ir.md has the rationale.
"""
from __future__ import annotations

import re

import torch

ALLOWED_NAMESPACES = frozenset({"aten", "prims"})

# argument types (as the JIT schema spells them) of a pure op; `str` is checked by name below
ALLOWED_ARG_TYPES = frozenset({
    "Tensor", "Optional[Tensor]", "List[Tensor]", "List[Optional[Tensor]]", "Optional[List[Optional[Tensor]]]",
    "int", "Optional[int]", "List[int]", "Optional[List[int]]",
    "float", "Optional[float]", "List[float]", "Optional[List[float]]",
    "bool", "Optional[bool]", "List[bool]",
    "number", "Optional[number]", "List[number]", "complex", "List[complex]",
    "Optional[Device]",     # dropped by the encoding: the IR never pins a device
    "Optional[Generator]",  # only `none` can be written for it
})
STRING_ARG_TYPES = frozenset({"str", "Optional[str]"})
# string arguments that pick a variant of the math (the kernel validates the value); nothing else
ENUM_STRING_ARGS = frozenset({
    "approximate", "rounding_mode", "mode", "padding", "equation", "reduce", "side", "indexing",
    "interpolation", "norm", "ord", "p", "driver", "UPLO", "pad_mode", "padding_side",
})
ALLOWED_RETURN_TYPES = frozenset({"Tensor", "List[Tensor]"})

# ops whose schema looks pure but is not, by op name (without namespace and overload):
DENIED_OPS = re.compile("|".join((
    r"_copy_from.*",            # writes into `dst`, which the schema does not mark as written
    r"_unsafe_(?!view$).*",     # no bounds checks: out-of-bounds reads and writes (_unsafe_index_put)
    r".*_unsafe",               # _sparse_coo_tensor_unsafe, ...: unchecked indices
    r"_reshape_alias.*",        # sizes and strides taken without a storage bounds check
    r"_nested.*",               # nested tensors from raw buffers and offsets
    r"from_file|save|load|_print|warn",  # I/O (also caught by the rules above; named for clarity)
)))


def disallowed_reason(overload: torch._ops.OpOverload) -> str | None:
    """Why the IR may not name `overload`, or None when it is an allowed pure tensor op."""
    schema = overload._schema
    namespace, name = schema.name.split("::")
    if namespace not in ALLOWED_NAMESPACES:
        return f"namespace '{namespace}' is not allowed (only {', '.join(sorted(ALLOWED_NAMESPACES))})"
    for arg in schema.arguments:
        reason = _argument_problem(arg)
        if reason:
            return f"argument '{arg.name}' {reason}"
    if not schema.returns:
        return "it returns nothing (a side effect is its only purpose)"
    for ret in schema.returns:
        if str(ret.type) not in ALLOWED_RETURN_TYPES or (ret.alias_info is not None and ret.alias_info.is_write):
            return f"it returns {ret.type}, not a fresh tensor"
    if DENIED_OPS.fullmatch(name):
        return "it is on the deny list of side-effecting or unchecked ops"
    return None


def _argument_problem(arg: torch._C.Argument) -> str | None:
    type_name = str(arg.type)
    if arg.alias_info is not None and arg.alias_info.is_write:
        return "is written in place"
    if type_name in STRING_ARG_TYPES:
        return None if arg.name in ENUM_STRING_ARGS else "is a string that is not a known enumeration (a path?)"
    if type_name not in ALLOWED_ARG_TYPES:
        return f"has type {type_name}"
    return None
