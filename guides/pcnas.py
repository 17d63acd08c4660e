"""Proposals of PC-NAS (Li et al., CVPR 2020, Sec. 3.3, Algorithms 1-2): distributions over architectures without
learned parameters, each with its own update rule. An architecture is one option index per decision of the
space, in the order of :meth:`~bayesnas.spaces.decisions.DecisionSpace.decisions` (the chain: one op per mixop;
the cells: one op per edge and cell type).

The search draws ``m`` from the proposal, conditions the model on it and trains the shared weights on the
conditioned likelihood; :class:`ProposalGuide` makes any proposal a Pyro guide of
:class:`~bayesnas.models.pcnas.PCNASModel`, for ``pyro.infer.SVI`` and ``pyro.infer.Predictive``.

- :class:`UniformProposal`: every option of every decision uniformly (single-path one-shot; PC-NAS's warm-up).
- :class:`PartialModelPool`: the pool of the P best partial models ``(o_1, ..., o_l)``; a draw picks a member
  uniformly and completes it uniformly among the completions that meet the latency limit (the paper only says
  "randomly sample the missing operator[s]" for training, Sec. 3.3; we keep training draws under the limit
  too, so the weights are trained on the architectures that the potentials score). After each
  interval the pool is extended by every option of the next decision, and the top P candidates by *potential*
  (Eq. 11: mean one-batch validation accuracy of random completions, Algorithm 1) form the new pool.
- :class:`Completion`: uniform random completion of a partial model under a latency limit, exact whatever the
  fraction of completions that meet it.

Both proposals report the *effective number of architectures* sharing the weights, exp(entropy) of the
proposal ignoring the latency limit: ``prod_l N_l`` for the uniform one, ``|pool| x prod_{l > depth} N_l`` for
the pool (posterior fading, Eq. 10: the fewer architectures share the weights, the closer the shared posterior
stays to each model's own).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from bayesnas.config import ConfigError
from bayesnas.distributed import SINGLE, World
from bayesnas.models.pcnas import site

Architecture = tuple[int, ...]


class LatencyLimitError(ConfigError):
    """No architecture (or no completion of a partial model) meets the latency limit."""


class Completion:
    """Uniform random completion of partial models; with a latency limit, uniform over the completions that meet
    it (Li et al., CVPR 2020, Sec. 3.3: the potential of Eq. 11 averages "uniformly sampl[ed] valid models").

    ``costs[l][o]``: latency of option ``o`` of decision ``l``; ``fixed``: latency of the fixed parts. An architecture
    is valid when ``fixed + sum_l costs[l][o_l] <= limit`` (:meth:`meets`, 1e-9 ms tolerance).

    Sampling is exact in every case, in two stages that each return a uniform draw of the valid completions
    (so their mixture is uniform too):

    1. rejection: up to ``max_tries`` uniform completions, the first valid one is returned (cheap when most
       completions are valid, and the draws are those of the unconstrained sampler);
    2. otherwise rejection from a *bounded sequential proposal*, exact whatever the fraction of valid
       completions. Let ``N(l, b)`` count the completions of decisions ``l..L-1`` whose latency is at most ``b``.
       Counting it exactly is a knapsack count over real costs (the achievable sums grow as ``ops^layers``),
       so a dynamic programme over a grid of ``grid`` budget steps ``h`` computes an upper bound instead:
       with costs shifted by each decision's cheapest option and floored to the grid, ``C = floor(c / h)``,
       ``U(L, k) = [k >= 0]`` and ``U(l, k) = sum_o U(l+1, k - C_lo)``. Since ``floor(b - c) <= floor(b) -
       floor(c)``, ``U(l, K(b)) >= N(l, b)`` at every layer. A draw walks the decisions, picking option ``o`` with
       probability ``U(l+1, k - C_lo) / U(l, k)`` and giving up with the leftover mass; at the last decision the
       weights are the exact validity indicators. The probabilities telescope: every valid completion is
       drawn with probability exactly ``1 / U(start, K)`` and nothing invalid is ever returned, so an accepted
       draw is uniform over the valid completions. Only the acceptance rate ``N / U`` depends on the grid:
       flooring loosens the budget by at most ``L h``, a fraction ``L / grid`` of the largest budget (about
       0.5 % at the chain's 21 mixops and the default 4096 steps), so a draw is accepted with probability
       close to 1 at any limit; the grid costs ``O(L x ops x grid)`` once, a draw ``O(L x ops)``.

    The counts are float64 (``ops^L`` overflows int64 at 21 mixops of 10 ops); each layer's sum is inflated by
    1e-12 so that rounding can never make a bound smaller than the sum it bounds. The draws come from ``generator``
    (float64 uniforms), so a seeded generator gives the same completions everywhere.

    A partial model no completion of which meets the limit raises :class:`LatencyLimitError` naming the limit and
    the fastest latency possible.
    """

    TOLERANCE = 1e-9
    """Slack (ms) of :meth:`meets` against rounding of the latency sums."""

    def __init__(self, num_ops: Sequence[int], costs: Sequence[Sequence[float]] | None = None, fixed: float = 0.0,
                 limit: float | None = None, max_tries: int = 100, grid: int = 4096) -> None:
        self.num_ops = [int(n) for n in num_ops]
        if costs is not None and [len(c) for c in costs] != self.num_ops:
            raise ValueError("costs need one entry per option of every decision")
        if limit is not None and costs is None:
            raise ValueError("a latency limit needs the latency table (costs)")
        if grid < 1:
            raise ValueError("grid must be >= 1")
        self.costs = [list(map(float, c)) for c in costs] if costs is not None else None
        self.fixed = float(fixed)
        self.limit = limit
        self.max_tries = max(1, int(max_tries))
        self.grid = int(grid)
        self._tail_min = [0.0] * (len(self.num_ops) + 1)
        if self.costs is not None:
            for layer in reversed(range(len(self.num_ops))):
                self._tail_min[layer] = self._tail_min[layer + 1] + min(self.costs[layer])
        self._bounds: tuple[float, float, list[np.ndarray], np.ndarray] | None = None
        self.proposals = 0
        """Draws of the bounded sequential proposal so far (stage 2), accepted or not."""

    def latency(self, arch: Sequence[int]) -> float:
        """Latency of a (partial) architecture: fixed parts plus its ops' entries (0 without a table)."""
        if self.costs is None:
            return 0.0
        return self.fixed + sum(self.costs[layer][op] for layer, op in enumerate(arch))

    def fastest(self, prefix: Sequence[int] = ()) -> float:
        """Lowest latency of any completion of ``prefix``."""
        return self.latency(prefix) + self._tail_min[len(prefix)] if self.costs is not None else 0.0

    def meets(self, arch: Sequence[int]) -> bool:
        return self.limit is None or self.latency(arch) <= self.limit + self.TOLERANCE

    def feasible(self, prefix: Sequence[int] = ()) -> bool:
        return self.limit is None or self.fastest(prefix) <= self.limit + self.TOLERANCE

    def _draw(self, start: int, generator: torch.Generator | None) -> list[int]:
        u = torch.rand(len(self.num_ops) - start, generator=generator).tolist()
        return [min(int(v * n), n - 1) for v, n in zip(u, self.num_ops[start:], strict=True)]

    def _budget(self, prefix: Sequence[int]) -> float:
        """Latency left to the ops after ``prefix``, above their cheapest choices."""
        assert self.limit is not None
        return self.limit + self.TOLERANCE - self.latency(prefix) - self._tail_min[len(prefix)]

    def bounds(self) -> tuple[float, float, list[np.ndarray], np.ndarray]:
        """The grid of stage 2: step ``h``, slack ``s``, floored shifted costs per decision, and ``U`` of shape
        ``(L + 1, K + 1)`` (row ``l``: decisions ``l..L-1``, column ``k``: budget index ``floor((b + s) / h)``)."""
        if self._bounds is None:
            assert self.costs is not None and self.limit is not None
            shifted = [np.asarray(c) - min(c) for c in self.costs]
            top = self._budget(())  # the largest budget of any prefix: every op costs at least its decision's min
            slack = 1e-6 * max(1.0, abs(self.limit))  # >> rounding of the sums: a valid completion stays counted
            positive = [v for c in shifted for v in c if v > 0]
            h = max(top, min(positive, default=1.0)) / self.grid
            size = int(math.floor((top + 2 * slack) / h)) + 1
            floored = [np.floor(c / h).astype(np.int64) for c in shifted]
            table = np.zeros((len(self.num_ops) + 1, size))
            table[-1] = 1.0
            for layer in reversed(range(len(self.num_ops))):
                row = np.zeros(size)
                for step in floored[layer]:
                    if step < size:
                        row[step:] += table[layer + 1][: size - step]
                table[layer] = row * (1 + 1e-12)
            self._bounds = (h, slack, floored, table)
        return self._bounds

    def _propose(self, prefix: list[int], generator: torch.Generator | None) -> list[int] | None:
        """One draw of the bounded sequential proposal: a valid completion, each with probability
        ``1 / U(start, K)``, or None (the leftover mass)."""
        assert self.costs is not None
        h, slack, floored, table = self.bounds()
        start, last = len(prefix), len(self.num_ops) - 1
        k = int(math.floor((self._budget(prefix) + slack) / h))
        assert 0 <= k < table.shape[1]
        u = torch.rand(len(self.num_ops) - start, generator=generator, dtype=torch.float64).tolist()
        arch = list(prefix)
        self.proposals += 1
        for layer, v in zip(range(start, last + 1), u, strict=True):
            if layer < last:
                weights = [table[layer + 1][k - c] if k >= c else 0.0 for c in floored[layer]]
            else:  # the exact validity of each complete architecture
                weights = [float(self.meets(arch + [op])) for op in range(self.num_ops[layer])]
            op = int(np.searchsorted(np.cumsum(weights), v * table[layer][k], side="right"))
            if op == len(weights):  # the leftover mass U(l, k) - sum of the weights
                return None
            arch.append(op)
            k -= int(floored[layer][op])
        return arch

    def complete(self, prefix: Sequence[int] = (), generator: torch.Generator | None = None) -> list[int]:
        """A full architecture that starts with ``prefix``, drawn uniformly among those that meet the limit."""
        prefix = [int(o) for o in prefix]
        if not self.feasible(prefix):
            raise LatencyLimitError(
                f"no architecture starting with {prefix} meets the latency limit of {self.limit:.4g} ms: the "
                f"fastest possible takes {self.fastest(prefix):.4g} ms (fastest of the whole space: "
                f"{self.fastest():.4g} ms); raise the limit")
        if len(prefix) == len(self.num_ops):
            return prefix
        for _ in range(self.max_tries):
            arch = prefix + self._draw(len(prefix), generator)
            if self.meets(arch):
                return arch
        while True:  # accepted with probability N / U, close to 1 (see the class docstring)
            arch = self._propose(prefix, generator)
            if arch is not None:
                return arch


class UniformProposal(nn.Module):
    """``q(m) = prod_l Uniform(O_l)``: single-path one-shot sampling (Bender et al., ICML 2018; Guo et al.,
    ECCV 2020; PC-NAS warm-up)."""

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
        """Number of decisions fixed by the members (0 before the first update)."""
        return len(self.members[0]) if self.members else 0

    @property
    def complete(self) -> bool:
        return self.depth == len(self.num_ops)

    def candidates(self) -> list[Architecture]:
        """Every member extended by every option of the next decision (the options of the first when empty)."""
        if self.complete:
            raise ValueError("the pool already fixes every decision")
        layer = self.depth
        return [member + (op,) for member in (self.members or [()]) for op in range(self.num_ops[layer])]

    def update(self, potential: Callable[[Architecture], float], world: World = SINGLE) -> dict[str, Any]:
        """Score the candidates that can still meet the latency limit and keep the top ``pool_size`` (ties keep
        the candidates' order). Returns the interval's record (also appended to :attr:`history`). In a
        distributed search each rank scores its share of the candidates and the scores are gathered."""
        everything = self.candidates()
        candidates = [c for c in everything if self.completion.feasible(c)]
        if not candidates:
            raise LatencyLimitError(f"no candidate of decision {self.depth} meets the latency limit of "
                                    f"{self.completion.limit} ms (fastest: {self.completion.fastest():.4g} ms)")
        scores = world.max([float(potential(c)) if world.owns(i) else float("-inf")
                            for i, c in enumerate(candidates)])
        order = sorted(range(len(candidates)), key=lambda i: -scores[i])[: self.pool_size]
        self.members = [candidates[i] for i in order]
        self.potentials = [scores[i] for i in order]
        record = {"interval": len(self.history), "decision": self.depth - 1, "candidates": len(candidates),
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


class ProposalGuide(PyroModule):
    """A proposal as a Pyro guide of :class:`~bayesnas.models.pcnas.PCNASModel`: each run draws ``m ~ q`` (the
    proposal's :meth:`sample`) and puts it at every decision's site as a point mass.

    ``q`` has nothing that SVI learns (the proposals change by their own rules, Algorithm 2), so the ELBO's
    gradient is that of the model's log-joint at the draw: the weight update of PC-NAS (Li et al., CVPR 2020,
    Eq. 3; the uniform prior's log-density is a constant). Its value leaves out the entropy of ``q``, also a
    constant for the weights."""

    def __init__(self, proposal: UniformProposal | PartialModelPool,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.proposal = proposal
        self.generator = generator

    def forward(self, x: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> list[int]:
        arch = self.proposal.sample(self.generator)
        device = x.device if isinstance(x, torch.Tensor) else None
        for decision, op in enumerate(arch):
            pyro.sample(site(decision), dist.Delta(torch.tensor(op, device=device)))
        return arch
