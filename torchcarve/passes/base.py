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
    log: Callable[[str], None] = lambda message: None

    def require_calibration(self, spec: str) -> Sequence[tuple[torch.Tensor, ...]]:
        if not self.calibration:
            raise CarveError(f"{spec} needs calibration data",
                             hint="pass calibration=[(x,), ...] to tc.optimize / tc.compile, or --calibration to carve opt")
        return self.calibration


class Pass:
    """Base of all passes; subclasses are frozen dataclasses registered with @register_pass."""

    name: ClassVar[str] = ""

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise NotImplementedError(f"pass {self.name} does not implement run()")

    def spec(self) -> str:
        """The pipeline text that parses back to this pass: `prune{ratio=0.5}`."""
        options = [f"{f.name.replace('_', '-')}={_option_text(getattr(self, f.name))}"
                   for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]
        return self.name + ("{" + ",".join(options) + "}" if options else "")

    def __str__(self) -> str:
        return self.spec()


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_option_text(v) for v in value) + "]"
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
