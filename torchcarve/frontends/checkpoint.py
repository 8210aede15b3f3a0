"""Weights from a checkpoint on disk: the captured graph's ParamStore entries point at the checkpoint's tensors
(a .safetensors file or an HF folder of shards), read per use, so a model built on the meta device is captured
without its weights in memory."""
from __future__ import annotations

from pathlib import Path

from ..errors import CaptureError
from ..ir import Graph
from ..ir.tensorfile import TensorLocation, checkpoint_index
from ..ir.types import DTYPE_NAMES

LISTED = 8  # names shown in an error before "and N more"


def bind_checkpoint(graph: Graph, checkpoint: str | Path) -> None:
    """Point every entry the checkpoint holds at it (types must match); an entry it lacks must be a real tensor.

    Store names are the model's state_dict names, as HF checkpoints key them. Nothing is read but headers."""
    locations = checkpoint_index(checkpoint)
    mismatched = [f"{name}: checkpoint {_type(locations[name])}, model {graph.params.type_of(name)}"
                  for name in graph.params
                  if name in locations and _type(locations[name]) != str(graph.params.type_of(name))]
    missing = [name for name in graph.params if name not in locations and _on_meta(graph, name)]
    if mismatched or missing:
        problems = ([f"{len(missing)} missing: {_listed(missing)}"] if missing else []) + \
                   ([f"{len(mismatched)} mismatched: {_listed(mismatched)}"] if mismatched else [])
        raise CaptureError(f"checkpoint {checkpoint} does not fit the model; " + "; ".join(problems),
                           hint="the checkpoint must hold every weight the model built on the meta device, "
                                "under its state_dict name, with the same shape and dtype")
    for name in graph.params:
        if name in locations:
            graph.params.set_file(name, locations[name])


def _type(location: TensorLocation) -> str:
    """The location's type in the text form's spelling (f32[4,8]), also for dtypes the IR lacks."""
    return f"{DTYPE_NAMES.get(location.dtype, str(location.dtype))}[{','.join(map(str, location.shape))}]"


def _on_meta(graph: Graph, name: str) -> bool:
    return graph.params.is_resident(name) and graph.params[name].is_meta


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more
