"""Normalization: batch, layer, RMS, group and instance norm; carve.skip_layer_norm (ORT's fused add + norm)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..ir.node import Node
from . import lowerings as lower
from . import prune_rules as prune
from .decl import OpDecl, table
from .lowerings import BASE, forms
from .quant import MICROSOFT

if TYPE_CHECKING:
    from ..backends.onnx import LoweringContext

BATCH_NORMS = ("aten.batch_norm", "aten._native_batch_norm_legit_no_training")
LAYER_NORM = forms((BASE, lower.decomposed_layer_norm), (17, lower.layer_norm))


def skip_layer_norm(ctx: "LoweringContext", node: Node) -> None:
    """com.microsoft SkipLayerNormalization; the sum is its 4th output, written only when something reads it."""
    out, total = ctx.output_names(node)
    read = node.outputs[1].uses or node.outputs[1].is_graph_output
    ctx.extra_domains[MICROSOFT] = 1
    ctx.emit("SkipLayerNormalization", [ctx.name(v) for v in node.inputs], [out, "", "", total] if read else [out],
             domain=MICROSOFT, epsilon=float(node.attrs["eps"]))

NORM = table(
    *(OpDecl(op, prune=prune.batch_norm, lower=lower.batch_norm) for op in BATCH_NORMS),
    OpDecl("aten.layer_norm", prune=prune.layer_norm, attr_fix=prune.fix_normalized, lower=LAYER_NORM),
    OpDecl("aten.native_layer_norm", prune=prune.layer_norm, attr_fix=prune.fix_normalized, lower=LAYER_NORM),
    OpDecl("aten.rms_norm", prune=prune.layer_norm, attr_fix=prune.fix_normalized,
           lower=forms((BASE, lower.rms_norm), (23, lower.rms_norm_op))),
    OpDecl("aten.group_norm", prune=prune.group_norm, attr_fix=prune.fix_num_groups,
           lower=forms((BASE, lower.group_norm), (21, lower.group_norm_op))),
    OpDecl("aten.instance_norm", no_lowering="no ONNX lowering written yet"),
    OpDecl("carve.skip_layer_norm", lower=skip_layer_norm),
)
