"""Capture on the meta device with weights from a checkpoint equals eager capture; bad checkpoints are clear errors."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import torchcarve as tc
from torchcarve.errors import CaptureError

from .helpers import eager, example, on_meta, write_checkpoint, write_shards


@pytest.fixture(scope="module")
def reference():
    model = eager()
    return model, tc.capture(model, (example(),))


@pytest.mark.parametrize("layout", ["file", "shards"])
def test_meta_capture_from_a_checkpoint_equals_eager_capture(tmp_path, reference, layout):
    model, expected = reference
    path = write_checkpoint(model, tmp_path / "m.safetensors") if layout == "file" else \
        write_shards(model, tmp_path / "hf")
    graph = tc.capture(on_meta(), (example(),), weights="meta", checkpoint=path)
    assert graph.to_text() == expected.to_text()
    assert graph.params.bytes_read == 0 and graph.params.resident_bytes == 0   # nothing loaded by capture
    assert all(graph.params.location(name) is not None for name in graph.params)
    with torch.no_grad():
        assert torch.equal(tc.to_torch(graph)(example()), model(example()))


def test_a_checkpoint_given_with_an_eager_model_replaces_its_weights(tmp_path, reference):
    model, _ = reference
    path = write_checkpoint(model, tmp_path / "m.safetensors")
    other = eager(seed=5)
    graph = tc.capture(other, (example(),), checkpoint=path)
    with torch.no_grad():
        assert torch.equal(tc.to_torch(graph)(example()), model(example()))


def test_missing_and_mismatched_checkpoint_tensors_are_listed(tmp_path, reference):
    model, _ = reference
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    del state["head.bias"]
    state["stem.weight"] = torch.zeros(3, 3)
    state["head.weight"] = state["head.weight"].double()
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CaptureError) as error:
        tc.capture(on_meta(), (example(),), weights="meta", checkpoint=tmp_path / "bad.safetensors")
    message = str(error.value)
    assert "1 missing: head.bias" in message
    assert "stem.weight: checkpoint f32[3,3], model f32[32,16]" in message and "head.weight: checkpoint f64" in message


def test_meta_weights_need_a_checkpoint_and_a_known_source():
    with pytest.raises(CaptureError, match="needs checkpoint"):
        tc.capture(on_meta(), (example(),), weights="meta")
    with pytest.raises(CaptureError, match="unknown weights source"):
        tc.capture(eager(), (example(),), weights="disk")


def test_a_folder_without_a_checkpoint_is_a_file_format_error(tmp_path):
    with pytest.raises(tc.CarveError, match="neither model.safetensors.index.json"):
        tc.capture(on_meta(), (example(),), weights="meta", checkpoint=tmp_path)
