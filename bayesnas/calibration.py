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


def bootstrap_scores(probs: torch.Tensor, y: torch.Tensor, resamples: int = 1000, seed: int = 0
                     ) -> dict[str, dict[str, Any]]:
    """:func:`scores`, each with a percentile-bootstrap 95 % interval over the examples (``resamples`` resamples
    of the ``N`` examples with replacement; ECE recomputed per resample with the same bins)."""
    probs, y = probs.double().cpu(), y.cpu()
    confidence, predicted = probs.max(1)
    right = (predicted == y).double()
    per_example = {"accuracy": right, "nll": -probs.gather(1, y[:, None]).clamp_min(1e-12).log().squeeze(1),
                   "brier": ((probs - torch.nn.functional.one_hot(y, probs.shape[1]).double()) ** 2).sum(1)}
    which = (torch.ceil(confidence * ECE_BINS).long() - 1).clamp(0, ECE_BINS - 1)
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(len(y), (resamples, len(y)), generator=generator)
    draws = {name: values[index].mean(1) for name, values in per_example.items()}
    cell = (torch.arange(resamples).view(-1, 1) * ECE_BINS + which[index]).view(-1)
    gap = (torch.bincount(cell, weights=right[index].view(-1), minlength=resamples * ECE_BINS)
           - torch.bincount(cell, weights=confidence[index].view(-1), minlength=resamples * ECE_BINS))
    draws["ece"] = gap.view(resamples, ECE_BINS).abs().sum(1) / len(y)  # sum_b |B_b|/N |acc_b - conf_b|
    point = scores(probs, y)
    bounds = torch.tensor([0.025, 0.975], dtype=torch.float64)
    return {name: {"value": point[name], "interval_95": torch.quantile(draws[name], bounds).tolist()}
            for name in point}


def temper(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature scaling of predictive probabilities: ``softmax(log p / T)`` (Guo et al. 2017, Sec. 4.2, on
    the log-probabilities, which for one network are its logits up to a constant)."""
    return torch.softmax(probs.double().clamp_min(1e-12).log() / temperature, -1)


def fit_temperature(probs: torch.Tensor, y: torch.Tensor, low: float = 0.05, high: float = 20.0,
                    tolerance: float = 1e-4) -> float:
    """The temperature ``T`` that minimises the NLL of :func:`temper` on ``(probs, y)`` (held-out data: the
    validation split), by golden-section search over ``1 / T`` in ``[1 / high, 1 / low]``, where the NLL is convex
    (a log-sum-exp of a linear function of ``1 / T``, minus a linear one)."""
    log_p = probs.double().cpu().clamp_min(1e-12).log()
    y = y.cpu()

    def loss(beta: float) -> float:
        return float((torch.logsumexp(beta * log_p, 1) - beta * log_p.gather(1, y[:, None]).squeeze(1)).mean())

    ratio = (5 ** 0.5 - 1) / 2
    a, b = 1 / high, 1 / low
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    while b - a > tolerance:
        if loss(c) < loss(d):
            b, d = d, c
            c = b - ratio * (b - a)
        else:
            a, c = c, d
            d = a + ratio * (b - a)
    return 2 / (a + b)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """``(N,)`` predictive entropy ``-sum_c p_c log p_c`` in nats."""
    probs = probs.double()
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1)


def disagreement(member_probs: torch.Tensor) -> float:
    """Mean over pairs of members of the fraction of examples whose predicted classes differ, from ``(K, N, C)``
    probabilities (0 for one member)."""
    predicted = member_probs.argmax(-1)
    k = len(predicted)
    if k < 2:
        return 0.0
    pairs = [(predicted[i] != predicted[j]).double().mean() for i in range(k) for j in range(i + 1, k)]
    return float(torch.stack(pairs).mean())
