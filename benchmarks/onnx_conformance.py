"""ONNX node conformance: every `load_model_tests(kind="node")` case through
(a) ONNX -> IR -> ONNX -> onnxruntime and (b) ONNX -> IR -> PyTorch, against the expected outputs,
beside onnxruntime on the original model. Prints counts per path and failures by op.

    python benchmarks/onnx_conformance.py [--filter SUBSTRING] [--limit N] [--verbose] [--onnx2torch]

--onnx2torch adds onnx2torch (the existing ONNX -> PyTorch converter) beside path (b). It needs
torchvision, which the project's pinned torch cannot import, so it runs in a venv of its own that this
sets up on first use (O2T_VENV, `pip install torch==2.14.1 torchvision==0.29.1 onnx2torch onnx`, ~5.5 GB)
and never in the project's install; benchmarks/onnx2torch_cases.py is what runs there.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests/ holds the harness
from tests.onnx_cases import node_cases  # noqa: E402
from tests.onnx_conformance import PATHS, CaseResult, run_case  # noqa: E402

O2T_VENV = Path("/tmp/onnx2torch-venv")
O2T_PACKAGES = ["torch==2.14.1", "torchvision==0.29.1", "onnx2torch", "onnx"]


def onnx2torch_venv() -> Path:
    """The python of the separate onnx2torch venv, created and installed on first use."""
    python = O2T_VENV / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import onnx2torch"], capture_output=True).returncode == 0:
        return python
    print(f"setting up {O2T_VENV} for onnx2torch ({' '.join(O2T_PACKAGES)}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(O2T_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *O2T_PACKAGES], check=True)
    return python


def onnx2torch_passed(name_filter: str) -> set[str]:
    """Names of the cases onnx2torch converts correctly (run in its own venv)."""
    runner = Path(__file__).resolve().parent / "onnx2torch_cases.py"
    done = subprocess.run([str(onnx2torch_venv()), str(runner), "--filter", name_filter],
                          capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def summarize(results: list[CaseResult], verbose: bool, onnx2torch: set[str] | None = None) -> None:
    total = len(results)
    counts = {p: sum(r.passed.get(p, False) for r in results) for p in PATHS}
    ort_ok = [r for r in results if r.passed.get("ort")]
    print(f"\nONNX node conformance: {total} cases")
    print("| path | passed | of the cases ORT passes |")
    print("|---|---|---|")
    print(f"| onnxruntime on the original | {counts['ort']}/{total} | - |")
    for path, label in (("onnx", "(a) ONNX -> IR -> ONNX -> onnxruntime"), ("torch", "(b) ONNX -> IR -> PyTorch")):
        within = sum(r.passed.get(path, False) for r in ort_ok)
        print(f"| {label} | {counts[path]}/{total} | {within}/{len(ort_ok)} ({100 * within / max(len(ort_ok), 1):.1f}%) |")
    if onnx2torch is None:
        print("| onnx2torch, like path (b) | not run (--onnx2torch) | - |")
    else:
        within = sum(r.name in onnx2torch for r in ort_ok)
        passed = sum(r.name in onnx2torch for r in results)
        print(f"| onnx2torch, like path (b) | {passed}/{total} | {within}/{len(ort_ok)} "
              f"({100 * within / max(len(ort_ok), 1):.1f}%) |")
    for path in ("onnx", "torch"):
        failed = Counter(op for r in ort_ok if not r.passed.get(path) for op in r.ops[:1])
        print(f"\nfailures of path {path} by op (cases ORT passes): "
              + ", ".join(f"{op} {n}" for op, n in failed.most_common()))
        if verbose:
            for r in ort_ok:
                if not r.passed.get(path):
                    print(f"  {r.name}: {r.errors.get(path)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="", help="only cases whose name contains this")
    parser.add_argument("--limit", type=int, default=0, help="at most this many cases")
    parser.add_argument("--verbose", action="store_true", help="list every failure with its error")
    parser.add_argument("--onnx2torch", action="store_true", help="add onnx2torch's count (own venv, set up once)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = node_cases(args.filter)
    cases = cases[: args.limit] if args.limit else cases
    start = time.time()
    results = [run_case(c) for c in cases]
    summarize(results, args.verbose, onnx2torch_passed(args.filter) if args.onnx2torch else None)
    print(f"\n{len(results)} cases in {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
