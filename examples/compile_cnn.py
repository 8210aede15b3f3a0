"""Compile a CNN with torchcarve and compare it with the original: size, MACs, outputs, speed.

    python examples/compile_cnn.py [--fast]

A ResNet-style block network (conv + BatchNorm + residual) is captured, pruned to half its
channels, fused (BN folded into the convs) and turned back into an nn.Module. The script prints
what changed and checks that the fused graph matches the pruned one exactly.
"""
from __future__ import annotations

import argparse
import time

import torch

import torchcarve as tc
from torchcarve.analysis.cost import graph_cost


class Block(torch.nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(channels)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


def make_model(width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
        Block(width), Block(width), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, 10),
    ).eval()


def best_time(module: torch.nn.Module, x: torch.Tensor, runs: int) -> float:
    with torch.no_grad():
        module(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a small model and few timing runs (used by the tests)")
    args = parser.parse_args()
    width, size, runs = (16, 16, 3) if args.fast else (64, 32, 20)
    model = make_model(width)
    x = torch.randn(8, 3, size, size)

    graph = tc.capture(model, (x,))                        # torch.export -> the IR
    pruned = tc.optimize(graph, "prune{ratio=0.5}").graph  # approximate: half the channels go
    fused = tc.optimize(pruned, "fuse").graph              # exact: BN folding and cleanup
    before, after = graph_cost(graph), graph_cost(fused)
    print(f"params {before.params:,} -> {after.params:,}   MACs {before.macs:,} -> {after.macs:,}")
    print(f"nodes  {len(graph.nodes)} -> {len(fused.nodes)}")
    compiled = tc.to_torch(fused)
    with torch.no_grad():
        difference = (tc.to_torch(pruned)(x) - compiled(x)).abs().max().item()
    print(f"fuse is exact: max |pruned - pruned+fused| = {difference:.1e}")
    assert difference < 1e-4, "fusing must not change the outputs"
    speedup = best_time(model, x, runs) / best_time(compiled, x, runs)
    print(f"eager / compiled time: {speedup:.2f}x (batch 8, best of {runs})")
    print(compiled.code)


if __name__ == "__main__":
    main()
