"""Run torchcarve's passes as a tool over an ONNX file, like `mlir-opt` over MLIR.

    python examples/onnx_passes.py [--fast] [--model some.onnx]

Without --model it first writes a small CNN with BatchNorm as `cnn.onnx` (any ONNX file works).
Then it runs the `carve` command line on it: `carve show`, `carve opt -p "fuse"` with numeric
checks, and `carve export --to onnx`, and compares the result with the original in onnxruntime.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

import torchcarve as tc


def write_sample_onnx(path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10),
    ).eval()
    tc.to_onnx(tc.capture(model, (torch.randn(1, 3, 32, 32),)), path)


def carve(*args: str) -> None:
    """Run the `carve` command line (as `python -m torchcarve`, which is the same program)."""
    print("$ carve", " ".join(args))
    subprocess.run([sys.executable, "-m", "torchcarve", *args], check=True)


def run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def random_feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an ONNX file with float inputs (default: a sample CNN)")
    parser.add_argument("--fast", action="store_true", help="accepted for the tests; this example is already quick")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="carve-onnx-"))
    source = args.model or work / "cnn.onnx"
    if args.model is None:
        write_sample_onnx(source)

    carve("show", str(source), "--summary-only")
    carve("opt", str(source), "-p", "fuse", "--check-numerics", "-o", str(work / "fused.carve"))
    carve("export", str(work / "fused.carve"), "--to", "onnx", "-o", str(work / "fused.onnx"))

    original, fused = onnx.load(str(source)), onnx.load(str(work / "fused.onnx"))
    feeds = random_feeds(original)
    expected, actual = run_onnx(source, feeds), run_onnx(work / "fused.onnx", feeds)
    difference = max(float(np.abs(e - a).max()) for e, a in zip(expected, actual))
    print(f"nodes {len(original.graph.node)} -> {len(fused.graph.node)}; max |diff| in onnxruntime {difference:.1e}")
    assert difference < 1e-4, "fuse is exact: the outputs must not change"
    print(f"files in {work}")


if __name__ == "__main__":
    main()
