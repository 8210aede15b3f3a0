"""Pass pipeline time against graph size: `fuse` (and `cleanup`) on 1k..10k-node graphs.

The graph is a stack of conv -> batch_norm -> relu blocks with a residual add and a dropout every
block (so fold-bn, simplify, cse and dce all have work), captured from a real nn.Module.

    python benchmarks/pass_scaling.py [--sizes 1000,2000,5000,10000] [--pipeline fuse]

Linear scaling shows as a flat "µs per node" column.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import torchcarve as tc


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(torch.relu(self.bn(self.conv(x))))


def stack(nodes: int, channels: int = 4) -> tc.Graph:
    """A captured stack of Blocks with about `nodes` IR nodes (params included)."""
    model = nn.Sequential(*[Block(channels) for _ in range(max(1, nodes // 9))]).eval()
    return tc.capture(model, (torch.randn(1, channels, 8, 8),))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2000,5000,10000")
    parser.add_argument("--pipeline", default="fuse")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"| nodes | `{args.pipeline}` s | µs per node | nodes after |")
    print("|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        graph = stack(size)
        start = time.perf_counter()
        result = tc.optimize(graph, args.pipeline)
        seconds = time.perf_counter() - start
        print(f"| {len(graph)} | {seconds:.2f} | {seconds / len(graph) * 1e6:.0f} | {len(result.graph)} |", flush=True)


if __name__ == "__main__":
    main()
