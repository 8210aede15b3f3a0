"""ONNX import scaling and bomb files: import time and peak memory, each measured in a fresh process.

    python benchmarks/import_scaling.py            # Relu chains of 5k, 10k, 20k, 100k nodes + the bomb files
    python benchmarks/import_scaling.py --quick    # 5k and 10k chains + the bomb files

Prints markdown tables. Linear import shows as a flat "µs per node" column. "peak RSS" is the child's
ru_maxrss; "over baseline" subtracts what the process held after importing torch and torchcarve.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def relu_chain(n: int):
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", [f"v{i}"], [f"v{i + 1}"]) for i in range(n)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info(f"v{n}", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def bomb(name: str):
    sys.path.insert(0, str(ROOT))
    from tests.security import test_onnx_bombs as bombs

    size = 100_000_000_000 if name.endswith("1e11") else bombs.BIG
    return {**bombs.LEFT_AS_OPS, "constant_of_shape_1e11": bombs.constant_of_shape}[name](size)


def measure(kind: str, arg: str) -> dict:
    """Import one model in this process: seconds, peak RSS and baseline (MB), outcome."""
    import torchcarve as tc

    model = relu_chain(int(arg)) if kind == "chain" else bomb(arg)
    tc.from_onnx(relu_chain(2))  # warm: lazy imports are not import time
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    try:
        graph = tc.from_onnx(model)
        outcome = f"ok, {len(graph.nodes)} nodes"
    except tc.CarveError as e:
        outcome = f"{type(e).__name__}: {str(e).splitlines()[0][:60]}"
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak": peak, "baseline": baseline, "outcome": outcome,
            "bytes": len(model.SerializeToString())}


def in_child(kind: str, arg: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", kind, arg], capture_output=True, text=True,
                         cwd=ROOT, timeout=900, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one)))
        return
    print("| Relu chain | import s | µs per node | peak RSS MB | over baseline MB |")
    print("|---:|---:|---:|---:|---:|")
    for n in ([5_000, 10_000] if args.quick else [5_000, 10_000, 20_000, 100_000]):
        r = in_child("chain", str(n))
        print(f"| {n} | {r['seconds']:.2f} | {r['seconds'] / n * 1e6:.0f} | {r['peak']:.0f} | "
              f"{r['peak'] - r['baseline']:.0f} |")
    print("\n| bomb file | bytes | import s | peak RSS MB | over baseline MB | outcome |")
    print("|---|---:|---:|---:|---:|---|")
    for name in ["constant_of_shape", "tile", "expand", "pad", "resize", "range_cast", "range_of_input_dim",
                 "constant_of_shape_1e11"]:
        r = in_child("bomb", name)
        print(f"| {name} | {r['bytes']} | {r['seconds']:.2f} | {r['peak']:.0f} | {r['peak'] - r['baseline']:.0f} "
              f"| {r['outcome']} |")


if __name__ == "__main__":
    main()
