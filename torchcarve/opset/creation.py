"""Ops that create tensors: graph weights (`param`), ranges and filled tensors. `shape_only` marks
those whose result depends only on input shapes (folded whenever the output is static)."""
from __future__ import annotations

from . import lowerings as lower
from . import prune_rules as prune
from .decl import OpDecl, table

SIZED = prune.fix_sizes("size")
NO_ONNX_FORM = "no ONNX lowering written yet (folded when the output is static)"

CREATION = table(
    OpDecl("param", prune=prune.source, no_lowering="weights are written as initializers, not lowered"),
    *(OpDecl(f"aten.{op}", lower=lower.arange) for op in ("arange", "arange.start", "arange.start_step")),
    *(OpDecl(f"aten.{op}", prune=prune.sized, attr_fix=SIZED, lower=lower.full) for op in ("zeros", "ones", "full")),
    *(OpDecl(f"aten.{op}", prune=prune.sized, attr_fix=SIZED, lower=lower.like_fill, shape_only=True)
      for op in ("new_zeros", "new_ones")),
    *(OpDecl(f"aten.{op}", prune=prune.sized, attr_fix=SIZED, no_lowering=NO_ONNX_FORM, shape_only=True)
      for op in ("new_full", "new_empty")),
    *(OpDecl(f"aten.{op}", prune=prune.elementwise, lower=lower.like_fill, shape_only=True)
      for op in ("zeros_like", "ones_like", "full_like")),
    OpDecl("aten.empty_like", no_lowering=NO_ONNX_FORM, shape_only=True),
    OpDecl("aten.scalar_tensor", no_lowering="no ONNX lowering written yet (folded when constant)"),
)
