"""Tensors in files, read and written one at a time: safetensors files (header parsed and checked here, the one
reader and writer torchcarve uses), sharded HF checkpoints, and raw byte ranges (ONNX external data).

Files are untrusted: every header, offset and length is checked against the file before any data is read, and
a failure is a FileFormatError naming the file and the tensor. Nothing is unpickled.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from ..errors import FileFormatError

# safetensors dtype code <-> torch dtype
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
    "C64": torch.complex64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
SAFETENSORS_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}
HEADER_LIMIT = 100 << 20        # bytes of a safetensors JSON header (the library's own limit)
INDEX_LIMIT = 64 << 20          # bytes of a model.safetensors.index.json
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
METADATA = "__metadata__"


@dataclass(frozen=True)
class TensorLocation:
    """Where a tensor's bytes are: `path` from byte `offset`, C order, little-endian. `key` names it in errors;
    `stamp` is the file's identity when it was indexed (a replaced or rewritten file is an error, never other
    bytes read silently); `owner` keeps a temporary folder holding the file alive while a location points into it."""

    path: Path
    offset: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    key: str
    stamp: tuple[int, ...] = field(default=(), compare=False, repr=False)
    owner: Any = field(default=None, compare=False, repr=False)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_tensor(location: TensorLocation) -> torch.Tensor:
    """The tensor at `location`, read straight into a fresh buffer (the file is re-checked: it may have changed)."""
    buffer = torch.empty(location.nbytes, dtype=torch.uint8)
    try:
        with open(location.path, "rb") as f:
            if location.stamp and _stamp(os.fstat(f.fileno())) != location.stamp:
                raise FileFormatError(f"{location.path}: the file changed since it was opened; cannot read tensor "
                                      f"'{location.key}'", hint="load the model again from the new file")
            f.seek(location.offset)
            got = f.readinto(buffer.numpy()) if location.nbytes else 0
    except OSError as e:
        raise FileFormatError(f"{location.path}: cannot read tensor '{location.key}' ({e.strerror or e})") from e
    if got != location.nbytes:
        raise FileFormatError(f"{location.path}: tensor '{location.key}' needs {location.nbytes} bytes at offset "
                              f"{location.offset}, the file has {got}", hint="the file is truncated or changed")
    return buffer.view(location.dtype).reshape(location.shape)


def external_location(path: Path, offset: int, length: int | None, shape: Sequence[int], dtype: torch.dtype,
                      key: str) -> TensorLocation:
    """A checked raw byte range (ONNX external data): `length` (when given) must be the tensor's size and the
    range must lie inside the file."""
    status = _status(path, key)
    location = TensorLocation(path, offset, tuple(shape), dtype, key, _stamp(status))
    if offset < 0 or any(d < 0 for d in location.shape):
        raise FileFormatError(f"{path}: tensor '{key}' has a negative offset or dim")
    if length is not None and length != location.nbytes:
        raise FileFormatError(f"{path}: tensor '{key}' has length {length}, but shape {list(shape)} of "
                              f"{dtype} needs {location.nbytes} bytes", hint="the external data entry is malformed")
    size = status.st_size
    if offset + location.nbytes > size:
        raise FileFormatError(f"{path}: tensor '{key}' ends at byte {offset + location.nbytes}, past the end of "
                              f"the file ({size} bytes)", hint="the data file is truncated or does not belong to the model")
    return location


# ---- safetensors ---------------------------------------------------------------------------
def safetensors_index(path: str | Path) -> tuple[dict[str, TensorLocation], dict[str, str]]:
    """The tensors of a safetensors file (name -> location) and its metadata; only the header is read."""
    path = Path(path)
    status = _status(path, "header")
    header, start = _header(path, status.st_size)
    metadata = header.pop(METADATA, None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FileFormatError(f"{path}: the safetensors metadata is not a map of strings")
    return {name: _entry(path, name, info, start, status) for name, info in header.items()}, metadata


def _header(path: Path, size: int) -> tuple[dict, int]:
    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
            length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
            if not 0 < length <= min(HEADER_LIMIT, size - 8):
                raise FileFormatError(f"{path}: not a safetensors file (header length {length}, file {size} bytes)",
                                      hint="the file is truncated or not safetensors")
            header = json.loads(f.read(length))
    except OSError as e:
        raise FileFormatError(f"{path}: cannot read ({e.strerror or e})") from e
    except (ValueError, RecursionError) as e:
        raise FileFormatError(f"{path}: the safetensors header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise FileFormatError(f"{path}: the safetensors header is not a JSON object")
    return header, 8 + length


def _entry(path: Path, name: str, info: Any, start: int, status: os.stat_result) -> TensorLocation:
    if not isinstance(info, dict) or info.get("dtype") not in SAFETENSORS_DTYPES:
        raise FileFormatError(f"{path}: tensor '{name}' has no known dtype",
                              hint=f"safetensors dtypes: {', '.join(SAFETENSORS_DTYPES)}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not _ints(shape) or not _ints(offsets) or len(offsets) != 2:
        raise FileFormatError(f"{path}: tensor '{name}' needs a shape and two data_offsets of non-negative ints")
    location = TensorLocation(path, start + offsets[0], tuple(shape), SAFETENSORS_DTYPES[info["dtype"]], name,
                              _stamp(status))
    if offsets[1] - offsets[0] != location.nbytes:
        raise FileFormatError(f"{path}: tensor '{name}' spans {offsets[1] - offsets[0]} bytes, but shape {shape} "
                              f"of {info['dtype']} needs {location.nbytes}", hint="the file is malformed")
    if start + offsets[1] > status.st_size:
        raise FileFormatError(f"{path}: tensor '{name}' ends past the end of the file ({status.st_size} bytes)",
                              hint="the file is truncated")
    return location


def _ints(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def checkpoint_index(path: str | Path) -> dict[str, TensorLocation]:
    """Every tensor of a checkpoint: a .safetensors file, or an HF folder (model.safetensors.index.json naming
    its shards, or one model.safetensors)."""
    path = Path(path)
    if path.is_file():
        return safetensors_index(path)[0]
    if not path.is_dir():
        raise FileFormatError(f"{path}: no such checkpoint", hint="pass a .safetensors file or an HF model folder")
    if (path / INDEX_FILE).is_file():
        return _sharded_index(path)
    if (path / SINGLE_FILE).is_file():
        return safetensors_index(path / SINGLE_FILE)[0]
    raise FileFormatError(f"{path}: neither {INDEX_FILE} nor {SINGLE_FILE} inside",
                          hint="pass a .safetensors file or a folder saved by save_pretrained(safe_serialization=True)")


def _sharded_index(folder: Path) -> dict[str, TensorLocation]:
    index_path = folder / INDEX_FILE
    try:
        with open(index_path, "rb") as f:
            text = f.read(INDEX_LIMIT + 1)
        if len(text) > INDEX_LIMIT:
            raise FileFormatError(f"{index_path}: over {INDEX_LIMIT} bytes; not an index torchcarve reads")
        data = json.loads(text)
    except OSError as e:
        raise FileFormatError(f"{index_path}: cannot read ({e.strerror or e})") from e
    except (ValueError, RecursionError) as e:
        raise FileFormatError(f"{index_path}: not valid JSON ({e})") from e
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise FileFormatError(f"{index_path}: 'weight_map' must map tensor names to shard file names")
    shards: dict[str, dict[str, TensorLocation]] = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or shard in ("", ".", "..") or "\\" in shard:
            raise FileFormatError(f"{index_path}: shard '{shard}' is not a plain file name in the folder")
        shards[shard] = safetensors_index(folder / shard)[0]
    locations = {}
    for name, shard in weight_map.items():
        if name not in shards[shard]:
            raise FileFormatError(f"{folder / shard}: tensor '{name}' is in {INDEX_FILE} but not in the shard")
        locations[name] = shards[shard][name]
    return locations


def write_safetensors(path: str | Path, entries: Iterable[tuple[str, torch.dtype, tuple[int, ...]]],
                      fetch: Callable[[str], torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file one tensor at a time: the header from `entries` (name, dtype, shape), then each
    tensor's bytes from `fetch(name)`, which may drop it right after. Returns the data bytes written."""
    entries = list(entries)
    header: dict[str, Any] = {METADATA: dict(metadata)} if metadata else {}
    offset = 0
    for name, dtype, shape in entries:
        if dtype not in SAFETENSORS_CODES:
            raise FileFormatError(f"{path}: tensor '{name}' has dtype {dtype}, which safetensors cannot hold")
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": SAFETENSORS_CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the library writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name, dtype, shape in entries:
            tensor = fetch(name)
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise FileFormatError(f"{path}: tensor '{name}' is {tensor.dtype}{list(tensor.shape)}, "
                                      f"expected {dtype}{list(shape)}")
            f.write(tensor_bytes(tensor))
    return offset


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes, C order (a view when it is contiguous on the CPU)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def write_raw(f: Any, tensor: torch.Tensor) -> int:
    """Append a tensor's bytes to an open binary file; returns how many."""
    data = tensor_bytes(tensor)
    f.write(data)
    return data.nbytes


def file_stamp(path: Path) -> tuple[int, ...]:
    """The identity of the file at `path` now (device, inode, size, modification time)."""
    return _stamp(os.stat(path))


def _stamp(status: os.stat_result) -> tuple[int, ...]:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def _status(path: Path, key: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as e:
        raise FileFormatError(f"{path}: cannot read tensor '{key}' ({e.strerror or e})",
                              hint="the data file must sit where the model says") from e
