"""Long steps show a bar with an ETA inside show_progress() (and in the CLI), and stay silent otherwise."""
from __future__ import annotations

import io

import torch
from rich.console import Console

import torchcarve as tc
from tests.models import mlp


def _whitened(graph: tc.Graph) -> None:
    calibration = [(torch.randn(4, 16),) for _ in range(3)]
    tc.optimize(graph, "low-rank{method=whitened,ratio=0.5,min-gain=-1}", calibration=calibration)


def test_whitening_shows_its_calibration_step_in_a_bar() -> None:
    graph = tc.capture(*mlp())
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    with tc.show_progress(console):
        _whitened(graph)
    shown = screen.getvalue()
    assert "whitening: input statistics" in shown and "passes" in shown
    assert "eta" in shown


def test_library_is_silent_without_show_progress(capsys) -> None:
    graph = tc.capture(*mlp())
    _whitened(graph)
    captured = capsys.readouterr()
    assert "whitening" not in captured.out + captured.err
