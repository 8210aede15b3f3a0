"""ONNX opsets: every test model written at opsets 13-23, each op in its opset's form, checker-clean and
matching PyTorch in onnxruntime; the default picks the lowest opset the graph needs; too low is a CarveError."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import torchcarve as tc
from torchcarve.cli import main
from torchcarve.errors import CarveError, OpsetError
from torchcarve.ir.ops.onnx_ops import DEFAULT_OPSET, OPSET_RANGE

from .models import MODELS

OPSETS = [13, 17, 18, 21, 23]
CALIBRATION = [(torch.randn(4, 16, generator=torch.Generator().manual_seed(i)),) for i in range(4)]
# name -> (test model, pipeline run before export, ORT tolerance)
CASES = {
    "mlp": ("mlp", "", 1e-5),
    "cnn_bn": ("cnn_bn", "", 1e-5),
    "residual": ("residual", "", 1e-5),
    "depthwise": ("depthwise_separable", "", 1e-5),
    "transformer": ("transformer_encoder", "", 1e-5),
    "hf_bert_fused": ("hf_bert", "fuse", 1e-4),   # layer_norm, gelu, carve.multi_head_attention
    "mlp_dynamic_int8": ("mlp", "quantize", 1e-5),
    "mlp_static_int8": ("mlp", "quantize{mode=static}", 0.05),
}


@functools.cache
def prepared(case: str) -> tuple[tc.Graph, tuple, torch.nn.Module]:
    name, pipeline, _ = CASES[case]
    if name not in MODELS:
        pytest.skip(f"{name} needs transformers")
    model, inputs = MODELS[name]()
    graph = tc.capture(model, inputs)
    if pipeline:
        calibration = CALIBRATION if name == "mlp" else [inputs]  # batches shaped like the model's inputs
        graph = tc.optimize(graph, pipeline, calibration=calibration).graph
    return graph, inputs, tc.to_torch(graph)


def run_ort(proto: onnx.ModelProto, inputs: tuple) -> list[np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)})


def op_types(proto: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in proto.graph.node}


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_test_model_at_every_opset_is_checker_clean_and_matches_in_onnxruntime(case: str, opset: int) -> None:
    graph, inputs, module = prepared(case)
    proto = tc.to_onnx(graph, opset=opset)
    assert proto.opset_import[0].version == opset
    onnx.checker.check_model(proto, full_check=True)
    with torch.no_grad():
        expected = module(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    actual = run_ort(proto, inputs)
    tolerance = CASES[case][2]
    for got, want in zip(actual, expected):
        np.testing.assert_allclose(got, want.numpy(), rtol=tolerance, atol=tolerance)


def reduce_axes(proto: onnx.ModelProto) -> tuple[list, list]:
    """(attribute names, input counts) of the ReduceMean nodes."""
    nodes = [n for n in proto.graph.node if n.op_type == "ReduceMean"]
    assert nodes
    return sorted({a.name for n in nodes for a in n.attribute}), sorted({len(n.input) for n in nodes})


def test_reduce_axes_are_an_attribute_before_opset_18_and_an_input_from_it() -> None:
    graph = tc.capture(*MODELS["transformer_encoder"]())  # layer_norm decomposes at 13: ReduceMean
    graph_rms = tc.capture(torch.nn.RMSNorm(8).eval(), (torch.randn(2, 8),))
    assert reduce_axes(tc.to_onnx(graph, opset=13)) == (["axes", "keepdims"], [1])
    assert reduce_axes(tc.to_onnx(graph_rms, opset=17)) == (["axes", "keepdims"], [1])
    assert reduce_axes(tc.to_onnx(graph_rms, opset=18)) == (["keepdims"], [2])


@pytest.mark.parametrize("opset, present, absent", [
    (13, {"ReduceMean", "Erf"}, {"LayerNormalization", "Gelu", "Attention"}),
    (17, {"LayerNormalization", "Erf"}, {"Gelu", "Attention"}),
    (20, {"LayerNormalization", "Gelu", "MultiHeadAttention"}, {"Attention"}),
    (23, {"LayerNormalization", "Gelu", "Attention"}, {"MultiHeadAttention"}),
])
def test_each_op_is_written_in_its_opsets_form(opset: int, present: set, absent: set) -> None:
    graph = prepared("hf_bert_fused")[0]
    types = op_types(tc.to_onnx(graph, opset=opset))
    assert present <= types and not (absent & types)


def test_older_forms_of_mish_hardswish_tril_run_at_opset_13() -> None:
    class Block(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.mish(x).tril(1) + torch.nn.functional.hardswish(x).triu()

    x = torch.randn(2, 5, 5)
    graph = tc.capture(Block(), (x,))
    old, new = tc.to_onnx(graph, opset=13), tc.to_onnx(graph, opset=18)
    assert not ({"Mish", "HardSwish", "Trilu"} & op_types(old)) and {"Mish", "HardSwish", "Trilu"} <= op_types(new)
    for proto in (old, new):
        np.testing.assert_allclose(run_ort(proto, (x,))[0], Block()(x).numpy(), rtol=1e-5, atol=1e-6)


def blocked_int4_graph() -> tc.Graph:
    """Group size 8: no MatMulNBits form, so DequantizeLinear with block_size (opset 21)."""
    model, inputs = MODELS["mlp"]()
    return tc.optimize(tc.capture(model, inputs), "quantize{mode=weight-only,dtype=int4,group-size=8}").graph


def test_an_op_newer_than_the_asked_opset_is_a_carve_error_naming_both() -> None:
    with pytest.raises(OpsetError, match="DequantizeLinear.*block_size.*needs opset 21; opset 18 was asked") as info:
        tc.to_onnx(blocked_int4_graph(), opset=18)
    assert info.value.needed == 21 and "--opset 21" in info.value.hint


@pytest.mark.parametrize("opset", [12, 24])
def test_an_opset_outside_the_range_is_a_carve_error(opset: int) -> None:
    with pytest.raises(CarveError, match=f"opset {opset} is not supported"):
        tc.to_onnx(tc.capture(*MODELS["mlp"]()), opset=opset)


def test_default_opset_is_the_floor_or_the_lowest_the_graph_needs() -> None:
    assert OPSET_RANGE.start <= 13 and OPSET_RANGE.stop > 23 and DEFAULT_OPSET in OPSET_RANGE
    assert tc.to_onnx(tc.capture(*MODELS["transformer_encoder"]())).opset_import[0].version == DEFAULT_OPSET
    graph = blocked_int4_graph()
    proto = tc.to_onnx(graph)
    assert proto.opset_import[0].version == 21
    x = MODELS["mlp"]()[1]
    np.testing.assert_allclose(run_ort(proto, x)[0], tc.to_torch(graph)(*x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_cli_export_writes_the_asked_opset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    graph = tc.capture(*MODELS["transformer_encoder"]())
    tc.save(graph, tmp_path / "m.carve")
    assert main(["export", str(tmp_path / "m.carve"), "--to", "onnx", "-o", str(tmp_path / "m.onnx"), "--opset", "13"]) == 0
    assert "opset 13" in capsys.readouterr().out
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert proto.opset_import[0].version == 13 and "LayerNormalization" not in op_types(proto)
    code = main(["export", str(tmp_path / "m.carve"), "--to", "onnx", "-o", str(tmp_path / "bad.onnx"), "--opset", "9"])
    assert code != 0 and "opset 9 is not supported" in capsys.readouterr().err
    assert not (tmp_path / "bad.onnx").exists()


def test_an_attribute_value_newer_than_the_opset_is_a_carve_error_and_the_default_rises_to_it() -> None:
    class Circular(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(x, (1, 2), mode="circular")

    x = torch.randn(1, 2, 5)
    graph = tc.capture(Circular(), (x,))
    with pytest.raises(OpsetError, match="Pad with mode='wrap', which needs opset 19; opset 18 was asked"):
        tc.to_onnx(graph, opset=18)
    proto = tc.to_onnx(graph)
    assert proto.opset_import[0].version == 19
    np.testing.assert_allclose(run_ort(proto, (x,))[0], Circular()(x).numpy())


@pytest.mark.parametrize("module, x, native, since", [
    (torch.nn.GroupNorm(2, 4), torch.randn(2, 4, 3, 3), "GroupNormalization", 21),
    (torch.nn.RMSNorm(8), torch.randn(2, 3, 8), "RMSNormalization", 23),
])
def test_norms_use_the_native_op_from_its_opset_and_decompose_before(module, x, native: str, since: int) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(0.5, 1.5)
    graph = tc.capture(module.eval(), (x,))
    for opset in (since - 1, since):
        proto = tc.to_onnx(graph, opset=opset)
        assert (native in op_types(proto)) == (opset >= since)
        np.testing.assert_allclose(run_ort(proto, (x,))[0], module(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_int4_initializers_are_packed_bytes_and_go_to_external_data(tmp_path: Path) -> None:
    graph = blocked_int4_graph()
    tc.to_onnx(graph, tmp_path / "m.onnx", external_data=True)
    proto = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    int4 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT4]
    assert int4 and all(not t.int32_data for t in int4)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in int4)
    x = MODELS["mlp"]()[1]
    expected = tc.to_torch(graph)(*x).detach().numpy()
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    from_file = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), x)})[0]
    np.testing.assert_allclose(from_file, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run_ort(tc.to_onnx(graph), x)[0], expected, rtol=1e-5, atol=1e-5)
