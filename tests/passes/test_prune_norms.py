"""prune through normalized axes (LayerNorm, RMSNorm, GroupNorm) and the dim rules of less common ops."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcarve as tc
from torchcarve.analysis.cost import graph_cost
from torchcarve.passes.prune.oracle import check_equivalence, check_group
from torchcarve.passes.prune import find_groups
from tests.passes.helpers import onnx_parity


class Block(nn.Module):
    def __init__(self, d: int, heads: int = 4) -> None:
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        y = self.n1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.n2(x))


class ViTLike(nn.Module):
    """Patch embedding, class token, two pre-norm blocks, final LayerNorm, head."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, 4)
        self.cls, self.pos = nn.Parameter(torch.randn(1, 1, d)), nn.Parameter(torch.randn(1, 17, d))
        self.blocks, self.norm, self.head = nn.Sequential(Block(d), Block(d)), nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


class ConvNeXtBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.dw, self.norm = nn.Conv2d(d, d, 7, padding=3, groups=d), nn.LayerNorm(d)
        self.pw1, self.pw2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.gamma = nn.Parameter(torch.rand(d))

    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        return x + (self.gamma * self.pw2(F.gelu(self.pw1(y)))).permute(0, 3, 1, 2)


class ConvNeXtLike(nn.Module):
    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.stem, self.blocks = nn.Conv2d(3, d, 4, 4), nn.Sequential(ConvNeXtBlock(d), ConvNeXtBlock(d))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.stem(x)).mean((2, 3))))


IMAGE = (torch.randn(2, 3, 16, 16),)


@pytest.fixture(scope="module", params=[ViTLike, ConvNeXtLike])
def captured(request):
    torch.manual_seed(0)
    model = request.param().eval()
    return model, tc.capture(model, IMAGE)


def _params(graph) -> int:
    return graph_cost(graph).params


def test_hidden_width_is_pruned_and_reported_approximate(captured, tmp_path):
    model, graph = captured
    result = tc.optimize(graph, "prune{ratio=0.5}")
    pruned, stats = result.graph, result.report[0].stats
    assert _params(graph) / _params(pruned) >= 3.0  # torch-pruning: 3.76x (ViT-like), 3.48x (ConvNeXt-like)
    assert pruned.params["head.weight"].shape == (10, 16)  # the hidden size 32 -> 16
    assert stats["approximate"] >= 1 and any(not row["exact"] for row in stats["layers"])
    with torch.no_grad():
        assert tc.to_torch(pruned)(*IMAGE).shape == model(*IMAGE).shape
    onnx_parity(pruned, IMAGE, tmp_path)


def test_norms_false_keeps_the_hidden_width(captured):
    _, graph = captured
    result = tc.optimize(graph, "prune{ratio=0.5,norms=false}")
    assert result.graph.params["head.weight"].shape == (10, 32)
    assert result.report[0].stats["approximate"] == 0
    assert any("norms=false" in reason for reason in result.report[0].stats["blocked"])
    assert _params(graph) / _params(result.graph) < 2.5


def test_oracle_holds_on_exact_groups(captured):
    _, graph = captured
    groups = find_groups(graph)
    assert any(g.approximate and not g.blocked for g in groups)
    checks = check_equivalence(graph, IMAGE)
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_approximate_group_is_flagged_because_zeroing_is_not_removing(captured):
    _, graph = captured
    index, group = next((i, g) for i, g in enumerate(find_groups(graph)) if g.approximate and not g.blocked)
    assert "normalizes" in group.approximate and group.units == 32
    assert not check_group(graph, index, IMAGE, torch.arange(0, 32, 2)).ok  # LayerNorm statistics changed


def test_group_norm_removes_whole_groups_exactly():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.GroupNorm(4, 16), nn.ReLU(), nn.Conv2d(16, 5, 1)).eval()
    for p in model[1].parameters():
        nn.init.normal_(p)
    x = (torch.randn(2, 3, 8, 8),)
    graph = tc.capture(model, x)
    group = next(g for g in find_groups(graph) if g.label == "0")
    assert group.kind == "norm-groups" and group.units == 4 and not group.approximate and not group.blocked
    checks = check_equivalence(graph, x)
    assert checks and all(c.ok for c in checks)
    pruned = tc.optimize(graph, "prune{ratio=0.5,round-to=1}").graph
    node = next(n for n in pruned.nodes if n.op == "aten.group_norm")
    assert node.attrs["num_groups"] == 2 and pruned.params["3.weight"].shape == (5, 8, 1, 1)


def test_rms_norm_hidden_is_pruned():
    model = nn.Sequential(nn.Linear(8, 32), nn.RMSNorm(32), nn.Linear(32, 4)).eval()
    graph = tc.capture(model, (torch.randn(3, 8),))
    pruned = tc.optimize(graph, "prune{ratio=0.5}").graph
    assert pruned.params["2.weight"].shape == (4, 16) and pruned.params["1.weight"].shape == (16,)


# ---- one small model per dim rule: it prunes, and zero-vs-remove parity holds ---------------------

class OpModel(nn.Module):
    def __init__(self, body) -> None:
        super().__init__()
        self.a, self.b, self.body = nn.Linear(8, 32), nn.Linear(32, 4), body

    def forward(self, x):
        return self.b(self.body(self.a(x)))


BODIES = {
    "aten.reshape_as": lambda h: (h * 2).reshape_as(h),
    "aten.expand_as": lambda h: h + torch.ones(1, 1, 1).expand_as(h),
    "aten.index.Tensor": lambda h: h[:, torch.tensor([0, 2, 4])],
    "aten.chunk": lambda h: torch.cat([c * (i + 1) for i, c in enumerate(h.chunk(2, dim=-1))], -1),
    "aten.unbind.int": lambda h: torch.stack([h, -h]).unbind(0)[1],
    "aten.roll": lambda h: torch.roll(h, 1, dims=1),
    "aten.pad": lambda h: F.pad(h, (0, 0, 1, 1))[:, 1:-1],
    "aten.new_zeros": lambda h: h.new_zeros(h.shape) + h,
    "aten.einsum": lambda h: torch.einsum("bld,bld->bld", h, h),
    "aten.swapaxes": lambda h: h.swapaxes(1, 2).relu().swapaxes(1, 2),
}


class Body(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, h):
        return self.fn(h)


@pytest.mark.parametrize("op", list(BODIES))
def test_dim_rule_prunes_through(op):
    torch.manual_seed(0)
    model, x = OpModel(Body(BODIES[op])).eval(), (torch.randn(2, 5, 8),)
    graph = tc.capture(model, x)
    assert op in [n.op for n in graph.nodes]
    group = next(g for g in find_groups(graph) if g.label == "a")
    assert not group.blocked, group.blocked
    checks = check_equivalence(graph, x)
    assert checks and all(c.ok for c in checks)
    pruned = tc.optimize(graph, "prune{ratio=0.5,round-to=1}").graph
    assert pruned.params["b.weight"].shape[1] < 32
    with torch.no_grad():
        assert tc.to_torch(pruned)(*x).shape == model(*x).shape
