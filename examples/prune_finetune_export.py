"""Prune a trained classifier, fine-tune it back, and export it for serving (PyTorch and ONNX).

    python examples/prune_finetune_export.py [--fast] [-o OUT]

Trains a small CNN on scikit-learn's bundled digits (nothing is downloaded), removes half of
every layer's channels, fine-tunes the pruned module (its weights are ordinary nn.Parameters),
folds BatchNorm, and writes `model.py` + `weights.safetensors` and `model.onnx`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime
import torch

import torchcarve as tc
from torchcarve.cli.demo import DigitsCNN, accuracy, load_digits, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="fewer epochs (used by the tests)")
    parser.add_argument("-o", "--output", type=Path, default=Path("carve-prune-example"))
    args = parser.parse_args()
    epochs = 2 if args.fast else 12
    torch.manual_seed(0)
    data = load_digits()
    model = DigitsCNN()
    train(model, data, epochs)
    print(f"trained:               accuracy {accuracy(model, data):.2%}")

    graph = tc.capture(model, (data.test_x[:2],), dynamic_batch=True)
    pruned = tc.optimize(graph, "prune{ratio=0.5,criterion=l2}")
    module = tc.to_torch(pruned.graph)
    print(f"pruned:                accuracy {accuracy(module, data):.2%}")
    train(module, data, epochs)                            # fine-tune the carved module itself
    print(f"pruned + fine-tuned:   accuracy {accuracy(module, data):.2%}")

    tuned = tc.with_module_weights(pruned.graph, module)  # the fine-tuned weights back into the graph
    final = tc.optimize(tuned, "fuse", check_numerics=True).graph
    tc.export_torch(final, args.output / "torch")
    tc.to_onnx(final, args.output / "model.onnx")

    session = onnxruntime.InferenceSession(str(args.output / "model.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = session.run(None, {name: data.test_x.numpy()})[0]
    onnx_accuracy = float((logits.argmax(1) == data.test_y.numpy()).mean())
    params_before = sum(p.numel() for p in model.parameters())
    params_after = sum(t.numel() for t in final.params.values())
    print(f"model.onnx (ORT):      accuracy {onnx_accuracy:.2%}; params {params_before:,} -> {params_after:,}")
    assert np.isclose(onnx_accuracy, accuracy(module, data), atol=0.01), "export must keep the fine-tuned accuracy"
    print(f"written: {args.output / 'torch' / 'model.py'}, {args.output / 'model.onnx'}")


if __name__ == "__main__":
    main()
