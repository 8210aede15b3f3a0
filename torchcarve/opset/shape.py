"""Shape ops: views and reshapes, permutes, expand/repeat, cat/stack/split, slicing and indexing, pads,
rolls and triangular masks. `view=True` marks those whose output may share the input's storage."""
from __future__ import annotations

from . import lowerings as lower
from . import prune_rules as prune
from .decl import OpDecl, table
from .lowerings import BASE, forms


def _view(name: str, **fields) -> OpDecl:
    return OpDecl(f"aten.{name}", view=True, **fields)


SHAPE = table(
    _view("view", prune=prune.reshape, attr_fix=prune.fix_sizes("size"), lower=lower.reshape),
    _view("_unsafe_view", prune=prune.reshape, attr_fix=prune.fix_sizes("size"), lower=lower.reshape),
    _view("reshape", prune=prune.reshape, attr_fix=prune.fix_sizes("shape"), lower=lower.reshape),
    _view("flatten.using_ints", prune=prune.reshape, lower=lower.reshape),
    _view("unflatten.int", prune=prune.reshape, attr_fix=prune.fix_unflatten, lower=lower.reshape),
    _view("view_as", lower=lower.reshape),
    _view("reshape_as", prune=prune.with_shape_source(prune.reshape), lower=lower.reshape),
    _view("unsqueeze", prune=prune.reshape, lower=lower.unsqueeze),
    *(_view(op, prune=prune.reshape, lower=lower.squeeze) for op in ("squeeze", "squeeze.dim", "squeeze.dims")),
    _view("permute", prune=prune.permute, lower=lower.permute),
    _view("transpose.int", prune=prune.permute, lower=lower.transpose),
    _view("t", prune=prune.permute, lower=lower.transpose),
    _view("swapaxes", prune=prune.permute, lower=lower.swap_dims("axis0", "axis1")),
    _view("swapdims", lower=lower.swap_dims("dim0", "dim1")),
    _view("numpy_T", lower=lower.numpy_t),
    _view("expand", prune=prune.expand, attr_fix=prune.fix_sizes("size"), lower=lower.expand),
    _view("expand_as", prune=prune.with_shape_source(prune.expand), lower=lower.expand_as),
    OpDecl("aten.repeat", lower=lower.repeat),
    OpDecl("aten.cat", prune=prune.cat, lower=lower.cat),
    OpDecl("aten.stack", prune=prune.stack, lower=lower.stack),
    _view("split.Tensor", prune=prune.split, attr_fix=prune.fix_split, lower=lower.split),
    _view("split_with_sizes", prune=prune.split, attr_fix=prune.fix_split, lower=lower.split),
    _view("chunk", prune=prune.chunk, lower=lower.split),
    _view("unbind.int", prune=prune.unbind, lower=lower.unbind),
    _view("select.int", prune=prune.select, lower=lower.select),
    _view("slice.Tensor", prune=prune.select, lower=lower.slice_),
    _view("narrow", lower=lower.narrow),
    OpDecl("aten.index.Tensor", prune=prune.index_tensor, lower=lower.index),
    OpDecl("aten.index_select", lower=lower.index_select),
    OpDecl("aten.gather", prune=prune.gather, lower=lower.gather),
    OpDecl("aten.pad", prune=prune.pad, lower=lower.pad),
    OpDecl("aten.constant_pad_nd", prune=prune.pad, lower=lower.pad),
    OpDecl("aten.roll", prune=prune.roll, lower=lower.roll),
    OpDecl("aten.tril", lower=forms((BASE, lower.masked_trilu(False)), (14, lower.trilu(0)))),
    OpDecl("aten.triu", lower=forms((BASE, lower.masked_trilu(True)), (14, lower.trilu(1)))),
)
