"""TensorType: shapes with symbolic dims, canonical products, dtypes."""
from __future__ import annotations

import pytest
import torch

import torchcarve as tc
from torchcarve.ir.types import concrete_dim, dim_symbols, dtype_name, normalize_dim


def test_str_and_properties_of_a_symbolic_type():
    t = tc.TensorType(("batch", 3, 32, 32), "f32")
    assert str(t) == "f32[batch,3,32,32]"
    assert t.rank == 4
    assert not t.is_static
    assert t.symbols == {"batch"}
    assert t.torch_dtype is torch.float32
    assert t.numel({"batch": 2}) == 2 * 3 * 32 * 32
    assert t.numel() == 3 * 32 * 32  # unknown symbols count as 1


def test_products_are_canonical_so_equal_dims_compare_equal():
    assert normalize_dim("12*seq*batch") == "batch*seq*12"
    assert normalize_dim("2*3") == 6
    assert normalize_dim("batch*1") == "batch"
    assert normalize_dim("batch*0") == 0
    assert tc.TensorType(("seq*batch",)) == tc.TensorType(("batch*seq",))
    assert dim_symbols("batch*seq*2") == ["batch", "seq"]
    assert concrete_dim("batch*4", {"batch": 3}) == 12


def test_static_type_of_a_tensor():
    t = tc.TensorType.of(torch.zeros(2, 5, dtype=torch.int64))
    assert t == tc.TensorType((2, 5), "i64")
    assert t.is_static and t.itemsize == 8


def test_unsupported_dtype_is_a_carve_error():
    with pytest.raises(tc.CarveError, match="not supported"):
        dtype_name(torch.float8_e4m3fn)
