"""ONNX external data, read per use: an initializer whose bytes sit in a file beside the model becomes a
ParamStore entry pointing at that byte range (checked against the file), never loaded at import.

The model file is untrusted: a location must be a relative path inside the model's folder, and offset and
length must fit the file (torchcarve/ir/tensorfile.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, MutableMapping

import onnx
import torch

from ..errors import FileFormatError
from ..ir import TensorType
from ..ir.tensorfile import TensorLocation, external_location, read_tensor
from ..ir.types import dtype_name
from ..opset.onnx_proto import ONNX_TO_DTYPE

EXTERNAL_KEYS = {"location", "offset", "length", "checksum", "basepath"}


def is_external(proto: onnx.TensorProto) -> bool:
    return proto.data_location == onnx.TensorProto.EXTERNAL


def locate(proto: onnx.TensorProto, folder: Path) -> TensorLocation:
    """Where an external initializer's bytes are, checked; FileFormatError naming the tensor otherwise."""
    if proto.data_type not in ONNX_TO_DTYPE:
        raise FileFormatError(f"tensor '{proto.name}': external data of ONNX dtype {proto.data_type} is not read",
                              hint="store 4-bit and string tensors inside the model")
    info = {entry.key: entry.value for entry in proto.external_data}
    if "location" not in info or set(info) - EXTERNAL_KEYS:
        raise FileFormatError(f"tensor '{proto.name}': external data needs a 'location' (and only {sorted(EXTERNAL_KEYS)})")
    relative = Path(info["location"])
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise FileFormatError(f"tensor '{proto.name}': external data location '{info['location']}' is not a "
                              "relative path inside the model's folder")
    path = folder / relative
    if not path.resolve().is_relative_to(folder.resolve()):
        raise FileFormatError(f"tensor '{proto.name}': external data '{info['location']}' leads outside the model's folder")
    offset, length = _integer(info, "offset", proto.name), _integer(info, "length", proto.name)
    dtype = TensorType((), ONNX_TO_DTYPE[proto.data_type]).torch_dtype
    return external_location(path, offset or 0, length, list(proto.dims), dtype, proto.name)


def _integer(info: dict[str, str], key: str, name: str) -> int | None:
    if key not in info:
        return None
    if not info[key].isdigit():
        raise FileFormatError(f"tensor '{name}': external data {key} '{info[key][:40]}' is not a non-negative integer")
    return int(info[key])


class Constants(MutableMapping[str, torch.Tensor]):
    """The importer's constants: tensors, or external data read on first use (`location` says where, until then)."""

    def __init__(self) -> None:
        self._tensors: dict[str, torch.Tensor] = {}
        self._files: dict[str, TensorLocation] = {}

    def set_file(self, name: str, location: TensorLocation) -> None:
        self._tensors.pop(name, None)
        self._files[name] = location

    def location(self, name: str) -> TensorLocation | None:
        """Where an unread external constant is; None once read (or for an in-model tensor)."""
        return self._files.get(name)

    def type_of(self, name: str) -> TensorType:
        if name in self._files:
            location = self._files[name]
            return TensorType(location.shape, dtype_name(location.dtype))
        return TensorType.of(self._tensors[name])

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self._files:
            self._tensors[name] = read_tensor(self._files.pop(name))
        return self._tensors[name]

    def __setitem__(self, name: str, tensor: torch.Tensor) -> None:
        self._files.pop(name, None)
        self._tensors[name] = tensor

    def __delitem__(self, name: str) -> None:
        self._files.pop(name, None)
        self._tensors.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter([*self._tensors, *self._files])

    def __len__(self) -> int:
        return len(self._tensors) + len(self._files)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors or name in self._files

