"""Runs the ONNX node cases through onnx2torch (ONNX -> PyTorch) and prints the names of those that
match the expected outputs, one a line. Runs in its own venv (onnx2torch needs torchvision, which the
project's pinned torch cannot import); benchmarks/onnx_conformance.py --onnx2torch sets that up and
calls this.

    /tmp/onnx2torch-venv/bin/python benchmarks/onnx2torch_cases.py [--filter SUBSTRING]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from onnx2torch import convert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests/onnx_cases.py
from tests.onnx_cases import CASE_SECONDS, case_data, matches, node_cases, time_limit, torch_outputs  # noqa: E402


def passes(case: object) -> bool:
    """onnx2torch converts the case's model and the module reproduces the expected outputs."""
    data = case_data(case)
    if data is None:
        return False
    model, inputs, expected = data
    try:
        with time_limit(CASE_SECONDS), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return matches(torch_outputs(convert(model), inputs), expected)
    except Exception:  # noqa: BLE001 - any failure to convert or run is a failed case
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="", help="only cases whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for case in node_cases(args.filter):
        if passes(case):
            print(case.name, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
