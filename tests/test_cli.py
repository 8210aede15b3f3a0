"""The `carve` command line: happy paths, and bad input giving one clear line, exit 1, no output."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import torchcarve as tc
from torchcarve.cli import main

FACTORIES = textwrap.dedent('''
    import torch

    def small_cnn():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                   torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 5))

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:          # neither torch.export nor fx can trace a branch on data
                return x * 2
            return x - 1

    def not_a_model():
        return 42
''')


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "factories.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_capture_show_export_torch(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(capsys, "capture", "factories:small_cnn", "--input", "2x3x8x8", "-o", "m.carve")
    assert code == 0 and "captured" in out
    assert (workdir / "m.carve" / "graph.ir").is_file() and (workdir / "m.carve" / "weights.safetensors").is_file()

    code, out, _ = run_cli(capsys, "show", "m.carve")
    assert code == 0
    assert "aten.conv2d(" in out and "parameters" in out and "MACs" in out
    graph = tc.load("m.carve")
    assert f"{sum(t.numel() for n, t in graph.params.items() if 'num_batches' not in n):,}" in out

    code, _, _ = run_cli(capsys, "export", "m.carve", "--to", "torch", "-o", "torch_out")
    assert code == 0 and (workdir / "torch_out" / "model.py").is_file()
    x = torch.randn(2, 3, 8, 8)
    model = __import__("factories").small_cnn().eval()
    assert torch.allclose(tc.to_torch(graph)(x), model(x), atol=1e-5)


def test_capture_from_a_checkpoint_builds_the_model_on_meta(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    from safetensors.torch import save_file

    model = __import__("factories").small_cnn().eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(workdir / "ckpt.safetensors"))
    code, out, _ = run_cli(capsys, "capture", "factories:small_cnn", "--input", "2x3x8x8",
                           "--checkpoint", "ckpt.safetensors", "-o", "m.carve")
    assert code == 0 and "captured" in out
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(tc.to_torch(tc.load("m.carve"))(x), model(x), atol=1e-5)

    save_file({"0.weight": torch.zeros(4, 3, 3, 3)}, str(workdir / "partial.safetensors"))
    code, _, err = run_cli(capsys, "capture", "factories:small_cnn", "--input", "2x3x8x8",
                           "--checkpoint", "partial.safetensors", "-o", "p.carve")
    assert code == 1 and "0.bias" in err and not (workdir / "p.carve").exists()


@pytest.mark.parametrize("argv, message", [
    (["show", "missing.carve"], "no such file"),
    (["show", "garbage.ir"], "1:1: unexpected character"),
    (["capture", "no_such_module:make", "--input", "1x3", "-o", "out.carve"], "cannot import 'no_such_module'"),
    (["capture", "factories:missing", "--input", "1x3", "-o", "out.carve"], "no callable 'missing'"),
    (["capture", "factories:not_a_model", "--input", "1x3", "-o", "out.carve"], "not a torch.nn.Module"),
    (["capture", "factories:DataDependent", "--input", "1x3", "-o", "out.carve"], "could not capture the model"),
    (["capture", "factories:small_cnn", "--input", "2x5x8x8", "-o", "out.carve"], "torch.export failed"),
    (["capture", "factories:small_cnn", "--input", "2xAx8", "-o", "out.carve"], "bad input shape"),
])
def test_bad_input_is_one_clear_line(workdir: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    (workdir / "garbage.ir").write_text("\x00 this is not IR")
    before = sorted(p.name for p in workdir.iterdir())
    code, _, err = run_cli(capsys, *argv)
    assert code == 1
    assert message in err
    assert "Traceback" not in err
    assert err.startswith(f"carve {argv[0]}: error: ") and len(err.splitlines()[0]) < 400
    assert sorted(p.name for p in workdir.iterdir()) == before  # nothing written, not even a temp dir


def test_debug_flag_shows_traceback(workdir: Path) -> None:
    with pytest.raises(tc.CarveError):
        main(["--debug", "show", "missing.carve"])


def test_console_script_entry_point(workdir: Path) -> None:
    carve = Path(sys.executable).parent / "carve"  # the installed console script
    result = subprocess.run([str(carve), "show", "missing.carve"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "no such file" in result.stderr


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(capsys, "demo", "--out", str(tmp_path / "demo"), "--epochs", "3",
                           "--finetune-epochs", "2")
    assert code == 0
    assert (tmp_path / "demo" / "torch" / "model.py").is_file()
    assert (tmp_path / "demo" / "model.carve" / "graph.ir").is_file()
    report = tmp_path / "demo" / "report.html"
    assert str(report) in out.replace("\n", "") and report.read_text().count('<section class="pass"') >= 10
    header = next(line.split("┃")[1:-1] for line in out.splitlines() if line.startswith("┃ stage"))
    column = [cell.strip() for cell in header].index("test accuracy")
    cells = [line.split("│")[1:-1] for line in out.splitlines() if line.startswith("│")]
    rows = {row[0].strip(): row[column].strip() for row in cells if len(row) == len(header)}
    accuracies = [float(rows[stage].rstrip("%")) for stage in ("eager", "fused", "model.py", "model.onnx (ORT)")]
    assert accuracies[1] == accuracies[2] == accuracies[3]  # the exact steps keep every prediction
    assert min(accuracies) > 50.0  # 3 epochs (+2 after pruning) learn the digits well above chance (10%)
    assert abs(float(rows["int8 model.onnx (ORT)"].rstrip("%")) - accuracies[-1]) <= 5.0
    int8_size = (tmp_path / "demo" / "model.int8.onnx").stat().st_size  # weights shrink 3.5x; graph overhead stays
    assert int8_size < 0.6 * (tmp_path / "demo" / "model.onnx").stat().st_size


def test_opt_with_calibration_file_and_random(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    from safetensors.torch import save_file

    assert run_cli(capsys, "capture", "factories:small_cnn", "--input", "2x3x8x8", "-o", "m.carve")[0] == 0
    graph = tc.load("m.carve")
    save_file({graph.inputs[0].name: torch.randn(20, 3, 8, 8)}, str(workdir / "calib.safetensors"))
    code, out, _ = run_cli(capsys, "opt", "m.carve", "-p", "quantize{mode=static}", "--calibration",
                           "calib.safetensors", "-o", "q.carve")
    assert code == 0 and "quantize" in out
    assert any(node.op.startswith("carve.") for node in tc.load("q.carve").nodes)
    code, _, _ = run_cli(capsys, "opt", "m.carve", "-p", "quantize{mode=static}", "--calibration", "random:2",
                         "-o", "q2.carve")
    assert code == 0

    code, _, err = run_cli(capsys, "opt", "m.carve", "-p", "quantize{mode=static}", "-o", "q3.carve")
    assert code == 1 and "calibration" in err and not (workdir / "q3.carve").exists()
    save_file({"wrong": torch.randn(4, 3)}, str(workdir / "bad.safetensors"))
    code, _, err = run_cli(capsys, "opt", "m.carve", "-p", "quantize{mode=static}", "--calibration",
                           "bad.safetensors", "-o", "q4.carve")
    assert code == 1 and "no tensor for graph input" in err


def test_version_names_package_and_torch(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert tc.__version__ in out and torch.__version__ in out


def test_passes_name_shows_options_defaults_and_example(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(capsys, "passes", "prune")
    assert code == 0
    assert "DepGraph" in out                                    # the idea and its paper
    assert "round-to" in out and "l1 | l2 | bn-scale" in out    # options with kebab names and choices
    assert "prune{ratio=0.5}" in out                            # a runnable example spec
    from torchcarve.passes import parse_pipeline
    assert parse_pipeline("prune{ratio=0.5}")[0].spec() == "prune"


def test_passes_unknown_name_lists_valid_ones(capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(capsys, "passes", "prnue")
    assert code == 1
    assert "no pass named 'prnue'" in err and "prune" in err.split("hint:")[1]


def test_opt_stats_are_readable_text(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    run_cli(capsys, "capture", "factories:small_cnn", "--input", "2x3x8x8", "-o", "m.carve")
    code, out, _ = run_cli(capsys, "opt", "m.carve", "-p", "prune{ratio=0.5},low-rank{ratio=0.5},quantize", "-o", "q.carve")
    assert code == 0
    assert "%v" not in out and "{'" not in out and "=(" not in out     # no raw names, dicts or tuples
    assert "KiB →" in out                                              # weight bytes in a readable unit
