"""The math of low-rank factorization: spectra, factors, errors and rank choice (per layer or global).

A weight W (out x n_in; a conv's kernel flattened to out x in*k*k) is approximated by B·A with
B = U_r (out x r) and A = U_r^T W (r x n_in), U_r the top left singular vectors of W·R:
R = I gives truncated SVD (least weight error); R with R R^T = H, H = E[x x^T] over calibration
inputs, gives the rank-r map with least output error on that data (the whitening of SVD-LLM,
Wang et al. 2024, written as a projection so a singular H needs no inverse).
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch

from ...errors import CarveError

PINV_RTOL = 1e-10  # directions of the input moment below this share of its largest eigenvalue count as absent


@dataclass(frozen=True)
class Spectrum:
    """Left singular vectors and squared singular values of W·R, descending."""

    weight: torch.Tensor   # float64 [out, n_in]
    u: torch.Tensor        # float64 [out, k]
    s2: torch.Tensor       # float64 [k]

    @property
    def full_rank(self) -> int:
        return self.s2.numel()

    def squared_error(self, rank: int) -> float:
        """Relative squared truncation error at `rank` (of the weight, or of the output when whitened)."""
        total = float(self.s2.sum())
        return float(self.s2[rank:].sum()) / total if total > 0 else 0.0

    def energy_rank(self, energy: float) -> int:
        """The smallest rank keeping at least `energy` of the sum of squared singular values."""
        kept = torch.cumsum(self.s2, 0) / max(float(self.s2.sum()), 1e-300)
        return min(int((kept < energy - 1e-12).sum()) + 1, self.full_rank)

    def values_only(self) -> "Spectrum":
        """The squared singular values alone: what a budget over many layers needs, without their vectors."""
        empty = torch.empty(0, 0, dtype=self.s2.dtype)
        return Spectrum(empty, empty, self.s2)

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [rank, n_in], B [out, rank]) with B·A the rank-`rank` approximation."""
        b = self.u[:, :rank]
        return b.T @ self.weight, b


def spectrum(weight: torch.Tensor, moment: torch.Tensor | None = None) -> Spectrum:
    """Spectrum of `weight` (float64 [out, n_in]); whitened by the input second moment when given.

    Wide matrices take the eigendecomposition of the small Gram matrix W H W^T (out x out) instead
    of an SVD of W·R (the n_in x n_in square root of H is the costly part for FFN down-projections).
    """
    out, n_in = weight.shape
    if out <= n_in:
        gram = weight @ weight.T if moment is None else weight @ moment @ weight.T
        values, vectors = torch.linalg.eigh((gram + gram.T) / 2)
        return Spectrum(weight, vectors.flip(1), values.flip(0).clamp(min=0))
    target = weight if moment is None else weight @ _square_root(moment)
    u, s, _ = torch.linalg.svd(target, full_matrices=False)
    return Spectrum(weight, u, s * s)


def corrected_weight(weight: torch.Tensor, moment: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """W C M^+ (C = E[x_ref x^T], M = E[x x^T]): the map of the inputs x the compressed earlier layers give
    that best reproduces W x_ref, the uncompressed output (least squares; SVD-LLM's sequential update).
    Factorizing it whitened by M then minimizes ||W x_ref - B A x|| at each rank."""
    return weight @ cross @ torch.linalg.pinv(moment, hermitian=True, rtol=PINV_RTOL)


def _square_root(moment: torch.Tensor) -> torch.Tensor:
    """R with R R^T = moment (symmetric PSD), from its eigendecomposition; tiny negative eigenvalues clip to 0."""
    values, vectors = torch.linalg.eigh(moment)
    return vectors * values.clamp(min=0).sqrt()


def relative_error(weight: torch.Tensor, approx: torch.Tensor, moment: torch.Tensor | None = None) -> float:
    """||W - W'|| / ||W||: Frobenius norm, or the output norm on data with second moment `moment`."""
    delta = weight - approx
    if moment is None:
        return float(delta.norm() / weight.norm().clamp(min=1e-300))
    num = torch.einsum("oi,ij,oj->", delta, moment, delta)
    den = torch.einsum("oi,ij,oj->", weight, moment, weight)
    return math.sqrt(max(float(num), 0.0) / max(float(den), 1e-300))


def cost_fraction(rank: int, n_in: int, n_out: int) -> float:
    """Params (and MACs) of the factored pair relative to the dense layer: r (in + out) / (in out)."""
    return rank * (n_in + n_out) / (n_in * n_out)


def round_rank(rank: int, round_to: int, full_rank: int) -> int:
    """Round up to a multiple of `round_to` (hardware-friendly), never past full rank."""
    step = max(round_to, 1)
    return min(full_rank, math.ceil(rank / step) * step)


def max_rank(n_in: int, n_out: int, full_rank: int, min_gain: float) -> int:
    """The largest rank whose factored pair saves at least `min_gain` of the layer's cost."""
    return min(full_rank, math.floor((1 - min_gain) * n_in * n_out / (n_in + n_out) + 1e-9))


@dataclass(frozen=True)
class Budgeted:
    """One layer in a global budget: its spectrum, matrix shape and dense cost (params or MACs)."""

    name: str
    spectrum: Spectrum
    n_in: int
    n_out: int
    cost: int


def global_ranks(layers: list[Budgeted], budget: float, round_to: int, min_rank: int, min_gain: float) -> dict[str, int | None]:
    """Ranks under a global budget (fraction of the layers' dense cost kept); None keeps a layer dense.

    Greedy: every layer starts at its smallest rank, then the step (round_to more rank, or going back
    to dense) that removes the most normalized squared error per unit of cost is taken while it fits.
    """
    options = {layer.name: _options(layer, round_to, min_rank, min_gain) for layer in layers}
    allowed = budget * sum(layer.cost for layer in layers)
    spent = sum(opts[0][0] for opts in options.values())
    if spent > allowed + 1e-9:
        raise CarveError(f"low-rank: a budget of {budget:g} can't be met; the smallest ranks already keep "
                         f"{spent / max(sum(l.cost for l in layers), 1):.3f} of the cost",
                         hint="raise the budget, or lower min-rank / round-to")
    chosen = {name: 0 for name in options}
    heap = [_step(name, opts, 0) for name, opts in options.items() if len(opts) > 1]
    heapq.heapify(heap)
    while heap:
        _, name, index, extra = heapq.heappop(heap)
        if spent + extra > allowed + 1e-9:
            continue
        spent += extra
        chosen[name] = index + 1
        if index + 2 < len(options[name]):
            heapq.heappush(heap, _step(name, options[name], index + 1))
    return {name: options[name][i][2] for name, i in chosen.items()}


def _options(layer: Budgeted, round_to: int, min_rank: int, min_gain: float) -> list[tuple[float, float, int | None]]:
    """(cost, squared error, rank) choices in increasing cost: profitable ranks, then dense (rank None)."""
    full = layer.spectrum.full_rank
    step, top = max(round_to, 1), max_rank(layer.n_in, layer.n_out, full, min_gain)
    ranks = range(round_rank(max(min_rank, 1), round_to, full), top + 1, step)
    choices = [(layer.cost * cost_fraction(r, layer.n_in, layer.n_out), layer.spectrum.squared_error(r), r) for r in ranks]
    return choices + [(float(layer.cost), 0.0, None)]


def _step(name: str, options: list[tuple[float, float, int | None]], index: int) -> tuple[float, str, int, float]:
    extra = options[index + 1][0] - options[index][0]
    gain = (options[index][1] - options[index + 1][1]) / max(extra, 1e-12)
    return (-gain, name, index, extra)
