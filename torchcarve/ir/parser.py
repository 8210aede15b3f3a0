"""Parser for the text form. Errors give line:col and what was expected there."""
from __future__ import annotations

import gc
import json
import re
from contextlib import contextmanager
from typing import Any, Iterator, NamedTuple

from ..errors import CarveError, ParseError, VerifyError
from .graph import Graph
from .node import Node
from .ops import get_op
from .params import ParamStore
from .types import DIM_RE, DTYPES, SymSize, TensorType, size_attr

TOKEN_RE = re.compile(r"""
    (?P<ws>[ \t\r\n]+|//[^\n]*)
  | (?P<value>%(?:[A-Za-z_][A-Za-z0-9_]*|"(?:[^"\\\n]|\\.)*"))
  | (?P<symbol>@(?:[A-Za-z_][A-Za-z0-9_]*|"(?:[^"\\\n]|\\.)*"))
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<number>-?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+)|-inf)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<arrow>->)
  | (?P<punct>[(){}\[\],:=*])
  | (?P<error>.)
""", re.VERBOSE)
KEYWORDS = {"none": None, "true": True, "false": False, "inf": float("inf"), "nan": float("nan")}
MAX_NUMBER_DIGITS = 40


class Token(NamedTuple):
    kind: str
    text: str
    line: int
    col: int


def tokenize(text: str) -> Iterator[Token]:
    line, line_start = 1, 0
    for match in TOKEN_RE.finditer(text):
        kind, start = match.lastgroup or "", match.start()
        if kind == "error":
            raise ParseError(f"{line}:{start - line_start + 1}: unexpected character {match.group()!r}")
        if kind != "ws":
            yield Token(kind, match.group(), line, start - line_start + 1)
            continue
        newlines = match.group().count("\n")  # only whitespace spans lines
        if newlines:
            line += newlines
            line_start = start + match.group().rindex("\n") + 1
    yield Token("eof", "", line, len(text) - line_start + 1)


class Parser:
    """Recursive descent over the token stream; builds the Graph as it goes."""

    def __init__(self, text: str, params: ParamStore | None) -> None:
        self.tokens = list(tokenize(text))
        self.pos = 0
        self.params = params
        self.locations: dict[Any, Token] = {}  # node -> its op token, for verifier errors

    # ---- token helpers -----------------------------------------------------------------
    @property
    def peek(self) -> Token:
        return self.tokens[self.pos]

    def error(self, expected: str, token: Token | None = None) -> ParseError:
        token = token or self.peek
        found = repr(token.text) if token.kind != "eof" else "end of input"
        return ParseError(f"{token.line}:{token.col}: expected {expected}, found {found}")

    def take(self, kind: str, text: str | None = None, expected: str | None = None) -> Token:
        token = self.peek
        if token.kind != kind or (text is not None and token.text != text):
            raise self.error(expected or (repr(text) if text else kind))
        self.pos += 1
        return token

    def accept(self, kind: str, text: str | None = None) -> Token | None:
        token = self.peek
        if token.kind == kind and (text is None or token.text == text):
            self.pos += 1
            return token
        return None

    def separated(self, parse_item: Any, close: str) -> list[Any]:
        """Items separated by commas up to (and consuming) the `close` punctuation."""
        items: list[Any] = []
        if self.accept("punct", close):
            return items
        while True:
            items.append(parse_item())
            if self.accept("punct", close):
                return items
            self.take("punct", ",", expected=f"',' or '{close}'")

    # ---- grammar -----------------------------------------------------------------------
    def parse_graph(self) -> Graph:
        self.take("ident", "graph", expected="'graph'")
        name = self.name_of(self.take("symbol", expected="graph name '@name'"))
        graph = Graph(name, self.params if self.params is not None else ParamStore())
        graph.name = name
        self.values: dict[str, Any] = {}
        self.take("punct", "(")
        arguments = self.separated(self.parse_argument, ")")
        for value_name, type, _ in arguments:
            graph.inputs.append(self.define(graph, value_name, type, None))
        self.take("arrow", expected="'->'")
        self.take("punct", "(")
        results = self.separated(self.parse_result, ")")
        result_types = [type for type, _ in results]
        self.take("punct", "{")
        while not self.accept("ident", "return"):
            self.parse_statement(graph)
        return_token = self.tokens[self.pos - 1]
        outputs = [] if self.peek.text == "}" else self.separated_until_brace()
        self.take("punct", "}")
        self.take("eof", expected="end of input after '}'")
        if [v.type for v in outputs] != result_types:
            raise ParseError(f"{return_token.line}:{return_token.col}: return types ({', '.join(str(v.type) for v in outputs)}) do not match the "
                             f"signature ({', '.join(map(str, result_types))})")
        graph.outputs = outputs
        if any(name for *_, name in arguments):
            graph.input_names = [name or value_name for value_name, _, name in arguments]
        if any(name for _, name in results):
            graph.output_names = [name or value.name for (_, name), value in zip(results, outputs)]
        return graph

    def separated_until_brace(self) -> list[Any]:
        values = [self.use_value()]
        while self.accept("punct", ","):
            values.append(self.use_value())
        return values

    def parse_argument(self) -> tuple[str, TensorType, str]:
        """`%name: type` and, when the external name differs, `"external name"`."""
        name = self.name_of(self.take("value", expected="argument '%name'"))
        self.take("punct", ":")
        type, external = self.parse_result()
        return name, type, external

    def parse_result(self) -> tuple[TensorType, str]:
        """A signature type and its optional external name ("" when absent)."""
        type = self.parse_type()
        return type, self.parse_string() if self.peek.kind == "string" else ""

    def parse_type(self) -> TensorType:
        token = self.take("ident", expected="a type like f32[1,3]")
        if token.text not in DTYPES:
            raise self.error(f"a dtype ({', '.join(DTYPES)})", token)
        self.take("punct", "[")
        dims = self.separated(self.parse_dim, "]")
        return TensorType(tuple(dims), token.text)

    def parse_dim(self) -> int | str:
        parts = [self.parse_dim_factor()]
        while self.accept("punct", "*"):
            parts.append(self.parse_dim_factor())
        text = "*".join(parts)
        if not DIM_RE.fullmatch(text):
            raise ParseError(f"{self.peek.line}:{self.peek.col}: bad dim {text!r}")
        return int(text) if text.isdigit() else text

    def parse_dim_factor(self) -> str:
        token = self.peek
        if token.kind == "number" and token.text.isdigit() and len(token.text) <= 18:
            self.pos += 1
            return token.text
        if token.kind == "ident" and "." not in token.text:
            self.pos += 1
            return token.text
        raise self.error("a dim (a non-negative integer or a symbol)")

    def parse_statement(self, graph: Graph) -> None:
        names = [self.name_of(self.take("value", expected="'%name =' or 'return'"))]
        while self.accept("punct", ","):
            names.append(self.name_of(self.take("value", expected="'%name'")))
        self.take("punct", "=")
        op_token = self.peek
        op = self.parse_name("an op name")
        if op == "param":
            self.parse_param(graph, names, op_token)
            return
        try:
            opdef = get_op(op)
        except CarveError as e:
            raise ParseError(f"{op_token.line}:{op_token.col}: {e.args[0]}", hint=e.hint) from None
        self.take("punct", "(")
        inputs = self.separated(self.use_value, ")")
        attrs = self.parse_attrs() if self.peek.text == "{" else {}
        unknown = sorted(set(attrs) - opdef.attrs) if opdef.attrs is not None else []
        if unknown:
            raise ParseError(f"{op_token.line}:{op_token.col}: {opdef.name} has no attribute "
                             f"{', '.join(unknown)}; valid: {', '.join(sorted(opdef.attrs or ()))}")
        self.take("punct", ":")
        types = [self.parse_type()]
        while self.accept("punct", ","):
            types.append(self.parse_type())
        scope = self.parse_loc()
        self.add(graph, op_token, opdef.name, inputs, attrs, names, types, scope)

    def parse_param(self, graph: Graph, names: list[str], op_token: Token) -> None:
        param_name = self.parse_string()
        self.take("punct", ":")
        self.add(graph, op_token, "param", [], {"name": param_name}, names, [self.parse_type()], "")

    def parse_loc(self) -> str:
        if not self.accept("ident", "loc"):
            return ""
        self.take("punct", "(")
        scope = self.parse_string()
        self.take("punct", ")")
        return scope

    def add(self, graph: Graph, token: Token, op: str, inputs: list, attrs: dict, names: list[str],
            types: list[TensorType], scope: str) -> None:
        if len(names) != len(types):
            raise ParseError(f"{token.line}:{token.col}: {len(names)} results but {len(types)} types")
        for name in names:
            self.check_new(name, token)
        node = Node(op, inputs, attrs, types, names, scope)  # names exactly as written: no renaming
        graph._insert(node, None, None)
        graph._names.update(names)
        self.locations[node] = token
        for value in node.outputs:
            self.values[value.name] = value

    def check_new(self, name: str, token: Token) -> None:
        if name in self.values:
            raise ParseError(f"{token.line}:{token.col}: %{name} is defined twice (SSA)")

    def define(self, graph: Graph, name: str, type: TensorType, token: Token | None) -> Any:
        from .value import Value

        self.check_new(name, token or self.peek)
        value = Value(type, name)
        value.graph = graph
        graph._names.add(name)
        self.values[name] = value
        return value

    def use_value(self) -> Any:
        token = self.take("value", expected="a value '%name'")
        name = self.name_of(token)
        if name not in self.values:
            raise ParseError(f"{token.line}:{token.col}: {token.text} is used before it is defined")
        return self.values[name]

    def parse_attrs(self) -> dict[str, Any]:
        self.take("punct", "{")
        attrs: dict[str, Any] = {}
        for key, value in self.separated(self.parse_attr_entry, "}"):
            if key in attrs:
                raise self.error(f"a new attribute name (duplicate '{key}')")
            attrs[key] = value
        return attrs

    def parse_attr_entry(self) -> tuple[str, Any]:
        key = self.parse_name("an attribute name")
        self.take("punct", "=")
        return key, self.parse_attr_value()

    def parse_attr_value(self) -> Any:
        token = self.peek
        if token.kind == "string":
            return self.parse_string()
        if token.kind == "number":
            self.pos += 1
            return _number(token)
        if token.kind == "ident" and token.text in KEYWORDS:
            self.pos += 1
            return KEYWORDS[token.text]
        if token.kind == "ident" and token.text in DTYPES:
            self.pos += 1
            return DTYPES[token.text]
        if self.accept("punct", "["):
            return self.separated(self.parse_attr_value, "]")
        if token.kind == "ident" and "." not in token.text:
            return self.parse_sym_size()
        raise self.error("an attribute value (number, string, true/false/none, dtype, symbolic size or [list])")

    def parse_sym_size(self) -> SymSize | int:
        """A symbolic size attribute: a product of symbols and ints (`batch*12`)."""
        return size_attr(self.parse_dim())

    def parse_string(self) -> str:
        token = self.take("string", expected="a string")
        return _unquote(token, token.text)

    def parse_name(self, expected: str) -> str:
        """An op name or attribute key: a plain dotted identifier or a quoted string."""
        if self.peek.kind == "string":
            return self.parse_string()
        return self.take("ident", expected=expected).text

    def name_of(self, token: Token) -> str:
        """The name in a `%name` / `@name` token; quoted names are unescaped and must not be empty."""
        text = token.text[1:]
        if not text.startswith('"'):
            return text
        name = _unquote(token, text)
        if not name:
            raise ParseError(f"{token.line}:{token.col}: empty name {token.text}")
        return name


def _unquote(token: Token, literal: str) -> str:
    try:
        return json.loads(literal)
    except ValueError:
        raise ParseError(f"{token.line}:{token.col}: bad string escape in {literal}") from None


def _number(token: Token) -> int | float:
    text = token.text
    if len(text) > MAX_NUMBER_DIGITS:
        raise ParseError(f"{token.line}:{token.col}: number too long")
    if text == "-inf":
        return float("-inf")
    return float(text) if any(c in text for c in ".eE") else int(text)


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse(text: str, params: ParamStore | None = None, verify: bool = True) -> Graph:
    """Parse the text form. With `params`, param nodes must name tensors in it."""
    if not isinstance(text, str):
        raise ParseError(f"expected IR text (str), got {type(text).__name__}")
    with _gc_paused():  # tens of thousands of short-lived tokens: collections would make parsing superlinear
        parser = Parser(text, params)
        graph = parser.parse_graph()
    if not verify:
        return graph
    from .verifier import verify as verify_graph

    try:
        verify_graph(graph, check_params=params is not None)
    except VerifyError as e:
        token = parser.locations.get(getattr(e, "node", None))
        if token is None:
            raise
        raise VerifyError(f"{token.line}:{token.col}: {e.args[0]}", hint=e.hint) from e
    return graph
