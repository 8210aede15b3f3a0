"""ONNX ops as IR ops (`onnx.Conv`, ...): one table, op type -> torch kernel.

Encoding: node inputs are the ONNX inputs; ONNX attributes are node attributes of the same name
(dtype attributes as dtypes). Static operands that later opsets moved from attributes to inputs
(Reshape's shape, Slice's starts, Squeeze's axes, ...) are attributes when constant, whatever the
opset: `STATIC_INPUTS` says where each goes back. Internal attributes: `absent` (positions of
omitted optional inputs), `outputs` (output count, for kernels whose result count varies),
`domain`/`domain_version` (ops outside the default domain, or from a model newer than DEFAULT_OPSET),
`captures` (outer-scope names a subgraph attribute reads; the node's last inputs). A subgraph attribute
(If/Loop/Scan bodies) is "graph:<param>", the serialized GraphProto as a uint8 param.

Kernels are self-contained (torch and math only): the PyTorch backend copies their source into
the generated model.py. Ops outside the table are opaque: kept, written back by the ONNX
backend, and an UnsupportedOpError naming them when run in PyTorch.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from .opdef import Args, OpDef

DEFAULT_OPSET = 18  # the floor: unless told an opset, the ONNX backend writes the lowest one >= this the graph needs
OPSET_RANGE = range(13, 24)  # the opsets the ONNX backend writes, each op in that opset's form
INTERNAL_ATTRS = frozenset({"absent", "outputs", "domain", "domain_version", "captures"})

# op type -> [(input position, attribute name, first opset taking it as an input, dtype or None = input 0's)]
STATIC_INPUTS: dict[str, list[tuple[int, str, int, torch.dtype | None]]] = {
    "Reshape": [(1, "shape", 5, torch.int64)],
    "Expand": [(1, "shape", 8, torch.int64)],
    "Tile": [(1, "repeats", 6, torch.int64)],
    "ConstantOfShape": [(0, "shape", 9, torch.int64)],
    "Squeeze": [(1, "axes", 13, torch.int64)],
    "Unsqueeze": [(1, "axes", 13, torch.int64)],
    "Split": [(1, "split", 13, torch.int64)],
    "Slice": [(1, "starts", 10, torch.int64), (2, "ends", 10, torch.int64), (3, "axes", 10, torch.int64),
              (4, "steps", 10, torch.int64)],
    "Pad": [(1, "pads", 11, torch.int64), (2, "constant_value", 11, None), (3, "axes", 18, torch.int64)],
    "Clip": [(1, "min", 11, None), (2, "max", 11, None)],
    "Dropout": [(1, "ratio", 12, torch.float32)],
    "TopK": [(1, "k", 10, torch.int64)],
    "CumSum": [(1, "axis", 11, torch.int64)],
    "Trilu": [(1, "k", 14, torch.int64)],
    "Resize": [(1, "roi", 11, torch.float32), (2, "scales", 11, torch.float32), (3, "sizes", 11, torch.int64)],
    **{op: [(1, "axes", 18, torch.int64)] for op in (
        "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
        "ReduceLogSumExp", "ReduceSumSquare")},
    "ReduceSum": [(1, "axes", 13, torch.int64)],
}
# ops whose kernel needs the `outputs` count
COUNTED_OUTPUTS = {"Split", "Dropout", "MaxPool", "LayerNormalization", "BatchNormalization"}


# ---- kernels (self-contained: copied into generated code) -------------------------------

def onnx_unary(x, kind, alpha=None, beta=None, gamma=None, lambd=None, bias=None, approximate="none",
               detect_negative=1, detect_positive=1, **_):
    F = torch.nn.functional
    table = {
        "Relu": lambda: torch.relu(x), "Sigmoid": lambda: torch.sigmoid(x), "Tanh": lambda: torch.tanh(x),
        "Erf": lambda: torch.erf(x), "Exp": lambda: torch.exp(x), "Log": lambda: torch.log(x),
        "Sqrt": lambda: torch.sqrt(x), "Abs": lambda: torch.abs(x), "Neg": lambda: torch.neg(x),
        "Reciprocal": lambda: torch.reciprocal(x), "Floor": lambda: torch.floor(x), "Ceil": lambda: torch.ceil(x),
        "Round": lambda: torch.round(x), "Sign": lambda: torch.sign(x), "Sin": lambda: torch.sin(x),
        "Cos": lambda: torch.cos(x), "Tan": lambda: torch.tan(x), "Asin": lambda: torch.asin(x),
        "Acos": lambda: torch.acos(x), "Atan": lambda: torch.atan(x), "Sinh": lambda: torch.sinh(x),
        "Cosh": lambda: torch.cosh(x), "Asinh": lambda: torch.asinh(x), "Acosh": lambda: torch.acosh(x),
        "Atanh": lambda: torch.atanh(x), "Not": lambda: torch.logical_not(x), "IsNaN": lambda: torch.isnan(x),
        "IsInf": lambda: (torch.isneginf(x) & bool(detect_negative)) | (torch.isposinf(x) & bool(detect_positive)),
        "Identity": lambda: x, "Softsign": lambda: x / (1 + torch.abs(x)), "Softplus": lambda: F.softplus(x),
        "Elu": lambda: F.elu(x, 1.0 if alpha is None else alpha),
        "Celu": lambda: F.celu(x, 1.0 if alpha is None else alpha),
        "Selu": lambda: (1.0507009873554805 if gamma is None else gamma) * torch.where(
            x > 0, x, (1.6732632423543772 if alpha is None else alpha) * (torch.exp(x) - 1)),
        "LeakyRelu": lambda: F.leaky_relu(x, 0.01 if alpha is None else alpha),
        "ThresholdedRelu": lambda: torch.where(x > (1.0 if alpha is None else alpha), x, torch.zeros_like(x)),
        "HardSigmoid": lambda: torch.clamp(x * (0.2 if alpha is None else alpha) + (0.5 if beta is None else beta), 0, 1),
        "HardSwish": lambda: F.hardswish(x), "Mish": lambda: F.mish(x),
        "Gelu": lambda: F.gelu(x, approximate=approximate),
        "Shrink": lambda: torch.where(x < -(0.5 if lambd is None else lambd), x + (bias or 0.0),
                                      torch.where(x > (0.5 if lambd is None else lambd), x - (bias or 0.0),
                                                  torch.zeros_like(x))),
    }
    return table[kind]()


def onnx_binary(a, b, kind, fmod=0, **_):
    floating = a.is_floating_point()
    table = {
        "Add": lambda: a + b, "Sub": lambda: a - b, "Mul": lambda: a * b,
        "Div": lambda: a / b if floating else torch.div(a, b, rounding_mode="trunc"),
        "Pow": lambda: torch.pow(a, b).to(a.dtype), "PRelu": lambda: torch.where(a < 0, a * b, a),
        "Mod": lambda: torch.fmod(a, b) if fmod else torch.remainder(a, b),
        "Equal": lambda: a == b, "Less": lambda: a < b, "LessOrEqual": lambda: a <= b, "Greater": lambda: a > b,
        "GreaterOrEqual": lambda: a >= b, "And": lambda: torch.logical_and(a, b),
        "Or": lambda: torch.logical_or(a, b), "Xor": lambda: torch.logical_xor(a, b),
    }
    return table[kind]()


def onnx_variadic(*xs, kind, **_):
    result = xs[0]
    for x in xs[1:]:
        result = {"Sum": torch.add, "Mean": torch.add, "Max": torch.maximum, "Min": torch.minimum}[kind](result, x)
    return result / len(xs) if kind == "Mean" else result


def onnx_reduce(data, axes=None, kind="ReduceSum", keepdims=1, noop_with_empty_axes=0, **_):
    axes = axes.tolist() if isinstance(axes, torch.Tensor) else axes
    if not axes and noop_with_empty_axes:
        return data
    dims = sorted({a % data.dim() for a in axes}) if axes else list(range(data.dim()))
    keep = bool(keepdims)
    if not dims:
        return data
    if kind == "ReduceProd":
        for d in reversed(dims):
            data = torch.prod(data, d, keepdim=True)
        return data if keep else data.reshape([s for i, s in enumerate(data.shape) if i not in dims])
    table = {
        "ReduceSum": lambda: torch.sum(data, dims, keepdim=keep, dtype=data.dtype),
        "ReduceMean": lambda: torch.mean(data, dims, keepdim=keep),
        "ReduceMax": lambda: torch.amax(data, dims, keepdim=keep),
        "ReduceMin": lambda: torch.amin(data, dims, keepdim=keep),
        "ReduceL1": lambda: torch.sum(torch.abs(data), dims, keepdim=keep, dtype=data.dtype),
        "ReduceL2": lambda: torch.sqrt(torch.sum(data * data, dims, keepdim=keep)).to(data.dtype),
        "ReduceSumSquare": lambda: torch.sum(data * data, dims, keepdim=keep, dtype=data.dtype),
        "ReduceLogSum": lambda: torch.log(torch.sum(data, dims, keepdim=keep)),
        "ReduceLogSumExp": lambda: torch.logsumexp(data, dims, keepdim=keep),
    }
    return table[kind]()


def onnx_arg_reduce(data, kind, axis=0, keepdims=1, select_last_index=0, **_):
    fn = torch.argmax if kind == "ArgMax" else torch.argmin
    if not select_last_index:
        return fn(data, axis, keepdim=bool(keepdims))
    flipped = fn(torch.flip(data, [axis]), axis, keepdim=bool(keepdims))
    return data.shape[axis] - 1 - flipped


def onnx_sliding(x, w=None, b=None, kind="Conv", auto_pad="NOTSET", ceil_mode=0, count_include_pad=0,
                 dilations=None, group=1, kernel_shape=None, pads=None, strides=None, storage_order=0,
                 outputs=1, **_):
    """Conv, MaxPool and AveragePool: ONNX padding rules (auto_pad, asymmetric pads) on torch ops."""
    F = torch.nn.functional
    n = x.dim() - 2
    kernel = list(kernel_shape or w.shape[2:])
    strides, dilations = list(strides or [1] * n), list(dilations or [1] * n)
    pads = list(pads or [0] * (2 * n))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        for i in range(n):
            size = x.shape[2 + i]
            total = max((-(-size // strides[i]) - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size, 0)
            pads[i], pads[i + n] = (total // 2, total - total // 2) if auto_pad == "SAME_UPPER" else (total - total // 2, total // 2)
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    symmetric = pads[:n] == pads[n:] and all(p <= k // 2 for p, k in zip(pads[:n], kernel))
    torch_pads = pads[:n] if symmetric else [0] * n
    if not symmetric:
        flat = [p for i in reversed(range(n)) for p in (pads[i], pads[i + n])]
        fill = float("-inf") if kind == "MaxPool" else 0.0
        if kind == "AveragePool" and not count_include_pad:
            ones = F.pad(torch.ones_like(x[:1, :1]), flat, value=0.0)
            pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
            counts = pool(ones, kernel, strides, 0, bool(ceil_mode), True)
            return [pool(F.pad(x, flat, value=0.0), kernel, strides, 0, bool(ceil_mode), True) / counts]
        x = F.pad(x, flat, value=fill)
    if kind == "Conv":
        return [(F.conv1d, F.conv2d, F.conv3d)[n - 1](x, w, b, strides, torch_pads, dilations, group)]
    if kind == "AveragePool":
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
        return [pool(x, kernel, strides, torch_pads, bool(ceil_mode), bool(count_include_pad))]
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
    y, indices = pool(x, kernel, strides, torch_pads, dilations, bool(ceil_mode), True)
    plane = math.prod(x.shape[2:])
    offsets = torch.arange(x.shape[0] * x.shape[1]).reshape(list(x.shape[:2]) + [1] * n) * plane
    return [y, indices + offsets][:outputs]


def onnx_conv_transpose(x, w, b=None, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                        output_padding=None, output_shape=None, pads=None, strides=None, **_):
    F = torch.nn.functional
    n = x.dim() - 2
    strides, dilations = list(strides or [1] * n), list(dilations or [1] * n)
    output_padding = list(output_padding or [0] * n)
    full = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1](
        x, w, b, strides, 0, output_padding, group, dilations)
    pads = list(pads or [0] * (2 * n))
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = list(output_shape)[-n:] if output_shape else [x.shape[2 + i] * strides[i] for i in range(n)]
        for i in range(n):
            total = full.shape[2 + i] - target[i]
            pads[i], pads[i + n] = (total // 2, total - total // 2) if auto_pad == "SAME_UPPER" else (total - total // 2, total // 2)
    index = [slice(None), slice(None)] + [slice(pads[i], full.shape[2 + i] - pads[i + n]) for i in range(n)]
    return full[tuple(index)]


def onnx_global_pool(x, kind, **_):
    dims = list(range(2, x.dim()))
    return torch.mean(x, dims, keepdim=True) if kind == "GlobalAveragePool" else torch.amax(x, dims, keepdim=True)


def onnx_gemm(a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0, **_):
    a = a.transpose(0, 1) if transA else a
    b = b.transpose(0, 1) if transB else b
    y = a @ b if alpha == 1.0 else alpha * (a @ b)
    if c is None:
        return y
    return y + (c if beta == 1.0 else beta * c)


def onnx_matmul(a, b, **_):
    return torch.matmul(a, b)


def onnx_einsum(*xs, equation, **_):
    return torch.einsum(equation, *xs)


def onnx_batch_norm(x, scale, bias, mean, var, epsilon=1e-5, outputs=1, **_):
    y = torch.nn.functional.batch_norm(x, mean, var, scale, bias, False, 0.0, epsilon)
    return [y, mean, var][:outputs]


def onnx_instance_norm(x, scale, bias, epsilon=1e-5, **_):
    return torch.nn.functional.instance_norm(x, weight=scale, bias=bias, eps=epsilon)


def onnx_layer_norm(x, scale, bias=None, axis=-1, epsilon=1e-5, outputs=1, **_):
    axis = axis % x.dim()
    y = torch.nn.functional.layer_norm(x, list(x.shape[axis:]), scale, bias, epsilon)
    if outputs == 1:
        return [y]
    dims = list(range(axis, x.dim()))
    mean = torch.mean(x, dims, keepdim=True)
    inv_std = torch.rsqrt(torch.mean((x - mean) ** 2, dims, keepdim=True) + epsilon)
    return [y, mean, inv_std][:outputs]


def onnx_lrn(x, size, alpha=0.0001, beta=0.75, bias=1.0, **_):
    return torch.nn.functional.local_response_norm(x, size, alpha, beta, bias)


def onnx_mvn(x, axes=None, **_):
    dims = list(axes) if axes is not None else [0, 2, 3]
    mean = torch.mean(x, dims, keepdim=True)
    return (x - mean) / torch.sqrt(torch.mean((x - mean) ** 2, dims, keepdim=True) + 1e-9)


def onnx_softmax(x, kind, axis=-1, **_):
    if kind == "Softmax":
        return torch.softmax(x, axis)
    if kind == "LogSoftmax":
        return torch.log_softmax(x, axis)
    hot = torch.nn.functional.one_hot(torch.argmax(x, axis), x.shape[axis]).to(x.dtype)
    return torch.movedim(hot, -1, axis % x.dim())


def onnx_flatten(x, axis=1, **_):
    axis = axis + x.dim() if axis < 0 else axis  # ONNX: a negative axis counts from the end (-1 -> r-1)
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def onnx_reshape(data, shape, allowzero=0, **_):
    shape = shape.tolist() if isinstance(shape, torch.Tensor) else list(shape)
    if not allowzero:
        shape = [data.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return data.reshape(shape)


def onnx_transpose(x, perm=None, **_):
    return x.permute(list(perm) if perm is not None else list(reversed(range(x.dim()))))


def onnx_concat(*xs, axis, **_):
    return torch.cat(xs, axis)


def onnx_split(x, split=None, axis=0, outputs=1, num_outputs=None, **_):
    split = split.tolist() if isinstance(split, torch.Tensor) else split
    if split is None:
        size = x.shape[axis]
        chunk = -(-size // outputs)
        split = [min(chunk, size - chunk * i) for i in range(outputs)]
    return list(torch.split(x, list(split), axis))


def onnx_slice(data, starts, ends, axes=None, steps=None, **_):
    def as_list(v):
        return v.tolist() if isinstance(v, torch.Tensor) else list(v)

    starts, ends = as_list(starts), as_list(ends)
    axes = as_list(axes) if axes is not None else list(range(len(starts)))
    steps = as_list(steps) if steps is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis % data.dim()
        begin, stop, stride = slice(start, end, step).indices(data.shape[axis])
        if stride > 0:
            data = data[tuple([slice(None)] * axis + [slice(begin, max(begin, stop), stride)])]
            continue
        index = torch.arange(begin, stop, stride, dtype=torch.int64, device=data.device)
        data = torch.index_select(data, axis, index)
    return data


def onnx_gather(data, indices, axis=0, **_):
    axis = axis % data.dim()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices).to(torch.int64)
    out = torch.index_select(data, axis, indices.reshape(-1))
    return out.reshape(list(data.shape[:axis]) + list(indices.shape) + list(data.shape[axis + 1:]))


def onnx_gather_elements(data, indices, axis=0, **_):
    indices = torch.where(indices < 0, indices + data.shape[axis], indices).to(torch.int64)
    return torch.gather(data, axis, indices)


def onnx_gather_nd(data, indices, batch_dims=0, **_):
    depth = indices.shape[-1]
    sizes = torch.tensor(list(data.shape[:depth]), dtype=torch.int64, device=indices.device)
    indices = torch.where(indices < 0, indices + sizes, indices).to(torch.int64)
    return data[tuple(indices[..., i] for i in range(depth))]


def onnx_scatter_elements(data, indices, updates, axis=0, reduction="none", **_):
    indices = torch.where(indices < 0, indices + data.shape[axis], indices).to(torch.int64)
    if reduction == "none":
        return torch.scatter(data, axis, indices, updates)
    reduce = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}[reduction]
    return torch.scatter_reduce(data, axis, indices, updates, reduce)


def onnx_scatter_nd(data, indices, updates, reduction="none", **_):
    out = data.clone()
    index = tuple(indices[..., i].to(torch.int64) for i in range(indices.shape[-1]))
    if reduction == "none":
        out[index] = updates
    elif reduction == "add":
        out.index_put_(index, updates, accumulate=True)
    else:
        raise NotImplementedError(f"ScatterND reduction {reduction}")
    return out


def onnx_shape(x, start=0, end=None, **_):
    return torch.tensor(list(x.shape)[start:end], dtype=torch.int64)


def onnx_size(x, **_):
    return torch.tensor(x.numel(), dtype=torch.int64)


def onnx_constant_of_shape(shape, value=0.0, dtype=torch.float32, **_):
    shape = shape.tolist() if isinstance(shape, torch.Tensor) else list(shape)
    return torch.full(shape, value, dtype=dtype)


def onnx_unsqueeze(data, axes, **_):
    axes = axes.tolist() if isinstance(axes, torch.Tensor) else list(axes)
    rank = data.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        data = data.unsqueeze(axis)
    return data


def onnx_squeeze(data, axes=None, **_):
    axes = axes.tolist() if isinstance(axes, torch.Tensor) else axes
    if axes is None:
        return torch.squeeze(data)
    return torch.squeeze(data, tuple(a % data.dim() for a in axes))


def onnx_expand(data, shape, **_):
    shape = shape.tolist() if isinstance(shape, torch.Tensor) else list(shape)
    return data.expand(torch.broadcast_shapes(tuple(data.shape), tuple(shape)))


def onnx_tile(data, repeats, **_):
    return data.repeat(repeats.tolist() if isinstance(repeats, torch.Tensor) else list(repeats))


def onnx_where(condition, x, y, **_):
    return torch.where(condition, x, y)


def onnx_cast(x, to, **_):
    return x.to(to)


def onnx_cast_like(x, target, **_):
    return x.to(target.dtype)


def onnx_range(start, limit, delta, **_):
    return torch.arange(start.tolist(), limit.tolist(), delta.tolist(), dtype=start.dtype)


def onnx_pad(data, pads, constant_value=None, axes=None, mode="constant", **_):
    pads = pads.tolist() if isinstance(pads, torch.Tensor) else list(pads)
    value = constant_value.tolist() if isinstance(constant_value, torch.Tensor) else constant_value
    rank = data.dim()
    axes = (axes.tolist() if isinstance(axes, torch.Tensor) else list(axes)) if axes is not None else list(range(rank))
    flat = [0] * (2 * rank)
    for i, axis in enumerate(axes):
        axis = axis % rank
        flat[2 * (rank - 1 - axis)], flat[2 * (rank - 1 - axis) + 1] = pads[i], pads[i + len(axes)]
    if mode == "constant":
        return torch.nn.functional.pad(data, flat, "constant", value or 0)
    while flat[-2:] == [0, 0]:
        flat = flat[:-2]
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    return torch.nn.functional.pad(data, flat, torch_mode)


def onnx_resize(x, roi=None, scales=None, sizes=None, mode="nearest", coordinate_transformation_mode="half_pixel",
                nearest_mode="round_prefer_floor", axes=None, **_):
    scales = scales.tolist() if isinstance(scales, torch.Tensor) else scales
    sizes = sizes.tolist() if isinstance(sizes, torch.Tensor) else sizes
    n = x.dim() - 2
    align = coordinate_transformation_mode == "align_corners"
    torch_mode = {"nearest": "nearest" if coordinate_transformation_mode == "asymmetric" else "nearest-exact",
                  "linear": ("linear", "bilinear", "trilinear")[n - 1], "cubic": "bicubic"}[mode]
    corners = align if mode != "nearest" else None
    if sizes:
        return torch.nn.functional.interpolate(x, size=list(sizes)[2:], mode=torch_mode, align_corners=corners)
    return torch.nn.functional.interpolate(x, scale_factor=list(scales)[2:], mode=torch_mode, align_corners=corners,
                                           recompute_scale_factor=False)


def onnx_topk(x, k, axis=-1, largest=1, sorted=1, **_):
    k = int(k.reshape(-1).tolist()[0]) if isinstance(k, torch.Tensor) else int(k[0] if isinstance(k, list) else k)
    values, indices = torch.topk(x, k, axis, bool(largest), True)
    return [values, indices]


def onnx_cumsum(x, axis, exclusive=0, reverse=0, **_):
    axis = int(axis.tolist()) if isinstance(axis, torch.Tensor) else axis
    data = torch.flip(x, [axis]) if reverse else x
    out = torch.cumsum(data, axis).to(x.dtype)
    out = out - data if exclusive else out
    return torch.flip(out, [axis]) if reverse else out


def onnx_trilu(x, k=0, upper=1, **_):
    k = int(k.tolist()) if isinstance(k, torch.Tensor) else k
    return torch.triu(x, k) if upper else torch.tril(x, k)


def onnx_depth_to_space(x, blocksize, mode="DCR", **_):
    b, c, h, w = x.shape
    depth = c // (blocksize * blocksize)
    if mode == "DCR":
        t = x.reshape(b, blocksize, blocksize, depth, h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(b, depth, blocksize, blocksize, h, w).permute(0, 1, 4, 2, 5, 3)
    return t.reshape(b, depth, h * blocksize, w * blocksize)


def onnx_space_to_depth(x, blocksize, **_):
    b, c, h, w = x.shape
    t = x.reshape(b, c, h // blocksize, blocksize, w // blocksize, blocksize).permute(0, 3, 5, 1, 2, 4)
    return t.reshape(b, c * blocksize * blocksize, h // blocksize, w // blocksize)


def onnx_clip(x, min=None, max=None, **_):
    low = min.tolist() if isinstance(min, torch.Tensor) else min
    high = max.tolist() if isinstance(max, torch.Tensor) else max
    if low is None and high is None:
        return x
    return torch.clamp(x, low, high)


def onnx_dropout(data, ratio=None, training_mode=None, outputs=1, **_):
    return [data, torch.ones_like(data, dtype=torch.bool)][:outputs]


def onnx_nonzero(x, **_):
    return torch.nonzero(x).transpose(0, 1)


def onnx_quantization_axes(x, scale, zero_point, axis=1, block_size=0):
    """Scale and zero point shaped to broadcast against x: per tensor (scalar), per `axis` (1-D),
    or one per block of `block_size` along `axis` (the rank of x)."""
    if block_size:
        axis = axis % x.dim()
        scale = scale.repeat_interleave(block_size, dim=axis).narrow(axis, 0, x.shape[axis])
        zero_point = zero_point.repeat_interleave(block_size, dim=axis).narrow(axis, 0, x.shape[axis])
        return scale, zero_point
    if scale.dim() == 1 and x.dim() > 1:
        shape = [1] * x.dim()
        shape[axis] = -1
        return scale.reshape(shape), zero_point.reshape(shape)
    return scale, zero_point


def onnx_dequantize_linear(x, scale, zero_point=None, axis=1, block_size=0, **_):
    """(x - zero_point) * scale, computed in float32, returned in the scale's dtype."""
    zero_point = torch.zeros_like(scale, dtype=x.dtype) if zero_point is None else zero_point
    scale, zero_point = onnx_quantization_axes(x, scale, zero_point, axis, block_size)
    return ((x.to(torch.float32) - zero_point.to(torch.float32)) * scale.to(torch.float32)).to(scale.dtype)


def onnx_quantize_linear(x, scale, zero_point=None, axis=1, block_size=0, output_dtype=0, **_):
    """saturate(round_half_even(x / scale) + zero_point), computed in float32; uint8 (or output_dtype)
    when there is no zero point."""
    zero_point = torch.zeros_like(scale, dtype=output_dtype or torch.uint8) if zero_point is None else zero_point
    scale, zero_point = onnx_quantization_axes(x, scale, zero_point, axis, block_size)
    info = torch.iinfo(zero_point.dtype)
    q = torch.round(x.to(torch.float32) / scale.to(torch.float32)) + zero_point.to(torch.float32)
    return torch.clamp(q, info.min, info.max).to(zero_point.dtype)


def onnx_dynamic_quantize_linear(x, **_):
    """uint8 per tensor over [min(x, 0), max(x, 0)] -> (y, scale, zero point); an all-zero x gets scale 1,
    as in onnxruntime (the spec divides by zero there)."""
    low = torch.clamp(x.min(), max=0.0)
    high = torch.clamp(x.max(), min=0.0)
    scale = torch.where(high > low, (high - low) / 255.0, torch.ones_like(high))
    zero_point = torch.clamp(0.0 - low / scale, 0.0, 255.0).round()
    y = torch.clamp(torch.round(x / scale) + zero_point, 0.0, 255.0)
    return [y.to(torch.uint8), scale, zero_point.to(torch.uint8)]


def onnx_matmul_integer(a, b, a_zero_point=None, b_zero_point=None, **_):
    """(A - a_zero_point) @ (B - b_zero_point) as int32, exact (float64 holds every int32 sum);
    a 1-D zero point is per row of A, per column of B."""
    a, b = a.double(), b.double()
    if a_zero_point is not None:
        a = a - (a_zero_point.double().reshape(-1, 1) if a_zero_point.dim() == 1 else a_zero_point.double())
    if b_zero_point is not None:
        b = b - b_zero_point.double()
    return torch.matmul(a, b).to(torch.int32)


def onnx_matmul_integer_to_float(a, b, a_scale, b_scale, a_zero_point=None, b_zero_point=None, bias=None, **_):
    """com.microsoft MatMulIntegerToFloat: MatMulInteger times a_scale * b_scale (per tensor or per
    column of B), plus the bias."""
    y = onnx_matmul_integer(a, b, a_zero_point, b_zero_point).to(a_scale.dtype) * (a_scale * b_scale)
    return y if bias is None else y + bias


def onnx_dynamic_quantize_matmul(a, b, b_scale, b_zero_point=None, bias=None, **_):
    """com.microsoft DynamicQuantizeMatMul: A quantized by DynamicQuantizeLinear, then MatMulIntegerToFloat."""
    q, scale, zero_point = onnx_dynamic_quantize_linear(a)
    return onnx_matmul_integer_to_float(q, b, scale, b_scale, zero_point, b_zero_point, bias)


def onnx_conv_integer(x, w, x_zero_point=None, w_zero_point=None, **attrs):
    """ConvInteger: Conv of (x - x_zero_point) and (w - w_zero_point, per output channel when 1-D)
    as int32, exact in float64."""
    x, w = x.double(), w.double()
    if x_zero_point is not None:
        x = x - x_zero_point.double()
    if w_zero_point is not None:
        w = w - w_zero_point.double().reshape([-1] + [1] * (w.dim() - 1))
    return onnx_sliding(x, w, kind="Conv", **attrs)[0].to(torch.int32)


def onnx_nbits_codes(packed, rows, bits):
    """`bits`-bit codes packed into uint8 bytes, low bits first -> one code a byte, [rows, ...]."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    return ((packed.reshape(rows, -1, 1) >> shifts) & (2 ** bits - 1)).reshape(rows, -1)


def onnx_matmul_nbits(a, b, scales, zero_points=None, g_idx=None, bias=None, K=0, N=0, bits=4, block_size=0, **_):
    """com.microsoft MatMulNBits: A @ W^T (+ bias); W [N, K] dequantized block by block along K,
    (code - zero point) * scale, from codes and zero points (default 2^(bits-1)) packed low bits first."""
    if g_idx is not None or (zero_points is not None and zero_points.is_floating_point()):
        raise NotImplementedError("MatMulNBits with g_idx or float zero points has no PyTorch kernel")
    blocks = -(-K // block_size)
    codes = onnx_nbits_codes(b, N, bits).reshape(N, blocks, block_size).to(scales.dtype)
    zero = 2 ** (bits - 1) if zero_points is None else onnx_nbits_codes(zero_points, N, bits)[:, :blocks, None]
    weight = ((codes - zero) * scales.reshape(N, blocks, 1)).reshape(N, -1)[:, :K]
    y = torch.matmul(a, weight.t().to(a.dtype))
    return y if bias is None else y + bias


def onnx_opaque(*inputs, op_type="?", **_):
    from torchcarve.errors import UnsupportedOpError

    raise UnsupportedOpError(f"onnx.{op_type} has no PyTorch kernel",
                             hint="add it to KERNELS in torchcarve/ir/ops/onnx_ops.py")


for _fn in (onnx_split, onnx_sliding, onnx_batch_norm, onnx_layer_norm, onnx_topk, onnx_dropout,
            onnx_dynamic_quantize_linear):
    _fn.returns_list = True
# kernels calling other kernels: the PyTorch backend copies these along
onnx_dequantize_linear.calls = onnx_quantize_linear.calls = (onnx_quantization_axes,)
onnx_matmul_integer_to_float.calls = (onnx_matmul_integer,)
onnx_dynamic_quantize_matmul.calls = (onnx_dynamic_quantize_linear, onnx_matmul_integer_to_float)
onnx_conv_integer.calls = (onnx_sliding,)
onnx_matmul_nbits.calls = (onnx_nbits_codes,)

# ---- the table: op type -> (kernel, kind passed to grouped kernels) -----------------------
UNARY = ("Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Log", "Sqrt", "Abs", "Neg", "Reciprocal", "Floor", "Ceil",
         "Round", "Sign", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
         "Not", "IsNaN", "IsInf", "Identity", "Softsign", "Softplus", "Elu", "Celu", "Selu", "LeakyRelu",
         "ThresholdedRelu", "HardSigmoid", "HardSwish", "Mish", "Gelu", "Shrink")
BINARY = ("Add", "Sub", "Mul", "Div", "Pow", "PRelu", "Mod", "Equal", "Less", "LessOrEqual", "Greater",
          "GreaterOrEqual", "And", "Or", "Xor")
REDUCE = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")


def reduce_rank(attrs: dict[str, Any], ranks: list[int], lengths: list[int | None]) -> int | None:
    """Output rank of a Reduce* whose axes are data (an input): the same with keepdims, else less
    by the axes' count when that is static; None when it cannot be told."""
    if attrs.get("keepdims", 1):
        return ranks[0]
    if len(lengths) < 2 or lengths[1] is None:
        return None
    if lengths[1] == 0:
        return ranks[0] if attrs.get("noop_with_empty_axes", 0) else 0
    return ranks[0] - lengths[1]


# op -> rank rule for outputs whose sizes depend on data: (attrs, input ranks, input lengths) -> rank or None;
# the importer gives such an output fresh symbolic dims, so a model stays importable.
RANK_RULES: dict[str, Callable[[dict[str, Any], list[int], list[int | None]], int | None]] = {
    op: reduce_rank for op in REDUCE}

def range_length(operands: list[torch.Tensor], attrs: dict[str, Any]) -> int:
    """Elements of Range(start, limit, delta): max(ceil((limit - start) / delta), 0); ValueError for a
    zero or non-finite delta, or operands that are not scalars."""
    if len(operands) != 3 or any(o.numel() != 1 for o in operands):
        raise ValueError("Range takes three scalars")
    start, limit, delta = (o.reshape(()).item() for o in operands)
    if delta == 0 or not all(math.isfinite(v) for v in (start, limit, delta)):
        raise ValueError(f"Range({start}, {limit}, {delta}) has no finite length")
    return max(math.ceil((limit - start) / delta), 0) if isinstance(delta, float) else max(-((start - limit) // delta), 0)


def nonzero_bound(operands: list[torch.Tensor], attrs: dict[str, Any]) -> int:
    """At most one index column per element, one row per dim."""
    return operands[0].numel() * max(operands[0].dim(), 1)


# op -> bound on the elements of its results from its constant operands, for ops whose output size
# depends on data (meta tensors cannot tell): the importer folds only what this says is small.
SIZE_RULES: dict[str, Callable[[list[torch.Tensor], dict[str, Any]], int]] = {
    "Range": range_length, "NonZero": nonzero_bound}

KERNELS: dict[str, tuple[Callable[..., Any], str | None]] = {
    **{op: (onnx_unary, op) for op in UNARY},
    **{op: (onnx_binary, op) for op in BINARY},
    **{op: (onnx_reduce, op) for op in REDUCE},
    **{op: (onnx_variadic, op) for op in ("Sum", "Mean", "Max", "Min")},
    **{op: (onnx_sliding, op) for op in ("Conv", "MaxPool", "AveragePool")},
    **{op: (onnx_global_pool, op) for op in ("GlobalAveragePool", "GlobalMaxPool")},
    **{op: (onnx_softmax, op) for op in ("Softmax", "LogSoftmax", "Hardmax")},
    **{op: (onnx_arg_reduce, op) for op in ("ArgMax", "ArgMin")},
    "ConvTranspose": (onnx_conv_transpose, None), "Gemm": (onnx_gemm, None), "MatMul": (onnx_matmul, None),
    "Einsum": (onnx_einsum, None), "BatchNormalization": (onnx_batch_norm, None),
    "InstanceNormalization": (onnx_instance_norm, None), "LayerNormalization": (onnx_layer_norm, None),
    "LRN": (onnx_lrn, None), "MeanVarianceNormalization": (onnx_mvn, None), "Flatten": (onnx_flatten, None),
    "Reshape": (onnx_reshape, None), "Transpose": (onnx_transpose, None), "Concat": (onnx_concat, None),
    "Split": (onnx_split, None), "Slice": (onnx_slice, None), "Gather": (onnx_gather, None),
    "GatherElements": (onnx_gather_elements, None), "GatherND": (onnx_gather_nd, None),
    "ScatterElements": (onnx_scatter_elements, None), "ScatterND": (onnx_scatter_nd, None),
    "Shape": (onnx_shape, None), "Size": (onnx_size, None), "ConstantOfShape": (onnx_constant_of_shape, None),
    "Unsqueeze": (onnx_unsqueeze, None), "Squeeze": (onnx_squeeze, None), "Expand": (onnx_expand, None),
    "Tile": (onnx_tile, None), "Where": (onnx_where, None), "Cast": (onnx_cast, None),
    "CastLike": (onnx_cast_like, None), "Range": (onnx_range, None), "Pad": (onnx_pad, None),
    "Resize": (onnx_resize, None), "TopK": (onnx_topk, None),
    "CumSum": (onnx_cumsum, None), "Trilu": (onnx_trilu, None), "DepthToSpace": (onnx_depth_to_space, None),
    "SpaceToDepth": (onnx_space_to_depth, None), "Clip": (onnx_clip, None), "Dropout": (onnx_dropout, None),
    "NonZero": (onnx_nonzero, None), "DequantizeLinear": (onnx_dequantize_linear, None),
    "QuantizeLinear": (onnx_quantize_linear, None), "DynamicQuantizeLinear": (onnx_dynamic_quantize_linear, None),
    "MatMulInteger": (onnx_matmul_integer, None), "ConvInteger": (onnx_conv_integer, None),
    "MatMulIntegerToFloat": (onnx_matmul_integer_to_float, None),
    "DynamicQuantizeMatMul": (onnx_dynamic_quantize_matmul, None), "MatMulNBits": (onnx_matmul_nbits, None),
}
# kernels of ops outside the default domain: op type -> domain (the importer runs them only from there)
DOMAINS = {op: "com.microsoft" for op in ("MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulNBits")}


def make_bind(kind: str | None) -> Callable[[Sequence[Any], dict[str, Any]], Args]:
    """(inputs, attrs) -> kernel call: omitted optional inputs as None, ONNX attributes as keywords."""
    def bind(inputs: Sequence[Any], attrs: dict[str, Any]) -> Args:
        args = list(inputs)
        for position in sorted(attrs.get("absent", [])):
            args.insert(position, None)
        kwargs = {k: v for k, v in attrs.items() if k not in INTERNAL_ATTRS or k == "outputs"}
        if kind is not None:
            kwargs["kind"] = kind
        return args, kwargs
    return bind


def _opaque_bind(op_type: str) -> Callable[[Sequence[Any], dict[str, Any]], Args]:
    def bind(inputs: Sequence[Any], attrs: dict[str, Any]) -> Args:
        return list(inputs), {"op_type": op_type}
    return bind


def _no_inference(attrs: dict[str, Any], types: list) -> list:
    from ..infer import InferenceUnavailable

    raise InferenceUnavailable("opaque ONNX op: output types come from the model")


def opaque_opdef(name: str) -> OpDef:
    """An ONNX op without a kernel: kept as-is, typed by the model, not runnable in PyTorch."""
    return OpDef(name=name, fn=onnx_opaque, bind=_opaque_bind(name.split(".", 1)[1]), infer=_no_inference,
                 extra={"opaque": True})


# ops whose results are not folded into constants (at import, export or by fold-constants): integer weights
KEEP_IN_EXPORT = {"DequantizeLinear"}

OPS = [OpDef(name=f"onnx.{op}", fn=kernel, bind=make_bind(kind),
             extra={"onnx_kernel": True, "keep_in_export": op in KEEP_IN_EXPORT})
       for op, (kernel, kind) in KERNELS.items()]
