"""ParamStore: parameter name -> tensor, loaded lazily from safetensors; never pickled."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, MutableMapping

import torch

from ..errors import FileFormatError
from .names import first_free


class ParamStore(MutableMapping[str, torch.Tensor]):
    """Weights referenced by `param` nodes. Tensors are treated as immutable: replace, don't edit.

    `trainable` names the entries that were nn.Parameters (the rest are buffers/constants).
    Entries read from a file are loaded on first access and can be `release`d back to the file;
    `bytes_read` / `bytes_written` count the tensor bytes moved from and to disk.
    """

    def __init__(self, tensors: dict[str, torch.Tensor] | None = None, trainable: set[str] | None = None) -> None:
        self._tensors: dict[str, torch.Tensor] = dict(tensors or {})
        self._lazy: dict[str, Path] = {}     # not loaded yet: name -> file holding it
        self._loaded: dict[str, Path] = {}   # loaded from a file and unchanged since: name -> that file
        self.bytes_read = 0
        self.bytes_written = 0
        self.trainable: set[str] = set(trainable or ())
        self._suffixes: dict[str, int] = {}  # base name -> last suffix unique_name gave it

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._tensors and name in self._lazy:
            path = self._lazy.pop(name)
            tensor = self._tensors[name] = _read_tensor(path, name)
            self._loaded[name] = path
            self.bytes_read += tensor.numel() * tensor.element_size()
        return self._tensors[name]

    def __setitem__(self, name: str, tensor: torch.Tensor) -> None:
        self._lazy.pop(name, None)
        self._loaded.pop(name, None)
        self._tensors[name] = tensor.detach()

    def release(self, name: str) -> None:
        """Drop the in-memory copy of an entry that is still the same as in its file (no-op otherwise)."""
        if name in self._loaded:
            self._lazy[name] = self._loaded.pop(name)
            del self._tensors[name]

    def __delitem__(self, name: str) -> None:
        if name in self._lazy:
            del self._lazy[name]
        else:
            del self._tensors[name]
            self._loaded.pop(name, None)
        self.trainable.discard(name)

    def __iter__(self) -> Iterator[str]:
        yield from self._tensors
        yield from self._lazy

    def __len__(self) -> int:
        return len(self._tensors) + len(self._lazy)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors or name in self._lazy

    def copy(self) -> "ParamStore":
        """A new store sharing the (immutable) tensors."""
        new = ParamStore(self._tensors, self.trainable)
        new._lazy = dict(self._lazy)
        new._loaded = dict(self._loaded)
        return new

    def unique_name(self, base: str) -> str:
        """`base`, or `base_1`, `base_2`, ... whichever is free."""
        return first_free(base, self, self._suffixes)

    def save(self, path: str | Path) -> None:
        """Write every tensor to a safetensors file."""
        from safetensors.torch import save_file

        tensors = {name: self[name].contiguous() for name in self}
        save_file(tensors, str(path), metadata={"trainable": ",".join(sorted(self.trainable))})

    @classmethod
    def load(cls, path: str | Path) -> "ParamStore":
        """Open a safetensors file; tensors are read on first access."""
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                names = list(f.keys())
                metadata = f.metadata() or {}
        except Exception as e:  # safetensors raises several types for corrupt files
            raise FileFormatError(f"{path}: not a readable safetensors file ({e})") from e
        store = cls(trainable={n for n in metadata.get("trainable", "").split(",") if n})
        store._lazy = {name: path for name in names}
        return store


def _read_tensor(path: Path, name: str) -> torch.Tensor:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(name)
    except Exception as e:  # the file changed or vanished since it was opened
        raise FileFormatError(f"{path}: cannot read tensor '{name}' ({e})") from e
