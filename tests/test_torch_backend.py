"""The PyTorch backend: readable generated code, weights as parameters/buffers, a standalone export."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import torchcarve as tc
from tests.models import MODELS, captured


@pytest.fixture(scope="module")
def cnn():
    return captured("cnn_bn")


def test_generated_code_is_readable(cnn):
    _, _, graph = cnn
    module = tc.to_torch(graph)
    code = module.code
    assert "class Sequential(torch.nn.Module):" in code
    assert "def forward(self, input_1):" in code  # `input` is a builtin: renamed, not shadowed
    assert "conv2d = torch.ops.aten.conv2d.default(input_1, self.v0_weight, self.v0_bias, padding=[1, 1])" in code
    assert "relu = torch.ops.aten.relu.default(batch_norm)" in code
    assert "self.register_buffer('v1_running_mean', torch.empty([8], dtype=torch.float32))  # '1.running_mean'" in code
    assert code.count("\n        ") >= len([n for n in graph.nodes if n.op != "param"])
    compile(code, "<check>", "exec")


def test_weights_are_parameters_and_buffers_with_the_right_values(cnn):
    model, _, graph = cnn
    module = tc.to_torch(graph)
    params = dict(module.named_parameters())
    buffers = dict(module.named_buffers())
    assert len(params) == len(graph.params.trainable)
    assert len(params) + len(buffers) == len(graph.params)
    for attribute, name in module.weight_names.items():
        assert torch.equal(getattr(module, attribute), graph.params[name])
    assert not module.training


def test_module_output_matches_and_state_dict_round_trips(cnn):
    model, inputs, graph = cnn
    module = tc.to_torch(graph)
    other = tc.to_torch(graph)
    other.load_state_dict(module.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(module(*inputs), model(*inputs), rtol=0, atol=1e-6)
        torch.testing.assert_close(other(*inputs), module(*inputs), rtol=0, atol=0)


def test_multiple_outputs_come_back_as_a_tuple():
    if "hf_bert" not in MODELS:
        pytest.skip("transformers not installed")
    model, inputs, graph = captured("hf_bert")
    module = tc.to_torch(graph)
    with torch.no_grad():
        out = module(*inputs)
        expected = model(*inputs)
    assert isinstance(out, tuple) and len(out) == 2
    torch.testing.assert_close(out[0], expected.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], expected.pooler_output, rtol=1e-5, atol=1e-5)


def test_param_names_cannot_inject_code():
    g = tc.Graph("evil")
    x = g.add_input("x", tc.TensorType((2,)))
    w = g.add_param("w\nimport os; os.system('echo pwned')", torch.ones(2))
    g.set_outputs([g.add_node("aten.mul.Tensor", [x, w]).output])
    code = tc.to_torch(g).code
    assert not any(line.lstrip().startswith("import os") for line in code.splitlines())


def test_missing_weights_are_a_carve_error():
    graph = tc.parse('''\
graph @g(%x: f32[2]) -> (f32[2]) {
  %w = param "w" : f32[2]
  %y = aten.mul.Tensor(%x, %w) : f32[2]
  return %y
}
''')
    with pytest.raises(tc.CarveError, match="param 'w'"):
        tc.to_torch(graph)


STANDALONE = textwrap.dedent('''
    import importlib.util, json, sys
    import torch
    for directory in sys.argv[1:]:
        spec = importlib.util.spec_from_file_location("model", directory + "/model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        net = module.load()
        x = torch.load(directory + "/input.pt", weights_only=True)
        with torch.no_grad():
            torch.save(net(x), directory + "/output.pt")
    print(json.dumps(sorted(m for m in sys.modules if m.startswith("torchcarve"))))
''')


def test_exported_modules_run_without_torchcarve(tmp_path):
    expected, directories = {}, []
    for name in ("cnn_bn", "transformer_encoder"):
        model, inputs, graph = captured(name)
        out_dir = tc.export_torch(graph, tmp_path / name)
        assert sorted(p.name for p in out_dir.iterdir()) == [".carve-manifest", "model.py", "weights.safetensors"]
        assert "torchcarve" not in "\n".join(
            line for line in (out_dir / "model.py").read_text().splitlines() if "import" in line)
        torch.save(inputs[0], out_dir / "input.pt")
        with torch.no_grad():
            expected[name] = model(*inputs)
        directories.append(str(out_dir))
    result = subprocess.run([sys.executable, "-c", STANDALONE, *directories], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []  # torchcarve was never imported
    for name, want in expected.items():
        got = torch.load(tmp_path / name / "output.pt", weights_only=True)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_export_replaces_its_own_files_and_keeps_others(tmp_path, cnn):
    _, _, graph = cnn
    target = tmp_path / "out"
    tc.export_torch(graph, target)
    (target / "old.txt").write_text("x")
    tc.export_torch(graph, target)
    assert sorted(p.name for p in target.iterdir()) == [".carve-manifest", "model.py", "old.txt", "weights.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
