"""moe-dispatch: the dense and the sparse form of carve.moe both equal the eager MoE module in PyTorch and
onnxruntime (user-written and HF MoEs, batches 1/3/7, experts that receive no token); `auto` follows the
measured rule; the pass's IR before/after; prune-experts keeps working under either form."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import torchcarve as tc
from torchcarve.analysis.cost import graph_cost
from torchcarve.errors import CarveError
from torchcarve.ir.ops.moe import carve_moe, moe_dispatch
from torchcarve.passes import optimize

from ..frontends.test_moe import hf_moe
from ..models import MODELS
from .helpers import ATOL, RTOL

ort = pytest.importorskip("onnxruntime")

BATCHES = (1, 3, 7)
EXPERT_MACS = 2 * 16 * 32  # one expert of the topk_moe model (up [32, 16], down [16, 32]) per token
FORMS = ("dense", "sparse")


@pytest.fixture(scope="module")
def topk():
    """The user-written top-k MoE (8 experts, top-2) in a network, captured with a dynamic token count."""
    model, inputs = MODELS["topk_moe"]()
    return model, tc.capture(model, inputs, dynamic_batch=True)


def run_ort(path, inputs) -> torch.Tensor:
    return run_session(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), inputs)


def run_session(session, inputs) -> torch.Tensor:
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return torch.from_numpy(session.run(None, feeds)[0])


def moe_nodes(graph: tc.Graph) -> list:
    return [n for n in graph.nodes if n.op == "carve.moe"]


def in_form(graph: tc.Graph, form: str) -> tc.Graph:
    result = optimize(graph, f"moe-dispatch{{form={form}}}")
    assert [n.attrs["dispatch"] for n in moe_nodes(result.graph)] == [form] * len(moe_nodes(graph))
    return result.graph


def assert_forms_match(model, graph, make_input, tmp_path, opset: int | None = None) -> None:
    """Each form's PyTorch module and ONNX file equal the eager model at every batch size."""
    for form in FORMS:
        carved = in_form(graph, form)
        module, path = tc.to_torch(carved), tmp_path / f"{form}.onnx"
        tc.to_onnx(carved, path, opset=opset)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for batch in BATCHES:
            inputs = (make_input(batch),)
            with torch.no_grad():
                expected, actual = model(*inputs), module(*inputs)
            expected = getattr(expected, "last_hidden_state", expected)
            actual = actual[0] if isinstance(actual, tuple) else actual
            torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=f"{form} torch, batch {batch}")
            torch.testing.assert_close(run_session(session, inputs), expected, rtol=RTOL, atol=ATOL,
                                       msg=f"{form} onnxruntime, batch {batch}")


def test_user_moe_both_forms_match_the_module(topk, tmp_path):
    model, graph = topk
    assert_forms_match(model, graph, lambda batch: torch.randn(batch, 12), tmp_path)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_hf_moe_both_forms_match_the_model(family, tmp_path):
    model = hf_moe(family)
    graph = tc.capture(model, (torch.randint(0, 100, (2, 8)),), dynamic_batch=True)
    assert len(moe_nodes(graph)) == 2
    assert_forms_match(model, graph, lambda batch: torch.randint(0, 100, (batch, 8)), tmp_path)


@pytest.fixture(scope="module")
def expert0_unused():
    """The SwiGLU scatter_add MoE with expert 0's router bias ruling it out for every token."""
    model, inputs = MODELS["scatter_moe"]()
    with torch.no_grad():
        model.moe.router.bias[0] = -1e4
    return model, tc.capture(model, inputs, dynamic_batch=True)


@pytest.mark.parametrize("opset", [13, 23])
def test_an_expert_no_token_routes_to_is_empty_and_exact(expert0_unused, opset, tmp_path):
    """Opset 13 scatters without ScatterND's add reduction, 23 is the newest the backend writes."""
    model, graph = expert0_unused
    with torch.no_grad():
        routed = torch.topk(model.moe.router(model.embed(torch.randn(64, 12))), model.moe.k, -1).indices
    assert not (routed == 0).any()
    assert_forms_match(model, graph, lambda batch: torch.randn(batch, 12), tmp_path, opset=opset)


def test_one_token_leaves_most_experts_empty_in_the_kernel():
    """8 experts, top-2, one token: six experts get no token; the sparse kernel equals the dense one."""
    torch.manual_seed(0)
    weights = (torch.randn(8, 16), torch.randn(8, 32, 16), torch.randn(8, 16, 32))
    x = torch.randn(1, 16)
    dense, sparse = (carve_moe(x, *weights, top_k=2, act="gelu", dispatch=form) for form in FORMS)
    torch.testing.assert_close(sparse, dense, rtol=RTOL, atol=ATOL)


SMALL, MEDIUM = 3 * 64 * 128, 3 * 256 * 512  # one gated expert's MACs per token at D/H 64/128 and 256/512


@pytest.mark.parametrize("tokens, experts, top_k, expert_macs, form", [
    (1, 8, 2, SMALL, "dense"),        # measured: sparse 0.46x
    (1, 8, 2, MEDIUM, "sparse"),      # 4.3x
    (8, 16, 2, SMALL, "sparse"),      # 1.2x
    (512, 64, 2, SMALL, "sparse"),
    (512, 2, 2, MEDIUM, "dense"),     # E = k: every expert sees every token, nothing to save
    (1, 2, 1, SMALL, "dense"),        # 0.8x
    (4, 2, 1, 32768, "sparse"),       # saves exactly 65536 MACs per expert: the threshold
    (3, 2, 1, 32768, "dense"),
    (None, 8, 2, SMALL, "sparse"),    # a symbolic count is taken as 64 tokens
])
def test_auto_follows_the_rule_table(tokens, experts, top_k, expert_macs, form):
    """The measured rule (docs/moe.md): sparse once skipping the unrouted experts saves each expert 65536 MACs."""
    assert moe_dispatch(tokens, experts, top_k, expert_macs) == form


def test_the_cost_follows_the_form(topk):
    """Sparse runs each token through its top-2 of 8 experts: 6 experts' up and down MACs fewer per token;
    `auto` (no attribute) costs what the rule picks."""
    _, graph = topk
    (node,) = moe_nodes(graph)
    assert "dispatch" not in node.attrs
    dense, sparse = (graph_cost(in_form(graph, form), {"batch": 12}).macs for form in FORMS)
    assert dense - sparse == 12 * EXPERT_MACS * (8 - 2)
    auto = graph_cost(graph, {"batch": 12}).macs
    assert auto == (sparse if moe_dispatch(12, 8, 2, EXPERT_MACS) == "sparse" else dense)


def test_auto_exports_the_form_the_rule_picks(topk, tmp_path):
    """A symbolic token count: the rule's assumed count decides; the ONNX graph has NonZero exactly when sparse."""
    _, graph = topk
    for form in ("auto", *FORMS):
        carved = graph if form == "auto" else in_form(graph, form)
        op_types = {n.op_type for n in tc.to_onnx(carved, tmp_path / f"{form}.onnx").graph.node}
        expected = moe_dispatch(None, 8, 2, EXPERT_MACS) if form == "auto" else form
        assert ("NonZero" in op_types) == (expected == "sparse"), form


def test_pass_ir_before_and_after(topk):
    _, graph = topk
    before = graph.to_text()
    result = optimize(graph, "moe-dispatch{form=sparse}")
    line = next(line for line in before.splitlines() if "carve.moe" in line)
    expected = before.replace(line, line.replace("expert_bias=true}", 'expert_bias=true, dispatch="sparse"}'))
    assert result.graph.to_text() == expected and graph.to_text() == before
    assert tc.parse(expected, params=graph.params).to_text() == expected
    (row,) = result.report[0].stats["layers"]
    assert row["form"] == "sparse" and row["why"] == "forced" and row["tokens"] == "64 (assumed)"
    again = optimize(result.graph, "moe-dispatch{form=sparse}")
    assert not again.report[0].changed


def test_auto_on_a_symbolic_token_count_uses_the_assumed_count(topk):
    _, graph = topk
    forms = set()
    for tokens in (1, 64, 4096):
        (row,) = optimize(graph, f"moe-dispatch{{tokens={tokens}}}").report[0].stats["layers"]
        assert row["form"] == moe_dispatch(tokens, 8, 2, EXPERT_MACS) and row["tokens"] == f"{tokens} (assumed)"
        forms.add(row["form"])
    assert forms == set(FORMS)


class AtenCalls(TorchDispatchMode):
    """Records the aten ops run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("tokens", [1, 4096])
def test_the_kernels_auto_uses_the_real_token_count(tokens):
    """In PyTorch `auto` is resolved per call: the sparse path (nonzero, index_add_) runs exactly when the rule
    picks it for the tokens given."""
    weights = (torch.randn(8, 16), torch.randn(8, 32, 16), torch.randn(8, 16, 32))
    with AtenCalls() as calls:
        carve_moe(torch.randn(tokens, 16), *weights, top_k=2, act="gelu")
    sparse = moe_dispatch(tokens, 8, 2, EXPERT_MACS) == "sparse"
    assert ("index_add_" in calls.ops) == sparse and ("nonzero" in calls.ops) == sparse


def test_prune_experts_keeps_the_form_and_the_outputs(topk, tmp_path):
    _, graph = topk
    calibration = [(torch.randn(12, 12),) for _ in range(2)]
    reference = tc.to_torch(optimize(graph, "prune-experts{keep=4}", calibration=calibration).graph)
    for form in FORMS:
        pruned = optimize(graph, f"moe-dispatch{{form={form}}},prune-experts{{keep=4}}", calibration=calibration).graph
        (node,) = moe_nodes(pruned)
        assert node.attrs["dispatch"] == form and node.inputs[1].type.shape == (4, 16)
        tc.to_onnx(pruned, tmp_path / f"{form}.onnx")
        for batch in BATCHES:
            x = (torch.randn(batch, 12),)
            with torch.no_grad():
                expected = reference(*x)
                torch.testing.assert_close(tc.to_torch(pruned)(*x), expected, rtol=RTOL, atol=ATOL)
            torch.testing.assert_close(run_ort(tmp_path / f"{form}.onnx", x), expected, rtol=RTOL, atol=ATOL)


def test_bad_dispatch_values_are_clear_errors(topk):
    _, graph = topk
    text = graph.to_text()
    with pytest.raises(CarveError, match="dispatch must be one of auto, dense, sparse"):
        tc.parse(text.replace("expert_bias=true}", 'expert_bias=true, dispatch="fast"}'), params=graph.params)
    with pytest.raises(CarveError, match="form"):
        optimize(graph, "moe-dispatch{form=fast}")
    with pytest.raises(CarveError, match="tokens must be at least 1"):
        optimize(graph, "moe-dispatch{tokens=0}")


WEIGHTS_AS_INPUTS = '''graph @moe(%x: f32[batch,16], %rw: f32[8,16], %uw: f32[8,64,16], %ub: f32[8,64], %dw: f32[8,16,32], %db: f32[8,16]) -> (f32[batch,16]) {
  %y = carve.moe(%x, %rw, %uw, %ub, %dw, %db) {top_k=2, act="silu", norm_topk=true, gated=true, router_bias=false, expert_bias=true, dispatch="FORM"} : f32[batch,16]
  return %y
}'''


@pytest.mark.parametrize("form", FORMS)
def test_weights_that_are_graph_inputs_are_sliced_in_the_graph(form, tmp_path):
    """No initializers to slice: the sparse lowering Gathers each expert's weights from the inputs."""
    graph = tc.parse(WEIGHTS_AS_INPUTS.replace("FORM", form))
    torch.manual_seed(0)
    inputs = (torch.randn(5, 16), torch.randn(8, 16), torch.randn(8, 64, 16) / 4, torch.randn(8, 64),
              torch.randn(8, 16, 32) / 6, torch.randn(8, 16))
    expected = carve_moe(*inputs, top_k=2, act="silu", gated=True, expert_bias=True, dispatch="dense")
    tc.to_onnx(graph, tmp_path / "moe.onnx")
    torch.testing.assert_close(tc.to_torch(graph)(*inputs), expected, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(run_ort(tmp_path / "moe.onnx", inputs), expected, rtol=RTOL, atol=ATOL)
