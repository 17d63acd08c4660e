"""Declared domains of settings: each option states its allowed values once, next to its default.

``epochs: int = setting(40, ">= 1")`` declares a dataclass field whose value must be an int of at least 1. The
dataclass checks its fields' types and domains with :func:`check_domains` (in ``__post_init__``; the one check of
options there is), so the CLI, config files and the Python API refuse the same values with the same one-line
message, and help texts print the same domain text
(:func:`domain_text`). Domains are written as

- a bound: ``"> 0"``, ``">= 1"``, ``"< 1"``, ``"<= 1"``;
- an interval: ``"(0, 1)"``, ``"[0, 1)"``, ``"(0, 1]"``, ``"[0, 1]"``;
- choices: ``"{batch, example}"``;
- any finite number: ``"finite"``;

optionally followed by ``" or null"``. Numeric domains also refuse NaN and infinities.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

_BOUND = re.compile(r"^(>=|>|<=|<)\s*(\S+)$")
_INTERVAL = re.compile(r"^([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])$")
_CHOICES = re.compile(r"^\{(.+)\}$")


class DomainError(ValueError):
    """A setting whose value is not of its annotated type or lies outside its declared domain."""

    def __init__(self, name: str, requirement: str, value: Any) -> None:
        super().__init__(f"{name} must be {requirement}, got {value!r}")
        self.name = name
        self.requirement = f"must be {requirement}, got {value!r}"


@dataclass(frozen=True)
class Domain:
    """Allowed values of one setting; ``text`` is how messages and help show it."""

    text: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = True
    high_open: bool = True
    choices: tuple[str, ...] = ()
    nullable: bool = False

    def describe(self) -> str:
        """How help texts and messages show the domain (``> 0``, ``one of batch, example``)."""
        if self.choices:
            return "one of " + ", ".join(self.choices) + (" or null" if self.nullable else "")
        return self.text

    def __contains__(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.choices:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


def parse_domain(text: str) -> Domain:
    """The :class:`Domain` written as ``text`` (grammar in the module docstring)."""
    body, nullable = (text[: -len(" or null")], True) if text.endswith(" or null") else (text, False)
    body = body.strip()
    if body == "finite":
        return Domain(text, nullable=nullable)
    if match := _CHOICES.match(body):
        choices = tuple(c.strip() for c in match.group(1).split(","))
        return Domain(text, choices=choices, nullable=nullable)
    if match := _BOUND.match(body):
        op, value = match.group(1), float(match.group(2))
        if op.startswith(">"):
            return Domain(text, low=value, low_open=op == ">", nullable=nullable)
        return Domain(text, high=value, high_open=op == "<", nullable=nullable)
    if match := _INTERVAL.match(body):
        left, low, high, right = match.groups()
        return Domain(text, low=float(low), high=float(high), low_open=left == "(", high_open=right == ")",
                      nullable=nullable)
    raise ValueError(f"cannot read the domain {text!r}")


def setting(default: Any, domain: str) -> Any:
    """A dataclass field with ``default`` whose values must lie in ``domain``."""
    return dataclasses.field(default=default, metadata={"domain": parse_domain(domain)})


def domain_of(cls: type, name: str) -> Domain | None:
    """The declared domain of field ``name`` of dataclass ``cls``, or None where it declares none."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("domain")
    return None


def domain_text(cls: type, name: str) -> str | None:
    """The declared domain of field ``name`` of dataclass ``cls`` as help shows it, or None where it declares
    none."""
    domain = domain_of(cls, name)
    return None if domain is None else domain.describe()


@functools.cache
def field_types(cls: type) -> dict[str, tuple[type, ...]]:
    """The types each field of dataclass ``cls`` admits, from its annotation (``int | None`` -> ``(int,
    NoneType)``, ``dict[str, Any]`` -> ``(dict,)``); fields annotated ``Any`` are left out."""
    hints = typing.get_type_hints(cls)
    admitted = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        allowed = tuple(typing.get_origin(t) or t for t in (typing.get_args(hint) if union else (hint,)))
        if Any not in allowed:
            admitted[f.name] = allowed
    return admitted


def _admits(allowed: tuple[type, ...], value: Any) -> bool:
    """Whether ``value`` is of one of the ``allowed`` types (an int stands for a float, a bool for no int)."""
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True
    return isinstance(value, allowed)


def check_domains(obj: Any) -> None:
    """Raise :class:`DomainError` naming the first field of dataclass instance ``obj`` whose value is not of its
    annotated type or lies outside its declared domain."""
    admitted = field_types(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in admitted and not _admits(admitted[f.name], value):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in admitted[f.name])
            raise DomainError(f.name, names, value)
        domain = f.metadata.get("domain")
        if domain is not None and value not in domain:
            raise DomainError(f.name, domain.describe(), value)
