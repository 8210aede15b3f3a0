"""Pass, PassResult, PassContext and the pass registry.

A pass is a frozen dataclass whose fields are its options, registered once by name:

    @register_pass("prune")
    @dataclass(frozen=True)
    class Prune(Pass):
        \"\"\"Structured pruning by dependency groups (DepGraph, Fang et al. 2023).\"\"\"
        ratio: float = 0.5

        def run(self, graph, ctx) -> PassResult: ...

`run` edits `graph` in place (the PassManager hands it a copy) and returns what changed.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch

from ..errors import CarveError
from ..ir import Graph


@dataclass(frozen=True)
class PassResult:
    """Whether the graph changed, and numbers for the report (e.g. {"removed": 3})."""

    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassContext:
    """What a pass may need beyond the graph: data, and a way to report progress."""

    calibration: Sequence[tuple[torch.Tensor, ...]] | None = None
    seed: int = 0
    max_memory: int | None = None    # bytes of weights to keep resident (the graph's ParamStore budget); None: no
                                     # limit. Under a budget, calibration runs block by block (passes/sequential.py)
    log: Callable[[str], None] = lambda message: None

    def require_calibration(self, spec: str) -> Sequence[tuple[torch.Tensor, ...]]:
        if not self.calibration:
            raise CarveError(f"{spec} needs calibration data",
                             hint="pass calibration=[(x,), ...] to tc.optimize / tc.compile, or --calibration to carve opt")
        return self.calibration


class Pass:
    """Base of all passes; subclasses are frozen dataclasses registered with @register_pass."""

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = False  # True: outputs must not change (check-numerics enforces it)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise NotImplementedError(f"pass {self.name} does not implement run()")

    def spec(self) -> str:
        """The pipeline text that parses back to this pass: `prune{ratio=0.5}`."""
        options = [f"{f.name.replace('_', '-')}={option_text(getattr(self, f.name))}"
                   for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]
        return self.name + ("{" + ",".join(options) + "}" if options else "")

    def __str__(self) -> str:
        return self.spec()


SPECIAL = set(',{}[]=" ')


def option_text(value: Any) -> str:
    """An option value as pipeline text: 0.5, true, none, [a,b], \"quoted text\"."""
    if isinstance(value, str):
        plain = value and value != "none" and not SPECIAL & set(value)
        return value if plain else json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(option_text(v) for v in value) + "]"
    if value is None:
        return "none"
    return str(value)


PASSES: dict[str, type[Pass]] = {}


def register_pass(name: str) -> Callable[[type[Pass]], type[Pass]]:
    """Class decorator: register a frozen-dataclass pass under its kebab-case `name`."""
    def decorate(cls: type[Pass]) -> type[Pass]:
        if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:
            raise TypeError(f"pass {cls.__name__} must be a @dataclass(frozen=True)")
        if name in PASSES:
            raise TypeError(f"pass name '{name}' is registered twice ({PASSES[name].__name__}, {cls.__name__})")
        cls.name = name
        PASSES[name] = cls
        return cls
    return decorate


def option_fields(cls: type[Pass]) -> list[tuple[str, Any, Any]]:
    """(field name, resolved type, default) of every option of a pass class."""
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], f.default) for f in dataclasses.fields(cls)]


def type_text(tp: Any) -> str:
    """A readable type name for docs and errors: float, tuple[int, ...], str | None, l1 | l2."""
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(map(str, typing.get_args(tp)))
    return tp.__name__ if isinstance(tp, type) and not typing.get_args(tp) else str(tp).replace("typing.", "")


class OptionError(ValueError):
    """An option value that does not convert to its field's type."""


def convert_option(value: Any, tp: Any) -> Any:
    """Convert parsed option text (a str, or a list of them) to the field type `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value == "none" and type(None) in args:
            return None
        return _first_conversion(value, [a for a in args if a is not type(None)], tp)
    if origin is typing.Literal:
        if value not in [str(a) for a in args]:
            raise OptionError(f"expects one of {', '.join(map(str, args))}, got {value!r}")
        return next(a for a in args if str(a) == value)
    if origin is tuple:
        items = value if isinstance(value, list) else [value]
        item_types = [args[0]] * len(items) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_types) != len(items):
            raise OptionError(f"expects {len(item_types)} values, got {len(items)}")
        return tuple(convert_option(v, t) for v, t in zip(items, item_types))
    if isinstance(value, list):
        raise OptionError(f"expects {type_text(tp)}, got a list")
    return _convert_scalar(value, tp)


def _first_conversion(value: Any, candidates: list[Any], tp: Any) -> Any:
    for candidate in candidates:
        try:
            return convert_option(value, candidate)
        except OptionError:
            continue
    raise OptionError(f"expects {type_text(tp)}, got {value!r}")


BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _convert_scalar(text: str, tp: Any) -> Any:
    if tp is bool:
        if text.lower() not in BOOLS:
            raise OptionError(f"expects bool (true/false), got {text!r}")
        return BOOLS[text.lower()]
    if tp is str:
        return text
    try:
        return tp(text) if tp in (int, float) else _unsupported(tp)
    except ValueError:
        raise OptionError(f"expects {type_text(tp)}, got {text!r}") from None


def _unsupported(tp: Any) -> Any:
    raise OptionError(f"option type {type_text(tp)} is not supported (use int, float, bool, str, tuples, Optional)")
