"""Small models for the big-model tests: built eagerly or on the meta device, and written as checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn


class Block(nn.Module):
    """A pre-norm decoder-style block: attention-free mixing (two linears) + a gated MLP, with residuals."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mix = nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.out(torch.relu(self.mix(self.norm(x))))
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


class Tiny(nn.Module):
    def __init__(self, width: int = 32, layers: int = 3) -> None:
        super().__init__()
        self.stem = nn.Linear(16, width)
        self.blocks = nn.Sequential(*[Block(width) for _ in range(layers)])
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def eager(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny().eval()


def on_meta() -> Tiny:
    with torch.device("meta"):
        return Tiny().eval()


def example() -> torch.Tensor:
    return torch.randn(4, 16, generator=torch.Generator().manual_seed(1))


def write_checkpoint(model: nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def write_shards(model: nn.Module, folder: Path, shards: int = 2) -> Path:
    """An HF-style folder: model.safetensors.index.json naming `shards` files."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(model.state_dict())
    weight_map = {}
    for k in range(shards):
        part = names[k::shards]
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: model.state_dict()[n].contiguous() for n in part}, str(folder / file))
        weight_map.update({n: file for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder
