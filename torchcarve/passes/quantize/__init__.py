"""quantize: post-training quantization to the int8/int4 forms ONNX Runtime runs with integer kernels."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from fnmatch import fnmatchcase
from typing import Any, Literal, Sequence

from ...analysis.cpu import CpuInt8, detect
from ...errors import CarveError
from ...ir import Graph
from ...ir.value import Value
from ..base import Pass, PassContext, PassResult, register_pass
from ..sequential import run_sequential
from .calibrate import calibrate
from .observers import OBSERVERS
from .outliers import split_outliers
from .report import byte_size, layer_rows, weight_bytes
from .rewrite import EMBEDDING, Layer, WeightFormat, activations_to_observe, fake_quantize, find_layers, rewrite_layer
from .sensitivity import choose_float_layers, layer_sensitivity
from .smooth import smooth_layers

QMAX = {("int8", False): 127, ("int8", True): 63, ("int4", False): 7, ("int4", True): 7}
EVAL_BATCHES = 2  # calibration batches the sensitivity search measures the output error on


@register_pass("quantize")
@dataclass(frozen=True)
class Quantize(Pass):
    """Post-training quantization (Jacob et al. 2018; SmoothQuant, Xiao et al. 2023).

    mode: dynamic (int8 linear weights, activations quantized at run time: ORT DynamicQuantizeMatMul),
      static (QDQ: int8 conv/linear weights, uint8 activations per tensor, ranges from calibration),
      weight-only (int8 or int4 weights dequantized at run time: linears as ORT MatMulNBits; int4 group-wise).
    dtype: int8 | int4 (int4: weight-only). weights: per-channel | per-tensor (symmetric).
    embeddings: also store embedding tables as int8 (every mode; one scale per row, or per table with
      weights=per-tensor), gathered and rescaled at run time; layers by table name, like the others.
    activations: the static range observer, minmax | percentile | mse | entropy (percentile: its p).
    group-size: int4 weights share a scale per this many inputs. reduce-range: 7-bit int8 weights, so
      x86 AVX2 u8*s8 kernels cannot saturate (ORT's results then equal the PyTorch backend's exactly);
      dynamic and static only (weight-only dequantizes to float: always 8 bits). auto: 7 bits only
      where this CPU's kernels saturate (AVX2 without VNNI), all 8 with VNNI/AMX or on ARM.
    compute: weight-only MatMulNBits arithmetic in ORT, float (accuracy_level 0: equals the PyTorch
      backend) or int8 (accuracy_level 4: activations quantized per block); auto: int8 with VNNI/AMX.
    skip: layers kept in float (glob patterns over weight names without '.weight').
    smooth: SmoothQuant alpha (0 = off; needs calibration).
    outliers: per linear input, up to this many channels with the largest calibrated magnitude leave the
      int8 range (LLM.int8(), Dettmers et al. 2022; needs calibration). fold-outliers: zero them in the
      producing linear where one exists (gelu(linear(z)): its rows), a float copy computes them.
      scale-outliers: elsewhere scale them down to the inliers' range (their weight columns up) inside
      the int8 GEMM where that measures near the float path's error, else a float side Gemm.
      outlier-gain: move an input's channels only where that cuts its measured int8 error this much.
    sensitivity: measure each layer's output error; with max-error, keep the most sensitive layers in
      float until the relative error fits.
    sequential: static mode, calibrate and quantize block by block: each layer is quantized as soon as
      its ranges are in, so later blocks are calibrated on the quantized earlier blocks' outputs
      (sequential error correction, as GPTQ). Without it, a max-memory budget also calibrates block by
      block, with the same ranges as a whole-graph run.
    """

    mode: Literal["dynamic", "static", "weight-only"] = "dynamic"
    dtype: Literal["int8", "int4"] = "int8"
    weights: Literal["per-channel", "per-tensor"] = "per-channel"
    activations: Literal["minmax", "percentile", "mse", "entropy"] = "minmax"
    percentile: float = 99.99
    group_size: int = 128
    reduce_range: bool | Literal["auto"] = "auto"
    compute: Literal["float", "int8", "auto"] = "float"
    embeddings: bool = True
    skip: tuple[str, ...] = ()
    smooth: float = 0.0
    outliers: int = 0
    fold_outliers: bool = True
    scale_outliers: bool = True
    outlier_gain: float = 1.5
    sensitivity: bool = False
    max_error: float | None = None
    sequential: bool = False

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        self._check_options()
        batches = self._calibration(ctx)
        size = weight_bytes(graph)
        found = find_layers(graph, self.mode, self.embeddings)
        skipped = matching_layers(found, self.skip)
        layers = [layer for layer in found if layer.name not in skipped]
        budget = ctx.max_memory
        if self.smooth and layers:
            smooth_layers(graph, layers, batches, self.smooth, budget)
        moved = split_outliers(graph, layers, batches, self.outliers, self.fold_outliers, self._format().qmax,
                               self.scale_outliers, self.outlier_gain, budget) if self.outliers and layers else {}
        names = {layer.node.outputs[0].name: layer.name for layer in layers}
        stats: dict[str, Any] = {"mode": self.mode, "dtype": self.dtype, **self._cpu_choices(detect())}
        if self.sequential:
            chosen, sensitivity = set(names), {}
            self._quantize_sequentially(graph, find_layers(graph, self.mode, self.embeddings), chosen, batches, budget)
        else:
            ranges = self._activation_ranges(graph, layers, batches, budget)
            chosen, sensitivity = self._choose(graph, names, ranges, batches, stats, budget)
            self._apply(graph, chosen, ranges)
        precision = {layer.name: self._precision(layer) for layer in found}
        quantized = {names[n] for n in chosen}
        stats.update(quantized=len(quantized), float=len(precision) - len(quantized),
                     weights=f"{byte_size(size)} → {byte_size(weight_bytes(graph))}",
                     layers=layer_rows(graph, precision, quantized, moved, sensitivity))
        return PassResult(bool(chosen), stats)

    # ---- options and data --------------------------------------------------------------
    def _check_options(self) -> None:
        if self.dtype == "int4" and self.mode != "weight-only":
            raise CarveError(f"{self.spec()}: int4 is supported only with mode=weight-only",
                             hint="use quantize{mode=weight-only,dtype=int4} or dtype=int8")
        if self.dtype == "int4" and self.group_size < 0:
            raise CarveError(f"{self.spec()}: group-size must be >= 0 (0: one scale per output channel)")
        if self.outliers < 0:
            raise CarveError(f"{self.spec()}: outliers is a channel count, >= 0")
        if self.outlier_gain < 1.0:
            raise CarveError(f"{self.spec()}: outlier-gain is an error ratio, >= 1 (1: any improvement)")
        if not 0.0 <= self.smooth <= 1.0:
            raise CarveError(f"{self.spec()}: smooth is SmoothQuant's alpha, in [0, 1]")
        if self.sequential and (self.mode != "static" or self.sensitivity or self.max_error is not None):
            raise CarveError(f"{self.spec()}: sequential=true calibrates static activation ranges block by block",
                             hint="use it with mode=static, without sensitivity or max-error")

    def _calibration(self, ctx: PassContext) -> Sequence[Any]:
        needs = self.mode == "static" or self.smooth or self.outliers or self.sensitivity or self.max_error is not None
        return ctx.require_calibration(self.spec()) if needs else []

    def _reduce_range(self, cpu: CpuInt8) -> bool:
        if self.mode == "weight-only":
            return False  # weight-only has no integer products
        return cpu.saturates if self.reduce_range == "auto" else self.reduce_range

    def _accuracy_level(self, cpu: CpuInt8) -> int:
        """MatMulNBits' accuracy_level: 4 computes in int8, 0 in float."""
        int8 = cpu.int8_compute if self.compute == "auto" else self.compute == "int8"
        return 4 if int8 and self.mode == "weight-only" else 0

    def _cpu_choices(self, cpu: CpuInt8) -> dict[str, str]:
        """What the CPU decided, and why: the report's `cpu`, `weight bits` and `compute` lines."""
        choices = {"cpu": cpu.describe()}
        if self.mode != "weight-only":
            reason = "AVX2 vpmaddubsw saturates" if cpu.saturates else "int8 dot products accumulate in int32"
            why = f"auto: {reason}" if self.reduce_range == "auto" else f"reduce-range={str(self.reduce_range).lower()}"
            choices["weight bits"] = f"{7 if self._reduce_range(cpu) else 8} ({why})"
        else:
            level = self._accuracy_level(cpu)
            choices["compute"] = f"{'int8' if level else 'float'} (MatMulNBits accuracy_level={level}, {self.compute})"
        return choices

    def _format(self) -> WeightFormat:
        group = self.group_size if self.dtype == "int4" else 0
        cpu = detect()
        return WeightFormat(QMAX[self.dtype, self._reduce_range(cpu)], self.weights == "per-channel", group,
                            self._accuracy_level(cpu))

    def _precision(self, layer: Layer) -> str:
        if layer.node.op == EMBEDDING:
            return "int8 rows"  # tables are gathered, never multiplied: always 8 bits, one scale per row
        fmt = self._format()
        bits = f"int4 g{fmt.group_size}" if fmt.bits == 4 else f"int{8 if fmt.qmax == 127 else 7}"
        return f"{bits} {self.mode}"

    def _activation_ranges(self, graph: Graph, layers: list[Layer], batches: Sequence[Any],
                           max_memory: int | None) -> dict[str, tuple]:
        if self.mode != "static":
            return {}
        observers = {v: OBSERVERS[self.activations](self.percentile) for v in activations_to_observe(layers)}
        calibrate(graph, batches, observers, max_memory)
        return {value.name: observer.range() for value, observer in observers.items()}

    def _quantize_sequentially(self, graph: Graph, layers: list[Layer], chosen: set[str], batches: Sequence[Any],
                               max_memory: int | None) -> None:
        """Static QDQ block by block: a layer is rewritten once the ranges of its QDQ points are complete."""
        layers = [layer for layer in layers if layer.node.outputs[0].name in chosen]
        pending = Pending(layers, {layer.name: activations_to_observe([layer]) for layer in layers}, set())
        observers = {v: OBSERVERS[self.activations](self.percentile) for v in activations_to_observe(layers)}
        run_sequential(graph, batches, {v: [o.observe] for v, o in observers.items()}, max_memory=max_memory,
                       compress=partial(self._quantize_ready, graph, observers, pending),
                       description="quantize: block by block")

    def _quantize_ready(self, graph: Graph, observers: dict[Value, Any], pending: "Pending",
                        complete: set[Value]) -> bool:
        """Quantize the pending layers whose QDQ points are all in `complete`; whether any were."""
        ready = [layer for layer in pending.layers if set(pending.points[layer.name]) <= complete]
        if not ready:
            return False
        pending.layers = [layer for layer in pending.layers if layer not in ready]
        points = [v for v in dict.fromkeys(v for layer in ready for v in pending.points[layer.name])
                  if v not in pending.quantized]
        pending.quantized.update(points)
        self._rewrite(graph, ready, {v: observers[v].range() for v in points})
        return True

    # ---- mixed precision and the rewrite ----------------------------------------------
    def _choose(self, graph: Graph, names: dict[str, str], ranges: dict, batches: Sequence[Any],
                stats: dict[str, Any], max_memory: int | None) -> tuple[set[str], dict[str, float]]:
        """Output names of the layers to quantize (`names`: output name -> layer name), and each layer's
        output error when quantized alone (when measured)."""
        if not (self.sensitivity or self.max_error is not None) or not names:
            return set(names), {}
        evaluate = batches[:EVAL_BATCHES]
        def quantized_copy(g: Graph, chosen: set[str]) -> Graph:
            copy = g.clone()
            self._apply(copy, chosen, ranges)
            return copy
        sensitivity = layer_sensitivity(graph, list(names), quantized_copy, evaluate, max_memory)
        by_layer = {names[n]: round(e, 6) for n, e in sensitivity.items()}
        if self.max_error is None:
            return set(names), by_layer
        kept, error = choose_float_layers(graph, list(names), quantized_copy, evaluate, sensitivity, self.max_error,
                                          max_memory)
        stats["error"] = round(error, 6)
        return set(names) - set(kept), by_layer

    def _apply(self, graph: Graph, chosen: set[str], ranges: dict[str, tuple]) -> None:
        """Quantize the layers whose output value is named in `chosen`."""
        layers = [layer for layer in find_layers(graph, self.mode, self.embeddings)
                  if layer.node.outputs[0].name in chosen]
        points = activations_to_observe(layers) if self.mode == "static" else []
        self._rewrite(graph, layers, {value: ranges[value.name] for value in points})

    def _rewrite(self, graph: Graph, layers: list[Layer], points: dict[Value, tuple[float, float]]) -> None:
        """QDQ at each activation point (its range given), then each layer's weight quantized."""
        originals = [layer.weight.producer for layer in layers]
        for value, (low, high) in points.items():
            fake_quantize(graph, value, low, high)
        for layer, original in zip(layers, originals):
            rewrite_layer(graph, layer, self.mode, self._format())
            graph.params.release(original.attrs["name"])  # one float weight resident at a time
        graph.erase_unused(originals)


@dataclass
class Pending:
    """Sequential quantization's state: layers not rewritten yet, each one's QDQ points, points done."""

    layers: list[Layer]
    points: dict[str, list[Value]]
    quantized: set[Value]


def matching_layers(layers: list[Layer], patterns: Sequence[str]) -> set[str]:
    """Names of the layers matching any pattern; an error naming a pattern that matches none."""
    names = [layer.name for layer in layers]
    matched: set[str] = set()
    for pattern in patterns:
        hits = {n for n in names if fnmatchcase(n, pattern)}
        if not hits:
            sample = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") or "none"
            raise CarveError(f"quantize: skip pattern '{pattern}' matches no quantizable layer",
                             hint=f"layers are named by weight without '.weight', e.g. {sample}")
        matched |= hits
    return matched
