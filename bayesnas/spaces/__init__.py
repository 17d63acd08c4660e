"""Search spaces: super-networks, genotypes and the discrete networks built from them.

``cells`` and ``chain`` list their architecture as categorical decisions (:class:`DecisionSpace`), so every
categorical method searches either; ``branches`` is PGNAS's channel-level space.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import nn

from bayesnas.errors import BayesNASError
from bayesnas.io import DamagedFileError, read_json
from bayesnas.spaces.branches import BranchSpace
from bayesnas.spaces.cell import CellSpace
from bayesnas.spaces.chain import ChainSpace
from bayesnas.spaces.decisions import Decision, DecisionGroup, DecisionSpace
from bayesnas.spaces.genotype import Genotype, GenotypeError


@runtime_checkable
class SearchSpace(Protocol):
    """What every search space is to a method and to the search loop (the decision spaces, ``cells`` and
    ``chain``, and PGNAS's ``branches``): a name and a configuration, a super-network, and the checks, drawings and
    networks of its genotypes."""

    name: str
    config: Any

    def validate(self, genotype: Genotype) -> None: ...

    def describe(self, genotype: Genotype) -> str: ...

    def build(self, genotype: Genotype, **options: Any) -> nn.Module: ...


SPACES = {"branches": BranchSpace, "cells": CellSpace, "chain": ChainSpace}


class UnknownSpaceError(BayesNASError, ValueError):
    pass


def get_space(name: str, config: Mapping[str, Any] | None = None) -> SearchSpace:
    """The space called ``name`` configured by ``config`` (one-line error for unknown names or options)."""
    if name not in SPACES:
        raise UnknownSpaceError(f"unknown search space {name!r}; choose one of: {', '.join(SPACES)}")
    try:
        return SPACES[name].from_dict(dict(config or {}))
    except (TypeError, ValueError) as err:
        raise GenotypeError(f"space {name!r}: invalid configuration ({err})") from None


def genotype_path(path: str | os.PathLike) -> Path:
    """The genotype file ``path`` names: the file itself, or a run folder's ``genotype.json``."""
    path = Path(path)
    return path / "genotype.json" if path.is_dir() else path


def load_genotype(path: str | os.PathLike) -> Genotype:
    """Read and validate a genotype JSON file, or a run folder's (one-line :class:`GenotypeError` on any
    problem)."""
    given, path = Path(path), genotype_path(path)
    try:
        data = read_json(path)
    except FileNotFoundError:
        if given.is_dir():
            raise GenotypeError(f"{given} is a folder without a genotype.json; give a genotype file or a run "
                                "folder") from None
        raise GenotypeError(f"genotype file not found: {path}") from None
    except DamagedFileError as err:
        raise GenotypeError(str(err)) from None
    genotype = Genotype.from_dict(data, origin=str(path))
    get_space(genotype.space, genotype.config).validate(genotype)
    return genotype


__all__ = ["SPACES", "BranchSpace", "CellSpace", "ChainSpace", "Decision", "DecisionGroup", "DecisionSpace",
           "Genotype", "GenotypeError", "SearchSpace", "UnknownSpaceError", "genotype_path", "get_space",
           "load_genotype"]
