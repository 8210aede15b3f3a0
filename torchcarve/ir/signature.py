"""Concrete inputs checked against a graph's signature: count, dtype, rank, static dims, and one
size per symbol across the inputs. Used wherever a graph is run on user data (calibration for
`tc.optimize`, `tc.compile`, `carve opt`, the op-by-op interpreter), so the error is the same everywhere.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from ..errors import ShapeError
from .types import TensorType, concrete_dim, dim_symbols
from .value import Value

DYNAMIC_HINT = "capture with --dynamic-batch (dynamic_batch=True) or dynamic={...} to make that dim symbolic"


def bind_inputs(inputs: Sequence[Value], tensors: Sequence[Any], where: str = "inputs") -> dict[str, int]:
    """The size of every symbol the input types use, fixed by `tensors`; a ShapeError naming the input,
    what the graph expects, what it got, and the fix, when they do not fit."""
    if len(tensors) != len(inputs):
        names = ", ".join(f"%{v.name}: {v.type}" for v in inputs)
        raise ShapeError(f"{where}: the graph takes {len(inputs)} input(s) ({names}), got {len(tensors)}",
                         hint="each batch is a tuple with one tensor per graph input, in order")
    for value, tensor in zip(inputs, tensors):
        _check_tensor(value, tensor, where)
    sizes: dict[str, int] = {}
    bound_by: dict[str, str] = {}
    for value, tensor in zip(inputs, tensors):  # plain symbols first: they fix the sizes
        for axis, dim in enumerate(value.type.shape):
            if isinstance(dim, str) and dim_symbols(dim) == [dim]:
                _bind(sizes, bound_by, dim, int(tensor.shape[axis]), value, tensor, where)
    for value, tensor in zip(inputs, tensors):  # then products of them (batch*2) must agree
        for axis, dim in enumerate(value.type.shape):
            if isinstance(dim, str) and all(s in sizes for s in dim_symbols(dim)):
                _expect(concrete_dim(dim, sizes), int(tensor.shape[axis]), axis, value, tensor, where)
    return sizes


def check_batches(inputs: Sequence[Value], batches: Iterable[Any], what: str = "calibration batch") -> list[tuple]:
    """Every batch (a tensor or a tuple of tensors) checked by `bind_inputs`; returns them as tuples."""
    checked = []
    for index, batch in enumerate(batches):
        batch = (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)
        bind_inputs(inputs, batch, f"{what} {index}")
        checked.append(batch)
    return checked


def _check_tensor(value: Value, tensor: Any, where: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ShapeError(f"{where}: input %{value.name} expects a tensor {value.type}, got a {type(tensor).__name__}")
    if tensor.dtype != value.type.torch_dtype or tensor.dim() != value.type.rank:
        got = _describe(tensor)
        hint = f"convert it with .to(torch.{str(value.type.torch_dtype).split('.')[-1]})" \
            if tensor.dim() == value.type.rank else "give the tensor the graph's rank"
        raise ShapeError(f"{where}: input %{value.name} expects {value.type}, got {got}", hint=hint)
    for axis, dim in enumerate(value.type.shape):
        if isinstance(dim, int):
            _expect(dim, int(tensor.shape[axis]), axis, value, tensor, where)


def _bind(sizes: dict[str, int], bound_by: dict[str, str], symbol: str, size: int, value: Value,
          tensor: torch.Tensor, where: str) -> None:
    if symbol not in sizes:
        sizes[symbol], bound_by[symbol] = size, value.name
        return
    if sizes[symbol] != size:
        raise ShapeError(f"{where}: input %{value.name} has {symbol}={size}, but %{bound_by[symbol]} has "
                         f"{symbol}={sizes[symbol]} (expects {value.type}, got {_describe(tensor)})",
                         hint=f"every input's '{symbol}' dim must have the same size within one batch")


def _expect(expected: int, got: int, axis: int, value: Value, tensor: torch.Tensor, where: str) -> None:
    if expected == got:
        return
    fix = DYNAMIC_HINT
    if axis == 0 and isinstance(value.type.shape[0], int):
        fix = f"the graph has a fixed batch of {expected}: pass --calibration-batch {expected} (batches of " \
              f"{expected}), or {DYNAMIC_HINT}"
    raise ShapeError(f"{where}: input %{value.name} expects {value.type}, got {_describe(tensor)} "
                     f"(dim {axis} is {got}, the graph needs {expected})", hint=fix)


def _describe(tensor: torch.Tensor) -> str:
    try:
        return str(TensorType.of(tensor))
    except Exception:  # a dtype the IR has no name for
        return f"{tensor.dtype}{list(tensor.shape)}"
