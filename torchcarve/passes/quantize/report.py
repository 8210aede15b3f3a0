"""What the quantize pass reports: per layer its precision, weight-scale range, float outlier channels
and measured sensitivity; for the whole graph the bytes of its weights before and after."""
from __future__ import annotations

from typing import Any

from ...ir import Graph


def weight_bytes(graph: Graph) -> int:
    """Bytes of the params the graph reads (from their types: no weight is loaded)."""
    types = {node.attrs["name"]: node.output.type for node in graph.nodes if node.op == "param"}
    return sum(t.numel() * t.itemsize for t in types.values())


def layer_rows(graph: Graph, precision: dict[str, str], quantized: set[str], outliers: dict[str, int],
               sensitivity: dict[str, float]) -> dict[str, dict[str, Any]]:
    """One row per layer (`precision`: name -> its quantized form), the table `carve opt` prints."""
    rows = {}
    for name, form in precision.items():
        scale = graph.params.get(f"{name}.weight_scale") if name in quantized else None
        row: dict[str, Any] = {"precision": form if name in quantized else "float"}
        if scale is not None:
            row["weight scale"] = f"{float(scale.min()):.2e}..{float(scale.max()):.2e}"
        if outliers:
            row["outlier channels"] = outliers.get(name, 0)
        if name in sensitivity:
            row["error alone"] = sensitivity[name]
        rows[name] = row
    return rows


def byte_size(count: int) -> str:
    """Bytes in the largest unit that keeps a digit before the point: 912 B, 23.2 KiB, 86.1 MiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"
