"""KAN models as people write them, for the matrix-kan tests, benchmark and example.

`KANLinear` is the common "efficient KAN" formulation: a SiLU base branch plus a B-spline branch whose
bases come from the Cox–de Boor recursion on a grid extended by `spline_order` knots each side.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KANLinear(nn.Module):
    """y = linear(silu(x), base_weight) + linear(B(x), spline_weight [* spline_scaler])."""

    def __init__(self, in_features: int, out_features: int, grid_size: int = 5, spline_order: int = 3,
                 grid_range: tuple[float, float] = (-1.0, 1.0), scaler: bool = True, grid: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.spline_order = in_features, out_features, spline_order
        if grid is None:
            h = (grid_range[1] - grid_range[0]) / grid_size
            knots = torch.arange(-spline_order, grid_size + spline_order + 1, dtype=torch.float32) * h + grid_range[0]
            grid = knots.expand(in_features, -1).contiguous()
        self.register_buffer("grid", grid)
        bases = grid.shape[1] - 1 - spline_order
        self.base_weight = nn.Parameter(torch.randn(out_features, in_features) / in_features ** 0.5)
        self.spline_weight = nn.Parameter(torch.randn(out_features, in_features, bases) * 0.3)
        self.spline_scaler = nn.Parameter(torch.rand(out_features, in_features) + 0.5) if scaler else None

    def b_splines(self, x: torch.Tensor) -> torch.Tensor:
        """B-spline bases of x [N, in] -> [N, in, grid_size + spline_order], by the Cox–de Boor recursion."""
        grid = self.grid
        x = x.unsqueeze(-1)
        bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
        for k in range(1, self.spline_order + 1):
            bases = ((x - grid[:, :-(k + 1)]) / (grid[:, k:-1] - grid[:, :-(k + 1)]) * bases[:, :, :-1]
                     + (grid[:, k + 1:] - x) / (grid[:, k + 1:] - grid[:, 1:(-k)]) * bases[:, :, 1:])
        return bases

    def scaled_spline_weight(self) -> torch.Tensor:
        if self.spline_scaler is None:
            return self.spline_weight
        return self.spline_weight * self.spline_scaler.unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features)
        base = F.linear(F.silu(x), self.base_weight)
        spline = F.linear(self.b_splines(x).reshape(x.shape[0], -1), self.scaled_spline_weight().reshape(self.out_features, -1))
        return (base + spline).reshape(*shape[:-1], self.out_features)


class KAN(nn.Module):
    """A KAN MLP: KANLinear layers of the given widths."""

    def __init__(self, widths: list[int], grid_size: int = 5, spline_order: int = 3, **kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(KANLinear(a, b, grid_size, spline_order, **kwargs) for a, b in zip(widths, widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ConvKAN(nn.Module):
    """A convolutional KAN layer: unfold the patches, apply a KANLinear to each, fold back to an image."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, grid_size: int = 5, spline_order: int = 3) -> None:
        super().__init__()
        self.kernel_size, self.out_channels = kernel_size, out_channels
        self.kan = KANLinear(in_channels * kernel_size * kernel_size, out_channels, grid_size, spline_order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        patches = F.unfold(x, self.kernel_size, padding=self.kernel_size // 2).transpose(1, 2)
        return self.kan(patches).transpose(1, 2).reshape(n, self.out_channels, height, width)


class KANTransformerBlock(nn.Module):
    """A pre-norm transformer block whose MLP is a KANLinear pair (KAT-style)."""

    def __init__(self, dim: int = 16, heads: int = 2, hidden: int = 32, grid_size: int = 5, spline_order: int = 3) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(KANLinear(dim, hidden, grid_size, spline_order), KANLinear(hidden, dim, grid_size, spline_order))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))
