"""Shape inference: run an op's torch kernel on meta tensors, and only on meta tensors.

Symbolic dims are stood in for by distinct large primes, and output sizes are factored back
into symbols, so `view`, `flatten`, `cat`, ... infer "batch*12"-style dims with no per-op code.
Graphs come from untrusted files, so no real kernel may run here: `MetaOnly` puts factory calls
(`aten.full`, whose device the IR leaves unset) on meta and refuses any call touching a real tensor.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..errors import ShapeError
from .ops import OpDef, get_op
from .types import DTYPE_NAMES, Dim, TensorType, attr_symbols

SENTINELS = (10007, 10009, 10037, 10039, 10061, 10067, 10069, 10079, 10091, 10093)


class InferenceUnavailable(ShapeError):
    """The op's output shape depends on data (nonzero, ...) or has no meta kernel."""


CACHE_SIZE = 4096
_cache: OrderedDict[tuple, list[TensorType]] = OrderedDict()


def infer_types(op: str | OpDef, attrs: dict[str, Any], input_types: Sequence[TensorType]) -> list[TensorType]:
    """Output types of `op` applied to inputs of `input_types` with `attrs`.

    Results are memoized (LRU): repeated layers and the verifier's re-check cost a dict lookup,
    not a meta-tensor kernel call.
    """
    opdef = get_op(op) if isinstance(op, str) else op
    key = _cache_key(opdef, attrs, input_types)
    if key is not None and key in _cache:
        _cache.move_to_end(key)
        return list(_cache[key])
    types = _infer_uncached(opdef, attrs, input_types)
    if key is not None:
        _cache[key] = list(types)
        if len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return types


def _cache_key(opdef: OpDef, attrs: dict[str, Any], input_types: Sequence[TensorType]) -> tuple | None:
    try:
        key = (opdef.name, id(opdef), _frozen(attrs), tuple(input_types))
        hash(key)
    except TypeError:  # an attribute that cannot be hashed: just don't cache
        return None
    return key


def _frozen(value: Any) -> Any:
    """A hashable stand-in for an attribute value that tells 1, 1.0 and True apart."""
    if isinstance(value, dict):
        return tuple((k, _frozen(v)) for k, v in sorted(value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, *(_frozen(v) for v in value))
    return (type(value).__name__, value)


def _infer_uncached(opdef: OpDef, attrs: dict[str, Any], input_types: Sequence[TensorType]) -> list[TensorType]:
    if opdef.infer is not None:
        return opdef.infer(attrs, list(input_types))
    return meta_infer(opdef, attrs, input_types)


def meta_infer(opdef: OpDef, attrs: dict[str, Any], input_types: Sequence[TensorType]) -> list[TensorType]:
    """Output types from the op's kernel run on meta tensors, symbols stood in for by sentinel primes."""
    symbols = sorted({s for t in input_types for s in t.symbols} | attr_symbols(attrs))
    if len(symbols) > len(SENTINELS):
        raise ShapeError(f"{opdef.name}: more than {len(SENTINELS)} symbolic dims are not supported")
    sentinel = dict(zip(symbols, SENTINELS))
    try:
        meta_inputs = [_meta_tensor(t, sentinel) for t in input_types]
        with torch.device("meta"), MetaOnly():
            outputs = opdef.run(meta_inputs, attrs, sentinel)
    except Exception as e:
        if _data_dependent(e):
            raise InferenceUnavailable(f"{opdef.name}: no shape inference on meta tensors ({e})") from e
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__  # the kernel's own checks
        raise ShapeError(f"{opdef.name}: {message}", hint=f"input types: {', '.join(map(str, input_types))}") from e
    names = {v: k for k, v in sentinel.items()}
    return [_type_of(out, names, opdef.name) for out in outputs]


class MetaOnly(TorchDispatchMode):
    """Every aten call runs on meta: factory calls are given device=meta (the `torch.device`
    context does not reach `torch.ops` calls), and a call on or to a real tensor is an error."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = dict(kwargs or {})
        if any(a.name == "device" and a.kwarg_only for a in func._schema.arguments):
            kwargs["device"] = torch.device("meta")
        _require_meta(func, (args, kwargs))
        result = func(*args, **kwargs)
        _require_meta(func, result)
        return result


def _require_meta(func: Any, tree: Any) -> None:
    if any(isinstance(t, torch.Tensor) and not t.is_meta for t in tree_leaves(tree)):
        raise ShapeError(f"{func} would run on a real tensor during shape inference; only meta tensors are allowed")


# torch's exceptions for "the output size depends on tensor values" (named, so ir/ needs no torch.fx import)
DATA_DEPENDENT_ERRORS = {"GuardOnDataDependentSymNode", "DataDependentOutputException", "DynamicOutputShapeException"}


# what `tensor.tolist()` on a meta tensor raises inside a dispatch mode (outside one: NotImplementedError)
DATA_READ_MESSAGES = ("shouldn't be called on a tensor with unallocated storage",)


def _data_dependent(error: Exception) -> bool:
    return isinstance(error, NotImplementedError) or any(
        cls.__name__ in DATA_DEPENDENT_ERRORS for cls in type(error).__mro__) or any(
        message in str(error) for message in DATA_READ_MESSAGES)


def _meta_tensor(t: TensorType, sentinel: dict[str, int]) -> torch.Tensor:
    sizes = [_sentinel_dim(d, sentinel) for d in t.shape]
    return torch.empty(sizes, dtype=t.torch_dtype, device="meta")


def _sentinel_dim(dim: Dim, sentinel: dict[str, int]) -> int:
    if isinstance(dim, int):
        return dim
    size = 1
    for part in dim.split("*"):
        size *= int(part) if part.isdigit() else sentinel[part]
    return size


def _type_of(out: Any, names: dict[int, str], op: str) -> TensorType:
    if not isinstance(out, torch.Tensor):
        raise InferenceUnavailable(f"{op} returns a {type(out).__name__}, not a tensor")
    if out.dtype not in DTYPE_NAMES:
        raise ShapeError(f"{op} returns dtype {out.dtype}, which the IR does not support")
    return TensorType(tuple(_symbolic_dim(int(d), names) for d in out.shape), DTYPE_NAMES[out.dtype])


def _symbolic_dim(size: int, names: dict[int, str]) -> Dim:
    """Factor the sentinel primes out of `size`: 10007*24 -> "batch*24"."""
    parts: list[str] = []
    for prime, name in names.items():
        while size and size % prime == 0:
            parts.append(name)
            size //= prime
    if not parts:
        return size
    return "*".join(parts + ([str(size)] if size != 1 else []))

