"""ParamStore on disk: file-backed entries, a memory budget (release, spill), copy-on-write, malformed files."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

import torchcarve as tc
from torchcarve.errors import CarveError, FileFormatError
from torchcarve.ir.params import memory_size
from torchcarve.ir.tensorfile import checkpoint_index, write_safetensors


def _tensors(count: int = 6, size: int = 256) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {f"w{k}": torch.randn(size, generator=generator) for k in range(count)}  # 1 KiB each


@pytest.mark.parametrize("text, expected", [("4GB", 4 * 10**9), ("512MiB", 512 * 2**20), ("1.5k", 1500),
                                            (" 2 gib ", 2 * 2**30), (4096, 4096), ("100", 100)])
def test_memory_sizes_parse_in_one_place(text, expected):
    assert memory_size(text) == expected


@pytest.mark.parametrize("bad", ["", "4XB", "-1GB", "0", 0, -5, True, "GB"])
def test_a_bad_memory_size_is_a_carve_error(bad):
    with pytest.raises(CarveError, match="not a positive size"):
        memory_size(bad)


def test_a_budget_spills_new_tensors_and_keeps_resident_bytes_within_budget_plus_one_tensor():
    tensors = _tensors()
    store = tc.ParamStore(budget=2500)
    for name, tensor in tensors.items():
        store[name] = tensor
    assert store.resident_bytes <= 2500 and store.peak_resident_bytes <= 2500 + 1024
    assert store.bytes_written == 4 * 1024                   # four of six spilled, least recently used first
    assert not store.is_resident("w0") and store.is_resident("w5")
    for name, tensor in tensors.items():                     # each read back equal, the budget still held
        assert torch.equal(store[name], tensor)
        assert store.resident_bytes <= 2500
    assert store.peak_resident_bytes <= 2500 + 1024


def test_a_budget_releases_file_backed_entries_before_spilling_new_ones(tmp_path):
    tc.ParamStore(_tensors()).save(tmp_path / "w.safetensors")
    store = tc.ParamStore.load(tmp_path / "w.safetensors")
    store.set_budget(2100)
    store["new"] = torch.zeros(256)                          # a tensor no file holds
    for name in ["w0", "w1", "w2"]:
        store[name]
    assert store.bytes_written == 0 and store.is_resident("new")   # file-backed ones went first: no spill
    assert store.resident_bytes <= 2100


def test_spill_files_are_deleted_when_no_store_refers_to_them():
    store = tc.ParamStore(_tensors(), budget=1024)
    folder = store.location("w0").path.parent
    assert folder.is_dir() and folder.name.startswith("torchcarve-spill-")
    copy = store.copy()
    del store
    assert folder.is_dir() and torch.equal(copy["w0"], _tensors()["w0"])  # the copy still reads it
    del copy
    assert not folder.exists()


def test_copies_share_tensors_without_copying_and_writes_do_not_leak_back():
    store = tc.ParamStore(_tensors())
    copy = store.copy()
    assert copy["w1"].untyped_storage().data_ptr() == store["w1"].untyped_storage().data_ptr()
    copy["w1"] = torch.zeros(256)
    assert torch.equal(store["w1"], _tensors()["w1"])


def test_types_come_from_file_headers_without_reading(tmp_path):
    tc.ParamStore({"a": torch.randn(3, 4).half()}).save(tmp_path / "w.safetensors")
    store = tc.ParamStore.load(tmp_path / "w.safetensors")
    assert str(store.type_of("a")) == "f16[3,4]" and store.nbytes("a") == 24 and store.bytes_read == 0


def test_the_streaming_writer_writes_what_safetensors_reads(tmp_path):
    tensors = {"a": torch.randn(3, 5), "b": torch.arange(7), "c": torch.rand(2, 2) > 0.5,
               "d": torch.randn(4).to(torch.bfloat16), "e": torch.empty(0, 3)}
    store = tc.ParamStore(tensors, trainable={"a"})
    store.save(tmp_path / "ours.safetensors")
    back = load_file(str(tmp_path / "ours.safetensors"))
    assert set(back) == set(tensors) and all(torch.equal(back[k], v) for k, v in tensors.items())
    save_file(tensors, str(tmp_path / "theirs.safetensors"))
    theirs = tc.ParamStore.load(tmp_path / "theirs.safetensors")
    assert all(torch.equal(theirs[k], v) for k, v in tensors.items())
    assert tc.ParamStore.load(tmp_path / "ours.safetensors").trainable == {"a"}


def test_saving_a_file_backed_store_reads_each_tensor_once_and_releases_it(tmp_path):
    tc.ParamStore(_tensors()).save(tmp_path / "a.safetensors")
    store = tc.ParamStore.load(tmp_path / "a.safetensors")
    store.save(tmp_path / "b.safetensors")
    assert store.bytes_read == 6 * 1024 and store.resident_bytes == 0 and store.peak_resident_bytes == 1024
    assert store.bytes_written == 6 * 1024


def _raw_file(path, header: dict | bytes, data: bytes = b"") -> None:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize("header, data, message", [
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "ends past the end"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\0" * 16, "needs 16"),
    ({"w": {"dtype": "F99", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, "no known dtype"),
    ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, b"\0" * 16, "non-negative ints"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0]}}, b"\0" * 16, "two data_offsets"),
    (b"{not json", b"", "not valid JSON"),
    (b"[1, 2]", b"", "not a JSON object"),
])
def test_malformed_safetensors_are_file_format_errors_naming_file_and_tensor(tmp_path, header, data, message):
    path = tmp_path / "bad.safetensors"
    _raw_file(path, header, data)
    with pytest.raises(FileFormatError, match=message) as error:
        tc.ParamStore.load(path)
    assert "bad.safetensors" in str(error.value)


def test_a_header_length_past_the_file_is_a_file_format_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(FileFormatError, match="header length"):
        tc.ParamStore.load(path)


def test_a_file_truncated_after_opening_is_a_file_format_error_at_read(tmp_path):
    path = tmp_path / "w.safetensors"
    tc.ParamStore({"w": torch.ones(64)}).save(path)
    store = tc.ParamStore.load(path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(FileFormatError, match="changed since it was opened; cannot read tensor 'w'"):
        store["w"]


def test_a_file_replaced_after_opening_is_an_error_not_other_bytes(tmp_path):
    tc.save(tc.capture(torch.nn.Linear(2, 2), (torch.randn(1, 2),)), tmp_path / "g.carve")
    lazy = tc.load(tmp_path / "g.carve")
    replacement = tc.ParamStore({"pad": torch.zeros(8), "weight": torch.full((2, 2), 7.0), "bias": torch.ones(2)})
    replacement.save(tmp_path / "g.carve" / "weights.safetensors")   # same names, another layout
    with pytest.raises(FileFormatError, match="changed since it was opened"):
        lazy.params["weight"]


@pytest.mark.parametrize("index, message", [
    (b"{bad json", "not valid JSON"),
    (json.dumps({"weight_map": ["a"]}).encode(), "weight_map"),
    (json.dumps({"weight_map": {"w": "../outside.safetensors"}}).encode(), "not a plain file name"),
    (json.dumps({"weight_map": {"missing": "s.safetensors"}}).encode(), "'missing' is in"),
])
def test_malformed_shard_indexes_are_file_format_errors(tmp_path, index, message):
    save_file({"w": torch.ones(2)}, str(tmp_path / "s.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_bytes(index)
    with pytest.raises(FileFormatError, match=message):
        checkpoint_index(tmp_path)


def test_the_writer_refuses_a_tensor_that_differs_from_its_header(tmp_path):
    with pytest.raises(FileFormatError, match="expected torch.float32"):
        write_safetensors(tmp_path / "x.safetensors", [("w", torch.float32, (2,))], lambda name: torch.ones(3))
