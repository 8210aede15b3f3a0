"""The op registry: one OpDef per op name, holding its kernel, argument binding and shape rule.

Ops of the allowed `torch.ops` namespaces are described by their schema on demand (`aten.conv2d`,
`aten.add.Scalar`), so every captured op runs and infers shapes; only pure tensor ops pass the
allow-list (allow.py), since IR text is untrusted input. This layer knows kernels, signatures and
shapes only; an op's cost, pruning rule and ONNX lowering are declared in the op catalog
(torchcarve/opset, a layer above), and ops it does not declare are barriers to passes.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from ...errors import UnsupportedOpError
from . import attention, contrib, core, moe, onnx_ops, quant
from .opdef import Args, OpDef

# the ops that are not torch.ops overloads, composed from their modules' tables
_EXPLICIT: dict[str, OpDef] = {op.name: op for op in (*core.OPS, *onnx_ops.OPS, *quant.OPS, *attention.OPS,
                                                        *contrib.OPS, *moe.OPS)}


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
        return onnx_ops.opaque_opdef(name)
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


__all__ = ["Args", "OpDef", "get_op", "op_name", "register_op"]
