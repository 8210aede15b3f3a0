"""tc.save / tc.load: a directory of graph.ir + weights.safetensors, nothing pickled; bad files are clear errors."""
from __future__ import annotations

import pytest
import torch

import torchcarve as tc
from torchcarve.errors import FileFormatError
from tests.models import captured


@pytest.fixture(scope="module")
def residual():
    return captured("residual")


def test_round_trip_keeps_text_weights_and_outputs(tmp_path, residual):
    model, inputs, graph = residual
    path = tc.save(graph, tmp_path / "model.carve")
    assert sorted(p.name for p in path.iterdir()) == [".carve-manifest", "graph.ir", "weights.safetensors"]
    assert (path / "graph.ir").read_text() == graph.to_text()
    assert b"pickle" not in (path / "weights.safetensors").read_bytes()[:64]
    loaded = tc.load(path)
    assert loaded.to_text() == graph.to_text()
    assert set(loaded.params) == set(graph.params)
    assert loaded.params.trainable == graph.params.trainable
    assert all(torch.equal(loaded.params[k], graph.params[k]) for k in graph.params)
    with torch.no_grad():
        torch.testing.assert_close(tc.to_torch(loaded)(*inputs), model(*inputs), rtol=1e-5, atol=1e-5)


def test_saving_over_an_existing_directory_replaces_our_files_only(tmp_path, residual):
    _, _, graph = residual
    target = tmp_path / "m"
    tc.save(graph, target)
    (target / "notes.txt").write_text("x")
    tc.save(graph, target)
    assert sorted(p.name for p in target.iterdir()) == [".carve-manifest", "graph.ir", "notes.txt",
                                                        "weights.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging folders left behind


def test_a_failed_save_leaves_the_old_directory_untouched(tmp_path, residual, monkeypatch):
    _, _, graph = residual
    target = tc.save(graph, tmp_path / "m")

    def disk_full(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(tc.ParamStore, "save", disk_full)
    with pytest.raises(tc.CarveError, match="disk full"):
        tc.save(graph, target)
    monkeypatch.undo()
    assert tc.load(target).to_text() == graph.to_text()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_missing_path_is_a_file_format_error(tmp_path):
    with pytest.raises(FileFormatError, match="no such file"):
        tc.load(tmp_path / "nope.carve")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileFormatError, match="no graph.ir inside"):
        tc.load(tmp_path / "empty")


@pytest.mark.parametrize("damage", ["garbage_ir", "binary_ir", "truncated_ir", "garbage_weights",
                                    "truncated_weights", "missing_weights", "wrong_weights"])
def test_damaged_saves_are_carve_errors(tmp_path, residual, damage):
    _, _, graph = residual
    path = tc.save(graph, tmp_path / "m")
    ir, weights = path / "graph.ir", path / "weights.safetensors"
    if damage == "garbage_ir":
        ir.write_text("this is not IR {")
    elif damage == "binary_ir":
        ir.write_bytes(b"\xff\xfe\x00garbage")
    elif damage == "truncated_ir":
        ir.write_text(ir.read_text()[: len(ir.read_text()) // 2])
    elif damage == "garbage_weights":
        weights.write_bytes(b"\x00" * 100)
    elif damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:200])
    elif damage == "missing_weights":
        weights.unlink()
    else:
        tc.ParamStore({"conv1.weight": torch.zeros(1)}).save(weights)
    with pytest.raises(tc.CarveError):
        tc.load(path)


def test_weights_file_corrupted_after_header_fails_when_read(tmp_path, residual):
    _, _, graph = residual
    path = tc.save(graph, tmp_path / "m")
    weights = path / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 64])  # header intact, tensor bytes cut short
    with pytest.raises(tc.CarveError):
        tc.load(path)


def test_a_bare_ir_file_loads_with_weights_beside_it(tmp_path, residual):
    _, _, graph = residual
    path = tc.save(graph, tmp_path / "m")
    assert tc.load(path / "graph.ir").to_text() == graph.to_text()
