"""GDAS model (papers/gdas.md Sec. 3): a one-hot architecture site per cell type with a uniform prior, and
the likelihood of the cell super-network that runs only the sampled op of each edge."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule

from bayesnas.spaces.cell import CellNetwork


def arch_site(kind: str) -> str:
    return f"arch_{kind}"


def kl_weight(beta: float) -> AbstractContextManager:
    """Scale the architecture sites by ``beta`` (on model and guide alike: ``TraceMeanField_ELBO`` scales the
    analytic KL by the guide site's scale). ``beta = 0`` leaves the term out elsewhere: scaling by zero
    raises in Pyro, so it is no scale here."""
    return poutine.scale(scale=beta) if beta else nullcontext()


class GDASModel(PyroModule):
    """``p(f) prod_i p(y_i | x_i, f)``: ``f[kind]`` one-hot ``(E, K)`` per cell type, uniform over ops.

    ``per_example=True`` draws one architecture per example (the paper's description), inside the data
    plate; otherwise one per mini-batch (the authors' code). ``beta`` weights the architecture terms of the
    ELBO; with ``beta = 0`` (GDAS as published) the method conditions this model on the proposal's draw and
    keeps only the likelihood.
    """

    def __init__(self, net: CellNetwork, cell_types: list[str], arch_shape: tuple[int, int],
                 per_example: bool = False, beta: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.cell_types = cell_types
        self.per_example = per_example
        self.beta = beta
        self.register_buffer("prior_logits", torch.zeros(arch_shape))

    def _sample_arch(self, batch: int | None) -> dict[str, torch.Tensor]:
        prior = dist.OneHotCategorical(logits=self.prior_logits)
        if batch is not None:
            prior = prior.expand((batch, *self.prior_logits.shape[:-1]))
        with kl_weight(self.beta):
            return {kind: pyro.sample(arch_site(kind), prior.to_event(1)) for kind in self.cell_types}

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, index: torch.Tensor | None = None,
                size: int | None = None) -> torch.Tensor:
        if index is None:
            index = torch.arange(len(x), device=x.device)
        arch = None if self.per_example else self._sample_arch(None)
        with pyro.plate("data", size or len(x), subsample=index):
            if self.per_example:
                arch = self._sample_arch(len(x))
            logits = self.net(x, arch)
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)
        return logits
