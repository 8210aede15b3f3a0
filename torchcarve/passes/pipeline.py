"""Pipeline strings, as in MLIR/xDSL: `fuse,prune{ratio=0.5,criterion=l2},dce` -> a list of passes.

Grammar: pipeline := item (',' item)* ; item := NAME ['{' NAME '=' value (',' ...)* '}'] ;
value := '[' [value (',' value)*] ']' | "quoted" | bare text. Named pipelines (ALIASES) expand
in place. Every error is one PipelineError giving the column and the valid names.
"""
from __future__ import annotations

import json
import re
from typing import Any

from ..errors import PipelineError
from .base import PASSES, OptionError, Pass, convert_option, option_fields, type_text

# named pipelines: an alias stands for these passes, in this order
ALIASES: dict[str, str] = {
    "cleanup": "dce,cse,fold-constants,simplify",
    "fuse": "simplify,fold-constants,fold-bn,fold-affine,reparam,merge-linear,fuse-attention,cse,dce",
}

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
BARE_RE = re.compile(r"[^,{}\[\]=\"\s]+")


def parse_pipeline(text: str) -> list[Pass]:
    """The passes a pipeline string names, options type-checked; aliases expanded."""
    return _Parser(text).pipeline()


def pass_help(cls: type[Pass]) -> str:
    """`prune{ratio: float = 0.5, ...}` — the options of a pass, for errors and `carve passes`."""
    options = ", ".join(f"{name.replace('_', '-')}: {type_text(tp)} = {default!r}"
                        for name, tp, default in option_fields(cls))
    return cls.name + (f"{{{options}}}" if options else "")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str, hint: str = "", at: int | None = None) -> PipelineError:
        column = (self.pos if at is None else at) + 1
        return PipelineError(f"pipeline {self.text!r}, column {column}: {message}", hint=hint)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            found = repr(self.peek()) if self.peek() else "the end"
            raise self.error(f"expected '{char}', found {found}")
        self.pos += 1

    def name(self, what: str) -> tuple[str, int]:
        self.skip_space()
        match = NAME_RE.match(self.text, self.pos)
        if not match:
            raise self.error(f"expected a {what} name")
        self.pos = match.end()
        return match.group(), match.start()

    def pipeline(self) -> list[Pass]:
        if not self.text.strip():
            return []
        passes = self.item()
        while self.peek() == ",":
            self.pos += 1
            passes += self.item()
        if self.peek():
            raise self.error(f"unexpected {self.peek()!r}", hint="separate passes with ',' and options with '{k=v}'")
        return passes

    def item(self) -> list[Pass]:
        name, start = self.name("pass")
        options: dict[str, tuple[Any, int]] = {}
        if self.peek() == "{":
            self.pos += 1
            options = self.options()
        if name in ALIASES:
            if options:
                raise self.error(f"'{name}' is a named pipeline ({ALIASES[name]}) and takes no options", at=start)
            return parse_pipeline(ALIASES[name])
        cls = PASSES.get(name)
        if cls is None:
            valid = ", ".join(sorted([*PASSES, *ALIASES]))
            raise self.error(f"unknown pass '{name}'", hint=f"valid passes: {valid}", at=start)
        return [self.build(cls, options)]

    def options(self) -> dict[str, tuple[Any, int]]:
        options: dict[str, tuple[Any, int]] = {}
        opened = self.pos - 1
        while self.peek() != "}":
            if not self.peek():
                raise self.error(f"unbalanced braces: the '{{' at column {opened + 1} is never closed")
            if options:
                self.expect(",")
            key, start = self.name("option")
            self.expect("=")
            options[key] = (self.value(), start)
        self.pos += 1
        return options

    def value(self) -> Any:
        char = self.peek()
        if char == "[":
            self.pos += 1
            items: list[Any] = []
            while self.peek() != "]":
                if items:
                    self.expect(",")
                items.append(self.value())
            self.pos += 1
            return items
        if char == '"':
            return self.quoted()
        match = BARE_RE.match(self.text, self.pos)
        if not match:
            raise self.error("expected an option value" + (" (unbalanced braces?)" if not char else ""))
        self.pos = match.end()
        return match.group()

    def quoted(self) -> str:
        end = self.pos + 1
        while end < len(self.text) and self.text[end] != '"':
            end += 2 if self.text[end] == "\\" else 1
        if end >= len(self.text):
            raise self.error("unterminated string")
        text, self.pos = self.text[self.pos:end + 1], end + 1
        return json.loads(text)

    def build(self, cls: type[Pass], options: dict[str, tuple[Any, int]]) -> Pass:
        fields = {name: tp for name, tp, _ in option_fields(cls)}
        values: dict[str, Any] = {}
        for key, (raw, start) in options.items():
            field_name = key.replace("-", "_")
            if field_name not in fields:
                valid = ", ".join(f.replace("_", "-") for f in fields) or "none"
                raise self.error(f"pass '{cls.name}' has no option '{key}'", hint=f"valid options: {valid}", at=start)
            try:
                values[field_name] = convert_option(raw, fields[field_name])
            except OptionError as e:
                raise self.error(f"option '{key}' of '{cls.name}' {e}", hint=f"usage: {pass_help(cls)}", at=start) from None
        try:
            return cls(**values)
        except (ValueError, TypeError) as e:
            raise self.error(f"bad options for '{cls.name}': {e}", hint=f"usage: {pass_help(cls)}") from None
