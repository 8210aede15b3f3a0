"""matrix-kan: the B-spline recursion of KAN layers found, proved and replaced by interval index,
power basis and M_k; parity with eager PyTorch inside and outside the grid, onnxruntime, pykan,
non-uniform grids left alone, and prune / quantize on KAN layers."""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch

import torchcarve as tc
from torchcarve.passes.prune.oracle import check_equivalence
from torchcarve.passes import PASSES
from torchcarve.passes.kan.basis import basis_matrix, cox_de_boor

from ..kan_models import KAN, ConvKAN, KANLinear, KANTransformerBlock
from .helpers import onnx_parity

RECURSION_OPS = ("aten.div.Tensor", "aten.ge.Tensor")
NEW_OPS = ("aten.floor", "aten.clamp", "aten.embedding", "aten.stack", "aten.matmul", "aten.constant_pad_nd", "aten.gather")
REL_ERROR = 1e-5  # float32 rounding the pass may add, relative to the output's scale


def rewrite(model: torch.nn.Module, x: torch.Tensor, pipeline: str = "matrix-kan") -> tc.OptimizeResult:
    graph = tc.capture(model, (x,))
    before = graph.to_text()
    result = tc.optimize(graph, pipeline, check_numerics=True)
    assert graph.to_text() == before
    return result


def grid_inputs(n: int, features: int, spread: float) -> torch.Tensor:
    """Points over [-spread, spread]: inside the grid for spread < 1, largely outside for spread > 1."""
    torch.manual_seed(1)
    return (torch.rand(n, features) * 2 - 1) * spread


def assert_relative(actual: torch.Tensor, expected: torch.Tensor, rel: float = REL_ERROR) -> None:
    error = float((actual - expected).abs().max())
    assert error <= rel * max(1.0, float(expected.abs().max())), error


@pytest.mark.parametrize("k", range(1, 9))
def test_basis_matrix_is_exact_partition_of_unity(k: int) -> None:
    """[1, u, ..., u^k] @ M_k sums to 1 for every u: the rows of M_k sum to (1, 0, ..., 0) exactly."""
    M = basis_matrix(k)
    assert [sum(row, Fraction(0)) for row in M] == [1] + [0] * k
    assert all(isinstance(v, Fraction) for row in M for v in row)


def test_basis_matrix_k1_is_the_hat_function() -> None:
    assert basis_matrix(1) == ((1, 0), (-1, 1))  # on an interval: B_{j-1} = 1 - u, B_j = u


@pytest.mark.parametrize("k,G", [(1, 5), (2, 3), (3, 5), (4, 8), (5, 10), (8, 20)])
@pytest.mark.parametrize("spread", [0.9, 3.0])
def test_kan_mlp_parity(k: int, G: int, spread: float) -> None:
    torch.manual_seed(0)
    model = KAN([5, 7, 3], G, k).eval()
    x = grid_inputs(64, 5, spread)
    result = rewrite(model, x)
    stats = result.report[0].stats
    assert [(r["k"], r["grid"]) for r in stats["rewritten"]] == [(k, G)] * 2 and stats["left"] == []
    ops = result.graph.op_histogram()
    assert ops["aten.div.Tensor"] == 0 and all(ops[op] >= 2 for op in NEW_OPS), ops
    with torch.no_grad():
        assert_relative(tc.to_torch(result.graph)(x), model(x))


def test_outside_the_grid_matches_exactly() -> None:
    """Far outside the extended grid every basis is 0 in both forms: only the SiLU branch is left, bit for bit."""
    torch.manual_seed(0)
    model = KAN([4, 3], 5, 3).eval()
    x = torch.cat([torch.full((8, 4), -7.5), torch.full((8, 4), 9.0), torch.full((8, 4), 1.0 + 3 * 0.4)])
    result = rewrite(model, x)
    with torch.no_grad():
        assert torch.equal(tc.to_torch(result.graph)(x), model(x))


class Bases(torch.nn.Module):
    """Just the recursion, to measure the basis error alone."""

    def __init__(self, layer: KANLinear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer.b_splines(x) * 1.0


@pytest.mark.parametrize("k,G", [(1, 5), (1, 20), (3, 5), (8, 5), (8, 20)])
def test_basis_error_against_float64(k: int, G: int) -> None:
    """The rewritten bases are no further from the exact (float64) bases than float32 rounding: pass is exact."""
    layer = KANLinear(6, 2, G, k)
    x = grid_inputs(512, 6, 1.3)
    result = rewrite(Bases(layer), x)
    assert result.report[0].stats["rewritten"]
    exact = cox_de_boor(x.double(), layer.grid.double(), k)
    ours = tc.to_torch(result.graph)(x).double()
    original = layer.b_splines(x).double()
    assert float((ours - exact).abs().max()) <= REL_ERROR
    assert float((ours - original).abs().max()) <= REL_ERROR
    assert PASSES["matrix-kan"].exact


def test_ir_before_and_after() -> None:
    """The recursion's compares, divisions and slices go; the interval/power-basis/gather chain comes in."""
    layer = KANLinear(2, 1, grid_size=2, spline_order=1, scaler=False)
    x = grid_inputs(4, 2, 1.0)
    graph = tc.capture(layer, (x,))
    result = tc.optimize(graph, "matrix-kan")
    before = [n.op for n in graph.nodes if n.op != "param"]
    after = [n.op for n in result.graph.nodes if n.op != "param"]
    assert before.count("aten.div.Tensor") == 2 and before.count("aten.slice.Tensor") >= 8
    assert after == [
        "aten.reshape", "aten.silu", "aten.linear",
        "aten.sub.Tensor", "aten.mul.Tensor", "aten.floor", "aten.clamp",
        "aten.to.dtype", "aten.add.Tensor", "aten.embedding", "aten.squeeze.dim",  # the interval's own knot
        "aten.sub.Tensor", "aten.mul.Tensor", "aten.clamp",
        "aten.ones_like", "aten.stack", "aten.matmul",
        "aten.ge.Tensor", "aten.lt.Tensor", "aten.__and__.Tensor", "aten.to.dtype", "aten.unsqueeze", "aten.mul.Tensor",
        "aten.constant_pad_nd", "aten.unsqueeze", "aten.sub.Tensor", "aten.clamp", "aten.to.dtype", "aten.gather",
        "aten.reshape", "aten.reshape", "aten.linear", "aten.add.Tensor", "aten.reshape"], after
    assert "matrix_kan.reshape.M" in result.graph.params


def test_non_uniform_grid_is_left_alone_and_reported() -> None:
    torch.manual_seed(0)
    knots = torch.tensor([-2.0, -1.5, -1.2, -0.5, 0.0, 0.3, 1.0, 1.4, 2.2])
    layer = KANLinear(3, 2, spline_order=2, grid=knots.expand(3, -1).contiguous()).eval()
    graph = tc.capture(layer, (grid_inputs(8, 3, 1.0),))
    result = tc.optimize(graph, "matrix-kan")
    assert not result.changed and result.graph.to_text() == graph.to_text()
    assert result.report[0].stats["left"] == [{"at": "reshape", "reason": "grid is not uniform"}]


def test_look_alike_that_is_not_a_b_spline_is_left_alone() -> None:
    """Level 0 compares against a grid, but the rest is not Cox–de Boor: the probe proof refuses it."""
    class Fake(KANLinear):
        def b_splines(self, x: torch.Tensor) -> torch.Tensor:
            x = x.unsqueeze(-1)
            bases = ((x >= self.grid[:, :-1]) & (x < self.grid[:, 1:])).to(x.dtype)
            return (x - self.grid[:, :-2]) * bases[:, :, :-1] + bases[:, :, 1:]

    layer = Fake(3, 2, grid_size=4, spline_order=1).eval()
    result = tc.optimize(tc.capture(layer, (grid_inputs(8, 3, 1.0),)), "matrix-kan")
    assert not result.changed
    assert "does not compute the B-spline bases" in result.report[0].stats["left"][0]["reason"]


def test_per_feature_grids() -> None:
    """Each input feature may have its own uniform grid (pykan's grid update does this)."""
    torch.manual_seed(0)
    G, k = 6, 3
    h = torch.tensor([0.1, 0.5, 1.0])[:, None]
    grid = (torch.arange(-k, G + k + 1, dtype=torch.float32) * h + torch.tensor([-0.3, -1.5, -3.0])[:, None]).contiguous()
    layer = KANLinear(3, 4, G, k, grid=grid).eval()
    x = torch.randn(64, 3) * 2
    result = rewrite(layer, x)
    assert len(result.report[0].stats["rewritten"]) == 1
    with torch.no_grad():
        assert_relative(tc.to_torch(result.graph)(x), layer(x))


def test_conv_kan_and_kan_transformer() -> None:
    torch.manual_seed(0)
    for model, x, layers in [(ConvKAN(2, 3, grid_size=4, spline_order=2), torch.randn(2, 2, 5, 5), 1),
                             (KANTransformerBlock(dim=8, heads=2, hidden=12), torch.randn(2, 5, 8), 2)]:
        result = rewrite(model.eval(), x)
        assert len(result.report[0].stats["rewritten"]) == layers
        with torch.no_grad():
            assert_relative(tc.to_torch(result.graph)(x), model(x))


@pytest.mark.parametrize("k,G", [(1, 5), (3, 5), (6, 12)])
def test_onnxruntime_parity(k: int, G: int, tmp_path) -> None:
    torch.manual_seed(0)
    model = KAN([4, 6, 2], G, k).eval()
    x = grid_inputs(32, 4, 1.5)
    result = rewrite(model, x)
    onnx_parity(result.graph, (x,), tmp_path)
    proto = tc.to_onnx(result.graph, tmp_path / "kan.onnx")
    ops = {n.op_type for n in proto.graph.node}
    assert {"Floor", "Clip", "GatherElements", "MatMul"} <= ops, ops


def test_rewrite_of_an_imported_onnx_model(tmp_path) -> None:
    """The recursion exported to ONNX and imported back is found and rewritten as well."""
    torch.manual_seed(0)
    model = KAN([4, 5, 2], 5, 3).eval()
    x = grid_inputs(16, 4, 1.5)
    tc.to_onnx(tc.capture(model, (x,)), tmp_path / "recursion.onnx")
    graph = tc.from_onnx(tmp_path / "recursion.onnx")
    result = tc.optimize(graph, "matrix-kan")
    assert len(result.report[0].stats["rewritten"]) == 2, result.report[0].stats
    with torch.no_grad():
        assert_relative(tc.to_torch(result.graph)(x), model(x))


def test_pykan_layer_and_model() -> None:
    kan = pytest.importorskip("kan", reason="pykan (optional extra `kan`) is not installed")

    class FirstOutput(torch.nn.Module):
        def __init__(self, layer: torch.nn.Module) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x)[0]

    torch.manual_seed(0)
    x = torch.randn(32, 3) * 1.5
    layer = FirstOutput(kan.KANLayer(in_dim=3, out_dim=2, num=5, k=3)).eval()
    model = kan.KAN(width=[3, 4, 2], grid=5, k=3, seed=0, auto_save=False, save_act=False).eval()
    for module, layers in [(layer, 1), (model, 2)]:
        result = rewrite(module, x)
        assert len(result.report[0].stats["rewritten"]) == layers
        with torch.no_grad():
            assert_relative(tc.to_torch(result.graph)(x), module(x))


def test_prune_kan_units_with_the_oracle() -> None:
    """After matrix-kan, pruning a hidden KAN unit removes its spline and base weights on both sides, and
    the grid constants of that input: zeroing equals removing (the oracle)."""
    torch.manual_seed(0)
    model = KAN([4, 8, 6, 3], 5, 3).eval()
    x = grid_inputs(32, 4, 1.5)
    graph = tc.optimize(tc.capture(model, (x,)), "matrix-kan").graph
    checks = check_equivalence(graph, [x])
    assert len(checks) == 2 and all(c.ok for c in checks), checks
    result = tc.optimize(graph, "prune{ratio=0.5,round-to=1}")
    stats = result.report[0].stats
    assert [(row["before"], row["after"]) for row in stats["layers"]] == [(8, 4), (6, 3)]
    params = result.graph.params
    assert params["layers.1.spline_weight"].shape == (3, 4, 8) and params["layers.0.base_weight"].shape == (4, 4)
    assert params["matrix_kan.reshape_4.inv_h"].shape == (4,)
    assert tc.to_torch(result.graph)(x).shape == (32, 3)


def test_prune_importance_is_spline_and_base_l1() -> None:
    """The unit whose spline and base weights are smallest goes first."""
    torch.manual_seed(0)
    model = KAN([3, 4, 2], 5, 2).eval()
    with torch.no_grad():
        for tensor in (model.layers[0].spline_weight[1], model.layers[0].base_weight[1],
                       model.layers[1].spline_weight[:, 1], model.layers[1].base_weight[:, 1]):
            tensor.mul_(1e-3)
    x = grid_inputs(16, 3, 1.0)
    result = tc.optimize(tc.capture(model, (x,)), "matrix-kan,prune{ratio=0.25,round-to=1}")
    kept = result.graph.params["layers.0.base_weight"]
    assert kept.shape == (3, 3)
    assert torch.equal(kept, model.layers[0].base_weight.detach()[[0, 2, 3]])


def test_weight_only_quantization_of_spline_coefficients() -> None:
    torch.manual_seed(0)
    model = KAN([4, 6, 3], 5, 3).eval()
    x = grid_inputs(32, 4, 1.0)
    graph = tc.capture(model, (x,))
    unfolded = tc.optimize(graph, "matrix-kan,quantize{mode=weight-only}").graph
    assert unfolded.op_histogram()["carve.weight_only_linear"] == 2  # scaler * spline weight is computed: left float
    result = tc.optimize(graph, "matrix-kan,fold-constants,quantize{mode=weight-only}")
    assert result.graph.op_histogram()["carve.weight_only_linear"] == 4  # the base and the spline linear of each layer
    with torch.no_grad():
        expected, actual = model(x), tc.to_torch(result.graph)(x)
    error = float((actual - expected).abs().max() / expected.abs().max())
    assert 0 < error < 0.02, error
