"""Capture (torch.export and torch.fx) + the PyTorch backend reproduce every test model's outputs."""
from __future__ import annotations

import pytest
import torch

import torchcarve as tc
from tests.models import FX_TRACEABLE, HF_MODELS, MODEL_NAMES, MODELS, captured


def tensor_outputs(output) -> list[torch.Tensor]:
    return [leaf for leaf in torch.utils._pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor)]


def assert_reproduces(graph: tc.Graph, model: torch.nn.Module, inputs: tuple) -> None:
    """Max abs diff <= 1e-5 relative to the output's scale, for every output tensor."""
    with torch.no_grad():
        expected = tensor_outputs(model(*inputs))
        actual = tensor_outputs(tc.to_torch(graph)(*inputs))
    assert len(actual) == len(expected) == len(graph.outputs)
    for value, want, got in zip(graph.outputs, expected, actual):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert value.type == tc.TensorType.of(want)
        scale = max(1.0, want.abs().max().item())
        assert (got - want).abs().max().item() <= 1e-5 * scale


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_export_capture_reproduces_outputs(name):
    model, inputs, graph = captured(name, "export")
    tc.verify(graph)
    assert len(graph.nodes) > 5
    assert_reproduces(graph, model, inputs)


@pytest.mark.parametrize("name", sorted(FX_TRACEABLE))
def test_fx_capture_reproduces_outputs(name):
    model, inputs = MODELS[name]()
    graph = tc.capture(model, inputs, method="fx")
    tc.verify(graph)
    assert_reproduces(graph, model, inputs)
    exported = captured(name, "export")[2]
    assert graph.op_histogram() == exported.op_histogram()  # one converter, same aten ops


@pytest.mark.parametrize("name", sorted(HF_MODELS))
def test_hf_models_need_export_auto_finds_it_and_fx_fails_cleanly(name):
    model, inputs = MODELS[name]()
    with pytest.raises(tc.CaptureError, match="fx: torch.fx.symbolic_trace failed"):
        tc.capture(model, inputs, method="fx")
    graph = tc.capture(model, inputs, method="auto")
    assert graph.to_text() == captured(name, "export")[2].to_text()  # auto fell back to nothing: export worked


def test_weights_keep_the_models_own_names_and_trainability():
    model, inputs = MODELS["cnn_bn"]()
    for method in ("export", "fx"):
        graph = tc.capture(model, inputs, method=method)
        assert set(graph.params) == set(model.state_dict()) - {"1.num_batches_tracked", "4.num_batches_tracked"}
        assert graph.params.trainable == {name for name, _ in model.named_parameters()}


def test_scopes_name_the_module_each_node_came_from():
    model, inputs, graph = captured("residual")
    scopes = {n.scope for n in graph.nodes if n.op == "aten.conv2d"}
    assert scopes == {"conv1", "conv2", "shortcut.0"}
    assert graph.inputs[0].name == "x"  # the forward argument's name


class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # neither torch.export nor fx can trace a branch on data
            return x * 2
        return x - 1


def test_auto_with_both_methods_failing_raises_one_error_with_both_reasons():
    with pytest.raises(tc.CaptureError) as info:
        tc.capture(DataDependent(), (torch.randn(3),), method="auto")
    message = str(info.value)
    assert "export: torch.export failed" in message and "fx: torch.fx.symbolic_trace failed" in message
    assert message.splitlines()[0].count("hint:") == 0  # hints go on their own line, after the message


def test_wrong_input_shape_is_a_capture_error():
    model, _ = MODELS["mlp"]()
    for method in ("export", "fx", "auto"):
        with pytest.raises(tc.CaptureError):
            tc.capture(model, (torch.randn(4, 7),), method=method)


def test_bad_arguments_are_capture_errors():
    model, inputs = MODELS["mlp"]()
    with pytest.raises(tc.CaptureError, match="unknown capture method 'jit'"):
        tc.capture(model, inputs, method="jit")
    with pytest.raises(tc.CaptureError, match="expected a torch.nn.Module"):
        tc.capture(lambda x: x, inputs)  # type: ignore[arg-type]


def test_a_single_tensor_is_accepted_as_example_inputs():
    model, (x,) = MODELS["mlp"]()
    graph = tc.capture(model, x)
    assert [v.type for v in graph.inputs] == [tc.TensorType.of(x)]


@pytest.mark.parametrize("method", ["export", "fx"])
def test_model_keeps_its_training_mode_and_inputs_are_not_mutated(method):
    model, inputs = MODELS["cnn_bn"]()
    model.train()
    model[1].eval()  # a mixed state must come back exactly
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    copies = [x.clone() for x in inputs]
    graph = tc.capture(model, inputs, method=method)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(a, b) for a, b in zip(inputs, copies))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN stats not updated
    assert "aten.batch_norm" in graph.op_histogram()
    assert all(n.attrs.get("training", False) is False for n in graph.nodes if n.op == "aten.batch_norm")


def test_dynamic_batch_with_fx_is_a_clear_error():
    model, inputs = MODELS["mlp"]()
    with pytest.raises(tc.CaptureError, match=r"dynamic shapes \(dynamic_batch=True, dynamic=...\) need method='export'"):
        tc.capture(model, inputs, method="fx", dynamic_batch=True)


class CustomOpModel(torch.nn.Module):
    """An op the registry has no rules for (torch.cumprod) must still capture and run."""

    def forward(self, x):
        return torch.cumprod(x, dim=1) + torch.logcumsumexp(x, dim=1)


def test_ops_without_rules_are_kept_and_run():
    x = torch.rand(2, 5) + 0.5
    graph = tc.capture(CustomOpModel(), (x,))
    assert {"aten.cumprod", "aten.logcumsumexp"} <= set(graph.op_histogram())
    assert_reproduces(graph, CustomOpModel(), (x,))


class WriteThroughView(torch.nn.Module):
    """`y.narrow(...).zero_()` writes through a view of y: the write must show in y afterwards."""

    def forward(self, x):
        y = x.clone()
        y.narrow(1, 0, 1).zero_()
        y += 1
        view = y.view(-1)
        y.mul_(2)  # `view` shares y's memory: it must see this too
        return view


def test_in_place_writes_through_views_are_captured_exactly():
    x = torch.randn(2, 3)
    graph = tc.capture(WriteThroughView(), (x,), method="export")
    assert_reproduces(graph, WriteThroughView(), (x,))
    assert not any(n.op.split(".")[1].endswith("_") for n in graph.nodes if n.op != "param")  # functional IR


def test_fx_refuses_writes_through_views_instead_of_computing_wrong_values():
    with pytest.raises(tc.CaptureError, match="writes in place into memory another tensor shares"):
        tc.capture(WriteThroughView(), (torch.randn(2, 3),), method="fx")


class InPlaceOnOwnTensor(torch.nn.Module):
    def forward(self, x):
        y = x * 2
        y.add_(1).relu_()
        return y


@pytest.mark.parametrize("method", ["export", "fx"])
def test_plain_in_place_ops_become_functional(method):
    x = torch.randn(2, 3)
    graph = tc.capture(InPlaceOnOwnTensor(), (x,), method=method)
    assert_reproduces(graph, InPlaceOnOwnTensor(), (x,))
    assert "aten.relu" in graph.op_histogram()


class Recurrent(torch.nn.Module):
    """aten.lstm takes two tensor lists (hx, params)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(8, 16, num_layers=2, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0]


def test_ops_with_two_tensor_lists_round_trip_and_run():
    torch.manual_seed(0)
    model, inputs = Recurrent().eval(), (torch.randn(2, 5, 8),)
    graph = tc.capture(model, inputs)
    assert_reproduces(graph, model, inputs)
    assert tc.parse(graph.to_text(), params=graph.params).to_text() == graph.to_text()
