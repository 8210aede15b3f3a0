"""MoE dispatch: the dense and the sparse form of carve.moe in onnxruntime, the data behind `auto`'s rule.

One gated (SwiGLU) top-k MoE layer per (experts E, top-k, width), captured once with a dynamic token count,
exported twice (dispatch=dense: every expert on every token as batched MatMuls; dispatch=sparse: per expert
NonZero/Gather/its MatMuls/ScatterND), each timed in onnxruntime at every token count (median of interleaved
rounds, so load slows both alike). Prints one markdown table: ms per form, sparse speed-up, and the form
`moe_dispatch` (the `auto` rule) picks, marked where it is not the faster one.

    python benchmarks/moe_dispatch.py [--quick] [--threads 1] [--runs 10] [--tokens 8 64 512]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

import torchcarve as tc
from machine import header
from quantize import latency, session
from torchcarve.frontends.moe import DenseMoE, Form
from torchcarve.ir.ops.moe import moe_dispatch

EXPERTS = (2, 4, 8, 16, 32, 64)
TOP_KS = (1, 2)
TOKENS = (8, 64, 512)
WIDTHS = {"small": (64, 128), "medium": (256, 512)}  # (D, expert hidden H)


def moe_layer(experts: int, top_k: int, width: int, hidden: int) -> torch.nn.Module:
    """A random Mixtral-style layer: router [E, D], gate_up [E, 2H, D], down [E, D, H]; silu, renormalised top-k."""
    generator = torch.Generator().manual_seed(0)
    weights = {"router_w": torch.randn(experts, width, generator=generator),
               "up_w": torch.randn(experts, 2 * hidden, width, generator=generator) / width ** 0.5,
               "down_w": torch.randn(experts, width, hidden, generator=generator) / hidden ** 0.5}
    return DenseMoE(weights, Form(top_k, "silu", True), gated=True).eval()


def exported(layer: torch.nn.Module, width: int, out: Path) -> dict[str, Path]:
    """The layer's ONNX file in each dispatch form."""
    graph = tc.capture(layer, (torch.randn(8, width),), dynamic_batch=True)
    (node,) = [n for n in graph.nodes if n.op == "carve.moe"]
    paths = {}
    for form in ("dense", "sparse"):
        node.attrs["dispatch"] = form
        paths[form] = out / f"{form}.onnx"
        tc.to_onnx(graph, paths[form])
    return paths


def timed(paths: dict[str, Path], tokens: int, width: int, args) -> dict[str, float]:
    """ms per form at `tokens` tokens: best of 3 interleaved rounds of the median of `runs`."""
    feeds = {"x": torch.randn(tokens, width, generator=torch.Generator().manual_seed(1)).numpy()}
    sessions = {form: session(path, args.threads) for form, path in paths.items()}
    feeds = {sessions["dense"].get_inputs()[0].name: feeds["x"]}
    rounds: dict[str, list[float]] = {form: [] for form in sessions}
    for _ in range(3):
        for form, sess in sessions.items():
            rounds[form].append(latency(sess, feeds, args.runs))
    return {form: min(times) * 1e3 for form, times in rounds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small width, E in 2/8/64 only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--tokens", type=int, nargs="+", default=list(TOKENS), help="token counts (batch x seq)")
    args = parser.parse_args()
    experts = (2, 8, 64) if args.quick else EXPERTS
    widths = {"small": WIDTHS["small"]} if args.quick else WIDTHS
    print(header("python benchmarks/moe_dispatch.py " + " ".join(sys.argv[1:])))
    print(f"onnxruntime, {args.threads} thread(s); gated SwiGLU experts\n")
    print("| width D/H | E | k | tokens | dense ms | sparse ms | sparse speed-up | auto picks |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for size, (width, hidden) in widths.items():
        for count in experts:
            for top_k in TOP_KS:
                with tempfile.TemporaryDirectory() as tmp:
                    paths = exported(moe_layer(count, top_k, width, hidden), width, Path(tmp))
                    for tokens in args.tokens:
                        ms = timed(paths, tokens, width, args)
                        faster = "sparse" if ms["sparse"] < ms["dense"] else "dense"
                        pick = moe_dispatch(tokens, count, top_k, 3 * width * hidden)
                        mark = "" if pick == faster else " (slower)"
                        print(f"| {size} {width}/{hidden} | {count} | {top_k} | {tokens} | {ms['dense']:.3f} | "
                              f"{ms['sparse']:.3f} | {ms['dense'] / ms['sparse']:.2f}x | {pick}{mark} |", flush=True)


if __name__ == "__main__":
    main()
