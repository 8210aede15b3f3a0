"""Run the layout engine (graphviz-pure's `dot` port, else a system `dot`) on DOT text: SVG out.

No shell, input on stdin, a timeout; a missing engine is a CarveError saying what to install.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from ..errors import CarveError

ENGINES = ("graphviz-pure", "dot")   # tried in this order
INSTALL_HINT = 'pip install "torchcarve[draw]"  (installs graphviz-pure, a pip-installable port of Graphviz dot)'
LAYOUT_TIMEOUT_S = 120


def find_engine() -> str:
    """The path of the layout executable: beside this Python first (a venv's bin), then on PATH."""
    folders = [Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))]
    for name in ENGINES:
        for folder in folders:
            candidate = folder / name
            if candidate.is_file():
                return str(candidate)
        found = shutil.which(name)
        if found:
            return found
    raise CarveError("drawing needs a layout engine: neither graphviz-pure nor Graphviz dot was found",
                     hint=INSTALL_HINT)


def render_svg(dot: str, timeout: float = LAYOUT_TIMEOUT_S) -> str:
    """Lay out `dot` and return the SVG document text."""
    engine = find_engine()
    try:
        done = subprocess.run([engine, "-Tsvg", "-q"], input=dot.encode(), capture_output=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired as e:
        raise CarveError(f"the layout engine took over {timeout:.0f} s", hint="draw a smaller graph, or fold "
                         "repeated blocks (do not pass expand)") from e
    except OSError as e:
        raise CarveError(f"cannot run the layout engine {engine}: {e}", hint=INSTALL_HINT) from e
    if done.returncode != 0 or b"<svg" not in done.stdout:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise CarveError(f"the layout engine failed: {message[-1] if message else f'exit {done.returncode}'}",
                         hint="report this with the graph's text form")
    return done.stdout.decode()


def inline_svg(svg: str) -> str:
    """The `<svg>` element alone (no XML prolog or DOCTYPE), to place inside an HTML page."""
    return svg[svg.index("<svg"):]
