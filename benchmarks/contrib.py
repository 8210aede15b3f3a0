"""ONNX Runtime contrib fusions (`to_onnx(contrib="onnxruntime")`) on all-MiniLM-L6-v2, on and off.

For fp32 and `fuse,quantize` (int8) files: nodes in the file, nodes in ORT's own optimized graph
(SessionOptions.optimized_model_filepath, ORT_ENABLE_ALL), session load time (median of 3), latency, the
largest difference from the same variant with contrib off, and the cosine of mean-pooled embeddings to the
fp32 file (as quantize.py: int8 rounding makes max differences large either way). Timing as in quantize.py:
every file once per round, rounds interleaved, the median round counts.

    HF_HUB_OFFLINE=1 python benchmarks/contrib.py [--threads 2] [--runs 10] [--rounds 3] [--shapes 8x32,16x128]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import torchcarve as tc
from machine import header
from quantize import CALIBRATION_TEXT, EVALUATION_TEXT, LastHidden, embeddings, latency, load_model, session, windows

ROW = "| {} | {} | {} | {} | {} | {:.0f} | {:.2f} | {:.2f}x | {:.1e} | {:.4f} |"
PIPELINES = {"fp32 (as captured)": "", "fp32 fuse": "fuse", "int8 fuse,quantize": "fuse,quantize"}


def optimized_nodes(path: Path, threads: int) -> tuple[int, float]:
    """(nodes in ORT's optimized graph, median session load seconds)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.optimized_model_filepath = str(path.with_suffix(".ort.onnx"))
    options.log_severity_level = 3  # not the warning that the saved graph is hardware specific
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    loads = []
    for _ in range(3):
        start = time.perf_counter()
        session(path, threads)
        loads.append(time.perf_counter() - start)
    return len(onnx.load(str(path.with_suffix(".ort.onnx"))).graph.node), statistics.median(loads)


def files(graph: tc.Graph, calibration: list, out: Path) -> dict[tuple[str, str], Path]:
    paths = {}
    for label, pipeline in PIPELINES.items():
        carved = tc.optimize(graph, pipeline, calibration=[(t,) for t in calibration]).graph if pipeline else graph
        for contrib in (None, "onnxruntime"):
            path = out / f"{len(paths)}.onnx"
            tc.to_onnx(carved, path, contrib=contrib)
            paths[label, "on" if contrib else "off"] = path
    return paths


def run_shape(tokenizer, model, batch: int, seq: int, args, out: Path) -> list[tuple]:
    calibration = [windows(tokenizer, CALIBRATION_TEXT, batch, seq, offset=7 * k) for k in range(4)]
    evaluation = windows(tokenizer, EVALUATION_TEXT, batch, seq)
    paths = files(tc.capture(LastHidden(model), (evaluation,)), calibration, out)
    feeds = {"input_ids": evaluation.numpy()}
    sessions = {key: session(path, args.threads) for key, path in paths.items()}
    timings: dict = {key: [] for key in paths}
    for _ in range(args.rounds):
        for key, sess in sessions.items():
            timings[key].append(latency(sess, feeds, args.runs))
    outputs = {key: sess.run(None, feeds)[0] for key, sess in sessions.items()}
    expected = embeddings(sessions[next(iter(sessions))], feeds)
    rows = []
    for (label, contrib), path in paths.items():
        ort_nodes, load = optimized_nodes(path, args.threads)
        off = timings[label, "off"]
        speedup = statistics.median(b / t for b, t in zip(off, timings[label, contrib]))
        diff = float(np.abs(outputs[label, contrib] - outputs[label, "off"]).max())
        cosine = float((embeddings(sessions[label, contrib], feeds) * expected).sum(1).mean())
        rows.append((f"{batch}x{seq}", label, contrib, len(onnx.load(str(path)).graph.node), ort_nodes, load * 1e3,
                     statistics.median(timings[label, contrib]) * 1e3, speedup, diff, cosine))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", default="8x32,16x128")
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer, model = load_model()
    print(header(f"HF_HUB_OFFLINE=1 python benchmarks/contrib.py --runs {args.runs} --rounds {args.rounds} "
                 f"--shapes {args.shapes}"))
    print(f"all-MiniLM-L6-v2, onnxruntime {ort.__version__}, {args.threads} threads\n")
    print("| batch x seq | model | contrib | nodes in file | nodes after ORT optimizer | load ms | ms | "
          "speed-up vs off | max abs diff vs off | cosine to fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for shape in args.shapes.split(","):
        batch, seq = map(int, shape.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            for row in run_shape(tokenizer, model, batch, seq, args, Path(tmp)):
                print(ROW.format(*row), flush=True)


if __name__ == "__main__":
    main()
