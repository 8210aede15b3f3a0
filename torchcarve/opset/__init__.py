"""The op catalog: everything the compiler knows about an op beyond its kernel, one declaration per op.

Each family module (elementwise, conv, norm, shape, reduce, attention, quant, creation, moe) builds one table
of `OpDecl`s; `CATALOG` composes them here, explicitly (a name declared twice is an error). Passes,
backends and frontends ask the lookups below. An op is *known* when it is declared: passes may reason
about it; an undeclared op is a barrier they leave alone.

Layering: ir (kernels, signatures, shapes) < opset < frontends, backends, analysis < passes. `ir` does
not know the catalog; the catalog's rule functions live in prune_rules.py (pruning dimension rules,
attribute fixes), lowerings.py (ONNX lowering rules), costs.py (MACs) and the family modules.
"""
from __future__ import annotations

from typing import Callable

from .attention import ATTENTION
from .conv import CONV
from .creation import CREATION
from .decl import OpDecl, compose
from .elementwise import ELEMENTWISE
from .lowerings import lower_onnx_op
from .moe import MOE
from .norm import NORM
from .quant import QUANT
from .reduce import REDUCE
from .shape import SHAPE

CATALOG: dict[str, OpDecl] = compose(ELEMENTWISE, CONV, NORM, SHAPE, REDUCE, ATTENTION, QUANT, CREATION, MOE)
VIEW_OPS = frozenset(name for name, decl in CATALOG.items() if decl.view)


def declaration(op: str) -> OpDecl | None:
    """The declaration of `op`, or None when the catalog does not know it."""
    return CATALOG.get(op)


def known(op: str) -> bool:
    """Passes may reason about `op` (it is declared)."""
    return op in CATALOG


def macs(op: str) -> Callable | None:
    """The MACs rule of `op`, or None (no multiply-accumulates counted)."""
    decl = CATALOG.get(op)
    return decl.macs if decl else None


def dim_rule(op: str) -> Callable | None:
    """The pruning dimension rule of `op`, or None: the op is a barrier."""
    decl = CATALOG.get(op)
    return decl.prune if decl else None


def attr_fix(op: str) -> Callable | None:
    """The attribute fix `op` needs after a prune, or None."""
    decl = CATALOG.get(op)
    return decl.attr_fix if decl else None


def prune_sources(op: str) -> tuple[tuple[int, int], ...] | Callable:
    """(input position, axis) of weights whose axis is `op`'s output channels (or node -> those pairs)."""
    decl = CATALOG.get(op)
    return decl.prune_source if decl else ()


def lowering(op: str) -> Callable | None:
    """The ONNX lowering rule of `op` (`onnx.*` ops are written back as they came), or None."""
    decl = CATALOG.get(op)
    if decl is not None:
        return decl.lower
    return lower_onnx_op if op.startswith("onnx.") else None


def shape_only(op: str) -> bool:
    """`op`'s result depends only on input shapes (the backend folds it whenever the output is static)."""
    decl = CATALOG.get(op)
    return bool(decl and decl.shape_only)


__all__ = ["CATALOG", "OpDecl", "VIEW_OPS", "attr_fix", "declaration", "dim_rule", "known", "lowering", "macs",
           "prune_sources", "shape_only"]
