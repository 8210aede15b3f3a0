"""low-rank: factorize linear and conv weights into two thin layers (SVD, or data-aware whitened SVD)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Literal

import torch

from ...errors import CarveError
from ...ir import Graph
from ..base import Pass, PassContext, PassResult, register_pass
from .blockdiag import assign_blocks, lead_sizes, make_block_diagonal
from .factor import (Budgeted, Spectrum, corrected_weight, cost_fraction, global_ranks, max_rank, relative_error,
                     round_rank, spectrum)
from ..sequential import run_sequential
from .layers import Found, Layer, MomentObservers, collect_moments, factorize, find_layers, moment_observers

RANK_RULES = ("energy", "ratio", "rank", "budget_params", "budget_macs")
_EMPTY = torch.empty(0, 0, dtype=torch.float64)


@register_pass("low-rank")
@dataclass(frozen=True)
class LowRank(Pass):
    """Low-rank factorization W ≈ B·A (Denton et al. 2014); `whitened` minimizes output error (SVD-LLM, Wang et al. 2024).

    A linear becomes linear(in->r) then linear(r->out); a kxk conv becomes a kxk conv with r
    outputs (same stride/padding/dilation) then a 1x1 conv; the bias stays on the second.
    method: svd (least weight error) | whitened (least output error on the calibration data).
    Rank rule, one of: energy (kept share of squared singular values, default 0.95), ratio (rank
    as a share of full rank), rank (a fixed rank), budget-params / budget-macs (share of the
    targeted layers' params / MACs kept, ranks allocated globally where they lose least).
    targets: layer kinds (linear, conv); layers / protect: name patterns to include / leave alone.
    min-gain: factorize only when it saves at least this share of a layer's cost (negative: allow growth).
    min-rank, round-to: smallest rank, and ranks rounded up to a multiple of round-to.
    structure: low-rank (the above) | block-diagonal (linears only: permuted inputs, `blocks` equal
    diagonal blocks as one batched matmul, outputs permuted back; no rank rule).
    sequential: whitened, block by block (SVD-LLM's sequential update): a layer is factorized as soon as
      its input statistics are in, so later blocks are whitened by the factorized earlier blocks' outputs;
      a budget then applies to the layers factorized together (one block's). Without it, a max-memory
      budget also calibrates block by block, with the same statistics as a whole-graph run.
    """

    method: Literal["svd", "whitened"] = "svd"
    energy: float | None = None
    ratio: float | None = None
    rank: int | None = None
    budget_params: float | None = None
    budget_macs: float | None = None
    targets: tuple[str, ...] = ("linear", "conv")
    layers: tuple[str, ...] = ()
    protect: tuple[str, ...] = ()
    min_gain: float = 0.1
    min_rank: int = 1
    round_to: int = 8
    structure: Literal["low-rank", "block-diagonal"] = "low-rank"
    blocks: int = 4
    sequential: bool = False

    def __post_init__(self) -> None:
        given = [name for name in RANK_RULES if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one rank rule, not {' and '.join(n.replace('_', '-') for n in given)}")
        for name in ("energy", "ratio", "budget_params", "budget_macs"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"{name.replace('_', '-')} must be in (0, 1], got {value}")
        if self.rank is not None and self.rank < 1 or self.min_rank < 1 or self.round_to < 1:
            raise ValueError("rank, min-rank and round-to must be at least 1")
        unknown = set(self.targets) - {"linear", "conv"}
        if unknown:
            raise ValueError(f"unknown targets {sorted(unknown)}; valid: linear, conv")
        if self.structure == "block-diagonal" and given:
            raise ValueError(f"structure=block-diagonal takes no rank rule, got {given[0].replace('_', '-')}")
        if self.blocks < 2:
            raise ValueError(f"blocks must be at least 2, got {self.blocks}")
        if self.min_gain >= 1:
            raise ValueError(f"min-gain must be below 1, got {self.min_gain}")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if self.sequential and (self.method != "whitened" or self.structure != "low-rank"):
            raise CarveError(f"{self.spec()}: sequential=true corrects whitened factorizations block by block",
                             hint="use it with method=whitened and structure=low-rank")
        calibration = ctx.require_calibration(self.spec()) if self.method == "whitened" else ctx.calibration
        found = find_layers(graph, self.targets, self.layers, self.protect)
        report: dict[str, dict[str, Any]] = {}
        if self.sequential:
            self._run_sequential(graph, found, calibration, ctx.max_memory, report)
            return PassResult(bool(report), _stats(self.method, report, found.skipped))
        if calibration and ctx.max_memory is not None and self.method == "whitened" and self.structure == "low-rank":
            self._run_streamed(graph, found, calibration, ctx.max_memory, report)
            return PassResult(bool(report), _stats(self.method, report, found.skipped))
        if calibration:
            collect_moments(graph, found.layers, calibration, ctx.max_memory)
        whiten = self.method == "whitened"
        if self.structure == "block-diagonal":
            return self._run_blocks(graph, found.layers, found.skipped, whiten)
        self._factorize_layers(graph, found.layers, found.skipped, report)
        return PassResult(bool(report), _stats(self.method, report, found.skipped))

    def _factorize_layers(self, graph: Graph, layers: list[Layer], skipped: dict[str, str],
                          report: dict[str, dict[str, Any]]) -> None:
        """Rank each layer (a budget shared among `layers`) and factorize those where it pays, one layer at
        a time: a budget needs every layer's singular values first (vectors dropped, recomputed here)."""
        budget_ranks = self._budget_ranks(layers, lambda layer: self._spectrum(layer).values_only())
        for layer in layers:
            s = self._spectrum(layer)
            rank = budget_ranks[layer.name] if budget_ranks is not None else self._layer_rank(s)
            reason = self._why_dense(layer, s, rank)
            if reason:
                skipped[layer.name] = reason
            else:
                report[layer.name] = self._factorize(graph, layer, s, rank, self._whitened(layer))
            graph.params.release(layer.weight_name)

    def _whitened(self, layer: Layer) -> bool:
        return self.method == "whitened" and layer.moment is not None

    def _spectrum(self, layer: Layer) -> Spectrum:
        if self.method != "whitened" or layer.moment is None:
            return spectrum(layer.matrix)
        if layer.cross is None:
            return spectrum(layer.matrix, layer.moment)
        return spectrum(corrected_weight(layer.matrix, layer.moment, layer.cross), layer.moment)

    def _run_streamed(self, graph: Graph, found: Found, calibration: Any, max_memory: int,
                      report: dict[str, dict[str, Any]]) -> None:
        """Whitened under a budget: block by block, each layer's spectrum is taken as soon as its input
        statistics are in and its moment is freed; the singular vectors a factorization can use wait in the
        ParamStore (spilled past the budget) until every layer's singular values are known for the ranks.
        Same statistics, ranks and factors as the whole-graph run; one block's moments at a time."""
        pending = {layer.name: layer for layer in found.layers}
        observers = moment_observers(found.layers)
        kept: dict[str, tuple[str, torch.Tensor]] = {}   # layer -> (store entry of its vectors, squared values)
        whitened: dict[str, bool] = {}
        run_sequential(graph, calibration, observers.by_value, max_memory=max_memory,
                       compress=partial(self._keep_spectra, graph, observers, pending, kept, whitened),
                       description="whitening: block by block")
        self._keep_spectra(graph, observers, pending, kept, whitened, None)
        spectra = {name: Spectrum(_EMPTY, _EMPTY, s2) for name, (_, s2) in kept.items()}
        budget_ranks = self._budget_ranks(found.layers, lambda layer: spectra[layer.name])
        for layer in found.layers:
            entry, s2 = kept[layer.name]
            rank = budget_ranks[layer.name] if budget_ranks is not None else self._layer_rank(spectra[layer.name])
            reason = self._why_dense(layer, spectra[layer.name], rank)
            if reason:
                found.skipped[layer.name] = reason
            else:
                s = Spectrum(layer.matrix, graph.params[entry], s2)
                report[layer.name] = self._factorize(graph, layer, s, rank, whitened[layer.name])
            graph.params.release(layer.weight_name)
            del graph.params[entry]

    def _keep_spectra(self, graph: Graph, observers: MomentObservers, pending: dict[str, Layer],
                      kept: dict[str, tuple[str, torch.Tensor]], whitened: dict[str, bool],
                      complete: set | None) -> bool:
        """Streamed step: the spectra of the pending layers whose inputs are complete (all left when
        `complete` is None); their moments are dropped, their usable singular vectors stored."""
        ready = [layer for layer in pending.values()
                 if complete is None or all(node.inputs[0] in complete for node in layer.nodes)]
        observers.fill(ready)
        for layer in ready:
            del pending[layer.name]
            s = self._spectrum(layer)
            usable = max_rank(layer.shape[1], layer.shape[0], s.full_rank, self.min_gain)
            entry = graph.params.unique_name(f"{layer.name}.lowrank_vectors")
            graph.params[entry] = s.u[:, :usable].contiguous()
            kept[layer.name] = entry, s.s2
            whitened[layer.name] = self._whitened(layer)
            graph.params.release(layer.weight_name)
        observers.drop(ready)
        return False

    def _run_sequential(self, graph: Graph, found: Found, calibration: Any, max_memory: int | None,
                        report: dict[str, dict[str, Any]]) -> None:
        """Block by block beside the uncompressed graph: each layer factorized once its statistics are in."""
        pending = {layer.name: layer for layer in found.layers}
        observers = moment_observers(found.layers)
        run_sequential(graph, calibration, {}, paired=observers.paired(), max_memory=max_memory,
                       compress=partial(self._factorize_ready, graph, found, observers, pending, report),
                       description="low-rank: block by block")

    def _factorize_ready(self, graph: Graph, found: Found, observers: MomentObservers, pending: dict[str, Layer],
                         report: dict[str, dict[str, Any]], complete: set) -> bool:
        """Sequential step: factorize the pending layers whose inputs' statistics are complete."""
        ready = [layer for layer in pending.values() if all(node.inputs[0] in complete for node in layer.nodes)]
        for layer in ready:
            del pending[layer.name]
        observers.fill(ready)
        self._factorize_layers(graph, ready, found.skipped, report)
        observers.drop(ready)
        return any(layer.name in report for layer in ready)

    def _budget_ranks(self, layers: list[Layer], values: Callable[[Layer], Spectrum]) -> dict[str, int | None] | None:
        """Ranks under a global budget (None without one), from each layer's singular values (`values`)."""
        budget = self.budget_params if self.budget_params is not None else self.budget_macs
        if budget is None:
            return None
        use_macs = self.budget_macs is not None
        budgeted = [Budgeted(layer.name, values(layer), layer.shape[1], layer.shape[0],
                             layer.macs if use_macs else layer.params) for layer in layers]
        return global_ranks(budgeted, budget, self.round_to, self.min_rank, self.min_gain)

    def _layer_rank(self, s: Spectrum) -> int:
        if self.rank is not None:
            wanted = self.rank
        elif self.ratio is not None:
            wanted = math.ceil(self.ratio * s.full_rank - 1e-9)
        else:
            wanted = s.energy_rank(self.energy if self.energy is not None else 0.95)
        return round_rank(max(wanted, self.min_rank), self.round_to, s.full_rank)

    def _why_dense(self, layer: Layer, s: Spectrum, rank: int | None) -> str:
        if rank is None:
            return "kept dense by the budget"
        n_out, n_in = layer.shape
        if rank > max_rank(n_in, n_out, s.full_rank, self.min_gain):
            saved = 1 - cost_fraction(rank, n_in, n_out)
            return f"rank {rank} saves {saved:.0%} of its cost, below min-gain {self.min_gain:g}"
        return ""

    def _factorize(self, graph: Graph, layer: Layer, s: Spectrum, rank: int, whitened: bool) -> dict[str, Any]:
        """Rewrite `layer` at `rank`; its report line. A whitened spectrum's truncated share is the output error."""
        a, b = s.factors(rank)
        approx = b @ a
        matrix = layer.matrix
        n_out, n_in = layer.shape
        fraction = cost_fraction(rank, n_in, n_out)
        line = {"rank": rank, "full_rank": s.full_rank,
                "params": [layer.params, rank * (n_in + n_out)],
                "macs": [layer.macs, round(layer.macs * fraction)],
                "weight_error": relative_error(matrix, approx)}
        if whitened and layer.cross is None:
            line["output_error"] = math.sqrt(s.squared_error(rank))
        elif layer.moment is not None:  # plain SVD, or the spectrum of a corrected weight: measure W's own error
            line["output_error"] = relative_error(matrix, approx, layer.moment)
        factorize(graph, layer, a, b)
        return line

    def _run_blocks(self, graph: Graph, layers: list[Layer], skipped: dict[str, str], whiten: bool) -> PassResult:
        report: dict[str, dict[str, Any]] = {}
        for layer in layers:
            reason = self._why_not_blocks(layer)
            if reason:
                skipped[layer.name] = reason
                continue
            scale = layer.moment.diagonal() if whiten and layer.moment is not None else None
            matrix = layer.matrix
            assignment = assign_blocks(matrix, self.blocks, scale)
            approx = matrix * assignment.mask()
            line = {"blocks": self.blocks, "params": [layer.params, layer.params // self.blocks],
                    "macs": [layer.macs, layer.macs // self.blocks],
                    "weight_error": relative_error(matrix, approx)}
            if layer.moment is not None:
                line["output_error"] = relative_error(matrix, approx, layer.moment)
            make_block_diagonal(graph, layer, assignment, self.blocks)
            report[layer.name] = line
        return PassResult(bool(report), _stats(self.method, report, skipped))

    def _why_not_blocks(self, layer: Layer) -> str:
        n_out, n_in = layer.shape
        if layer.kind != "linear":
            return "block-diagonal: linear layers only"
        if n_out % self.blocks or n_in % self.blocks:
            return f"block-diagonal: {n_in} -> {n_out} is not divisible into {self.blocks} blocks"
        if 1 - 1 / self.blocks < self.min_gain:
            return f"{self.blocks} blocks save {1 - 1 / self.blocks:.0%} of its cost, below min-gain {self.min_gain:g}"
        if any(lead_sizes(node) is None for node in layer.nodes):
            return "block-diagonal: input shape not static"
        return ""


def _stats(method: str, report: dict[str, dict[str, Any]], skipped: dict[str, str]) -> dict[str, Any]:
    """Totals first (for the one-line report), then per-layer details."""
    if not report:
        return {"factorized": 0, "skipped": skipped}
    errors = [line.get("output_error", line["weight_error"]) for line in report.values()]
    return {
        "factorized": len(report),
        "params": [sum(l["params"][0] for l in report.values()), sum(l["params"][1] for l in report.values())],
        "macs": [sum(l["macs"][0] for l in report.values()), sum(l["macs"][1] for l in report.values())],
        "max_error": max(errors),
        "method": method,
        "layers": report,
        "skipped": skipped,
    }


__all__ = ["LowRank"]
