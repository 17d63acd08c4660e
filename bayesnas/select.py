"""Turning a posterior into one architecture.

Posterior-guided sampling (PGNAS, Zhou et al., AAAI 2020, Algorithm 1, lines 7-16): draw C architecture-weight
pairs from the variational posterior, score each on the validation split, keep the best. The same routine on a
super-network trained with one fixed, hand-set drop rate (Bender et al., ICML 2018) is the "Random" baseline of
PGNAS Table 3.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from tqdm import tqdm

from bayesnas.distributed import SINGLE, World

Candidate = TypeVar("Candidate")


@dataclass
class SamplingResult(Generic[Candidate]):
    best: Candidate
    best_score: float
    scores: list[float]


def posterior_guided_sampling(draw: Callable[[], Candidate], score: Callable[[Candidate], float],
                              num_candidates: int, desc: str = "candidates", progress: bool = True,
                              world: World = SINGLE) -> SamplingResult[Candidate]:
    """Algorithm 1, lines 7-16: ``num_candidates`` draws, each scored; the first best score wins ties.

    In a distributed search every rank draws every candidate but scores only its share (round robin); the scores
    are gathered so every rank returns the same result. Scoring leaves the CPU random stream where it was (building
    a candidate's network initialises weights), so the draws, and whatever follows, stay in step across ranks."""
    if num_candidates < 1:
        raise ValueError("num_candidates must be >= 1")
    candidates, scores = [], []
    for i in tqdm(range(num_candidates), desc=desc, disable=not progress, leave=False):
        candidate = draw()
        candidates.append(candidate)
        if world.owns(i):
            with torch.random.fork_rng(devices=[]):
                scores.append(score(candidate))
        else:
            scores.append(float("-inf"))
    scores = world.max(scores)
    best = max(range(num_candidates), key=lambda i: (scores[i], -i))
    return SamplingResult(candidates[best], scores[best], scores)


def derive_cell(strength: torch.Tensor, op_names: Sequence[str], edges: Sequence[tuple[int, int]],
                inputs_per_state: int = 2, exclude: Sequence[str] = ("none",)) -> list[list[list]]:
    """Discrete cell from per-(edge, op) strengths ``(E, K)``: for each state keep the ``inputs_per_state``
    incoming edges whose strongest allowed op is strongest, with that op (GDAS Sec. 3.3: strength =
    softmax(A); VINNAS Sec. III-D: strength = positive SNR). Returns ``[[[op, input], ...], ...]`` per state."""
    allowed = torch.tensor([name not in exclude for name in op_names], device=strength.device)
    masked = strength.masked_fill(~allowed, float("-inf"))
    best, best_op = masked.max(-1)
    cell: list[list[list]] = []
    states = max(j for j, _ in edges) + 1
    for j in range(states):
        incoming = [e for e, (state, _) in enumerate(edges) if state == j]
        ranked = sorted(incoming, key=lambda e: float(best[e]), reverse=True)[:inputs_per_state]
        cell.append([[op_names[int(best_op[e])], edges[e][1]] for e in sorted(ranked, key=lambda e: edges[e][1])])
    return cell
