"""Safe file output: never delete what torchcarve did not write, and never leave a target half-written.

Every write is staged in a hidden folder beside its target (`.carve-tmp-*` inside a directory output,
`.<name>.carve-tmp-*` beside a file output), fsynced, given umask modes and renamed over the target one
file at a time. Leftovers of a killed run are removed by the next write to the same target. The policy
is documented in docs/safety-outputs.md.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from .errors import OutputPathError

STAGING = "carve-tmp-"         # a write in progress; a killed run's leftover is removed by the next write
PENDING = ".carve-pending"     # a complete directory write being moved into place, file by file
MANIFEST = ".carve-manifest"   # the names of the files torchcarve wrote in a directory output
MANIFEST_LIMIT = 1 << 16       # bytes read of a manifest; a larger one is not ours

# errno -> what to do about it, for the one-line error
HINTS = {
    errno.EACCES: "no permission to write there; choose a path you can write to",
    errno.EPERM: "no permission to write there; choose a path you can write to",
    errno.EROFS: "the file system is read-only; write somewhere else",
    errno.ENOSPC: "the disk is full; free some space or write somewhere else",
    errno.EDQUOT: "the disk quota is used up; free some space or write somewhere else",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}


@contextmanager
def atomic_directory(target: str | Path, names: Sequence[str]) -> Iterator[Path]:
    """Yield a staging folder for the files `names` of the directory output `target`; on success each
    replaces its namesake in `target`, `names[0]` (the entry, which refers to the others) first.

    `target` is created if missing; other files in it are left alone. A file of ours that torchcarve
    did not write (not in the manifest) is never replaced: that is an OutputPathError.
    """
    target = Path(target)
    with _os_errors(target):
        _prepare_directory(target, names)
        staging = Path(tempfile.mkdtemp(prefix=f".{STAGING}", dir=target))
        try:
            yield staging
            written = list(dict.fromkeys([*names, *(n for n in _manifest(target) if (target / n).exists())]))
            (staging / MANIFEST).write_text(json.dumps({"written": written}))
            _seal(staging, [*names, MANIFEST])
            os.rename(staging, target / PENDING)
            _move_pending(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_file(target: str | Path, siblings: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a temporary path for `target`; on success it is renamed onto `target`. Files named in
    `siblings` that the block writes beside the temporary path replace their namesakes beside `target`
    first (each rename is atomic; the set is not)."""
    target = Path(target)
    with _os_errors(target):
        names = [*siblings, target.name]
        for name in names:
            if (target.parent / name).is_dir():
                raise OutputPathError(f"{target.parent / name} is a directory; not replacing it with a file",
                                      hint="choose a file path, or remove the directory yourself")
        _make_folder(target.parent)
        _remove_leftovers(target.parent, f".{target.name}.{STAGING}")
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{STAGING}", dir=target.parent))
        try:
            yield staging / target.name
            present = [name for name in siblings if (staging / name).is_file()] + [target.name]
            _seal(staging, present)
            for name in present:
                os.replace(staging / name, target.parent / name)
            _sync(target.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def committed_file(directory: str | Path, name: str, entry: str) -> Path:
    """Where file `name` of a directory output is: a write killed after it replaced `entry` (the first
    file moved) still holds its other new files in PENDING, and those belong with the new entry."""
    pending = Path(directory) / PENDING
    if (pending / name).is_file() and not (pending / entry).exists():
        return pending / name
    return Path(directory) / name


def _prepare_directory(target: Path, names: Sequence[str]) -> None:
    if target.exists() and not target.is_dir():
        raise OutputPathError(f"{target} is a file; a directory output does not replace a file",
                              hint="choose a new path, or remove the file yourself")
    _make_folder(target)
    if (target / PENDING).is_dir():
        _move_pending(target)
    _remove_leftovers(target, f".{STAGING}")
    ours = set(_manifest(target)) or _legacy_output(target, names)
    for name in names:
        if (target / name).exists() and name not in ours:
            raise OutputPathError(f"{target / name} exists and was not written by torchcarve; not replacing it",
                                  hint="move it away or choose another output directory")


def _move_pending(target: Path) -> None:
    """Finish a committed write: move each file of PENDING into `target`, in manifest order."""
    pending = target / PENDING
    for name in [*_manifest(pending), MANIFEST]:
        if (pending / name).is_file():
            os.replace(pending / name, target / name)
    shutil.rmtree(pending)
    _sync(target)


def _manifest(folder: Path) -> list[str]:
    """The names in `folder`'s manifest; [] when there is none or it is not one torchcarve wrote."""
    try:
        with open(folder / MANIFEST, "rb") as f:
            data = json.loads(f.read(MANIFEST_LIMIT))
    except (OSError, ValueError):
        return []
    names = data.get("written") if isinstance(data, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) and _plain_name(n) for n in names):
        return []
    return names


def _legacy_output(target: Path, names: Sequence[str]) -> set[str]:
    """A directory without a manifest holding exactly our files and nothing else was written by an older
    torchcarve (which replaced the whole directory)."""
    present = {p.name for p in target.iterdir() if not p.name.startswith(".carve")}
    return set(names) if present == set(names) else set()


def _plain_name(name: str) -> bool:
    return name not in ("", ".", "..", MANIFEST) and Path(name).name == name and "\\" not in name


def _make_folder(folder: Path) -> None:
    """Create `folder` and its parents; an existing file on the way is an error naming it."""
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        raise OutputPathError(f"{existing} is a file, not a folder; cannot write {folder}",
                              hint="choose an output path whose parents are folders")
    folder.mkdir(parents=True, exist_ok=True)


def _remove_leftovers(folder: Path, prefix: str) -> None:
    """Remove the staging folders (named `prefix*`) of writes to this target that were killed."""
    for leftover in folder.iterdir():
        if leftover.name.startswith(prefix) and leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)


def _seal(staging: Path, names: Sequence[str]) -> None:
    """Make the staged files durable and give them the modes the umask asks for."""
    mode = 0o666 & ~_umask()
    for name in names:
        path = staging / name
        if not path.is_file():
            raise OutputPathError(f"{path} was not written", hint="this is a torchcarve bug; please report it")
        os.chmod(path, mode)
        _sync(path)
    _sync(staging)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@contextmanager
def _os_errors(target: Path) -> Iterator[None]:
    """Turn an OS error while writing `target` into a one-line OutputPathError with a hint."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e)
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(target) else ""
        raise OutputPathError(f"cannot write {target}: {reason}{where}",
                              hint=HINTS.get(e.errno, "choose another output path")) from e
