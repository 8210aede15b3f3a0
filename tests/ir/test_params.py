"""ParamStore: a name -> tensor mapping that saves to safetensors and loads lazily."""
from __future__ import annotations

import pytest
import torch

import torchcarve as tc
from torchcarve.errors import FileFormatError


def test_save_then_load_reads_tensors_lazily(tmp_path):
    store = tc.ParamStore({"a.weight": torch.randn(3, 4), "a.mean": torch.arange(5.0)}, trainable={"a.weight"})
    store.save(tmp_path / "w.safetensors")
    loaded = tc.ParamStore.load(tmp_path / "w.safetensors")
    assert set(loaded) == {"a.weight", "a.mean"} and len(loaded) == 2
    assert loaded._tensors == {}  # nothing read yet
    assert torch.equal(loaded["a.weight"], store["a.weight"])
    assert set(loaded._tensors) == {"a.weight"}  # only what was asked for
    assert loaded.trainable == {"a.weight"}
    assert torch.equal(loaded["a.mean"], store["a.mean"])


def test_set_delete_copy_and_unique_name():
    store = tc.ParamStore({"w": torch.ones(2)}, trainable={"w"})
    copy = store.copy()
    copy["w"] = torch.zeros(2)
    del copy["w"]
    assert "w" in store and torch.equal(store["w"], torch.ones(2))  # the copy is independent
    assert "w" not in copy and "w" in store.trainable
    assert store.unique_name("w") == "w_1" and store.unique_name("v") == "v"


def test_stored_tensors_are_detached():
    weight = torch.nn.Parameter(torch.randn(3))
    store = tc.ParamStore()
    store["w"] = weight
    assert not store["w"].requires_grad


@pytest.mark.parametrize("content", [b"", b"garbage bytes that are not safetensors", b"\xff" * 16])
def test_loading_a_corrupt_file_is_a_file_format_error(tmp_path, content):
    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    with pytest.raises(FileFormatError, match="w.safetensors"):
        tc.ParamStore.load(path)


def test_a_file_that_vanishes_before_a_lazy_read_is_a_file_format_error(tmp_path):
    path = tmp_path / "w.safetensors"
    tc.ParamStore({"w": torch.ones(2)}).save(path)
    store = tc.ParamStore.load(path)
    path.unlink()
    with pytest.raises(FileFormatError, match="cannot read tensor 'w'"):
        store["w"]


def test_release_returns_a_file_backed_entry_to_its_file_and_counts_bytes(tmp_path):
    store = tc.ParamStore({"w": torch.arange(6.0), "b": torch.ones(2)})
    store.save(tmp_path / "w.safetensors")
    lazy = tc.ParamStore.load(tmp_path / "w.safetensors")
    assert torch.equal(lazy["w"], torch.arange(6.0)) and lazy.bytes_read == 24
    lazy.release("w")
    assert "w" in lazy and "w" not in lazy._tensors       # back on disk, still an entry
    assert torch.equal(lazy["w"], torch.arange(6.0)) and lazy.bytes_read == 48
    lazy["b"] = torch.zeros(2)                             # rewritten: no longer the file's tensor
    lazy.release("b")
    assert torch.equal(lazy["b"], torch.zeros(2))
