"""The HTML report: stages kept only when asked, before/after pictures with removed nodes and changed wires,
per-layer tables and charts, one self-contained file; `carve opt --report`, `carve show --svg/--html`."""
from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
import torch

import torchcarve as tc
from torchcarve.cli import main
from torchcarve.draw import render
from torchcarve.draw.report import changed_label, diff, report_html
from torchcarve.ir import TensorType
from torchcarve.passes import PassReport, Report

from .test_svg import digits_graph

pytest.importorskip("matplotlib")
try:
    render.find_engine()
except tc.CarveError:
    pytest.skip("no layout engine: pip install graphviz-pure (the draw extra)", allow_module_level=True)


@pytest.fixture(scope="module")
def pruned_and_fused() -> tc.OptimizeResult:
    return tc.optimize(digits_graph(), "prune{ratio=0.5},fold-bn,dce", report=True)


def sections(page: str) -> list[str]:
    return re.findall(r'<section class="pass".*?</section>', page, flags=re.S)


def test_stages_are_kept_only_when_a_report_is_asked_for(pruned_and_fused: tc.OptimizeResult) -> None:
    plain = tc.optimize(digits_graph(), "prune{ratio=0.5},fold-bn,dce")
    assert isinstance(plain.report, list) and plain.report.stages == []
    report = pruned_and_fused.report
    assert [line.spec for line in report] == ["prune", "fold-bn", "dce"]   # still a list of lines
    assert [s.name for s in report.stages] == ["input", "prune", "fold-bn", "dce"]
    assert report.stages[-1].graph.to_text() == pruned_and_fused.graph.to_text()
    assert report.stages[0].params == report[0].params[0] and report.stages[1].params == report[0].params[1]
    assert report.stages[0].max_error == 0.0 and report.stages[1].max_error > 0.0   # pruning is approximate
    assert report.stages[3].max_error == pytest.approx(report.stages[1].max_error, rel=1e-3)   # folding is exact
    assert all(s.latency_ms > 0 for s in report.stages)


def test_report_pictures_show_removed_nodes_and_changed_wires(pruned_and_fused: tc.OptimizeResult,
                                                              tmp_path: Path) -> None:
    path = pruned_and_fused.report.to_html(tmp_path / "report.html")
    page = html.unescape(path.read_text())   # graphviz writes `-` in class names as &#45;
    prune, fold, dce = sections(page)
    assert prune.count('<figure class="picture') == 2
    assert "32 → 16" in prune and "64 → 32" in prune             # pruned channel counts on the wires
    assert prune.count('class="node op family-norm removed"') == 0
    before, after = fold.split('<figure class="picture after">')
    assert before.count('class="node op family-norm removed"') == 3    # the three folded BNs, red in "before"
    assert 'class="node weight removed"' in before and 'class="node weight added"' in after   # folded weights
    assert "batch_norm" not in after
    assert '<figure class="picture' not in dce                            # nothing changed: no pictures
    assert '<table class="layers">' in prune and "features.3" in prune   # prune's per-layer table
    for label in ("parameters", "MACs / item", "bytes moved", "latency (ms)", "max |output change|"):
        assert f">{label}<" in page                                      # chart axes, as text
    assert not re.search(r"<script|<link|\bsrc=|@import", page)          # self-contained: nothing fetched
    assert (tmp_path / "report.html").stat().st_size < 2_000_000


def test_report_without_stages_still_has_tables_and_charts(tmp_path: Path) -> None:
    result = tc.optimize(digits_graph(), "prune{ratio=0.5}")
    page = result.report.to_html(tmp_path / "r.html").read_text()
    assert "report=True" in page and '<figure class="picture' not in page
    assert ">parameters<" in page and "18,880 → 4,832" in page


def test_report_escapes_names_and_stats() -> None:
    hostile = "<script>alert(1)</script>"
    line = PassReport(hostile, False, {"layers": [{"layer": hostile, "error alone": 0.5}], hostile: 1},
                      (1, 1), (2, 2), (3, 3), 0.0)
    page = report_html(Report([line]), title=hostile)
    assert "<script" not in page and "&lt;script&gt;" in page
    assert 'id="chart-sensitivity-0"' in page                           # the error column became a chart


def test_report_join_and_empty_report(tmp_path: Path) -> None:
    first = tc.optimize(digits_graph(), "prune{ratio=0.5}", report=True)
    second = tc.optimize(first.graph, "fold-bn", report=True)
    joined = Report.join([first.report, second.report])
    assert [s.name for s in joined.stages] == ["input", "prune", "fold-bn"] and len(joined) == 2
    with pytest.raises(tc.CarveError, match="empty"):
        Report().to_html(tmp_path / "empty.html")
    assert not (tmp_path / "empty.html").exists()


def test_diff_matches_nodes_by_name_and_labels_changed_axes() -> None:
    graph = digits_graph()
    pruned = tc.optimize(graph, "prune{ratio=0.5}").graph
    removed, added, wires = diff(graph, pruned)
    assert removed == added == frozenset()
    assert wires["conv2d"] == "batch × 32 → 16 × 8 × 8"
    assert wires["features_0_weight"] == "32 → 16 × 1 × 3 × 3"
    assert changed_label(TensorType((2, 3)), TensorType((6,), "i8")) == "2 × 3 → 6"


def test_cli_show_svg_html_and_opt_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tc.save(digits_graph(), tmp_path / "m.carve")
    assert main(["show", str(tmp_path / "m.carve"), "--summary-only", "--svg", str(tmp_path / "m.svg"),
                 "--html", str(tmp_path / "m.html")]) == 0
    assert (tmp_path / "m.svg").read_text().count('class="node op ') == 13
    assert "<svg" in (tmp_path / "m.html").read_text()
    assert main(["opt", str(tmp_path / "m.carve"), "-p", "prune{ratio=0.5}", "-o", str(tmp_path / "o.carve"),
                 "--report", str(tmp_path / "r.html")]) == 0
    assert "r.html" in capsys.readouterr().out and "32 → 16" in (tmp_path / "r.html").read_text()
    assert main(["show", str(tmp_path / "m.carve"), "--summary-only", "--svg", str(tmp_path / "x.svg"),
                 "--expand", "layer.3"]) == 1
    assert "names no repeated block" in capsys.readouterr().err and not (tmp_path / "x.svg").exists()
    assert main(["show", str(tmp_path / "m.carve"), "--expand", "features"]) == 1
    assert "add --svg" in capsys.readouterr().err
