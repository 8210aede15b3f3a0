"""The search space: which passes the tuner may add, and which of their options it varies.

The space is a table over the registered passes. Each knob names a pass option; its domain is read
from the option's type (`option_fields`): ALL takes every value of a Literal or bool option, a pair
of numbers is a range of an int or float option, a tuple of values is a subset of the choices.
A pipeline is `prefix, <stages that are on, in table order>, suffix`.
"""
from __future__ import annotations

import glob
import types
import typing
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import CarveError
from ..passes import PASSES
from ..passes.base import option_fields

ALL = "all"  # every value of a Literal / bool option


@dataclass(frozen=True)
class Stage:
    """One pass the tuner may add, with the options it varies (option name -> domain)."""

    pass_name: str
    knobs: dict[str, Any]


STAGES: tuple[Stage, ...] = (
    Stage("prune", {"ratio": (0.05, 0.5), "criterion": ("l1", "l2", "taylor"), "scope": ALL}),
    Stage("low-rank", {"method": ALL, "energy": (0.85, 0.995)}),
    Stage("quantize", {"mode": ALL, "dtype": ALL, "outliers": (0, 4)}),
)
PREFIX = "fuse"
SUFFIX = "dce"
FLOAT_LAYERS = 4  # the most sensitive layers the tuner may keep in float (quantize skip list)


class Suggest(Protocol):
    """What the space needs from a search trial (an optuna.Trial has these methods)."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_float(self, name: str, low: float, high: float) -> float: ...
    def suggest_int(self, name: str, low: int, high: int) -> int: ...


@dataclass(frozen=True)
class SearchSpace:
    """The stages, the pipeline around them, and the quantize layers ranked by sensitivity (most first)."""

    stages: tuple[Stage, ...] = STAGES
    prefix: str = PREFIX
    suffix: str = SUFFIX
    sensitive_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for stage in self.stages:
            domains(stage)  # an unknown pass, option or domain is an error now, not mid-search

    def pipeline(self, trial: Suggest) -> str:
        """Draw one pipeline from `trial`: each stage on or off, then its options."""
        specs = [self.prefix] if self.prefix else []
        for stage in self.stages:
            if not trial.suggest_categorical(f"use-{stage.pass_name}", (False, True)):
                continue
            options = {name: _draw(trial, f"{stage.pass_name}.{name}", domain)
                       for name, domain in domains(stage).items()}
            if stage.pass_name == "quantize" and self.sensitive_layers:
                kept = trial.suggest_int("quantize.float-layers", 0, min(FLOAT_LAYERS, len(self.sensitive_layers)))
                options["skip"] = tuple(glob.escape(name) for name in self.sensitive_layers[:kept])
            specs.append(PASSES[stage.pass_name](**options).spec())
        specs += [self.suffix] if self.suffix else []
        return ",".join(specs)

    def starting_points(self) -> list[dict[str, Any]]:
        """The prefix alone (always within a budget the original meets), then each stage alone at the
        pass's default options (where they lie in the space)."""
        points: list[dict[str, Any]] = [{f"use-{s.pass_name}": False for s in self.stages}]
        for stage in self.stages:
            point: dict[str, Any] = {f"use-{s.pass_name}": s is stage for s in self.stages}
            defaults = {name: default for name, _, default in option_fields(PASSES[stage.pass_name])}
            for name, domain in domains(stage).items():
                if _contains(domain, defaults[name]):
                    point[f"{stage.pass_name}.{name}"] = defaults[name]
            if stage.pass_name == "quantize" and self.sensitive_layers:
                point["quantize.float-layers"] = 0
            points.append(point)
        return points


def domains(stage: Stage) -> dict[str, tuple]:
    """Option field name -> ("choice", values) or ("int"|"float", low, high), checked against the pass."""
    if stage.pass_name not in PASSES:
        raise CarveError(f"tune: no pass named '{stage.pass_name}'", hint=f"registered passes: {', '.join(sorted(PASSES))}")
    types = {name: tp for name, tp, _ in option_fields(PASSES[stage.pass_name])}
    result = {}
    for option, domain in stage.knobs.items():
        field = option.replace("-", "_")
        if field not in types:
            raise CarveError(f"tune: {stage.pass_name} has no option '{option}'")
        result[field] = _domain(stage.pass_name, field, _plain(types[field]), domain)
    return result


def _plain(tp: Any) -> Any:
    """`float | None` -> float: the tuner always gives a value."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 else tp


def _domain(pass_name: str, field: str, tp: Any, domain: Any) -> tuple:
    choices = _choices(tp)
    if domain == ALL:
        if choices is None:
            raise CarveError(f"tune: {pass_name}.{field} is not a choice; give a (low, high) range")
        return ("choice", choices)
    if tp in (int, float) and len(domain) == 2:
        return (tp.__name__, tp(domain[0]), tp(domain[1]))
    if choices is None or not set(domain) <= set(choices):
        raise CarveError(f"tune: {pass_name}.{field}: {domain!r} is not a subset of {choices}")
    return ("choice", tuple(domain))


def _choices(tp: Any) -> tuple | None:
    if tp is bool:
        return (False, True)
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None


def _draw(trial: Suggest, name: str, domain: tuple) -> Any:
    kind = domain[0]
    if kind == "choice":
        return trial.suggest_categorical(name, domain[1])
    if kind == "int":
        return trial.suggest_int(name, domain[1], domain[2])
    return round(trial.suggest_float(name, domain[1], domain[2]), 3)


def _contains(domain: tuple, value: Any) -> bool:
    if domain[0] == "choice":
        return value in domain[1]
    return value is not None and domain[1] <= value <= domain[2]
