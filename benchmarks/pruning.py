"""`prune` beside torch-pruning on the same models, ratio 0.5, L1 magnitude, local (per layer), one run.

For each model both tools prune at ratio 0.5, kept channels rounded to multiples of 8 (torch-pruning:
MagnitudePruner(p=1), ignoring the last conv/linear layer, attention heads given as `num_heads`;
torchcarve: `prune{ratio=0.5,round-to=8}`, graph outputs protected). A torch-pruning result counts only if the model still runs and every output keeps
its shape. Columns: params and MACs reduction (original / pruned, both counted by torchcarve's cost
model on the captured graph), latency speedup in onnxruntime (through `tc.to_onnx`) and torch eager
at batch 1 and 16 (median of --repeat runs), and the time to build dependency groups. The ONNX light
models are pruned straight from the file (torch-pruning cannot read ONNX).

    pip install -e ".[dev,bench]" && python benchmarks/pruning.py [--repeat 10] [--models ...] [--out benchmarks/README.md]
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torchcarve as tc  # noqa: E402
from torchcarve.analysis.cost import graph_cost  # noqa: E402
from torchcarve.passes.prune import find_groups  # noqa: E402
from tests.models import MODELS, _randomize_batchnorm  # noqa: E402

RATIO, ROUND_TO = 0.5, 8
SPEC = f"prune{{ratio={RATIO},round-to={ROUND_TO}}}"
BATCHES = (1, 16)
LIGHT = ["resnet50", "densenet121", "shufflenet", "squeezenet"]


# ---- models ----------------------------------------------------------------------------------------

class Classifier(nn.Module):
    """stem conv+BN -> block -> 1x1 conv -> pool -> linear, so the block's own channels are prunable
    (a bare block's input and output channels are the graph's, which both tools must keep)."""

    def __init__(self, block: nn.Module, cin: int, cout: int, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, cin, 3, padding=1, bias=False), nn.BatchNorm2d(cin), nn.ReLU())
        self.block, self.head, self.fc = block, nn.Conv2d(cout, 32, 1), nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.block(self.stem(x))).mean((2, 3)))


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.a, self.b = _conv(cin, cout, 3, stride), _conv(cout, cout)
        self.short = _conv(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.b(torch.relu(self.a(x))) + self.short(x))


class ResNet18(nn.Module):
    """ResNet-18 layout (BasicBlock x [2, 2, 2, 2], widths 64..512)."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv(3, 64, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for i, width in enumerate((64, 128, 256, 512)):
            blocks += [Basic(cin, width, 1 if i == 0 else 2), Basic(width, width, 1)]
            cin = width
        self.blocks, self.fc = nn.Sequential(*blocks), nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(_conv(cin, hidden, 1), nn.ReLU6(), _conv(hidden, hidden, 3, stride, hidden),
                                  nn.ReLU6(), _conv(hidden, cout, 1))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 layout (t, c, n, s settings of the paper), width 1.0."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers, cin = [_conv(3, 32, 3, 2), nn.ReLU6()], 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [_conv(cin, 1280, 1), nn.ReLU6()]
        self.features, self.fc = nn.Sequential(*layers), nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def _wrapped(name: str, cin: int, cout: int, size: int = 32) -> Callable:
    def build():
        block, _ = MODELS[name]()
        return _randomize_batchnorm(Classifier(block, cin, cout)).eval(), (torch.randn(1, 3, size, size),)
    return build


def _big(cls: type, size: int = 128) -> Callable:
    return lambda: (_randomize_batchnorm(cls()).eval(), (torch.randn(1, 3, size, size),))


def _registered(name: str) -> Callable:
    def build():
        model, inputs = MODELS[name]()
        return model, tuple(x[:1] for x in inputs)
    return build


TORCH_MODELS: dict[str, Callable] = {
    "cnn_bn": _registered("cnn_bn"),
    "residual": _wrapped("residual", 8, 16),
    "depthwise_separable": _wrapped("depthwise_separable", 8, 16),
    "dense_concat": _wrapped("dense_concat", 8, 20),
    "grouped_shuffle": _wrapped("grouped_shuffle", 16, 16),
    "squeeze_excitation": _wrapped("squeeze_excitation", 3, 16),
    "transformer_encoder": _registered("transformer_encoder"),
    "hf_bert": _registered("hf_bert"),
    "hf_vit": _registered("hf_vit"),
    "hf_llama": _registered("hf_llama"),
    "resnet18_like": _big(ResNet18),
    "mobilenetv2_like": _big(MobileNetV2),
}


# ---- measuring ------------------------------------------------------------------------------------

@dataclass
class Row:
    model: str
    tool: str
    ok: bool = False
    note: str = ""
    params: float | None = None          # original / pruned
    macs: float | None = None
    speedup: dict[str, float] = field(default_factory=dict)   # "ort b1" ... -> original / pruned latency
    group_s: float | None = None
    mem: float | None = None             # peak extra resident memory while grouping+rewriting / weight bytes


def peak_extra_memory_fresh(graph: tc.Graph) -> float | None:
    """peak_extra_memory in a fresh interpreter (a warm one reuses freed heap, so it reads low).

    The graph travels in the project's own format (tc.save: text IR + safetensors), never pickled."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        tc.save(graph, Path(folder) / "graph.carve")
        code = ("import sys; sys.path.insert(0, sys.argv[2]); import torchcarve as tc; "
                "from benchmarks.pruning import peak_extra_memory; print(peak_extra_memory(tc.load(sys.argv[1])))")
        done = subprocess.run([sys.executable, "-c", code, str(Path(folder) / "graph.carve"),
                               str(Path(__file__).resolve().parents[1])], capture_output=True, text=True, timeout=600)
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def peak_extra_memory(graph: tc.Graph) -> float | None:
    """Peak extra resident memory while `prune` groups, scores and rewrites a copy of `graph` in
    place, divided by the weights' bytes (torchcarve.analysis.memory; None off Linux)."""
    from torchcarve.analysis.memory import peak_extra_memory as measure
    from torchcarve.passes.base import PassContext
    from torchcarve.passes.prune import Prune

    warm = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    Prune(ratio=RATIO, round_to=ROUND_TO).run(tc.capture(warm, (torch.randn(1, 3, 8, 8),)), PassContext())  # one-time init
    copy = graph.clone()
    weights = sum(t.numel() * t.element_size() for t in copy.params.values())
    prune = Prune(ratio=RATIO, round_to=ROUND_TO)
    extra = measure(lambda: prune.run(copy, PassContext()))
    return None if extra is None else extra / weights


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def speedup(original: Callable[[], object], pruned: Callable[[], object], repeat: int) -> float:
    """Median original latency / median pruned latency; runs interleaved so load drift hits both alike."""
    with torch.no_grad():
        original(), pruned()
        times = np.array([(_seconds(original), _seconds(pruned)) for _ in range(repeat)])
    return float(np.median(times[:, 0]) / np.median(times[:, 1]))


def ort_runner(graph: tc.Graph, inputs: tuple[torch.Tensor, ...]) -> Callable[[], object]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(tc.to_onnx(graph).SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    return lambda: session.run(None, feeds)


def batched(inputs: tuple[torch.Tensor, ...], batch: int) -> tuple[torch.Tensor, ...]:
    return tuple(x[:1].expand(batch, *x.shape[1:]).contiguous() for x in inputs)


def speedups(original: dict[str, Callable], pruned: dict[str, Callable], repeat: int) -> dict[str, float]:
    return {key: speedup(original[key], pruned[key], repeat) for key in pruned}


def ratio(before: float, after: float) -> float:
    return before / after if after else float("inf")


def ours(name: str, model: nn.Module, inputs: tuple, baseline: dict, repeat: int) -> Row:
    """torchcarve: capture at each batch size, prune, run the generated module and the ONNX export."""
    row, pruned_runs = Row(name, "torchcarve"), {}
    for batch in BATCHES:
        x = batched(inputs, batch)
        graph = tc.capture(model, x)
        result = tc.optimize(graph, SPEC)
        line = result.report[0]
        if batch == 1:
            start = time.perf_counter()
            find_groups(graph)
            row.group_s = time.perf_counter() - start
            row.params, row.macs = ratio(*line.params), ratio(*line.macs)
            row.note = _blocked_note(line.stats) if not line.changed else ""
            row.mem = peak_extra_memory_fresh(graph)
        module = tc.to_torch(result.graph).eval()
        pruned_runs[f"ORT b{batch}"] = ort_runner(result.graph, x)
        pruned_runs[f"torch b{batch}"] = lambda m=module, x=x: m(*x)
    row.speedup = speedups(baseline, pruned_runs, repeat)
    row.ok = True
    return row


def _blocked_note(stats: dict) -> str:
    reasons = sorted(stats.get("blocked", {}).items(), key=lambda kv: -kv[1])
    return "nothing pruned: " + "; ".join(f"{reason} ({n})" for reason, n in reasons[:2])


def torch_pruning_row(name: str, model: nn.Module, inputs: tuple, baseline: dict, repeat: int) -> Row:
    """torch-pruning's documented recipe; a result whose outputs change shape or that fails to run is a failure."""
    import copy

    import torch_pruning as tp

    row = Row(name, "torch-pruning")
    expected = {b: [o.shape for o in _outputs(model, batched(inputs, b))] for b in BATCHES}
    model = copy.deepcopy(model)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    start = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(model, inputs, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=RATIO, global_pruning=False, ignored_layers=layers[-1:],
                                       round_to=ROUND_TO,
                                       num_heads=_num_heads(model), prune_num_heads=True, prune_head_dims=False,
                                       head_pruning_ratio=RATIO)
    row.group_s = time.perf_counter() - start
    before = graph_cost(tc.capture(model, inputs))
    pruner.step()
    _update_head_counts(model, pruner)
    for batch in BATCHES:
        got = [o.shape for o in _outputs(model, batched(inputs, batch))]
        if got != expected[batch]:
            row.note = f"mis-pruned: output shape {list(got[0])} != {list(expected[batch][0])}"
            return row
    pruned_runs = {}
    for batch in BATCHES:
        x = batched(inputs, batch)
        graph = tc.capture(model, x)
        if batch == 1:
            after = graph_cost(graph)
            row.params, row.macs = ratio(before.params, after.params), ratio(before.macs, after.macs)
        pruned_runs[f"ORT b{batch}"] = ort_runner(graph, x)
        pruned_runs[f"torch b{batch}"] = lambda x=x: model(*x)
    row.speedup = speedups(baseline, pruned_runs, repeat)
    row.ok = True
    return row


def _outputs(model: nn.Module, inputs: tuple) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t for t in tree_flatten(model(*inputs))[0] if isinstance(t, torch.Tensor)]


def _num_heads(model: nn.Module) -> dict[nn.Module, int]:
    """q/k/v projections -> head count, as torch-pruning's HF examples pass them."""
    heads = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        count = getattr(module, "num_attention_heads", None) or getattr(config, "num_attention_heads", None)
        for attr in ("query", "key", "value", "q_proj", "k_proj", "v_proj"):
            if isinstance(getattr(module, attr, None), nn.Linear) and count:
                kv = attr in ("k_proj", "v_proj") and getattr(config, "num_key_value_heads", None)
                heads[getattr(module, attr)] = kv or count
    return heads


def _update_head_counts(model: nn.Module, pruner) -> None:
    """torch-pruning's HF recipe: write the new head counts back to the attention modules."""
    for layer, count in pruner.num_heads.items():
        for module in model.modules():
            if getattr(module, "query", None) is layer:
                module.num_attention_heads = count
                module.all_head_size = count * module.attention_head_size
            if getattr(module, "q_proj", None) is layer:
                module.num_heads = count
            if getattr(module, "k_proj", None) is layer and hasattr(module, "num_key_value_heads"):
                module.num_key_value_heads = count


def baseline_runs(model: nn.Module, inputs: tuple) -> dict[str, Callable]:
    runs = {}
    for batch in BATCHES:
        x = batched(inputs, batch)
        runs[f"ORT b{batch}"] = ort_runner(tc.capture(model, x), x)
        runs[f"torch b{batch}"] = lambda x=x: model(*x)
    return runs


def onnx_row(name: str, repeat: int) -> Row:
    """An ONNX light model pruned from the file: ORT and the generated torch module, at the file's batch."""
    path = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    row = Row(f"onnx:{name}", "torchcarve")
    graph = tc.from_onnx(str(path))
    start = time.perf_counter()
    find_groups(graph)
    row.group_s = time.perf_counter() - start
    row.mem = peak_extra_memory_fresh(graph)
    result = tc.optimize(graph, SPEC)
    line = result.report[0]
    row.params, row.macs = ratio(*line.params), ratio(*line.macs)
    row.note = "" if line.changed else _blocked_note(line.stats)
    inputs = tuple(torch.randn([d if isinstance(d, int) else 1 for d in v.type.shape]) for v in graph.inputs)
    batch = inputs[0].shape[0]
    original = {f"ORT b{batch}": ort_runner(graph, inputs), f"torch b{batch}": _module_run(graph, inputs)}
    pruned = {f"ORT b{batch}": ort_runner(result.graph, inputs), f"torch b{batch}": _module_run(result.graph, inputs)}
    row.speedup = speedups(original, pruned, repeat)
    row.ok = True
    return row


def _module_run(graph: tc.Graph, inputs: tuple) -> Callable[[], object]:
    module = tc.to_torch(graph).eval()
    return lambda: module(*inputs)


def _timeout(signum: int, frame: object) -> None:
    raise TimeoutError("no result within --row-timeout")


def guarded(name: str, tool: str, make: Callable[[], Row], limit: int) -> Row:
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(limit)
    try:
        row = make()
    except Exception as e:  # a failed row, not a crashed benchmark
        if os.environ.get("BENCH_DEBUG"):
            traceback.print_exc()
        row = Row(name, tool, note=f"error: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
    finally:
        signal.alarm(0)
    print(f"  {tool}: {'ok' if row.ok else 'failed'} in {time.perf_counter() - start:.0f} s {row.note}", file=sys.stderr)
    return row


# ---- table --------------------------------------------------------------------------------------------

COLUMNS = ["ORT b1", "ORT b16", "torch b1", "torch b16"]


def markdown(rows: list[Row]) -> str:
    lines = ["| model | tool | pruned | params ÷ | MACs ÷ | " + " | ".join(f"speedup {c}" for c in COLUMNS)
             + " | groups (s) | peak extra mem / weights | note |", "|---|---|:-:|" + "---:|" * (4 + len(COLUMNS)) + "---|"]
    for r in rows:
        cells = [r.model, r.tool, "yes" if r.ok else "**no**", _x(r.params), _x(r.macs)]
        cells += [_x(r.speedup.get(c)) for c in COLUMNS]
        cells += [f"{r.group_s:.3f}" if r.group_s is not None else "–", _x(r.mem), r.note.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def summary(rows: list[Row]) -> str:
    by_tool: dict[str, list[Row]] = {}
    for r in rows:
        if not r.model.startswith("onnx:"):
            by_tool.setdefault(r.tool, []).append(r)
    coverage = ", ".join(f"{tool} {sum(r.ok for r in rs)}/{len(rs)}" for tool, rs in by_tool.items())
    lines = [f"PyTorch models pruned without error (outputs unchanged in shape): {coverage}."]
    onnx_rows = [r for r in rows if r.model.startswith("onnx:")]
    if onnx_rows:
        lines.append(f"ONNX files pruned by torchcarve: {sum(r.ok and r.macs and r.macs > 1 for r in onnx_rows)}"
                     f"/{len(onnx_rows)} (torch-pruning cannot read ONNX).")
    for r in rows:
        if r.ok and r.macs and r.model == "resnet18_like":
            best = max(r.speedup.values())
            lines.append(f"{r.tool} on resnet18_like: best speedup {best:.2f}x for a {r.macs:.2f}x MACs reduction "
                         f"= {best / r.macs:.2f} of the MACs ratio.")
    return "\n\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--row-timeout", type=int, default=300, help="seconds before one tool's row counts as failed")
    parser.add_argument("--models", nargs="*", help="subset of model names (onnx:NAME for the light models)")
    parser.add_argument("--out", type=Path, help="also write the table into this markdown file's results section")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[Row] = []
    for name, build in TORCH_MODELS.items():
        if args.models and name not in args.models:
            continue
        print(f"{name} ...", file=sys.stderr, flush=True)
        model, inputs = build()
        baseline = baseline_runs(model, inputs)
        rows.append(guarded(name, "torchcarve", lambda: ours(name, model, inputs, baseline, args.repeat),
                            args.row_timeout))
        rows.append(guarded(name, "torch-pruning", lambda: torch_pruning_row(name, model, inputs, baseline, args.repeat),
                            args.row_timeout))
    for name in LIGHT:
        if args.models and f"onnx:{name}" not in args.models:
            continue
        print(f"onnx:{name} ...", file=sys.stderr, flush=True)
        rows.append(guarded(f"onnx:{name}", "torchcarve", lambda: onnx_row(name, args.repeat), args.row_timeout))
    text = f"{markdown(rows)}\n\n{summary(rows)}\n"
    print(text)
    if args.out:
        write_results(args.out, text, " ".join(sys.argv[1:]))


RESULTS = "<!-- results: written by benchmarks/pruning.py -->"


def write_results(path: Path, text: str, argv: str) -> None:
    """Replace the results section of `path` (from the marker to the next `## ` heading) with the
    command line and the table; written atomically."""
    from torchcarve.fileio import atomic_file

    content = path.read_text() if path.exists() else RESULTS
    if RESULTS not in content:
        raise SystemExit(f"{path} has no results marker {RESULTS!r}")
    head, _, rest = content.partition(RESULTS)
    tail = rest[rest.index("\n## "):] if "\n## " in rest else ""
    command = f"python benchmarks/pruning.py {argv}".strip()
    with atomic_file(path) as temporary:
        temporary.write_text(f"{head}{RESULTS}\n\n```\n{command}\n```\n\n{text.rstrip()}\n{tail}")


if __name__ == "__main__":
    main()
