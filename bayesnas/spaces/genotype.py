"""Genotypes: the discrete architecture a search returns, as JSON that names its space and configuration.

A genotype file is ``{"space": NAME, "config": {...}, "choices": {...}, "dataset": NAME}``; ``choices`` is
space-specific (kept input channels per layer and branch for ``branches``); ``dataset`` (optional: files written
before it was recorded lack it) names the data set the search ran on, which ``bayesnas train`` trains on.
:func:`load_genotype` validates the outer form; the space validates the choices against its configuration.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Self

from bayesnas.errors import BayesNASError


class GenotypeError(BayesNASError, ValueError):
    """A genotype file or value that does not describe an architecture of its space."""


def integers(name: str, values: Any) -> tuple[int, ...]:
    """``values`` as a tuple of integers, refusing fractions and booleans (``1.5`` is not silently ``1``)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name} must be a list of integers")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer():
            raise ValueError(f"{name} must hold whole numbers, got {v!r}")
        out.append(int(v))
    return tuple(out)


class SpaceConfig:
    """JSON round trip of a space's frozen configuration dataclass (the ``config`` a genotype carries)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        unknown = set(data) - set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        if unknown:
            raise ValueError(f"unknown space option(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}  # type: ignore[call-overload]


@dataclass(frozen=True)
class Genotype:
    space: str
    config: dict[str, Any]
    choices: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = field(default=None, compare=False)
    """The data set the architecture was searched on (not part of its identity)."""

    def to_dict(self) -> dict[str, Any]:
        data = {"space": self.space, "config": self.config, "choices": self.choices}
        return data if self.dataset is None else {**data, "dataset": self.dataset}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | os.PathLike) -> None:
        from bayesnas.io import atomic_write_text

        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: Any, origin: str = "genotype") -> Genotype:
        if not isinstance(data, dict):
            raise GenotypeError(f"{origin}: expected a JSON object with keys space, config, choices")
        missing = {"space", "config", "choices"} - set(data)
        if missing:
            raise GenotypeError(f"{origin}: missing key(s) {', '.join(sorted(missing))}")
        if not isinstance(data["space"], str) or not isinstance(data["config"], dict) \
                or not isinstance(data["choices"], dict):
            raise GenotypeError(f"{origin}: 'space' must be a string, 'config' and 'choices' objects")
        if not isinstance(data.get("dataset", ""), str):
            raise GenotypeError(f"{origin}: 'dataset' must be a data set's name")
        return cls(data["space"], data["config"], data["choices"], data.get("dataset"))


def genotype_key(genotype: Genotype) -> str:
    """The one-line form of a genotype's choices: equal choices, equal keys."""
    return json.dumps(genotype.choices, sort_keys=True, separators=(",", ":"))
