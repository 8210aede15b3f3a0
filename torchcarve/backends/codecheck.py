"""Defence in depth for the PyTorch backend: generated source holds only what the generator emits.

The generator already routes every name through its Namespace and every value through a literal;
this check parses the finished source and refuses anything outside that small grammar (a docstring,
`import math`/`import torch`, the helper kernels it copied, one nn.Module class whose methods assign
calls of `torch.ops.*`, helpers and a few fixed torch functions to local names) before it is run
or written.
"""
from __future__ import annotations

import ast
import keyword
from typing import Iterable

import torch

from ..errors import CarveError

IMPORTS = frozenset({"math", "torch"})
FIXED_CALLS = frozenset({"torch.nn.Parameter", "torch.empty", "self.register_buffer", "super", "super().__init__"})
NON_FINITE = frozenset({"nan", "inf", "-inf"})
LITERAL_TYPES = (str, int, float, bool, type(None))
MODULE_ATTRIBUTES = frozenset(dir(torch.nn.Module()))
METHODS = ("__init__", "forward")


def check_generated(source: str, functions: Iterable[str] = ()) -> None:
    """Raise CarveError unless `source` is made only of the generator's constructs.

    functions: the sources of the helper functions the generator copied in; any other def is refused.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise CarveError(f"generated code does not compile: {e.msg} (line {e.lineno})") from e
    helpers = {ast.dump(fn): fn.name for fn in (ast.parse(text).body[0] for text in functions)}
    for index, statement in enumerate(tree.body):
        _check_top(statement, index, helpers)


def _refuse(node: ast.AST, why: str) -> CarveError:
    return CarveError(f"generated code refused: {why} at line {getattr(node, 'lineno', '?')}",
                      hint="a name or attribute in the graph is not safe to emit; please report this")


def _check_top(statement: ast.stmt, index: int, helpers: dict[str, str]) -> None:
    if isinstance(statement, ast.Expr) and index == 0 and _is_str(statement.value):
        return
    if isinstance(statement, ast.Import):
        if all(alias.name in IMPORTS and alias.asname is None for alias in statement.names):
            return
        raise _refuse(statement, "an import other than math/torch")
    if isinstance(statement, ast.FunctionDef):
        if ast.dump(statement) in helpers:
            return
        raise _refuse(statement, f"a function '{statement.name}' the generator did not copy")
    if isinstance(statement, ast.ClassDef):
        return _check_class(statement, set(helpers.values()))
    raise _refuse(statement, f"a top-level {type(statement).__name__}")


def _check_class(cls: ast.ClassDef, helpers: set[str]) -> None:
    if cls.decorator_list or cls.keywords or [_dotted(b) for b in cls.bases] != ["torch.nn.Module"]:
        raise _refuse(cls, "a class that is not a plain torch.nn.Module")
    if [getattr(m, "name", None) for m in cls.body] != list(METHODS) or not all(
            isinstance(m, ast.FunctionDef) for m in cls.body):
        raise _refuse(cls, "a class body other than __init__ and forward")
    for method in cls.body:
        _check_method(method, helpers)


def _check_method(method: ast.FunctionDef, helpers: set[str]) -> None:
    args = method.args
    plain = not (args.posonlyargs or args.vararg or args.kwonlyargs or args.kwarg or args.defaults
                 or method.decorator_list or method.returns or any(a.annotation for a in args.args))
    names = [a.arg for a in args.args]
    if not plain or names[:1] != ["self"]:
        raise _refuse(method, f"a {method.name} signature other than (self, inputs...)")
    readable = {"torch"} | helpers | set(names)
    for statement in method.body:
        _check_statement(statement, readable, helpers, in_init=method.name == "__init__")


def _check_statement(statement: ast.stmt, readable: set[str], helpers: set[str], in_init: bool) -> None:
    if isinstance(statement, ast.Pass):
        return
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
        return _check_call(statement.value, readable, helpers)
    if isinstance(statement, ast.Return) and statement.value is not None:
        return _check_expr(statement.value, readable, helpers)
    if isinstance(statement, ast.Assign) and len(statement.targets) == 1 and isinstance(statement.value, ast.Call):
        _check_call(statement.value, readable, helpers)
        readable.update(_targets(statement.targets[0], helpers, in_init))
        return
    if isinstance(statement, ast.Assign) and len(statement.targets) == 1 and _is_shape_read(statement.value, readable):
        readable.update(_targets(statement.targets[0], helpers, in_init))  # `batch = x.shape[0]`: a symbol's size
        return
    raise _refuse(statement, f"a {type(statement).__name__} statement")


def _targets(target: ast.expr, helpers: set[str], in_init: bool) -> list[str]:
    """The local names an assignment binds (self.<attr> only in __init__)."""
    if in_init and isinstance(target, ast.Attribute) and _dotted(target.value) == "self":
        if _plain(target.attr) and target.attr not in MODULE_ATTRIBUTES:
            return []
        raise _refuse(target, f"an assignment to self.{target.attr}")
    elements = target.elts if isinstance(target, ast.Tuple) else [target]
    names = [e.id for e in elements if isinstance(e, ast.Name)]
    if len(names) != len(elements) or any(not _plain(n) or n in helpers | {"self", "torch"} for n in names):
        raise _refuse(target, "an assignment target other than fresh local names")
    return names


def _check_call(call: ast.Call, readable: set[str], helpers: set[str]) -> None:
    target = _dotted(call.func)
    if target is None or not (target in FIXED_CALLS or target in helpers or target == "float" or _is_op(target)):
        raise _refuse(call, f"a call of {target or type(call.func).__name__}")
    if target == "float" and not (len(call.args) == 1 and not call.keywords and _is_str(call.args[0])
                                  and call.args[0].value in NON_FINITE):
        raise _refuse(call, "float() of anything but 'nan'/'inf'/'-inf'")
    for arg in call.args:
        _check_expr(arg, readable, helpers)
    for kw in call.keywords:
        if kw.arg is None:
            _check_splat(kw.value, readable, helpers)
        else:
            _check_expr(kw.value, readable, helpers)


def _check_splat(value: ast.expr, readable: set[str], helpers: set[str]) -> None:
    """`**{'key': literal}`: how keyword arguments whose names are not identifiers are passed."""
    if not isinstance(value, ast.Dict) or not all(k is not None and _is_str(k) for k in value.keys):
        raise _refuse(value, "a ** argument other than a dict with string keys")
    for item in value.values:
        _check_expr(item, readable, helpers)


def _check_expr(node: ast.expr, readable: set[str], helpers: set[str]) -> None:
    if isinstance(node, ast.Constant) and type(node.value) in LITERAL_TYPES:
        return
    if isinstance(node, ast.Name) and node.id in readable:
        return
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and type(node.operand.value) in (int, float):
        return
    if isinstance(node, ast.Attribute) and _is_weight_or_dtype(node):
        return
    if isinstance(node, (ast.List, ast.Tuple)):
        for element in node.elts:
            _check_expr(element, readable, helpers)
        return
    if isinstance(node, ast.Call):
        return _check_call(node, readable, helpers)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult) and _is_size_factor(node.left, readable) \
            and _is_size_factor(node.right, readable):
        return  # a symbolic size such as `batch * 12`
    raise _refuse(node, f"an expression {ast.unparse(node)[:60]!r}")


def _is_shape_read(node: ast.expr, readable: set[str]) -> bool:
    """`<readable name>.shape[<int>]`."""
    return (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "shape"
            and isinstance(node.value.value, ast.Name) and node.value.value.id in readable
            and isinstance(node.slice, ast.Constant) and type(node.slice.value) is int)


def _is_size_factor(node: ast.expr, readable: set[str]) -> bool:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return _is_size_factor(node.left, readable) and _is_size_factor(node.right, readable)
    return (isinstance(node, ast.Name) and node.id in readable) or (
        isinstance(node, ast.Constant) and type(node.value) is int)


def _is_weight_or_dtype(node: ast.Attribute) -> bool:
    """`self.<weight>` or `torch.<dtype>`."""
    root = _dotted(node.value)
    if root == "self":
        return _plain(node.attr) and node.attr not in MODULE_ATTRIBUTES
    return root == "torch" and _plain(node.attr) and isinstance(
        getattr(torch, node.attr, None), (torch.dtype, torch.memory_format))


def _is_op(target: str) -> bool:
    """`torch.ops.<namespace>.<op>.<overload>` naming a real op overload."""
    parts = target.split(".")
    if len(parts) != 5 or parts[:2] != ["torch", "ops"] or not (_plain(parts[2]) and _plain(parts[4])):
        return False
    try:
        overload = getattr(getattr(getattr(torch.ops, parts[2]), parts[3]), parts[4])
    except (AttributeError, RuntimeError):
        return False
    return isinstance(overload, torch._ops.OpOverload)


def _dotted(node: ast.expr) -> str | None:
    """`a.b.c` for a chain of names; `super()` for a bare super call; None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    if isinstance(node, ast.Call) and _dotted(node.func) == "super" and not node.args and not node.keywords:
        return "super()"
    return None


def _plain(name: str) -> bool:
    """An identifier that is not a keyword and not a dunder."""
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("__")


def _is_str(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is str
