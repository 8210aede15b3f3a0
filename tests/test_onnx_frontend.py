"""ONNX frontend: ONNX -> IR -> ONNX and ONNX -> IR -> PyTorch match onnxruntime on the original."""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import torchcarve as tc
from torchcarve.errors import FileFormatError

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def run_ort(model: onnx.ModelProto | str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    source = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, dict(zip([i.name for i in session.get_inputs()], inputs)))


def run_torch(graph: tc.Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = tc.to_torch(graph)(*[torch.from_numpy(x) for x in inputs])
    return [o.numpy() for o in ([out] if isinstance(out, torch.Tensor) else out)]


def assert_close(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5 * (float(np.abs(e).max()) or 1.0))


@pytest.mark.parametrize("name", ["light_squeezenet", "light_inception_v1"])
def test_light_models_round_trip(name: str) -> None:
    path = os.path.join(LIGHT, f"{name}.onnx")
    before = open(path, "rb").read()
    graph = tc.from_onnx(path)
    inputs = [np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)]
    expected = run_ort(path, inputs)
    assert_close(run_ort(tc.to_onnx(graph), inputs), expected)
    assert_close(run_torch(graph, inputs), expected)
    assert open(path, "rb").read() == before  # input never modified


def tiny_model(nodes: list, inputs: list, outputs: list, initializers: list = (), opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_shape_subgraph_is_folded_and_text_round_trips() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "two"], ["s2"]),
             helper.make_node("Concat", ["s2", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Softmax", ["r"], ["y"], axis=-1)]
    inits = [helper.make_tensor("zero", TensorProto.INT64, [1], [0]), helper.make_tensor("two", TensorProto.INT64, [1], [2]),
             helper.make_tensor("minus1", TensorProto.INT64, [1], [-1])]
    model = tiny_model(nodes, [x], [y], inits)
    raw = tc.from_onnx(model, canonicalize=False)
    assert raw.op_histogram() == {"onnx.Reshape": 1, "onnx.Softmax": 1}
    assert [n.attrs for n in raw.nodes if n.op == "onnx.Reshape"] == [{"shape": [2, 3, -1]}]
    data = [np.random.rand(2, 3, 4).astype(np.float32)]
    for graph in (raw, tc.from_onnx(model)):
        text = graph.to_text()
        assert tc.parse(text, params=graph.params).to_text() == text
        assert_close(run_ort(tc.to_onnx(graph), data), run_ort(model, data))
        assert_close(run_torch(graph, data), run_ort(model, data))


def test_old_opset_attribute_forms_are_normalised() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 2])
    nodes = [helper.make_node("Squeeze", ["x"], ["sq"], axes=[1]),
             helper.make_node("Split", ["sq"], ["a", "b"], axis=1, split=[2, 4]),
             helper.make_node("ReduceSum", ["b"], ["y"], axes=[1], keepdims=0),
             helper.make_node("Unsqueeze", ["a"], ["z"], axes=[0])]
    model = tiny_model(nodes, [x], [y, z], opset=11)
    graph = tc.from_onnx(model)
    data = [np.random.rand(2, 1, 6).astype(np.float32)]
    exported = tc.to_onnx(graph)
    assert exported.opset_import[0].version == 18
    assert_close(run_ort(exported, data), run_ort(model, data))
    assert_close(run_torch(graph, data), run_ort(model, data))


def test_unknown_ops_stay_opaque_round_trip_and_fail_in_torch() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("FastGelu", ["r"], ["y"], domain="com.microsoft")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    graph = tc.from_onnx(model)
    assert "onnx.FastGelu" in graph.op_histogram()
    text = graph.to_text()
    assert tc.parse(text, params=graph.params).to_text() == text
    exported = tc.to_onnx(graph)
    assert [(n.op_type, n.domain) for n in exported.graph.node] == [("Relu", ""), ("FastGelu", "com.microsoft")]
    data = [np.random.randn(2, 3).astype(np.float32)]
    assert_close(run_ort(exported, data), run_ort(model, data))
    with pytest.raises(tc.UnsupportedOpError, match="onnx.FastGelu"):
        run_torch(graph, data)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(FileFormatError, match="no such file"):
        tc.from_onnx(tmp_path / "absent.onnx")


def test_garbage_and_truncated_files(tmp_path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a protobuf at all\x12\x34" * 10)
    with pytest.raises(FileFormatError):
        tc.from_onnx(garbage)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(open(os.path.join(LIGHT, "light_squeezenet.onnx"), "rb").read()[:200])
    with pytest.raises(FileFormatError):
        tc.from_onnx(truncated)


def test_missing_initializer_cycle_and_wrong_types_are_named() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    missing = tiny_model([helper.make_node("Add", ["x", "w"], ["y"])], [x], [y])
    with pytest.raises(FileFormatError, match="w"):
        tc.from_onnx(missing)
    cyclic = tiny_model([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                         helper.make_node("Identity", ["a"], ["y"])], [x], [y])
    with pytest.raises(FileFormatError, match="topologically sorted|b"):
        tc.from_onnx(cyclic)
    i = helper.make_tensor_value_info("i", TensorProto.INT64, [2])
    wrong = tiny_model([helper.make_node("Add", ["x", "i"], ["y"])], [x, i], [y])
    with pytest.raises(FileFormatError):
        tc.from_onnx(wrong)


def test_if_whose_branches_read_outer_values_round_trips() -> None:
    """Control flow stays opaque with its subgraphs; the outer values they read follow renames."""
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])
    then = helper.make_graph([helper.make_node("Add", ["x.1", "x.1"], ["out"])], "then", [], [out])
    other = helper.make_graph([helper.make_node("Neg", ["x.1"], ["out"])], "else", [], [out])
    nodes = [helper.make_node("Relu", ["x"], ["x.1"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    graph = helper.make_graph(
        nodes, "cf", [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
               helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    g = tc.from_onnx(model)
    assert tc.parse(g.to_text(), params=g.params).to_text() == g.to_text()
    x = np.array([-1.0, 2.0], dtype=np.float32)
    for c in (np.array(True), np.array(False)):
        np.testing.assert_allclose(run_ort(tc.to_onnx(g), [c, x])[0], run_ort(model, [c, x])[0])
