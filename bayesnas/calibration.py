"""Scores of probabilistic class predictions: accuracy, NLL, Brier score and expected calibration error.

``probs`` is an ``(N, C)`` tensor of predictive class probabilities (rows sum to 1), ``y`` the ``(N,)`` labels.

- NLL: mean of ``-log p(y_n)`` (probabilities clamped at 1e-12, so a confident miss costs 27.6 nats, not inf).
- Brier score: mean over examples of ``sum_c (p_nc - [y_n = c])^2`` (Brier, Monthly Weather Review 1950), in
  [0, 2].
- ECE: Guo et al., "On calibration of modern neural networks", ICML 2017, Sec. 2, Eq. 3:
  ``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` over ``bins`` equal-width bins of the confidence ``max_c p_nc``
  (bin ``b`` holds confidences in ``(b/M, (b+1)/M]``, the first bin also 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

ECE_BINS = 15
"""Guo et al.'s number of confidence bins."""


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin: the bins' upper edges, the examples in each, their accuracy and mean confidence (NaN
    for an empty bin)."""

    edges: list[float]
    counts: list[int]
    accuracy: list[float]
    confidence: list[float]


def nll(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Mean negative log-likelihood of the labels."""
    return float(-probs.gather(1, y[:, None]).clamp_min(1e-12).log().mean())


def brier(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Mean multi-class Brier score."""
    target = torch.nn.functional.one_hot(y, probs.shape[1]).to(probs.dtype)
    return float(((probs - target) ** 2).sum(1).mean())


def reliability(probs: torch.Tensor, y: torch.Tensor, bins: int = ECE_BINS) -> Reliability:
    """Accuracy and mean confidence per equal-width confidence bin (the reliability diagram's data)."""
    confidence, predicted = probs.max(1)
    right = (predicted == y).to(probs.dtype)
    which = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    counts = torch.bincount(which, minlength=bins)
    acc = torch.bincount(which, weights=right, minlength=bins) / counts.clamp_min(1)
    conf = torch.bincount(which, weights=confidence, minlength=bins) / counts.clamp_min(1)
    empty = counts == 0
    nan = torch.tensor(float("nan"), dtype=acc.dtype)
    return Reliability([(b + 1) / bins for b in range(bins)], counts.tolist(),
                       torch.where(empty, nan, acc).tolist(), torch.where(empty, nan, conf).tolist())


def ece(probs: torch.Tensor, y: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error (Guo et al. 2017, Eq. 3)."""
    table = reliability(probs, y, bins)
    n = sum(table.counts)
    return float(sum(c / n * abs(a - f) for c, a, f in zip(table.counts, table.accuracy, table.confidence,
                                                            strict=True) if c))


def nll_difference(probs_a: torch.Tensor, probs_b: torch.Tensor, y: torch.Tensor, resamples: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """Mean per-example NLL of ``a`` minus that of ``b`` on the same examples, with a paired percentile-bootstrap
    95 % interval over the examples (its noise: a few confident mistakes move a small test set's NLL)."""
    def per_example(probs: torch.Tensor) -> torch.Tensor:
        return -probs.double().cpu().gather(1, y.cpu()[:, None]).clamp_min(1e-12).log().squeeze(1)

    diff = per_example(probs_a) - per_example(probs_b)
    generator = torch.Generator().manual_seed(seed)
    means = diff[torch.randint(len(diff), (resamples, len(diff)), generator=generator)].mean(1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=means.dtype)).tolist()
    return {"mean": float(diff.mean()), "interval_95": [low, high]}


def scores(probs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy, NLL, Brier score and ECE of one set of predictions."""
    probs, y = probs.double().cpu(), y.cpu()
    return {"accuracy": float((probs.argmax(1) == y).double().mean()), "nll": nll(probs, y),
            "brier": brier(probs, y), "ece": ece(probs, y)}
