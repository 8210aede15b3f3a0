"""Reductions and ops along one dim (softmax, cumsum, diff)."""
from __future__ import annotations

from . import lowerings as lower
from . import prune_rules as prune
from .decl import OpDecl, table

REDUCE = table(
    OpDecl("aten.mean.dim", prune=prune.reduce_rule(), lower=lower.reduce("ReduceMean")),
    OpDecl("aten.mean", lower=lower.reduce("ReduceMean")),
    OpDecl("aten.sum.dim_IntList", prune=prune.reduce_rule(), lower=lower.reduce("ReduceSum")),
    OpDecl("aten.sum", lower=lower.reduce("ReduceSum")),
    OpDecl("aten.amax", prune=prune.reduce_rule(), lower=lower.reduce("ReduceMax")),
    OpDecl("aten.max.dim", prune=prune.reduce_rule(), lower=lower.max_dim),
    OpDecl("aten.softmax.int", prune=prune.along_dim, lower=lower.softmax("Softmax")),
    OpDecl("aten._softmax", prune=prune.along_dim, lower=lower.softmax("Softmax")),
    OpDecl("aten.log_softmax.int", prune=prune.along_dim, lower=lower.softmax("LogSoftmax")),
    OpDecl("aten._log_softmax", prune=prune.along_dim, lower=lower.softmax("LogSoftmax")),
    OpDecl("aten.cumsum", prune=prune.along_dim, lower=lower.cumsum),
    OpDecl("aten.diff", lower=lower.diff),
)
