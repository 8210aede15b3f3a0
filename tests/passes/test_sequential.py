"""Calibration block by block (passes/sequential.py): the blocks found, equality with whole-graph
calibration for every calibration user, sequential error correction, weight release, the report's
memory and byte fields."""
from __future__ import annotations

import pytest
import torch

import torchcarve as tc
from torchcarve.analysis.memory import peak_memory
from torchcarve.errors import CarveError
from torchcarve.passes import PassContext, PassManager, parse_pipeline
from torchcarve.passes import sequential
from torchcarve.passes.lowrank import LowRank
from torchcarve.passes.manager import run_graph
from torchcarve.passes.quantize.observers import MinMaxObserver
from torchcarve.passes.sequential import find_segments, run_sequential

from ..models import captured

pytest.importorskip("transformers")

BIG = 1 << 40    # a budget nothing exceeds: block by block, boundaries in memory
TINY = 1         # a budget everything exceeds: every boundary spilled to the staging file


def batches(graph: tc.Graph, count: int = 3, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(seed)
    shape = [d if isinstance(d, int) else 2 for d in graph.inputs[0].type.shape]
    return [(torch.randint(0, 100, shape, generator=generator),) for _ in range(count)]


def optimize(graph: tc.Graph, pipeline: str, data, max_memory: int | None) -> tc.OptimizeResult:
    return PassManager(parse_pipeline(pipeline), PassContext(calibration=data, max_memory=max_memory)).run(graph)


def same_weights(a: tc.Graph, b: tc.Graph) -> bool:
    return a.to_text() == b.to_text() and all(torch.equal(a.params[n], b.params[n]) for n in a.params)


def relative_error(graph: tc.Graph, reference: tc.Graph, data) -> float:
    diff = norm = 0.0
    for batch in data:
        expected, actual = run_graph(reference, batch)[0].double(), run_graph(graph, batch)[0].double()
        diff += float((actual - expected).pow(2).sum())
        norm += float(expected.pow(2).sum())
    return (diff / norm) ** 0.5


@pytest.fixture
def segment_calls(monkeypatch):
    """How many times a pass cut the graph into blocks (zero: it calibrated on the whole graph)."""
    calls = []
    original = sequential.find_segments
    monkeypatch.setattr(sequential, "find_segments", lambda graph: calls.append(1) or original(graph))
    return calls


# ---- blocks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, blocks", [("hf_llama", ["layers.0", "layers.1"]),
                                          ("hf_bert", ["encoder.layer.0", "encoder.layer.1"])])
def test_blocks_are_the_decoder_or_encoder_layers(name, blocks):
    graph = captured(name)[2]
    segments = find_segments(graph)
    assert [s.name for s in segments] == ["preamble", *blocks, "tail"]
    nodes = [n for n in graph.nodes if n.op != "param"]
    assert [n for s in segments for n in s.nodes] == nodes  # contiguous, in order, nothing lost
    for segment in segments[1:-1]:
        scopes = {n.scope for n in segment.nodes if n.scope}
        assert scopes and all(s == segment.name or s.startswith(segment.name + ".") for s in scopes)


def test_without_module_paths_blocks_end_at_residual_joins():
    graph = captured("hf_llama")[2].clone()
    for node in graph.nodes:
        node.scope = ""
    blocks = [s for s in find_segments(graph) if s.name.startswith("block")]
    assert len(blocks) == 2  # one per decoder layer: the residual joins of attention and MLP nest in it
    for block in blocks:
        assert sum(n.op == "aten.linear" for n in block.nodes) == 7  # q, k, v, o, gate, up, down
        assert any(n.op == "aten.add.Tensor" and n.inputs[0].type == n.inputs[1].type for n in block.nodes[-2:])


# ---- the runner ---------------------------------------------------------------------------------

def test_block_by_block_outputs_equal_the_whole_graph_with_spilled_boundaries():
    graph = captured("hf_llama")[2]
    data = batches(graph)
    spilled = run_sequential(graph, data, {}, max_memory=TINY, keep_outputs=True)
    resident = run_sequential(graph, data, {}, max_memory=BIG, keep_outputs=True)
    assert spilled.spilled > 0 and resident.spilled == 0
    for batch, got, kept in zip(data, spilled.outputs, resident.outputs):
        expected = run_graph(graph, batch)
        assert all(torch.equal(a, b) for a, b in zip(got, kept))
        torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-6)


def test_observers_see_what_whole_graph_calibration_sees():
    graph = captured("hf_bert")[2]
    data = batches(graph)
    values = [n.outputs[0] for n in graph.nodes if n.op == "aten.linear"]
    whole = {v: MinMaxObserver() for v in values}
    blockwise = {v: MinMaxObserver() for v in values}
    sequential.observe(graph, data, {v: [o.observe] for v, o in whole.items()}, None, "whole")
    sequential.observe(graph, data, {v: [o.observe] for v, o in blockwise.items()}, TINY, "blocks")
    assert all(whole[v].range() == blockwise[v].range() for v in values)


def test_a_blocks_weights_are_released_after_it(tmp_path):
    model, inputs, graph = captured("hf_llama")
    tc.save(graph, tmp_path / "llama.carve")
    lazy = tc.load(tmp_path / "llama.carve")
    layer1 = next(n for n in lazy.nodes if n.op == "aten.linear" and n.scope == "layers.1.self_attn.q_proj")
    resident_then = []
    store = lazy.params
    observer = lambda tensor: resident_then.append({n for n in store if n in store._tensors})  # noqa: E731
    run_sequential(lazy, [inputs], {layer1.outputs[0]: [observer]}, max_memory=BIG)
    resident = resident_then[0]
    assert "layers.1.self_attn.q_proj.weight" in resident
    assert not any(name.startswith("layers.0.") for name in resident)
    assert store.bytes_read > 0
    assert not any(name in store._tensors for name in store if name.startswith("layers."))


def test_low_rank_holds_one_layers_weight_at_a_time(tmp_path):
    tc.save(captured("hf_llama")[2], tmp_path / "llama.carve")
    lazy = tc.load(tmp_path / "llama.carve")
    store = lazy.params
    LowRank(ratio=0.5).run(lazy, PassContext())
    kept_dense = [n for n in store if n.endswith(("q_proj.weight", "o_proj.weight"))]  # below min-gain: skipped
    assert kept_dense and not any(n in store._tensors for n in kept_dense)  # read, then handed back to the file
    assert torch.equal(store[kept_dense[0]], captured("hf_llama")[2].params[kept_dense[0]])


# ---- every calibration user: block by block equals whole-graph -----------------------------------

@pytest.mark.parametrize("pipeline", [
    "quantize{mode=static}",
    "quantize{mode=static,activations=entropy}",
    "quantize{mode=dynamic,outliers=4}",
    "quantize{mode=dynamic,smooth=0.5}",
    "quantize{mode=dynamic,sensitivity=true}",
    "low-rank{method=whitened,ratio=0.5}",
    "low-rank{method=whitened,budget-params=0.8}",
])
def test_calibration_block_by_block_equals_whole_graph(pipeline, segment_calls):
    graph = captured("hf_llama")[2]
    data = batches(graph, 1 if "sensitivity" in pipeline else 2)  # sensitivity reruns the graph per layer
    whole = optimize(graph, pipeline, data, None)
    assert not segment_calls
    blockwise = optimize(graph, pipeline, data, TINY)
    assert segment_calls, "max_memory must calibrate block by block"
    assert same_weights(whole.graph, blockwise.graph)
    assert whole.report[0].stats == blockwise.report[0].stats


def test_whitened_low_rank_under_a_budget_holds_one_blocks_moments(monkeypatch):
    graph = captured("hf_llama")[2]
    live_blocks = []
    original = LowRank._keep_spectra

    def spy(self, graph, observers, *args):
        live = {name for name, obs in observers.per_layer.items() if any(o.gram is not None for o in obs)}
        live_blocks.append({sequential.block_name(name) for name in live})
        return original(self, graph, observers, *args)

    monkeypatch.setattr(LowRank, "_keep_spectra", spy)
    result = optimize(graph, "low-rank{method=whitened,budget-params=0.8}", batches(graph, 2), TINY)
    assert result.report[0].stats["factorized"] > 0
    assert {"layers.0"} in live_blocks and {"layers.1"} in live_blocks
    assert all(len(blocks) <= 1 for blocks in live_blocks)  # never two blocks' moments at once
    assert not any(name.endswith("lowrank_vectors") for name in result.graph.params)


def test_taylor_pruning_refuses_a_memory_budget():
    graph = captured("hf_llama")[2]
    with pytest.raises(CarveError, match="taylor.*max-memory"):
        optimize(graph, "prune{criterion=taylor,ratio=0.2}", batches(graph), BIG)


# ---- sequential error correction ----------------------------------------------------------------

def test_sequential_low_rank_corrects_the_error_of_earlier_blocks():
    graph = captured("hf_llama")[2]
    data = batches(graph, 3)
    plain = optimize(graph, "low-rank{method=whitened,ratio=0.5}", data, None).graph
    corrected = optimize(graph, "low-rank{method=whitened,ratio=0.5,sequential=true}", data, None).graph
    spilled = optimize(graph, "low-rank{method=whitened,ratio=0.5,sequential=true}", data, TINY).graph
    assert same_weights(corrected, spilled)
    first_block = "layers.0.self_attn.k_proj.lowrank_in.weight"  # sees the same inputs either way
    torch.testing.assert_close(plain.params[first_block], corrected.params[first_block], rtol=1e-4, atol=1e-6)
    later = "layers.1.mlp.down_proj.lowrank_in.weight"
    assert not torch.allclose(plain.params[later], corrected.params[later], rtol=1e-3, atol=1e-5)
    assert relative_error(corrected, graph, data) <= relative_error(plain, graph, data)


def test_sequential_static_quantization_calibrates_later_blocks_on_quantized_outputs():
    graph = captured("hf_llama")[2]
    data = batches(graph, 2)
    plain = optimize(graph, "quantize{mode=static,embeddings=false}", data, None).graph
    corrected = optimize(graph, "quantize{mode=static,embeddings=false,sequential=true}", data, None).graph
    spilled = optimize(graph, "quantize{mode=static,embeddings=false,sequential=true}", data, TINY).graph
    assert same_weights(corrected, spilled)
    scales = [n for n in plain.params if n.endswith(".scale")]
    assert scales and set(scales) == {n for n in corrected.params if n.endswith(".scale")}
    q_proj = next(n for n in graph.nodes if n.op == "aten.linear" and n.scope == "layers.0.self_attn.q_proj")
    first = f"{q_proj.inputs[0].name}.scale"  # layer 0's input: no quantized op before it either way
    assert torch.equal(plain.params[first], corrected.params[first])
    assert any(not torch.equal(plain.params[n], corrected.params[n]) for n in scales)


def test_sequential_needs_a_mode_or_method_it_applies_to():
    with pytest.raises(CarveError, match="sequential"):
        optimize(captured("hf_llama")[2], "quantize{mode=dynamic,sequential=true}", None, None)
    with pytest.raises(CarveError, match="sequential"):
        optimize(captured("hf_llama")[2], "low-rank{method=svd,sequential=true}", None, None)


# ---- reporting ----------------------------------------------------------------------------------

def test_report_has_peak_memory_and_bytes_read_from_a_lazy_store(tmp_path):
    graph = captured("hf_llama")[2]
    tc.save(graph, tmp_path / "llama.carve")
    lazy = tc.load(tmp_path / "llama.carve")
    report = optimize(lazy, "low-rank{method=whitened,ratio=0.5}", batches(graph, 1), BIG).report
    line = report[0]
    weights = sum(lazy.params[n].numel() * 4 for n in lazy.params if n.endswith("proj.weight"))
    assert line.bytes_read >= weights
    assert line.bytes_written == 0
    if line.peak_memory is not None:
        assert line.peak_memory > weights


def test_peak_memory_sees_a_temporary_allocation():
    with peak_memory() as peak:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB
        del block
    if peak.extra is None:
        pytest.skip("no resident memory figures on this platform")
    assert peak.extra >= 48 * 2**20
