"""Resource bombs: tiny ONNX files that ask for huge tensors import within a memory cap, or are CarveErrors.

Each file is imported in a child process whose address space is capped at MEMORY_MB above what it
had mapped (sandbox.run_isolated): materializing the bomb would not fit, so 'ok' proves it was left
as an op, and the case function checks no param grew large.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import torchcarve as tc
from torchcarve.frontends import onnx_limits
from torchcarve.frontends.onnx_limits import DATA_PROP_LIMIT, FOLD_LIMIT, MAX_ELEMENTS

from .onnx_models import const, model, tensor_info
from .sandbox import run_isolated

MEMORY_MB = 600     # a float32 tensor of 2.5e8 elements needs 1000 MB
TIMEOUT_S = 120     # generous: a bomb that is evaluated takes minutes or dies, a guarded one a second
BIG = 250_000_000


def constant_of_shape(n: int) -> onnx.ModelProto:
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["y"])]
    return model(nodes, [], [tensor_info("y", shape=[n])], [const("shape", [n])])


def tile(n: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Tile", ["x", "repeats"], ["y"])]
    inits = [const("x", np.ones(10), np.float32), const("repeats", [n // 10])]
    return model(nodes, [], [tensor_info("y", shape=[n])], inits)


def expand(n: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Expand", ["x", "shape"], ["y"])]
    return model(nodes, [], [tensor_info("y", shape=[n])], [const("x", [1.0], np.float32), const("shape", [n])])


def pad(n: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Pad", ["x", "pads"], ["y"])]
    return model(nodes, [], [tensor_info("y", shape=[n + 1])], [const("x", [1.0], np.float32), const("pads", [0, n])])


def resize(n: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")]
    side = int(n ** 0.5)
    inits = [const("x", np.ones((1, 1, 1, 1)), np.float32), const("scales", [1.0, 1.0, side, side], np.float32)]
    return model(nodes, [], [tensor_info("y", shape=[1, 1, side, side])], inits)


def range_cast(n: int) -> onnx.ModelProto:
    """Range(0, n) into Cast: onnx data propagation would build the n values as a shape."""
    nodes = [helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
             helper.make_node("Cast", ["r"], ["y"], to=TensorProto.INT64)]
    inits = [const("start", 0), const("limit", n), const("delta", 1)]
    return model(nodes, [], [tensor_info("y", TensorProto.INT64, [n])], inits)


def range_of_input_dim(n: int) -> onnx.ModelProto:
    """Range(0, Shape(x)[0]) into Cast for an input declared [n]: only data propagation knows the limit."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "zero"], ["limit"], axis=0),
             helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
             helper.make_node("Add", ["r", "r"], ["y"])]
    inits = [const("zero", 0), const("start", 0), const("delta", 1)]
    return model(nodes, [tensor_info("x", shape=[n])], [tensor_info("y", TensorProto.INT64, [n])], inits)


LEFT_AS_OPS = {"constant_of_shape": constant_of_shape, "tile": tile, "expand": expand, "pad": pad,
               "resize": resize, "range_cast": range_cast, "range_of_input_dim": range_of_input_dim}


@pytest.mark.parametrize("name", sorted(LEFT_AS_OPS))
def test_bomb_is_left_as_an_op_within_the_memory_cap(name: str) -> None:
    payload = LEFT_AS_OPS[name](BIG).SerializeToString()
    assert len(payload) < 500  # a few hundred bytes asking for a gigabyte
    outcome, detail = run_isolated("tests.security.onnx_models:left_unfolded", payload, TIMEOUT_S, MEMORY_MB)
    assert outcome == "ok", detail


@pytest.mark.parametrize("build", [constant_of_shape, tile, expand])
def test_bomb_over_max_elements_is_a_carve_error(build) -> None:
    payload = build(100_000_000_000).SerializeToString()
    outcome, detail = run_isolated("tests.security.onnx_models:import_only", payload, TIMEOUT_S, MEMORY_MB)
    assert outcome == "carve_error", detail
    assert "over the limit" in detail and "elements" in detail


def test_max_elements_keyword_moves_the_limit() -> None:
    small = constant_of_shape(1000)
    assert tc.from_onnx(small).outputs[0].type.shape == (1000,)
    with pytest.raises(tc.CarveError, match="over the limit of 999"):
        tc.from_onnx(small, max_elements=999)


def test_small_constants_are_still_folded() -> None:
    graph = tc.from_onnx(constant_of_shape(1000))
    assert [n.op for n in graph.nodes] == ["param"]
    assert graph.params[graph.nodes[0].attrs["name"]].shape == (1000,)


def test_fold_limit_is_the_boundary() -> None:
    at, over = tc.from_onnx(expand(FOLD_LIMIT)), tc.from_onnx(expand(FOLD_LIMIT + 1))
    assert [n.op for n in at.nodes] == ["param"]
    assert "onnx.Expand" in [n.op for n in over.nodes]


@pytest.mark.parametrize("build, size, propagates", [
    (range_cast, DATA_PROP_LIMIT, True),
    (range_cast, DATA_PROP_LIMIT + 1, False),
    (range_of_input_dim, 100, False),  # a length only data propagation could tell: not run (conservative)
])
def test_data_propagation_runs_only_for_small_static_ranges(build, size: int, propagates: bool) -> None:
    first_pass = onnx.shape_inference.infer_shapes(build(size), data_prop=False)
    assert onnx_limits._ranges_small(first_pass) is propagates
    assert tc.from_onnx(build(size)).outputs[0].type.shape == (size,)


def test_huge_initializer_dims_are_a_carve_error() -> None:
    tensor = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**62, 4], raw_data=b"\0" * 16)
    nodes = [helper.make_node("Relu", ["w"], ["y"])]
    with pytest.raises(tc.CarveError, match="w"):
        tc.from_onnx(model(nodes, [], [tensor_info("y", shape=[2**62, 4])], [tensor]))


def test_huge_declared_input_is_a_carve_error() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    with pytest.raises(tc.CarveError, match=f"over the limit of {MAX_ELEMENTS}"):
        tc.from_onnx(model(nodes, [tensor_info("x", shape=[2**40, 2**40])], [tensor_info("y", shape=[2**40, 2**40])]))
