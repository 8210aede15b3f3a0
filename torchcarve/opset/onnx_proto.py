"""ONNX protobuf helpers shared by the ONNX frontend, the backend and the lowering rules (a leaf: it
imports only onnx, torch and ir types)."""
from __future__ import annotations

import onnx
import torch
from onnx import TensorProto, helper

from ..ir.types import TensorType

ONNX_DTYPES: dict[str, int] = {
    "f32": TensorProto.FLOAT, "f16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16,
    "f64": TensorProto.DOUBLE, "i64": TensorProto.INT64, "i32": TensorProto.INT32, "i16": TensorProto.INT16,
    "i8": TensorProto.INT8, "u8": TensorProto.UINT8, "u16": TensorProto.UINT16, "u32": TensorProto.UINT32,
    "u64": TensorProto.UINT64, "bool": TensorProto.BOOL,
    "c64": TensorProto.COMPLEX64, "c128": TensorProto.COMPLEX128,
}
ONNX_TO_DTYPE: dict[int, str] = {v: k for k, v in ONNX_DTYPES.items()}
TORCH_TO_ONNX: dict[torch.dtype, int] = {TensorType((), k).torch_dtype: v for k, v in ONNX_DTYPES.items()}


def tensor_proto(name: str, tensor: torch.Tensor) -> onnx.TensorProto:
    """An initializer from any tensor (raw little-endian bytes, so bf16 and bool work too)."""
    tensor = tensor.detach().cpu().contiguous()
    raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
    return helper.make_tensor(name, TORCH_TO_ONNX[tensor.dtype], list(tensor.shape), raw, raw=True)


def value_info(name: str, type: TensorType) -> onnx.ValueInfoProto:
    """A typed value; symbolic dims ("batch", "batch*12") become dim_params."""
    return helper.make_tensor_value_info(name, ONNX_DTYPES[type.dtype], list(type.shape))


def subgraph_defines(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph defines itself: inputs, initializers, node outputs."""
    return {*(i.name for i in graph.input), *(i.name for i in graph.initializer),
            *(o for n in graph.node for o in n.output)}
