"""Small ONNX models for the security tests, and the case functions their child processes run."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

import torchcarve as tc


def model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
          initializers: list[onnx.TensorProto] = (), opsets: dict[str, int] | None = None) -> onnx.ModelProto:
    """A model at opset 18 (plus `opsets`, e.g. {"com.microsoft": 1}); never checked here."""
    graph = helper.make_graph(nodes, "m", inputs, outputs, initializer=list(initializers))
    imports = [helper.make_opsetid(domain, version) for domain, version in {"": 18, **(opsets or {})}.items()]
    return helper.make_model(graph, opset_imports=imports, ir_version=9)


def tensor_info(name: str, dtype: int = TensorProto.FLOAT, shape: list | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def const(name: str, values, dtype=np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def mlp() -> onnx.ModelProto:
    """MatMul + Add + Relu + Softmax on [batch, 4]."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=-1)]
    inits = [const("w", rng.standard_normal((4, 3)), np.float32), const("b", rng.standard_normal(3), np.float32)]
    return model(nodes, [tensor_info("x", shape=["batch", 4])], [tensor_info("y", shape=["batch", 3])], inits)


def conv() -> onnx.ModelProto:
    """Conv + BatchNormalization + Relu + MaxPool + Flatten + Gemm on [1, 2, 6, 6]."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("BatchNormalization", ["c", "s", "o", "mean", "var"], ["n"], epsilon=1e-5),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], transB=1)]
    inits = [const("cw", rng.standard_normal((3, 2, 3, 3)), np.float32), const("cb", np.zeros(3), np.float32),
             const("s", np.ones(3), np.float32), const("o", np.zeros(3), np.float32),
             const("mean", np.zeros(3), np.float32), const("var", np.ones(3), np.float32),
             const("gw", rng.standard_normal((5, 27)), np.float32), const("gb", np.zeros(5), np.float32)]
    return model(nodes, [tensor_info("x", shape=[1, 2, 6, 6])], [tensor_info("y", shape=[1, 5])], inits)


def shapes() -> onnx.ModelProto:
    """Shape arithmetic on constants and inputs: Shape, Gather, Concat, Reshape, ConstantOfShape, Range, Tile."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["flat"]),
             helper.make_node("ConstantOfShape", ["three"], ["ones"],
                              value=numpy_helper.from_array(np.ones(1, np.float32))),
             helper.make_node("Range", ["r0", "r1", "r2"], ["idx"]),
             helper.make_node("Cast", ["idx"], ["fidx"], to=TensorProto.FLOAT),
             helper.make_node("Tile", ["fidx", "rep"], ["tiled"]),
             helper.make_node("Add", ["ones", "tiled"], ["bias"]),
             helper.make_node("Mul", ["flat", "bias"], ["y"])]
    inits = [const("zero", 0), const("zero1", [0]), const("minus1", [-1]), const("three", [6]),
             const("r0", 0), const("r1", 3), const("r2", 1), const("rep", [2])]
    return model(nodes, [tensor_info("x", shape=[2, 2, 3])], [tensor_info("y", shape=[2, 6])], inits)


def custom() -> onnx.ModelProto:
    """A com.microsoft MatMulIntegerToFloat between uint8 inputs."""
    nodes = [helper.make_node("MatMulIntegerToFloat", ["a", "b", "sa", "sb"], ["z"], domain="com.microsoft")]
    inits = [const("b", np.arange(6).reshape(3, 2), np.uint8), const("sa", 0.5, np.float32),
             const("sb", 0.25, np.float32)]
    return model(nodes, [tensor_info("a", TensorProto.UINT8, [2, 3])], [tensor_info("z", shape=[2, 2])], inits,
                 {"com.microsoft": 1})


SEEDS = {"mlp": mlp, "conv": conv, "shapes": shapes, "custom": custom}


# ---- case functions (run in a child by sandbox.run_isolated; the payload is a serialized model) ----

def _import_payload(payload: bytes) -> tc.Graph:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.onnx")
        with open(path, "wb") as file:
            file.write(payload)
        return tc.from_onnx(path)


def import_only(payload: bytes) -> None:
    """tc.from_onnx of the bytes."""
    _import_payload(payload)


def import_export_run(payload: bytes) -> None:
    """tc.from_onnx, then tc.to_onnx and the PyTorch module run on a tiny input (symbolic dims as 1)."""
    graph = _import_payload(payload)
    with tempfile.TemporaryDirectory() as folder:
        tc.to_onnx(graph, os.path.join(folder, "out.onnx"))
    inputs = [_tiny_input(value.type) for value in graph.inputs]
    with torch.no_grad():
        tc.to_torch(graph)(*inputs)


def _tiny_input(type: tc.TensorType) -> torch.Tensor:
    shape = [d if isinstance(d, int) else 1 for d in type.shape]
    if type.torch_dtype.is_floating_point:
        return torch.randn(shape).to(type.torch_dtype)
    if type.torch_dtype == torch.bool:
        return torch.ones(shape, dtype=torch.bool)
    return torch.ones(shape, dtype=type.torch_dtype)


def left_unfolded(payload: bytes) -> None:
    """Import succeeds and the big op stays an op: no param holds more than 1M elements."""
    graph = _import_payload(payload)
    sizes = {name: graph.params[name].numel() for name in graph.params}
    assert all(size <= 1 << 20 for size in sizes.values()), sizes
