"""Random search evaluated exactly on a ground-truth population, without training it.

Random search with n candidates draws n genotypes uniformly from the space, trains each once under the
population's recipe, keeps the best by validation accuracy and is scored by its pick's test accuracy (Li &
Talwalkar, "Random search and reproducibility for NAS", UAI 2019). A population that holds every member's
per-seed validation and test accuracies under that recipe holds the outcome of every such candidate, so the
distribution of random search's pick is known in closed form. A candidate is a training run r = (member g, seed
s), drawn with probability p_r = m_g / (M n_g) (m_g: the genotypes that build member g's network, since
``random_genotype`` draws genotypes; M their total; n_g: g's seeds). With v_r the run's validation accuracy and
F(v) = sum of p_r over runs with validation accuracy <= v, the best of n draws lands on the runs of validation
accuracy v with probability F(v)^n - F(v^-)^n, shared among them in proportion to p_r (equal validation accuracies
are resolved by draw order, which favours none). Each run is scored by the percentile, in the population's
members' mean test accuracies, of its member's mean test accuracy over the *other* seeds, so that the seed whose
validation accuracy won the selection does not also score it (the shared training noise would flatter random
search); the expected percentile and the chance that random search's pick lies below a given percentile follow
as sums over runs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from bayesnas.experiments.population import Population, percentile_of


class RandomSearchChance:
    """The exact distribution of random search's pick percentile for any number of candidates.

    ``val``, ``score``, ``prob``: per training run, its validation accuracy, its score (a percentile) and its
    probability of being drawn as one candidate (summing to 1)."""

    def __init__(self, val: Sequence[float], score: Sequence[float], prob: Sequence[float]) -> None:
        self.val = np.asarray(val, dtype=float)
        self.score = np.asarray(score, dtype=float)
        self.prob = np.asarray(prob, dtype=float) / float(np.sum(prob))
        levels, self._level = np.unique(self.val, return_inverse=True)
        level_prob = np.bincount(self._level, weights=self.prob, minlength=len(levels))
        self._below = np.concatenate([[0.0], np.cumsum(level_prob)[:-1]])  # F(v^-) per level
        self._upto = np.minimum(np.cumsum(level_prob), 1.0)  # F(v) per level
        self._level_prob = level_prob

    def weights(self, n: int) -> np.ndarray:
        """Probability that the best of ``n`` candidates is each run."""
        if n < 1:
            raise ValueError("random search needs n >= 1 candidates")
        best_level = self._upto ** n - self._below ** n
        return best_level[self._level] * self.prob / self._level_prob[self._level]

    def expected(self, n: int) -> float:
        """Expected percentile of the pick of ``n`` candidates."""
        return float(self.weights(n) @ self.score)

    def at(self, candidates: float) -> float:
        """:meth:`expected` at a real number of candidates (at least 1), linear between the integers around it."""
        c = max(1.0, float(candidates))
        lo = math.floor(c)
        return self.expected(lo) if c == lo else (lo + 1 - c) * self.expected(lo) + (c - lo) * self.expected(lo + 1)

    def chance_below(self, percentile: float, candidates: float) -> float:
        """Probability that random search's pick scores below ``percentile`` (ties count half), at a real number
        of candidates (linear between integers, as :meth:`at`)."""
        c = max(1.0, float(candidates))
        lo = math.floor(c)

        def below(n: int) -> float:
            w = self.weights(n)
            return float(w[self.score < percentile].sum() + 0.5 * w[self.score == percentile].sum())

        return below(lo) if c == lo else (lo + 1 - c) * below(lo) + (c - lo) * below(lo + 1)

    def curve(self, n_max: int) -> list[float]:
        """:meth:`expected` for n = 1 .. ``n_max``."""
        return [self.expected(n) for n in range(1, n_max + 1)]


def random_search_chance(population: Population) -> RandomSearchChance:
    """:class:`RandomSearchChance` of ``population``'s members and their training runs (see the module)."""
    entries = list(population.genotypes().values())
    means = [statistics.fmean(r["test_accuracy"] for r in e["runs"].values()) for e in entries]
    twins = sum(len(e["twins"]) for e in entries)
    val, score, prob = [], [], []
    for entry in entries:
        runs = entry["runs"]
        for seed, run in runs.items():
            others = [r["test_accuracy"] for s, r in runs.items() if s != seed] or [run["test_accuracy"]]
            val.append(run["val_accuracy"])
            score.append(percentile_of(means, statistics.fmean(others)))
            prob.append(len(entry["twins"]) / (twins * len(runs)))
    return RandomSearchChance(val, score, prob)


def curve_table(chance: RandomSearchChance, n_max: int) -> list[dict[str, Any]]:
    """Rows ``{"candidates", "expected_percentile"}`` for n = 1 .. ``n_max``."""
    return [{"candidates": n, "expected_percentile": e} for n, e in enumerate(chance.curve(n_max), start=1)]
