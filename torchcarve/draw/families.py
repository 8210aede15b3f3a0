"""Op families for pictures: family -> op base names (`aten.add.Tensor` -> `add`, `onnx.Conv` -> `Conv`).

One table, read by `family_of`; entries ending in `*` are prefixes. Ops in no family are "other".
"""
from __future__ import annotations

FAMILIES: dict[str, set[str]] = {
    "linear": {"linear", "conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
               "conv_transpose3d", "matmul", "mm", "bmm", "addmm", "baddbmm", "einsum", "embedding",
               "Conv", "ConvTranspose", "Gemm", "MatMul"},
    "norm": {"batch_norm", "layer_norm", "group_norm", "rms_norm", "native_layer_norm",
             "_native_batch_norm_legit_no_training", "BatchNormalization", "LayerNormalization",
             "GroupNormalization", "InstanceNormalization", "RMSNormalization"},
    "attention": {"scaled_dot_product_attention", "multi_head_attention", "softmax", "_softmax", "log_softmax",
                  "_log_softmax", "Softmax", "LogSoftmax", "Attention"},
    "quant": {"quantize", "dequantize", "dynamic_linear", "weight_only_linear", "quantized_embedding",
              "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
              "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulNBits", "QLinear*"},
    "shape": {"view", "reshape", "_unsafe_view", "permute", "transpose", "t", "numpy_T", "flatten", "unflatten",
              "squeeze", "unsqueeze", "expand", "expand_as", "repeat", "cat", "stack", "split", "split_with_sizes",
              "chunk", "unbind", "slice", "select", "narrow", "index", "index_select", "gather", "movedim",
              "swapaxes", "swapdims", "contiguous", "clone", "alias", "detach", "pad", "constant_pad_nd",
              "pixel_shuffle", "roll", "unfold", "diagonal", "to", "_to_copy", "type_as",
              "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Concat", "Split", "Slice",
              "Shape", "Gather", "Tile", "Pad", "Identity", "Cast", "DepthToSpace", "SpaceToDepth"},
    "pool": {"max_pool1d", "max_pool2d", "max_pool2d_with_indices", "avg_pool1d", "avg_pool2d",
             "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d",
             "mean", "sum", "amax", "max", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
             "Reduce*"},
    "elementwise": {"add", "sub", "rsub", "mul", "div", "pow", "neg", "abs", "exp", "log", "sqrt", "rsqrt",
                    "reciprocal", "relu", "gelu", "silu", "sigmoid", "tanh", "elu", "leaky_relu", "hardswish",
                    "hardsigmoid", "hardtanh", "softplus", "clamp", "clamp_min", "clamp_max", "erf", "sin", "cos",
                    "floor", "ceil", "maximum", "minimum", "where", "masked_fill", "dropout", "feature_dropout",
                    "tril", "triu", "ge", "gt", "le", "lt", "eq", "ne",
                    "Add", "Sub", "Mul", "Div", "Pow", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "Relu",
                    "Gelu", "Sigmoid", "Tanh", "Erf", "Clip", "Where", "Max", "Min", "PRelu", "LeakyRelu",
                    "HardSigmoid", "HardSwish", "Softplus", "Elu", "Dropout"},
}

# family -> fill colour (the legend in docs/pictures.md and the HTML report read this too)
COLOURS: dict[str, str] = {
    "linear": "#9ecae1", "norm": "#fdd0a2", "attention": "#c7a4e0", "quant": "#f4a6a6",
    "shape": "#e5e5e5", "pool": "#c7e9c0", "elementwise": "#fff3b0", "other": "#ffffff",
}


def base_name(op: str) -> str:
    """`aten.add.Tensor` -> `add`, `carve.quantize` -> `quantize`, `onnx.Conv` -> `Conv`, `torch.call` -> `call`."""
    parts = op.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def family_of(op: str) -> str:
    """The family an op is drawn as ("linear", "norm", ...; "other" when no entry matches)."""
    name = base_name(op)
    for family, names in FAMILIES.items():
        if name in names or any(entry.endswith("*") and name.startswith(entry[:-1]) for entry in names):
            return family
    return "other"
