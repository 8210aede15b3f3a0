"""The ONNX exporter's tensors, held in ParamStores (so under their memory budget) until the model is written:
its constant values, and large initializers whose data is filled in, or streamed one tensor at a time to an
external data file, only when the model is written."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import onnx
import torch

from ..ir import ParamStore
from ..ir.tensorfile import tensor_bytes, write_raw
from ..ir.value import Value

EXTERNAL_MIN_BYTES = 1024  # an initializer from this size goes to the external data file


class Constants(Mapping[Value, torch.Tensor]):
    """The values the exporter knows: entries of a store (graph params, tensors it folded), read on use."""

    def __init__(self, params: ParamStore, made: ParamStore) -> None:
        self._where: dict[Value, tuple[ParamStore, str]] = {}
        self._params = params
        self._made = made

    def set_param(self, value: Value, name: str) -> None:
        self._where[value] = (self._params, name)

    def __setitem__(self, value: Value, tensor: torch.Tensor) -> None:
        key = self._made.unique_name(f"{value.name}#folded")
        self._made[key] = tensor
        self._where[value] = (self._made, key)

    def entry(self, value: Value) -> tuple[ParamStore, str]:
        """The store and entry holding `value`."""
        return self._where[value]

    def __getitem__(self, value: Value) -> torch.Tensor:
        store, key = self._where[value]
        return store[key]

    def __iter__(self) -> Iterator[Value]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, value: object) -> bool:
        return value in self._where


@dataclass
class Lowered:
    """A lowered model whose large initializers are still in stores: `deferred` maps their names to (store, entry)."""

    model: onnx.ModelProto
    deferred: dict[str, tuple[ParamStore, str]]

    def nbytes(self) -> int:
        """The size of the model with every tensor inside it."""
        return self.model.ByteSize() + sum(store.nbytes(key) for _, store, key in self._pending())

    def filled(self) -> onnx.ModelProto:
        """The model with every tensor's data inside it."""
        for proto, store, key in self._pending():
            proto.raw_data = bytes(tensor_bytes(store.read_once(key)))
        self.deferred = {}
        return self.model

    def write_external(self, data_path: Path, location: str) -> onnx.ModelProto:
        """Stream every large initializer to `data_path` (named `location` in the model), one tensor at a time."""
        with open(data_path, "wb") as f:
            for proto in self.model.graph.initializer:
                offset = f.tell()
                if proto.name in self.deferred:
                    store, key = self.deferred[proto.name]
                    length = write_raw(f, store.read_once(key))
                elif len(proto.raw_data) >= EXTERNAL_MIN_BYTES:
                    length = len(proto.raw_data)
                    f.write(proto.raw_data)
                    proto.ClearField("raw_data")
                else:
                    continue
                _point_at(proto, location, offset, length)
        self.deferred = {}
        return self.model

    def _pending(self) -> Iterator[tuple[onnx.TensorProto, ParamStore, str]]:
        for proto in self.model.graph.initializer:
            if proto.name in self.deferred:
                yield (proto, *self.deferred[proto.name])


def _point_at(proto: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del proto.external_data[:]
    proto.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = proto.external_data.add()
        entry.key, entry.value = key, value
