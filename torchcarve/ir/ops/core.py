"""Ops of the IR itself: `param` reads a weight from the graph's ParamStore."""
from __future__ import annotations

from .opdef import OpDef


def _no_kernel(*_: object) -> None:
    raise RuntimeError("param nodes are read from the ParamStore, not run")


PARAM = OpDef(name="param", fn=_no_kernel, bind=lambda inputs, attrs: ([], {}),
              attrs=frozenset({"name"}))
OPS = [PARAM]
