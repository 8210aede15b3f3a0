"""IR scaling: print/parse/verify time per node on 1k..10k-node chains, and capture of a BERT-base-sized model.

    python benchmarks/ir_scaling.py            # full run (BERT-base: 12 layers, hidden 768)
    python benchmarks/ir_scaling.py --quick    # smaller sizes, for a smoke test

Prints markdown tables. Linear scaling shows as a flat "per node" column.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

import torchcarve as tc
from torchcarve.frontends import aten as aten_frontend
from torchcarve.ir import infer

CHAIN_OPS = ["aten.relu", "aten.sigmoid", "aten.tanh", "aten.neg"]


def chain(length: int) -> tc.Graph:
    """x -> (op, add-residual)* : every node a different op/name, one param per 10 nodes."""
    g = tc.Graph(f"chain{length}")
    x = g.add_input("x", tc.TensorType(("batch", 64)))
    current = x
    while len(g) < length:
        node = g.add_node(CHAIN_OPS[len(g) % len(CHAIN_OPS)], [current])
        if len(g) % 10 == 0:
            weight = g.add_param(f"layer{len(g)}.weight", torch.ones(64))
            node = g.add_node("aten.mul.Tensor", [node.output, weight])
        node = g.add_node("aten.add.Tensor", [node.output, current])
        current = node.output
    g.set_outputs([current])
    return g


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def ir_table(sizes: list[int]) -> str:
    rows = ["| nodes | print ms | µs/node | parse ms | µs/node | verify ms | µs/node |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    for size in sizes:
        graph = chain(size)
        text = graph.to_text()
        assert tc.parse(text, params=graph.params).to_text() == text
        n = len(graph)
        t_print = best_of(3, graph.to_text)
        t_parse = best_of(3, lambda: tc.parse(text, verify=False))
        t_verify = best_of(3, lambda: tc.verify(graph))
        rows.append(f"| {n} | {t_print * 1e3:.1f} | {t_print / n * 1e6:.1f} | {t_parse * 1e3:.1f} | "
                    f"{t_parse / n * 1e6:.1f} | {t_verify * 1e3:.1f} | {t_verify / n * 1e6:.1f} |")
    return "\n".join(rows)


def bert(layers: int, hidden: int) -> tuple[torch.nn.Module, tuple[torch.Tensor]]:
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
                                     intermediate_size=4 * hidden, attn_implementation="eager")
    return transformers.BertModel(config).eval(), (torch.randint(0, config.vocab_size, (1, 128)),)


def capture_table(layers: int, hidden: int) -> str:
    """Capture time split into torch.export's own time and torchcarve's conversion time."""
    model, inputs = bert(layers, hidden)
    spent = {"export": 0.0, "convert": 0.0}
    real_export, real_convert = torch.export.export, aten_frontend.convert

    def timed(key: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start
        return wrapper

    import torchcarve.frontends.export as export_frontend
    torch.export.export = timed("export", real_export)
    export_frontend.convert = timed("convert", real_convert)
    try:
        tc.capture(model, inputs, method="export")  # warm-up (first export pays one-off import costs)
        spent.update(export=0.0, convert=0.0)
        infer._cache.clear()  # time a cold conversion, as a first capture in a fresh process pays it
        start = time.perf_counter()
        graph = tc.capture(model, inputs, method="export")
        total = time.perf_counter() - start
    finally:
        torch.export.export, export_frontend.convert = real_export, real_convert
    ops = len(graph) - len(graph.param_nodes())
    module = tc.to_torch(graph)
    with torch.no_grad():
        diff = (module(*inputs)[0] - model(*inputs).last_hidden_state).abs().max().item()
    t_text = best_of(3, graph.to_text)
    text = graph.to_text()
    t_parse = best_of(3, lambda: tc.parse(text, params=graph.params))
    rest = total - spent["export"] - spent["convert"]
    return "\n".join([
        f"BertModel, {layers} layers, hidden {hidden}, seq 128: {len(graph)} nodes ({ops} ops + "
        f"{len(graph.param_nodes())} params), max |diff| vs eager {diff:.1e}",
        "",
        "| step | seconds |",
        "|---|---:|",
        f"| torch.export.export | {spent['export']:.2f} |",
        f"| torchcarve conversion (aten graph -> IR, shape inference (cold cache) + verify) | {spent['convert']:.2f} |",
        f"| rest of tc.capture (eval mode, wrapper) | {rest:.2f} |",
        f"| total tc.capture | {total:.2f} |",
        f"| print text ({len(text) // 1024} KiB) | {t_text:.3f} |",
        f"| parse + verify text | {t_parse:.3f} |",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = [200, 500, 1000] if args.quick else [1000, 2000, 5000, 10000]
    print("### Text form and verifier on chains\n")
    print(ir_table(sizes))
    print("\n### Capture\n")
    print(capture_table(*((2, 128) if args.quick else (12, 768))))


if __name__ == "__main__":
    main()
