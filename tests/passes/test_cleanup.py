"""dce, cse, fold-constants, simplify: golden before/after text, idempotence, near misses."""
from __future__ import annotations

import torch

import torchcarve as tc


def run(text: str, pipeline: str, params=None) -> tc.OptimizeResult:
    graph = tc.parse(text, params=params)
    result = tc.optimize(graph, pipeline, check_numerics=True)
    assert not tc.optimize(result.graph, pipeline).changed  # idempotent
    return result


SIMPLIFY_BEFORE = """graph @g(%x: f32[2,3,4]) -> (f32[2,3,4]) {
  %r = aten.relu(%x) : f32[2,3,4]
  %d = aten.dropout(%r) {p=0.1, train=false} : f32[2,3,4]
  %m = aten.mul.Tensor(%d) {other=1.0} : f32[2,3,4]
  %a = aten.add.Tensor(%m) {other=0} : f32[2,3,4]
  %t = aten.transpose.int(%a) {dim0=1, dim1=2} : f32[2,4,3]
  %u = aten.transpose.int(%t) {dim0=2, dim1=1} : f32[2,3,4]
  %v = aten.view(%u) {size=[6, 4]} : f32[6,4]
  %w = aten.view(%v) {size=[2, 3, 4]} : f32[2,3,4]
  return %w
}
"""
SIMPLIFY_AFTER = """graph @g(%x: f32[2,3,4]) -> (f32[2,3,4]) {
  %r = aten.relu(%x) : f32[2,3,4]
  return %r
}
"""


def test_simplify_golden():
    assert run(SIMPLIFY_BEFORE, "simplify").graph.to_text() == SIMPLIFY_AFTER


def test_simplify_keeps_real_work():
    text = """graph @g(%x: f32[2,3]) -> (f32[3,2]) {
  %m = aten.mul.Tensor(%x) {other=2.0} : f32[2,3]
  %d = aten.dropout(%m) {p=0.1, train=true} : f32[2,3]
  %t = aten.transpose.int(%d) {dim0=0, dim1=1} : f32[3,2]
  %c = aten.contiguous(%t) : f32[3,2]
  return %c
}
"""
    graph = tc.parse(text)
    result = tc.optimize(graph, "simplify")
    assert not result.changed and result.graph.to_text() == text


def test_cse_and_dce_golden():
    before = """graph @g(%x: f32[4]) -> (f32[4]) {
  %a = aten.relu(%x) : f32[4]
  %b = aten.relu(%x) : f32[4]
  %dead = aten.sigmoid(%x) : f32[4]
  %s = aten.add.Tensor(%a, %b) : f32[4]
  return %s
}
"""
    after = """graph @g(%x: f32[4]) -> (f32[4]) {
  %a = aten.relu(%x) : f32[4]
  %s = aten.add.Tensor(%a, %a) : f32[4]
  return %s
}
"""
    assert run(before, "cse,dce").graph.to_text() == after


def test_fold_constants_makes_one_param_and_drops_the_old():
    before = """graph @g(%x: f32[2,3]) -> (f32[2,4]) {
  %w = param "w" : f32[3,4]
  %wt = aten.t(%w) : f32[4,3]
  %ws = aten.mul.Tensor(%wt) {other=2.0} : f32[4,3]
  %y = aten.linear(%x, %ws) : f32[2,4]
  return %y
}
"""
    params = tc.ParamStore({"w": torch.randn(3, 4)})
    result = run(before, "fold-constants", params)
    graph = result.graph
    assert [n.op for n in graph.nodes] == ["param", "aten.linear"]
    assert list(graph.params) == ["folded.ws"]
    torch.testing.assert_close(graph.params["folded.ws"], params["w"].t() * 2)
    assert result.report[0].stats == {"folded": 2, "new_params": 1}


class _Broadcasts(torch.nn.Module):
    """A small table looked up at constant, repeated indices (BERT's token types): the result is 64x the table."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(2, 64)
        self.register_buffer("ids", torch.zeros(1, 256, dtype=torch.int64))
        self.scale = torch.nn.Parameter(torch.full((64,), 2.0))
        self.weight = torch.nn.Parameter(torch.randn(64, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        types = self.table(self.ids.expand(x.shape[0], -1))   # [B, 256, 64] from a [2, 64] table
        return x @ (self.weight.t() * self.scale) + types       # w.t() * scale: same size, still folded


def _param_bytes(graph) -> int:
    names = {node.attrs["name"] for node in graph.nodes if node.op == "param"}
    return sum(graph.params[n].numel() * graph.params[n].element_size() for n in names)


def test_fold_constants_never_grows_the_weights():
    import torchcarve as tc
    torch.manual_seed(0)
    model, x = _Broadcasts().eval(), torch.randn(4, 256, 64)
    graph = tc.capture(model, (x,))
    result = tc.optimize(graph, "fold-constants")
    assert _param_bytes(result.graph) <= _param_bytes(graph)
    assert result.report[0].stats["folded"] >= 2          # the weight transpose and scale still fold
    assert "aten.embedding" in result.graph.op_histogram()  # the [4, 256, 64] lookup stays a run-time op
    torch.testing.assert_close(tc.to_torch(result.graph)(x), model(x))
    unlimited = tc.optimize(graph, "fold-constants{max-growth=none}").graph  # the old behaviour: the lookup folds
    assert _param_bytes(unlimited) > _param_bytes(graph) + 200_000  # + the [4, 256, 64] f32 lookup (256 KiB)
