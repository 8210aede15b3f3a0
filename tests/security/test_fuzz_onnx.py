"""Seeded mutation fuzzing of ONNX files: every case imports, exports and runs, or is a CarveError.

Each case mutates one of the small seed models (onnx_models.SEEDS), at the protobuf level (dims,
attributes, op types, inputs, dtypes, duplicated nodes, cycles) or at the byte level (flips, cuts,
inserts), and runs tc.from_onnx -> tc.to_onnx -> to_torch on a tiny input in a child process with a
memory cap and a timeout. Anything else (a raw exception, a signal, a timeout) fails the test with
the case's seed; `mutate(seed)` rebuilds that case.
"""
from __future__ import annotations

import random
from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import onnx_models
from .sandbox import run_isolated

CASES = 200
FIRST_SEED = 13_000
TIMEOUT_S = 60
MEMORY_MB = 1500

HUGE_DIMS = [2**62, 2**40, 2**31, 10**9, -1, -7, 0]
ODD_INTS = [2**62, -2**62, 2**31, -1, 0, 1, 3, 99, -99]
ODD_KEYS = ["if", "a.b", "x\n%y = aten.relu(%x)", "absent", "outputs", "domain", "captures", "__class__",
            "axis", "alpha", "kind", "", "é"]
OP_TYPES = ["Relu", "Add", "Concat", "Reshape", "Gather", "Slice", "Tile", "Expand", "ConstantOfShape", "Range",
            "Resize", "Pad", "Split", "Softmax", "Transpose", "Squeeze", "Unsqueeze", "TopK", "Conv", "Gemm",
            "MatMulIntegerToFloat", "NonZero", "Where", "Cast", "Einsum", "CumSum", "Foo", "Relu x", "Re\nlu"]
DTYPES = [TensorProto.FLOAT, TensorProto.INT64, TensorProto.UINT8, TensorProto.BOOL, TensorProto.STRING,
          TensorProto.INT4, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.COMPLEX64, 999]


# ---- protobuf-level mutations: (model, rng) -> None, in place ----------------------------------

def _node(model: onnx.ModelProto, rng: random.Random) -> onnx.NodeProto:
    return rng.choice(model.graph.node)


def huge_dim(model: onnx.ModelProto, rng: random.Random) -> None:
    infos = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    tensors = list(model.graph.initializer)
    if tensors and rng.random() < 0.5:
        tensor = rng.choice(tensors)
        dims = list(tensor.dims) or [1]
        dims[rng.randrange(len(dims))] = rng.choice(HUGE_DIMS)
        del tensor.dims[:]
        tensor.dims.extend(dims)
        return
    dims = rng.choice(infos).type.tensor_type.shape.dim
    if dims:
        rng.choice(dims).dim_value = rng.choice(HUGE_DIMS)


def attribute_value(model: onnx.ModelProto, rng: random.Random) -> None:
    node = _node(model, rng)
    name = rng.choice([a.name for a in node.attribute] or ["axis"])
    value = rng.choice([rng.choice(ODD_INTS), rng.uniform(-1e9, 1e9), "SAME_UPPER", "nearest", b"\xff\x00",
                        [rng.choice(ODD_INTS) for _ in range(rng.randrange(0, 5))], [0.5, -2.0],
                        numpy_helper.from_array(np.array(rng.choice(ODD_INTS), np.int64))])
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    empty = onnx.AttributeProto.INTS if value == [] else None
    node.attribute.extend(kept + [helper.make_attribute(name, value, attr_type=empty)])


def attribute_key(model: onnx.ModelProto, rng: random.Random) -> None:
    node = _node(model, rng)
    node.attribute.append(helper.make_attribute(rng.choice(ODD_KEYS), rng.choice(ODD_INTS)))


def op_type(model: onnx.ModelProto, rng: random.Random) -> None:
    node = _node(model, rng)
    node.op_type = rng.choice(OP_TYPES)
    if rng.random() < 0.3:
        node.domain = rng.choice(["com.microsoft", "my.domain", "bad domain"])


def drop_input(model: onnx.ModelProto, rng: random.Random) -> None:
    node = _node(model, rng)
    if node.input:
        del node.input[rng.randrange(len(node.input))]


def add_input(model: onnx.ModelProto, rng: random.Random) -> None:
    names = [i.name for i in model.graph.initializer] + [o for n in model.graph.node for o in n.output] + ["", "nope"]
    _node(model, rng).input.append(rng.choice(names))


def swap_dtype(model: onnx.ModelProto, rng: random.Random) -> None:
    tensors = list(model.graph.initializer)
    if tensors:
        rng.choice(tensors).data_type = rng.choice(DTYPES)
    else:
        model.graph.input[0].type.tensor_type.elem_type = rng.choice(DTYPES)


def duplicate_node(model: onnx.ModelProto, rng: random.Random) -> None:
    model.graph.node.append(onnx.NodeProto.FromString(_node(model, rng).SerializeToString()))


def cycle(model: onnx.ModelProto, rng: random.Random) -> None:
    first, last = model.graph.node[0], model.graph.node[-1]
    if first.input and last.output:
        first.input[0] = last.output[0]


def truncate_data(model: onnx.ModelProto, rng: random.Random) -> None:
    tensors = [t for t in model.graph.initializer if t.raw_data]
    if tensors:
        tensor = rng.choice(tensors)
        tensor.raw_data = tensor.raw_data[:rng.randrange(len(tensor.raw_data) + 1)] + b"\x01" * rng.randrange(3)


FIELD_MUTATIONS = [huge_dim, attribute_value, attribute_key, op_type, drop_input, add_input, swap_dtype,
                   duplicate_node, cycle, truncate_data]


# ---- byte-level mutations: (bytes, rng) -> bytes --------------------------------------------

def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def cut_bytes(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data))]


def insert_bytes(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 6))) + data[at:]


BYTE_MUTATIONS = [flip_bytes, cut_bytes, insert_bytes]


def mutate(seed: int) -> tuple[str, bytes]:
    """The case of `seed`: a description and the serialized mutated model."""
    rng = random.Random(seed)
    name = rng.choice(sorted(onnx_models.SEEDS))
    model = onnx_models.SEEDS[name]()
    steps = []
    for _ in range(rng.randrange(1, 3)):
        mutation = rng.choice(FIELD_MUTATIONS)
        mutation(model, rng)
        steps.append(mutation.__name__)
    data = model.SerializeToString()
    if rng.random() < 0.3:
        mutation = rng.choice(BYTE_MUTATIONS)
        data = mutation(data, rng)
        steps.append(mutation.__name__)
    return f"{name}: {', '.join(steps)}", data


def test_fuzz_onnx_import_export_run() -> None:
    counts: Counter[str] = Counter()
    failures = []
    for seed in range(FIRST_SEED, FIRST_SEED + CASES):
        description, data = mutate(seed)
        outcome, detail = run_isolated("tests.security.onnx_models:import_export_run", data, TIMEOUT_S, MEMORY_MB)
        counts[outcome] += 1
        if outcome == "crash":
            failures.append(f"seed {seed} ({description}):\n{detail}")
    print(f"\nONNX fuzz: {CASES} cases, {counts['carve_error']} CarveErrors, {counts['ok']} successes, "
          f"{counts['crash']} crashes")
    assert not failures, "\n\n".join(failures)
    assert counts["ok"] >= 5, counts  # the mutations leave enough models valid to reach export and run
