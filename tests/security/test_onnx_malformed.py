"""Malformed ONNX files: each is a CarveError naming what is wrong, never a raw exception."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import torchcarve as tc
from torchcarve.errors import CarveError, FileFormatError

from .onnx_models import const, custom, mlp, model, tensor_info


def concat_of_constants(axis: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Concat", ["a", "b"], ["y"], name="cat", axis=axis)]
    return model(nodes, [], [tensor_info("y", TensorProto.INT64, [4])], [const("a", [1, 2]), const("b", [3, 4])])


def relu_of(tensor: onnx.TensorProto, shape: list | None = None) -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", [tensor.name], ["y"], name="relu")]
    return model(nodes, [], [tensor_info("y", tensor.data_type, shape or list(tensor.dims))], [tensor])


def with_initializer_change(change) -> onnx.ModelProto:
    tensor = const("w", np.ones(4), np.float32)
    change(tensor)
    return relu_of(tensor)


def two_producers() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])]
    return model(nodes, [tensor_info("x", shape=[2])], [tensor_info("y", shape=[2])])


def missing_input() -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"])]
    return model(nodes, [tensor_info("x", shape=[2])], [tensor_info("y", shape=[2])])


def softmax_axis(axis: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=axis)]
    return model(nodes, [tensor_info("x", shape=[2, 3])], [tensor_info("y", shape=[2, 3])])


def constant_of_shape_negative() -> onnx.ModelProto:
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["y"], name="cos")]
    return model(nodes, [], [tensor_info("y", shape=[3])], [const("shape", [-3])])


def range_zero_delta() -> onnx.ModelProto:
    nodes = [helper.make_node("Range", ["a", "b", "c"], ["y"], name="rng")]
    return model(nodes, [], [tensor_info("y", TensorProto.INT64, [3])], [const("a", 0), const("b", 3), const("c", 0)])


def negative_value_info_dim() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    return model(nodes, [tensor_info("x", shape=[-2, 3])], [tensor_info("y", shape=[-2, 3])])


def input_and_initializer_clash() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["w"], ["y"])]
    return model(nodes, [tensor_info("w", shape=[4])], [tensor_info("y", shape=[4])],
                 [const("w", np.ones(4), np.float32)])


def duplicate_initializers() -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["w", "w"], ["y"])]
    return model(nodes, [], [tensor_info("y", shape=[4])], [const("w", np.ones(4), np.float32),
                                                            const("w", np.zeros(4), np.float32)])


def constant_without_value() -> onnx.ModelProto:
    nodes = [helper.make_node("Constant", [], ["c"], name="k"), helper.make_node("Relu", ["c"], ["y"])]
    return model(nodes, [], [tensor_info("y", shape=[1])])


def nbits_with_wrong_attribute_types() -> onnx.ModelProto:
    nodes = [helper.make_node("MatMulNBits", ["x", "b", "s"], ["y"], name="nb", domain="com.microsoft",
                              K="sixteen", N=[2], bits=4.5, block_size=16)]
    inits = [const("b", np.zeros((2, 1, 8)), np.uint8), const("s", np.ones(2), np.float32)]
    return model(nodes, [tensor_info("x", shape=[1, 16])], [tensor_info("y", shape=[1, 2])], inits,
                 {"com.microsoft": 1})


def _set(field: str, value):
    def change(tensor: onnx.TensorProto) -> None:
        if field == "dims":
            del tensor.dims[:]
            tensor.dims.extend(value)
        else:
            setattr(tensor, field, value)
    return change


MALFORMED = {
    "concat_axis_2_62": lambda: concat_of_constants(2**62),
    "concat_axis_out_of_range": lambda: concat_of_constants(3),
    "initializer_more_data_than_dims": lambda: with_initializer_change(_set("dims", [2])),
    "initializer_less_data_than_dims": lambda: with_initializer_change(_set("dims", [8])),
    "initializer_raw_data_cut": lambda: with_initializer_change(_set("raw_data", b"\0" * 7)),
    "initializer_negative_dim": lambda: with_initializer_change(_set("dims", [-4])),
    "initializer_unknown_dtype": lambda: with_initializer_change(_set("data_type", 999)),
    "initializer_string_dtype": lambda: with_initializer_change(_set("data_type", TensorProto.STRING)),
    "initializer_external_data": lambda: with_initializer_change(_set("data_location", TensorProto.EXTERNAL)),
    "softmax_axis_out_of_range": lambda: softmax_axis(7),
    "constant_of_shape_negative": constant_of_shape_negative,
    "range_zero_delta": range_zero_delta,
    "negative_value_info_dim": negative_value_info_dim,
    "two_producers": two_producers,
    "missing_input": missing_input,
    "duplicate_initializers": duplicate_initializers,
    "constant_without_value": constant_without_value,
    "custom_op_attribute_types": nbits_with_wrong_attribute_types,
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_file_is_a_carve_error(name: str) -> None:
    with pytest.raises(CarveError) as error:
        tc.from_onnx(MALFORMED[name]())
    assert str(error.value).strip()


def test_fold_failure_names_the_node() -> None:
    with pytest.raises(CarveError, match="Concat node 'cat'"):
        tc.from_onnx(concat_of_constants(2**62))


def test_initializer_data_mismatch_names_the_tensor() -> None:
    with pytest.raises(FileFormatError, match="tensor 'w'.*data does not match"):
        tc.from_onnx(with_initializer_change(_set("dims", [2])))


def test_input_that_is_also_an_initializer_imports_as_the_constant() -> None:
    graph = tc.from_onnx(input_and_initializer_clash())
    assert graph.inputs == [] and [n.op for n in graph.nodes] == ["param"]


@pytest.mark.parametrize("cut", [0, 1, 10, 60])
def test_truncated_file_is_a_file_format_error(tmp_path, cut: int) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(mlp().SerializeToString()[:cut])
    with pytest.raises(FileFormatError):
        tc.from_onnx(path)


# ---- attribute keys and op names ----------------------------------------------------------

def custom_with_attribute(key: str) -> onnx.ModelProto:
    proto = custom()
    proto.graph.node[0].attribute.append(helper.make_attribute(key, 0))
    return proto


@pytest.mark.parametrize("key", ["if", "a.b", "x_=0, **{str(__import__('os').system('touch F')):0}, y_",
                                 "x\n%y = aten.relu(%x)", "match", "absent", "outputs", "captures", "1x"])
def test_custom_domain_attribute_key_that_is_not_a_plain_name_is_rejected(key: str) -> None:
    with pytest.raises(FileFormatError, match="unknown attribute") as error:
        tc.from_onnx(custom_with_attribute(key))
    assert "MatMulIntegerToFloat" in str(error.value) and repr(key) in str(error.value)


def test_custom_domain_attribute_key_that_is_a_plain_name_is_kept() -> None:
    graph = tc.from_onnx(custom_with_attribute("extra_option"))
    node = next(n for n in graph.nodes if n.op != "param")
    assert node.attrs["extra_option"] == 0


def test_default_domain_attribute_key_outside_the_schema_is_rejected() -> None:
    proto = mlp()
    proto.graph.node[2].attribute.append(helper.make_attribute("alpha", 0.5))  # Relu has no attributes
    with pytest.raises(FileFormatError, match="alpha"):
        tc.from_onnx(proto)


def test_schema_check_sees_keys_the_checker_lets_through() -> None:
    """The key check on its own (the checker rejects this too, for top-level default-domain nodes)."""
    from torchcarve.frontends.onnx_limits import check_node

    relu = helper.make_node("Relu", ["x"], ["y"])
    relu.attribute.append(helper.make_attribute("bogus", 1))
    with pytest.raises(FileFormatError, match="'bogus'"):
        check_node(relu, {"": 18})


@pytest.mark.parametrize("op_type", ["Relu\n%z = aten.from_file()", "My Op", "Op\"", "Relu x"])
def test_op_type_that_is_not_an_identifier_is_rejected(op_type: str) -> None:
    proto = custom()
    proto.graph.node[0].op_type = op_type
    with pytest.raises(FileFormatError, match="op type"):
        tc.from_onnx(proto)


def test_op_of_another_domain_reusing_a_known_name_is_rejected() -> None:
    proto = custom()
    proto.graph.node[0].op_type = "TopK"
    with pytest.raises(CarveError, match="TopK in domain 'com.microsoft'"):
        tc.from_onnx(proto)


def test_canonical_rule_failure_is_a_carve_error_naming_the_node(monkeypatch) -> None:
    from torchcarve.frontends import onnx_canonical

    def broken(node, graph):
        raise KeyError("axis")

    monkeypatch.setitem(onnx_canonical.CANONICAL, "Relu", broken)
    with pytest.raises(CarveError, match="canonicalizing onnx.Relu node 'r'.*KeyError"):
        tc.from_onnx(mlp())
