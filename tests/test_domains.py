"""Declared domains: the grammar, and every declared setting refused just outside its domain with one line."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest

from bayesnas.config import ConfigError, SearchConfig
from bayesnas.domains import Domain, parse_domain
from bayesnas.methods import get_method, parse_options
from bayesnas.training import TrainRecipe

METHODS = ("pgnas", "gdas", "vinnas", "pcnas", "oneshot", "random")


@pytest.mark.parametrize(("text", "inside", "outside"), [
    ("> 0", [1e-9, 3, 1e300], [0, -1, math.nan, math.inf, None, True, "1"]),
    (">= 1", [1, 2], [0, 0.999, math.inf]),
    ("< 0", [-1e-9, -5], [0, 1, -math.inf]),
    ("<= 1", [1, -3], [1.001]),
    ("(0, 1)", [0.5, 1e-9], [0, 1, math.nan]),
    ("[0, 1)", [0, 0.999], [1, -1e-9]),
    ("(0, 1]", [1, 0.001], [0, 1.5]),
    ("[0, 4294967295]", [0, 2**32 - 1], [2**32, -1]),
    ("{batch, example}", ["batch", "example"], ["Batch", "", None, 1]),
    ("> 0 or null", [None, 2.5], [0, math.nan]),
    ("finite", [-1e300, 0, 7], [math.inf, -math.inf, math.nan, None]),
])
def test_domain_grammar(text: str, inside: list, outside: list) -> None:
    domain = parse_domain(text)
    assert all(v in domain for v in inside), [v for v in inside if v not in domain]
    assert not any(v in domain for v in outside), [v for v in outside if v in domain]


def test_unreadable_domain_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot read the domain"):
        parse_domain("positive")


def _outside(domain: Domain, field_type: str) -> list:
    """Values just outside ``domain`` (and NaN for a numeric one), of the field's type where possible."""
    if domain.choices:
        return [domain.choices[0].upper() + "?"]
    integer = field_type.startswith("int")
    values: list = [math.nan] if not integer else []
    if math.isfinite(domain.low):
        step = 1 if integer else max(abs(domain.low), 1) * 1e-6
        values.append(int(domain.low) - (0 if domain.low_open else 1) if integer else
                      domain.low - (0 if domain.low_open else step))
    if math.isfinite(domain.high):
        step = 1 if integer else max(abs(domain.high), 1) * 1e-6
        values.append(int(domain.high) + (0 if domain.high_open else 1) if integer else
                      domain.high + (0 if domain.high_open else step))
    if not integer and math.isinf(domain.high):
        values.append(math.inf)
    return values


def _declared(cls: type) -> list[tuple[str, Domain, str]]:
    return [(f.name, f.metadata["domain"], str(f.type)) for f in dataclasses.fields(cls) if "domain" in f.metadata]


SEARCH_CASES = [(name, value) for name, domain, kind in _declared(SearchConfig) for value in _outside(domain, kind)]
OPTION_CASES = [(method, name, value) for method in METHODS
                for name, domain, kind in _declared(get_method(method).options_type)
                for value in _outside(domain, kind)]


@pytest.mark.parametrize(("name", "value"), SEARCH_CASES)
def test_search_settings_outside_their_domain_are_refused(name: str, value) -> None:
    with pytest.raises(ConfigError) as info:
        SearchConfig.from_dict({name: value})
    assert str(info.value).startswith(f"{name} must be ") and "\n" not in str(info.value)


@pytest.mark.parametrize(("method", "name", "value"), OPTION_CASES)
def test_method_options_outside_their_domain_are_refused(method: str, name: str, value) -> None:
    options_type = get_method(method).options_type
    with pytest.raises(ConfigError) as info:
        parse_options(options_type, {name: value}, method)
    assert f"{name} must be " in str(info.value) and "\n" not in str(info.value)


def test_every_numeric_option_declares_a_domain() -> None:
    """A numeric option without a declared domain would take NaN or a negative count silently."""
    undeclared = [f"{m}.{f.name}" for m in METHODS for f in dataclasses.fields(get_method(m).options_type)
                  if "domain" not in f.metadata and any(t in str(f.type) for t in ("int", "float"))]
    assert undeclared == []


def test_cross_field_constraints() -> None:
    with pytest.raises(ConfigError, match="lr_min must lie in"):
        SearchConfig(lr=0.1, lr_min=0.2)
    with pytest.raises(ConfigError, match="val_fraction \\+ test_fraction"):
        SearchConfig(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigError, match="tau_min must be <= tau_max"):
        parse_options(get_method("gdas").options_type, {"tau_min": 5.0, "tau_max": 2.0}, "gdas")
    with pytest.raises(ValueError, match="epochs must be \\[0, 100000\\], got -1"):
        TrainRecipe(epochs=-1)


def test_help_shows_the_declared_domains() -> None:
    def run(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "bayesnas", *args], capture_output=True, text=True,
                              check=True, env={"COLUMNS": "200", "PATH": ""}).stdout

    search = run("search", "--help")
    assert "search epochs, [1, 100000]" in search and "[0, 4294967295]" in search
    options = run("options", "gdas")
    assert "tau_max (float, > 0, default 10.0" in options
    assert "sample_per (str, one of batch, example, default \"batch\")" in options
    assert "retrain_drop_path (float, [0, 1), default 0.0" in options
