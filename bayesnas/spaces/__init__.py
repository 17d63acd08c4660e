"""Search spaces: super-networks, genotypes and the discrete networks built from them.

``cells`` and ``chain`` list their architecture as categorical decisions (:class:`DecisionSpace`), so every
categorical method searches either; ``branches`` is PGNAS's channel-level space.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bayesnas.spaces.branches import BranchSpace
from bayesnas.spaces.cell import CellSpace
from bayesnas.spaces.chain import ChainSpace
from bayesnas.spaces.decisions import Decision, DecisionGroup, DecisionSpace
from bayesnas.spaces.genotype import Genotype, GenotypeError, load_genotype

SPACES = {"branches": BranchSpace, "cells": CellSpace, "chain": ChainSpace}


class UnknownSpaceError(ValueError):
    pass


def get_space(name: str, config: Mapping[str, Any] | None = None) -> Any:
    """The space called ``name`` configured by ``config`` (one-line error for unknown names or options)."""
    if name not in SPACES:
        raise UnknownSpaceError(f"unknown search space {name!r}; choose one of: {', '.join(SPACES)}")
    try:
        return SPACES[name].from_dict(dict(config or {}))
    except (TypeError, ValueError) as err:
        raise GenotypeError(f"space {name!r}: invalid configuration ({err})") from None


__all__ = ["SPACES", "BranchSpace", "CellSpace", "ChainSpace", "Decision", "DecisionGroup", "DecisionSpace",
           "Genotype", "GenotypeError", "UnknownSpaceError", "get_space", "load_genotype"]
