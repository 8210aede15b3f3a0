"""Ops of the IR itself: `param` reads a weight from the graph's ParamStore."""
from __future__ import annotations

from . import OpDef, register_op


def _no_kernel(*_: object) -> None:
    raise RuntimeError("param nodes are read from the ParamStore, not run")


PARAM = register_op(OpDef(name="param", fn=_no_kernel, bind=lambda inputs, attrs: ([], {}),
                          attrs=frozenset({"name"}), known=True))
