"""The import layers of torchcarve: ir < opset < frontends, backends, analysis, draw < passes < api < cli.

A module imports only its own layer or lower ones (imports under `if TYPE_CHECKING:` are annotations, not
imports, and are skipped), and module-level imports form no cycle. Checked on the source, by AST."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "torchcarve"
# first package part below torchcarve -> layer; utilities every layer may use are layer 0
LAYERS = {"errors": 0, "progress": 0, "fileio": 0, "ir": 1, "opset": 2, "frontends": 3, "backends": 3,
          "analysis": 3, "draw": 3, "passes": 4, "tune": 5, "api": 5, "__init__": 5, "cli": 6, "__main__": 6}
# modules of one layer that may not import each other (siblings)
SIBLINGS = {"frontends", "backends", "analysis", "draw"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every torchcarve import in `path`."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] == "torchcarve":
                    names = [f"{base}.{a.name}" for a in child.names]
                    found.extend((n if _exists(n) else base, top) for n in names)
            elif isinstance(child, ast.Import):
                found.extend((a.name, top) for a in child.names if a.name.split(".")[0] == "torchcarve")
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, top and not nested)

    visit(ast.parse(path.read_text()), True)
    return found


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _layer(module: str) -> tuple[int, str]:
    part = module.split(".")[1] if "." in module else "__init__"
    return LAYERS[part], part


SOURCES = sorted(PACKAGE.rglob("*.py"))
GRAPH = {_module_name(p): _imports(p) for p in SOURCES}


def test_every_module_has_a_layer():
    assert {m.split(".")[1] for m in GRAPH if "." in m} <= set(LAYERS)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_a_higher_layer_or_a_sibling(module):
    level, part = _layer(module)
    bad = []
    for imported, _ in GRAPH[module]:
        other_level, other_part = _layer(imported)
        if other_level > level or (part in SIBLINGS and other_part in SIBLINGS and other_part != part):
            bad.append(imported)
    assert bad == [], f"{module} imports {bad} (layers: ir < opset < frontends, backends, analysis < passes < api < cli)"


def test_module_level_imports_have_no_cycle():
    edges = {m: {i for i, top in imports if top and i in GRAPH and i != m} for m, imports in GRAPH.items()}
    # a package importing its own submodules is how packages compose; its submodules must not import it back
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(edges[module]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, path + [nxt])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])
    assert cycles == []


def test_tests_never_import_benchmarks():
    """Shared harnesses live in tests/ (benchmarks import them), never the other way round."""
    tests = Path(__file__).resolve().parent
    offenders = [str(p.relative_to(tests)) for p in tests.rglob("*.py") if _loads_benchmarks(p)]
    assert offenders == []


def _loads_benchmarks(path: Path) -> bool:
    """An import of `benchmarks`, or a file loaded by path from the benchmarks folder."""
    tree = ast.parse(path.read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    by_path = "benchmarks" in strings and any(m.startswith("importlib") for m in modules)
    return by_path or any(m.split(".")[0] == "benchmarks" for m in modules)
