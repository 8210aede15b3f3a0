"""B-spline math for matrix-kan: the exact power-basis matrix M_k and a reference Cox–de Boor recursion."""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from math import comb, factorial

import torch


@lru_cache(maxsize=None)
def basis_matrix(k: int) -> tuple[tuple[Fraction, ...], ...]:
    """M_k, exact: on a uniform knot interval with local coordinate u in [0, 1),
    [1, u, ..., u^k] @ M_k = the k+1 non-zero degree-k bases, lowest index first.

    Basis r of the interval is piece q = k - r of the cardinal B-spline
    N_k(t) = 1/k! * sum_{l<=q} (-1)^l C(k+1, l) (t - l)^k on [q, q+1], taken at t = u + q.
    """
    rows = [[Fraction(0)] * (k + 1) for _ in range(k + 1)]
    for r in range(k + 1):
        q = k - r
        for l in range(q + 1):
            scale = Fraction((-1) ** l * comb(k + 1, l), factorial(k))
            for p in range(k + 1):  # (u + (q - l))^k = sum_p C(k, p) u^p (q - l)^(k - p)
                rows[p][r] += scale * comb(k, p) * (q - l) ** (k - p)
    return tuple(tuple(row) for row in rows)


def basis_matrix_tensor(k: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """M_k as a (k+1)x(k+1) tensor, each entry rounded once from its exact value."""
    return torch.tensor([[float(v) for v in row] for row in basis_matrix(k)], dtype=torch.float64).to(dtype)


def cox_de_boor(x: torch.Tensor, grid: torch.Tensor, k: int) -> torch.Tensor:
    """Reference bases of x [..., in] on grid [in, n]: [..., in, n - 1 - k] (zero outside the grid)."""
    x = x.unsqueeze(-1)
    bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
    for level in range(1, k + 1):
        left = (x - grid[:, :-(level + 1)]) / (grid[:, level:-1] - grid[:, :-(level + 1)])
        right = (grid[:, level + 1:] - x) / (grid[:, level + 1:] - grid[:, 1:-level])
        bases = left * bases[..., :-1] + right * bases[..., 1:]
    return bases


def uniform_spacing(grid: torch.Tensor, rtol: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(t0, h) per row when every row of `grid` [in, n] has constant spacing h > 0 within rtol; else None."""
    grid = grid.to(torch.float64)
    t0 = grid[:, 0]
    h = (grid[:, -1] - t0) / (grid.shape[1] - 1)
    if not bool((h > 0).all()):
        return None
    if not bool(((grid.diff(dim=1) - h[:, None]).abs() <= rtol * h[:, None]).all()):
        return None
    return t0, h
