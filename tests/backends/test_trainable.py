"""Weights stay trainable: float layer weights that passes compute are nn.Parameters in tc.to_torch and
in model.py, so fine-tuning moves every layer; running statistics, integer tensors and scales stay buffers."""
from __future__ import annotations

import pytest
import torch

import torchcarve as tc
from tests.exported import run_exported
from tests.models import captured
from torchcarve.ir.trainable import trainable_params

LAYER_OPS = ("aten.conv1d", "aten.conv2d", "aten.conv3d", "aten.convolution", "aten.linear")

CASES = [  # (model, pipeline): every pass that writes new float weights
    ("cnn_bn", "fuse"),
    ("cnn_bn", "prune{ratio=0.5}"),
    ("cnn_bn", "fuse,prune{ratio=0.5}"),
    ("cnn_bn", "low-rank{ratio=0.5}"),
    ("cnn_bn", "fuse,low-rank{ratio=0.5}"),
    ("repvgg", "fuse"),
    ("residual", "fuse,prune{ratio=0.3}"),
    ("transformer_encoder", "fuse"),
]


def layer_weights(graph: tc.Graph) -> set[str]:
    """Params read as the weight or bias of a conv/linear."""
    return {value.producer.attrs["name"] for node in graph.nodes if node.op in LAYER_OPS
            for value in node.inputs[1:3] if value.producer is not None and value.producer.op == "param"}


def fine_tune(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], steps: int = 3) -> None:
    module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        out = module(*inputs)
        out = out[0] if isinstance(out, tuple) else out
        (out.float() ** 2).mean().backward()
        optimizer.step()


@pytest.mark.parametrize("name,pipeline", CASES)
def test_fine_tuning_after_a_pass_moves_every_layer(name, pipeline):
    _, inputs, graph = captured(name)
    optimized = tc.optimize(graph, pipeline).graph
    layers = layer_weights(optimized)
    assert layers, "the optimized graph should still hold conv/linear layers"
    module = tc.to_torch(optimized)
    attribute_of = {param: attr for attr, param in module.weight_names.items()}
    parameters = dict(module.named_parameters())
    assert {attribute_of[p] for p in layers} <= parameters.keys()
    before = {attr: t.detach().clone() for attr, t in parameters.items()}
    fine_tune(module, inputs)
    unmoved = sorted(a for a, t in before.items() if torch.equal(t, parameters[a].detach()))
    assert not unmoved, f"{pipeline}: these weights did not train: {unmoved}"
    trained = tc.with_module_weights(optimized, module)
    assert any(not torch.equal(trained.params[p], optimized.params[p]) for p in layers)


def test_buffers_stay_buffers():
    _, inputs, graph = captured("cnn_bn")
    module = tc.to_torch(graph)
    buffers = {module.weight_names[b] for b, _ in module.named_buffers()}
    assert buffers and all(name.endswith(("running_mean", "running_var")) for name in buffers)
    quantized = tc.optimize(graph, "fuse,quantize{mode=weight-only}").graph
    module = tc.to_torch(quantized)
    parameters = {module.weight_names[p] for p, _ in module.named_parameters()}
    integer = {n for n in quantized.params if not quantized.params[n].is_floating_point()}
    assert integer and not integer & parameters, "integer weights must be buffers"
    scales = {n for n in quantized.params if "scale" in n}
    assert scales and not scales & parameters, "quantization scales must be buffers"
    assert parameters == trainable_params(quantized)


@pytest.mark.parametrize("name,pipeline", [("cnn_bn", "fuse"), ("cnn_bn", "low-rank{ratio=0.5}")])
def test_model_py_has_the_same_parameters_and_buffers(tmp_path, name, pipeline):
    _, inputs, graph = captured(name)
    optimized = tc.optimize(graph, pipeline).graph
    module = tc.to_torch(optimized)
    outputs, names = run_exported(optimized, inputs, tmp_path)
    assert names["parameters"] == [n for n, _ in module.named_parameters()]
    assert names["buffers"] == [n for n, _ in module.named_buffers()]
    with torch.no_grad():
        torch.testing.assert_close(outputs[0], module(*inputs), rtol=1e-5, atol=1e-5)
