"""Import is linear in the size of the file: long chains and names that all sanitize alike."""
from __future__ import annotations

import onnx
from onnx import helper

import torchcarve as tc
from torchcarve.ir.names import first_free

from .onnx_models import model, tensor_info
from .sandbox import run_isolated

TIMEOUT_S = 240  # a hang guard, not a timing assert: quadratic import of these files takes many minutes


def relu_chain(n: int, name=lambda i: f"v{i}") -> bytes:
    nodes = [helper.make_node("Relu", [name(i)], [name(i + 1)]) for i in range(n)]
    return model(nodes, [tensor_info(name(0), shape=[1, 4])], [tensor_info(name(n), shape=[1, 4])]).SerializeToString()


def alike_name(i: int) -> str:
    """A distinct name for each i that sanitize_identifier turns into "x": "x" + i in punctuation digits."""
    digits = "!#$%&*+-./:;<=>?@"
    name = "x"
    while True:
        name += digits[i % len(digits)]
        i //= len(digits)
        if not i:
            return name


def import_chain(payload: bytes) -> None:
    graph = tc.from_onnx(onnx.load_from_string(payload))
    names = [v.name for n in graph.nodes for v in n.outputs]
    assert len(graph.nodes) == 20_000 and len(set(names)) == len(names)


def test_20k_node_chain_imports() -> None:
    outcome, detail = run_isolated("tests.security.test_onnx_scaling:import_chain", relu_chain(20_000), TIMEOUT_S, 2000)
    assert outcome == "ok", detail


def test_20k_names_that_sanitize_alike_import() -> None:
    payload = relu_chain(20_000, alike_name)
    outcome, detail = run_isolated("tests.security.test_onnx_scaling:import_chain", payload, TIMEOUT_S, 2000)
    assert outcome == "ok", detail


class CountingSet(set):
    lookups = 0

    def __contains__(self, item: object) -> bool:
        CountingSet.lookups += 1
        return super().__contains__(item)


def test_first_free_with_counters_is_linear() -> None:
    taken, counters = CountingSet(), {}
    for _ in range(1000):
        taken.add(first_free("x", taken, counters))
    assert len(taken) == 1000
    assert CountingSet.lookups < 3 * 1000  # without counters: ~n^2/2 = 500,000
