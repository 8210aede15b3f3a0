"""torch.export.export -> IR. The default path; handles HF transformers models."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import CaptureError
from ..ir import Graph
from .aten import ParamSource, TensorOutputs, convert, unwrapped_name, writes_through_an_alias


def capture_export(model: torch.nn.Module, example_inputs: tuple, dynamic: Sequence[dict[int, str]] = (),
                   name: str = "main", input_names: Sequence[str] = ()) -> Graph:
    """Export `model` (non-strict, wrapped so its outputs are flat tensors) and convert the aten graph.

    `dynamic` gives each input's symbolic dims ({0: "batch", 1: "seq"}); torch infers their ranges.
    """
    dynamic_shapes = None
    if any(dynamic):
        # one entry per positional argument; the capture wrapper takes them as *inputs
        dynamic_shapes = (tuple({d: torch.export.Dim.DYNAMIC for d in dims} or None for dims in dynamic),)
    wrapper = TensorOutputs(model)
    try:
        program = torch.export.export(wrapper, example_inputs, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as e:
        hint = "capture at an example size of at least 2 on every dynamic dim" if dynamic_shapes else ""
        raise CaptureError(f"torch.export failed: {_first_line(e)}", hint=hint) from e
    if any(node.op == "get_attr" for node in program.graph.nodes) or writes_through_an_alias(program.graph):
        # inlines autocast/no_grad regions and functionalizes writes through views; keeps conv2d/linear
        program = program.run_decompositions({})
    return convert(program.graph, _param_sources(program), name, input_names, wrapper.output_names.names, dynamic)


def _param_sources(program: Any) -> dict[str, ParamSource]:
    from torch.export.graph_signature import InputKind

    sources: dict[str, ParamSource] = {}
    tensors = {**program.state_dict, **program.constants}
    for spec in program.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            continue
        if spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            raise CaptureError(f"exported input '{spec.arg.name}' is a {spec.kind.name}, which is not supported")
        tensor = tensors[spec.target]
        if not isinstance(tensor, torch.Tensor):
            raise CaptureError(f"'{spec.target}' is a {type(tensor).__name__}, not a tensor")
        sources[spec.arg.name] = ParamSource(unwrapped_name(spec.target), tensor.detach(), spec.kind == InputKind.PARAMETER)
    return sources


def _first_line(error: Exception, limit: int = 160) -> str:
    """The first sentence of a (often very long) torch error, for a one-line message."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    sentence = text.splitlines()[0].split(". ")[0]
    return sentence if len(sentence) <= limit else sentence[:limit - 3] + "..."
