"""IR text may name only pure tensor ops; shape inference and verification run only on meta tensors."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

import torchcarve as tc
from torchcarve.cli import main as carve
from torchcarve.ir.infer import infer_types
from torchcarve.ir import ops
from torchcarve.ir.ops import OpDef, get_op
from torchcarve.ir.ops.allow import disallowed_reason
from torchcarve.ir.ops.aten import resolve_overload
from torchcarve.opset import CATALOG
from tests.security.sandbox import run_isolated


def from_file_text(target: Path) -> str:
    return textwrap.dedent(f'''\
        graph @g(%x: f32[2]) -> (u8[64]) {{
          %f = aten.from_file() {{filename="{target}", shared=true, size=64, dtype=u8}} : u8[64]
          return %f
        }}
    ''')


def test_from_file_in_ir_text_is_rejected_and_never_touches_the_file(tmp_path):
    target = tmp_path / "created_by_parse"
    with pytest.raises(tc.ParseError) as info:
        tc.parse(from_file_text(target))
    assert str(info.value).startswith("2:8:") and "aten.from_file" in str(info.value)
    assert not target.exists()


def test_from_file_in_a_saved_graph_fails_load_and_show_without_creating_the_file(tmp_path, capsys):
    target = tmp_path / "created_by_load"
    saved = tmp_path / "evil.carve"
    saved.mkdir()
    (saved / "graph.ir").write_text(from_file_text(target))
    with pytest.raises(tc.CarveError, match="from_file"):
        tc.load(saved)
    assert carve(["show", str(saved)]) == 1
    assert "aten.from_file" in capsys.readouterr().err
    assert not target.exists()


@pytest.mark.parametrize("op, attrs, reason", [
    ("aten.fill_.Scalar", "{value=1.0}", "is written in place"),
    ("aten.relu_", "", "is written in place"),
    ("aten.add.out", "{out=none}", "is written in place"),
    ("aten.save", "", "unknown op|not allowed"),
    ("aten._copy_from", "", "deny list"),
    ("aten._unsafe_index.Tensor", "{indices=[true]}", "deny list"),
    ("aten._local_scalar_dense", "", "returns"),
    ("aten._print", "", "not allowed"),
    ("os.system", "", "namespace 'os' is not allowed"),
    ("torchvision.nms", "", "namespace 'torchvision' is not allowed"),
    ("builtins.eval", "", "namespace 'builtins' is not allowed"),
    ("profiler._record_function_enter", "", "namespace 'profiler' is not allowed"),
    ("quantized.linear", "", "namespace 'quantized' is not allowed"),
])
def test_non_pure_ops_are_parse_errors_naming_the_op(op, attrs, reason):
    text = f"graph @g(%x: f32[2]) -> (f32[2]) {{\n  %y = {op}(%x) {attrs} : f32[2]\n  return %y\n}}\n"
    with pytest.raises(tc.ParseError, match=reason) as info:
        tc.parse(text)
    assert str(info.value).startswith("2:8:") and op in str(info.value)


def test_allow_rule_is_by_schema_and_admits_every_known_aten_op():
    denied = {name: disallowed_reason(o) for name in CATALOG if (o := resolve_overload(name)) is not None}
    assert {name: r for name, r in denied.items() if r} == {}
    for name in ("aten.gelu", "aten.div.Tensor_mode", "aten.pad", "aten.einsum", "aten.conv2d.padding",
                 "aten.searchsorted.Tensor", "aten.randn", "prims.convert_element_type"):
        assert get_op(name).name == name  # enumeration strings and random ops are pure


def test_from_file_schema_is_denied_for_its_path_argument():
    reason = disallowed_reason(torch.ops.aten.from_file.default)
    assert reason == "argument 'filename' is a string that is not a known enumeration (a path?)"


def test_capture_of_a_model_using_a_denied_op_fails_clearly():
    class Unsafe(torch.nn.Module):
        def forward(self, x):
            return torch.ops.aten._unsafe_index.Tensor(x, [torch.tensor([0, 1])])

    with pytest.raises(tc.CarveError, match="_unsafe_index"):
        tc.capture(Unsafe(), (torch.randn(3, 2),), method="export")


def test_capture_of_in_place_ops_keeps_only_allowed_functional_ops():
    class InPlace(torch.nn.Module):
        def forward(self, x):
            y = x * 2
            y.add_(1).relu_()
            return y

    graph = tc.capture(InPlace(), (torch.randn(3),), method="fx")
    assert all(not node.op.rstrip(".Tensor").endswith("_") for node in graph.nodes)
    assert tc.parse(graph.to_text(), params=graph.params).to_text() == graph.to_text()


def test_factory_ops_infer_on_meta_without_allocating():
    # before: `aten.full` ran its real CPU kernel during inference (a 4 TB allocation error here)
    assert infer_types("aten.full", {"size": [10**12], "fill_value": 1.0}, []) == [tc.TensorType((10**12,))]
    assert infer_types("aten.randn", {"size": [10**12]}, []) == [tc.TensorType((10**12,))]


def allocate_during_parse(size: int) -> None:
    tc.parse(f"graph @g() -> (f32[{size}]) {{\n  %z = aten.zeros() {{size=[{size}]}} : f32[{size}]\n  return %z\n}}\n")


def test_parse_of_a_huge_factory_op_stays_within_a_memory_cap():
    # 16 GB of zeros declared; under a 2 GB cap a real allocation fails, a meta one does not
    kind, detail = run_isolated("tests.security.test_op_allowlist:allocate_during_parse", 4 * 10**9, 60.0, 2048)
    assert kind == "ok", detail


REAL = torch.ones(2)


def test_a_kernel_touching_a_real_tensor_during_inference_is_a_shape_error(monkeypatch):
    def sneaky(x):
        return x + REAL  # a real tensor from outside: no kernel may run on it during inference

    def factory(x):
        return x + torch.ones(2, device="cpu")  # factory calls are put on meta, whatever device they ask for

    bind = lambda inputs, attrs: (list(inputs), {})  # noqa: E731
    monkeypatch.setitem(ops._EXPLICIT, "carve.test_sneaky", OpDef(name="carve.test_sneaky", fn=sneaky, bind=bind))
    monkeypatch.setitem(ops._EXPLICIT, "carve.test_factory", OpDef(name="carve.test_factory", fn=factory, bind=bind))
    get_op.cache_clear()
    with pytest.raises(tc.ShapeError, match="real tensor"):
        infer_types("carve.test_sneaky", {}, [tc.TensorType((2,))])
    assert infer_types("carve.test_factory", {}, [tc.TensorType((2,))]) == [tc.TensorType((2,))]
    get_op.cache_clear()


def test_huge_declared_shapes_are_shape_errors_not_crashes():
    text = "graph @g(%x: f32[999999999999999999,999999999999999999]) -> (f32[999999999999999999,999999999999999999]) {\n" \
           "  %y = aten.relu(%x) : f32[999999999999999999,999999999999999999]\n  return %y\n}\n"
    with pytest.raises(tc.CarveError, match="overflow"):
        tc.parse(text)
