"""Expert-local width pruning: inside carve.moe each expert's hidden units are pruned expert by expert
(every expert keeps as many, its own ones; gated experts lose gate and up rows together); removing zero
units is exact; the pruned graph matches in PyTorch and onnxruntime; shapes shrink as reported."""
from __future__ import annotations

import pytest
import torch

import torchcarve as tc
from torchcarve.ir.ops.moe import moe_weights
from torchcarve.passes import optimize

from ..models import MODELS
from .helpers import ATOL, RTOL, onnx_parity

ZEROED = 8  # hidden units zeroed in every expert


def moe_node(graph: tc.Graph):
    (node,) = [n for n in graph.nodes if n.op == "carve.moe"]
    return node


def weight(graph: tc.Graph, role: str) -> tuple[str, torch.Tensor]:
    name = moe_weights(moe_node(graph))[role].producer.attrs["name"]
    return name, graph.params[name]


def zero_hidden_units(graph: tc.Graph, seed: int = 0) -> list[torch.Tensor]:
    """Zero ZEROED hidden units of every expert (different ones per expert) in place: their up rows (gate
    and up when gated), up bias and down columns. Returns each expert's kept units."""
    node = moe_node(graph)
    _, down = weight(graph, "down_w")
    experts, hidden = down.shape[0], down.shape[2]
    generator = torch.Generator().manual_seed(seed)
    kept = []
    for role in ("up_w", "up_b", "down_w"):
        if moe_weights(node)[role] is not None:
            name, tensor = weight(graph, role)
            graph.params[name] = tensor.clone()
    for e in range(experts):
        gone = torch.randperm(hidden, generator=generator)[:ZEROED]
        rows = torch.cat([gone, gone + hidden]) if node.attrs.get("gated") else gone
        for role, axis, index in (("up_w", 0, rows), ("up_b", 0, rows), ("down_w", 1, gone)):
            if moe_weights(node)[role] is not None:
                weight(graph, role)[1][e].index_fill_(axis, index, 0.0)
        kept.append(torch.tensor([h for h in range(hidden) if h not in set(gone.tolist())]))
    return kept


def run(graph: tc.Graph, inputs) -> torch.Tensor:
    with torch.no_grad():
        return tc.to_torch(graph)(*inputs)


@pytest.mark.parametrize("name", ["topk_moe", "scatter_moe"])  # plain GELU experts; gated SwiGLU experts
def test_removing_each_experts_zero_units_is_exact(name, tmp_path):
    model, inputs = MODELS[name]()
    graph = tc.capture(model, inputs)
    kept = zero_hidden_units(graph)
    _, up_before = weight(graph, "up_w")
    _, down_before = weight(graph, "down_w")
    experts, hidden = down_before.shape[0], down_before.shape[2]
    result = optimize(graph, f"prune{{ratio={ZEROED / hidden},round-to=1}}")
    torch.testing.assert_close(run(result.graph, inputs), run(graph, inputs), rtol=RTOL, atol=ATOL)
    onnx_parity(result.graph, inputs, tmp_path)
    _, up = weight(result.graph, "up_w")
    _, down = weight(result.graph, "down_w")
    gated = bool(moe_node(graph).attrs.get("gated"))
    assert down.shape == (experts, down_before.shape[1], hidden - ZEROED)
    assert up.shape == (experts, up_before.shape[1] - ZEROED * (2 if gated else 1), up_before.shape[2])
    assert len({tuple(k.tolist()) for k in kept}) > 1, "the experts must keep different units"
    for e, units in enumerate(kept):  # each expert kept its own nonzero units, gate and up rows alike
        rows = torch.cat([units, units + hidden]) if gated else units
        torch.testing.assert_close(down[e], down_before[e][:, units])
        torch.testing.assert_close(up[e], up_before[e][rows])
    (row,) = [r for r in result.report[0].stats["layers"] if "down_w" in r["layer"]]
    assert (row["before"], row["after"]) == (experts * hidden, experts * (hidden - ZEROED))


@pytest.mark.parametrize("name, spec", [("topk_moe", "prune{ratio=0.5}"),
                                        ("scatter_moe", "prune{ratio=0.3,scope=global,round-to=1,criterion=l2}"),
                                        ("scatter_moe", "prune{ratio=0.3,target=params,round-to=1}"),
                                        ("topk_moe", "prune{ratio=0.3,target=macs,round-to=1}")])
def test_pruned_experts_run_alike_in_torch_and_onnxruntime(name, spec, tmp_path):
    model, inputs = MODELS[name]()
    graph = tc.capture(model, inputs)
    result = optimize(graph, spec)
    _, down_before = weight(graph, "down_w")
    _, down = weight(result.graph, "down_w")
    assert down.shape[0] == down_before.shape[0] and down.shape[2] < down_before.shape[2]
    assert result.report[0].params[1] < result.report[0].params[0]
    if "target=macs" in spec:  # the budget sees the expert units it removes: about 30% of the MACs, not 90%
        before, after = result.report[0].macs
        assert 0.25 < 1 - after / before < 0.4
    onnx_parity(result.graph, inputs, tmp_path)
    assert not torch.allclose(run(result.graph, inputs), run(graph, inputs), rtol=RTOL, atol=ATOL)


def test_taylor_importance_counts_only_routed_tokens():
    """The dense form weighs each expert by its routing weight, zero for tokens not routed to it: an expert
    no calibration token chooses gets no gradient, so Taylor importance sees only routed tokens."""
    from torchcarve.passes.prune.groups import find_groups
    from torchcarve.passes.prune.select import unit_importance, weight_scores

    model, _ = MODELS["topk_moe"]()
    inputs = (torch.randn(2, 12, generator=torch.Generator().manual_seed(0)),)  # 2 tokens reach at most 4 of 8
    with torch.no_grad():
        routed = torch.topk(model.moe.gate(model.embed(inputs[0])), model.moe.top_k, dim=-1).indices.unique()
    graph = tc.capture(model, inputs)
    (group,) = [g for g in find_groups(graph) if g.segments is not None]
    importance = unit_importance(group, weight_scores(graph, "taylor", [inputs], 0), {})
    chosen = torch.isin(group.segments, routed)
    assert (importance[~chosen] == 0).all() and (importance[chosen] > 0).all()


@pytest.mark.parametrize("name", ["topk_moe", "scatter_moe"])
def test_the_equivalence_oracle_checks_the_expert_group(name):
    """Zeroing as many random units of every expert in the original equals removing them in a copy."""
    from torchcarve.passes.prune.oracle import check_equivalence

    model, inputs = MODELS[name]()
    checks = check_equivalence(tc.capture(model, inputs), inputs)
    (check,) = [c for c in checks if "down_w" in c.label]
    assert check.ok and 0 < check.removed < check.units and check.removed % 8 == 0  # same count per expert


def test_whole_experts_then_each_experts_width(tmp_path):
    model, inputs = MODELS["scatter_moe"]()  # 4 SwiGLU experts of 24 hidden units
    result = optimize(tc.capture(model, inputs), "prune-experts{keep=3},prune{ratio=0.5,round-to=1}",
                      calibration=[inputs])
    _, down = weight(result.graph, "down_w")
    _, up = weight(result.graph, "up_w")
    assert down.shape == (3, 16, 12) and up.shape == (3, 24, 16)
    onnx_parity(result.graph, inputs, tmp_path)


@pytest.mark.parametrize("form", ["dense", "sparse"])
def test_pruned_experts_run_in_either_dispatch_form(form, tmp_path):
    model, inputs = MODELS["scatter_moe"]()
    graph = tc.capture(model, inputs)
    pruned = optimize(graph, "prune{ratio=0.5,round-to=1}").graph
    result = optimize(pruned, f"moe-dispatch{{form={form}}}").graph
    assert moe_node(result).attrs["dispatch"] == form
    assert torch.allclose(run(result, inputs), run(pruned, inputs), rtol=RTOL, atol=ATOL)
    onnx_parity(result, inputs, tmp_path)
