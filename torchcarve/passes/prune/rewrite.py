"""Remove chosen units of dependency groups: slice every coupled weight, fix size attributes
(view/reshape sizes, split sizes, conv groups) and re-infer every type downstream."""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Sequence

import torch

from ...errors import CarveError
from ...ir import Graph, TensorType, Value
from ...ir.infer import InferenceUnavailable, infer_types
from .groups import Group, Slot
from ...opset import attr_fix
from ...opset.prune_rules import Axis, axis_size, resized, take

Removal = tuple[Group, torch.Tensor]  # a group and the units (row numbers) to remove


def kept_indices(removals: Sequence[Removal]) -> dict[Slot, torch.Tensor]:
    """For every touched axis, the indices that stay."""
    removed: dict[Slot, list[torch.Tensor]] = defaultdict(list)
    for group, units in removals:
        for slot, idx in group.members.items():
            removed[slot].append(idx[units].flatten())
    keep = {}
    for (value, axis), parts in removed.items():
        mask = torch.ones(axis_size(value.type.shape, axis), dtype=torch.bool)
        mask[torch.cat(parts)] = False
        keep[(value, axis)] = mask.nonzero().flatten()
    return keep


def remove_units(graph: Graph, removals: Sequence[Removal]) -> None:
    """Rewrite `graph` in place so the given units no longer exist."""
    keep = kept_indices([(g, u) for g, u in removals if len(u)])
    if not keep:
        return
    by_value: dict[Value, dict[Axis, torch.Tensor]] = defaultdict(dict)
    for (value, axis), indices in keep.items():
        by_value[value][axis] = indices
    readers = Counter(node.attrs["name"] for node in graph.param_nodes())
    for value, axes in by_value.items():
        if value.producer is not None and value.producer.op == "param":
            _slice_param(graph, value, axes, readers)
    _retype(graph, by_value)


def _slice_param(graph: Graph, value: Value, axes: dict[Axis, torch.Tensor], readers: Counter) -> None:
    node = value.producer
    name = node.attrs["name"]
    tensor = graph.params[name]
    for axis, indices in axes.items():
        try:
            tensor = take(tensor, axis, indices)
        except ValueError as e:
            raise CarveError(f"prune: weight {name}: {e}", hint="remove as many units from every slice") from e
    if readers[name] > 1:  # another param node reads the unsliced tensor: store this one apart
        new_name = graph.params.unique_name(name)
        if name in graph.params.trainable:
            graph.params.trainable.add(new_name)
        node.attrs = {**node.attrs, "name": new_name}
        name = new_name
    graph.params[name] = tensor.contiguous()
    value.type = TensorType.of(graph.params[name])


def _new_type(value: Value, axes: dict[Axis, torch.Tensor]) -> TensorType:
    shape = tuple(value.type.shape)
    for axis, indices in axes.items():
        shape = resized(shape, axis, int(indices.numel()))
    return TensorType(shape, value.type.dtype)


def _retype(graph: Graph, by_value: dict[Value, dict[Axis, torch.Tensor]]) -> None:
    changed = {v for v in by_value}
    for node in graph.nodes:
        if node.op == "param" or not (changed & set(node.inputs) or changed & set(node.outputs)):
            continue
        expected = [_new_type(v, by_value[v]) if v in by_value else v.type for v in node.outputs]
        fix = attr_fix(node.op)
        if fix is not None:
            node.attrs = fix(node, expected)
        try:
            inferred = infer_types(node.op, node.attrs, [v.type for v in node.inputs])
        except InferenceUnavailable:
            inferred = expected
        except CarveError as e:
            raise CarveError(f"prune: {node!r} ({node.op}) no longer type-checks: {e}",
                             hint="a pruning rule is wrong for this op; protect the layer or report it") from e
        if inferred != expected:
            raise CarveError(f"prune: {node!r} ({node.op}) infers {', '.join(map(str, inferred))}, "
                             f"expected {', '.join(map(str, expected))}",
                             hint="a pruning rule is wrong for this op; protect the layer or report it")
        for value, new in zip(node.outputs, inferred):
            value.type = new
