"""Proposals of PC-NAS (papers/pcnas.md Sec. 3.3, Algorithms 1-2): distributions over architectures without
learned parameters, each with its own update rule.

They are not Pyro guides (DESIGN, "How proposals sit in Pyro"): the search draws ``m`` from the proposal,
conditions the model on it and trains the shared weights on the conditioned likelihood.

- :class:`UniformProposal`: every op of every mixop uniformly (single-path one-shot; PC-NAS's warm-up).
- :class:`PartialModelPool`: the pool of the P best partial models ``(o_1, ..., o_l)``; a draw picks a member
  uniformly and completes it with uniform ops that keep the architecture under the latency limit. After each
  interval the pool is extended by every op of the next mixop, and the top P candidates by *potential*
  (Eq. 11: mean one-batch validation accuracy of random completions, Algorithm 1) form the new pool.
- :class:`Completion`: uniform random completion of a partial model under a latency limit.

Both proposals report the *effective number of architectures* sharing the weights, exp(entropy) of the
proposal ignoring the latency limit: ``prod_l N_l`` for the uniform one, ``|pool| x prod_{l > depth} N_l`` for
the pool (posterior fading, Eq. 10: the fewer architectures share the weights, the closer the shared posterior
stays to each model's own).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from bayesnas.config import ConfigError
from bayesnas.distributed import SINGLE, World

Architecture = tuple[int, ...]


class LatencyLimitError(ConfigError):
    """No architecture (or no completion of a partial model) meets the latency limit."""


class Completion:
    """Uniform random completion of partial models; with a limit, completions always meet it.

    ``costs[l][o]``: latency of op ``o`` of mixop ``l``; ``fixed``: latency of the fixed parts. A completion is
    drawn uniformly and redrawn up to ``max_tries`` times until it meets the limit (uniform over the valid
    completions, as Eq. 11 asks); if that fails, each remaining op is drawn uniformly among those that leave the
    rest feasible, which always succeeds when any completion does. A partial model no completion of which meets
    the limit raises :class:`LatencyLimitError` naming the limit and the fastest latency possible.
    """

    def __init__(self, num_ops: Sequence[int], costs: Sequence[Sequence[float]] | None = None, fixed: float = 0.0,
                 limit: float | None = None, max_tries: int = 100) -> None:
        self.num_ops = [int(n) for n in num_ops]
        if costs is not None and [len(c) for c in costs] != self.num_ops:
            raise ValueError("costs need one entry per op of every mixop")
        if limit is not None and costs is None:
            raise ValueError("a latency limit needs the latency table (costs)")
        self.costs = [list(map(float, c)) for c in costs] if costs is not None else None
        self.fixed = float(fixed)
        self.limit = limit
        self.max_tries = max(1, int(max_tries))
        self._tail_min = [0.0] * (len(self.num_ops) + 1)
        if self.costs is not None:
            for layer in reversed(range(len(self.num_ops))):
                self._tail_min[layer] = self._tail_min[layer + 1] + min(self.costs[layer])

    def latency(self, arch: Sequence[int]) -> float:
        """Latency of a (partial) architecture: fixed parts plus its ops' entries (0 without a table)."""
        if self.costs is None:
            return 0.0
        return self.fixed + sum(self.costs[layer][op] for layer, op in enumerate(arch))

    def fastest(self, prefix: Sequence[int] = ()) -> float:
        """Lowest latency of any completion of ``prefix``."""
        return self.latency(prefix) + self._tail_min[len(prefix)] if self.costs is not None else 0.0

    def meets(self, arch: Sequence[int]) -> bool:
        return self.limit is None or self.latency(arch) <= self.limit + 1e-9

    def feasible(self, prefix: Sequence[int] = ()) -> bool:
        return self.limit is None or self.fastest(prefix) <= self.limit + 1e-9

    def _draw(self, start: int, generator: torch.Generator | None) -> list[int]:
        u = torch.rand(len(self.num_ops) - start, generator=generator).tolist()
        return [min(int(v * n), n - 1) for v, n in zip(u, self.num_ops[start:], strict=True)]

    def complete(self, prefix: Sequence[int] = (), generator: torch.Generator | None = None) -> list[int]:
        """A uniformly drawn full architecture that starts with ``prefix`` and meets the limit."""
        prefix = [int(o) for o in prefix]
        if not self.feasible(prefix):
            raise LatencyLimitError(
                f"no architecture starting with {prefix} meets the latency limit of {self.limit:.4g} ms: the "
                f"fastest possible takes {self.fastest(prefix):.4g} ms (fastest of the whole space: "
                f"{self.fastest():.4g} ms); raise the limit")
        for _ in range(self.max_tries):
            arch = prefix + self._draw(len(prefix), generator)
            if self.meets(arch):
                return arch
        arch = list(prefix)
        spent = self.latency(arch)
        for layer in range(len(prefix), len(self.num_ops)):
            assert self.costs is not None and self.limit is not None
            budget = self.limit + 1e-9 - spent - self._tail_min[layer + 1]
            allowed = [o for o, c in enumerate(self.costs[layer]) if c <= budget]
            op = allowed[int(torch.randint(len(allowed), (1,), generator=generator))]
            arch.append(op)
            spent += self.costs[layer][op]
        return arch


class UniformProposal(nn.Module):
    """``q(m) = prod_l Uniform(O_l)``: single-path one-shot sampling (Guo et al. 2019; PC-NAS warm-up)."""

    kind = "uniform"

    def __init__(self, num_ops: Sequence[int]) -> None:
        super().__init__()
        self.num_ops = [int(n) for n in num_ops]
        self.completion = Completion(self.num_ops)

    def sample(self, generator: torch.Generator | None = None) -> list[int]:
        return self.completion.complete((), generator)

    def effective_architectures(self) -> float:
        return float(math.prod(self.num_ops))


class PartialModelPool(nn.Module):
    """The partial-model pool of Algorithm 2; its state (members, potentials, history) is checkpointed."""

    kind = "pool"

    def __init__(self, num_ops: Sequence[int], pool_size: int, completion: Completion | None = None) -> None:
        super().__init__()
        if pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        self.num_ops = [int(n) for n in num_ops]
        self.pool_size = int(pool_size)
        self.completion = completion or Completion(self.num_ops)
        self.members: list[Architecture] = []
        self.potentials: list[float] = []
        self.history: list[dict[str, Any]] = []

    @property
    def depth(self) -> int:
        """Number of mixops fixed by the members (0 before the first update)."""
        return len(self.members[0]) if self.members else 0

    @property
    def complete(self) -> bool:
        return self.depth == len(self.num_ops)

    def candidates(self) -> list[Architecture]:
        """Every member extended by every op of the next mixop (the ops of the first mixop when empty)."""
        if self.complete:
            raise ValueError("the pool already fixes every mixop")
        layer = self.depth
        return [member + (op,) for member in (self.members or [()]) for op in range(self.num_ops[layer])]

    def update(self, potential: Callable[[Architecture], float], world: World = SINGLE) -> dict[str, Any]:
        """Score the candidates that can still meet the latency limit and keep the top ``pool_size`` (ties keep
        the candidates' order). Returns the interval's record (also appended to :attr:`history`). In a
        distributed search each rank scores its share of the candidates and the scores are gathered."""
        everything = self.candidates()
        candidates = [c for c in everything if self.completion.feasible(c)]
        if not candidates:
            raise LatencyLimitError(f"no candidate of mixop {self.depth} meets the latency limit of "
                                    f"{self.completion.limit} ms (fastest: {self.completion.fastest():.4g} ms)")
        scores = world.max([float(potential(c)) if world.owns(i) else float("-inf")
                            for i, c in enumerate(candidates)])
        order = sorted(range(len(candidates)), key=lambda i: -scores[i])[: self.pool_size]
        self.members = [candidates[i] for i in order]
        self.potentials = [scores[i] for i in order]
        record = {"interval": len(self.history), "layer": self.depth - 1, "candidates": len(candidates),
                  "infeasible": len(everything) - len(candidates),
                  "pool": [list(m) for m in self.members], "potentials": list(self.potentials),
                  "candidate_potentials": [[list(c), s] for c, s in zip(candidates, scores, strict=True)]}
        self.history.append(record)
        return record

    def sample(self, generator: torch.Generator | None = None) -> list[int]:
        """A member drawn uniformly, completed uniformly under the latency limit (uniform when empty)."""
        if not self.members:
            return self.completion.complete((), generator)
        member = self.members[int(torch.randint(len(self.members), (1,), generator=generator))]
        return self.completion.complete(member, generator)

    def effective_architectures(self) -> float:
        if not self.members:
            return float(math.prod(self.num_ops))
        return float(len(self.members) * math.prod(self.num_ops[self.depth:]))

    def get_extra_state(self) -> dict[str, Any]:
        return {"members": [list(m) for m in self.members], "potentials": list(self.potentials),
                "history": self.history}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.members = [tuple(int(o) for o in m) for m in state["members"]]
        self.potentials = [float(p) for p in state["potentials"]]
        self.history = list(state["history"])
