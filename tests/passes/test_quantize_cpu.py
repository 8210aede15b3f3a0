"""The CPU decides: int8 feature detection (mocked both ways) and what quantize chooses from it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcarve as tc
from torchcarve.analysis import cpu as cpu_module
from torchcarve.analysis.cpu import CpuInt8, from_numpy, parse_cpuinfo

AVX2 = "processor : 0\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
VNNI = "processor : 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni\n"
AVX_VNNI = "flags : avx avx2 avx_vnni\n"
AMX = "flags : avx2 avx512f amx_tile amx_int8 amx_bf16\n"
ARM = "Features : fp asimd asimddp\n"


@pytest.mark.parametrize("text, machine, saturates, int8_compute, features", [
    (AVX2, "x86_64", True, False, {"avx2"}),
    (VNNI, "x86_64", False, True, {"avx2", "avx512-vnni"}),
    (AVX_VNNI, "x86_64", False, True, {"avx2", "avx-vnni"}),
    (AMX, "x86_64", False, True, {"avx2", "amx"}),
    (ARM, "aarch64", False, False, set()),
    ("", "x86_64", True, False, set()),  # nothing known: assume the saturating kernel (7 bits are always safe)
])
def test_cpuinfo_flags_decide(text, machine, saturates, int8_compute, features):
    found = parse_cpuinfo(text, machine)
    assert found.features == features
    assert found.saturates is saturates and found.int8_compute is int8_compute


def test_numpy_fallback_reads_dispatch_features(monkeypatch):
    """Off Linux the features come from numpy's CPU dispatch table."""
    import numpy._core._multiarray_umath as umath
    monkeypatch.setattr(umath, "__cpu_features__", {"AVX2": True, "AVX512VNNI": True, "AVX512_SPR": False})
    found = from_numpy("amd64")
    assert found.features == {"avx2", "avx512-vnni"} and not found.saturates and found.source == "numpy"
    monkeypatch.setattr(umath, "__cpu_features__", {"AVX2": True, "AVX512VNNI": False})
    assert from_numpy("amd64").saturates


def _mocked(monkeypatch, text: str, machine: str = "x86_64") -> CpuInt8:
    found = parse_cpuinfo(text, machine)
    monkeypatch.setattr("torchcarve.passes.quantize.detect", lambda: found)
    return found


def _quantize(pipeline: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    return tc.optimize(tc.capture(model, (torch.randn(2, 32),)), pipeline)


@pytest.mark.parametrize("text, qmax, bits", [(AVX2, 63, "7"), (VNNI, 127, "8"), (AMX, 127, "8"), (ARM, 127, "8")])
def test_reduce_range_auto_follows_the_cpu(monkeypatch, text, qmax, bits):
    _mocked(monkeypatch, text, "aarch64" if text is ARM else "x86_64")
    result = _quantize("quantize")
    weights = [p for name, p in result.graph.params.items() if name.endswith("weight_q")]
    assert weights and max(int(w.abs().max()) for w in weights) == qmax
    stats = result.report[0].stats
    assert stats["weight bits"].startswith(f"{bits} (auto: ")
    assert stats["layers"]["0"]["precision"] == f"int{bits} dynamic"


@pytest.mark.parametrize("option, qmax", [("true", 63), ("false", 127)])
def test_reduce_range_option_overrides_the_cpu(monkeypatch, option, qmax):
    _mocked(monkeypatch, VNNI if option == "true" else AVX2)
    result = _quantize(f"quantize{{reduce-range={option}}}")
    weights = [p for name, p in result.graph.params.items() if name.endswith("weight_q")]
    assert max(int(w.abs().max()) for w in weights) == qmax
    assert result.report[0].stats["weight bits"] == f"{7 if qmax == 63 else 8} (reduce-range={option})"


@pytest.mark.parametrize("text, compute, level", [(VNNI, "auto", 4), (AVX2, "auto", 0), (AVX2, "int8", 4),
                                                  (VNNI, "float", 0)])
def test_weight_only_compute_follows_the_cpu(monkeypatch, text, compute, level, tmp_path):
    import onnx
    _mocked(monkeypatch, text)
    result = _quantize(f"quantize{{mode=weight-only,compute={compute}}}")
    expected = ("int8" if level else "float") + f" (MatMulNBits accuracy_level={level}"
    assert result.report[0].stats["compute"].startswith(expected)
    path = tmp_path / "m.onnx"
    tc.to_onnx(result.graph, path)
    nodes = [n for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits"]
    assert nodes and all(next(a.i for a in n.attribute if a.name == "accuracy_level") == level for n in nodes)


def test_int8_compute_runs_in_onnxruntime(monkeypatch, tmp_path):
    """accuracy_level=4 files run in ORT and stay close to the float-compute result (int8 activations per block)."""
    ort = pytest.importorskip("onnxruntime")
    _mocked(monkeypatch, VNNI)
    result = _quantize("quantize{mode=weight-only,compute=auto}")
    path = tmp_path / "m.onnx"
    tc.to_onnx(result.graph, path)
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    expected = tc.to_torch(result.graph)(x).detach().numpy()
    assert abs(got - expected).max() <= 0.02 * abs(expected).max()


def test_detect_reads_this_machine():
    found = cpu_module.detect()
    assert found.source in ("/proc/cpuinfo", "numpy", "unknown") and found.machine
