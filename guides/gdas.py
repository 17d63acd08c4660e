"""GDAS proposal (papers/gdas.md Eq. 5-7): straight-through Gumbel-softmax over the ops of every edge."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from bayesnas.models.gdas import arch_site, kl_weight


class GumbelSoftmaxProposal(PyroModule):
    """``q(f) = RelaxedOneHotCategoricalStraightThrough(tau, logits=A)`` per cell type: the forward pass uses
    the hard one-hot ``h = one_hot(argmax(A + G))`` and the backward pass the soft ``softmax((A + G) / tau)``
    (Eq. 5-7), so every logit of a sampled edge gets a gradient while only one op per edge runs.

    ``A`` starts at ``1e-3 * N(0, 1)`` as in the authors' code; ``temperature`` is annealed by the method.
    """

    def __init__(self, cell_types: list[str], arch_shape: tuple[int, int], temperature: float = 10.0,
                 per_example: bool = False, beta: float = 1.0) -> None:
        super().__init__()
        self.cell_types = cell_types
        self.logits = nn.ParameterDict({kind: nn.Parameter(1e-3 * torch.randn(arch_shape)) for kind in cell_types})
        self.temperature = temperature
        self.per_example = per_example
        self.beta = beta

    def distribution(self, kind: str, batch: int | None = None) -> dist.TorchDistribution:
        logits = self.logits[kind]
        if batch is not None:
            logits = logits.expand(batch, *logits.shape)
        tau = torch.tensor(self.temperature, dtype=logits.dtype, device=logits.device)
        return dist.RelaxedOneHotCategoricalStraightThrough(tau, logits=logits).to_event(1)

    def _sample(self, batch: int | None) -> dict[str, torch.Tensor]:
        with kl_weight(self.beta):
            return {kind: pyro.sample(arch_site(kind), self.distribution(kind, batch)) for kind in self.cell_types}

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, index: torch.Tensor | None = None,
                size: int | None = None) -> dict[str, torch.Tensor]:
        if not self.per_example:
            return self._sample(None)
        if index is None:
            index = torch.arange(len(x), device=x.device)
        with pyro.plate("data", size or len(x), subsample=index):
            return self._sample(len(x))

    @torch.no_grad()
    def probabilities(self) -> dict[str, torch.Tensor]:
        """``softmax(A)`` per cell type, ``(E, K)``."""
        return {kind: torch.softmax(a, -1) for kind, a in self.logits.items()}

    @torch.no_grad()
    def edge_entropy(self) -> dict[str, torch.Tensor]:
        """Entropy of each edge's op distribution (nats), ``(E,)`` per cell type."""
        return {kind: -(p * torch.log(p.clamp_min(1e-30))).sum(-1) for kind, p in self.probabilities().items()}

    def log_effective_architectures(self) -> float:
        """log of exp(sum of edge entropies): how many architectures effectively share the weights."""
        return float(sum(h.sum() for h in self.edge_entropy().values()))

    def mode(self) -> dict[str, torch.Tensor]:
        """The most probable architecture, as one-hot ``(E, K)`` per cell type."""
        k = len(next(iter(self.logits.values()))[0])
        return {kind: nn.functional.one_hot(a.argmax(-1), k).to(a.dtype) for kind, a in self.logits.items()}
