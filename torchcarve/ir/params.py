"""ParamStore: parameter name -> tensor, held in memory or in a file and loaded per use; never pickled.

An entry is resident (a tensor in memory), on disk (a TensorLocation in a safetensors file, a checkpoint shard,
ONNX external data or a spill file), or both when the resident copy is still the file's tensor. Copies share
entries (copy-on-write: tensors are immutable, a pass replaces an entry instead of editing it). With a `budget`,
resident bytes are kept within it: file-backed entries are released, least recently used first, then new
tensors are spilled to a temporary folder the store owns and deletes.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, MutableMapping

import torch

from ..errors import CarveError
from .names import first_free
from .tensorfile import TensorLocation, file_stamp, read_tensor, safetensors_index, write_raw, write_safetensors
from .types import TensorType, dtype_name

SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
              "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]i?)?b?\s*", re.IGNORECASE)


def memory_size(size: int | str) -> int:
    """Bytes from an int or a size like "4GB", "512MiB", "1.5g" (k/M/G/T are powers of 1000, Ki/Mi/Gi/Ti of 1024)."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    match = SIZE_RE.fullmatch(size) if isinstance(size, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise CarveError(f"memory size {size!r} is not a positive size",
                         hint='write bytes as an int, or a size like "4GB", "512MB", "2GiB"')
    return int(float(match.group(1)) * SIZE_UNITS[(match.group(2) or "").lower()])


class ParamStore(MutableMapping[str, torch.Tensor]):
    """Weights referenced by `param` nodes. Tensors are treated as immutable: replace, don't edit.

    `trainable` names the entries that were nn.Parameters (the rest are buffers/constants).
    `bytes_read` / `bytes_written` count the tensor bytes moved from and to disk; `resident_bytes` and
    `peak_resident_bytes` the bytes held in memory (the peak is at most `budget` + one tensor).
    """

    def __init__(self, tensors: dict[str, torch.Tensor] | None = None, trainable: set[str] | None = None,
                 budget: int | str | None = None) -> None:
        self._names: dict[str, None] = {}                                 # every entry, in insertion order
        self._tensors: OrderedDict[str, torch.Tensor] = OrderedDict()     # resident, least recently used first
        self._files: dict[str, TensorLocation] = {}                       # entries whose value is on disk
        self.bytes_read = 0
        self.bytes_written = 0
        self.resident_bytes = 0
        self.peak_resident_bytes = 0
        self.trainable: set[str] = set(trainable or ())
        self._suffixes: dict[str, int] = {}  # base name -> last suffix unique_name gave it
        self._spill: _SpillFolder | None = None
        self.budget: int | None = None
        for name, tensor in (tensors or {}).items():
            self[name] = tensor
        self.set_budget(budget)

    def set_budget(self, budget: int | str | None) -> None:
        """Keep at most `budget` bytes resident (None: no limit); see `memory_size` for the forms."""
        self.budget = None if budget is None else memory_size(budget)
        self._make_room(0)

    # ---- the mapping ---------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self._tensors:
            self._tensors.move_to_end(name)
            return self._tensors[name]
        location = self._files[name]
        tensor = read_tensor(location)
        self.bytes_read += location.nbytes
        self._hold(name, tensor)
        return tensor

    def __setitem__(self, name: str, tensor: torch.Tensor) -> None:
        self._forget(name)
        self._names[name] = None
        self._hold(name, tensor.detach())

    def __delitem__(self, name: str) -> None:
        if name not in self._names:
            raise KeyError(name)
        self._forget(name)
        del self._names[name]
        self.trainable.discard(name)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    # ---- files ---------------------------------------------------------------------------
    def set_file(self, name: str, location: TensorLocation) -> None:
        """Make `name` the tensor at `location`, read on first use (nothing is read now)."""
        self._forget(name)
        self._names[name] = None
        self._files[name] = location

    def location(self, name: str) -> TensorLocation | None:
        """Where the entry's value is on disk, if it is."""
        return self._files.get(name)

    def is_resident(self, name: str) -> bool:
        return name in self._tensors

    def type_of(self, name: str) -> TensorType:
        """The entry's type, without reading it from disk."""
        if name in self._tensors:
            return TensorType.of(self._tensors[name])
        location = self._files[name]
        return TensorType(location.shape, dtype_name(location.dtype))

    def nbytes(self, name: str) -> int:
        if name in self._tensors:
            return _size(self._tensors[name])
        return self._files[name].nbytes

    def release(self, name: str) -> None:
        """Drop the in-memory copy of an entry that is still the same as in its file (no-op otherwise)."""
        if name in self._files and name in self._tensors:
            self.resident_bytes -= _size(self._tensors.pop(name))

    # ---- copies, names, files --------------------------------------------------------------
    def copy(self) -> "ParamStore":
        """A new store sharing every entry (no tensor is copied or read); its budget is this one's."""
        new = ParamStore(trainable=self.trainable)
        new._names = dict(self._names)
        new._tensors = OrderedDict(self._tensors)
        new._files = dict(self._files)
        new.resident_bytes = new.peak_resident_bytes = self.resident_bytes
        new.budget = self.budget
        return new

    def unique_name(self, base: str) -> str:
        """`base`, or `base_1`, `base_2`, ... whichever is free."""
        return first_free(base, self, self._suffixes)

    def save(self, path: str | Path) -> None:
        """Write every tensor to a safetensors file, one at a time: an entry read for it is released after."""
        types = {name: self.type_of(name) for name in self}
        entries = [(name, t.torch_dtype, t.shape) for name, t in types.items()]
        self.bytes_written += write_safetensors(path, entries, self.read_once,
                                                metadata={"trainable": ",".join(sorted(self.trainable))})

    def read_once(self, name: str) -> torch.Tensor:
        """The entry's tensor for one use (writing it out): when it had to be read, it is returned to its file."""
        resident = name in self._tensors
        tensor = self[name]
        if not resident:
            self.release(name)
        return tensor

    @classmethod
    def load(cls, path: str | Path) -> "ParamStore":
        """Open a safetensors file; tensors are read on first use."""
        locations, metadata = safetensors_index(path)
        store = cls(trainable={n for n in metadata.get("trainable", "").split(",") if n})
        for name, location in locations.items():
            store.set_file(name, location)
        return store

    # ---- memory --------------------------------------------------------------------------
    def _hold(self, name: str, tensor: torch.Tensor) -> None:
        """Make `tensor` resident as `name`, first making room for it under the budget."""
        self._make_room(_size(tensor))
        self._tensors[name] = tensor
        self.resident_bytes += _size(tensor)
        self.peak_resident_bytes = max(self.peak_resident_bytes, self.resident_bytes)

    def _forget(self, name: str) -> None:
        """Drop the entry's value (memory and file); its place in the order stays."""
        self._files.pop(name, None)
        if name in self._tensors:
            self.resident_bytes -= _size(self._tensors.pop(name))

    def _make_room(self, incoming: int) -> None:
        """Release (then spill) least recently used entries until `incoming` more bytes fit the budget."""
        if self.budget is None or self.resident_bytes + incoming <= self.budget:
            return
        for name in [n for n in self._tensors if n in self._files]:
            if self.resident_bytes + incoming <= self.budget:
                return
            self.release(name)
        for name in list(self._tensors):
            if self.resident_bytes + incoming <= self.budget:
                return
            self._spill_one(name)

    def _spill_one(self, name: str) -> None:
        """Write a resident-only entry to the spill folder and drop it from memory."""
        if self._spill is None:
            self._spill = _SpillFolder()
        tensor = self._tensors[name]
        self._files[name] = self._spill.write(name, tensor)
        self.bytes_written += _size(tensor)
        self.release(name)


class _SpillFolder:
    """A temporary folder of spilled tensors, one raw file each; deleted once no location points into it."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="torchcarve-spill-"))
        self._count = 0
        weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)

    def write(self, name: str, tensor: torch.Tensor) -> TensorLocation:
        self._count += 1
        path = self.path / f"{self._count}.bin"
        try:
            with open(path, "wb") as f:
                write_raw(f, tensor)
        except OSError as e:
            raise CarveError(f"cannot spill weight '{name}' to {self.path} ({e.strerror or e})",
                             hint="free space in the temp folder (TMPDIR) or raise max_memory") from e
        return TensorLocation(path, 0, tuple(tensor.shape), tensor.dtype, name, file_stamp(path), owner=self)


def _size(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
