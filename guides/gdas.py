"""GDAS proposal (Dong & Yang, CVPR 2019, Eq. 5-7): straight-through Gumbel-softmax over the options of every
decision of the space."""

from __future__ import annotations

from collections.abc import Mapping

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from bayesnas.models.gdas import arch_site, kl_weight


class GumbelSoftmaxProposal(PyroModule):
    """``q(f) = RelaxedOneHotCategoricalStraightThrough(tau, logits=A_g)`` per decision group ``g`` (a cell type,
    the chain's mixops): the forward pass uses the hard one-hot ``h = one_hot(argmax(A + G))`` and the backward
    pass the soft ``softmax((A + G) / tau)`` (Eq. 5-7), so every logit of a sampled decision gets a gradient
    while only one op per decision runs.

    ``A_g`` ``(n_g, K_g)`` starts at ``1e-3 * N(0, 1)`` as in the authors' code (``logits`` is keyed by group
    name, so a cell space's checkpoint holds ``logits.normal``, ``logits.reduce``); ``temperature`` is annealed by
    the method.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, int]], temperature: float = 10.0, per_example: bool = False,
                 beta: float = 1.0) -> None:
        super().__init__()
        self.groups = list(shapes)
        # pairs, not a dict: a ParameterDict sorts a dict's keys, and the groups keep the space's order
        self.logits = nn.ParameterDict([(g, nn.Parameter(1e-3 * torch.randn(shape))) for g, shape in shapes.items()])
        self.temperature = temperature
        self.per_example = per_example
        self.beta = beta

    def distribution(self, group: str, batch: int | None = None) -> dist.TorchDistribution:
        logits = self.logits[group]
        if batch is not None:
            logits = logits.expand(batch, *logits.shape)
        tau = torch.tensor(self.temperature, dtype=logits.dtype, device=logits.device)
        return dist.RelaxedOneHotCategoricalStraightThrough(tau, logits=logits).to_event(1)

    def _sample(self, batch: int | None) -> dict[str, torch.Tensor]:
        with kl_weight(self.beta):
            return {g: pyro.sample(arch_site(g), self.distribution(g, batch)) for g in self.groups}

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
        """``softmax(A_g)`` per group, ``(n_g, K_g)``."""
        return {g: torch.softmax(a, -1) for g, a in self.logits.items()}

    @torch.no_grad()
    def decision_entropy(self) -> dict[str, torch.Tensor]:
        """Entropy of each decision's op distribution (nats), ``(n_g,)`` per group."""
        return {g: -(p * torch.log(p.clamp_min(1e-30))).sum(-1) for g, p in self.probabilities().items()}

    def log_effective_architectures(self) -> float:
        """log of exp(sum of decision entropies): how many architectures effectively share the weights."""
        return float(sum(h.sum() for h in self.decision_entropy().values()))

    def mode(self) -> dict[str, torch.Tensor]:
        """The most probable architecture, as one-hot ``(n_g, K_g)`` per group."""
        return {g: nn.functional.one_hot(a.argmax(-1), a.shape[-1]).to(a.dtype) for g, a in self.logits.items()}
