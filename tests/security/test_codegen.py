"""Names never become code: hostile names and attribute keys in a graph reach generated Python only
as checked identifiers or literals, and the source is checked by an AST allow-list before use."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import torchcarve as tc
from tests.exported import run_exported, run_model_py
from torchcarve.backends.codecheck import check_generated
from torchcarve.backends.torch import generate
from torchcarve.cli import main


def payload(marker: Path) -> str:
    """The attribute name from the report: closes the keyword argument and runs a shell command."""
    return f"x_=0, **{{str(__import__('os').system('touch {marker}')):0}}, y_"


def matmul_integer_graph(attrs: dict, input_name: str = "a") -> tuple[tc.Graph, torch.Tensor, torch.Tensor]:
    """A com.microsoft MatMulIntegerToFloat node carrying `attrs`: (graph, input, eager reference)."""
    torch.manual_seed(0)
    b = torch.randint(0, 255, (4, 3), dtype=torch.uint8)
    scale_a, scale_b = torch.tensor([0.1]), torch.tensor([0.2])
    g = tc.Graph("hostile")
    a = g.add_input(input_name, tc.TensorType((2, 4), "u8"))
    inputs = [a, g.add_param("b", b), g.add_param("sa", scale_a), g.add_param("sb", scale_b)]
    node = g.add_node("onnx.MatMulIntegerToFloat", inputs, {**attrs, "domain": "com.microsoft"}, names=["y"])
    g.set_outputs([node.output])
    x = torch.randint(0, 255, (2, 4), dtype=torch.uint8)
    reference = (x.to(torch.int64) @ b.to(torch.int64)).float() * (scale_a * scale_b)
    return g, x, reference


def assert_safe_and_correct(graph: tc.Graph, inputs: list[torch.Tensor], reference: list[torch.Tensor],
                            tmp_path: Path, marker: Path | None = None) -> None:
    """The module runs and matches; model.py compiles, runs in a fresh process and matches; no payload ran."""
    module = tc.to_torch(graph)
    with torch.no_grad():
        got = module(*inputs)
    got = list(got) if isinstance(got, tuple) else [got]
    for g, r in zip(got, reference, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    exported, _ = run_exported(graph, inputs, tmp_path)
    compile((tmp_path / "proj" / "model.py").read_text(), "model.py", "exec")
    for g, r in zip(exported, reference, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    if marker is not None:
        assert not marker.exists(), "the attribute name ran as code"


@pytest.mark.parametrize("key", ["injection", "if", "a.b", "class", "with space", "3d", ""])
def test_attribute_keys_are_never_spliced_as_keyword_arguments(tmp_path, key):
    marker = tmp_path / "PWNED"
    key = payload(marker) if key == "injection" else key
    graph, x, reference = matmul_integer_graph({key: 1})
    assert_safe_and_correct(graph, [x], [reference], tmp_path, marker)
    forward = generate(graph).source.split("def forward")[1]
    assert "**{" + repr(key) + ": 1}" in forward and f"{key}=1" not in forward


def test_string_attribute_values_are_literals(tmp_path):
    marker = tmp_path / "PWNED"
    value = f"'); __import__('os').system('touch {marker}') #\n\"\"\" \\ \x1b[31m"
    graph, x, reference = matmul_integer_graph({"comment": value, "values": [value, float("nan"), -3]})
    assert_safe_and_correct(graph, [x], [reference], tmp_path, marker)
    assert repr(value) in generate(graph).source


def test_hostile_graph_and_param_names_stay_in_literals(tmp_path):
    marker = tmp_path / "PWNED"
    graph = tc.Graph("evil")
    graph.name = f'Evil"""\nimport os; os.system("touch {marker}")\n"""'  # past Graph's own sanitizing
    x = graph.add_input(f"x'); import os #\n{marker}", tc.TensorType((3,)))
    w = graph.add_param(f"w\n__import__('os').system('touch {marker}')", torch.tensor([1.0, 2.0, 3.0]))
    graph.set_outputs([graph.add_node("aten.mul.Tensor", [x, w], names=["out\nimport os"]).output])
    inputs = [torch.randn(3)]
    assert_safe_and_correct(graph, inputs, [inputs[0] * torch.tensor([1.0, 2.0, 3.0])], tmp_path, marker)


MODULE_NAMES = ["forward", "training", "_parameters", "_buffers", "cuda", "__init__", "state_dict", "code",
                "weight_names", "register_buffer", "__class__", "self", "torch"]


def test_params_named_like_module_attributes_work(tmp_path):
    graph = tc.Graph("collide")
    x = graph.add_input("x", tc.TensorType((len(MODULE_NAMES),)))
    total, expected = x, torch.zeros(len(MODULE_NAMES))
    for i, name in enumerate(MODULE_NAMES):
        tensor = torch.full((len(MODULE_NAMES),), float(i + 1))
        w = graph.add_param(name, tensor, trainable=i % 2 == 0)
        total = graph.add_node("aten.add.Tensor", [total, w]).output
        expected = expected + tensor
    graph.set_outputs([total])
    inputs = [torch.randn(len(MODULE_NAMES))]
    assert_safe_and_correct(graph, inputs, [inputs[0] + expected], tmp_path)
    module = tc.to_torch(graph)
    assert callable(module.forward) and module.training is False and module.code.startswith("'Generated")
    assert sorted(module.weight_names.values()) == sorted(MODULE_NAMES)
    module.load_state_dict(module.state_dict())


KERNEL_NAMES = ["onnx_matmul_integer_to_float", "onnx_matmul_integer", "torch", "math", "self", "float", "super",
                "load", "Carved_hostile"]


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_inputs_named_like_kernels_or_globals_do_not_shadow_them(tmp_path, name):
    graph, x, reference = matmul_integer_graph({}, input_name=name)
    assert_safe_and_correct(graph, [x], [reference], tmp_path)


# ---- the whole route from an ONNX file: tc.from_onnx, carve opt --check-numerics, carve export ----

def hostile_onnx(path: Path, key: str) -> Path:
    """A com.microsoft MatMulIntegerToFloat whose attribute is named `key` (onnx.checker does not look)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(0, 255, (4, 3)).astype(np.uint8), "b"),
             numpy_helper.from_array(np.array([0.1], np.float32), "sa"),
             numpy_helper.from_array(np.array([0.2], np.float32), "sb")]
    node = helper.make_node("MatMulIntegerToFloat", ["a", "b", "sa", "sb"], ["y"], domain="com.microsoft")
    node.attribute.append(helper.make_attribute(key, 1))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.microsoft", 1)]), path)
    return path


@pytest.mark.parametrize("command", ["to_torch", "opt", "export"])
def test_hostile_onnx_attribute_runs_no_code_on_any_route(tmp_path, capsys, command):
    marker = tmp_path / "PWNED"
    model = hostile_onnx(tmp_path / "evil.onnx", payload(marker))
    x = torch.randint(0, 255, (2, 4), dtype=torch.uint8)
    if command == "to_torch":
        try:
            graph = tc.from_onnx(str(model))
        except tc.CarveError as e:  # the importer may refuse attribute names the op does not know
            assert "MatMulIntegerToFloat" in str(e)
        else:
            tc.to_torch(graph)(x)
    elif command == "opt":
        rc = main(["opt", str(model), "-p", "cse", "--check-numerics", "-o", str(tmp_path / "out.carve")])
        assert rc == 0 or "MatMulIntegerToFloat" in capsys.readouterr().err
    else:
        rc = main(["export", str(model), "--to", "torch", "-o", str(tmp_path / "proj")])
        if rc == 0:
            compile((tmp_path / "proj" / "model.py").read_text(), "model.py", "exec")
            run_model_py(tmp_path, [x])
        else:
            assert "MatMulIntegerToFloat" in capsys.readouterr().err
    assert not marker.exists(), f"the attribute name ran as code through {command}"


# ---- the checker itself -------------------------------------------------------------------------

def generated_source() -> str:
    graph, _, _ = matmul_integer_graph({"if": 1})
    return generate(graph).source


def helper_sources() -> list[str]:
    graph, _, _ = matmul_integer_graph({})
    return list(generate(graph).helpers.values())


def test_checker_accepts_what_the_generator_emits():
    check_generated(generated_source(), helper_sources())


FORWARD_LINE = "        y = onnx_matmul_integer_to_float(a, self.b, self.sa, self.sb, **{'if': 1})\n"
INJECTED = {
    "dunder import": "        y = __import__('os').system('touch F')\n",
    "dunder attribute": "        y = torch.ops.aten.relu.default(a.__class__)\n",
    "dunder on self": "        y = torch.ops.aten.relu.default(self.__dict__)\n",
    "lambda": "        y = torch.ops.aten.relu.default(lambda: 0)\n",
    "exec": "        y = exec('import os')\n",
    "eval in a literal list": "        y = torch.ops.aten.relu.default([eval('1')])\n",
    "getattr": "        y = getattr(torch, 'load')(a)\n",
    "method on a value": "        y = a.numpy()\n",
    "torch function": "        y = torch.load('f')\n",
    "not a real op": "        y = torch.ops.aten.__class__.mro(a)\n",
    "dunder namespace": "        y = torch.ops.__class__.mro.default(a)\n",
    "computed splat": "        y = torch.ops.aten.relu.default(a, **globals())\n",
    "splat with computed key": "        y = torch.ops.aten.relu.default(a, **{str(1): 0})\n",
    "starred": "        y = torch.ops.aten.relu.default(*a)\n",
    "binary op": "        y = a + torch.ops.aten.relu.default(a)\n",
    "subscript": "        y = torch.ops.aten.relu.default(a)[0]\n",
    "unknown name": "        y = torch.ops.aten.relu.default(os)\n",
    "rebinding torch": "        torch = torch.ops.aten.relu.default(a)\n",
    "import": "        import os\n",
    "if": "        if a: pass\n",
    "float of text": "        y = torch.ops.aten.mul.Tensor(a, float('1e3'))\n",
}


@pytest.mark.parametrize("case", sorted(INJECTED))
def test_checker_rejects_injected_constructs_in_forward(case):
    source = generated_source()
    assert FORWARD_LINE in source
    with pytest.raises(tc.CarveError, match="generated code"):
        check_generated(source.replace(FORWARD_LINE, FORWARD_LINE + INJECTED[case]), helper_sources())


@pytest.mark.parametrize("addition", [
    "import os\n",
    "from os import system\n",
    "x = __import__('os')\n",
    "def onnx_matmul_integer(a, b):\n    return __import__('os')\n",
    "class Other(object):\n    pass\n",
    "@torch.jit.script\nclass Carved_hostile2(torch.nn.Module):\n    pass\n",
])
def test_checker_rejects_injected_top_level_statements(addition):
    with pytest.raises(tc.CarveError, match="generated code"):
        check_generated(generated_source() + addition, helper_sources())


def test_checker_rejects_assigning_module_attributes_and_foreign_helpers():
    source = generated_source()
    init_line = "        self.register_buffer('b', torch.empty([4, 3], dtype=torch.uint8))  # 'b'\n"
    assert init_line in source
    with pytest.raises(tc.CarveError, match="self.forward"):
        check_generated(source.replace(init_line, "        self.forward = torch.empty([1])\n"), helper_sources())
    with pytest.raises(tc.CarveError, match="did not copy"):
        check_generated(source, [])
    with pytest.raises(tc.CarveError, match="does not compile"):
        check_generated(source + "def (:\n", helper_sources())
