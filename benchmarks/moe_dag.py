"""MoE and DAG pruning: prune-experts on a Mixtral-style model, prune-blocks on all-MiniLM-L6-v2 (real weights).

1. A small random-init Mixtral (8 experts, top-2), captured with its MoE layers in the dense carve.moe
   form: the expert routing table on calibration tokens, then prune-experts 8 -> 6 and 8 -> 4 by
   frequency and by gate mass, and expert-local width pruning (prune: every expert keeps half of its
   hidden units, its own ones) by L1 and by Taylor: last-hidden-state cosine to the unpruned model on
   held-out tokens and ORT latency against the unpruned ONNX model.
2. all-MiniLM-L6-v2: prune-blocks removing 1, 2 and 3 of its 6 layers (span=2: attention + MLP) chosen
   by flow and by output-error, beside removing the last layers and random layers (mean of 3 seeds):
   sentence-embedding cosine (mean pooling) on held-apart sentences and ORT speed-up.

    HF_HUB_OFFLINE=1 python benchmarks/moe_dag.py [--quick] [--threads 2] [--runs 20]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import torchcarve as tc
from machine import header
from quantize import CALIBRATION_TEXT, EVALUATION_TEXT, LastHidden, embeddings, latency, load_model, session, windows

EXPERTS, TOP_K = 8, 2
RANDOM_SEEDS = (0, 1, 2)


def mixtral(hidden: int) -> torch.nn.Module:
    import transformers

    config = transformers.MixtralConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K, vocab_size=1000,
        max_position_embeddings=256, use_cache=False, attn_implementation="eager")
    torch.manual_seed(0)
    return LastHidden(transformers.MixtralModel(config).eval())


def token_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean())


def speedup(reference, sess, feeds: dict, runs: int, rounds: int = 3) -> tuple[float, float]:
    """(ms, reference time / time): best of `rounds` interleaved rounds, so load slows both alike."""
    ours, theirs = [], []
    for _ in range(rounds):
        theirs.append(latency(reference, feeds, runs))
        ours.append(latency(sess, feeds, runs))
    return min(ours) * 1e3, min(theirs) / min(ours)


def moe_section(args, out: Path) -> None:
    batch, seq, hidden = (4, 32, 64) if args.quick else (8, 64, 128)
    model = mixtral(hidden)
    generator = torch.Generator().manual_seed(1)
    calibration = [(torch.randint(0, 1000, (batch, seq), generator=generator),) for _ in range(4)]
    held_out = torch.randint(0, 1000, (batch, seq), generator=generator)
    graph = tc.capture(model, (held_out,))
    feeds = {"input_ids": held_out.numpy()}
    tc.to_onnx(graph, out / "moe.onnx")
    reference_session = session(out / "moe.onnx", args.threads)
    reference = reference_session.run(None, feeds)[0]
    table = tc.optimize(graph, "prune-experts{keep=8}", calibration=calibration).report[0].stats["layers"]
    print(f"Mixtral-style, {EXPERTS} experts top-{TOP_K}, hidden {hidden}, random init; calibration "
          f"{len(calibration)}x{batch}x{seq} tokens; held-out {batch}x{seq}\n")
    print("| expert | routed | gate mass |\n|---|---:|---:|")
    for row in table:
        print(f"| {row['layer']} | {row['routed']} | {row['gate mass']} |")
    print("\n| experts kept | criterion | params | MACs | token cosine | ORT ms | ORT speed-up |\n"
          "|---|---|---:|---:|---:|---:|---:|")
    base_ms, _ = speedup(reference_session, reference_session, feeds, args.runs, rounds=1)
    line = tc.optimize(graph, "dce").report[0]
    print(f"| {EXPERTS} (dense carve.moe) | - | {line.params[0]:,} | 1.00x | 1.0000 | {base_ms:.2f} | 1.00x |")
    runs = [(str(keep), criterion, f"prune-experts{{keep={keep},criterion={criterion}}}")
            for keep in (6, 4) for criterion in ("frequency", "gate-mass")]
    runs += [(f"{EXPERTS}, each at half width", criterion, f"prune{{ratio=0.5,heads=false,criterion={criterion}}}")
             for criterion in ("l1", "taylor")]
    for kept, criterion, pipeline in runs:
        result = tc.optimize(graph, pipeline, calibration=calibration)
        tc.to_onnx(result.graph, out / "pruned_moe.onnx")
        sess = session(out / "pruned_moe.onnx", args.threads)
        ms, ratio = speedup(reference_session, sess, feeds, args.runs)
        line = result.report[0]
        print(f"| {kept} | {criterion} | {line.params[1]:,} | {line.macs[1] / line.macs[0]:.2f}x | "
              f"{token_cosine(sess.run(None, feeds)[0], reference):.4f} | {ms:.2f} | {ratio:.2f}x |", flush=True)


def blocks_section(args, out: Path) -> None:
    batch, seq = (8, 16) if args.quick else (16, 32)
    tokenizer, model = load_model()
    calibration = [(windows(tokenizer, CALIBRATION_TEXT, batch, seq, offset=7 * k),) for k in range(2 if args.quick else 4)]
    held_out = windows(tokenizer, EVALUATION_TEXT, batch, seq)
    graph = tc.capture(LastHidden(model), (held_out,))
    feeds = {"input_ids": held_out.numpy()}
    reference_path = out / "minilm.onnx"
    tc.to_onnx(graph, reference_path)
    reference = session(reference_path, args.threads)
    expected = embeddings(reference, feeds)
    print(f"\nall-MiniLM-L6-v2 (real weights), prune-blocks span=2 (one layer = attention + MLP); calibration "
          f"{len(calibration)}x{batch} windows of {seq} tokens, held-out {batch} windows of other sentences\n")
    print("| layers removed | criterion | removed | MACs | embedding cosine | ORT speed-up |\n|---:|---|---|---:|---:|---:|")
    for count in (1, 2, 3):
        for criterion in ("flow", "output-error", "last", "random"):
            seeds = RANDOM_SEEDS if criterion == "random" else (0,)
            cosines, speedups, removed, macs = [], [], [], []
            for seed in seeds:
                result = tc.optimize(graph, f"prune-blocks{{n={count},span=2,criterion={criterion}}}",
                                     calibration=calibration, seed=seed)
                path = out / "pruned.onnx"
                tc.to_onnx(result.graph, path)
                sess = session(path, args.threads)
                cosines.append(float((embeddings(sess, feeds) * expected).sum(1).mean()))
                speedups.append(speedup(reference, sess, feeds, args.runs)[1])
                macs.append(result.report[0].macs[1] / result.report[0].macs[0])
                removed.append(",".join(r["layer"].rsplit(".", 1)[-1] for r in result.report[0].stats["layers"]
                                        if r["removed"] == "yes"))
            label = criterion + (f" (mean of {len(seeds)})" if len(seeds) > 1 else "")
            print(f"| {count} | {label} | {' / '.join(removed)} | {np.mean(macs):.2f}x | {np.mean(cosines):.4f} | "
                  f"{np.mean(speedups):.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer runs (a smoke run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if args.quick:
        args.runs = min(args.runs, 5)
    print(header("python benchmarks/moe_dag.py " + " ".join(sys.argv[1:])))
    with tempfile.TemporaryDirectory() as tmp:
        moe_section(args, Path(tmp))
        blocks_section(args, Path(tmp))


if __name__ == "__main__":
    main()
