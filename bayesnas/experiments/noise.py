"""How much of a ground truth is training noise: the variance components of a population's accuracies.

Each member (genotype) g is trained with n_g seeds; its test accuracies are modelled as a one-way random-effects
layout, x_gs = mu + b_g + e_gs with var(b) = sigma_b^2 (the architectures' spread) and var(e) = sigma_w^2 (one
training seed's noise). The estimators are the ANOVA ones (Searle, Casella & McCulloch, "Variance Components",
1992, Sec. 3.5): the pooled within-member variance s_w^2 = sum_g sum_s (x_gs - xbar_g)^2 / sum_g (n_g - 1)
(unbiased for sigma_w^2, unlike the mean of per-member standard deviations, which reads low by the bias of a
sample sd) and the between-member variance net of noise, s_b^2 = var(xbar_g) - s_w^2 mean(1 / n_g) (truncated at
0). The reliability of a k-seed mean is R_k = sigma_b^2 / (sigma_b^2 + sigma_w^2 / k) (Spearman-Brown), the
squared correlation between a member's true accuracy and its k-seed mean; under normality no ranker, however
good, can reach a higher Kendall tau against k-seed means than tau_max = (2 / pi) arcsin(sqrt(R_k)), or a higher
Spearman rho than (6 / pi) arcsin(sqrt(R_k) / 2) (Greiner's and Pearson's relations for the bivariate normal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NoiseReport:
    """Variance components of a population's test accuracies (see the module's docstring)."""

    members: int
    trainings: int
    within_sd: float | None
    """Pooled within-member sd: one training seed's noise (None with no member trained twice)."""
    between_sd: float | None
    """Sd of the members' true accuracies, net of the noise."""
    mean_seeds: float
    """Mean seeds per member (the k of the population's own means)."""

    def reliability(self, k: float | None = None) -> float | None:
        """R_k of a k-seed mean (default: the population's mean seeds per member)."""
        if self.within_sd is None or self.between_sd is None:
            return None
        k = self.mean_seeds if k is None else k
        total = self.between_sd ** 2 + self.within_sd ** 2 / k
        return self.between_sd ** 2 / total if total > 0 else None

    def max_kendall(self, k: float | None = None) -> float | None:
        """The highest Kendall tau any ranker can expect against k-seed means."""
        r = self.reliability(k)
        return None if r is None else 2 / math.pi * math.asin(math.sqrt(r))

    def max_spearman(self, k: float | None = None) -> float | None:
        """The highest Spearman rho any ranker can expect against k-seed means."""
        r = self.reliability(k)
        return None if r is None else 6 / math.pi * math.asin(math.sqrt(r) / 2)


def variance_components(groups: Sequence[Sequence[float]]) -> NoiseReport:
    """:class:`NoiseReport` of ``groups``, one list of per-seed accuracies per member."""
    groups = [np.asarray(g, dtype=float) for g in groups if len(g)]
    counts = np.array([len(g) for g in groups])
    dof = int((counts - 1).sum())
    within_var = sum(float(((g - g.mean()) ** 2).sum()) for g in groups) / dof if dof else None
    between = None
    if within_var is not None and len(groups) >= 2:
        means = np.array([g.mean() for g in groups])
        between = math.sqrt(max(0.0, float(means.var(ddof=1)) - within_var * float((1 / counts).mean())))
    return NoiseReport(members=len(groups), trainings=int(counts.sum()),
                       within_sd=None if within_var is None else math.sqrt(within_var), between_sd=between,
                       mean_seeds=float(counts.mean()) if len(groups) else 0.0)
