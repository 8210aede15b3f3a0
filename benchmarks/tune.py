"""`tc.tune` on real models: the tuner's best pipeline beside the best single-technique pipelines.

all-MiniLM-L6-v2 (real weights, offline), calibration and evaluation on different sentences, objectives
onnxruntime latency at 8x32 and ONNX file size, metric cosine of the last hidden state to the original
(per token, averaged); budgets cosine >= 0.99 and >= 0.98. Single techniques (dynamic int8 with
outliers, prune alone, whitened low-rank alone) are measured the same way in the same run, and the
winners' latencies are measured again at the end in interleaved rounds (the best round counts).

The digits CNN (torchcarve's demo model, trained here): within 1 point of fp32 test accuracy, the
smallest file the tuner finds beside static int8 alone.

    HF_HUB_OFFLINE=1 python benchmarks/tune.py [--quick] [--trials 16] [--digits-trials 48] [--threads 1] [--rounds 3]
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

import torchcarve as tc  # noqa: E402
from machine import header  # noqa: E402
from quantize import CALIBRATION_TEXT, EVALUATION_TEXT, LastHidden, load_model, windows  # noqa: E402
from torchcarve.cli.demo import DigitsCNN, load_digits, train  # noqa: E402
from torchcarve.tune import SearchSpace, Stage, measure_pipelines  # noqa: E402
from torchcarve.tune.measure import ort_latency, parse_objective  # noqa: E402

BUDGETS = (0.99, 0.98)
SINGLE = {  # technique -> the pipelines tried for it (quick: the first of each)
    "dynamic int8 + outliers": ["fuse,quantize{outliers=2},dce", "fuse,quantize{outliers=4},dce"],
    "prune alone": [f"fuse,prune{{ratio={r},criterion=taylor}},dce" for r in (0.1, 0.2, 0.3)],
    "whitened low-rank alone": [f"fuse,low-rank{{method=whitened,energy={e}}},dce" for e in (0.98, 0.95, 0.9)],
}
MINILM_SPACE = SearchSpace(stages=(  # latency: int8 modes that run on int8 kernels; no int4
    Stage("prune", {"ratio": (0.05, 0.4), "criterion": ("taylor", "l2")}),
    Stage("low-rank", {"method": ("whitened",), "energy": (0.9, 0.995)}),
    Stage("quantize", {"mode": ("dynamic", "static"), "outliers": (0, 4)}),
))


def minilm(args: argparse.Namespace, cache: Path) -> None:
    tokenizer, model = load_model()
    calibration = [(windows(tokenizer, CALIBRATION_TEXT, 8, 32, offset=7 * k),) for k in range(2)]
    evaluation = [(windows(tokenizer, EVALUATION_TEXT, 8, 32),)]
    graph = tc.capture(LastHidden(model), evaluation[0])
    latency = parse_objective(f"ort-latency:8x32@{args.threads}").label
    data = {"calibration": calibration, "eval_data": evaluation, "objective": [latency, "file-size"],
            "cache": cache, "threads": args.threads}
    pipelines = [p for options in SINGLE.values() for p in (options[:1] if args.quick else options)]
    start = time.perf_counter()
    singles = {c.spec: c for c in measure_pipelines(graph, pipelines, **data)}
    rows = []
    for budget in BUDGETS:
        result = tc.tune(graph, budget=budget, trials=args.trials, seed=0, space=MINILM_SPACE, **data)
        winners = {"tuner": result.best}
        for technique, options in SINGLE.items():
            feasible = [singles[p] for p in options if p in singles and singles[p].metric is not None
                        and singles[p].metric >= budget]
            winners[technique] = min(feasible, key=lambda c: c.objectives[latency], default=None)
        rows += _minilm_rows(graph, budget, winners, parse_objective(latency), calibration, args.rounds,
                             len(result.candidates), len(result.failed))
    print(f"MiniLM: {time.perf_counter() - start:.0f} s, {args.trials} trials per budget\n")
    print(f"| single-technique pipeline | cosine | ms ({latency}, during the search) | ONNX MiB |")
    print("|---|---|---|---|")
    for c in singles.values():
        print(f"| `{c.spec}` | {c.metric:.4f} | {c.objectives[latency]:.2f} | {c.objectives['file-size']:.1f} |"
              if c.error is None else f"| `{c.spec}` | failed: {c.error} | - | - |")
    print()
    print(f"| cosine budget | pipeline | technique | ms ({latency}) | speed-up vs best single | cosine | ONNX MiB |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| {} | `{}` | {} | {} | {} | {} | {} |".format(*row))


def _minilm_rows(graph, budget, winners, objective, calibration, rounds, tried, failed) -> list[tuple]:
    """Re-measure the winners' latency in interleaved rounds; the tuner's speed-up over the best single."""
    present = {name: c for name, c in winners.items() if c is not None}
    protos = {name: tc.to_onnx(c.graph if c.graph is not None else tc.optimize(graph, c.spec, calibration=calibration).graph)
              for name, c in present.items()}
    graphs = {name: tc.from_onnx(proto) for name, proto in protos.items()}
    times: dict[str, list[float]] = {name: [] for name in present}
    for _ in range(rounds):  # a busy machine slows every variant alike
        for name in present:
            times[name].append(ort_latency(protos[name], graphs[name], objective))
    best = {name: min(t) for name, t in times.items()}
    singles = [best[n] for n in best if n != "tuner"]
    rows = []
    for name, candidate in present.items():
        speedup = f"{min(singles) / best[name]:.2f}x" if singles else "-"
        label = f"tuner ({tried} tried, {failed} failed)" if name == "tuner" else name
        rows.append((budget, candidate.spec, label, f"{best[name]:.2f}", speedup, f"{candidate.metric:.4f}",
                     f"{candidate.objectives['file-size']:.1f}"))
    rows += [(budget, "-", f"{name}: none within budget", "-", "-", "-", "-") for name in winners if name not in present]
    return rows


def _accuracy(model: torch.nn.Module, batches: list, labels: list) -> float:
    hits = sum(int((model(*batch).argmax(1) == y).sum()) for batch, y in zip(batches, labels))
    return hits / sum(len(y) for y in labels)


def digits(args: argparse.Namespace, cache: Path) -> None:
    torch.manual_seed(0)
    data = load_digits()
    model = DigitsCNN()
    train(model, data, epochs=4 if args.quick else 10)
    batch = 40
    graph = tc.capture(model.eval(), (data.test_x[:batch],))
    tests = [(x,) for x in data.test_x.split(batch) if len(x) == batch]
    labels = [y for y in data.test_y.split(batch) if len(y) == batch]
    calibration = [(x,) for x in data.train_x[:4 * batch].split(batch)]
    metric = functools.partial(_accuracy, labels=labels)
    options = {"calibration": calibration, "eval_data": tests, "metric": metric, "objective": ["file-size"],
               "cache": cache}
    start = time.perf_counter()
    result = tc.tune(graph, max_drop=0.01, trials=args.digits_trials, seed=0, **options)
    int8, fp32 = measure_pipelines(graph, ["fuse,quantize{mode=static},dce", "fuse"], **options)
    print(f"\nDigits CNN: {time.perf_counter() - start:.0f} s, {args.digits_trials} trials, "
          f"budget accuracy >= {result.budget:.4f} (fp32 {result.reference:.4f})\n")
    print("| pipeline | what | test accuracy | ONNX KiB |")
    print("|---|---|---|---|")
    for candidate, what in ((fp32, "fp32 (fused)"), (int8, "static int8 alone"), (result.best, "tuner's smallest")):
        if candidate is not None:
            print(f"| `{candidate.spec}` | {what} | {candidate.metric:.4f} | {candidate.objectives['file-size'] * 1024:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one pipeline per single technique, few trials")
    parser.add_argument("--trials", type=int, default=None, help="candidates per search (default 16; quick 6)")
    parser.add_argument("--digits-trials", type=int, default=None, help="digits CNN candidates (default 48; quick 24)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds for the winners")
    parser.add_argument("--only", choices=("minilm", "digits"), default=None)
    args = parser.parse_args()
    args.trials = args.trials or (6 if args.quick else 16)
    args.digits_trials = args.digits_trials or (24 if args.quick else 48)
    logging.getLogger().setLevel(logging.ERROR)
    print(header("HF_HUB_OFFLINE=1 python benchmarks/tune.py " + " ".join(sys.argv[1:])))
    with tempfile.TemporaryDirectory() as tmp:  # a fresh cache: every number below was measured in this run
        if args.only != "digits":
            minilm(args, Path(tmp))
        if args.only != "minilm":
            digits(args, Path(tmp))


if __name__ == "__main__":
    main()
