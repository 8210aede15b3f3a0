"""`carve opt --max-memory` and `carve export --external-data`."""
from __future__ import annotations

import torch
from safetensors.torch import load_file

import torchcarve as tc
from torchcarve.cli import main

from .helpers import eager, example

PIPELINE = "fuse,prune{ratio=0.3}"


def test_opt_under_max_memory_writes_what_opt_without_writes(tmp_path, capsys):
    tc.save(tc.capture(eager(), (example(),)), tmp_path / "in.carve")
    assert main(["opt", str(tmp_path / "in.carve"), "-p", PIPELINE, "-o", str(tmp_path / "free.carve")]) == 0
    assert main(["opt", str(tmp_path / "in.carve"), "-p", PIPELINE, "-o", str(tmp_path / "tight.carve"),
                 "--max-memory", "6KB"]) == 0
    free, tight = (load_file(str(tmp_path / f"{n}.carve" / "weights.safetensors")) for n in ("free", "tight"))
    assert set(free) == set(tight) and all(torch.equal(free[k], tight[k]) for k in free)
    assert (tmp_path / "free.carve" / "graph.ir").read_text() == (tmp_path / "tight.carve" / "graph.ir").read_text()


def test_a_bad_max_memory_is_one_error_line(tmp_path, capsys):
    tc.save(tc.capture(eager(), (example(),)), tmp_path / "in.carve")
    code = main(["opt", str(tmp_path / "in.carve"), "-p", "dce", "-o", str(tmp_path / "out.carve"),
                 "--max-memory", "much"])
    assert code != 0 and "not a positive size" in capsys.readouterr().err
    assert not (tmp_path / "out.carve").exists()


def test_export_external_data_writes_the_weights_beside_the_model(tmp_path, capsys):
    tc.save(tc.capture(eager(), (example(),)), tmp_path / "in.carve")
    assert main(["export", str(tmp_path / "in.carve"), "--to", "onnx", "-o", str(tmp_path / "m.onnx"),
                 "--external-data"]) == 0
    assert (tmp_path / "m.onnx.data").stat().st_size > (tmp_path / "m.onnx").stat().st_size
    back = tc.from_onnx(tmp_path / "m.onnx")
    assert back.params.bytes_read == 0
    with torch.no_grad():
        assert torch.allclose(tc.to_torch(back)(example()), eager()(example()), atol=1e-5)
