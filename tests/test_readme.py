"""The README's tour runs as written: its python blocks, in order, in one namespace."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_tour_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README, not user input
    out = capsys.readouterr().out
    assert "graph @Sequential" in out and "torch.Size([4, 10])" in out
    assert "ratoi" in out                       # the deliberate typo is reported with the valid names
    assert (tmp_path / "small.int8.onnx").is_file() and (tmp_path / "out_torch" / "model.py").is_file()


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)[:2]
    assert commands == ['pip install -c constraints.txt ".[demo]" && carve demo',
                        'pip install -c constraints.txt ".[dev]" && python -m pytest']
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci                    # CI runs exactly the README's test command


def test_every_relative_link_in_the_docs_resolves() -> None:
    root = README.parent
    pages = [README, root / "benchmarks" / "README.md", *sorted((root / "docs").rglob("*.md"))]
    broken = [(str(page.relative_to(root)), target) for page in pages
              for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
              if not target.startswith("http") and not (page.parent / target).exists()]
    assert len(pages) > 10 and not broken
