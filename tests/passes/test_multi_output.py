"""Every pass keeps every graph output (task head) of a multi-task DAG: same types, and the PyTorch and
ONNX Runtime results agree on each head; exact passes match the eager model on each head."""
from __future__ import annotations

import pytest
import torch

import torchcarve as tc
from torchcarve.passes import optimize

from ..models import MODELS
from .helpers import ATOL, RTOL

ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("pipeline, exact", [
    ("fuse", True),
    ("cleanup", True),
    ("prune{ratio=0.5,round-to=1}", False),
    ("low-rank{energy=0.9}", False),
    ("quantize{mode=dynamic}", False),
    ("prune-blocks{n=2,criterion=flow}", False),
    ("prune-blocks{n=1,criterion=output-error},prune{ratio=0.25,round-to=1},fuse", False),
])
def test_every_head_survives(pipeline, exact, tmp_path):
    model, inputs = MODELS["multitask_dag"]()
    graph = tc.capture(model, inputs)
    result = optimize(graph, pipeline, calibration=[inputs])
    assert [v.type for v in result.graph.outputs] == [v.type for v in graph.outputs]
    assert result.graph.output_names == graph.output_names
    with torch.no_grad():
        actual = tc.to_torch(result.graph)(*inputs)
        expected = model(*inputs)
    assert len(actual) == 2
    if exact:
        for a, e in zip(actual, expected):
            torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL)
    tc.to_onnx(result.graph, tmp_path / "heads.onnx")
    session = ort.InferenceSession(str(tmp_path / "heads.onnx"), providers=["CPUExecutionProvider"])
    ran = session.run(None, {session.get_inputs()[0].name: inputs[0].numpy()})
    for a, o in zip(actual, ran):
        torch.testing.assert_close(torch.from_numpy(o), a, rtol=1e-3, atol=1e-4)


def test_the_prune_report_says_which_heads_each_group_feeds():
    from torchcarve.cli.opt import layers_table

    model, inputs = MODELS["multitask_dag"]()
    result = optimize(tc.capture(model, inputs), "prune{ratio=0.25,round-to=1}")
    rows = result.report[0].stats["layers"]
    feeds = {row["layer"]: row["feeds"] for row in rows}
    assert feeds["head_cls.0"] == feeds["block3.0"] == "output_0"  # only the classification head reads them
    assert feeds["stem"] == feeds["block1.0"] == "output_0,output_1"  # the shared trunk
    assert "feeds" in [column.header for column in layers_table("prune", rows).columns]
