"""prune-experts: the least-routed experts go, the router shrinks, and a token that never routed to a
removed expert keeps its exact output; per-expert report; ORT parity; clear errors."""
from __future__ import annotations

import pytest
import torch

import torchcarve as tc
from torchcarve.errors import CarveError
from torchcarve.passes import optimize

from ..models import MODELS
from .helpers import ATOL, RTOL


@pytest.fixture(scope="module")
def moe_net():
    model, inputs = MODELS["topk_moe"]()
    torch.manual_seed(1)
    calibration = [(torch.randn(12, 12),) for _ in range(4)]
    return model, inputs, tc.capture(model, inputs, dynamic_batch=True), calibration


def routed(model, x: torch.Tensor) -> torch.Tensor:
    """[T, k] experts each token of `x` routes to in the original model."""
    with torch.no_grad():
        return torch.topk(torch.softmax(model.moe.gate(model.embed(x)), -1), model.moe.top_k, -1).indices


def usage(model, calibration) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-expert routing count and routing weight over the calibration data, from the eager model."""
    count, mass = torch.zeros(8), torch.zeros(8)
    for (x,) in calibration:
        with torch.no_grad():
            top, index = torch.topk(torch.softmax(model.moe.gate(model.embed(x)), -1), 2, -1)
        count += torch.bincount(index.flatten(), minlength=8).float()
        mass += torch.zeros(8).index_add(0, index.flatten(), (top / top.sum(-1, keepdim=True)).flatten())
    return count, mass


@pytest.mark.parametrize("criterion", ["frequency", "gate-mass"])
def test_the_most_used_experts_are_kept(moe_net, criterion):
    model, _, graph, calibration = moe_net
    result = optimize(graph, f"prune-experts{{keep=4,criterion={criterion}}}", calibration=calibration)
    rows = result.report[0].stats["layers"]
    kept = {int(row["layer"].rsplit("expert", 1)[1]) for row in rows if row["kept"] == "yes"}
    count, mass = usage(model, calibration)
    score = count if criterion == "frequency" else mass
    assert len(rows) == 8 and kept == set(torch.argsort(score, descending=True, stable=True)[:4].tolist())
    (node,) = [n for n in result.graph.nodes if n.op == "carve.moe"]
    assert node.inputs[1].type.shape == (4, 16) and node.inputs[2].type.shape == (4, 32, 16)
    assert result.report[0].params[1] < result.report[0].params[0]
    assert result.report[0].stats["experts"] == (8, 4)


def test_tokens_that_never_routed_to_a_removed_expert_keep_their_output(moe_net, tmp_path):
    model, _, graph, calibration = moe_net
    result = optimize(graph, "prune-experts{keep=5}", calibration=calibration)
    rows = result.report[0].stats["layers"]
    removed = torch.tensor([int(r["layer"].rsplit("expert", 1)[1]) for r in rows if r["kept"] == "-"])
    torch.manual_seed(2)
    x = torch.randn(64, 12)
    untouched = ~torch.isin(routed(model, x), removed).any(dim=-1)
    assert 0 < untouched.sum() < len(x), "the check needs tokens of both kinds"
    with torch.no_grad():
        expected, actual = model(x), tc.to_torch(result.graph)(x)
    torch.testing.assert_close(actual[untouched], expected[untouched], rtol=RTOL, atol=ATOL)
    assert not torch.allclose(actual[~untouched], expected[~untouched], rtol=RTOL, atol=ATOL)
    path = tmp_path / "pruned.onnx"
    tc.to_onnx(result.graph, path)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    torch.testing.assert_close(torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]),
                               actual, rtol=RTOL, atol=ATOL)


def test_keeping_fewer_experts_than_top_k_caps_top_k():
    model, inputs = MODELS["scatter_moe"]()
    result = optimize(tc.capture(model, inputs), "prune-experts{keep=1}", calibration=[inputs])
    (node,) = [n for n in result.graph.nodes if n.op == "carve.moe"]
    assert node.attrs["top_k"] == 1 and node.inputs[1].type.shape[0] == 1
    assert tc.to_torch(result.graph)(*inputs).shape == inputs[0].shape[:1] + (4,)


def test_composes_with_other_passes(moe_net, tmp_path):
    _, inputs, graph, calibration = moe_net
    result = optimize(graph, "prune-experts{ratio=0.25},fuse,quantize{mode=dynamic},dce", calibration=calibration)
    assert result.report[0].stats["experts"] == (8, 6)
    tc.to_onnx(result.graph, tmp_path / "composed.onnx")
    assert tc.to_torch(result.graph)(*inputs).shape == (12, 4)


def test_a_graph_without_moe_is_unchanged():
    model, inputs = MODELS["mlp"]()
    result = optimize(tc.capture(model, inputs), "prune-experts{keep=2}", calibration=[inputs])
    assert not result.changed and result.report[0].stats == {"moe_layers": 0}


@pytest.mark.parametrize("spec, message", [
    ("prune-experts{keep=0}", "at least 1"),
    ("prune-experts{ratio=1.0}", "ratio"),
    ("prune-experts{keep=9}", "only 8 experts"),
])
def test_bad_options_are_clear_errors(moe_net, spec, message):
    _, _, graph, calibration = moe_net
    with pytest.raises(CarveError, match=message):
        optimize(graph, spec, calibration=calibration)


def test_needs_calibration(moe_net):
    with pytest.raises(CarveError, match="calibration"):
        optimize(moe_net[2], "prune-experts{keep=4}")
