"""Experiments: the drivers that run searches and trainings to measure them, built on the library's layers below.

- :mod:`~bayesnas.experiments.population`: ground-truth populations (``bayesnas bench population``);
- :mod:`~bayesnas.experiments.compare`: methods placed on a population (``bayesnas bench compare``), with
  :mod:`~bayesnas.experiments.chance` (random search's exact curve) and :mod:`~bayesnas.experiments.noise`
  (training-seed noise and the reliability it leaves);
- :mod:`~bayesnas.experiments.bench`: small-budget searches of every method (``bayesnas bench``);
- :mod:`~bayesnas.experiments.rank`: ranking correlation of two super-networks (``bayesnas rank``).

Nothing in the library's base, inference, methods or spaces imports this package (``docs/architecture.md``).
"""
