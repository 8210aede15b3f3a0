"""`fuse` beside onnxslim on the same ONNX files: node count, onnxruntime latency, parity.

For each model: the ONNX file (the onnx package's light models, and the test models exported by
our ONNX backend without passes) is (a) imported, run through `fuse`, exported again, and
(b) simplified by onnxslim. Both are timed in onnxruntime against the original, in one run.

    pip install -c constraints.txt ".[dev,bench]" && python benchmarks/fuse.py [--repeat 30]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torchcarve as tc  # noqa: E402
from tests.models import MODELS  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import header  # noqa: E402

LIGHT = ["resnet50", "densenet121", "squeezenet", "shufflenet", "inception_v1", "inception_v2", "vgg19", "zfnet512",
         "bvlc_alexnet"]
TORCH_MODELS = ["cnn_bn", "residual", "repvgg", "hf_bert", "hf_vit", "hf_resnet"]


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds_for(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    initializers = {i.name for i in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else 1 for d in tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        feeds[value.name] = (rng.integers(0, 2, shape) if np.issubdtype(dtype, np.integer)
                             else rng.standard_normal(shape)).astype(dtype)
    return feeds


def run(sess: ort.InferenceSession, feeds: dict) -> list[np.ndarray]:
    """Feed by name: a file that renamed its inputs fails here, as it would in the user's serving code."""
    """Feed by position: exported names are sanitized ("gpu_0/data_0" -> "gpu_0_data_0")."""
    return sess.run(None, feeds)


def latency_ms(sess: ort.InferenceSession, feeds: dict, repeat: int) -> float:
    run(sess, feeds)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(sess, feeds)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def source_files(workdir: Path) -> dict[str, Path]:
    light = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
    files = {name: light / f"light_{name}.onnx" for name in LIGHT}
    for name in TORCH_MODELS:
        if name not in MODELS:
            continue
        model, inputs = MODELS[name]()
        files[name] = workdir / f"{name}.onnx"
        tc.to_onnx(tc.capture(model, inputs), files[name])
    return files


def compare(name: str, path: Path, workdir: Path, repeat: int) -> dict:
    import onnxslim

    original = onnx.load(str(path))
    ours_path, slim_path = workdir / f"{name}.ours.onnx", workdir / f"{name}.slim.onnx"
    start = time.perf_counter()
    tc.to_onnx(tc.optimize(tc.from_onnx(original), "cleanup,fuse").graph, ours_path)
    ours_seconds = time.perf_counter() - start
    start = time.perf_counter()
    onnx.save(onnxslim.slim(onnx.load(str(path))), str(slim_path))
    slim_seconds = time.perf_counter() - start
    feeds = feeds_for(original)
    sessions = {k: session(p) for k, p in (("orig", path), ("ours", ours_path), ("slim", slim_path))}
    expected = run(sessions["orig"], feeds)[0]
    scale = max(float(np.abs(expected).max()), 1e-6)
    row = {"model": name, "nodes": len(original.graph.node),
           "ours_nodes": len(onnx.load(str(ours_path)).graph.node), "slim_nodes": len(onnx.load(str(slim_path)).graph.node),
           "ours_err": float(np.abs(run(sessions["ours"], feeds)[0] - expected).max()) / scale,
           "ours_s": ours_seconds, "slim_s": slim_seconds,
           "names": _signature(onnx.load(str(ours_path))) == _signature(original)}
    base = latency_ms(sessions["orig"], feeds, repeat)
    row["ours_speed"] = base / latency_ms(sessions["ours"], feeds, repeat)
    row["slim_speed"] = base / latency_ms(sessions["slim"], feeds, repeat)
    return row


def _signature(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """Input names (old files also list their initializers as inputs: those are weights, not inputs) and output names."""
    weights = {t.name for t in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name not in weights], [v.name for v in model.graph.output]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--models", nargs="*", help="subset of model names")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        files = source_files(workdir)
        rows = []
        for name, path in files.items():
            if args.models and name not in args.models:
                continue
            try:
                rows.append(compare(name, path, workdir, args.repeat))
            except Exception as e:  # a benchmark row, not a crash: report and go on
                print(f"{name}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}", file=sys.stderr)
    print(header(" ".join(["python benchmarks/fuse.py", *sys.argv[1:]])))
    print("| model | ONNX nodes | after `cleanup,fuse` | after onnxslim | names kept | ORT speedup `fuse` "
          "| ORT speedup onnxslim | max rel. error `fuse` | time `fuse` / onnxslim (s) |")
    print("|---|---:|---:|---:|:-:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['nodes']} | {r['ours_nodes']} | {r['slim_nodes']} | {'yes' if r['names'] else 'NO'} "
              f"| {r['ours_speed']:.2f}x "
              f"| {r['slim_speed']:.2f}x | {r['ours_err']:.1e} | {r['ours_s']:.2f} / {r['slim_s']:.2f} |")
    light = [r for r in rows if r["model"] in LIGHT]
    print(f"\nlight models: {len(light)}/{len(LIGHT)} run fed by their original names with max rel. error "
          f"{max((r['ours_err'] for r in light), default=float('nan')):.1e}; names kept {sum(r['names'] for r in light)}"
          f"/{len(light)}; nodes {sum(r['ours_nodes'] for r in light)} (ours) vs {sum(r['slim_nodes'] for r in light)} (onnxslim)")


if __name__ == "__main__":
    main()
