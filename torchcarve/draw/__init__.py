"""Pictures of graphs: `draw(graph)` -> SVG, and the HTML report of an optimize run (`report.py`)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import CarveError
from ..fileio import atomic_file
from ..ir import Graph
from .dot import Marks, shape_label, to_dot
from .render import render_svg

__all__ = ["Marks", "draw", "draw_html", "notebook_svg", "shape_label", "to_dot"]


def draw(graph: Graph, path: str | Path | None = None, *, expand: Sequence[str] = (), marks: Marks | None = None,
         weights: bool = True) -> str:
    """The SVG picture of `graph` (written to `path` when given). Repeated blocks are drawn once with ×N;
    `expand` names blocks to draw in full (`"encoder.layer.3"`, or `"encoder.layer"` for all of them)."""
    svg = render_svg(to_dot(graph, expand=expand, marks=marks, weights=weights))
    if path is not None:
        with atomic_file(path) as temp:
            temp.write_text(svg, encoding="utf-8")
    return svg


def draw_html(graph: Graph, path: str | Path, *, expand: Sequence[str] = ()) -> Path:
    """Write a self-contained HTML page holding the picture of `graph` and the colour legend."""
    from .report import graph_html

    page = graph_html(graph, draw(graph, expand=expand))
    with atomic_file(path) as temp:
        temp.write_text(page, encoding="utf-8")
    return Path(path)


def notebook_svg(graph: Graph) -> str | None:
    """`Graph._repr_svg_` (set by the top-level package): the picture, or None so notebooks show the text
    when no layout engine is installed."""
    try:
        return draw(graph)
    except CarveError:
        return None
