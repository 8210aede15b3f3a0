"""Calibration block by block against whole-graph calibration: peak resident memory, time, bytes read.

A random-init Llama-style decoder (8 layers, hidden 512, ~80 MB of float32 weights) is captured
once and saved; each pipeline then runs in a fresh interpreter on the lazily loaded graph, once
whole-graph (no budget) and once under a memory budget (block by block, weights released after
each block). Peak RSS is the process's VmHWM during the pass; "extra" is above the level after loading.

    PYTHONPATH=. /work/venv/bin/python -m benchmarks.sequential_calibration [PIPELINE ...]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PIPELINES = ("low-rank{method=whitened,ratio=0.5}", "quantize{mode=static}",
             "low-rank{method=whitened,ratio=0.5,sequential=true}")
BUDGET = 64 * 2**20
BATCHES, SHAPE = 2, (1, 64)
MiB = 2**20


def build(folder: str) -> int:
    """Capture the model and save it to `folder`; returns its weight bytes."""
    import torch
    import transformers

    import torchcarve as tc

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                                      num_key_value_heads=8, intermediate_size=1024, vocab_size=2000,
                                      max_position_embeddings=128, use_cache=False, attn_implementation="eager")
    model = transformers.LlamaModel(config).eval()
    graph = tc.capture(model, (torch.randint(0, 2000, SHAPE),))
    tc.save(graph, folder)
    return sum(p.numel() * 4 for p in model.parameters())


def child(folder: str, pipeline: str, budget: int | None) -> dict:
    """One run in this (fresh) interpreter: load lazily, run the pass, measure."""
    import torch

    import torchcarve as tc
    from torchcarve.analysis.memory import peak_memory
    from torchcarve.passes import PassContext, PassManager, parse_pipeline

    graph = tc.load(folder)
    generator = torch.Generator().manual_seed(1)
    data = [(torch.randint(0, 2000, SHAPE, generator=generator),) for _ in range(BATCHES)]
    manager = PassManager(parse_pipeline(pipeline), PassContext(calibration=data, max_memory=budget))
    start = time.perf_counter()
    with peak_memory() as peak:
        report = manager.run(graph).report
    return {"seconds": time.perf_counter() - start, "peak": peak.peak, "extra": peak.extra,
            "read": sum(line.bytes_read for line in report)}


def main(pipelines: list[str]) -> None:
    from benchmarks.machine import header

    print(header("PYTHONPATH=. /work/venv/bin/python -m benchmarks.sequential_calibration " + " ".join(pipelines)))
    with tempfile.TemporaryDirectory() as folder:
        weights = build(folder)
        print(f"weights {weights / MiB:.0f} MiB, {BATCHES} calibration batches of {SHAPE[0]}x{SHAPE[1]} tokens\n")
        print("| pipeline | calibration | peak RSS MiB | extra MiB | weights read MiB | s |")
        print("|---|---|---:|---:|---:|---:|")
        for pipeline in pipelines:
            for budget in (None, BUDGET):
                result = json.loads(subprocess.run(
                    [sys.executable, "-m", "benchmarks.sequential_calibration", "--child", folder, pipeline, str(budget)],
                    check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                how = "whole graph" if budget is None else f"block by block, max-memory {budget // MiB} MiB"
                print(f"| `{pipeline}` | {how} | {result['peak'] / MiB:.0f} | {result['extra'] / MiB:.0f} | "
                      f"{result['read'] / MiB:.0f} | {result['seconds']:.1f} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        folder, pipeline, budget = sys.argv[2:5]
        print(json.dumps(child(folder, pipeline, None if budget == "None" else int(budget))))
    else:
        main(sys.argv[1:] or list(PIPELINES))
