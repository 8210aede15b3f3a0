"""Frontends: PyTorch models (torch.export, torch.fx) into IR."""
from __future__ import annotations

import inspect
import io
import logging
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import Any, Iterator

import torch

from ..errors import CaptureError
from ..ir import Graph
from .export import capture_export
from .fx import capture_fx

METHODS = {"export": capture_export, "fx": capture_fx}


def capture(model: torch.nn.Module, example_inputs: Any, method: str = "auto", *,
            dynamic_batch: bool = False, name: str | None = None) -> Graph:
    """Capture `model` (in eval mode, restored afterwards) on `example_inputs` into IR.

    method: "export" (torch.export), "fx" (torch.fx.symbolic_trace) or "auto" (export, then fx;
    if both fail, one CaptureError gives both reasons). dynamic_batch makes dim 0 symbolic.
    """
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"expected a torch.nn.Module, got {type(model).__name__}")
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if method not in (*METHODS, "auto"):
        raise CaptureError(f"unknown capture method '{method}'", hint="use 'auto', 'export' or 'fx'")
    graph_name = name or type(model).__name__
    methods = list(METHODS) if method == "auto" else [method]
    errors: list[CaptureError] = []
    with _eval_mode(model), _quiet_torch_logs():
        for each in methods:
            try:
                return METHODS[each](model, inputs, dynamic_batch=dynamic_batch, name=graph_name,
                                     input_names=_input_names(model, len(inputs)))
            except CaptureError as e:
                errors.append(CaptureError(f"{each}: {e.args[0]}", hint=e.hint))
    if len(errors) == 1:
        raise errors[0]
    hints = [e.hint for e in errors if e.hint] or ["check that example_inputs run through the model in eval mode"]
    raise CaptureError("could not capture the model; " + "; ".join(e.args[0] for e in errors),
                       hint="; ".join(hints))


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
