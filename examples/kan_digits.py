"""Train a small KAN on scikit-learn's digits, rewrite its B-splines with matrix-kan, prune it, export it.

    python examples/kan_digits.py [--fast] [-o OUT]

The KAN is the common "efficient KAN" formulation (tests/kan_models.py: SiLU base branch plus a
B-spline branch computed by the Cox–de Boor recursion). matrix-kan replaces the recursion by an
interval index, a power basis and a constant matrix (same outputs); prune then removes hidden KAN
units (their spline and base weights on both sides); the result is written as ONNX and checked in
onnxruntime. Nothing is downloaded: the digits ship with scikit-learn.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import torchcarve as tc
from tests.kan_models import KAN


def data() -> tuple[torch.Tensor, ...]:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 8 - 1  # pixels 0..16 -> the grid's range [-1, 1]
    y = torch.tensor(digits.target)
    train_x, test_x, train_y, test_y = train_test_split(x, y, test_size=0.25, random_state=0)
    return train_x, test_x, train_y, test_y


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()


def accuracy(module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((module(x).argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="fewer epochs (used by the tests)")
    parser.add_argument("-o", "--output", type=Path, default=Path("carve-kan-example"))
    args = parser.parse_args()
    torch.manual_seed(0)
    train_x, test_x, train_y, test_y = data()
    model = KAN([64, 32, 10], grid_size=5, spline_order=3)
    train(model, train_x, train_y, 5 if args.fast else 20)
    model.eval()
    trained = accuracy(model, test_x, test_y)
    print(f"trained KAN:             accuracy {trained:.2%}")

    graph = tc.capture(model, (test_x[:4],), dynamic_batch=True)
    rewritten = tc.optimize(graph, "matrix-kan", check_numerics=True)
    print(f"matrix-kan:              {len(rewritten.report[0].stats['rewritten'])} recursions rewritten, "
          f"accuracy {accuracy(tc.to_torch(rewritten.graph), test_x, test_y):.2%}")
    pruned = tc.optimize(rewritten.graph, "prune{ratio=0.25,round-to=1}")
    params = pruned.report[0].stats["params"]
    module = tc.to_torch(pruned.graph)
    print(f"pruned hidden units:     params {params[0]} -> {params[1]}, accuracy {accuracy(module, test_x, test_y):.2%}")

    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "kan.onnx"
    tc.to_onnx(pruned.graph, path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: test_x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(logits, module(test_x).numpy(), rtol=1e-4, atol=1e-4)
    print(f"onnxruntime:             matches, accuracy {float((logits.argmax(1) == test_y.numpy()).mean()):.2%} -> {path}")
    assert trained > 0.85 and params[1] < params[0]


if __name__ == "__main__":
    main()
