"""TensorType: a shape (ints or symbolic dims such as "batch" or "batch*12") and a dtype.

A size attribute may be symbolic too (`view{size=[batch, -1]}`): a `SymSize`, bound at run time
to the sizes of the graph's inputs (`bind_sizes`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Union

import torch

from ..errors import ShapeError

Dim = Union[int, str]

# short name <-> torch dtype; the short names are what the text form prints.
DTYPES: dict[str, torch.dtype] = {
    "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "f64": torch.float64,
    "i64": torch.int64, "i32": torch.int32, "i16": torch.int16, "i8": torch.int8,
    "u8": torch.uint8, "u16": torch.uint16, "u32": torch.uint32, "u64": torch.uint64, "bool": torch.bool,
    "c64": torch.complex64, "c128": torch.complex128,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}

SYMBOL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DIM_RE = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*|\d+)(?:\*(?:[A-Za-z_][A-Za-z0-9_]*|\d+))*")


def dtype_name(dtype: torch.dtype) -> str:
    """The short name of a torch dtype ("f32")."""
    from ..errors import CarveError

    if dtype not in DTYPE_NAMES:
        raise CarveError(f"dtype {dtype} is not supported by the IR", hint=f"supported: {', '.join(DTYPES)}")
    return DTYPE_NAMES[dtype]


def dim_symbols(dim: Dim) -> list[str]:
    """The symbols a dim is a product of ("batch*seq*2" -> ["batch", "seq"])."""
    if isinstance(dim, int):
        return []
    return [part for part in dim.split("*") if not part.isdigit()]


def normalize_dim(dim: Dim) -> Dim:
    """Canonical form of a dim: ints stay ints; products are sorted symbols then one int factor."""
    if isinstance(dim, int):
        return dim
    if dim.isdigit():
        return int(dim)
    parts = dim.split("*")
    factor = math.prod(int(p) for p in parts if p.isdigit())
    symbols = sorted(p for p in parts if not p.isdigit())
    if factor == 0 or not symbols:
        return factor
    return "*".join(symbols + ([str(factor)] if factor != 1 else []))


@dataclass(frozen=True)
class TensorType:
    """The static type of a value: shape and dtype."""

    shape: tuple[Dim, ...]
    dtype: str = "f32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ShapeError(f"unknown dtype {self.dtype!r}", hint=f"supported: {', '.join(DTYPES)}")
        bad = [d for d in self.shape if not isinstance(d, int) and not (isinstance(d, str) and DIM_RE.fullmatch(d))]
        if bad:  # a dim is an int or a product of symbols and ints: nothing else reaches the text form
            raise ShapeError(f"bad dim {bad[0]!r}", hint="dims are ints or symbols like batch or batch*12")
        object.__setattr__(self, "shape", tuple(normalize_dim(d) for d in self.shape))

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def symbols(self) -> set[str]:
        return {s for d in self.shape for s in dim_symbols(d)}

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def numel(self, sizes: dict[str, int] | None = None) -> int:
        """Element count; symbolic dims take their size from `sizes` (default 1)."""
        return math.prod(concrete_dim(d, sizes or {}) for d in self.shape)

    @property
    def itemsize(self) -> int:
        return self.torch_dtype.itemsize

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "TensorType":
        return cls(tuple(int(d) for d in tensor.shape), dtype_name(tensor.dtype))


def concrete_dim(dim: Dim, sizes: dict[str, int]) -> int:
    """The integer a dim stands for when each symbol has the size given (1 when unknown)."""
    if isinstance(dim, int):
        return dim
    return math.prod(int(p) if p.isdigit() else sizes.get(p, 1) for p in dim.split("*"))


@dataclass(frozen=True)
class SymSize:
    """An int attribute given by a symbolic dim ("batch", "batch*12"): known only at run time."""

    dim: str

    def __post_init__(self) -> None:
        dim = normalize_dim(self.dim) if isinstance(self.dim, str) and DIM_RE.fullmatch(self.dim) else None
        if not isinstance(dim, str):
            raise ValueError(f"a symbolic size needs a product of symbols, got {self.dim!r}")
        object.__setattr__(self, "dim", dim)

    def __str__(self) -> str:
        return self.dim


def size_attr(dim: Dim) -> int | SymSize:
    """A dim as a size attribute: ints stay ints, symbolic dims become SymSize."""
    dim = normalize_dim(dim)
    return dim if isinstance(dim, int) else SymSize(dim)


def attr_symbols(value: Any) -> set[str]:
    """The symbols the SymSizes inside an attribute value (or a dict of them) refer to."""
    if isinstance(value, SymSize):
        return set(dim_symbols(value.dim))
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return {s for item in value for s in attr_symbols(item)}
    return set()


def bind_sizes(value: Any, sizes: dict[str, int]) -> Any:
    """An attribute value (or dict of them) with every SymSize replaced by its int under `sizes`."""
    if isinstance(value, SymSize):
        missing = [s for s in dim_symbols(value.dim) if s not in sizes]
        if missing:
            from ..errors import ShapeError

            raise ShapeError(f"the size of symbol '{missing[0]}' is not known here",
                             hint="run the graph on inputs that fix every symbolic dim")
        return concrete_dim(value.dim, sizes)
    if isinstance(value, dict):
        return {k: bind_sizes(v, sizes) for k, v in value.items()}
    if isinstance(value, list):
        return [bind_sizes(v, sizes) for v in value]
    if isinstance(value, tuple):
        return tuple(bind_sizes(v, sizes) for v in value)
    return value
