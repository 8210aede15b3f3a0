"""`carve tune`: one line finds, prints and saves the best pipeline, and `carve opt -p` re-runs it."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import torchcarve as tc
from tests.models import cnn_bn
from torchcarve.cli import main

pytest.importorskip("optuna")


@pytest.fixture
def graph_dir(tmp_path: Path) -> Path:
    return tc.save(tc.capture(*cnn_bn()), tmp_path / "model.carve")


def test_tune_one_liner_saves_the_best_and_prints_a_rerunnable_spec(graph_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "best.carve"
    code = main(["tune", str(graph_dir), "--calibration", "random:2", "--eval", "random:2", "--max-drop", "0.05",
                 "--objective", "file-size,params", "--trials", "6", "--cache", str(tmp_path / "cache"), "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "Pareto front" in printed
    assert re.search(r"(\d+) candidates \(\1 run, 0 from the cache, \d+ failed\)", printed)
    spec = re.search(r"^best: (\S+)$", printed, re.M).group(1)
    again = tmp_path / "again.carve"
    assert main(["opt", str(graph_dir), "-p", spec, "--calibration", "random:2", "-o", str(again)]) == 0
    assert tc.load(again).to_text() == tc.load(out).to_text()
    assert f"re-run: carve opt {graph_dir} -p {shlex.quote(spec)} -o OUT" in printed


def test_tune_bad_objective_is_one_error_line(graph_dir: Path, tmp_path: Path, capsys) -> None:
    code = main(["tune", str(graph_dir), "--eval", "random:1", "--budget", "0.9", "--objective", "speed",
                 "--cache", str(tmp_path), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "error: unknown objective 'speed'" in err and not (tmp_path / "out").exists()


def test_tune_with_an_unreachable_budget_says_so(graph_dir: Path, tmp_path: Path, capsys) -> None:
    code = main(["tune", str(graph_dir), "--eval", "random:1", "--budget", "2.0", "--objective", "params",
                 "--trials", "2", "--cache", str(tmp_path / "cache"), "-o", str(tmp_path / "out")])
    assert code == 1 and "no candidate reached the budget" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
