"""Calibration batches checked against the graph's signature (torchcarve/ir/signature.py), the same
error from tc.optimize, tc.compile and `carve opt --calibration`: the input, expected, got, and the fix."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import torchcarve as tc
from torchcarve.cli import main
from torchcarve.ir.signature import bind_inputs
from tests.models import MODELS

PIPELINE = "quantize{mode=static}"


@pytest.fixture(scope="module")
def cnn():
    model, inputs = MODELS["cnn_bn"]()
    return model, inputs, tc.capture(model, inputs)


def two_inputs():
    text = """graph @pair(%ids: i64[batch,seq], %mask: f32[batch,seq]) -> (f32[batch,seq]) {
  %cast = aten._to_copy(%ids) {dtype=f32} : f32[batch,seq]
  %out = aten.mul.Tensor(%cast, %mask) : f32[batch,seq]
  return %out
}
"""
    return tc.parse(text)


def test_wrong_input_count(cnn):
    _, inputs, graph = cnn
    with pytest.raises(tc.CarveError, match=r"calibration batch 0: the graph takes 1 input\(s\) \(%input: "
                                            r"f32\[2,3,16,16\]\), got 2"):
        tc.optimize(graph, PIPELINE, calibration=[(inputs[0], inputs[0])])


def test_wrong_dtype(cnn):
    _, inputs, graph = cnn
    with pytest.raises(tc.CarveError, match=r"input %input expects f32\[2,3,16,16\], got f64\[2,3,16,16\]") as error:
        tc.optimize(graph, PIPELINE, calibration=[inputs[0].double()])
    assert "torch.float32" in error.value.hint


def test_wrong_static_batch_names_the_fixes(cnn):
    _, inputs, graph = cnn
    with pytest.raises(tc.CarveError, match=r"calibration batch 1: input %input expects f32\[2,3,16,16\], got "
                                            r"f32\[8,3,16,16\] \(dim 0 is 8, the graph needs 2\)") as error:
        tc.optimize(graph, PIPELINE, calibration=[inputs, (torch.randn(8, 3, 16, 16),)])
    assert "--calibration-batch 2" in error.value.hint and "--dynamic-batch" in error.value.hint


def test_wrong_static_inner_dim(cnn):
    _, _, graph = cnn
    with pytest.raises(tc.CarveError, match=r"dim 2 is 15, the graph needs 16") as error:
        tc.optimize(graph, PIPELINE, calibration=[torch.randn(2, 3, 15, 16)])
    assert "--calibration-batch" not in error.value.hint


def test_wrong_rank(cnn):
    _, _, graph = cnn
    with pytest.raises(tc.CarveError, match=r"expects f32\[2,3,16,16\], got f32\[3,16,16\]"):
        tc.optimize(graph, PIPELINE, calibration=[torch.randn(3, 16, 16)])


def test_inconsistent_symbolic_dim_across_inputs():
    graph = two_inputs()
    ids = torch.zeros(2, 5, dtype=torch.int64)
    with pytest.raises(tc.CarveError, match=r"input %mask has seq=6, but %ids has seq=5"):
        bind_inputs(graph.inputs, (ids, torch.randn(2, 6)), "calibration batch 0")
    assert bind_inputs(graph.inputs, (ids, torch.randn(2, 5))) == {"batch": 2, "seq": 5}


def test_symbolic_dims_may_change_between_batches(cnn):
    model, inputs = MODELS["cnn_bn"]()
    graph = tc.capture(model, inputs, dynamic_batch=True)
    result = tc.optimize(graph, PIPELINE, calibration=[torch.randn(2, 3, 16, 16), torch.randn(5, 3, 16, 16)])
    assert result.graph.inputs[0].type.shape[0] == "batch"


def test_compile_checks_calibration_too(cnn):
    model, inputs, _ = cnn
    with pytest.raises(tc.CarveError, match=r"calibration batch 0: input %input expects f32\[2,3,16,16\]"):
        tc.compile(model, inputs, PIPELINE, calibration=[torch.randn(4, 3, 16, 16)])


def test_cli_wrong_calibration_is_one_line(cnn, tmp_path, capsys):
    _, _, graph = cnn
    tc.save(graph, tmp_path / "cnn.carve")
    save_file({"input": torch.randn(16, 3, 16, 16)}, str(tmp_path / "calib.safetensors"))
    code = main(["opt", str(tmp_path / "cnn.carve"), "-p", PIPELINE, "-o", str(tmp_path / "out"),
                 "--calibration", str(tmp_path / "calib.safetensors"), "--calibration-batch", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 2
    assert err[0].startswith("carve opt: error: calibration batch 0: input %input expects f32[2,3,16,16], got "
                             "f32[8,3,16,16]")
    assert "--calibration-batch 2" in err[1]
    for fix in (["--calibration-batch", "2"], []):  # the default batch is the graph's fixed batch size
        assert main(["opt", str(tmp_path / "cnn.carve"), "-p", PIPELINE, "-o", str(tmp_path / "out"),
                     "--calibration", str(tmp_path / "calib.safetensors"), *fix]) == 0
