"""The op registry: one OpDef per op name, holding everything the compiler knows about it.

Ops of the allowed `torch.ops` namespaces are described by their schema on demand (`aten.conv2d`,
`aten.add.Scalar`), so every captured op runs and infers shapes; only pure tensor ops pass the
allow-list (allow.py), since IR text is untrusted input. An op is *known* when a table here gives it
rules (cost, ...); unknown ops are barriers to passes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from ...errors import UnsupportedOpError

if TYPE_CHECKING:
    from ..node import Node
    from ..types import TensorType

Args = tuple[list[Any], dict[str, Any]]


@dataclass(frozen=True)
class OpDef:
    """What the compiler knows about one op.

    fn:      the torch callable the PyTorch backend calls (an OpOverload or a plain function
             whose source is self-contained, so generated code can carry it).
    bind:    (inputs, attrs) -> (args, kwargs) for `fn`, with Values standing in for tensors.
    attrs:   valid attribute names (None: not checked).
    infer:   (attrs, input types) -> output types; None means "run fn on meta tensors".
    macs:    (node, sizes) -> multiply-accumulates; None means 0.
    known:   passes may reason about the op (False: a barrier they leave alone).
    """

    name: str
    fn: Callable[..., Any]
    bind: Callable[[Sequence[Any], dict[str, Any]], Args]
    attrs: frozenset[str] | None = None
    infer: Callable[[dict[str, Any], list["TensorType"]], list["TensorType"]] | None = None
    macs: Callable[["Node", dict[str, int]], int] | None = None
    known: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def run(self, inputs: Sequence[Any], attrs: dict[str, Any], sizes: dict[str, int] | None = None) -> list[Any]:
        """Call the kernel with concrete inputs; always returns a list of outputs.

        `sizes` binds the symbols of symbolic size attributes (`view{size=[batch, -1]}`).
        """
        from ..types import attr_symbols, bind_sizes

        if attr_symbols(attrs):
            attrs = bind_sizes(attrs, sizes or {})
        args, kwargs = self.bind(inputs, attrs)
        result = self.fn(*args, **kwargs)
        return list(result) if isinstance(result, (tuple, list)) else [result]


_EXPLICIT: dict[str, OpDef] = {}


def register_op(opdef: OpDef) -> OpDef:
    """Add an op that is not a torch.ops overload (e.g. `onnx.*`, `carve.*`)."""
    _EXPLICIT[opdef.name] = opdef
    get_op.cache_clear()
    return opdef


@lru_cache(maxsize=None)
def get_op(name: str) -> OpDef:
    """The OpDef for an op name; UnsupportedOpError if no registry or torch.ops namespace has it."""
    if name in _EXPLICIT:
        return _EXPLICIT[name]
    if name.startswith("onnx."):  # an ONNX op without a kernel: kept opaque
        from .onnx_ops import opaque_opdef

        return opaque_opdef(name)
    from .allow import ALLOWED_NAMESPACES, disallowed_reason
    from .aten import resolve_overload, schema_opdef

    hint = "ops are pure torch.ops overloads (aten.conv2d), onnx.* ops or registered ops; see docs/safety-ir.md"
    namespace = name.split(".", 1)[0]
    if namespace not in ALLOWED_NAMESPACES:  # checked before torch.ops is touched
        raise UnsupportedOpError(f"unknown op '{name}': namespace '{namespace}' is not allowed", hint=hint)
    overload = resolve_overload(name)
    if overload is None:
        raise UnsupportedOpError(f"unknown op '{name}'", hint=hint)
    reason = disallowed_reason(overload)
    if reason is not None:
        raise UnsupportedOpError(f"op '{name}' is not allowed: {reason}", hint=hint)
    return schema_opdef(name)


def op_name(overload: torch._ops.OpOverload) -> str:
    """IR name of a torch overload: `aten.add` for the default/Tensor overload, else `aten.add.Scalar`."""
    from .aten import overload_op_name

    return overload_op_name(overload)


# importing registers the tables
from . import core, onnx_ops  # noqa: E402,F401
from . import quant  # noqa: E402,F401
from . import attention  # noqa: E402,F401
from . import moe  # noqa: E402,F401
