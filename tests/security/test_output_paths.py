"""Output paths (issue 13, case 4 and the path cases of 7): torchcarve never deletes what it did not write,
never writes a graph over a file of another kind or over its input, follows the umask, survives SIGKILL
with the old or the new output loadable, rewrites external data, and turns OS errors into one line."""
from __future__ import annotations

import errno
import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

import torchcarve as tc
from torchcarve.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = """graph @tiny(%x: f32[2,4]) -> (f32[2,{width}]) {{
  %w = param "fc.weight" : f32[{width},4]
  %b = param "fc.bias" : f32[{width}]
  %y = aten.linear(%x, %w, %b) : f32[2,{width}]
  return %y
}}
"""
LEFTOVER_PREFIXES = (".carve-tmp-", ".carve-pending")


def tiny_graph(width: int, seed: int) -> tc.Graph:
    """A one-linear graph; different widths cannot load each other's weights."""
    generator = torch.Generator().manual_seed(seed)
    params = tc.ParamStore({"fc.weight": torch.randn(width, 4, generator=generator),
                            "fc.bias": torch.randn(width, generator=generator)})
    return tc.parse(TINY.format(width=width), params=params)


def expected(graph: tc.Graph, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x, graph.params["fc.weight"], graph.params["fc.bias"])


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def load_exported(directory: Path) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location(f"exported_{abs(hash(str(directory)))}", directory / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load()


def fingerprint(path: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under `path` (or of `path` itself)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in files}


def assert_one_line_error(code: int, err: str, command: str, *words: str) -> None:
    assert code == 1
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[0].startswith(f"carve {command}: error: ") and len(lines) <= 2, err
    assert len(lines) == 1 or lines[1].startswith("  hint: ")
    for word in words:
        assert word in err


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return tc.save(tiny_graph(3, seed=0), tmp_path / "g.carve")


# --- never delete what torchcarve did not write ---------------------------------------------------

def test_export_torch_keeps_the_users_files(tmp_path, saved, capsys):
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "notes.txt").write_text("my notes")
    (project / "src" / "train.py").write_text("print('mine')")
    for _ in range(2):  # a fresh export, then one over our own files
        code, err = run_cli(capsys, "export", str(saved), "--to", "torch", "-o", str(project))
        assert code == 0, err
    assert (project / "notes.txt").read_text() == "my notes"
    assert (project / "src" / "train.py").read_text() == "print('mine')"
    x = torch.randn(2, 4)
    torch.testing.assert_close(load_exported(project)(x), expected(tc.load(saved), x))


def test_save_keeps_the_users_files(tmp_path):
    target = tmp_path / "m.carve"
    (target / "sub").mkdir(parents=True)
    (target / "notes.txt").write_text("keep")
    (target / "sub" / "data.bin").write_bytes(b"\x01\x02")
    tc.save(tiny_graph(3, seed=0), target)
    tc.save(tiny_graph(5, seed=1), target)
    assert (target / "notes.txt").read_text() == "keep"
    assert (target / "sub" / "data.bin").read_bytes() == b"\x01\x02"
    assert tc.load(target).to_text() == tiny_graph(5, seed=1).to_text()


def test_a_file_named_like_ours_that_torchcarve_did_not_write_is_refused(tmp_path, saved):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "model.py").write_text("# the user's own model")
    (project / "notes.txt").write_text("x")
    with pytest.raises(tc.CarveError, match="was not written by torchcarve"):
        tc.export_torch(tc.load(saved), project)
    assert (project / "model.py").read_text() == "# the user's own model"
    assert sorted(p.name for p in project.iterdir()) == ["model.py", "notes.txt"]


def test_an_output_written_before_manifests_is_still_replaced(tmp_path):
    target = tmp_path / "old.carve"
    tc.save(tiny_graph(3, seed=0), target)
    (target / ".carve-manifest").unlink()  # exactly graph.ir + weights.safetensors, as older versions wrote
    tc.save(tiny_graph(5, seed=1), target)
    assert tc.load(target).to_text() == tiny_graph(5, seed=1).to_text()


# --- never over a file of another kind, never over the input --------------------------------------

def test_saving_a_graph_over_a_file_is_refused(tmp_path):
    target = tmp_path / "m.carve"
    target.write_text("a file, not a saved graph")
    with pytest.raises(tc.CarveError, match="is a file"):
        tc.save(tiny_graph(3, seed=0), target)
    assert target.read_text() == "a file, not a saved graph"


def test_writing_onnx_over_a_directory_is_refused(tmp_path):
    target = tmp_path / "model.onnx"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(tc.CarveError, match="is a directory"):
        tc.to_onnx(tiny_graph(3, seed=0), target)
    assert (target / "keep.txt").read_text() == "x"


@pytest.mark.parametrize("argv, input_name", [
    (["export", "{g}", "--to", "onnx", "-o", "{g}"], "g.carve"),
    (["export", "{g}/graph.ir", "--to", "torch", "-o", "{g}"], "g.carve"),
    (["opt", "{g}", "-p", "dce", "-o", "{g}"], "g.carve"),
    (["export", "{onnx}", "--to", "onnx", "-o", "{onnx}"], "g.onnx"),
    (["opt", "{onnx}", "-p", "dce", "-o", "{onnx}"], "g.onnx"),
])
def test_writing_over_the_input_graph_is_refused(tmp_path, saved, capsys, argv, input_name):
    tc.to_onnx(tc.load(saved), tmp_path / "g.onnx")
    before = fingerprint(tmp_path / input_name)
    code, err = run_cli(capsys, *(a.format(g=saved, onnx=tmp_path / "g.onnx") for a in argv))
    assert_one_line_error(code, err, argv[0], "would write over the input graph")
    assert fingerprint(tmp_path / input_name) == before


def test_inputs_are_never_modified(tmp_path, saved, capsys):
    tc.to_onnx(tc.load(saved), tmp_path / "g.onnx")
    before = {**fingerprint(saved), **fingerprint(tmp_path / "g.onnx")}
    for source in (saved, tmp_path / "g.onnx"):
        for argv in (["opt", str(source), "-p", "dce", "-o", str(tmp_path / "out.carve")],
                     ["export", str(source), "--to", "onnx", "-o", str(tmp_path / "out.onnx")],
                     ["export", str(source), "--to", "torch", "-o", str(tmp_path / "out_torch")]):
            code, err = run_cli(capsys, *argv)
            assert code == 0, err
    assert {**fingerprint(saved), **fingerprint(tmp_path / "g.onnx")} == before


# --- modes follow the umask ---------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_modes_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        graph = tiny_graph(3, seed=0)
        tc.save(graph, tmp_path / "m.carve")
        tc.export_torch(graph, tmp_path / "torch")
        tc.to_onnx(graph, tmp_path / "m.onnx")
    finally:
        os.umask(old)
    for folder in (tmp_path / "m.carve", tmp_path / "torch"):
        assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
    for file in (tmp_path / "m.carve" / "graph.ir", tmp_path / "m.carve" / "weights.safetensors",
                 tmp_path / "torch" / "model.py", tmp_path / "m.onnx"):
        assert file.stat().st_mode & 0o777 == 0o666 & ~umask, file


# --- SIGKILL mid-write: the old or the new output loads; the next write cleans up -------------------

KILLER = """
import os, signal, sys
from tests.security.test_output_paths import tiny_graph
import torchcarve as tc

kind, target, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
renames = [0]

def killing(rename):
    def wrapper(*args, **kwargs):
        if renames[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        renames[0] += 1
        return rename(*args, **kwargs)
    return wrapper

os.rename, os.replace = killing(os.rename), killing(os.replace)
graph = tiny_graph(5, seed=1)
tc.save(graph, target) if kind == "save" else tc.export_torch(graph, target)
"""
# renames of a write: 0 staging -> pending (the commit), 1 the entry file, 2 the other file, 3 the manifest;
# a kill before rename k. The export runs only the two the generated loader must handle.
KILLS = [("save", 0), ("save", 1), ("save", 2), ("save", 3), ("export", 1), ("export", 2)]


def _write(kind: str, graph: tc.Graph, target: Path) -> None:
    tc.save(graph, target) if kind == "save" else tc.export_torch(graph, target)


def _outputs_of(kind: str, target: Path, x: torch.Tensor) -> torch.Tensor:
    if kind == "save":
        return tc.to_torch(tc.load(target))(x)
    return load_exported(target)(x)


@pytest.mark.parametrize("kind, kill_at", KILLS)
def test_a_kill_mid_write_leaves_the_old_or_the_new_output(tmp_path, kind, kill_at):
    old, new, x = tiny_graph(3, seed=0), tiny_graph(5, seed=1), torch.randn(2, 4)
    target = tmp_path / "out"
    _write(kind, old, target)
    (target / "notes.txt").write_text("mine")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))}
    child = subprocess.run([sys.executable, "-c", KILLER, kind, str(target), str(kill_at)], env=env,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    with torch.no_grad():
        got = _outputs_of(kind, target, x)
    want = expected(new if got.shape[-1] == 5 else old, x)
    torch.testing.assert_close(got, want)
    _write(kind, new, target)  # the next write finishes or discards what the killed one left
    assert not [p.name for p in target.iterdir() if p.name.startswith(LEFTOVER_PREFIXES)]
    assert (target / "notes.txt").read_text() == "mine"
    with torch.no_grad():
        torch.testing.assert_close(_outputs_of(kind, target, x), expected(new, x))


def test_leftovers_beside_an_onnx_file_are_cleaned_by_the_next_write(tmp_path):
    target = tmp_path / "m.onnx"
    leftover = Path(tempfile.mkdtemp(prefix=".m.onnx.carve-tmp-", dir=tmp_path))
    (leftover / "m.onnx").write_bytes(b"half")
    (tmp_path / ".m.onnx.notes").write_text("not ours")
    tc.to_onnx(tiny_graph(3, seed=0), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.onnx.notes", "m.onnx"]


# --- external data is rewritten, not appended -----------------------------------------------------

def test_external_data_is_rewritten_not_appended(tmp_path, monkeypatch):
    monkeypatch.setattr("torchcarve.backends.onnx.TWO_GB", 0)  # force the >2 GB path on a small model
    graph, x = tiny_graph(512, seed=0), torch.randn(2, 4)
    target = tmp_path / "m.onnx"
    sizes = []
    for _ in range(2):
        tc.to_onnx(graph, target)
        sizes.append((tmp_path / "m.onnx.data").stat().st_size)
    assert sizes[0] == sizes[1] >= graph.params["fc.weight"].numel() * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), expected(graph, x), rtol=1e-5, atol=1e-5)


# --- OS errors are one line with a hint, in the CLI and as CarveError in the library ----------------

@pytest.mark.parametrize("argv", [
    ["export", "{g}", "--to", "onnx", "-o", "{out}"],
    ["export", "{g}", "--to", "torch", "-o", "{out}"],
    ["opt", "{g}", "-p", "dce", "-o", "{out}"],
])
@pytest.mark.parametrize("output", ["/dev/null/x", "{tmp}/afile/x"])
def test_an_output_under_a_file_is_a_one_line_error(tmp_path, saved, capsys, argv, output):
    (tmp_path / "afile").write_text("a file")
    out = output.format(tmp=tmp_path)
    code, err = run_cli(capsys, *(a.format(g=saved, out=out) for a in argv))
    assert_one_line_error(code, err, argv[0], "is a file, not a folder", "hint:")
    assert (tmp_path / "afile").read_text() == "a file"


@pytest.mark.parametrize("error, hint", [
    (errno.EACCES, "no permission"),
    (errno.EROFS, "read-only"),
    (errno.ENOSPC, "disk is full"),
])
@pytest.mark.parametrize("kind", ["save", "export", "onnx"])
def test_os_errors_while_writing_are_carve_errors_with_a_hint(tmp_path, saved, capsys, monkeypatch, error,
                                                              hint, kind):
    def refuse(*args, **kwargs):
        raise OSError(error, os.strerror(error), str(tmp_path / "out"))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)  # what a read-only, full or forbidden folder does
    if kind == "save":
        with pytest.raises(tc.CarveError, match=os.strerror(error)):
            tc.save(tiny_graph(3, seed=0), tmp_path / "out")
        return
    code, err = run_cli(capsys, "export", str(saved), "--to", "torch" if kind == "export" else "onnx",
                        "-o", str(tmp_path / "out"))
    assert_one_line_error(code, err, "export", os.strerror(error), hint)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
