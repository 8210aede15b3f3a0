"""Shape inference: from the op's kernel on meta tensors, with symbolic dims kept symbolic."""
from __future__ import annotations

import pytest
import torch

import torchcarve as tc
from torchcarve.errors import ShapeError
from torchcarve.ir.infer import infer_types
from tests.models import MODELS


def T(*shape, dtype="f32"):
    return tc.TensorType(shape, dtype)


@pytest.mark.parametrize("op, attrs, inputs, expected", [
    ("aten.conv2d", {"padding": [1, 1]}, [T("batch", 3, 8, 8), T(16, 3, 3, 3)], [T("batch", 16, 8, 8)]),
    ("aten.linear", {}, [T("batch", "seq", 32), T(64, 32)], [T("batch", "seq", 64)]),
    ("aten.view", {"size": [-1, 12]}, [T("batch", 4, 6)], [T("batch*2", 12)]),
    ("aten.flatten.using_ints", {"start_dim": 1}, [T("batch", 4, 6)], [T("batch", 24)]),
    ("aten.cat", {"dim": 0}, [T("batch", 4), T("batch", 4)], [T("batch*2", 4)]),
    ("aten.add.Tensor", {}, [T("batch", 1, 4), T(3, 1)], [T("batch", 3, 4)]),
    ("aten.split.Tensor", {"split_size": 2, "dim": 1}, [T("batch", 4)], [T("batch", 2), T("batch", 2)]),
    ("aten.mean.dim", {"dim": [-1], "keepdim": True}, [T("batch", 5)], [T("batch", 1)]),
    ("aten.eq.Scalar", {"other": 0}, [T("batch", 5, dtype="i64")], [T("batch", 5, dtype="bool")]),
])
def test_inferred_types(op, attrs, inputs, expected):
    assert infer_types(op, attrs, inputs) == expected


def test_bad_shapes_are_shape_errors_naming_the_op():
    with pytest.raises(ShapeError, match="aten.linear"):
        infer_types("aten.linear", {}, [T(2, 3), T(4, 5)])


@pytest.mark.parametrize("name", ["mlp", "cnn_bn", "residual", "grouped_shuffle", "transformer_encoder"])
def test_dynamic_batch_capture_runs_at_another_batch_size(name):
    model, inputs = MODELS[name]()
    graph = tc.capture(model, inputs, dynamic_batch=True)
    assert graph.inputs[0].type.shape[0] == "batch"
    assert all(v.type.shape[0] == "batch" for v in graph.outputs)
    tc.verify(graph)
    bigger = tuple(torch.cat([x] * 3) for x in inputs)
    with torch.no_grad():
        expected, actual = model(*bigger), tc.to_torch(graph)(*bigger)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
