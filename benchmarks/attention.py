"""Attention lowering on all-MiniLM-L6-v2 (real weights, offline): ONNX Runtime latency of the fp32 export.

Variants of one captured graph: no passes; `fuse` without fuse-attention (attention stays sdpa, exported as
Transpose/MatMul/Softmax/MatMul with the head split/merge Transposes and the mask Add); `fuse` at opset 18
(com.microsoft MultiHeadAttention) and at opset 23 (ONNX Attention). Rounds are interleaved so a busy machine
slows every variant alike; the best round's median is reported.

    HF_HUB_OFFLINE=1 python benchmarks/attention.py [--threads 2] [--runs 20] [--rounds 5]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import torchcarve as tc
from quantize import EVALUATION_TEXT, LastHidden, latency, load_model, session, windows

FUSE_WITHOUT_ATTENTION = "simplify,fold-constants,fold-bn,reparam,merge-linear,cse,dce"
VARIANTS = {  # label -> (pipeline, opset)
    "no passes": ("", 18),
    "fuse, attention as sdpa (decomposed)": (FUSE_WITHOUT_ATTENTION, 18),
    "fuse, opset 18 (MultiHeadAttention)": ("fuse", 18),
    "fuse, opset 23 (Attention)": ("fuse", 23),
}


def export_variants(graph: tc.Graph, out: Path) -> dict[str, Path]:
    paths = {}
    for label, (pipeline, opset) in VARIANTS.items():
        optimized = tc.optimize(graph, pipeline).graph if pipeline else graph
        paths[label] = out / f"variant_{len(paths)}.onnx"
        tc.to_onnx(optimized, paths[label], opset=opset)
    return paths


def run_shape(tokenizer, model, batch: int, seq: int, args: argparse.Namespace, out: Path) -> list[tuple]:
    ids = windows(tokenizer, EVALUATION_TEXT, batch, seq)
    graph = tc.capture(LastHidden(model), (ids,))
    with torch.no_grad():
        expected = LastHidden(model)(ids).numpy()
    paths = export_variants(graph, out)
    feeds = {"input_ids": ids.numpy()}
    sessions = {label: session(path, args.threads) for label, path in paths.items()}
    timings: dict[str, list[float]] = {label: [] for label in paths}
    for _ in range(args.rounds):
        for label, sess in sessions.items():
            timings[label].append(latency(sess, feeds, args.runs))
    base = min(timings["no passes"])
    rows = []
    for label, sess in sessions.items():
        error = float(np.abs(sess.run(None, feeds)[0] - expected).max())
        kernels = sum(n.op_type in ("Attention", "MultiHeadAttention") for n in _nodes(paths[label]))
        transposes = sum(n.op_type == "Transpose" for n in _nodes(paths[label]))
        best = min(timings[label])
        rows.append((f"{batch}x{seq}", label, kernels, transposes, best * 1e3, base / best, error))
    return rows


def _nodes(path: Path) -> list:
    return list(onnx.load(str(path)).graph.node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shapes", default="2x32,16x128")
    args = parser.parse_args()
    tokenizer, model = load_model()
    print(f"all-MiniLM-L6-v2 fp32, onnxruntime {ort.__version__}, {args.threads} threads, "
          f"median of {args.runs} runs, best of {args.rounds} interleaved rounds\n")
    print("| batch x seq | export | fused attention nodes | Transposes | ms | speed-up | max abs error vs torch |")
    print("|---|---|---:|---:|---:|---:|---:|", flush=True)
    for shape in args.shapes.split(","):
        batch, seq = map(int, shape.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            for row in run_shape(tokenizer, model, batch, seq, args, Path(tmp)):
                print("| {} | {} | {} | {} | {:.2f} | {:.2f}x | {:.1e} |".format(*row), flush=True)


if __name__ == "__main__":
    main()
