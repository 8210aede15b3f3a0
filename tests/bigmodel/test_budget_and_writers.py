"""Pipelines under a memory budget give the same graph; copy-on-write shares weights; streaming writers
(tc.save, export_torch, to_onnx external data) write the same tensors; ONNX external data is read per use."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file

import torchcarve as tc
from torchcarve.errors import FileFormatError

from .helpers import eager, example, on_meta, write_checkpoint

PIPELINE = "fuse,prune{ratio=0.3},quantize{mode=weight-only}"
BUDGET = 6000  # bytes: below the largest tensor (8 KiB), so every weight is read per use and new ones spill


@pytest.fixture(scope="module")
def lazy(tmp_path_factory):
    """(eager model, graph captured on meta whose weights are in a checkpoint)."""
    model = eager()
    path = write_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "m.safetensors")
    return model, tc.capture(on_meta(), (example(),), weights="meta", checkpoint=path)


@pytest.fixture(scope="module")
def optimized(lazy):
    _, graph = lazy
    return tc.optimize(graph, PIPELINE).graph, tc.optimize(graph, PIPELINE, max_memory=BUDGET).graph


def test_a_pipeline_under_a_tight_budget_gives_the_same_graph_and_weights(optimized):
    free, tight = optimized
    assert tight.to_text() == free.to_text()
    assert set(tight.params) == set(free.params)
    assert all(torch.equal(tight.params[name], free.params[name]) for name in free.params)


def test_the_store_never_holds_more_than_the_budget_plus_one_tensor(lazy):
    _, graph = lazy
    tight = tc.optimize(graph, PIPELINE, max_memory=BUDGET).graph.params
    largest = max(graph.params.nbytes(name) for name in graph.params)
    assert tight.peak_resident_bytes <= BUDGET + largest
    assert tight.bytes_written > 0 and tight.resident_bytes <= BUDGET   # new tensors were spilled


def test_optimize_shares_untouched_weights_with_its_input(lazy):
    model = eager()
    graph = tc.capture(model, (example(),))
    result = tc.optimize(graph, "dce").graph
    for name in graph.params:
        assert result.params[name].untyped_storage().data_ptr() == graph.params[name].untyped_storage().data_ptr()
    _, on_disk = lazy
    assert tc.optimize(on_disk, "dce").graph.params.bytes_read == 0   # a pass that touches no weight reads none


def test_the_budget_is_checked_where_it_is_given(lazy):
    _, graph = lazy
    with pytest.raises(tc.CarveError, match="not a positive size"):
        tc.optimize(graph, "dce", max_memory="lots")


def test_streaming_save_writes_the_same_tensors_reading_each_once(tmp_path, lazy):
    model, graph = lazy
    graph = tc.optimize(graph, "dce").graph   # a copy: the shared fixture's counters stay as they are
    tc.save(graph, tmp_path / "out.carve")
    written = load_file(str(tmp_path / "out.carve" / "weights.safetensors"))
    assert set(written) == set(model.state_dict())
    assert all(torch.equal(written[k], v) for k, v in model.state_dict().items())
    largest = max(graph.params.nbytes(name) for name in graph.params)
    assert graph.params.resident_bytes == 0 and graph.params.peak_resident_bytes == largest
    back = tc.load(tmp_path / "out.carve")
    assert back.to_text() == graph.to_text()


def test_streaming_export_torch_writes_the_same_tensors(tmp_path, lazy):
    model, graph = lazy
    graph = tc.optimize(graph, "dce").graph
    tc.export_torch(graph, tmp_path / "torch")
    assert graph.params.resident_bytes == 0   # each weight was read, written and released
    written = load_file(str(tmp_path / "torch" / "weights.safetensors"))
    module = tc.to_torch(graph)
    assert set(written) == set(module.state_dict())
    assert all(torch.equal(written[k], v) for k, v in module.state_dict().items())


def _initializers(model: onnx.ModelProto, folder) -> dict[str, np.ndarray]:
    from onnx.external_data_helper import load_external_data_for_model

    model = onnx.ModelProto.FromString(model.SerializeToString())
    load_external_data_for_model(model, str(folder))
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def test_onnx_external_data_is_streamed_with_the_same_tensors_and_runs_in_onnxruntime(tmp_path, optimized):
    _, tight = optimized
    inline = tc.to_onnx(tight, tmp_path / "inline.onnx")
    external = tc.to_onnx(tight, tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").stat().st_size > 0
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in external.graph.initializer)
    ours, theirs = _initializers(external, tmp_path), _initializers(inline, tmp_path)
    assert set(ours) == set(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in theirs)
    x = example().numpy()
    results = [ort.InferenceSession(str(tmp_path / f)).run(None, {"x": x})[0] for f in ("inline.onnx", "ext.onnx")]
    assert np.array_equal(results[0], results[1])


def _external_model(tmp_path):
    graph = tc.capture(eager(), (example(),))
    tc.to_onnx(graph, tmp_path / "m.onnx", external_data=True)
    return graph, tmp_path / "m.onnx"


def test_from_onnx_with_external_data_reads_nothing_at_import(tmp_path):
    graph, path = _external_model(tmp_path)
    imported = tc.from_onnx(path)
    assert imported.params.bytes_read == 0
    assert any(imported.params.location(name) is not None for name in imported.params)
    with torch.no_grad():
        assert torch.allclose(tc.to_torch(imported)(example()), tc.to_torch(graph)(example()), atol=1e-6)


def _edit_external(path, change) -> None:
    model = onnx.load(str(path), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    entries = {e.key: e.value for e in tensor.external_data}
    change(entries)
    del tensor.external_data[:]
    for key, value in entries.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    onnx.save_model(model, str(path))


@pytest.mark.parametrize("change, message", [
    (lambda e: e.update(offset=str(10**9)), "past the end of the file|ends at byte"),
    (lambda e: e.update(length="12"), "has length 12"),
    (lambda e: e.update(location="../elsewhere.data"), "relative path inside|not a regular|outside"),
    (lambda e: e.update(offset="-3"), "not a non-negative integer|offset"),
])
def test_malformed_external_data_is_a_file_format_error(tmp_path, change, message):
    _, path = _external_model(tmp_path)
    _edit_external(path, change)
    with pytest.raises(FileFormatError, match=message):
        tc.from_onnx(path)


def test_truncated_external_data_is_a_file_format_error(tmp_path):
    _, path = _external_model(tmp_path)
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(FileFormatError):
        tc.from_onnx(path)
