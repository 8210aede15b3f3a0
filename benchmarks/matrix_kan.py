"""matrix-kan on a KAN MLP: the Cox–de Boor recursion against power basis x M_k, PyTorch and ONNX Runtime.

For each spline order k and grid size G: the whole KAN MLP (3 KANLinear layers, width 256, batch 1024)
and the basis computation alone (one layer's bases), before and after matrix-kan, timed in the
generated PyTorch module and in onnxruntime; ratios (before / after); the largest output error of
each form against float64, relative to the largest output; pykan's own forward (MultKAN, the
MatrixKAN paper's baseline) beside them when pykan is installed.

    python benchmarks/matrix_kan.py                 # k = 1..8, G = 5 and 20 (long on a small machine)
    python benchmarks/matrix_kan.py --quick         # width 64, batch 256, k in 1, 3, 8, G = 5
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torchcarve as tc  # noqa: E402
from benchmarks.machine import header  # noqa: E402
from tests.kan_models import KAN  # noqa: E402


class Bases(torch.nn.Module):
    """The B-spline bases of one layer, alone."""

    def __init__(self, model: KAN) -> None:
        super().__init__()
        self.layer = model.layers[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer.b_splines(x) * 1.0


def seconds(fn, reps: int) -> float:
    """Median wall time of `fn()` over `reps` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ort_runner(graph: tc.Graph, x: torch.Tensor, threads: int):
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        tc.to_onnx(graph, Path(tmp) / "m.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(Path(tmp) / "m.onnx"), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)[0]


def time_pair(module: torch.nn.Module, x: torch.Tensor, reps: int, threads: int) -> dict[str, float]:
    """Times of the captured graph before and after matrix-kan, PyTorch and ORT; errors vs float64."""
    graph = tc.capture(module, (x,))
    result = tc.optimize(graph, "matrix-kan")
    assert result.report[0].stats["rewritten"], result.report[0].stats
    before, after = tc.to_torch(graph), tc.to_torch(result.graph)
    with torch.no_grad():
        exact = copy.deepcopy(module).double()(x.double())  # float64: how far each float32 form is from exact
        scale = float(exact.abs().max())
        errors = [float((form(x).double() - exact).abs().max()) / scale for form in (before, after)]
        row = {"torch_before": seconds(lambda: before(x), reps), "torch_after": seconds(lambda: after(x), reps)}
    row["ort_before"] = seconds(ort_runner(graph, x, threads), reps)
    row["ort_after"] = seconds(ort_runner(result.graph, x, threads), reps)
    row["error_before"], row["error_after"] = errors
    return row


def pykan_seconds(width: int, G: int, k: int, x: torch.Tensor, reps: int) -> float | None:
    try:
        from kan import KAN as PyKAN
    except ImportError:
        return None
    model = PyKAN(width=[width] * 4, grid=G, k=k, seed=0, auto_save=False, save_act=False).eval()
    with torch.no_grad():
        return seconds(lambda: model(x), reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="width 64, batch 256, k in 1, 3, 8, G = 5")
    parser.add_argument("--orders", type=int, nargs="*", help="spline orders k (default 1..8)")
    parser.add_argument("--grids", type=int, nargs="*", help="grid sizes G (default 5 20)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-pykan", action="store_true")
    args = parser.parse_args()
    width, batch = (64, 256) if args.quick else (256, 1024)
    orders = args.orders or ([1, 3, 8] if args.quick else list(range(1, 9)))
    grids = args.grids or ([5] if args.quick else [5, 20])
    torch.set_num_threads(args.threads)
    print(header("python benchmarks/matrix_kan.py " + " ".join(sys.argv[1:])))
    print(f"KAN MLP: 3 KANLinear layers, width {width}, batch {batch}, {args.threads} threads; times in ms "
          "(median); ratio = before / after\n")
    print("| G | k | MLP torch before | after | ratio | MLP ORT before | after | ratio | bases torch ratio "
          "| bases ORT ratio | pykan | pykan / after (torch) | rel. error before | after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for G in grids:
        for k in orders:
            torch.manual_seed(0)
            model = KAN([width] * 4, G, k).eval()
            x = torch.rand(batch, width) * 2.4 - 1.2  # mostly inside the grid, some outside
            mlp = time_pair(model, x, args.reps, args.threads)
            bases = time_pair(Bases(model), x, args.reps, args.threads)
            pykan = None if args.no_pykan else pykan_seconds(width, G, k, x, max(1, args.reps // 2))
            ms = lambda s: f"{s * 1e3:.1f}"  # noqa: E731
            versus = "-" if pykan is None else f"{pykan / mlp['torch_after']:.1f}"
            print(f"| {G} | {k} | {ms(mlp['torch_before'])} | {ms(mlp['torch_after'])} "
                  f"| {mlp['torch_before'] / mlp['torch_after']:.2f} | {ms(mlp['ort_before'])} | {ms(mlp['ort_after'])} "
                  f"| {mlp['ort_before'] / mlp['ort_after']:.2f} | {bases['torch_before'] / bases['torch_after']:.2f} "
                  f"| {bases['ort_before'] / bases['ort_after']:.2f} | {'-' if pykan is None else ms(pykan)} "
                  f"| {versus} | {mlp['error_before']:.1e} | {mlp['error_after']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
