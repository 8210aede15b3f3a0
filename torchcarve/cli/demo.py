"""`carve demo`: train a small CNN on scikit-learn's bundled digits, then carve it end to end.

Nothing is downloaded: the digits ship inside scikit-learn. Every stage is checked against
the eager model and reported in one table; artifacts go to ./carve-demo/.
"""
from __future__ import annotations

import argparse
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from ..errors import CarveError
from ..passes.manager import Report
from ..progress import track

console = Console(width=max(Console().width, 110))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="the built-in end-to-end run on the digits data set")
    parser.add_argument("-o", "--output", "--out", dest="out", default="carve-demo", help="where artifacts are written (default ./carve-demo)")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs (default 12, a few seconds)")
    parser.add_argument("--finetune-epochs", type=int, default=12, help="fine-tuning epochs after pruning (default 12)")
    parser.set_defaults(run=run)


class DigitsCNN(torch.nn.Module):
    """Three conv+BN+ReLU stages, global pooling and a linear classifier, for 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        def block(cin: int, cout: int) -> list[torch.nn.Module]:
            return [torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.BatchNorm2d(cout), torch.nn.ReLU()]
        self.features = torch.nn.Sequential(*block(1, 32), *block(32, 64), torch.nn.MaxPool2d(2), *block(64, 64))
        self.classifier = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass
class Digits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits() -> Digits:
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as e:
        raise CarveError("the demo needs scikit-learn", hint='install with: pip install ".[demo]"') from e
    data = sklearn_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return Digits(x[:split], y[:split], x[split:], y[split:])


def train(model: torch.nn.Module, data: Digits, epochs: int, lr: float = 3e-3) -> None:
    """Plain Adam training over shuffled mini-batches (also used to fine-tune carved models)."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    generator = torch.Generator().manual_seed(1)
    model.train()
    for _ in track(range(epochs), "training (epochs)"):
        for batch in torch.randperm(len(data.train_x), generator=generator).split(64):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(data.train_x[batch]), data.train_y[batch])
            loss.backward()
            optimizer.step()
    model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: Digits) -> float:
    return (model(data.test_x).argmax(1) == data.test_y).float().mean().item()


@dataclass
class Stage:
    """One row of the demo's results table."""

    name: str
    params: int
    weight_bytes: int
    macs: int
    accuracy: float
    difference: float
    latency_ms: float


def run(args: argparse.Namespace) -> int:
    import torchcarve as tc
    from .opt import report_table
    from .show import summary_table

    torch.manual_seed(0)
    started = time.perf_counter()
    out = Path(args.out)
    data = load_digits()
    console.print(f"[bold]1. training[/] a CNN on {len(data.train_x)} digits for {args.epochs} epochs ...")
    model = DigitsCNN()
    train(model, data, args.epochs)
    with torch.no_grad():
        reference = model(data.test_x)

    console.print("[bold]2. capturing[/] with torch.export (symbolic batch) ...")
    graph = tc.capture(model, (data.test_x[:2],), dynamic_batch=True, name="DigitsCNN")
    console.print(summary_table(graph, title="captured graph"))
    stages = [_measure("eager", graph, model, data, reference)]

    console.print(f"[bold]3. pruning[/] half the channels of every layer (L1 norm), then fine-tuning "
                  f"for {args.finetune_epochs} epochs ...")
    pruned = tc.optimize(graph, "prune{ratio=0.5}", report=True)
    console.print(report_table(pruned.report, title="prune"))
    stages.append(_measure("pruned 50%", pruned.graph, tc.to_torch(pruned.graph), data, reference))
    module = tc.to_torch(pruned.graph)
    train(module, data, args.finetune_epochs)
    graph = tc.with_module_weights(pruned.graph, module)
    stages.append(_measure("pruned + fine-tuned", graph, module, data, reference))

    console.print("[bold]4. factorizing[/] the convs into low-rank pairs (data-aware SVD, half the conv/linear "
                  "params, calibrated on 512 training images) ...")
    calibration = [(batch,) for batch in data.train_x[:512].split(64)]
    factored = tc.optimize(graph, "low-rank{method=whitened,budget-params=0.5}", calibration=calibration, report=True)
    console.print(report_table(factored.report, title="low-rank"))
    graph = factored.graph
    module = tc.to_torch(graph)
    stages.append(_measure("low-rank", graph, module, data, reference))
    reference = module(data.test_x).detach()  # from here on, every step must reproduce the carved model

    console.print("[bold]5. fusing[/] (exact passes: BN folding, linear merging, cleanup) ...")
    fused = tc.optimize(graph, "fuse", check_numerics=True, report=True)
    console.print(report_table(fused.report, title="fuse"))
    graph = fused.graph
    stages.append(_measure("fused", graph, tc.to_torch(graph), data, reference))
    tc.save(graph, out / "model.carve")

    console.print(f"[bold]6. exporting[/] to {out / 'torch'} (reloaded standalone) and {out / 'model.onnx'} (onnxruntime) ...")
    tc.export_torch(graph, out / "torch")
    stages.append(_measure("model.py", graph, _load_generated(out / "torch" / "model.py"), data, reference))
    tc.to_onnx(graph, out / "model.onnx")
    stages.append(_measure("model.onnx (ORT)", graph, _OnnxModule(out / "model.onnx"), data, reference))
    for stage in stages[-3:]:  # the exact steps: fusing, and the two exports
        if stage.difference > 1e-3:
            raise CarveError(f"stage '{stage.name}' differs from the original by {stage.difference:.2e}")

    console.print("[bold]7. quantizing[/] to int8 (static QDQ: per-channel weights, MSE activation ranges, "
                  "same calibration images) ...")
    quantized_result = tc.optimize(graph, "quantize{mode=static,activations=mse}", calibration=calibration, report=True)
    quantized = quantized_result.graph
    tc.save(quantized, out / "model.int8.carve")
    tc.to_onnx(quantized, out / "model.int8.onnx")
    stages.append(_measure("int8 model.onnx (ORT)", quantized, _OnnxModule(out / "model.int8.onnx"), data, reference))

    console.print(_results_table(stages))
    report = Report.join([pruned.report, factored.report, fused.report, quantized_result.report])
    report.to_html(out / "report.html", title="carve demo: digits CNN (prune, fine-tune, low-rank, fuse, int8)")
    console.print(f"report: {out / 'report.html'} (pictures before/after every pass, per-layer tables, charts)")
    console.print(f"artifacts in {out}/ (graphs: model.carve, model.int8.carve; module: torch/model.py; "
                  f"ONNX: model.onnx, model.int8.onnx); "
                  f"done in {time.perf_counter() - started:.1f}s")
    return 0


def _measure(name: str, graph: object, module: object, data: Digits, reference: torch.Tensor) -> Stage:
    """Cost from the graph; accuracy, max |diff| vs the original and latency from running `module`."""
    from ..analysis.cost import graph_cost

    cost = graph_cost(graph)  # type: ignore[arg-type]
    used = {node.attrs["name"] for node in graph.param_nodes()}  # type: ignore[attr-defined]
    weight_bytes = sum(graph.params[name].nbytes for name in used)  # type: ignore[attr-defined]
    with torch.no_grad():
        logits = module(data.test_x)  # type: ignore[operator]
        timings = []
        module(data.test_x[:32])  # type: ignore[operator]  # warm-up
        for _ in range(20):
            begin = time.perf_counter()
            module(data.test_x[:32])  # type: ignore[operator]
            timings.append(time.perf_counter() - begin)
    accuracy = (logits.argmax(1) == data.test_y).float().mean().item()
    difference = (logits - reference).abs().max().item()
    return Stage(name, cost.params, weight_bytes, cost.macs, accuracy, difference, 1e3 * min(timings))


class _OnnxModule:
    """Calls an ONNX file through onnxruntime like a module: tensor in, tensor out."""

    def __init__(self, path: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 2
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: x.numpy()})[0])


def _load_generated(path: Path) -> torch.nn.Module:
    """Import a generated model.py the way a user would, with no torchcarve involved."""
    spec = importlib.util.spec_from_file_location("carved_demo_model", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.load()


def _results_table(stages: list[Stage]) -> Table:
    table = Table(title="digits CNN, stage by stage (max |diff|: vs the eager model, and from fusing on vs the "
                        "low-rank module; latency: batch 32, best of 20)")
    for column in ("stage", "params", "weights KiB", "MACs / image", "test accuracy", "max |diff|", "latency ms"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage in stages:
        table.add_row(stage.name, f"{stage.params:,}", f"{stage.weight_bytes / 1024:.1f}", f"{stage.macs:,}",
                      f"{stage.accuracy:.2%}",
                      f"{stage.difference:.1e}", f"{stage.latency_ms:.2f}")
    return table
