"""Turning a posterior into one architecture.

Posterior-guided sampling (PGNAS Algorithm 1, lines 7-16): draw C architecture-weight pairs from the
variational posterior, score each on the validation split, keep the best. The same routine with a fixed,
hand-set proposal is the "Random" baseline of PGNAS Table 3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from tqdm import tqdm

Candidate = TypeVar("Candidate")


@dataclass
class SamplingResult(Generic[Candidate]):
    best: Candidate
    best_score: float
    scores: list[float]


def posterior_guided_sampling(draw: Callable[[], Candidate], score: Callable[[Candidate], float],
                              num_candidates: int, desc: str = "candidates",
                              progress: bool = True) -> SamplingResult[Candidate]:
    """Algorithm 1, lines 7-16: ``num_candidates`` draws, each scored; the first best score wins ties."""
    if num_candidates < 1:
        raise ValueError("num_candidates must be >= 1")
    best, best_score, scores = None, float("-inf"), []
    for _ in tqdm(range(num_candidates), desc=desc, disable=not progress, leave=False):
        candidate = draw()
        value = score(candidate)
        scores.append(value)
        if value > best_score:
            best, best_score = candidate, value
    return SamplingResult(best, best_score, scores)
