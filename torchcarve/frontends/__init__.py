"""Frontends: PyTorch models (torch.export, torch.fx) into IR."""
from __future__ import annotations

import inspect
import io
import logging
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ..errors import CaptureError
from ..ir import Graph
from ..ir.types import DTYPES, SYMBOL_RE
from .checkpoint import bind_checkpoint
from .export import capture_export
from .fx import capture_fx
from .moe import dense_moe

METHODS = {"export": capture_export, "fx": capture_fx}
WEIGHTS = ("model", "meta")  # where capture's weights come from: the model's tensors, or meta tensors + a checkpoint


def capture(model: torch.nn.Module, example_inputs: Any, method: str = "auto", *,
            dynamic_batch: bool = False, dynamic: dict[str | int, dict[int, str]] | None = None,
            name: str | None = None, weights: str = "model", checkpoint: str | Path | None = None) -> Graph:
    """Capture `model` (in eval mode, restored afterwards) on `example_inputs` into IR.

    method: "export" (torch.export), "fx" (torch.fx.symbolic_trace) or "auto" (export, then fx;
    if both fail, one CaptureError gives both reasons). dynamic_batch makes dim 0 of every input
    the symbol "batch"; dynamic names symbolic dims per input name or position
    (`{"input_ids": {0: "batch", 1: "seq"}}`). See docs/dynamic-shapes.md.

    weights="meta": the model was built on the meta device; shapes come from its meta tensors and the
    ParamStore entries point at `checkpoint` (a .safetensors file or an HF folder of shards), read per use.
    A checkpoint given with weights="model" likewise replaces the model's tensors. See docs/big-models.md.
    """
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if weights not in WEIGHTS:
        raise CaptureError(f"unknown weights source '{weights}'", hint="use 'model' or 'meta' (with checkpoint=)")
    if weights == "meta" and checkpoint is None:
        raise CaptureError("weights='meta' needs checkpoint=",
                           hint="pass the .safetensors file or HF folder of the weights")
    graph = _capture(model, example_inputs, method, dynamic_batch, dynamic, name, on_meta=weights == "meta")
    if checkpoint is not None:
        bind_checkpoint(graph, checkpoint)
    return graph


def _capture(model: torch.nn.Module, example_inputs: Any, method: str, dynamic_batch: bool,
             dynamic: dict[str | int, dict[int, str]] | None, name: str | None, on_meta: bool) -> Graph:
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if on_meta:  # a meta model traces only with meta inputs; the graph's input types are the same
        inputs = tuple(x.to("meta") if isinstance(x, torch.Tensor) else x for x in inputs)
    if method not in (*METHODS, "auto"):
        raise CaptureError(f"unknown capture method '{method}'", hint="use 'auto', 'export' or 'fx'")
    graph_name = name or type(model).__name__
    methods = list(METHODS) if method == "auto" else [method]
    input_names = _input_names(model, len(inputs))
    dims = dynamic_dims(inputs, input_names, dynamic, dynamic_batch)
    errors: list[CaptureError] = []
    with _eval_mode(model), _quiet_torch_logs(), dense_moe(model, inputs) as target:
        for each in methods:
            try:
                return METHODS[each](target, inputs, dynamic=dims, name=graph_name, input_names=input_names)
            except CaptureError as e:
                errors.append(CaptureError(f"{each}: {e.args[0]}", hint=e.hint))
    if len(errors) == 1:
        raise errors[0]
    hints = [e.hint for e in errors if e.hint] or ["check that example_inputs run through the model in eval mode"]
    raise CaptureError("could not capture the model; " + "; ".join(e.args[0] for e in errors),
                       hint="; ".join(hints))


def dynamic_dims(inputs: tuple, input_names: Sequence[str], dynamic: dict[str | int, dict[int, str]] | None,
                 dynamic_batch: bool) -> list[dict[int, str]]:
    """Each input's symbolic dims ({dim: symbol}) from `dynamic_batch` and `dynamic`, checked."""
    dims: list[dict[int, str]] = [{0: "batch"} if dynamic_batch and _rank(x) > 0 else {} for x in inputs]
    for key, spec in (dynamic or {}).items():
        index = _input_index(key, inputs, input_names)
        if not isinstance(spec, dict):
            raise CaptureError(f"dynamic[{key!r}] must map dims to symbol names, like {{0: 'batch', 1: 'seq'}}")
        for dim, symbol in spec.items():
            if not isinstance(dim, int) or not -_rank(inputs[index]) <= dim < _rank(inputs[index]):
                raise CaptureError(f"dynamic[{key!r}]: input {index} has {_rank(inputs[index])} dims; dim {dim!r} "
                                   f"does not exist")
            if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol) or symbol in RESERVED_SYMBOLS:
                raise CaptureError(f"dynamic[{key!r}]: symbol {symbol!r} is not a valid name",
                                   hint="use an identifier like 'batch' or 'seq'")
            dims[index][dim % _rank(inputs[index])] = symbol
    return dims


RESERVED_SYMBOLS = {"none", "true", "false", "inf", "nan", *DTYPES}  # they read as other literals in the text form


def _rank(x: Any) -> int:
    return x.dim() if isinstance(x, torch.Tensor) else 0


def _input_index(key: str | int, inputs: tuple, input_names: Sequence[str]) -> int:
    if isinstance(key, int) and not isinstance(key, bool) and -len(inputs) <= key < len(inputs):
        return key % len(inputs)
    if isinstance(key, str) and key in input_names:
        return list(input_names).index(key)
    names = ", ".join(input_names) or f"positions 0..{len(inputs) - 1}"
    raise CaptureError(f"dynamic names input {key!r}, which the model does not take", hint=f"inputs: {names}")


def _input_names(model: torch.nn.Module, count: int) -> list[str]:
    """The names of forward's first `count` positional parameters (x, input_ids, ...)."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return []
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return positional[:count] if len(positional) >= count else []


@contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """torch logs and prints failed traces; the CaptureError already says what went wrong."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training
