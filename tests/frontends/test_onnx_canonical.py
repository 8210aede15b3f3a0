"""ONNX imports become aten ops (frontends/onnx_canonical.py; quantization ops carve.* ones, onnx_quant.py):
per op, the IR uses that op and both backends match onnxruntime on the original model; near-misses keep
the ONNX op."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import torchcarve as tc

ort = pytest.importorskip("onnxruntime")

RTOL, ATOL = 1e-4, 1e-5
F32, I64 = TensorProto.FLOAT, TensorProto.INT64
RNG = np.random.default_rng(0)


def w(*shape: int, positive: bool = False) -> np.ndarray:
    """A float32 weight (positive: in [0.5, 1.5), e.g. a variance)."""
    data = RNG.uniform(0.5, 1.5, shape) if positive else RNG.standard_normal(shape)
    return data.astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def i8(*shape: int) -> np.ndarray:
    return RNG.integers(-128, 128, shape).astype(np.int8)


def u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, shape).astype(np.uint8)


def model(op: str, inputs: dict[str, tuple], params: dict[str, np.ndarray] | None = None, order: list[str] | None = None,
          outputs: int = 1, opset: int = 17, **attrs) -> onnx.ModelProto:
    """A one-node model: `inputs` name -> (shape, elem type); `order` the node's input names ('' omitted)."""
    params = params or {}
    order = order if order is not None else [*inputs, *params]
    names = [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op, order, names, **attrs)
    graph = helper.make_graph(
        [node], op.lower(), [helper.make_tensor_value_info(n, t, s) for n, (s, t) in inputs.items()],
        [helper.make_tensor_value_info(n, 0, None) for n in names],
        [numpy_helper.from_array(a, n) for n, a in params.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(proto)


def feeds_for(proto: onnx.ModelProto, positive: bool) -> dict[str, np.ndarray]:
    initializers = {i.name for i in proto.graph.initializer}
    feeds = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        shape = [d.dim_value or 2 for d in value.type.tensor_type.shape.dim]
        if value.type.tensor_type.elem_type == I64:
            feeds[value.name] = RNG.integers(0, 4, shape).astype(np.int64)
        else:
            feeds[value.name] = w(*shape, positive=positive)
    return feeds


def run_ort(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, dict(zip([i.name for i in session.get_inputs()], feeds.values())))


def assert_matches_ort(graph: tc.Graph, proto: onnx.ModelProto, positive: bool = False, export: bool = True) -> None:
    """The PyTorch backend and (export) the re-exported ONNX model both match onnxruntime on `proto`."""
    feeds = feeds_for(proto, positive)
    expected = run_ort(proto, feeds)
    with torch.no_grad():
        out = tc.to_torch(graph)(*[torch.from_numpy(x) for x in feeds.values()])
    actual = [out] if isinstance(out, torch.Tensor) else list(out)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a.numpy(), e, rtol=RTOL, atol=ATOL)
    if not export:
        return
    for a, e in zip(run_ort(tc.to_onnx(graph), feeds), expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=RTOL, atol=ATOL)


def ops(graph: tc.Graph) -> list[str]:
    return [n.op for n in graph.nodes if n.op != "param"]


X4 = {"x": ([1, 3, 8, 8], F32)}
X3 = {"x": ([2, 3, 4], F32)}
AB = {"a": ([2, 3], F32), "b": ([3], F32)}
BN = {"s": w(3), "b": w(3), "m": w(3), "v": w(3, positive=True)}

# case id -> (model, the aten ops of the imported graph, positive inputs)
MAPPED = {
    "conv2d": (model("Conv", X4, {"W": w(4, 3, 3, 3), "B": w(4)}, pads=[1, 1, 1, 1], strides=[2, 2]),
               ["aten.conv2d"], False),
    "conv1d-dilated": (model("Conv", {"x": ([1, 3, 10], F32)}, {"W": w(4, 3, 3)}, dilations=[2], pads=[2, 2]),
                       ["aten.conv1d"], False),
    "conv-grouped-valid": (model("Conv", {"x": ([1, 4, 8, 8], F32)}, {"W": w(4, 2, 3, 3)}, group=2,
                                 auto_pad="VALID"), ["aten.conv2d"], False),
    "conv-transpose": (model("ConvTranspose", {"x": ([1, 4, 5, 5], F32)}, {"W": w(4, 3, 3, 3), "B": w(3)},
                             strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
                       ["aten.conv_transpose2d.input"], False),
    "batch-norm": (model("BatchNormalization", {"x": ([2, 3, 4, 4], F32)}, BN, epsilon=1e-3),
                   ["aten.batch_norm"], False),
    "gemm-transB": (model("Gemm", {"x": ([2, 5], F32)}, {"W": w(3, 5), "C": w(3)}, transB=1), ["aten.linear"], False),
    "gemm-param-B": (model("Gemm", {"x": ([2, 5], F32)}, {"W": w(5, 3), "C": w(3)}), ["aten.linear"], False),
    "matmul": (model("MatMul", {"a": ([2, 3, 4], F32), "b": ([4, 5], F32)}), ["aten.matmul"], False),
    **{op.lower(): (model(op, AB), [target], op == "Pow") for op, target in (
        ("Add", "aten.add.Tensor"), ("Sub", "aten.sub.Tensor"), ("Mul", "aten.mul.Tensor"),
        ("Div", "aten.div.Tensor"), ("Pow", "aten.pow.Tensor_Tensor"))},
    "sum": (model("Sum", AB), ["aten.add.Tensor"], False),
    **{op.lower(): (model(op, X3), [target], op in ("Sqrt", "Log")) for op, target in (
        ("Relu", "aten.relu"), ("Sigmoid", "aten.sigmoid"), ("Tanh", "aten.tanh"), ("Erf", "aten.erf"),
        ("Sqrt", "aten.sqrt"), ("Exp", "aten.exp"), ("Log", "aten.log"), ("Neg", "aten.neg"),
        ("HardSwish", "aten.hardswish"), ("Softplus", "aten.softplus"))},
    "leaky-relu": (model("LeakyRelu", X3, alpha=0.2), ["aten.leaky_relu"], False),
    "hard-sigmoid": (model("HardSigmoid", X3, alpha=1 / 6, beta=0.5), ["aten.hardsigmoid"], False),
    "gelu-tanh": (model("Gelu", X3, opset=20, approximate="tanh"), ["aten.gelu"], False),
    "softmax": (model("Softmax", X3, opset=13, axis=1), ["aten.softmax.int"], False),
    "softmax-opset11-2d": (model("Softmax", {"x": ([2, 5], F32)}, opset=11, axis=1), ["aten.softmax.int"], False),
    "max-pool-ceil": (model("MaxPool", {"x": ([1, 2, 9, 9], F32)}, kernel_shape=[3, 3], strides=[2, 2],
                            pads=[1, 1, 1, 1], ceil_mode=1), ["aten.max_pool2d"], False),
    "max-pool-ceil-extra-window": (model("MaxPool", {"x": ([1, 2, 8, 8], F32)}, kernel_shape=[3, 3], strides=[2, 2],
                                         pads=[1, 1, 1, 1], ceil_mode=1), ["aten.max_pool2d"], False),
    "avg-pool-count-pad": (model("AveragePool", {"x": ([1, 2, 8, 8], F32)}, kernel_shape=[3, 3], strides=[2, 2],
                                 pads=[1, 1, 1, 1], count_include_pad=1), ["aten.avg_pool2d"], False),
    "avg-pool-exclude-pad": (model("AveragePool", {"x": ([1, 2, 8, 8], F32)}, kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1]), ["aten.avg_pool2d"], False),
    "global-avg-pool": (model("GlobalAveragePool", X4), ["aten.adaptive_avg_pool2d"], False),
    "concat": (model("Concat", {"a": ([2, 3], F32), "b": ([2, 4], F32)}, axis=1), ["aten.cat"], False),
    "flatten": (model("Flatten", X4), ["aten.flatten.using_ints"], False),
    "flatten-axis2": (model("Flatten", X4, axis=2), ["aten.reshape"], False),
    "transpose": (model("Transpose", X3, perm=[2, 0, 1]), ["aten.permute"], False),
    "reshape-zero": (model("Reshape", X3, {"shape": i64(0, -1)}), ["aten.reshape"], False),
    "unsqueeze": (model("Unsqueeze", X3, {"axes": i64(-1)}), ["aten.unsqueeze"], False),
    "unsqueeze-two": (model("Unsqueeze", X3, {"axes": i64(0, 3)}), ["aten.reshape"], False),
    "squeeze": (model("Squeeze", {"x": ([2, 1, 4], F32)}, {"axes": i64(1)}), ["aten.squeeze.dims"], False),
    "layer-norm": (model("LayerNormalization", X3, {"s": w(4), "b": w(4)}, epsilon=1e-3), ["aten.layer_norm"], False),
    "clip": (model("Clip", X3, {"lo": np.array(0.0, np.float32), "hi": np.array(0.5, np.float32)}), ["aten.clamp"],
             False),
    "reduce-mean": (model("ReduceMean", X3, axes=[1], keepdims=0), ["aten.mean.dim"], False),
    "reduce-mean-opset18": (model("ReduceMean", X3, {"axes": i64(-1)}, opset=18), ["aten.mean.dim"], False),
    "gather-embedding": (model("Gather", {"ids": ([2, 3], I64)}, {"E": w(4, 5)}, order=["E", "ids"]),
                         ["aten.embedding"], False),
    "split": (model("Split", X3, {"sizes": i64(1, 3)}, outputs=2, axis=2), ["aten.split_with_sizes"], False),
    "quantize-per-axis": (model("QuantizeLinear", X3, {"s": w(3, positive=True) / 50, "z": u8(3)}, axis=1, opset=13),
                          ["carve.quantize"], False),
    "quantize-int8-negative-axis": (model("QuantizeLinear", X3, {"s": w(4, positive=True) / 50, "z": i8(4)}, axis=-1,
                                          opset=13), ["carve.quantize"], False),
    "dequantize-per-axis": (model("DequantizeLinear", {}, {"q": i8(2, 3, 4), "s": w(3, positive=True), "z": i8(3)},
                                  axis=1, opset=13), ["carve.dequantize"], False),
    "dequantize-int32": (model("DequantizeLinear", {}, {"q": RNG.integers(-1000, 1000, 5).astype(np.int32),
                                                        "s": np.array(0.01, np.float32)}), ["carve.dequantize"], False),
}


@pytest.mark.parametrize("case", MAPPED)
def test_onnx_op_becomes_aten(case: str) -> None:
    proto, expected_ops, positive = MAPPED[case]
    graph = tc.from_onnx(proto)
    assert ops(graph) == expected_ops
    assert_matches_ort(graph, proto, positive)


def test_blocked_dequantize_becomes_carve_dequantize_and_exports_at_opset_21() -> None:
    """The IR keeps no opset: like the quantize pass's own int4 graphs, the graph is written at opset 21
    when asked or by default (a lower opset raises, naming the one it needs)."""
    proto = model("DequantizeLinear", {}, {"q": i8(4, 6), "s": w(4, 3, positive=True), "z": i8(4, 3)}, axis=1,
                  block_size=2, opset=21)
    graph = tc.from_onnx(proto)
    assert ops(graph) == ["carve.dequantize"]
    assert_matches_ort(graph, proto, export=False)
    np.testing.assert_allclose(run_ort(tc.to_onnx(graph, opset=21), {})[0], run_ort(proto, {})[0])
    assert tc.to_onnx(graph).opset_import[0].version == 21  # the default: the lowest opset the graph needs
    with pytest.raises(tc.CarveError, match="needs opset 21; opset 18 was asked"):
        tc.to_onnx(graph, opset=18)


def test_canonicalize_off_keeps_onnx_ops() -> None:
    graph = tc.from_onnx(MAPPED["conv2d"][0], canonicalize=False)
    assert ops(graph) == ["onnx.Conv"]


def chain(*nodes: onnx.NodeProto, shape: list[int], outputs: str = "y") -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "chain", [helper.make_tensor_value_info("x", F32, shape)],
                              [helper.make_tensor_value_info(outputs, F32, None)])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


@pytest.mark.parametrize("op", ["Identity", "Dropout"])
def test_identity_and_dropout_are_removed(op: str) -> None:
    proto = chain(helper.make_node(op, ["x"], ["t"]), helper.make_node("Relu", ["t"], ["y"]), shape=[2, 3])
    graph = tc.from_onnx(proto)
    assert ops(graph) == ["aten.relu"]
    assert_matches_ort(graph, proto)


def test_identity_producing_a_graph_output_stays_so_its_name_survives() -> None:
    proto = chain(helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Identity", ["t"], ["y"]), shape=[2, 3])
    graph = tc.from_onnx(proto)
    assert ops(graph) == ["aten.relu", "onnx.Identity"]
    assert [o.name for o in tc.to_onnx(graph).graph.output] == ["y"]


def test_value_names_survive_the_rewrite() -> None:
    graph = tc.from_onnx(MAPPED["conv2d"][0])
    assert [n.outputs[0].name for n in graph.nodes if n.op == "aten.conv2d"] == ["y0"]


# near-misses: attributes without an exact aten form keep the ONNX op
KEPT = {
    "conv-asymmetric-pads": (model("Conv", X4, {"W": w(4, 3, 3, 3)}, pads=[0, 0, 1, 1]), "onnx.Conv"),
    "conv-same-upper": (model("Conv", X4, {"W": w(4, 3, 3, 3)}, auto_pad="SAME_UPPER", strides=[2, 2]), "onnx.Conv"),
    "max-pool-asymmetric": (model("MaxPool", X4, kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
                            "onnx.MaxPool"),
    "avg-pool-same-lower": (model("AveragePool", X4, kernel_shape=[2, 2], auto_pad="SAME_LOWER"), "onnx.AveragePool"),
    "hard-sigmoid-default-alpha": (model("HardSigmoid", X3), "onnx.HardSigmoid"),
    "gemm-alpha": (model("Gemm", {"x": ([2, 5], F32)}, {"W": w(3, 5)}, transB=1, alpha=2.0), "onnx.Gemm"),
    "gemm-input-B": (model("Gemm", {"x": ([2, 5], F32), "W": ([5, 3], F32)}), "onnx.Gemm"),
    "integer-div": (model("Div", {"a": ([2, 3], I64)}, {"b": i64(2, 3, 4)}), "onnx.Div"),
    "gather-axis1": (model("Gather", {"ids": ([2], I64)}, {"E": w(4, 5)}, order=["E", "ids"], axis=1), "onnx.Gather"),
    "sum-of-three": (model("Sum", {"a": ([3], F32), "b": ([3], F32), "c": ([3], F32)}), "onnx.Sum"),
    "quantize-no-zero-point": (model("QuantizeLinear", X3, {"s": np.array(0.02, np.float32)}), "onnx.QuantizeLinear"),
    "quantize-blocked": (model("QuantizeLinear", {"x": ([4, 6], F32)}, {"s": w(4, 3, positive=True) / 50,
                                                                       "z": i8(4, 3)}, axis=1, block_size=2, opset=21),
                         "onnx.QuantizeLinear"),
}


@pytest.mark.parametrize("case", KEPT)
def test_near_miss_keeps_onnx_op(case: str) -> None:
    proto, kept = KEPT[case]
    graph = tc.from_onnx(proto)
    assert kept in ops(graph)
    assert_matches_ort(graph, proto)


def test_max_pool_whose_ceil_window_starts_in_the_padding_stays_onnx() -> None:
    """torch drops that window, ONNX before opset 19 keeps it: no exact aten form across opsets.
    (Not re-exported: onnx shape inference and onnxruntime disagree on this op's output size.)"""
    proto = model("MaxPool", {"x": ([1, 1, 2, 2], F32)}, opset=19, kernel_shape=[1, 1], strides=[2, 2], ceil_mode=1)
    graph = tc.from_onnx(proto)
    assert ops(graph) == ["onnx.MaxPool"]
    assert_matches_ort(graph, proto, export=False)


def test_reshape_to_a_shape_read_off_a_symbolic_input_becomes_a_symbolic_aten_reshape() -> None:
    graph = helper.make_graph(
        [helper.make_node("Shape", ["y"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["out"])], "dyn",
        [helper.make_tensor_value_info("x", F32, ["n", 2, 2]), helper.make_tensor_value_info("y", F32, ["n", 4])],
        [helper.make_tensor_value_info("out", F32, ["n", 4])])
    proto = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    imported = tc.from_onnx(proto)
    reshape = next(n for n in imported.nodes if n.op == "aten.reshape")
    assert [str(d) for d in reshape.attrs["shape"]] == ["n", "4"] and "onnx.Reshape" not in ops(imported)
    x, y = torch.randn(3, 2, 2), torch.randn(3, 4)
    torch.testing.assert_close(tc.to_torch(imported)(x, y), x.reshape(3, 4))


def test_fuse_folds_batch_norm_of_an_onnx_model(tmp_path) -> None:
    """A conv+BN CNN written as ONNX: after import, fuse folds both BNs and the result matches ORT."""
    from tests.models import MODELS

    net, inputs = MODELS["cnn_bn"]()
    path = tmp_path / "cnn_bn.onnx"
    tc.to_onnx(tc.capture(net, inputs), path)
    proto = onnx.load(str(path))
    graph = tc.from_onnx(proto)
    assert not [op for op in ops(graph) if op.startswith("onnx.")]
    fused = tc.optimize(graph, "fuse").graph
    assert len(ops(fused)) < len(ops(graph)) and "aten.batch_norm" not in ops(fused)
    assert_matches_ort(fused, proto)


LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


@pytest.mark.skipif(not os.path.exists(os.path.join(LIGHT, "light_shufflenet.onnx")), reason="onnx light models")
def test_light_shufflenet_is_all_aten_and_fuse_shrinks_it() -> None:
    """shufflenet (the smallest light model with BN): every op maps, fuse removes nodes, outputs match ORT."""
    proto = onnx.load(os.path.join(LIGHT, "light_shufflenet.onnx"))
    graph = tc.from_onnx(proto)
    assert not [op for op in ops(graph) if op.startswith("onnx.")]
    fused = tc.optimize(graph, "fuse").graph
    assert len(ops(fused)) < len(ops(graph))
    assert_matches_ort(fused, proto)



def test_prune_applies_to_an_onnx_model_as_to_the_captured_one(tmp_path) -> None:
    from tests.models import MODELS

    net, inputs = MODELS["mlp"]()
    captured = tc.capture(net, inputs)
    tc.to_onnx(captured, tmp_path / "mlp.onnx")
    imported = tc.from_onnx(tmp_path / "mlp.onnx")
    pipeline = "prune{ratio=0.5}"
    [ours], [theirs] = tc.optimize(imported, pipeline).report, tc.optimize(captured, pipeline).report
    assert ours.stats["pruned"] == theirs.stats["pruned"] == 2
    assert ours.stats["macs"] == theirs.stats["macs"]
