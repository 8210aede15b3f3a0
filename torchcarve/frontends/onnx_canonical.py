"""ONNX imports in aten terms: every `onnx.<OpType>` node with an exact aten equivalent becomes that op.

The passes (fuse, prune, low-rank, quantize) reason about aten ops, so an imported model is only
optimizable once `onnx.Conv` reads `aten.conv2d`. Quantized graphs become the carve.* ops the quantize
pass writes (QuantizeLinear -> carve.quantize, ...; rules in onnx_quant.py), so integer weights stay
integers and export the same. `CANONICAL` maps an ONNX op type ("<domain>.<OpType>" outside the default domain) to a rule
`(node, graph) -> Aten | Value | None`: the aten op that computes the same thing, a value the node
merely forwards (Identity, Dropout), or None to keep the ONNX op when its attributes have no exact
aten form (asymmetric pads, auto_pad SAME_*, dynamic shape operands, alpha != 1, ...).

A rewrite happens in place — op, inputs, attributes — so value names (the ONNX names, which
become the exported names again) survive; it is taken only when the aten op's inferred output
types equal the imported ones, which also rejects dtype changes (integer Div, ...).
"""
from __future__ import annotations

import math
from functools import partial

from ..errors import CarveError
from ..ir import Graph
from ..ir.infer import infer_types
from ..ir.node import Node
from ..ir.value import Value
from .onnx_canon_kit import Aten, Result, Rule, aten, operands, param_tensor, rank, same_operands, target_shape, window
from .onnx_quant import QUANT_CANONICAL


# ---- rules: elementwise ----------------------------------------------------------------------

def variadic(op: str, node: Node, graph: Graph) -> Result:
    # Sum(a, b) -> aten.add.Tensor(a, b), Max/Min alike;  Sum(a) -> a;  three or more operands stay
    if len(node.inputs) == 1:
        return node.inputs[0]
    return Aten(op, list(node.inputs), {}) if len(node.inputs) == 2 else None


def leaky_relu(node: Node, graph: Graph) -> Result:
    # LeakyRelu(x, alpha) -> aten.leaky_relu(x, negative_slope=alpha)
    return aten("aten.leaky_relu", self=node.inputs[0], negative_slope=node.attrs.get("alpha", 0.01))


def elu(node: Node, graph: Graph) -> Result:
    # Elu(x, alpha) -> aten.elu(x, alpha)
    return aten("aten.elu", self=node.inputs[0], alpha=node.attrs.get("alpha", 1.0))


def gelu(node: Node, graph: Graph) -> Result:
    # Gelu(x, approximate) -> aten.gelu(x, approximate)
    return aten("aten.gelu", self=node.inputs[0], approximate=node.attrs.get("approximate", "none"))


def hard_sigmoid(node: Node, graph: Graph) -> Result:
    # HardSigmoid(x, alpha=1/6, beta=1/2) -> aten.hardsigmoid(x)   (ONNX's default alpha is 0.2: no match)
    alpha, beta = node.attrs.get("alpha", 0.2), node.attrs.get("beta", 0.5)
    if not (math.isclose(alpha, 1 / 6, rel_tol=1e-6) and beta == 0.5):
        return None
    return aten("aten.hardsigmoid", self=node.inputs[0])


def clip(node: Node, graph: Graph) -> Result:
    # Clip(x, min, max) -> aten.clamp(x, min, max)   constant bounds only; no bounds -> x
    if len(node.inputs) != 1:
        return None
    low, high = node.attrs.get("min"), node.attrs.get("max")
    if low is None and high is None:
        return node.inputs[0]
    return aten("aten.clamp", self=node.inputs[0], min=low, max=high)


def forward_input(node: Node, graph: Graph) -> Result:
    # Identity(x) -> x, Dropout(x) -> x   (inference; Dropout's mask must be unused)
    if any(v.uses or v.is_graph_output for v in node.outputs[1:]):
        return None
    return node.inputs[0]


# ---- rules: convolution, normalisation, linear algebra -----------------------------------

CONV_OPS = {1: "aten.conv1d", 2: "aten.conv2d", 3: "aten.conv3d"}
CONV_TRANSPOSE_OPS = {1: "aten.conv_transpose1d", 2: "aten.conv_transpose2d.input"}


def conv(node: Node, graph: Graph) -> Result:
    # Conv(x, W, b) -> aten.convNd(x, W, b, stride, padding, dilation, groups)   symmetric pads only
    x, weight, bias = (operands(node) + [None])[:3]
    spatial = rank(x) - 2
    sliding = window(node, spatial)
    if spatial not in CONV_OPS or sliding is None or not _kernel_matches(node, weight):
        return None
    strides, pads, dilations = sliding
    return aten(CONV_OPS[spatial], input=x, weight=weight, bias=bias, stride=strides, padding=pads,
                dilation=dilations, groups=node.attrs.get("group", 1))


def conv_transpose(node: Node, graph: Graph) -> Result:
    # ConvTranspose(x, W, b) -> aten.conv_transposeNd(x, W, b, stride, padding, output_padding, groups, dilation)
    x, weight, bias = (operands(node) + [None])[:3]
    spatial = rank(x) - 2
    sliding = window(node, spatial)
    if spatial not in CONV_TRANSPOSE_OPS or sliding is None or "output_shape" in node.attrs:
        return None
    if not _kernel_matches(node, weight):
        return None
    strides, pads, dilations = sliding
    return aten(CONV_TRANSPOSE_OPS[spatial], input=x, weight=weight, bias=bias, stride=strides, padding=pads,
                output_padding=list(node.attrs.get("output_padding") or [0] * spatial),
                groups=node.attrs.get("group", 1), dilation=dilations)


def _kernel_matches(node: Node, weight: Value) -> bool:
    kernel = node.attrs.get("kernel_shape")
    return kernel is None or list(kernel) == list(weight.type.shape[2:])


def batch_norm(node: Node, graph: Graph) -> Result:
    # BatchNormalization(x, s, b, mean, var) -> aten.batch_norm(..., training=False)   inference form only
    if len(node.outputs) != 1 or node.attrs.get("training_mode", 0):
        return None
    x, scale, bias, mean, var = node.inputs
    return aten("aten.batch_norm", input=x, weight=scale, bias=bias, running_mean=mean, running_var=var,
                training=False, momentum=0.1, eps=node.attrs.get("epsilon", 1e-5), cudnn_enabled=False)


def layer_norm(node: Node, graph: Graph) -> Result:
    # LayerNormalization(x, s, b, axis) -> aten.layer_norm(x, x.shape[axis:], s, b, eps)   no mean/inv-std outputs
    x, scale, bias = (operands(node) + [None])[:3]
    normalized = list(x.type.shape[node.attrs.get("axis", -1) % rank(x):])
    if len(node.outputs) != 1 or not all(isinstance(d, int) for d in normalized):
        return None
    return aten("aten.layer_norm", input=x, normalized_shape=normalized, weight=scale, bias=bias,
                eps=node.attrs.get("epsilon", 1e-5))


def gemm(node: Node, graph: Graph) -> Result:
    # Gemm(A, B, C, transB=1) -> aten.linear(A, B, C);  transB=0 with a param B -> aten.linear(A, B^T, C)
    a, b, c = (operands(node) + [None])[:3]
    attrs = node.attrs
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or (c is not None and attrs.get("beta", 1.0) != 1.0):
        return None
    if c is not None and c.type.shape != node.output.type.shape[-1:]:
        return None
    weight = b if attrs.get("transB", 0) else _transposed_param(b, graph)
    if weight is None:
        return None
    return aten("aten.linear", input=a, weight=weight, bias=c)


def _transposed_param(value: Value, graph: Graph) -> Value | None:
    tensor = param_tensor(value, graph)
    if tensor is None or tensor.dim() != 2:
        return None
    name = graph.params.unique_name(f"{value.producer.attrs['name']}.T")
    return graph.add_param(name, tensor.t().contiguous())


def gather(node: Node, graph: Graph) -> Result:
    # Gather(W, idx, axis=0) -> aten.embedding(W, idx)   W a 2-D param, integer indices
    data, indices = node.inputs
    if node.attrs.get("axis", 0) != 0 or param_tensor(data, graph) is None or rank(data) != 2:
        return None
    if indices.type.dtype not in ("i64", "i32"):
        return None
    return aten("aten.embedding", weight=data, indices=indices)


# ---- rules: pooling and reductions -----------------------------------------------------------

MAX_POOL_OPS = {1: "aten.max_pool1d", 2: "aten.max_pool2d"}
AVG_POOL_OPS = {1: "aten.avg_pool1d", 2: "aten.avg_pool2d"}
REDUCE_OPS = {"ReduceMean": "aten.mean.dim", "ReduceSum": "aten.sum.dim_IntList", "ReduceMax": "aten.amax"}


def max_pool(node: Node, graph: Graph) -> Result:
    # MaxPool(x) -> aten.max_poolNd(x, kernel, stride, padding, dilation, ceil_mode)   no indices output
    x = node.inputs[0]
    spatial = rank(x) - 2
    sliding = window(node, spatial)
    if spatial not in MAX_POOL_OPS or sliding is None or len(node.outputs) != 1 or node.attrs.get("storage_order", 0):
        return None
    kernel = list(node.attrs["kernel_shape"])
    ceil = ceil_mode(node, x, kernel, sliding)
    if ceil is None:
        return None
    strides, pads, dilations = sliding
    return aten(MAX_POOL_OPS[spatial], self=x, kernel_size=kernel, stride=strides, padding=pads, dilation=dilations,
                ceil_mode=ceil)


def avg_pool(node: Node, graph: Graph) -> Result:
    # AveragePool(x) -> aten.avg_poolNd(x, kernel, stride, padding, ceil_mode, count_include_pad)
    x = node.inputs[0]
    spatial = rank(x) - 2
    sliding = window(node, spatial)
    if spatial not in AVG_POOL_OPS or sliding is None or any(d != 1 for d in sliding[2]):
        return None
    kernel = list(node.attrs["kernel_shape"])
    ceil = ceil_mode(node, x, kernel, sliding)
    if ceil is None:
        return None
    strides, pads, _ = sliding
    return aten(AVG_POOL_OPS[spatial], self=x, kernel_size=kernel, stride=strides, padding=pads, ceil_mode=ceil,
                count_include_pad=bool(node.attrs.get("count_include_pad", 0)))


def ceil_mode(node: Node, x: Value, kernel: list[int], sliding: tuple[list[int], ...]) -> bool | None:
    """The aten pool's ceil_mode: False where rounding up adds no window, True where every added window
    starts inside the input (ONNX and torch agree), None where one starts in the right padding (torch,
    and ONNX only from opset 19, drop it)."""
    if not node.attrs.get("ceil_mode", 0):
        return False
    strides, pads, dilations = sliding
    extra = False
    for size, k, s, p, d in zip(x.type.shape[2:], kernel, strides, pads, dilations):
        if not isinstance(size, int):
            return None
        span = size + 2 * p - d * (k - 1) - 1
        if span % s == 0:
            continue
        if (span // s + 1) * s >= size + p:
            return None
        extra = True
    return extra


def global_pool(op: str, node: Node, graph: Graph) -> Result:
    # GlobalAveragePool(x) -> aten.adaptive_avg_pool2d(x, [1, 1]) (4-D) or aten.mean.dim(x, [2..], keepdim)
    # GlobalMaxPool(x) -> aten.amax(x, [2..], keepdim)
    x = node.inputs[0]
    if op == "aten.mean.dim" and rank(x) == 4:
        return aten("aten.adaptive_avg_pool2d", self=x, output_size=[1, 1])
    return aten(op, self=x, dim=list(range(2, rank(x))), keepdim=True)


def reduce(op: str, node: Node, graph: Graph) -> Result:
    # ReduceMean(x, axes, keepdims) -> aten.mean.dim(x, axes, keepdim)   (ReduceSum, ReduceMax alike)
    x = node.inputs[0]
    axes = node.attrs.get("axes")
    if len(node.inputs) != 1:
        return None
    if not axes and node.attrs.get("noop_with_empty_axes", 0):
        return x
    dims = sorted({a % rank(x) for a in axes}) if axes else list(range(rank(x)))
    return aten(op, self=x, dim=dims, keepdim=bool(node.attrs.get("keepdims", 1)))


def softmax(op: str, node: Node, graph: Graph) -> Result:
    # Softmax(x, axis) -> aten.softmax.int(x, axis)   (the importer gave older opsets opset-13 axis semantics)
    return aten(op, self=node.inputs[0], dim=node.attrs.get("axis", -1))


# ---- rules: shapes ---------------------------------------------------------------------------

def reshape(node: Node, graph: Graph) -> Result:
    # Reshape(x, shape) -> aten.reshape(x, shape)   constant shape; ONNX's 0 copies the input dim
    x = node.inputs[0]
    shape = node.attrs.get("shape")
    if len(node.inputs) != 1 or shape is None:
        return None
    if not node.attrs.get("allowzero", 0):
        shape = [x.type.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    sizes = target_shape(tuple(shape))
    sizes = sizes if sizes is not None else target_shape(node.output.type.shape)
    return None if sizes is None else aten("aten.reshape", self=x, shape=sizes)


def flatten(node: Node, graph: Graph) -> Result:
    # Flatten(x, axis=1) -> aten.flatten.using_ints(x, 1);  other axes -> aten.reshape(x, [prod(:axis), prod(axis:)])
    x = node.inputs[0]
    axis = node.attrs.get("axis", 1)
    axis = axis + rank(x) if axis < 0 else axis
    if axis == 1 and rank(x) >= 2:
        return aten("aten.flatten.using_ints", self=x, start_dim=1)
    sizes = target_shape((_product(x.type.shape[:axis]), _product(x.type.shape[axis:])))
    return None if sizes is None else aten("aten.reshape", self=x, shape=sizes)


def _product(dims: tuple[Dim, ...]) -> Dim:
    """The product of dims; a symbol (standing for "unknown") when any dim is symbolic."""
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else "?"


def transpose(node: Node, graph: Graph) -> Result:
    # Transpose(x, perm) -> aten.permute(x, perm)   (no perm: reversed dims)
    x = node.inputs[0]
    perm = node.attrs.get("perm") or list(reversed(range(rank(x))))
    return aten("aten.permute", self=x, dims=list(perm))


def unsqueeze(node: Node, graph: Graph) -> Result:
    # Unsqueeze(x, [a]) -> aten.unsqueeze(x, a);  several axes -> aten.reshape to the result
    axes = node.attrs.get("axes")
    if len(node.inputs) != 1 or axes is None:
        return None
    if len(axes) != 1:
        return _reshape_to_output(node)
    return aten("aten.unsqueeze", self=node.inputs[0], dim=axes[0] % rank(node.output))


def squeeze(node: Node, graph: Graph) -> Result:
    # Squeeze(x, axes) -> aten.squeeze.dims(x, axes);  no axes -> aten.squeeze(x)
    x = node.inputs[0]
    axes = node.attrs.get("axes")
    if len(node.inputs) != 1:
        return None
    if axes is None:
        return aten("aten.squeeze", self=x)
    return aten("aten.squeeze.dims", self=x, dim=[a % rank(x) for a in axes])


def _reshape_to_output(node: Node) -> Result:
    sizes = target_shape(node.output.type.shape)
    return None if sizes is None else aten("aten.reshape", self=node.inputs[0], shape=sizes)


def concat(node: Node, graph: Graph) -> Result:
    # Concat(xs, axis) -> aten.cat(xs, axis)
    return aten("aten.cat", tensors=list(node.inputs), dim=node.attrs["axis"])


def split(node: Node, graph: Graph) -> Result:
    # Split(x, sizes, axis) -> aten.split_with_sizes(x, sizes, axis)   constant sizes (or an even split of a static dim)
    x = node.inputs[0]
    axis = node.attrs.get("axis", 0) % rank(x)
    sizes = node.attrs.get("split")
    if len(node.inputs) != 1:
        return None
    if sizes is None:
        sizes = _even_split(x.type.shape[axis], len(node.outputs))
    return None if sizes is None else aten("aten.split_with_sizes", self=x, split_sizes=list(sizes), dim=axis)


def _even_split(size: Dim, parts: int) -> list[int] | None:
    if not isinstance(size, int):
        return None
    chunk = -(-size // parts)
    return [min(chunk, size - chunk * i) for i in range(parts)]


# ---- the table -----------------------------------------------------------------------------
ELEMENTWISE = {
    "Sub": "aten.sub.Tensor", "Div": "aten.div.Tensor", "Pow": "aten.pow.Tensor_Tensor",
    "Relu": "aten.relu", "Sigmoid": "aten.sigmoid", "Tanh": "aten.tanh", "Erf": "aten.erf", "Sqrt": "aten.sqrt",
    "Exp": "aten.exp", "Log": "aten.log", "Neg": "aten.neg", "Abs": "aten.abs", "Reciprocal": "aten.reciprocal",
    "Sin": "aten.sin", "Cos": "aten.cos", "Floor": "aten.floor", "Ceil": "aten.ceil",
    "HardSwish": "aten.hardswish", "Softplus": "aten.softplus",
}

VARIADIC = {"Sum": "aten.add.Tensor", "Max": "aten.maximum", "Min": "aten.minimum"}

CANONICAL: dict[str, Rule] = {
    **{op: partial(same_operands, target) for op, target in ELEMENTWISE.items()},
    **{op: partial(reduce, target) for op, target in REDUCE_OPS.items()},
    **{op: partial(variadic, target) for op, target in VARIADIC.items()},
    "LeakyRelu": leaky_relu, "Elu": elu, "Gelu": gelu, "HardSigmoid": hard_sigmoid, "Clip": clip,
    "Identity": forward_input, "Dropout": forward_input,
    "Conv": conv, "ConvTranspose": conv_transpose, "BatchNormalization": batch_norm,
    "LayerNormalization": layer_norm, "Gemm": gemm, "Gather": gather,
    "MaxPool": max_pool, "AveragePool": avg_pool,
    "GlobalAveragePool": partial(global_pool, "aten.mean.dim"), "GlobalMaxPool": partial(global_pool, "aten.amax"),
    "Softmax": partial(softmax, "aten.softmax.int"), "LogSoftmax": partial(softmax, "aten.log_softmax.int"),
    "Reshape": reshape, "Flatten": flatten, "Transpose": transpose, "Unsqueeze": unsqueeze, "Squeeze": squeeze,
    "Concat": concat, "Split": split,
    **QUANT_CANONICAL,
}


# ---- the driver ----------------------------------------------------------------------------

def canonicalize(graph: Graph) -> int:
    """Rewrite every onnx.* node that has an exact aten equivalent (in place); returns how many changed."""
    unused_before = {n for n in graph.nodes if not n.has_uses}
    changed = 0
    for node in graph.nodes:
        rule = rule_for(node)
        if rule is not None:
            changed += apply(graph, node, _guarded(rule, node, graph))
    _drop_orphans(graph, unused_before)
    return changed


def _guarded(rule: Rule, node: Node, graph: Graph) -> Result:
    """The rule's result; an exception inside it (attributes no rule expects) is a CarveError naming the node."""
    try:
        return rule(node, graph)
    except CarveError:
        raise
    except Exception as e:
        raise CarveError(f"canonicalizing {node.op} node '{node.outputs[0].name}' failed: {type(e).__name__}: {e}",
                         hint="the node's attributes do not fit the op; rerun with canonicalize=False to keep it") from e


def rule_for(node: Node) -> Rule | None:
    """The rule of an ONNX node: by op type in the default domain, by "<domain>.<OpType>" in another."""
    if not node.op.startswith("onnx."):
        return None
    op_type = node.op.removeprefix("onnx.")
    domain = node.attrs.get("domain")
    return CANONICAL.get(f"{domain}.{op_type}" if domain else op_type)


def apply(graph: Graph, node: Node, result: Result) -> bool:
    """Carry out a rule's result; False (the node unchanged) when it cannot be taken exactly."""
    if result is None:
        return False
    if isinstance(result, Value):
        return _forward(graph, node, result)
    return _retarget(node, result)


def _forward(graph: Graph, node: Node, value: Value) -> bool:
    """Users of the node read `value` instead; graph outputs keep their node (and so their name)."""
    if node.outputs[0].is_graph_output:
        return False
    node.outputs[0].replace_all_uses_with(value)
    graph.erase(node)
    return True


def _retarget(node: Node, new: Aten) -> bool:
    """Turn `node` into `new` when the aten op infers exactly the node's output types."""
    try:
        types = infer_types(new.op, new.attrs, [v.type for v in new.inputs])
    except CarveError:
        return False
    if types != [v.type for v in node.outputs]:
        return False
    node.op, node.attrs = new.op, dict(new.attrs)
    node.set_inputs(new.inputs)
    return True


def _drop_orphans(graph: Graph, unused_before: set[Node]) -> None:
    """Nodes that lost their last use here (Gemm's B once transposed, the dequantize and transpose a
    carve.weight_only_linear took over) go, and their params' tensors with them."""
    params = {n.attrs["name"] for n in graph.param_nodes()}
    graph.erase_unused([n for n in graph.nodes if n not in unused_before])
    for name in params - {n.attrs["name"] for n in graph.param_nodes()}:
        del graph.params[name]


__all__ = ["CANONICAL", "Aten", "aten", "canonicalize"]
