"""Pruning dimension rules: for each op, how an axis of one port maps onto axes of its other ports.

A rule is `rule(node, port, axis, idx) -> [(port, axis, idx), ...]`. A port is ("in", i) or
("out", j); `idx` is an int tensor (units, k): unit u occupies indices idx[u] of that axis. A rule
raises Barrier when removing those indices would change the op's meaning, Merge when units must
be coarsened first (channels -> whole heads / conv groups), Divide when units go separate ways
(a split), Approximate when the links hold but the op's statistics then run over the kept indices
only (LayerNorm/RMSNorm over channels: allowed unless `prune{norms=false}`). Ops without a rule are
barriers. An attribute fix (`fix_*`) rewrites size-carrying attributes after a prune. The op
catalog (the family modules of torchcarve.opset) says which rule and fix belong to which op.

An axis is an int, or a pair (outer, inner): the inner axis taken apart in every slice of the outer
one, index = slice * size(inner) + position (each expert's own hidden units in a stacked [E, H, D]
weight). Every slice then keeps as many indices as the others, so the tensor stays rectangular.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..ir.node import Node
from ..ir.ops.aten import attr_with_default
from ..ir.ops.moe import moe_weights
from ..ir.types import size_attr

Port = tuple[str, int]
Axis = int | tuple[int, int]  # an axis, or (outer, inner): the inner axis slice by slice of the outer
Link = tuple[Port, Axis, torch.Tensor]
Rule = Callable[[Node, Port, Axis, torch.Tensor], list[Link]]
X, W, B, OUT = ("in", 0), ("in", 1), ("in", 2), ("out", 0)


class Barrier(Exception):
    """Nothing passes this op on this axis."""


class Merge(Exception):
    """Units must be merged first; `candidates` are per-unit labels (equal-size classes), best first."""

    def __init__(self, candidates: list[torch.Tensor], kind: str) -> None:
        super().__init__(kind)
        self.candidates, self.kind = candidates, kind


class Divide(Exception):
    """Units with different `labels` are independent groups."""

    def __init__(self, labels: torch.Tensor) -> None:
        super().__init__("divide")
        self.labels = labels


class Approximate(Exception):
    """`links` hold, but removing the indices changes the statistics the op computes over them."""

    def __init__(self, links: list[Link], reason: str) -> None:
        super().__init__(reason)
        self.links = links


def port_value(node: Node, port: Port):
    return node.inputs[port[1]] if port[0] == "in" else node.outputs[port[1]]


def shape(node: Node, port: Port) -> tuple:
    return port_value(node, port).type.shape


def _arg(node: Node, name: str) -> Any:
    return node.attrs[name] if name in node.attrs else attr_with_default(node, name)


def _ports(node: Node) -> list[Port]:
    return [("in", i) for i in range(len(node.inputs))] + [("out", j) for j in range(len(node.outputs))]


# ---- generic shapes of rules ---------------------------------------------------------------

def elementwise(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """Broadcasting ops: axes aligned from the right; size-1 (broadcast) axes do not couple."""
    out = shape(node, OUT)
    out_axis = axis + len(out) - len(shape(node, port))
    if shape(node, port)[axis] != out[out_axis]:
        return []  # a broadcast axis
    links = []
    for other in _ports(node):
        dims = shape(node, other)
        other_axis = out_axis - (len(out) - len(dims))
        if other[0] == "out" and dims != out:
            continue
        if 0 <= other_axis < len(dims) and dims[other_axis] == out[out_axis]:
            links.append((other, other_axis, idx))
    return links


def first_input(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """Output has input 0's shape; other inputs (type_as's dtype source) are not coupled."""
    if port not in (X, OUT):
        raise Barrier(f"{node.op} input {port[1]}")
    return [(X, axis, idx), (OUT, axis, idx)]


def source(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """Params are leaves: nothing to follow."""
    return []


def _reduced(node: Node, name: str, rank: int) -> list[int]:
    dims = _arg(node, name)
    dims = list(range(rank)) if dims is None or dims == [] else dims
    return sorted(d % rank for d in ([dims] if isinstance(dims, int) else dims))


def reduce_rule(name: str = "dim") -> Rule:
    """Reductions over `name` axes: those are barriers, the rest map to the output (keepdim aware)."""
    def rule(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
        rank = len(shape(node, X))
        reduced = _reduced(node, name, rank)
        keep = bool(node.attrs.get("keepdim", False))
        kept = [a for a in range(rank) if keep or a not in reduced]
        in_axis = kept[axis] if port[0] == "out" else axis
        if in_axis in reduced:
            raise Barrier(f"{node.op} reduces axis {in_axis}")
        out_axis = kept.index(in_axis)
        return [(X, in_axis, idx)] + [(("out", j), out_axis, idx) for j in range(len(node.outputs))]
    return rule


def leading_rule(trailing: Callable[[Node], int]) -> Rule:
    """Ops acting on the last `trailing(node)` axes (pools, pads, norms): other axes map 1:1."""
    def rule(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
        if port not in (X,) and port[0] != "out":
            raise Barrier(f"{node.op} parameter")
        dims = shape(node, port)
        if axis >= len(dims) - trailing(node):
            raise Barrier(f"{node.op} works along axis {axis}")
        outs = [("out", j) for j, v in enumerate(node.outputs) if len(v.type.shape) == len(shape(node, X))]
        return [(X, axis, idx)] + [(p, axis, idx) for p in outs]
    return rule


def along_dim(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """softmax/cumsum along `dim`: that axis is a barrier."""
    if axis == _arg(node, "dim") % len(shape(node, X)):
        raise Barrier(f"{node.op} mixes axis {axis}")
    return first_input(node, port, axis, idx)


# ---- per-op rules ----------------------------------------------------------------------------

def batch_norm(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """x axis 1 <-> weight/bias/running stats; other x axes map 1:1."""
    channel = axis if port == X or port == OUT else 1
    if port not in (X, OUT) and axis != 0:
        raise Barrier("batch_norm parameter axis")
    links = [(X, channel, idx), (OUT, channel, idx)]
    if channel != 1:
        return links
    size = shape(node, X)[1]
    links += [(("in", i), 0, idx) for i in range(1, len(node.inputs))]
    links += [(("out", j), 0, idx) for j in range(1, len(node.outputs)) if shape(node, ("out", j)) == (size,)]
    return links


def _normalized(node: Node) -> int:
    return len(_arg(node, "normalized_shape"))


def _norm_params(node: Node) -> list[Port]:
    return [("in", i) for i in range(1, len(node.inputs))]


def layer_norm(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """layer_norm / rms_norm: leading axes map 1:1; a normalized axis couples x, y and the weight/bias
    axes, but the mean/variance then run over the kept channels only (Approximate)."""
    rank = len(shape(node, X))
    first = rank - _normalized(node)
    params = _norm_params(node)
    x_axis = axis + first if port in params else axis
    same_rank = [("out", j) for j, v in enumerate(node.outputs) if len(v.type.shape) == rank]
    if x_axis < first:
        return [(X, x_axis, idx)] + [(p, x_axis, idx) for p in same_rank]
    full = [("out", j) for j, v in enumerate(node.outputs) if v.type.shape == shape(node, X)]
    links = [(X, x_axis, idx)] + [(p, x_axis, idx) for p in full] + [(p, x_axis - first, idx) for p in params]
    raise Approximate(links, f"{node.op} normalizes axis {x_axis} over the kept channels")


def group_norm(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """group_norm (N, C, *): whole groups are removed exactly (their statistics are their own); with one
    group the statistics span every channel, so removing channels is Approximate."""
    params = _norm_params(node)
    x_axis = 1 if port in params else axis
    if x_axis == 0:
        return [(X, 0, idx), (OUT, 0, idx)]
    if x_axis > 1:
        raise Barrier(f"group_norm normalizes axis {x_axis}")
    links = [(X, 1, idx), (OUT, 1, idx)] + [(p, 0, idx) for p in params]
    groups = _arg(node, "num_groups")
    if groups == 1:
        raise Approximate(links, "group_norm with one group normalizes over the kept channels")
    size = shape(node, X)[1] // groups
    if _whole_blocks(idx, size):
        return links
    labels = _components(idx // size)
    raise Merge([labels], "norm-groups") if labels is not None else Barrier("group_norm splits a group")


def _linear_like(node: Node, port: Port, axis: int, idx: torch.Tensor, weight: Port, bias: Port | None) -> list[Link]:
    x_rank, w_rank = len(shape(node, X)), 2
    features_in = (X, x_rank - 1)
    features_out = (OUT, x_rank - 1)
    if port == weight:
        slot = ("w_out" if axis == 0 else "w_in")
    elif port == bias:
        slot = "w_out"
    elif axis == x_rank - 1:
        slot = "w_in" if port == X else "w_out"
    else:
        return [(X, axis, idx), (OUT, axis, idx)]
    if slot == "w_in":
        return [(*features_in, idx), (weight, w_rank - 1, idx)]
    return [(*features_out, idx), (weight, 0, idx)] + ([(bias, 0, idx)] if bias and bias[1] < len(node.inputs) else [])


def linear(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """y = x W^T + b: x features <-> W axis 1; y features <-> W axis 0 <-> b."""
    return _linear_like(node, port, axis, idx, W, B)


def embedding(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """weight (V, D) read at indices: D <-> output's last axis; index axes <-> leading output axes."""
    weight, indices = ("in", 0), ("in", 1)
    rank = len(shape(node, OUT))
    if port == weight:
        if axis == 0:
            raise Barrier("embedding vocabulary axis")
        return [(weight, 1, idx), (OUT, rank - 1, idx)]
    if port == OUT and axis == rank - 1:
        return [(weight, 1, idx), (OUT, rank - 1, idx)]
    return [(indices, axis, idx), (OUT, axis, idx)]


def _whole_blocks(idx: torch.Tensor, block: int) -> bool:
    """Every unit is a union of whole blocks of `block` consecutive indices."""
    units, k = idx.shape
    if k % block:
        return False
    chunks = idx.sort(dim=1).values.view(units, k // block, block)  # rows hold distinct indices
    return bool(((chunks[..., 0] % block == 0) & (chunks[..., -1] - chunks[..., 0] == block - 1)).all())


def _uniform_blocks(idx: torch.Tensor, block: int, count: int) -> bool:
    """Every unit takes the same positions in each of the `count` blocks."""
    units, k = idx.shape
    if k % count:
        return False
    rows = idx.sort(dim=1).values  # distinct indices: sorted, block b holds entries b*k/count..
    blocks = rows.view(units, count, k // count)
    if not bool((blocks // block == torch.arange(count).view(1, -1, 1)).all()):
        return False
    positions = blocks % block
    return bool((positions == positions[:, :1]).all())


def _expand_blocks(blocks: torch.Tensor, size: int) -> torch.Tensor:
    """Block ids (units, m) -> channel ids of those whole blocks of `size` (units, m*size)."""
    return (blocks.unsqueeze(-1) * size + torch.arange(size)).reshape(blocks.shape[0], -1)


def _block_ids(idx: torch.Tensor, block: int) -> torch.Tensor:
    """Sorted distinct block ids per unit (units of whole blocks: one per `block` indices)."""
    ids = (idx // block).sort(dim=1).values
    if ids.shape[1] % block == 0:
        first = ids[:, ::block]
        if bool((ids.view(ids.shape[0], -1, block) == first.unsqueeze(-1)).all()):
            return first
    return torch.stack([row.unique() for row in ids])


def _position_ids(idx: torch.Tensor, block: int) -> torch.Tensor:
    """Sorted distinct positions within a block per unit (uniform units: the same in every block)."""
    rows = idx.sort(dim=1).values
    count = int((rows[:, -1] // block - rows[:, 0] // block + 1).max())
    if rows.shape[1] % count == 0:
        blocks = rows.view(rows.shape[0], count, -1)
        if bool((blocks % block == blocks[:, :1] % block).all()):
            return blocks[:, 0] % block
    return torch.stack([row.unique() for row in idx % block])


def conv(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """Convolution: out channels <-> W axis 0 <-> bias; in channels <-> W axis 1. Grouped convs
    remove whole groups (coupling in and out: depthwise) or the same slots of every group."""
    if node.attrs.get("transposed"):
        raise Barrier("transposed convolution")
    weight = shape(node, W)
    spatial = len(weight) - 2
    channel = len(shape(node, X)) - spatial - 1
    groups = _arg(node, "groups")
    if port in (X, OUT) and axis < channel:
        return [(X, axis, idx), (OUT, axis, idx)]
    if (port in (X, OUT) and axis > channel) or (port == W and axis >= 2):
        raise Barrier("convolution spatial/kernel axis")
    cin_g, cout_g = weight[1], weight[0] // groups
    out_space = [(OUT, channel), (W, 0)] + ([(B, 0)] if len(node.inputs) > 2 else [])
    in_space = [(X, channel)]
    if port == W and axis == 1:  # one slot of every group
        in_idx = (torch.arange(groups).view(1, -1, 1) * cin_g + idx.unsqueeze(1)).reshape(idx.shape[0], -1)
        return [(W, 1, idx)] + [(*s, in_idx) for s in in_space]
    arrived_in = port == X
    block = cin_g if arrived_in else cout_g
    if groups == 1:
        return [(*s, idx) for s in (in_space + [(W, 1)] if arrived_in else out_space)]
    if _whole_blocks(idx, block):
        ids = _block_ids(idx, block)
        return [(*s, _expand_blocks(ids, cin_g)) for s in in_space] + [(*s, _expand_blocks(ids, cout_g)) for s in out_space]
    if _uniform_blocks(idx, block, groups):
        positions = _position_ids(idx, block)
        if arrived_in:
            return [(X, channel, idx), (W, 1, positions)]
        return [(*s, idx) for s in out_space]
    candidates = [labels for labels in (_components(idx % block), _components(idx // block)) if labels is not None]
    candidates.sort(key=lambda labels: -int(labels.max()) - 1)
    raise Merge(candidates, "conv-groups") if candidates else Barrier("grouped convolution slots")


def _components(keys: torch.Tensor) -> torch.Tensor | None:
    """Label units that share any key (union-find over keys); None unless classes are equal-size."""
    parent = list(range(keys.shape[0]))

    def find(u: int) -> int:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    owner: dict[int, int] = {}
    for unit, row in enumerate(keys.tolist()):
        for key in row:
            if key in owner:
                parent[find(unit)] = find(owner[key])
            else:
                owner[key] = unit
    roots = [find(u) for u in range(len(parent))]
    _, labels, counts = torch.unique(torch.tensor(roots), return_inverse=True, return_counts=True)
    if counts.unique().numel() != 1 or counts[0] == 1:
        return None
    return labels


def matmul(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """(..., M, K) @ (..., K, N): K couples both operands; M, N and batch axes follow the output."""
    a, b, out = shape(node, X), shape(node, W), shape(node, OUT)
    if len(a) < 2 or len(b) < 2:
        raise Barrier("matmul with a 1-D operand")
    rank = {X: len(a), W: len(b), OUT: len(out)}[port]
    pos = axis - rank  # negative position
    if port == X and pos == -1 or port == W and pos == -2:
        return [(X, len(a) - 1, idx), (W, len(b) - 2, idx)]
    if (port == X and pos == -2) or (port == OUT and pos == -2):
        return [(X, len(a) - 2, idx), (OUT, len(out) - 2, idx)]
    if (port == W and pos == -1) or (port == OUT and pos == -1):
        return [(W, len(b) - 1, idx), (OUT, len(out) - 1, idx)]
    if port != OUT and shape(node, port)[pos] != out[pos]:
        return []  # a broadcast batch axis
    links = [(OUT, len(out) + pos, idx)]
    for operand, dims in ((X, a), (W, b)):
        if len(dims) + pos >= 0 and dims[pos] == out[pos]:
            links.append((operand, len(dims) + pos, idx))
    return links


def addmm(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """bias + m1 @ m2 (GPT-2's Conv1D): K couples m1 axis 1 and m2 axis 0; N couples m2, out and bias."""
    bias, m1, m2 = ("in", 0), ("in", 1), ("in", 2)
    bias_shape = shape(node, bias)
    if port == bias:
        port, axis = (OUT, axis + 2 - len(bias_shape))
    if (port, axis) in ((m1, 1), (m2, 0)):
        return [(m1, 1, idx), (m2, 0, idx)]
    dim = 0 if (port, axis) in ((m1, 0), (OUT, 0)) else 1
    links = [(m1 if dim == 0 else m2, dim, idx), (OUT, dim, idx)]
    bias_axis = dim - (2 - len(bias_shape))
    if bias_axis >= 0 and bias_shape[bias_axis] == shape(node, OUT)[dim]:
        links.append((bias, bias_axis, idx))
    return links


def attention(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """scaled_dot_product_attention on (B, H, L, E): heads couple q/k/v/out (GQA: one k/v head per
    `rep` q heads); keys and the softmax axis are barriers; E couples q and k only with a fixed scale."""
    q, k, v = shape(node, X), shape(node, W), shape(node, B)
    if not len(q) == len(k) == len(v) == 4:
        raise Barrier("attention on tensors that are not (B, H, L, E)")
    mask = ("in", 3) if len(node.inputs) > 3 else None
    mask_shape = shape(node, mask) if mask else ()
    pos = axis - len(shape(node, port))
    if port == mask:
        if len(mask_shape) + pos < 0 or mask_shape[pos] != q[pos] or pos == -1:
            raise Barrier("attention mask axis")
        port = X
    if pos == -4:
        return [(p, 0, idx) for p in (X, W, B, OUT) if shape(node, p)[0] == shape(node, port)[0]]
    if pos == -2:
        if port in (W, B):
            raise Barrier("attention keys axis")
        return [(X, 2, idx), (OUT, 2, idx)] + _mask_link(mask, mask_shape, -2, q[2], idx)
    if pos == -1:
        if port in (B, OUT):
            return [(B, 3, idx), (OUT, 3, idx)]
        if "scale" not in node.attrs:
            raise Barrier("attention head dim sets the default scale")
        return [(X, 3, idx), (W, 3, idx)]
    return _heads(node, port, idx, q[1], k[1], mask, mask_shape)


def _mask_link(mask: Port | None, mask_shape: tuple, pos: int, size: int, idx: torch.Tensor) -> list[Link]:
    if mask is None or len(mask_shape) + pos < 0 or mask_shape[pos] != size:
        return []
    return [(mask, len(mask_shape) + pos, idx)]


def _heads(node: Node, port: Port, idx: torch.Tensor, heads: int, kv_heads: int, mask: Port | None,
           mask_shape: tuple) -> list[Link]:
    rep = heads // kv_heads
    if port in (X, OUT):
        q_idx = idx
        if rep > 1:
            if not _whole_blocks(idx, rep):
                labels = _components(idx // rep)
                raise Merge([labels], "heads") if labels is not None else Barrier("GQA head blocks")
        kv_idx = _block_ids(idx, rep) if rep > 1 else idx
    else:
        kv_idx, q_idx = idx, _expand_blocks(idx, rep)
    return ([(X, 1, q_idx), (OUT, 1, q_idx), (W, 1, kv_idx), (B, 1, kv_idx)]
            + _mask_link(mask, mask_shape, -3, heads, q_idx))


def cat(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """Concatenation: the cat axis is offsets into the output; other axes map 1:1 (empty 1-D skipped)."""
    out = shape(node, OUT)
    dim = _arg(node, "dim") % len(out)
    inputs = [("in", i) for i, v in enumerate(node.inputs) if v.type.shape != (0,)]
    if axis != dim:
        return [(p, axis, idx) for p in inputs + [OUT]]
    sizes = [shape(node, p)[dim] for p in inputs]
    offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    if port != OUT:
        return [(OUT, dim, idx + offsets[inputs.index(port)])]
    return _route(idx, offsets, inputs, dim)


def _route(idx: torch.Tensor, offsets: list[int], ports: list[Port], axis: int) -> list[Link]:
    """Map indices of a concatenated axis back to the pieces; every unit must take the same number
    of indices from a piece (units wholly inside different pieces are separate groups)."""
    owner = torch.bucketize(idx, torch.tensor(offsets[1:]), right=True)
    links = []
    for piece, port in enumerate(ports):
        inside = owner == piece
        counts = inside.sum(dim=1)
        if not counts.any():
            continue
        if (counts != counts[0]).any():
            if (owner == owner[:, :1]).all():
                raise Divide(owner[:, 0])
            raise Barrier("units take different shares of the pieces of a concat/split")
        links.append((port, axis, idx[inside].view(idx.shape[0], -1) - offsets[piece]))
    return links


def split(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """split / split_with_sizes / chunk: outputs are consecutive pieces of `dim`."""
    rank = len(shape(node, X))
    dim = _arg(node, "dim") % rank
    outputs = [("out", j) for j in range(len(node.outputs))]
    if axis != dim:
        return [(p, axis, idx) for p in [X] + outputs]
    sizes = [shape(node, p)[dim] for p in outputs]
    offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    if port != X:
        return [(X, dim, idx + offsets[port[1]])]
    return _route(idx, offsets, outputs, dim)


def permute(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    rank = len(shape(node, X))
    order = {"aten.permute": lambda: [d % rank for d in _arg(node, "dims")],
             "aten.t": lambda: list(range(rank))[::-1]}.get(node.op, lambda: _swap(node, rank))()
    in_axis = order[axis] if port == OUT else axis
    return [(X, in_axis, idx), (OUT, order.index(in_axis), idx)]


def _swap(node: Node, rank: int) -> list[int]:
    order = list(range(rank))
    names = ("axis0", "axis1") if node.op == "aten.swapaxes" else ("dim0", "dim1")
    a, b = (_arg(node, name) % rank for name in names)
    order[a], order[b] = order[b], order[a]
    return order


def select(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """select.int drops `dim`; slice.Tensor keeps it but is a barrier there unless it takes it all."""
    dims = shape(node, X)
    dim = _arg(node, "dim") % len(dims)
    dropped = node.op == "aten.select.int"
    in_axis = axis + (1 if dropped and port == OUT and axis >= dim else 0)
    if in_axis == dim and not _full_slice(node, dims[dim]):
        raise Barrier(f"{node.op} on axis {dim}")
    out_axis = in_axis - (1 if dropped and in_axis > dim else 0)
    return [(X, in_axis, idx), (OUT, out_axis, idx)]


def gather(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """gather along `dim`: that axis is a barrier; the others map 1:1 between self, index and output."""
    if axis == _arg(node, "dim") % len(shape(node, port)):
        raise Barrier(f"{node.op} gathers along axis {axis}")
    return [(p, axis, idx) for p in (X, W, OUT) if shape(node, p)[axis] == shape(node, port)[axis]]


def _full_slice(node: Node, size: Any) -> bool:
    if node.op != "aten.slice.Tensor" or not isinstance(size, int):
        return False
    start, end, step = (_arg(node, n) for n in ("start", "end", "step"))
    ends_past = end is None or (isinstance(end, int) and end >= size)  # a symbolic end may stop short
    return (start or 0) == 0 and ends_past and step == 1


def expand(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """expand: new leading axes and size-1 axes broadcast (not coupled); others map 1:1."""
    src, out = shape(node, X), shape(node, OUT)
    shift = len(out) - len(src)
    in_axis = axis - shift if port == OUT else axis
    if in_axis < 0 or src[in_axis] != out[in_axis + shift]:
        return [(OUT, axis, idx)] if port == OUT else []
    return [(X, in_axis, idx), (OUT, in_axis + shift, idx)]


def with_shape_source(rule: Rule) -> Rule:
    """reshape_as / expand_as: input 1 only gives the output's shape, so its axes follow the output's."""
    def shaped(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
        if port == W:
            return [(W, axis, idx), (OUT, axis, idx)]
        links = rule(node, port, axis, idx)
        return links + [(W, a, i) for p, a, i in links if p == OUT]
    return shaped


def sized(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """new_zeros / zeros / ones / full: the output's axes follow its `size`; the input gives only dtype."""
    return [(OUT, axis, idx)] if port == OUT else []


def chunk(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """chunk: pieces stay equal, so a unit takes the same slots of every piece (merged if needed)."""
    dim = _arg(node, "dim") % len(shape(node, X))
    if port != X or axis != dim:
        return split(node, port, axis, idx)
    pieces = [v.type.shape[dim] for v in node.outputs]
    if len(set(pieces)) != 1:
        raise Barrier("chunk with a shorter last piece")
    if _uniform_blocks(idx, pieces[0], len(pieces)):
        return split(node, port, axis, idx)
    labels = _components(idx % pieces[0])
    raise Merge([labels], "channels") if labels is not None else Barrier("chunk pieces would differ")


def unbind(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """unbind drops `dim` (a barrier); other axes map onto every output."""
    return _around_dim(node, port, axis, idx, X, [("out", j) for j in range(len(node.outputs))])


def stack(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """stack adds `dim` (a barrier); other axes map onto every input."""
    return _around_dim(node, port, axis, idx, OUT, [("in", i) for i in range(len(node.inputs))])


def _around_dim(node: Node, port: Port, axis: int, idx: torch.Tensor, whole: Port, parts: list[Port]) -> list[Link]:
    """`whole` has the extra axis `dim` that `parts` lack: that axis is a barrier, the others map 1:1."""
    dim = _arg(node, "dim") % len(shape(node, whole))
    whole_axis = axis + (1 if port != whole and axis >= dim else 0)
    if whole_axis == dim:
        raise Barrier(f"{node.op} on axis {dim}")
    part_axis = whole_axis - (1 if whole_axis > dim else 0)
    return [(whole, whole_axis, idx)] + [(part, part_axis, idx) for part in parts]


def roll(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """roll moves entries along `dims` (barriers; all axes when dims is empty); other axes map 1:1."""
    rank = len(shape(node, X))
    dims = _arg(node, "dims") or list(range(rank))
    if axis in [d % rank for d in dims]:
        raise Barrier(f"{node.op} shifts axis {axis}")
    return [(X, axis, idx), (OUT, axis, idx)]


def pad(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """pad / constant_pad_nd: `pad` pairs start at the last axis; an axis padded by (0, 0) maps 1:1."""
    if port not in (X, OUT):
        raise Barrier(f"{node.op} value")
    widths = list(_arg(node, "pad"))
    pair = 2 * (len(shape(node, X)) - 1 - axis)
    if pair < len(widths) and (widths[pair] or widths[pair + 1]):
        raise Barrier(f"{node.op} pads axis {axis}")
    return [(X, axis, idx), (OUT, axis, idx)]


def _einsum_letters(node: Node) -> list[str]:
    """Per port (inputs, then output) its letters, one per axis; `...` becomes digits aligned right."""
    equation = _arg(node, "equation").replace(" ", "")
    inputs, arrow, output = equation.partition("->")
    terms = inputs.split(",")
    if not arrow:
        letters = [c for c in inputs if c.isalpha()]
        output = ("..." if "..." in inputs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    ranks = [len(v.type.shape) for v in node.inputs] + [len(shape(node, OUT))]
    expanded = []
    for term, rank in zip(terms + [output], ranks):
        width = rank - len(term.replace("...", ""))
        expanded.append(term.replace("...", "".join(str(d) for d in reversed(range(width)))))  # aligned right
    if any(len(term) != len(set(term)) for term in expanded):
        raise Barrier("einsum takes a diagonal")
    return expanded


def einsum(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """einsum: an index letter couples every axis it labels (output letters and contracted ones
    alike); size-1 axes broadcast and do not couple."""
    letters = _einsum_letters(node)
    ports = [("in", i) for i in range(len(node.inputs))] + [OUT]
    letter = letters[ports.index(port)][axis]
    size = shape(node, port)[axis]
    links = []
    for other, term in zip(ports, letters):
        if letter in term and shape(node, other)[term.index(letter)] == size:
            links.append((other, term.index(letter), idx))
    return links


def index_tensor(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """x[..., index, ...] (aten.index.Tensor): indexed axes are barriers, the others map 1:1 around
    the index result's axes (adjacent indexed axes only)."""
    marks = _arg(node, "indices")
    indexed = [i for i, mark in enumerate(marks) if mark]
    if port not in (X, OUT) or not indexed or indexed != list(range(indexed[0], indexed[-1] + 1)):
        raise Barrier(f"{node.op} index tensors")
    rank, out_rank = len(shape(node, X)), len(shape(node, OUT))
    shift = out_rank - rank  # index result axes replace the indexed ones
    before, after_out = indexed[0], indexed[-1] + 1 + shift
    if port == X:
        if axis in indexed:
            raise Barrier(f"{node.op} indexes axis {axis}")
        out_axis = axis if axis < before else axis + shift
        return [(X, axis, idx), (OUT, out_axis, idx)]
    if before <= axis < after_out:
        raise Barrier(f"{node.op} index result axis {axis}")
    return [(X, axis if axis < before else axis - shift, idx), (OUT, axis, idx)]


# ---- reshapes: view, reshape, flatten, unflatten, squeeze, unsqueeze -------------------------

def reshape(node: Node, port: Port, axis: int, idx: torch.Tensor) -> list[Link]:
    """Reshapes merge and split axes. A unit must be a slab of exactly one axis on the other side
    (channels of a flatten, whole heads of C -> (H, D)); otherwise units are merged until it is."""
    if port not in (X, OUT):
        return []
    other = OUT if port == X else X
    src, dst = shape(node, port), shape(node, other)
    run = _run(src, dst, axis)
    if run is None:
        raise Barrier(f"{node.op} folds a symbolic dim into axis {axis}")
    s0, s1, d0, d1 = run
    src_run, dst_run = list(src[s0:s1]), list(dst[d0:d1])
    total = math.prod(src_run)
    grid = torch.arange(total).reshape(src_run).movedim(axis - s0, 0)
    flat = grid[idx].reshape(idx.shape[0], -1)
    strides = [math.prod(dst_run[j + 1:]) for j in range(len(dst_run))]
    candidates = []
    for j, size in enumerate(dst_run):
        if size == 1:
            continue
        coords = flat // strides[j] % size
        slab = total // size
        if all(row.unique().numel() * slab == flat.shape[1] for row in coords):
            return [(port, axis, idx), (other, d0 + j, torch.stack([row.unique() for row in coords]))]
        labels = _components(coords)
        if labels is not None and _slabs_after_merge(coords, labels, slab, flat.shape[1]):
            candidates.append(labels)
    if not candidates:
        raise Barrier(f"{node.op} scatters units of axis {axis}")
    raise Merge(candidates, "heads")


def _slabs_after_merge(coords: torch.Tensor, labels: torch.Tensor, slab: int, per_unit: int) -> bool:
    for label in labels.unique():
        rows = coords[labels == label]
        if rows.unique().numel() * slab != per_unit * rows.shape[0]:
            return False
    return True


def _run(src: tuple, dst: tuple, axis: int) -> tuple[int, int, int, int] | None:
    """The smallest src[s0:s1] / dst[d0:d1] with equal products that holds src axis `axis`."""
    if not all(isinstance(d, int) for d in (*src, *dst)):
        return _symbolic_run(src, dst, axis)
    i = j = 0
    while i < len(src) or j < len(dst):
        s0, d0 = i, j
        a = b = 1
        if i < len(src):
            a, i = a * src[i], i + 1
        if j < len(dst):
            b, j = b * dst[j], j + 1
        while a != b and (i < len(src) or j < len(dst)):
            if (a < b and i < len(src)) or j >= len(dst):
                a, i = a * src[i], i + 1
            else:
                b, j = b * dst[j], j + 1
        if s0 <= axis < i:
            return (s0, i, d0, j) if a == b else None
    return None


def _symbolic_run(src: tuple, dst: tuple, axis: int) -> tuple[int, int, int, int] | None:
    """Symbolic dims must be matched one-to-one, in order, and split the shapes into static parts."""
    src_sym = [i for i, d in enumerate(src) if not isinstance(d, int)]
    dst_sym = [j for j, d in enumerate(dst) if not isinstance(d, int)]
    if [src[i] for i in src_sym] != [dst[j] for j in dst_sym] or axis in src_sym:
        return None
    bounds = list(zip([-1, *src_sym], [*src_sym, len(src)], [-1, *dst_sym], [*dst_sym, len(dst)]))
    for s_lo, s_hi, d_lo, d_hi in bounds:
        if s_lo < axis < s_hi:
            run = _run(src[s_lo + 1:s_hi], dst[d_lo + 1:d_hi], axis - s_lo - 1)
            return None if run is None else (run[0] + s_lo + 1, run[1] + s_lo + 1, run[2] + d_lo + 1, run[3] + d_lo + 1)
    return None


# ---- axis pairs: each expert's own hidden units (carve.moe) -------------------------------------

def axis_size(shape: tuple, axis: Axis) -> Any:
    """How many indices `axis` has (an axis pair: slices times the inner size)."""
    if isinstance(axis, int):
        return shape[axis]
    outer, inner = axis
    return shape[outer] * shape[inner]


def resized(shape: tuple, axis: Axis, count: int) -> tuple:
    """`shape` once `count` indices of `axis` are kept (an axis pair: count / slices per slice)."""
    sizes = list(shape)
    if isinstance(axis, int):
        sizes[axis] = count
    else:
        sizes[axis[1]] = count // shape[axis[0]]
    return tuple(sizes)


def _slices_first(tensor: torch.Tensor, axis: tuple[int, int]) -> torch.Tensor:
    return tensor.movedim(axis, (0, 1))


def axis_sums(tensor: torch.Tensor, axis: Axis) -> torch.Tensor:
    """Per index of `axis`, the sum over every other axis (1-D)."""
    front = tensor.movedim(axis, 0) if isinstance(axis, int) else _slices_first(tensor, axis).flatten(0, 1)
    return front.sum(dim=list(range(1, front.dim()))) if front.dim() > 1 else front


def take(tensor: torch.Tensor, axis: Axis, indices: torch.Tensor) -> torch.Tensor:
    """`tensor` with only `indices` of `axis` (an axis pair: each slice keeps its own, as many as the others)."""
    if isinstance(axis, int):
        return tensor.index_select(axis, indices)
    slices, size = tensor.shape[axis[0]], tensor.shape[axis[1]]
    rows = indices.sort().values.view(slices, -1) if indices.numel() % slices == 0 else None
    if rows is None or not bool((rows // size == torch.arange(slices).view(-1, 1)).all()):
        raise ValueError(f"axis pair {axis}: every slice must keep as many indices as the others")
    front = _slices_first(tensor, axis)
    return front[torch.arange(slices).view(-1, 1), rows % size].movedim((0, 1), axis)


def fill(tensor: torch.Tensor, axis: Axis, indices: torch.Tensor, value: float) -> torch.Tensor:
    """A copy of `tensor` with `indices` of `axis` set to `value`."""
    if isinstance(axis, int):
        return tensor.index_fill(axis, indices, value)
    front = _slices_first(tensor, axis).clone(memory_format=torch.contiguous_format)
    front.view(-1, *front.shape[2:])[indices] = value
    return front.movedim((0, 1), axis)


def expert_units(node: Node, port: Port, axis: Axis, idx: torch.Tensor) -> list[Link]:
    """carve.moe: an expert's hidden unit h is row h of its up weight/bias (rows h and H + h, gate and up,
    when gated) and column h of its down weight, expert by expert: axis pairs (0, 1) and (0, 2), so each
    expert keeps its own channels. The model width, the expert axis (prune-experts) and the hidden axis
    of all experts at once are barriers."""
    roles = moe_weights(node)
    hidden_axes = {"up_w": (0, 1), "up_b": (0, 1), "down_w": (0, 2)}
    value = port_value(node, port)
    role = next((r for r, v in roles.items() if v is value), "output" if port[0] == "out" else "tokens")
    if axis != hidden_axes.get(role):
        raise Barrier(f"{role} axis {axis} (only each expert's own hidden units are pruned)")
    hidden, rows = roles["down_w"].type.shape[2], roles["up_w"].type.shape[1]
    units = idx if role == "down_w" else idx // rows * hidden + idx % rows % hidden
    keys = _distinct_rows(units)
    if keys is None:
        raise Barrier("carve.moe units of unequal hidden sizes")
    up = _expert_rows(keys, hidden, rows, bool(node.attrs.get("gated")))
    if role != "down_w" and not torch.equal(up.sort(dim=1).values, idx.sort(dim=1).values):
        labels = _components(units)  # a gate row without its up row: merge the pair
        raise Merge([labels], "channels") if labels is not None else Barrier("carve.moe gate/up rows")
    if not bool((keys // hidden == keys[:, :1] // hidden).all()):
        raise Barrier("carve.moe unit spans two experts")
    ports = {r: ("in", node.inputs.index(roles[r])) for r in hidden_axes if roles[r] is not None}
    return [(ports[r], hidden_axes[r], up if r != "down_w" else keys) for r in ports]


def _distinct_rows(keys: torch.Tensor) -> torch.Tensor | None:
    """Each row's distinct entries, sorted (vectorised: one row per hidden unit of every expert); None
    unless every row has as many."""
    rows = keys.sort(dim=1).values
    fresh = torch.cat([torch.ones_like(rows[:, :1], dtype=torch.bool), rows[:, 1:] != rows[:, :-1]], dim=1)
    counts = fresh.sum(dim=1)
    if bool((counts != counts[0]).any()):
        return None
    return rows[fresh].view(rows.shape[0], -1)


def _expert_rows(keys: torch.Tensor, hidden: int, rows: int, gated: bool) -> torch.Tensor:
    """Hidden units e * hidden + h -> their up rows e * rows + h (and + hidden: the up half when gated)."""
    first = keys // hidden * rows + keys % hidden
    return torch.cat([first, first + hidden], dim=1) if gated else first


def expert_sources(node: Node) -> tuple[tuple[int, Axis], ...]:
    """Each expert's hidden units start at the down weight's axis pair (0, 2)."""
    return (node.inputs.index(moe_weights(node)["down_w"]), (0, 2)),


# ---- attribute fixes after pruning -----------------------------------------------------------

def fix_sizes(name: str) -> Callable[[Node, list], dict]:
    """view/reshape/expand: the size list becomes the new output shape (-1 entries stay -1)."""
    def fix(node: Node, out_types: list) -> dict:
        old = node.attrs[name]
        new = [-1 if o == -1 else size_attr(d) for o, d in zip(old, out_types[0].shape)]
        return {**node.attrs, name: new}
    return fix


def fix_unflatten(node: Node, out_types: list) -> dict:
    dim = node.attrs["dim"] % len(node.inputs[0].type.shape)
    count = len(node.attrs["sizes"])
    return {**node.attrs, "sizes": list(out_types[0].shape[dim:dim + count])}


def fix_split(node: Node, out_types: list) -> dict:
    dim = _arg(node, "dim") % len(out_types[0].shape)
    sizes = [t.shape[dim] for t in out_types]
    if node.op == "aten.split_with_sizes":
        return {**node.attrs, "split_sizes": sizes}
    if all(s == sizes[0] for s in sizes[:-1]) and sizes[-1] <= sizes[0]:
        return {**node.attrs, "split_size": sizes[0]}
    return node.attrs  # no uniform split size: the type check after the rewrite reports the node


def fix_normalized(node: Node, out_types: list) -> dict:
    count = len(node.attrs["normalized_shape"])
    return {**node.attrs, "normalized_shape": list(out_types[0].shape[-count:])}


def fix_num_groups(node: Node, out_types: list) -> dict:
    """Whole groups were removed: the group size (old channels / groups) stays."""
    old, new = node.outputs[0].type.shape[1], out_types[0].shape[1]
    groups = _arg(node, "num_groups")
    return {**node.attrs, "num_groups": groups if groups == 1 else new // (old // groups)}


def fix_groups(node: Node, out_types: list) -> dict:
    weight, x = node.inputs[1].type.shape, node.inputs[0].type.shape
    channel = len(x) - (len(weight) - 2) - 1
    groups = x[channel] // weight[1]
    attrs = {k: v for k, v in node.attrs.items() if k != "groups"}
    return attrs if groups == 1 else {**attrs, "groups": groups}
