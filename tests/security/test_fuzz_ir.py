"""Token-level mutation fuzzing of IR text: parse + verify (+ a run when it parses) must succeed or
raise a CarveError; each case runs in a capped child process (tests/security/sandbox.py).

Seeds are the texts of captured test models; a case is 1-3 mutations (delete, duplicate, swap a
token; insert a hostile one; huge or negative numbers; other dtypes; huge shapes; other ops).
A failure names its seed: `mutate(SEEDS[i], random.Random(seed))` reproduces it.
"""
from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

import torchcarve as tc
from tests.models import captured
from tests.security.sandbox import run_isolated

TIMEOUT_S, MEMORY_MB = 10.0, 2048  # per case: a child under a memory cap
from torchcarve.ir.params import ParamStore
from torchcarve.ir.parser import TOKEN_RE
from torchcarve.ir.types import DTYPES, concrete_dim

CASES = 300
SEED_MODELS = ("mlp", "cnn_bn", "residual")
RUN_LIMIT_BYTES = 64 << 20  # a parsed graph is run only when all its values fit in this (symbols = 2)

NUMBERS = ["1", "2", "3", "4611686018427387904", "-1", "0", "2147483648", "1000000000000000000", "9223372036854775808",
                "1e308", "-9223372036854775809", "99999999999999999999999999999999999999999"]
HOSTILE_TOKENS = ['"\\n"', "}", "{", "%x", "%\"a\\nb\"", '"\\u001b[31m"', "[", "]", "*", "->", "//", "param", "@g",
                  "aten.from_file", "aten.fill_", "os.system", "torchvision.nms", '"onnx.X\\n%y = aten.relu(%x)"',
                  '"' + "a" * 5000 + '"', "999999999999999999", "return", ",", "=", ":", "loc", "none", "nan",
                  "-inf", "f32[1000000000000,1000000000000]", "[4611686018427387904]"]
OPS = ["aten.full", "aten.zeros", "aten.empty", "aten.arange", "aten.from_file", "aten.fill_", "aten.relu",
       "aten.view", "aten.expand", "aten.repeat", "onnx.Foo", "carve.quantize", "aten._unsafe_index.Tensor"]
HUGE_SHAPES = ["[1000000000000]", "[4611686018427387904,4611686018427387904]", "[0]", "[]", "[batch*1000000000000]",
               "[100000,100000]"]


def tokens(text: str) -> list[str]:
    """The text split into IR tokens and whitespace (joining them gives the text back)."""
    return [m.group() for m in TOKEN_RE.finditer(text)]


def mutate(text: str, rng: random.Random) -> str:
    """1-3 random token-level mutations of `text`."""
    toks = tokens(text)
    for _ in range(rng.randint(1, 3)):
        i, j = rng.randrange(len(toks)), rng.randrange(len(toks))
        kind = rng.choice(("delete", "duplicate", "swap", "insert", "number", "number", "number", "dtype", "shape", "op"))
        if kind == "delete":
            del toks[i]
        elif kind == "duplicate":
            toks.insert(i, toks[i])
        elif kind == "swap":
            toks[i], toks[j] = toks[j], toks[i]
        elif kind == "insert":
            toks.insert(i, " " + rng.choice(HOSTILE_TOKENS) + " ")
        else:
            _replace(toks, kind, rng)
    return "".join(toks)


def _replace(toks: list[str], kind: str, rng: random.Random) -> None:
    """Replace a random token of the right sort: a number, a dtype, a shape's '[', an op name."""
    wanted = {"number": lambda t: t[:1].isdigit() or t[:1] == "-",
              "dtype": lambda t: t in DTYPES,
              "shape": lambda t: t == "[",
              "op": lambda t: "." in t and t[:1].isalpha()}[kind]
    positions = [k for k, t in enumerate(toks) if wanted(t)]
    if not positions:
        return
    k = rng.choice(positions)
    if kind == "number":
        toks[k] = rng.choice(NUMBERS)
    elif kind == "dtype":
        toks[k] = rng.choice(sorted(DTYPES))
    elif kind == "op":
        toks[k] = rng.choice(OPS)
    else:  # a whole [..] list becomes a huge shape
        end = next((m for m in range(k, len(toks)) if toks[m] == "]"), k)
        toks[k:end + 1] = [rng.choice(HUGE_SHAPES)]


def parse_and_run(case: tuple[str, dict[str, torch.Tensor]]) -> None:
    """The fuzz target (runs in the sandbox): parse + verify, then run on a tiny input if small enough."""
    text, params = case
    graph = tc.parse(text, params=ParamStore(params))
    sizes = {s: 2 for v in graph.values() for s in v.type.symbols}
    total = sum(_bytes(v.type, sizes) for v in graph.values())
    if total > RUN_LIMIT_BYTES:
        return
    inputs = [_input(v.type, sizes) for v in graph.inputs]
    module = tc.to_torch(graph)
    with torch.no_grad():
        module(*inputs)


def _bytes(t, sizes: dict[str, int]) -> int:
    count = 1
    for d in t.shape:
        count *= concrete_dim(d, sizes)
    return count * t.itemsize


def _input(t, sizes: dict[str, int]) -> torch.Tensor:
    shape = [concrete_dim(d, sizes) for d in t.shape]
    if t.torch_dtype.is_floating_point or t.torch_dtype.is_complex:
        return torch.randn(shape).to(t.torch_dtype)
    return torch.zeros(shape, dtype=t.torch_dtype)  # index 0 is valid for every gather/embedding


def seed_cases() -> list[tuple[str, dict[str, torch.Tensor]]]:
    cases = []
    for name in SEED_MODELS:
        graph = captured(name)[2]
        cases.append((graph.to_text(), dict(graph.params.items())))
    return cases


def test_seed_texts_pass_the_target():
    """The unmutated seeds parse, verify and run: the harness itself works."""
    for text, params in seed_cases():
        parse_and_run((text, params))


def test_fuzz_ir_text():
    seeds = seed_cases()
    counts: Counter[str] = Counter()
    failures = []
    for seed in range(CASES):
        text, params = seeds[seed % len(seeds)]
        case = (mutate(text, random.Random(seed)), params)
        kind, detail = run_isolated("tests.security.test_fuzz_ir:parse_and_run", case, TIMEOUT_S, MEMORY_MB)
        counts[kind] += 1
        if kind not in ("ok", "carve_error"):
            failures.append(f"seed {seed} (model {SEED_MODELS[seed % len(seeds)]}): {kind}: {detail}")
    print(f"\nIR fuzz: {CASES} cases, {counts['carve_error']} CarveErrors, {counts['ok']} successes, "
          f"{len(failures)} failures")
    assert not failures, "\n".join(failures[:10])


@pytest.mark.parametrize("seed", range(5))
def test_mutations_are_deterministic(seed):
    text = seed_cases()[0][0]
    assert mutate(text, random.Random(seed)) == mutate(text, random.Random(seed))
    assert "".join(tokens(text)) == text
