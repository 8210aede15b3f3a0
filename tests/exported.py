"""Run a graph exported by `tc.export_torch` in a fresh Python process (only torch + safetensors there)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

import torchcarve as tc

RUNNER = textwrap.dedent('''
    import json, sys
    from safetensors.torch import load_file, save_file
    sys.path.insert(0, sys.argv[1])
    import model
    module = model.load()
    inputs = load_file(sys.argv[2])
    out = module(*[inputs[str(i)] for i in range(len(inputs))])
    out = out if isinstance(out, tuple) else (out,)
    save_file({str(i): t.contiguous() for i, t in enumerate(out)}, sys.argv[3])
    print(json.dumps({"parameters": [n for n, _ in module.named_parameters()],
                      "buffers": [n for n, _ in module.named_buffers()]}))
''')


def run_exported(graph: tc.Graph, inputs: Sequence[torch.Tensor], directory: Path) -> tuple[list[torch.Tensor], dict]:
    """Export `graph` to `directory`/proj, run its model.py on `inputs` in a subprocess: (outputs, names)."""
    tc.export_torch(graph, directory / "proj")
    return run_model_py(directory, inputs)


def run_model_py(directory: Path, inputs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], dict]:
    """Run `directory`/proj/model.py's load() on `inputs` in a fresh process: (outputs, parameter/buffer names)."""
    save_file({str(i): t.contiguous() for i, t in enumerate(inputs)}, str(directory / "inputs.safetensors"))
    done = subprocess.run([sys.executable, "-I", "-c", RUNNER, str(directory / "proj"),
                           str(directory / "inputs.safetensors"), str(directory / "outputs.safetensors")],
                          capture_output=True, text=True, timeout=300, cwd=directory)
    assert done.returncode == 0, done.stderr
    outputs = load_file(str(directory / "outputs.safetensors"))
    return [outputs[str(i)] for i in range(len(outputs))], json.loads(done.stdout.splitlines()[-1])
