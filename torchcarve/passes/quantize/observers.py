"""Observers: running statistics of a tensor seen over calibration batches, and the range they choose.

Memory stays bounded: min/max keep two numbers (or one per channel), the histogram observers keep a
fixed number of bins whose range widens (re-binned through the CDF) when a batch falls outside it.
Ranges: min-max, percentile, MSE-optimal clipping, entropy (KL; Migacz, "8-bit Inference with
TensorRT", 2017). Weight helpers quantize whole tensors symmetrically per channel, tensor or group.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

BINS = 2048
CLIP_GRID = np.linspace(0.2, 1.0, 81)  # candidate clip ranges: this fraction of the observed range
LEVELS = 256                           # uint8 activations


class MinMaxObserver:
    """Running min and max, over the whole tensor or per channel along `axis`."""

    def __init__(self, axis: int | None = None) -> None:
        self.axis = axis
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None

    def observe(self, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().float()
        if self.axis is None:
            low, high = tensor.min(), tensor.max()
        else:
            flat = tensor.movedim(self.axis, -1).reshape(-1, tensor.shape[self.axis])
            low, high = flat.amin(0), flat.amax(0)
        self.low = low if self.low is None else torch.minimum(self.low, low)
        self.high = high if self.high is None else torch.maximum(self.high, high)

    def range(self) -> tuple[float, float]:
        return float(self.low), float(self.high)


class HistogramObserver:
    """A fixed-size histogram over a widening range; `chooser` picks the clip range from it."""

    def __init__(self, chooser: Callable[[np.ndarray, np.ndarray], tuple[float, float]]) -> None:
        self.chooser = chooser
        self.counts = np.zeros(BINS)
        self.low = self.high = 0.0

    def observe(self, tensor: torch.Tensor) -> None:
        values = tensor.detach().float().flatten()
        low, high = min(self.low, float(values.min())), max(self.high, float(values.max()))
        if high <= low:
            return
        if (low, high) != (self.low, self.high):
            self.counts = _rebin(self.counts, self.edges(), np.linspace(low, high, BINS + 1))
            self.low, self.high = low, high
        self.counts += torch.histc(values, BINS, low, high).double().numpy()

    def edges(self) -> np.ndarray:
        return np.linspace(self.low, self.high, BINS + 1)

    def range(self) -> tuple[float, float]:
        if not self.counts.any():
            return self.low, self.high
        return self.chooser(self.counts, self.edges())


def _rebin(counts: np.ndarray, old_edges: np.ndarray, new_edges: np.ndarray) -> np.ndarray:
    cdf = np.concatenate([[0.0], np.cumsum(counts)])
    return np.diff(np.interp(new_edges, old_edges, cdf))


def percentile_range(percentile: float) -> Callable[[np.ndarray, np.ndarray], tuple[float, float]]:
    """Clip the (100 - p)% tails: the values at the p-th and (100 - p)-th percentiles."""
    def choose(counts: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
        cdf = np.concatenate([[0.0], np.cumsum(counts)]) / counts.sum()
        tail = (100.0 - percentile) / 100.0
        return float(np.interp(tail, cdf, edges)), float(np.interp(1.0 - tail, cdf, edges))
    return choose


def mse_range(counts: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """The clip range whose uint8 quantization has the least expected squared error."""
    centers = (edges[:-1] + edges[1:]) / 2
    def error(low: float, high: float) -> float:
        scale, zero_point = activation_params(low, high)
        restored = (np.clip(np.round(centers / scale) + zero_point, 0, LEVELS - 1) - zero_point) * scale
        return float((counts * (centers - restored) ** 2).sum())
    return _best(edges, error)


def entropy_range(counts: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """The clip range minimising KL(clipped histogram || its 256-level quantized version)."""
    def divergence(low: float, high: float) -> float:
        inside = (edges[:-1] >= low) & (edges[1:] <= high)
        first, last = int(np.argmax(inside)), len(inside) - 1 - int(np.argmax(inside[::-1]))
        inner = counts[first:last + 1]
        p = inner.copy()  # the reference keeps the clipped tails in its edge bins; the candidate loses them
        p[0] += counts[:first].sum()
        p[-1] += counts[last + 1:].sum()
        return _kl(p, _requantized(inner))
    return _best(edges, divergence)


def _requantized(p: np.ndarray) -> np.ndarray:
    """Merge `p` into LEVELS groups, spreading each group's mass evenly over its non-empty bins."""
    groups = np.minimum(np.arange(len(p)) * LEVELS // len(p), LEVELS - 1)
    mass = np.bincount(groups, weights=p, minlength=LEVELS)
    used = np.bincount(groups, weights=(p > 0).astype(float), minlength=LEVELS)
    return np.where(p > 0, mass[groups] / np.maximum(used[groups], 1), 0.0)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p / p.sum(), q / q.sum()
    mask = p > 0
    return float((p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))).sum())


def _best(edges: np.ndarray, score: Callable[[float, float], float]) -> tuple[float, float]:
    """Shrink both ends of the range together, then each end alone (outliers are often one-sided)."""
    low, high = min(edges[0], 0.0), max(edges[-1], 0.0)
    low, high = min(((low * f, high * f) for f in CLIP_GRID), key=lambda c: score(*c))
    high = min((high * f for f in CLIP_GRID if high * f <= edges[-1]), key=lambda h: score(low, h), default=high)
    low = min((low * f for f in CLIP_GRID if low * f >= edges[0]), key=lambda v: score(v, high), default=low)
    return float(low), float(high)


OBSERVERS: dict[str, Callable[[float], MinMaxObserver | HistogramObserver]] = {
    "minmax": lambda percentile: MinMaxObserver(),
    "percentile": lambda percentile: HistogramObserver(percentile_range(percentile)),
    "mse": lambda percentile: HistogramObserver(mse_range),
    "entropy": lambda percentile: HistogramObserver(entropy_range),
}


def activation_params(low: float, high: float) -> tuple[float, int]:
    """uint8 affine scale and zero point covering [low, high] (widened to include 0, as ONNX requires)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / (LEVELS - 1) if high > low else 1.0
    scale = float(np.float32(scale))
    return scale, int(np.clip(np.round(-low / scale), 0, LEVELS - 1))


def quantize_weight(weight: torch.Tensor, qmax: int, per_channel: bool,
                    group_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric integer weights in [-qmax, qmax] and their scales: one per tensor, per output
    channel (dim 0), or per group of `group_size` consecutive inputs of each output channel."""
    weight = weight.detach().float()
    if group_size:
        return _quantize_groups(weight, qmax, group_size)
    absmax = weight.abs().flatten(1).amax(1) if per_channel else weight.abs().max()
    scale = (absmax / qmax).clamp(min=1e-12)
    shaped = scale.reshape(-1, *[1] * (weight.dim() - 1)) if per_channel else scale
    return torch.round(weight / shaped).clamp(-qmax, qmax).to(torch.int8), scale


def _quantize_groups(weight: torch.Tensor, qmax: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, columns = weight.shape
    padded = torch.nn.functional.pad(weight, (0, -columns % group_size))
    scale = (padded.reshape(rows, -1, group_size).abs().amax(2) / qmax).clamp(min=1e-12)
    expanded = scale.repeat_interleave(group_size, dim=1)[:, :columns]
    return torch.round(weight / expanded).clamp(-qmax, qmax).to(torch.int8), scale
