"""Drawing speed: DOT generation and layout (graphviz-pure) for BERT-base, folded (×12) and fully expanded.

    python benchmarks/draw.py

Prints a markdown table (best of 3). Needs the draw extra and transformers (dev/bench extras).
"""
from __future__ import annotations

import sys
import time

import torch

import torchcarve as tc
from torchcarve.draw import to_dot
from torchcarve.draw.render import render_svg

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from machine import header  # noqa: E402


def best_of(repeats: int, fn) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    import transformers

    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig()).eval()   # BERT-base, random init
    graph = tc.capture(model, (torch.randint(0, 1000, (1, 128)),))
    ops = sum(1 for n in graph.nodes if n.op != "param")
    print(header("python benchmarks/draw.py"))
    print(f"BERT-base: {len(graph)} nodes ({ops} ops)\n")
    print("| picture | op boxes | DOT ms | layout ms | total ms | SVG KiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, expand in (("folded (layers ×12)", ()), ("expanded (every layer)", ("encoder.layer",))):
        t_dot, dot = best_of(3, lambda: to_dot(graph, expand=expand))
        t_layout, svg = best_of(3, lambda: render_svg(dot))
        boxes = svg.count('class="node op ')
        print(f"| {name} | {boxes} | {t_dot * 1e3:.0f} | {t_layout * 1e3:.0f} | {(t_dot + t_layout) * 1e3:.0f} | "
              f"{len(svg) / 1024:.0f} |")


if __name__ == "__main__":
    main()
