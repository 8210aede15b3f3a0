"""Names: identifiers derived from arbitrary names, and the first free variant of a name."""
from __future__ import annotations

import re
from typing import Container


def first_free(base: str, taken: Container[str], counters: dict[str, int] | None = None) -> str:
    """`base`, or `base_1`, `base_2`, ... whichever is not in `taken`.

    counters (base -> last suffix handed out) lets the search start where the previous one for the same
    base ended, so naming n values alike costs O(n), not O(n^2)."""
    if base not in taken:
        return base
    k = counters.get(base, 0) if counters is not None else 0
    name = base
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    if counters is not None:
        counters[base] = k
    return name


def sanitize_identifier(name: str) -> str:
    """A Python/IR identifier derived from any name ("layer1.0.conv" -> "layer1_0_conv")."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or "v"
    return name if not name[0].isdigit() else f"v{name}"
