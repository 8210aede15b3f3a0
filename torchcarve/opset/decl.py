"""OpDecl: one declaration holding everything the compiler knows about an op beyond its kernel.

Family modules (elementwise.py, conv.py, ...) each build one table with `table(...)`;
torchcarve/opset/__init__.py composes them with `compose(...)`. A name declared twice is an error,
and an op without an ONNX lowering says why (`no_lowering`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class OpDecl:
    """What the compiler knows about one op (its kernel, signature and shapes live in torchcarve/ir).

    macs:         (node, sizes) -> multiply-accumulates; None means 0.
    prune:        pruning dimension rule (prune_rules.py); None: the op is a pruning barrier.
    prune_source: (input position, axis) of weights whose axis is the op's output channels: groups start there;
                  or node -> those pairs, for ops whose weights' positions depend on attributes (carve.moe).
    attr_fix:     (node, new output types) -> attrs after a prune changed the op's sizes.
    lower:        ONNX lowering rule (ctx, node) (lowerings.py; `forms(...)` for per-opset variants).
    no_lowering:  why there is no lowering (required when `lower` is None).
    shape_only:   the result depends only on input shapes: folded whenever the output is static.
    view:         the output may share the input's storage (a strided view, not a fresh tensor).
    """

    name: str
    macs: Callable[..., int] | None = None
    prune: Callable[..., Any] | None = None
    prune_source: tuple[tuple[int, Any], ...] | Callable[..., tuple] = ()
    attr_fix: Callable[..., dict] | None = None
    lower: Callable[..., None] | None = None
    no_lowering: str = ""
    shape_only: bool = False
    view: bool = False

    def __post_init__(self) -> None:
        if (self.lower is None) == (not self.no_lowering):
            raise ValueError(f"{self.name}: give a lowering or say why there is none (no_lowering=...), not both")


def table(*decls: OpDecl) -> dict[str, OpDecl]:
    """A family's declarations by name; a name declared twice is an error."""
    return compose(*({d.name: d} for d in decls))


def compose(*tables: dict[str, OpDecl]) -> dict[str, OpDecl]:
    """Merge tables; a name in two of them is an error."""
    merged: dict[str, OpDecl] = {}
    for part in tables:
        twice = sorted(set(merged) & set(part))
        if twice:
            raise ValueError(f"ops declared twice: {', '.join(twice)}")
        merged.update(part)
    return merged
