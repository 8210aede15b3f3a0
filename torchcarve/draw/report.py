"""The HTML report of an optimize run: one self-contained file (inline SVG, no scripts, no network).

The pipeline; a table of stages; charts (params, MACs, bytes, latency per stage, output error per pass,
per-layer sensitivity) drawn by matplotlib as inline SVG; per pass its stats, a before/after picture
(removed nodes red dashed, new nodes green, changed wires labelled `768 → 384`) and its per-layer table.
The report is duck-typed (a list of PassReport with `.stages`): this package sits below passes/.
"""
from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import CarveError
from ..fileio import atomic_file
from ..ir import Graph
from .dot import Marks, node_key, to_dot
from .families import COLOURS
from .render import INSTALL_HINT, inline_svg, render_svg

STYLE = """
body { font-family: Helvetica, Arial, sans-serif; margin: 24px; color: #222; max-width: 1500px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; } td:first-child, th:first-child { text-align: left; }
ol.pipeline { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 6px; }
ol.pipeline li { background: #eef4fb; border: 1px solid #2b6cb0; border-radius: 4px; padding: 2px 8px; font-family: monospace; }
ol.pipeline li.unchanged { background: #f7f7f7; border-color: #bbb; color: #777; }
.pictures { display: flex; gap: 16px; align-items: flex-start; overflow-x: auto; }
.pictures figure { margin: 0; border: 1px solid #eee; padding: 4px; }
figure svg { max-width: 100%; height: auto; } .pictures figure svg { max-width: none; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; } .legend span { display: inline-block; padding: 2px 8px;
  margin-right: 6px; border: 1px solid #999; border-radius: 4px; font-size: 12px; }
"""
SHOWN_ELSEWHERE = {"layers", "params", "macs"}   # the per-layer table and the sentence before the stats
ERROR_WORDS = ("error", "sensitiv")   # per-layer columns drawn in the sensitivity chart


@dataclass
class _Row:
    """One stage of the charts and the stage table (bytes, latency and error only when stages were kept)."""

    name: str
    params: int
    macs: int
    bytes: int | None = None
    latency_ms: float | None = None
    max_error: float | None = None
    peak_memory: int | None = None   # of the pass that made this stage (the input stage has none)
    bytes_read: int | None = None
    bytes_written: int | None = None


def write_report(report: Sequence[Any], path: str | Path, title: str = "torchcarve report") -> Path:
    """Write `report` (the `optimize` result's report) as one self-contained HTML file; returns the path."""
    if not report:
        raise CarveError("the report is empty: the pipeline ran no pass", hint="give a pipeline with passes")
    path = Path(path)
    with atomic_file(path) as temp:
        temp.write_text(report_html(report, title), encoding="utf-8")
    return path


def report_html(report: Sequence[Any], title: str = "torchcarve report") -> str:
    """The report page as text."""
    stages = list(getattr(report, "stages", []))
    rows = _rows(report, stages)
    parts = [f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n",
             _pipeline(report), _stage_table(rows), _charts(report, rows), _legend()]
    if not stages:
        parts.append("<p class=\"note\">Pictures need the stages: run <code>tc.optimize(..., report=True)</code> "
                     "or <code>carve opt ... --report report.html</code>.</p>\n")
    for index, line in enumerate(report):
        before, after = (stages[index].graph, stages[index + 1].graph) if stages else (None, None)
        parts.append(_pass_section(index, line, before, after))
    parts.append("</body></html>\n")
    return "".join(parts)


def _rows(report: Sequence[Any], stages: list[Any]) -> list[_Row]:
    if stages:
        rows = [_Row(s.name, s.params, s.macs, s.bytes, s.latency_ms, s.max_error) for s in stages]
    else:
        rows = [_Row("input", report[0].params[0], report[0].macs[0])] + \
            [_Row(line.spec, line.params[1], line.macs[1], max_error=line.max_error) for line in report]
    for row, line in zip(rows[1:], report):
        row.peak_memory = getattr(line, "peak_memory", None)
        row.bytes_read, row.bytes_written = getattr(line, "bytes_read", None), getattr(line, "bytes_written", None)
    return rows


def _pipeline(report: Sequence[Any]) -> str:
    items = "".join(f"<li class=\"{'changed' if line.changed else 'unchanged'}\">{html.escape(line.spec)}</li>"
                    for line in report)
    return f"<h2>Pipeline</h2>\n<ol class=\"pipeline\">{items}</ol>\n"


def _stage_table(rows: list[_Row]) -> str:
    header = "<tr><th>stage</th><th>parameters</th><th>MACs / item</th><th>bytes moved</th><th>latency ms</th>" \
             "<th>max |Δ| vs run input</th><th>pass peak RSS MiB</th><th>weights read / written MiB</th></tr>"
    body = "".join(f"<tr><td>{html.escape(r.name)}</td><td>{r.params:,}</td><td>{r.macs:,}</td>"
                   f"<td>{_maybe(r.bytes, '{:,}')}</td><td>{_maybe(r.latency_ms, '{:.2f}')}</td>"
                   f"<td>{_maybe(r.max_error, '{:.2g}')}</td><td>{_maybe(_mib(r.peak_memory), '{:.1f}')}</td>"
                   f"<td>{_read_written(r)}</td></tr>" for r in rows)
    return f"<h2>Stages</h2>\n<table class=\"stages\">{header}{body}</table>\n"


def _maybe(value: float | None, form: str) -> str:
    return "–" if value is None else form.format(value)


def _mib(count: int | None) -> float | None:
    return None if count is None else count / 2**20


def _read_written(row: _Row) -> str:
    if row.bytes_read is None or row.bytes_written is None:
        return "–"
    return f"{row.bytes_read / 2**20:.1f} / {row.bytes_written / 2**20:.1f}"


def _legend() -> str:
    spans = "".join(f"<span style=\"background:{colour}\">{family}</span>" for family, colour in COLOURS.items())
    return (f"<p class=\"legend\">op families: {spans} — weights are small grey boxes; dashed blue wires are "
            f"residual/skip connections; red dashed boxes were removed by the pass, green ones added; red wire labels "
            f"show changed axes (before → after).</p>\n")


# ---- charts -------------------------------------------------------------------------------------
def _charts(report: Sequence[Any], rows: list[_Row]) -> str:
    charts = [_chart_svg("cost", _cost_chart, rows)]
    if all(r.latency_ms is not None for r in rows):
        charts.append(_chart_svg("latency", _latency_chart, rows))
    if any(r.max_error is not None for r in rows):
        charts.append(_chart_svg("error", _error_chart, rows))
    for index, line in enumerate(report):
        sensitivity = _sensitivity(line.stats.get("layers"))
        if sensitivity:
            charts.append(_chart_svg(f"sensitivity-{index}", _sensitivity_chart, (line.spec, *sensitivity)))
    return "<h2>Charts</h2>\n<div class=\"charts\">" + "".join(charts) + "</div>\n"


def _chart_svg(name: str, plot: Any, data: Any) -> str:
    """Draw with matplotlib (Agg, text kept as text) and return the inline, id-scoped <svg> in a <figure>."""
    try:
        import matplotlib
    except ImportError as e:
        raise CarveError("the report's charts need matplotlib", hint=INSTALL_HINT) from e
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": name, "font.size": 9}):
        figure = plot(plt, data)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", bbox_inches="tight")
        plt.close(figure)
    return f"<figure class=\"chart\" id=\"chart-{name}\">{_scoped(inline_svg(buffer.getvalue()), name)}</figure>"


def _scoped(svg: str, prefix: str) -> str:
    """Prefix every id (and reference to one) so several inline SVGs share one page without clashes."""
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", svg)
    return re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', svg)


def _short(names: list[str], width: int = 22) -> list[str]:
    return [n if len(n) <= width else n[:width - 1] + "…" for n in names]


def _cost_chart(plt: Any, rows: list[_Row]) -> Any:
    series = [("parameters", [r.params for r in rows]), ("MACs / item", [r.macs for r in rows])]
    if all(r.bytes is not None for r in rows):
        series.append(("bytes moved", [r.bytes for r in rows]))
    figure, axes = plt.subplots(1, len(series), figsize=(3.2 * len(series), 2.8))
    for ax, (label, values) in zip(axes, series):
        _bars(ax, [r.name for r in rows], values, "#2b6cb0", label, "stage")
    figure.suptitle("cost per stage")
    return figure


def _latency_chart(plt: Any, rows: list[_Row]) -> Any:
    figure, ax = plt.subplots(figsize=(4, 2.8))
    _bars(ax, [r.name for r in rows], [r.latency_ms for r in rows], "#e6862e", "latency (ms)", "stage")
    ax.set_title("measured latency (PyTorch, best of 5)")
    return figure


def _error_chart(plt: Any, rows: list[_Row]) -> Any:
    figure, ax = plt.subplots(figsize=(4, 2.8))
    values = [r.max_error or 0.0 for r in rows[1:]]
    _bars(ax, [r.name for r in rows[1:]], values, "#d62728", "max |output change|", "after pass")
    if any(v > 0 for v in values):
        ax.set_yscale("symlog", linthresh=1e-7)
    ax.set_title("output error vs the input of the run")
    return figure


def _bars(ax: Any, names: list[str], values: list[float], color: str, ylabel: str, xlabel: str) -> None:
    """One bar per stage, its name under it."""
    ax.bar(range(len(values)), values, color=color)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    ax.set_xticks(range(len(values)), _short(names), rotation=60, ha="right", fontsize=7)


def _sensitivity(layers: Any) -> tuple[str, list[str], list[float]] | None:
    """(column, layer names, values) of the first error-like float column of a pass's per-layer rows."""
    rows = _layer_rows(layers)
    columns = [c for c in dict.fromkeys(k for row in rows for k in row) if any(w in c for w in ERROR_WORDS)]
    for column in columns:
        pairs = [(str(row.get("layer", "?")), row[column]) for row in rows if isinstance(row.get(column), float)]
        if pairs:
            return column, [name for name, _ in pairs], [value for _, value in pairs]
    return None


def _sensitivity_chart(plt: Any, data: tuple[str, str, list[str], list[float]]) -> Any:
    spec, column, names, values = data
    figure, ax = plt.subplots(figsize=(5, 0.6 + 0.22 * len(names)))
    ax.barh(range(len(names)), values, color="#8c564b")
    ax.set_yticks(range(len(names)), _short(names, 32), fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(column)
    ax.set_ylabel("layer")
    ax.set_title(f"per-layer sensitivity: {spec}")
    return figure


# ---- per pass -----------------------------------------------------------------------------------
def _pass_section(index: int, line: Any, before: Graph | None, after: Graph | None) -> str:
    stats = ", ".join(f"{html.escape(str(k).replace('_', ' '))}: {html.escape(_cell(v))}"
                      for k, v in line.stats.items() if k not in SHOWN_ELSEWHERE and v not in (None, {}, [], ""))
    parts = [f"<section class=\"pass\" id=\"pass-{index}\"><h2>{index + 1}. {html.escape(line.spec)}</h2>\n",
             f"<p>{'changed the graph' if line.changed else 'no change'}; nodes {_arrow(line.nodes)}, "
             f"parameters {_arrow(line.params)}, MACs {_arrow(line.macs)}, {line.seconds * 1e3:.1f} ms"
             f"{'; ' + stats if stats else ''}</p>\n"]
    if line.changed and before is not None and after is not None:
        parts.append(_pictures(index, before, after))
    parts.append(_layers_table(line.stats.get("layers")))
    parts.append("</section>\n")
    return "".join(parts)


def _pictures(index: int, before: Graph, after: Graph) -> str:
    removed, added, wires = diff(before, after)
    pictures = []
    for side, graph, marks in (("before", before, Marks(removed=removed)),
                               ("after", after, Marks(added=added, wires=wires))):
        svg = _scoped(inline_svg(render_svg(to_dot(graph, marks=marks))), f"p{index}-{side}")
        pictures.append(f"<figure class=\"picture {side}\"><figcaption>{side}</figcaption>{svg}</figure>")
    return "<div class=\"pictures\">" + "".join(pictures) + "</div>\n"


def diff(before: Graph, after: Graph) -> tuple[frozenset[str], frozenset[str], dict[str, str]]:
    """Removed node keys (in `before`), added node keys (in `after`), and changed wires: value name ->
    `batch × 768 → 384` for values whose type changed. Passes run on clones, so nodes match by output name + op."""
    old = {node_key(n): n.op for n in before.nodes}
    new = {node_key(n): n.op for n in after.nodes}
    removed = frozenset(k for k, op in old.items() if new.get(k) != op)
    added = frozenset(k for k, op in new.items() if old.get(k) != op)
    old_types = {v.name: v.type for v in before.values()}
    wires = {v.name: changed_label(old_types[v.name], v.type) for v in after.values()
             if v.name in old_types and old_types[v.name] != v.type}
    return removed, added, wires


def changed_label(old: Any, new: Any) -> str:
    """Axes before -> after, only the changed ones with an arrow: `batch × 768 → 384`."""
    if len(old.shape) != len(new.shape):
        return f"{' × '.join(map(str, old.shape))} → {' × '.join(map(str, new.shape))}"
    axes = " × ".join(str(a) if a == b else f"{a} → {b}" for a, b in zip(old.shape, new.shape))
    return axes if old.dtype == new.dtype else f"{axes} {old.dtype} → {new.dtype}"


def _layer_rows(layers: Any) -> list[dict]:
    if not layers:
        return []
    return [{"layer": name, **row} for name, row in layers.items()] if isinstance(layers, dict) else list(layers)


def _layers_table(layers: Any) -> str:
    rows = _layer_rows(layers)
    if not rows:
        return ""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    header = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for row in rows)
    return f"<table class=\"layers\"><tr>{header}</tr>{body}</table>\n"


def _cell(value: object) -> str:
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return _arrow(tuple(value))
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _arrow(pair: tuple) -> str:
    before, after = pair
    return f"{before:,}" if before == after else f"{before:,} → {after:,}"


def graph_html(graph: Graph, svg: str) -> str:
    """A one-picture page (`carve show --html`): the graph's SVG and the colour legend."""
    title = html.escape(f"@{graph.name}")
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n{_legend()}"
            f"<figure class=\"picture\">{inline_svg(svg)}</figure>\n</body></html>\n")
