"""`carve capture pkg.module:factory --input 1x3x32x32 -o model.carve`."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

from ..errors import CaptureError, CarveError
from ..progress import step
from .common import parse_shape, printable

INPUT_DTYPES = {"f32": torch.float32, "f16": torch.float16, "i64": torch.int64, "i32": torch.int32}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("capture", help="capture a PyTorch model into IR",
                                   description="Import FACTORY (module:callable returning an nn.Module), run it on "
                                               "random inputs of the given shapes, and save the captured graph.")
    parser.add_argument("factory", help="pkg.module:callable that returns the model (e.g. mypkg.models:resnet)")
    parser.add_argument("--input", action="append", required=True, metavar="SHAPE[:DTYPE]",
                        help="one per model input, e.g. 1x3x32x32 or 2x16:i64 (dtypes: f32, f16, i64, i32)")
    parser.add_argument("--method", choices=["auto", "export", "fx"], default="auto")
    parser.add_argument("--dynamic-batch", action="store_true", help="make dim 0 of every input symbolic ('batch')")
    parser.add_argument("--dynamic", metavar="NAME[,NAME...]",
                        help="symbolic dims, in order from dim 0, of every input that has them: 'batch,seq' makes "
                             "dim 0 'batch' and dim 1 'seq' (an empty name keeps a dim static: ',seq')")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="build the model on the meta device (no memory for weights) and take its weights from "
                             "PATH, a .safetensors file or a Hugging Face folder of shards, read per use "
                             "(docs/big-models.md)")
    parser.add_argument("-o", "--output", required=True, help="output directory (graph.ir + weights.safetensors)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..api import save
    from ..frontends import capture

    if args.checkpoint is None:
        model = load_factory(args.factory)
    else:
        with torch.device("meta"):
            model = load_factory(args.factory)
    inputs = tuple(example_input(spec) for spec in args.input)
    with step(f"capturing {args.factory} (torch.export)"):
        graph = capture(model, inputs, method=args.method, dynamic_batch=args.dynamic_batch,
                        dynamic=dynamic_spec(args.dynamic, inputs),
                        weights="model" if args.checkpoint is None else "meta", checkpoint=args.checkpoint)
    save(graph, args.output)
    print(printable(f"captured {len(graph)} nodes ({len(graph.params)} weights) -> {args.output}"))
    return 0


def dynamic_spec(text: str | None, inputs: tuple) -> dict[int, dict[int, str]] | None:
    """`--dynamic batch,seq` -> {input: {0: "batch", 1: "seq"}} for every input with that many dims."""
    if not text:
        return None
    names = [name.strip() for name in text.split(",")]
    return {index: {dim: name for dim, name in enumerate(names) if name and dim < x.dim()}
            for index, x in enumerate(inputs)}


def load_factory(spec: str) -> torch.nn.Module:
    """Import `module:callable` (the current directory is importable) and call it."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise CarveError(f"bad factory '{spec}'", hint="write it as package.module:callable")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise CaptureError(f"cannot import '{module_name}': {e}", hint="check the module path and that it imports") from e
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise CaptureError(f"'{module_name}' has no callable '{attribute}'")
    try:
        model = factory()
    except Exception as e:
        raise CaptureError(f"calling {spec}() failed: {e}") from e
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"{spec}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def example_input(spec: str) -> torch.Tensor:
    shape_text, _, dtype_text = spec.partition(":")
    shape = parse_shape(shape_text)
    dtype = INPUT_DTYPES.get(dtype_text or "f32")
    if dtype is None:
        raise CarveError(f"unknown input dtype '{dtype_text}'", hint=f"use one of {', '.join(INPUT_DTYPES)}")
    generator = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    return torch.randint(0, 2, shape, generator=generator, dtype=dtype)
