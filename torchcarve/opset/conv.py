"""Convolution, linear algebra, embedding, pooling and resampling."""
from __future__ import annotations

from typing import Callable

from . import lowerings as lower
from . import prune_rules as prune
from .costs import addmm_macs, conv_macs, conv_transpose_macs, last_dim_macs, matmul_macs
from .decl import OpDecl, table

OUT_CHANNELS = ((1, 0),)  # weight (input 1) axis 0: the op's output channels
CONVS = ("aten.conv1d", "aten.conv2d", "aten.conv3d", "aten.convolution")
CONV_TRANSPOSES = ("aten.conv_transpose1d", "aten.conv_transpose2d.input", "aten.conv_transpose3d.input")


def _spatial(axes: int) -> Callable:
    """Pools and resampling act on the last `axes` axes; the others map 1:1."""
    return prune.leading_rule(lambda node: axes)


CONV = table(
    *(OpDecl(op, macs=conv_macs, prune=prune.conv, prune_source=OUT_CHANNELS, attr_fix=prune.fix_groups,
             lower=lower.conv) for op in CONVS),
    OpDecl("aten.conv1d.padding", lower=lower.conv), OpDecl("aten.conv2d.padding", lower=lower.conv),
    OpDecl("aten.conv_transpose1d", macs=conv_transpose_macs, lower=lower.conv_transpose),
    OpDecl("aten.conv_transpose2d.input", macs=conv_transpose_macs, lower=lower.conv_transpose),
    OpDecl("aten.conv_transpose3d.input", macs=conv_transpose_macs, no_lowering="no ONNX lowering tested yet"),
    OpDecl("aten.linear", macs=last_dim_macs(0), prune=prune.linear, prune_source=OUT_CHANNELS, lower=lower.linear),
    *(OpDecl(f"aten.{op}", macs=matmul_macs, prune=prune.matmul, lower=lower.matmul) for op in ("matmul", "bmm", "mm")),
    OpDecl("aten.addmm", macs=addmm_macs, prune=prune.addmm, prune_source=((2, 1),), lower=lower.addmm),
    OpDecl("aten.baddbmm", macs=matmul_macs, no_lowering="no ONNX lowering written yet"),
    OpDecl("aten.einsum", prune=prune.einsum, lower=lower.einsum),
    OpDecl("aten.embedding", prune=prune.embedding, prune_source=((0, 1),), lower=lower.embedding),
    OpDecl("aten.max_pool1d", prune=_spatial(1), lower=lower.max_pool),
    OpDecl("aten.max_pool2d", prune=_spatial(2), lower=lower.max_pool),
    OpDecl("aten.max_pool2d_with_indices", prune=_spatial(2), lower=lower.max_pool),
    OpDecl("aten.avg_pool1d", prune=_spatial(1), lower=lower.avg_pool),
    OpDecl("aten.avg_pool2d", prune=_spatial(2), lower=lower.avg_pool),
    OpDecl("aten.adaptive_avg_pool1d", prune=_spatial(1), lower=lower.adaptive_pool("GlobalAveragePool", "AveragePool")),
    OpDecl("aten.adaptive_avg_pool2d", prune=_spatial(2), lower=lower.adaptive_pool("GlobalAveragePool", "AveragePool")),
    OpDecl("aten.adaptive_max_pool1d", lower=lower.adaptive_max_pool),
    OpDecl("aten.adaptive_max_pool2d", prune=_spatial(2), lower=lower.adaptive_max_pool),
    OpDecl("aten.upsample_nearest2d.vec", prune=_spatial(2), lower=lower.upsample("nearest")),
    OpDecl("aten.upsample_bilinear2d.vec", prune=_spatial(2), lower=lower.upsample("linear")),
    OpDecl("aten.pixel_shuffle", prune=_spatial(3), lower=lower.pixel_shuffle),
    OpDecl("aten.channel_shuffle", no_lowering="no ONNX lowering written yet"),
)
