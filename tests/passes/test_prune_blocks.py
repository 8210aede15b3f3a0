"""prune-blocks: residual blocks, add-join and concat-join branches found, scored and removed; every head
kept; exact when the removed branch is zero; equal to the model with the layer deleted; ORT parity."""
from __future__ import annotations

import copy

import pytest
import torch

import torchcarve as tc
from torchcarve.errors import CarveError
from torchcarve.passes import optimize
from torchcarve.passes.blocks import find_blocks

from ..models import MODELS
from .helpers import ATOL, RTOL

transformers = pytest.importorskip("transformers")


def outputs(module, inputs) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        out = module(*inputs)
    if isinstance(out, torch.Tensor):
        return (out,)
    return tuple(out.values()) if hasattr(out, "values") else tuple(out)


def ort_outputs(graph: tc.Graph, inputs, tmp_path) -> list[torch.Tensor]:
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "blocks.onnx"
    tc.to_onnx(graph, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(a) for a in session.run(None, feeds)]


def assert_all_close(actual, expected) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL)


def zero_branch(model: torch.nn.Module, path: str) -> None:
    """Zero the last linear of a branch, so the branch adds exactly nothing."""
    last = [m for m in model.get_submodule(path).modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()


def removed_rows(result) -> list[dict]:
    return [row for row in result.report[0].stats["layers"] if row["removed"] == "yes"]


def test_dag_blocks_are_found_with_their_kind_and_heads():
    model, inputs = MODELS["multitask_dag"]()
    rows = {b.name: b.kind for b in find_blocks(tc.capture(model, inputs))}
    assert rows == {"block1": "residual", "block2a": "residual", "block2b": "branch", "block3": "residual"}
    result = optimize(tc.capture(model, inputs), "prune-blocks{n=0,criterion=last}")
    feeds = {row["layer"]: row["feeds"] for row in result.report[0].stats["layers"]}
    assert feeds["block3"] == "output_0" and feeds["block1"] == "output_0,output_1"


@pytest.mark.parametrize("criterion", ["flow", "output-error"])
@pytest.mark.parametrize("branch", ["block1", "block2b", "block3"])
def test_a_zero_branch_is_chosen_and_removing_it_is_exact(criterion, branch, tmp_path):
    model, inputs = MODELS["multitask_dag"]()
    zero_branch(model, branch)
    graph = tc.capture(model, inputs)
    calibration = [inputs, (torch.randn(4, 16),)]
    result = optimize(graph, f"prune-blocks{{n=1,criterion={criterion}}}", calibration=calibration)
    assert [row["layer"] for row in removed_rows(result)] == [branch]
    assert not any(name.startswith(branch + ".") for name in result.graph.params)
    assert any(name.startswith(branch + ".") for name in graph.params), "the input graph must be untouched"
    assert result.graph.output_names == graph.output_names
    expected = outputs(model, inputs)
    assert_all_close(outputs(tc.to_torch(result.graph), inputs), expected)
    assert_all_close(ort_outputs(result.graph, inputs, tmp_path), expected)


def test_both_heads_keep_their_shapes_when_blocks_go(tmp_path):
    model, inputs = MODELS["multitask_dag"]()
    graph = tc.capture(model, inputs)
    result = optimize(graph, "prune-blocks{n=2,criterion=output-error},dce", calibration=[inputs])
    assert len(removed_rows(result)) == 2
    assert [v.type for v in result.graph.outputs] == [v.type for v in graph.outputs]
    actual = outputs(tc.to_torch(result.graph), inputs)
    assert [a.shape for a in actual] == [e.shape for e in outputs(model, inputs)]
    assert_all_close(ort_outputs(result.graph, inputs, tmp_path), actual)


@pytest.mark.parametrize("name, layers", [("hf_bert", "encoder.layer"), ("hf_vit", "layers")])
def test_a_removed_transformer_layer_equals_the_model_without_it(name, layers, tmp_path):
    model, inputs = MODELS[name]()
    result = optimize(tc.capture(model, inputs), "prune-blocks{n=1,span=2,criterion=output-error}",
                      calibration=[inputs])
    (row,) = removed_rows(result)
    prefix, index = row["layer"].rsplit(".", 1)
    assert prefix == layers and result.report[0].stats["candidates"] == 2
    shallow = copy.deepcopy(model)
    del shallow.get_submodule(layers)[int(index)]
    expected = outputs(shallow, inputs)
    assert_all_close(outputs(tc.to_torch(result.graph), inputs), expected)
    assert_all_close(ort_outputs(result.graph, inputs, tmp_path), expected)


def test_a_resnet_block_with_a_zero_branch_goes_exactly():
    model, inputs = MODELS["hf_resnet"]()
    block = "encoder.stages.0.layers.0"
    with torch.no_grad():
        last_bn = [m for m in model.get_submodule(block).modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
        last_bn.weight.zero_()
        last_bn.bias.zero_()
    result = optimize(tc.capture(model, inputs), "prune-blocks{n=1,criterion=flow}", calibration=[inputs])
    assert [row["layer"] for row in removed_rows(result)] == [block]
    assert not any(name.startswith(block + ".") for name in result.graph.params)
    assert_all_close(outputs(tc.to_torch(result.graph), inputs), outputs(model, inputs))


def test_blocks_of_an_imported_onnx_graph(tmp_path):
    model, inputs = MODELS["multitask_dag"]()
    zero_branch(model, "block2a")
    tc.to_onnx(tc.capture(model, inputs), tmp_path / "dag.onnx")
    graph = tc.from_onnx(tmp_path / "dag.onnx")
    assert len(find_blocks(graph)) == 4
    result = optimize(graph, "prune-blocks{n=1,criterion=flow},dce", calibration=[inputs])
    assert removed_rows(result)[0]["nodes"] == 4  # linear, relu, linear and the add
    assert result.report[0].params[1] < result.report[0].params[0]
    expected = outputs(model, inputs)
    assert_all_close(outputs(tc.to_torch(result.graph), inputs), expected)
    assert_all_close(ort_outputs(result.graph, inputs, tmp_path), expected)


def test_ratio_and_span_pick_how_many_go():
    model, inputs = MODELS["transformer_encoder"]()
    graph = tc.capture(model, inputs)
    assert len(find_blocks(graph)) == 4 and len(find_blocks(graph, span=2)) == 2
    result = optimize(graph, "prune-blocks{ratio=0.5,criterion=random}")
    assert len(removed_rows(result)) == 2 and result.report[0].params[1] < result.report[0].params[0]


@pytest.mark.parametrize("spec, message", [
    ("prune-blocks{n=1,ratio=0.5}", "not both"),
    ("prune-blocks{n=9,criterion=last}", "has 4 candidates"),
    ("prune-blocks{ratio=1.0}", "ratio"),
    ("prune-blocks{span=0}", "span"),
    ("prune-blocks{n=1}", "calibration"),
])
def test_bad_options_are_clear_errors(spec, message):
    model, inputs = MODELS["multitask_dag"]()
    with pytest.raises(CarveError, match=message):
        optimize(tc.capture(model, inputs), spec)


def test_consecutive_layers_go_together_and_equal_the_model_without_them():
    model, inputs = MODELS["hf_bert"]()
    result = optimize(tc.capture(model, inputs), "prune-blocks{n=2,span=2,criterion=last}")
    assert sorted(row["layer"] for row in removed_rows(result)) == ["encoder.layer.0", "encoder.layer.1"]
    shallow = copy.deepcopy(model)
    del shallow.encoder.layer[1]
    del shallow.encoder.layer[0]
    assert_all_close(outputs(tc.to_torch(result.graph), inputs), outputs(shallow, inputs))


def test_the_global_and_local_experts_are_branches_of_one_join():
    model, inputs = MODELS["global_local"]()
    blocks = find_blocks(tc.capture(model, inputs))
    assert sorted((b.name, b.kind) for b in blocks) == [("global_expert", "branch"), ("local_expert", "branch")]


class InceptionCat(torch.nn.Module):
    """Two conv branches joined by a channel concat, a 1x1 conv reading the join, a pooled linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.narrow = torch.nn.Sequential(torch.nn.Conv2d(8, 4, 1), torch.nn.ReLU())
        self.wide = torch.nn.Sequential(torch.nn.Conv2d(8, 12, 3, padding=1), torch.nn.ReLU())
        self.mix = torch.nn.Conv2d(16, 8, 1)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        return self.head(self.mix(torch.cat([self.narrow(h), self.wide(h)], dim=1)).mean(dim=(2, 3)))


class CatPlusSkip(torch.nn.Module):
    """cat([f(h), g(h)]) + h: the join's channels are h's channels too, so no branch of it can go alone."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.f, self.g, self.head = (torch.nn.Linear(*sizes) for sizes in ((6, 8), (8, 4), (8, 4), (8, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(torch.cat([self.f(h), self.g(h)], dim=-1) + h)


@pytest.mark.parametrize("criterion", ["flow", "output-error"])
@pytest.mark.parametrize("branch, width", [("narrow", 4), ("wide", 12)])
def test_a_zero_concat_branch_goes_exactly(criterion, branch, width, tmp_path):
    torch.manual_seed(0)
    model = InceptionCat().eval()
    with torch.no_grad():
        model.get_submodule(branch)[0].weight.zero_()
        model.get_submodule(branch)[0].bias.zero_()
    inputs = (torch.randn(2, 3, 8, 8),)
    graph = tc.capture(model, inputs)
    assert sorted((b.name, b.kind) for b in find_blocks(graph)) == [("narrow", "concat"), ("wide", "concat")]
    result = optimize(graph, f"prune-blocks{{n=1,criterion={criterion}}}", calibration=[inputs, (torch.randn(2, 3, 8, 8),)])
    assert [(row["layer"], row["kind"]) for row in removed_rows(result)] == [(branch, "concat")]
    assert not any(name.startswith(branch + ".") for name in result.graph.params)
    assert result.graph.params["mix.weight"].shape[1] == 16 - width and graph.params["mix.weight"].shape[1] == 16
    expected = outputs(model, inputs)
    assert_all_close(outputs(tc.to_torch(result.graph), inputs), expected)
    assert_all_close(ort_outputs(result.graph, inputs, tmp_path), expected)


def test_concat_channels_reaching_past_the_join_are_no_candidate():
    model, inputs = CatPlusSkip(), (torch.randn(3, 6),)
    blocks = find_blocks(tc.capture(model, inputs))
    assert [b.kind for b in blocks] == ["residual"]  # the whole cat([f, g]) is a residual branch of + h
