"""ONNX lowering rules: functions(ctx, node) that emit ONNX nodes for one IR node. The op catalog
(the family modules of torchcarve.opset) says which rule lowers which op; `forms(...)` gives an op
one rule per opset where the forms differ.

Rules read a node's arguments by schema name (defaults applied) through `arguments`, cast
inputs where aten promotes types and ONNX does not, and name their outputs after the IR values.
`onnx.*` ops are written back as they came in (`lower_onnx_op`), their static operands
(attributes in the IR) turned back into inputs where the target opset wants inputs.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import onnx
import torch

from onnx import helper

from ..errors import OpsetError, UnsupportedOpError
from ..ir.node import Node
from ..ir.ops.aten import arguments
from ..ir.ops.onnx_ops import INTERNAL_ATTRS, OPSET_RANGE, STATIC_INPUTS
from ..ir.types import DTYPE_NAMES, DTYPES, attr_symbols
from .onnx_proto import ONNX_DTYPES, subgraph_defines, tensor_proto

if TYPE_CHECKING:
    from ..backends.onnx import LoweringContext

Rule = Callable[["LoweringContext", Node], None]
INT64_MAX = 2**63 - 1
BASE = OPSET_RANGE.start  # a form that works in every opset the backend writes


@dataclass(frozen=True)
class Versioned:
    """One op's lowering in each opset's form: (first opset, rule) pairs; the newest form the target opset
    has is used (a native op from the opset that introduced it, a decomposition before)."""

    forms: tuple[tuple[int, Rule], ...]

    def __call__(self, ctx: "LoweringContext", node: Node) -> None:
        usable = [form for form in self.forms if form[0] <= ctx.opset]
        if not usable:
            first = min(since for since, _ in self.forms)
            raise OpsetError(f"{node!r} ({node.op}) lowers to ONNX from opset {first}; opset {ctx.opset} was asked",
                             first, hint=f"export with opset {first} or newer (carve export --opset {first})")
        max(usable, key=lambda form: form[0])[1](ctx, node)


def forms(*pairs: tuple[int, Rule]) -> Versioned:
    return Versioned(tuple(pairs))


def _out(ctx: "LoweringContext", node: Node, index: int = 0) -> list[str]:
    return [ctx.output_names(node)[index]]


def _axis(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


# ---- generic shapes of rule ---------------------------------------------------------------

def unary(op_type: str, **attrs: Any) -> Rule:
    """x -> op_type(x), computed in the output dtype."""
    def rule(ctx: "LoweringContext", node: Node) -> None:
        out = node.outputs[0].type.dtype
        ctx.emit(op_type, [ctx.input(node.inputs[0], out)], _out(ctx, node), **attrs)
    return rule


def binary(op_type: str, second: str = "other", compare: bool = False) -> Rule:
    """self (op) other, with tensor or scalar `other`; inputs cast to the promoted type."""
    def rule(ctx: "LoweringContext", node: Node) -> None:
        args = arguments(node)
        first, other = args["self"], args[second]
        dtype = _common_dtype(node, args, second) if compare else node.outputs[0].type.dtype
        lhs = _operand(ctx, first, dtype)
        rhs = _operand(ctx, other, dtype)
        alpha = args.get("alpha", 1)
        if alpha not in (None, 1):
            rhs = ctx.emit("Mul", [rhs, ctx.scalar(alpha, dtype)])[0]
        ctx.emit(op_type, [lhs, rhs], _out(ctx, node))
    return rule


def _common_dtype(node: Node, args: dict, second: str) -> str:
    dtypes = [v.type.torch_dtype for v in node.inputs]
    if not hasattr(args[second], "type"):
        dtypes.append(torch.tensor(args[second]).dtype if len(dtypes) == 0 else dtypes[0])
    promoted = dtypes[0]
    for dtype in dtypes[1:]:
        promoted = torch.promote_types(promoted, dtype)
    return DTYPE_NAMES[promoted]


def _operand(ctx: "LoweringContext", value: Any, dtype: str) -> str:
    if hasattr(value, "type"):
        return ctx.input(value, dtype)
    return ctx.scalar(value, dtype)


def negated(rule: Rule) -> Rule:
    """not rule(...): `ne` is Not(Equal)."""
    def wrapped(ctx: "LoweringContext", node: Node) -> None:
        name = ctx.output_names(node)[0]
        ctx.names[node.outputs[0]] = ctx.fresh(f"{name}_eq")
        rule(ctx, node)
        ctx.emit("Not", [ctx.names[node.outputs[0]]], [name])
        ctx.names[node.outputs[0]] = name
    return wrapped


def identity(ctx: "LoweringContext", node: Node) -> None:
    """Aliases and dtype conversions: no node, or a Cast."""
    source = node.inputs[0]
    target = node.outputs[0].type.dtype
    if source.type.dtype == target:
        ctx.alias(node.outputs[0], ctx.name(source))
        return
    ctx.emit("Cast", [ctx.name(source)], _out(ctx, node), to=_onnx_dtype(target))


def _onnx_dtype(dtype: str) -> int:
    return ONNX_DTYPES[dtype]


def reshape(ctx: "LoweringContext", node: Node) -> None:
    """Every view-like op: Reshape to the output type (0 copies a symbolic dim in place, -1 infers one;
    with more unknown dims the shape is computed from the input sizes at run time)."""
    source, target = node.inputs[0], node.outputs[0].type
    shape = [d if isinstance(d, int) else (0 if i < source.type.rank and source.type.shape[i] == d else -1)
             for i, d in enumerate(target.shape)]
    sizes = ctx.ints(shape, "shape") if shape.count(-1) <= 1 else ctx.sizes(list(target.shape))
    ctx.emit("Reshape", [ctx.name(source), sizes], _out(ctx, node))


# ---- convolution, linear algebra ----------------------------------------------------------

def _spatial(values: list[int], count: int) -> list[int]:
    return list(values) * count if len(values) == 1 else list(values)


def conv(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    weight = args["weight"]
    count = weight.type.rank - 2
    padding = args["padding"]
    inputs = [ctx.name(args["input"]), ctx.name(weight)] + ([ctx.name(args["bias"])] if args["bias"] is not None else [])
    attrs: dict[str, Any] = {"strides": _spatial(args["stride"], count), "dilations": _spatial(args["dilation"], count),
                             "group": args["groups"], "kernel_shape": list(weight.type.shape[2:])}
    if isinstance(padding, str):
        attrs["auto_pad"] = "SAME_UPPER" if padding == "same" else "VALID"
    else:
        attrs["pads"] = _spatial(padding, count) * 2
    if args.get("transposed"):
        attrs["output_padding"] = _spatial(args["output_padding"], count)
        ctx.emit("ConvTranspose", inputs, _out(ctx, node), **attrs)
        return
    ctx.emit("Conv", inputs, _out(ctx, node), **attrs)


def conv_transpose(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    weight = args["weight"]
    count = weight.type.rank - 2
    inputs = [ctx.name(args["input"]), ctx.name(weight)] + ([ctx.name(args["bias"])] if args["bias"] is not None else [])
    ctx.emit("ConvTranspose", inputs, _out(ctx, node), strides=_spatial(args["stride"], count),
             pads=_spatial(args["padding"], count) * 2, output_padding=_spatial(args["output_padding"], count),
             dilations=_spatial(args["dilation"], count), group=args["groups"], kernel_shape=list(weight.type.shape[2:]))


def linear(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    x, weight, bias = args["input"], args["weight"], args["bias"]
    if x.type.rank == 2:
        inputs = [ctx.name(x), ctx.name(weight)] + ([ctx.name(bias)] if bias is not None else [])
        ctx.emit("Gemm", inputs, _out(ctx, node), transB=1)
        return
    weight_t = _transposed(ctx, weight)
    if bias is None:
        ctx.emit("MatMul", [ctx.name(x), weight_t], _out(ctx, node))
        return
    product = ctx.emit("MatMul", [ctx.name(x), weight_t])[0]
    ctx.emit("Add", [product, ctx.name(bias)], _out(ctx, node))


def _transposed(ctx: "LoweringContext", weight: Any) -> str:
    """W^T: a transposed initializer when W is constant (nothing left for ORT to fold), else a Transpose."""
    if weight in ctx.constants:
        base = weight.producer.attrs["name"] if weight.producer.op == "param" else weight.name
        return ctx.const(ctx.constants[weight].t().contiguous(), f"{base}.T")
    return ctx.emit("Transpose", [ctx.name(weight)], perm=[1, 0])[0]


def matmul(ctx: "LoweringContext", node: Node) -> None:
    ctx.emit("MatMul", [ctx.name(v) for v in node.inputs[:2]], _out(ctx, node))


def addmm(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    ctx.emit("Gemm", [ctx.name(args["mat1"]), ctx.name(args["mat2"]), ctx.name(args["self"])], _out(ctx, node),
             alpha=float(args["alpha"]), beta=float(args["beta"]))


def _static(dim: Any, node: Node) -> int:
    if not isinstance(dim, int):
        raise UnsupportedOpError(f"{node!r}: needs a static size where the graph has '{dim}'")
    return dim


def _static_shape(value: Any, node: Node) -> list[int]:
    return [_static(d, node) for d in value.type.shape]


# ---- normalization, pooling ---------------------------------------------------------------

def _param_or(ctx: "LoweringContext", value: Any, fill: float, shape: list[int], dtype: str) -> str:
    if value is not None:
        return ctx.name(value)
    return ctx.const(torch.full(shape, fill, dtype=torch.float32).to(torch.tensor(0, dtype=_torch_dtype(dtype)).dtype))


def _torch_dtype(dtype: str) -> torch.dtype:
    return DTYPES[dtype]


def batch_norm(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    x = args["input"]
    channels = [x.type.shape[1]]
    dtype = x.type.dtype
    inputs = [ctx.name(x), _param_or(ctx, args["weight"], 1.0, channels, dtype),
              _param_or(ctx, args["bias"], 0.0, channels, dtype), ctx.name(args["running_mean"]),
              ctx.name(args["running_var"])]
    ctx.emit("BatchNormalization", inputs, _out(ctx, node), epsilon=float(args["eps"]))


def layer_norm(ctx: "LoweringContext", node: Node) -> None:
    """LayerNormalization (opset 17)."""
    args = arguments(node)
    shape = list(args["normalized_shape"])
    dtype = args["input"].type.dtype
    inputs = [ctx.name(args["input"]), _param_or(ctx, args["weight"], 1.0, shape, dtype)]
    inputs += [ctx.name(args["bias"])] if args["bias"] is not None else []
    ctx.emit("LayerNormalization", inputs, _out(ctx, node), axis=-len(shape), epsilon=float(args["eps"]))


def decomposed_layer_norm(ctx: "LoweringContext", node: Node) -> None:
    """(x - mean) / sqrt(var + eps) over the normalized dims, then the affine (before opset 17)."""
    args = arguments(node)
    axes = list(range(-len(args["normalized_shape"]), 0))
    normed = _normalize(ctx, ctx.name(args["input"]), axes, float(args["eps"]), args["input"].type.dtype)
    _affine(ctx, node, normed, args["weight"], args["bias"], None)


def group_norm_op(ctx: "LoweringContext", node: Node) -> None:
    """GroupNormalization with per-channel scale and bias (opset 21)."""
    args = arguments(node)
    x = args["input"]
    channels, dtype = [x.type.shape[1]], x.type.dtype
    inputs = [ctx.name(x), _param_or(ctx, args["weight"], 1.0, channels, dtype),
              _param_or(ctx, args["bias"], 0.0, channels, dtype)]
    ctx.emit("GroupNormalization", inputs, _out(ctx, node), num_groups=args["num_groups"], epsilon=float(args["eps"]))


def group_norm(ctx: "LoweringContext", node: Node) -> None:
    """(x - mean) / sqrt(var + eps) over [C/G, spatial] per group, then the per-channel affine."""
    args = arguments(node)
    x = args["input"]
    dtype = x.type.dtype
    grouped = ctx.emit("Reshape", [ctx.name(x), ctx.ints([0, args["num_groups"], -1])])[0]
    normed = _normalize(ctx, grouped, [2], float(args["eps"]), dtype)
    restored = ctx.emit("Reshape", [normed, ctx.emit("Shape", [ctx.name(x)])[0]])[0]
    channel_shape = [x.type.shape[1]] + [1] * (x.type.rank - 2)
    _affine(ctx, node, restored, args["weight"], args["bias"], channel_shape)


def rms_norm_op(ctx: "LoweringContext", node: Node) -> None:
    """RMSNormalization (opset 23)."""
    args = arguments(node)
    x, shape = args["input"], list(args["normalized_shape"])
    inputs = [ctx.name(x), _param_or(ctx, args["weight"], 1.0, shape, x.type.dtype)]
    ctx.emit("RMSNormalization", inputs, _out(ctx, node), axis=-len(shape), epsilon=float(_rms_eps(args)))


def _rms_eps(args: dict) -> float:
    return args["eps"] if args["eps"] is not None else torch.finfo(args["input"].type.torch_dtype).eps


def rms_norm(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    x = args["input"]
    dtype = x.type.dtype
    axes = list(range(-len(args["normalized_shape"]), 0))
    eps = _rms_eps(args)
    square = ctx.emit("Mul", [ctx.name(x), ctx.name(x)])[0]
    mean = ctx.emit("ReduceMean", [square, ctx.ints(axes)], keepdims=1)[0]
    root = ctx.emit("Sqrt", [ctx.emit("Add", [mean, ctx.scalar(float(eps), dtype)])[0]])[0]
    normed = ctx.emit("Div", [ctx.name(x), root])[0]
    _affine(ctx, node, normed, args["weight"], None, None)


def _normalize(ctx: "LoweringContext", x: str, axes: list[int], eps: float, dtype: str) -> str:
    mean = ctx.emit("ReduceMean", [x, ctx.ints(axes)], keepdims=1)[0]
    centered = ctx.emit("Sub", [x, mean])[0]
    var = ctx.emit("ReduceMean", [ctx.emit("Mul", [centered, centered])[0], ctx.ints(axes)], keepdims=1)[0]
    root = ctx.emit("Sqrt", [ctx.emit("Add", [var, ctx.scalar(eps, dtype)])[0]])[0]
    return ctx.emit("Div", [centered, root])[0]


def _affine(ctx: "LoweringContext", node: Node, x: str, weight: Any, bias: Any, shape: list[int] | None) -> None:
    steps = [("Mul", weight), ("Add", bias)]
    steps = [(op, v) for op, v in steps if v is not None]
    if not steps:
        ctx.emit("Identity", [x], _out(ctx, node))
        return
    for position, (op, value) in enumerate(steps):
        operand = ctx.name(value) if shape is None else ctx.emit("Reshape", [ctx.name(value), ctx.ints(shape)])[0]
        last = position == len(steps) - 1
        x = ctx.emit(op, [x, operand], _out(ctx, node) if last else 1)[0]


def max_pool(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    kernel = list(args["kernel_size"])
    count = node.inputs[0].type.rank - 2
    kernel = _spatial(kernel, count)
    ctx.emit("MaxPool", [ctx.name(args["self"])], _out(ctx, node), kernel_shape=kernel,
             strides=_spatial(args["stride"] or kernel, count), pads=_spatial(args["padding"], count) * 2,
             dilations=_spatial(args["dilation"], count), ceil_mode=int(args["ceil_mode"]))


def avg_pool(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    count = node.inputs[0].type.rank - 2
    kernel = _spatial(list(args["kernel_size"]), count)
    if args.get("divisor_override") is not None:
        raise UnsupportedOpError(f"{node!r}: avg_pool divisor_override has no ONNX form")
    ctx.emit("AveragePool", [ctx.name(args["self"])], _out(ctx, node), kernel_shape=kernel,
             strides=_spatial(args["stride"] or kernel, count), pads=_spatial(args["padding"], count) * 2,
             ceil_mode=int(args["ceil_mode"]), count_include_pad=int(args["count_include_pad"]))


def adaptive_pool(global_op: str, op: str) -> Rule:
    """Output size 1 -> the Global* op; sizes dividing the input -> a fixed-window pool."""
    def rule(ctx: "LoweringContext", node: Node) -> None:
        source, target = node.inputs[0].type, node.outputs[0].type
        spatial_in, spatial_out = source.shape[2:], target.shape[2:]
        if all(d == 1 for d in spatial_out):
            ctx.emit(global_op, [ctx.name(node.inputs[0])], _out(ctx, node))
            return
        if not all(isinstance(i, int) and i % o == 0 for i, o in zip(spatial_in, spatial_out)):
            raise UnsupportedOpError(f"{node!r}: adaptive pooling to {spatial_out} from {spatial_in} has no ONNX form")
        kernel = [i // o for i, o in zip(spatial_in, spatial_out)]
        ctx.emit(op, [ctx.name(node.inputs[0])], _out(ctx, node), kernel_shape=kernel, strides=kernel)
    return rule


def softmax(op_type: str) -> Rule:
    def rule(ctx: "LoweringContext", node: Node) -> None:
        args = arguments(node)
        out = node.outputs[0].type.dtype
        ctx.emit(op_type, [ctx.input(node.inputs[0], out)], _out(ctx, node), axis=args["dim"])
    return rule


# ---- activations --------------------------------------------------------------------------

def gelu(ctx: "LoweringContext", node: Node) -> None:
    """0.5 x (1 + erf(x / sqrt 2)), or the tanh approximation."""
    tanh = arguments(node)["approximate"] == "tanh"
    decomposed_gelu(ctx, ctx.name(node.inputs[0]), node.outputs[0].type.dtype, tanh, _out(ctx, node))


def decomposed_gelu(ctx: "LoweringContext", x: str, dtype: str, tanh: bool, out: list[str] | int = 1) -> str:
    """Gelu of the ONNX value `x` in Erf (or Tanh) arithmetic; returns the output name."""
    if tanh:
        cube = ctx.emit("Mul", [ctx.emit("Mul", [x, x])[0], x])[0]
        inner = ctx.emit("Add", [x, ctx.emit("Mul", [cube, ctx.scalar(0.044715, dtype)])[0]])[0]
        inner = ctx.emit("Tanh", [ctx.emit("Mul", [inner, ctx.scalar(math.sqrt(2 / math.pi), dtype)])[0]])[0]
    else:
        inner = ctx.emit("Erf", [ctx.emit("Div", [x, ctx.scalar(math.sqrt(2.0), dtype)])[0]])[0]
    half = ctx.emit("Mul", [x, ctx.scalar(0.5, dtype)])[0]
    return ctx.emit("Mul", [half, ctx.emit("Add", [inner, ctx.scalar(1.0, dtype)])[0]], out)[0]


def gelu_op(ctx: "LoweringContext", node: Node) -> None:
    """Gelu (opset 20)."""
    ctx.emit("Gelu", [ctx.name(node.inputs[0])], _out(ctx, node), approximate=arguments(node)["approximate"])


def mish(ctx: "LoweringContext", node: Node) -> None:
    """x tanh(softplus(x)) (before opset 18's Mish)."""
    x = ctx.input(node.inputs[0], node.outputs[0].type.dtype)
    ctx.emit("Mul", [x, ctx.emit("Tanh", [ctx.emit("Softplus", [x])[0]])[0]], _out(ctx, node))


def hardswish(ctx: "LoweringContext", node: Node) -> None:
    """x hardsigmoid(x) (before opset 14's HardSwish)."""
    x = ctx.input(node.inputs[0], node.outputs[0].type.dtype)
    ctx.emit("Mul", [x, ctx.emit("HardSigmoid", [x], alpha=1 / 6, beta=0.5)[0]], _out(ctx, node))


def silu(ctx: "LoweringContext", node: Node) -> None:
    x = ctx.name(node.inputs[0])
    ctx.emit("Mul", [x, ctx.emit("Sigmoid", [x])[0]], _out(ctx, node))


def rsqrt(ctx: "LoweringContext", node: Node) -> None:
    ctx.emit("Reciprocal", [ctx.emit("Sqrt", [ctx.input(node.inputs[0], node.outputs[0].type.dtype)])[0]],
             _out(ctx, node))


def clamp(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    dtype = node.outputs[0].type.dtype
    bounds = [args.get("min"), args.get("max")]
    names = [_operand(ctx, b, dtype) if b is not None else "" for b in bounds]
    while names and names[-1] == "":
        names.pop()
    ctx.emit("Clip", [ctx.input(node.inputs[0], dtype)] + names, _out(ctx, node))


def hardtanh(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    dtype = node.outputs[0].type.dtype
    ctx.emit("Clip", [ctx.name(node.inputs[0]), ctx.scalar(args["min_val"], dtype), ctx.scalar(args["max_val"], dtype)],
             _out(ctx, node))


def with_attrs(op_type: str, **mapping: str) -> Rule:
    """One input, ONNX attributes read from schema arguments (onnx name=schema name)."""
    def rule(ctx: "LoweringContext", node: Node) -> None:
        args = arguments(node)
        attrs = {k: float(args[v]) for k, v in mapping.items()}
        ctx.emit(op_type, [ctx.name(node.inputs[0])], _out(ctx, node), **attrs)
    return rule


# ---- shapes and indexing ------------------------------------------------------------------

def permute(ctx: "LoweringContext", node: Node) -> None:
    rank = node.inputs[0].type.rank
    ctx.emit("Transpose", [ctx.name(node.inputs[0])], _out(ctx, node),
             perm=[_axis(d, rank) for d in arguments(node)["dims"]])


def transpose(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    rank = node.inputs[0].type.rank
    perm = list(range(rank))
    if rank >= 2 or "dim0" in args:
        first, second = (_axis(args["dim0"], rank), _axis(args["dim1"], rank)) if "dim0" in args else (0, 1)
        perm[first], perm[second] = perm[second], perm[first]
    ctx.emit("Transpose", [ctx.name(node.inputs[0])], _out(ctx, node), perm=perm)


def unsqueeze(ctx: "LoweringContext", node: Node) -> None:
    dim = _axis(arguments(node)["dim"], node.outputs[0].type.rank)
    ctx.emit("Unsqueeze", [ctx.name(node.inputs[0]), ctx.ints([dim])], _out(ctx, node))


def squeeze(ctx: "LoweringContext", node: Node) -> None:
    """Only dims of size 1 go (torch leaves others); no such dim -> an alias."""
    args = arguments(node)
    shape = node.inputs[0].type.shape
    dims = args.get("dim", None)
    dims = range(len(shape)) if dims is None else ([dims] if isinstance(dims, int) else dims)
    axes = sorted({_axis(d, len(shape)) for d in dims if shape[_axis(d, len(shape))] == 1}) if shape else []
    if not axes:
        ctx.alias(node.outputs[0], ctx.name(node.inputs[0]))
        return
    ctx.emit("Squeeze", [ctx.name(node.inputs[0]), ctx.ints(axes)], _out(ctx, node))


def expand(ctx: "LoweringContext", node: Node) -> None:
    sizes = [1 if s == -1 else s for s in arguments(node)["size"]]
    ctx.emit("Expand", [ctx.name(node.inputs[0]), ctx.sizes(sizes)], _out(ctx, node))


def expand_as(ctx: "LoweringContext", node: Node) -> None:
    shape = ctx.emit("Shape", [ctx.name(node.inputs[1])])[0]
    ctx.emit("Expand", [ctx.name(node.inputs[0]), shape], _out(ctx, node))


def repeat(ctx: "LoweringContext", node: Node) -> None:
    repeats = list(arguments(node)["repeats"])
    source = node.inputs[0]
    name = ctx.name(source)
    extra = len(repeats) - source.type.rank
    if extra > 0:
        name = ctx.emit("Unsqueeze", [name, ctx.ints(list(range(extra)))])[0]
    ctx.emit("Tile", [name, ctx.ints(repeats)], _out(ctx, node))


def cat(ctx: "LoweringContext", node: Node) -> None:
    dtype = node.outputs[0].type.dtype
    rank = node.outputs[0].type.rank
    inputs = [ctx.input(v, dtype) for v in node.inputs if v.type.rank == rank]
    ctx.emit("Concat", inputs, _out(ctx, node), axis=_axis(arguments(node)["dim"], rank))


def stack(ctx: "LoweringContext", node: Node) -> None:
    rank = node.outputs[0].type.rank
    dim = _axis(arguments(node)["dim"], rank)
    parts = [ctx.emit("Unsqueeze", [ctx.name(v), ctx.ints([dim])])[0] for v in node.inputs]
    ctx.emit("Concat", parts, _out(ctx, node), axis=dim)


def split(ctx: "LoweringContext", node: Node) -> None:
    """split/chunk/split_with_sizes: sizes read off the output types."""
    args = arguments(node)
    rank = node.inputs[0].type.rank
    dim = _axis(args["dim"], rank)
    sizes = [_static(v.type.shape[dim], node) for v in node.outputs]
    ctx.emit("Split", [ctx.name(node.inputs[0]), ctx.ints(sizes)], ctx.output_names(node), axis=dim)


def unbind(ctx: "LoweringContext", node: Node) -> None:
    rank = node.inputs[0].type.rank
    dim = _axis(arguments(node)["dim"], rank)
    parts = ctx.emit("Split", [ctx.name(node.inputs[0]), ctx.ints([1] * len(node.outputs))], len(node.outputs), axis=dim)
    for part, name in zip(parts, ctx.output_names(node)):
        ctx.emit("Squeeze", [part, ctx.ints([dim])], [name])


def slice_(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    start = args["start"] if args["start"] is not None else 0
    end = args["end"] if args["end"] is not None else INT64_MAX
    _emit_slice(ctx, node, args["dim"], start, end, args["step"])


def narrow(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    _emit_slice(ctx, node, args["dim"], args["start"], args["start"] + args["length"], 1)


def _emit_slice(ctx: "LoweringContext", node: Node, dim: int, start: int, end: int, step: int) -> None:
    end = min(end, INT64_MAX) if isinstance(end, int) else end
    inputs = [ctx.name(node.inputs[0]), ctx.sizes([start]), ctx.sizes([end]), ctx.ints([dim]), ctx.ints([step])]
    ctx.emit("Slice", inputs, _out(ctx, node))


def select(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    index = ctx.const(torch.tensor(args["index"], dtype=torch.int64), "index")
    ctx.emit("Gather", [ctx.name(node.inputs[0]), index], _out(ctx, node), axis=args["dim"])


def embedding(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    ctx.emit("Gather", [ctx.name(args["weight"]), ctx.name(args["indices"])], _out(ctx, node), axis=0)


def index_select(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    ctx.emit("Gather", [ctx.name(args["self"]), ctx.name(args["index"])], _out(ctx, node), axis=args["dim"])


def gather(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    ctx.emit("GatherElements", [ctx.name(args["self"]), ctx.name(args["index"])], _out(ctx, node), axis=args["dim"])


def index(ctx: "LoweringContext", node: Node) -> None:
    """x[..., idx, ...]: one index tensor -> Gather; adjacent leading ones -> GatherND."""
    mask = node.attrs.get("indices") or [True] * (len(node.inputs) - 1)
    positions = [i for i, m in enumerate(mask) if m is not None]
    indices = list(node.inputs[1:])
    if len(positions) == 1:
        ctx.emit("Gather", [ctx.name(node.inputs[0]), ctx.name(indices[0])], _out(ctx, node), axis=positions[0])
        return
    if positions != list(range(len(positions))):
        raise UnsupportedOpError(f"{node!r}: advanced indexing at dims {positions} has no ONNX lowering")
    shape = ctx.sizes(_broadcast_dims([v.type.shape for v in indices]))
    parts = [ctx.emit("Unsqueeze", [ctx.emit("Expand", [ctx.name(v), shape])[0], ctx.ints([-1])])[0]
             for v in indices]
    stacked = ctx.emit("Concat", parts, axis=-1)[0]
    ctx.emit("GatherND", [ctx.name(node.inputs[0]), stacked], _out(ctx, node))


def _broadcast_dims(shapes: list[tuple]) -> list[Any]:
    """The broadcast of shapes whose dims may be symbolic: per right-aligned axis, the dim that is not 1."""
    rank = max(len(shape) for shape in shapes)
    padded = [(1,) * (rank - len(shape)) + tuple(shape) for shape in shapes]
    return [next((d for d in column if d != 1), 1) for column in zip(*padded)]


def reduce(op_type: str, all_dims_arg: str = "dim") -> Rule:
    """mean/sum/amax over `dim` (all dims when absent), axes as an input (opset 18)."""
    def rule(ctx: "LoweringContext", node: Node) -> None:
        args = arguments(node)
        dtype = node.outputs[0].type.dtype
        dims = args.get(all_dims_arg)
        inputs = [ctx.input(node.inputs[0], dtype)] + ([ctx.ints(list(dims))] if dims else [])
        keepdims = int(bool(args.get("keepdim", False)))
        ctx.emit(op_type, inputs, _out(ctx, node), keepdims=keepdims)
    return rule


def max_dim(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    names = ctx.output_names(node)
    keep = int(bool(args["keepdim"]))
    x = ctx.name(node.inputs[0])
    ctx.emit("ReduceMax", [x, ctx.ints([args["dim"]])], [names[0]], keepdims=keep)
    ctx.emit("ArgMax", [x], [names[1]], axis=args["dim"], keepdims=keep)


def where(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    dtype = node.outputs[0].type.dtype
    ctx.emit("Where", [ctx.name(args["condition"]), _operand(ctx, args["self"], dtype),
                       _operand(ctx, args["other"], dtype)], _out(ctx, node))


def masked_fill(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    dtype = node.outputs[0].type.dtype
    ctx.emit("Where", [ctx.name(args["mask"]), ctx.scalar(args["value"], dtype), ctx.name(args["self"])],
             _out(ctx, node))


def pad(ctx: "LoweringContext", node: Node) -> None:
    """torch pads (last dim first, begin/end pairs) -> ONNX pads (all begins, then all ends)."""
    args = arguments(node)
    rank = node.inputs[0].type.rank
    pairs = list(args["pad"])
    begins, ends = [0] * rank, [0] * rank
    for k in range(len(pairs) // 2):
        begins[rank - 1 - k], ends[rank - 1 - k] = pairs[2 * k], pairs[2 * k + 1]
    mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}[args.get("mode") or "constant"]
    value = args.get("value") or 0
    dtype = node.outputs[0].type.dtype
    ctx.emit("Pad", [ctx.name(node.inputs[0]), ctx.ints(begins + ends, "pads"), ctx.scalar(value, dtype)],
             _out(ctx, node), mode=mode)


def upsample(mode: str) -> Rule:
    def rule(ctx: "LoweringContext", node: Node) -> None:
        args = arguments(node)
        source, target = node.inputs[0].type, node.outputs[0].type
        if mode == "nearest":
            attrs = {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
        else:
            attrs = {"coordinate_transformation_mode": "align_corners" if args["align_corners"] else "pytorch_half_pixel"}
        scales = [float(o) / float(i) for i, o in zip(source.shape[2:], target.shape[2:])]
        ctx.emit("Resize", [ctx.name(node.inputs[0]), "", ctx.const(torch.tensor([1.0, 1.0] + scales), "scales")],
                 _out(ctx, node), mode=mode, **attrs)
    return rule


def pixel_shuffle(ctx: "LoweringContext", node: Node) -> None:
    ctx.emit("DepthToSpace", [ctx.name(node.inputs[0])], _out(ctx, node),
             blocksize=arguments(node)["upscale_factor"], mode="CRD")


def cumsum(ctx: "LoweringContext", node: Node) -> None:
    dtype = node.outputs[0].type.dtype
    axis = ctx.const(torch.tensor(arguments(node)["dim"], dtype=torch.int64), "axis")
    ctx.emit("CumSum", [ctx.input(node.inputs[0], dtype), axis], _out(ctx, node))


def trilu(upper: int) -> Rule:
    def rule(ctx: "LoweringContext", node: Node) -> None:
        k = ctx.const(torch.tensor(arguments(node)["diagonal"], dtype=torch.int64), "k")
        ctx.emit("Trilu", [ctx.name(node.inputs[0]), k], _out(ctx, node), upper=upper)
    return rule


def masked_trilu(upper: bool) -> Rule:
    """Where(triangle, x, 0) with the triangle a constant (before opset 14's Trilu; static last two dims)."""
    def rule(ctx: "LoweringContext", node: Node) -> None:
        source = node.inputs[0]
        rows, cols = (_static(d, node) for d in source.type.shape[-2:])
        ones = torch.ones(rows, cols, dtype=torch.bool)
        diagonal = arguments(node)["diagonal"]
        mask = ones.triu(diagonal) if upper else ones.tril(diagonal)
        zero = ctx.scalar(0, source.type.dtype)
        ctx.emit("Where", [ctx.const(mask, "triangle"), ctx.name(source), zero], _out(ctx, node))
    return rule


def like_fill(ctx: "LoweringContext", node: Node) -> None:
    """zeros_like & co with a symbolic shape: ConstantOfShape(Shape(x))."""
    target = node.outputs[0].type
    fill = {"aten.zeros_like": 0, "aten.new_zeros": 0, "aten.ones_like": 1, "aten.new_ones": 1}.get(node.op)
    fill = arguments(node).get("fill_value", 0) if fill is None else fill
    shape = ctx.emit("Shape", [ctx.name(node.inputs[0])])[0]
    value = tensor_proto("value", torch.tensor([fill], dtype=target.torch_dtype))
    ctx.emit("ConstantOfShape", [shape], _out(ctx, node), value=value)


def arange(ctx: "LoweringContext", node: Node) -> None:
    """arange with a symbolic bound (a static one is folded): Range over scalars of the output dtype."""
    args = arguments(node)
    dtype = node.outputs[0].type.dtype
    bounds = [args.get("start", 0), args["end"], args.get("step", 1)]
    scalars = [ctx.scalar(b, dtype) if isinstance(b, (int, float)) else _scalar_size(ctx, b, dtype) for b in bounds]
    ctx.emit("Range", scalars, _out(ctx, node))


def _scalar_size(ctx: "LoweringContext", size: Any, dtype: str) -> str:
    scalar = ctx.emit("Squeeze", [ctx.sizes([size]), ctx.ints([0])])[0]
    return ctx.cast(scalar, "i64", dtype)


def full(ctx: "LoweringContext", node: Node) -> None:
    """zeros/ones/full with symbolic sizes: ConstantOfShape (static ones are folded)."""
    args = arguments(node)
    fill = {"aten.zeros": 0, "aten.ones": 1}.get(node.op, args.get("fill_value"))
    value = tensor_proto("value", torch.tensor([fill], dtype=node.outputs[0].type.torch_dtype))
    ctx.emit("ConstantOfShape", [ctx.sizes(list(args["size"]))], _out(ctx, node), value=value)


def diff(ctx: "LoweringContext", node: Node) -> None:
    args = arguments(node)
    if args["n"] != 1:
        raise UnsupportedOpError(f"{node!r}: only diff with n=1 lowers to ONNX")
    x, dim = ctx.name(node.inputs[0]), args["dim"]
    pieces = [ctx.name(v) for v in (args["prepend"], node.inputs[0], args["append"]) if v is not None]
    if len(pieces) > 1:  # diff(x, prepend=p, append=a) is diff(cat([p, x, a]))
        x = ctx.emit("Concat", pieces, axis=dim)[0]
    later = ctx.emit("Slice", [x, ctx.ints([1]), ctx.ints([INT64_MAX]), ctx.ints([dim])])[0]
    earlier = ctx.emit("Slice", [x, ctx.ints([0]), ctx.ints([-1]), ctx.ints([dim])])[0]
    ctx.emit("Sub", [later, earlier], _out(ctx, node))


# ---- roll, einsum, swapaxes, adaptive max pooling -----------------------------------------

def roll(ctx: "LoweringContext", node: Node) -> None:
    """Each (shift, dim): the last `shift` entries moved to the front, as Slice + Concat; no dims rolls flat."""
    args = arguments(node)
    source = node.inputs[0]
    shifts, dims = list(args["shifts"]), list(args.get("dims") or [])
    name = ctx.name(source)
    if not dims:
        name = ctx.emit("Reshape", [name, ctx.ints([-1])])[0]
        sizes = [math.prod(_static_shape(source, node))]
        dims = [0]
    else:
        sizes = [_static(source.type.shape[d], node) for d in dims]
    for step, (shift, dim, size) in enumerate(zip(shifts, dims, sizes)):
        cut = size - shift % size
        tail = ctx.emit("Slice", [name, ctx.ints([cut]), ctx.ints([INT64_MAX]), ctx.ints([dim])])[0]
        head = ctx.emit("Slice", [name, ctx.ints([0]), ctx.ints([cut]), ctx.ints([dim])])[0]
        last = step == len(shifts) - 1 and args.get("dims")
        name = ctx.emit("Concat", [tail, head], _out(ctx, node) if last else 1, axis=dim)[0]
    if not args.get("dims"):
        ctx.emit("Reshape", [name, ctx.emit("Shape", [ctx.name(source)])[0]], _out(ctx, node))


def einsum(ctx: "LoweringContext", node: Node) -> None:
    """torch.einsum -> ONNX Einsum (same equation language, spaces dropped)."""
    dtype = node.outputs[0].type.dtype
    equation = arguments(node)["equation"].replace(" ", "")
    ctx.emit("Einsum", [ctx.input(v, dtype) for v in node.inputs], _out(ctx, node), equation=equation)


def swap_dims(first: str, second: str) -> Rule:
    """swapaxes/swapdims: a Transpose exchanging the two named dims."""
    def rule(ctx: "LoweringContext", node: Node) -> None:
        args = arguments(node)
        rank = node.inputs[0].type.rank
        perm = list(range(rank))
        a, b = _axis(args[first], rank), _axis(args[second], rank)
        perm[a], perm[b] = perm[b], perm[a]
        ctx.emit("Transpose", [ctx.name(node.inputs[0])], _out(ctx, node), perm=perm)
    return rule


def numpy_t(ctx: "LoweringContext", node: Node) -> None:
    """x.T: every dim reversed."""
    rank = node.inputs[0].type.rank
    ctx.emit("Transpose", [ctx.name(node.inputs[0])], _out(ctx, node), perm=list(reversed(range(rank))))


def adaptive_max_pool(ctx: "LoweringContext", node: Node) -> None:
    """Adaptive max pooling's values (GlobalMaxPool / fixed-window MaxPool); ONNX has no form for its indices."""
    if len(node.outputs) > 1 and (node.outputs[1].uses or node.outputs[1].is_graph_output):
        raise UnsupportedOpError(f"{node!r}: the indices of adaptive max pooling have no ONNX lowering",
                                 hint="use the pooled values only (return_indices=False)")
    adaptive_pool("GlobalMaxPool", "MaxPool")(ctx, node)


# ---- onnx.* ops: written back as they came ------------------------------------------------

def lower_onnx_op(ctx: "LoweringContext", node: Node) -> None:
    """An `onnx.<Op>` node as one ONNX node: IR attrs back to attributes or (static) inputs."""
    op_type = node.op.split(".", 1)[1]
    attrs = {k: _onnx_attr(ctx, v) for k, v in node.attrs.items() if k not in INTERNAL_ATTRS}
    inputs = [ctx.name(v) for v in node.inputs]
    captures = node.attrs.get("captures", [])
    if captures:  # subgraphs read these outer values under their original names
        renames = dict(zip(captures, inputs[len(inputs) - len(captures):]))
        inputs = inputs[:len(inputs) - len(captures)]
        attrs = {k: _renamed(v, renames) if isinstance(v, onnx.GraphProto) else v for k, v in attrs.items()}
    for position in sorted(node.attrs.get("absent", [])):
        inputs.insert(position, "")
    for position, name, since, dtype in STATIC_INPUTS.get(op_type, []):
        if name not in attrs or ctx.opset < since:
            continue
        value = node.attrs[name]
        while len(inputs) < position:
            inputs.append("")
        tensor_dtype = dtype or (node.inputs[0].type.torch_dtype if node.inputs else torch.int64)
        symbolic = attr_symbols(value)  # Reshape{shape=[N, -1]}: computed from the input shapes at run time
        inputs.insert(position, ctx.sizes(value) if symbolic else ctx.const(torch.tensor(value, dtype=tensor_dtype), name))
        del attrs[name]
    adapt = ATTR_ADAPTERS.get(op_type)
    if adapt is not None:
        adapt(ctx, node, attrs)
    domain = node.attrs.get("domain", "")
    if domain:
        ctx.extra_domains[domain] = node.attrs.get("domain_version", 1)
    while inputs and inputs[-1] == "":
        inputs.pop()
    proto = helper.make_node(op_type, inputs, ctx.output_names(node), name=ctx.fresh(f"/{op_type}"),
                             domain=domain or None)
    proto.attribute.extend(_attribute(k, v) for k, v in sorted(attrs.items()))
    ctx.append(proto)


def _attribute(key: str, value: Any) -> onnx.AttributeProto:
    """An ONNX attribute; an empty list, which has no element to tell its type by, is written as INTS."""
    empty = isinstance(value, list) and not value
    return onnx.helper.make_attribute(key, value, attr_type=onnx.AttributeProto.INTS if empty else None)


def _adapt_split(ctx: "LoweringContext", node: Node, attrs: dict) -> None:
    """Split: num_outputs exists from opset 18 and only without explicit sizes."""
    if "split" not in node.attrs and len(node.inputs) == 1 and ctx.opset >= 18:
        attrs["num_outputs"] = len(node.outputs)


def _adapt_constant_of_shape(ctx: "LoweringContext", node: Node, attrs: dict) -> None:
    """ConstantOfShape: the IR's value + dtype are one 1-element tensor attribute in ONNX."""
    dtype = attrs.pop("dtype", None)
    torch_dtype = node.attrs.get("dtype", torch.float32)
    if "value" in attrs or dtype is not None:
        attrs["value"] = tensor_proto("value", torch.tensor([node.attrs.get("value", 0)], dtype=torch_dtype))


ATTR_ADAPTERS: dict[str, Callable[["LoweringContext", Node, dict], None]] = {
    "Split": _adapt_split, "ConstantOfShape": _adapt_constant_of_shape,
}


def _onnx_attr(ctx: "LoweringContext", value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return _onnx_dtype(_dtype_name(value))
    if isinstance(value, str) and value.startswith("tensor:"):
        return tensor_proto("value", ctx.graph.params[value[len("tensor:"):]])
    if isinstance(value, str) and value.startswith("graph:"):
        return onnx.GraphProto.FromString(ctx.graph.params[value[len("graph:"):]].numpy().tobytes())
    if isinstance(value, bool):
        return int(value)
    return value


def _renamed(graph: onnx.GraphProto, renames: dict[str, str]) -> onnx.GraphProto:
    """A copy of a subgraph reading outer values by their new names (names it defines itself shadow them)."""
    graph = copy.deepcopy(graph)
    renames = {k: v for k, v in renames.items() if k not in subgraph_defines(graph) and k != v}
    for n in graph.node:
        n.input[:] = [renames.get(i, i) for i in n.input]
        for attr in n.attribute:
            if attr.type == attr.GRAPH:
                attr.g.CopyFrom(_renamed(attr.g, renames))
    for info in graph.output:
        info.name = renames.get(info.name, info.name)
    return graph


def _dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES[dtype]


def rsub(ctx: "LoweringContext", node: Node) -> None:
    """other - alpha * self."""
    args = arguments(node)
    dtype = node.outputs[0].type.dtype
    scaled = ctx.input(args["self"], dtype)
    if args["alpha"] != 1:
        scaled = ctx.emit("Mul", [scaled, ctx.scalar(args["alpha"], dtype)])[0]
    ctx.emit("Sub", [_operand(ctx, args["other"], dtype), scaled], _out(ctx, node))
