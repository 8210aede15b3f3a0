"""torch.fx.symbolic_trace -> IR, for models torch.export rejects but fx can trace.

The symbolic trace is lowered to aten ops with make_fx (pre-dispatch, so conv2d/linear stay
whole) and then goes through the same converter as export.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from ..errors import CaptureError
from ..ir import Graph
from .aten import ParamSource, convert, named_tensor_leaves
from .export import _first_line


def capture_fx(model: torch.nn.Module, example_inputs: tuple, dynamic: Sequence[dict[int, str]] = (),
               name: str = "main", input_names: Sequence[str] = ()) -> Graph:
    if any(dynamic):
        raise CaptureError("dynamic shapes (dynamic_batch=True, dynamic=...) need method='export'")
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception as e:
        raise CaptureError(f"torch.fx.symbolic_trace failed: {_first_line(e)}") from e
    parameters = dict(traced.named_parameters())
    state = {**parameters, **dict(traced.named_buffers())}

    output_names: list[str] = []

    def run(weights: dict, *inputs: torch.Tensor):
        named = named_tensor_leaves(torch.func.functional_call(traced, weights, inputs))
        output_names[:] = named
        return tuple(named.values())

    try:
        lowered = make_fx(run, pre_dispatch=True)(state, *example_inputs)
    except Exception as e:
        raise CaptureError(f"lowering the fx trace to aten failed: {_first_line(e)}") from e
    placeholders = [n for n in lowered.graph.nodes if n.op == "placeholder"]
    sources = {node.name: ParamSource(key, tensor.detach(), key in parameters)
               for node, (key, tensor) in zip(placeholders, state.items())}
    return convert(lowered.graph, sources, name, input_names, output_names)
