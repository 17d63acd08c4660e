"""bayesnas: Bayesian neural architecture search in Pyro.

The public API (each name is imported on first use, so ``import bayesnas`` is quick)::

    run = bayesnas.search(method="gdas", epochs=5, out="runs/gdas5")   # a search, as `bayesnas search` runs it
    run = bayesnas.load_run("runs/gdas5")                              # summary, genotype, metrics(), posterior()
    bayesnas.train(run.genotype, epochs=10).network                    # the architecture alone, from scratch
    run.network()                                                      # the selected network, trained, for inference
    bayesnas.ensemble(run, members=5)                                  # K architectures from the posterior, retrained
    bayesnas.search(dataset=(x, y))                                    # your own images (tensors, arrays, a Dataset,
                                                                       # a folder or an .npz file)

and the parts to build your own: :class:`SearchConfig`, :func:`build_config`, :func:`preset`; the spaces
(:func:`get_space`, :class:`Genotype`), the methods (:func:`get_method`) and their Pyro models, guides and
proposals in :mod:`bayesnas.methods`.

Importing the package changes nothing global: Pyro's settings, the param store, torch's threads and default dtype,
warnings filters and matplotlib's backend stay as they were. The search loop runs in Pyro's ``module_local_params``
mode, scoped to the run (:func:`bayesnas.infer.run_search`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "search": "bayesnas.api", "load_run": "bayesnas.api", "train": "bayesnas.api", "Run": "bayesnas.api",
    "predict": "bayesnas.api", "load_network": "bayesnas.api", "TrainedNetwork": "bayesnas.api",
    "ensemble": "bayesnas.api",
    "BadDataError": "bayesnas.user_data",
    "SearchConfig": "bayesnas.config", "ConfigError": "bayesnas.config", "build_config": "bayesnas.config",
    "preset": "bayesnas.config", "PRESETS": "bayesnas.config", "METHOD_SPACES": "bayesnas.config",
    "Genotype": "bayesnas.spaces", "GenotypeError": "bayesnas.spaces", "load_genotype": "bayesnas.spaces",
    "get_space": "bayesnas.spaces", "get_method": "bayesnas.methods", "SearchMethod": "bayesnas.methods",
    "SearchError": "bayesnas.search_folder", "load_dataset": "bayesnas.data",
    "count_params": "bayesnas.spaces.profile",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bayesnas' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public API only (not this module's own imports)."""
    return sorted({*__all__, "__version__"})
