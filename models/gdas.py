"""GDAS model (Dong & Yang, "Searching for a Robust Neural Architecture in Four GPU Hours", CVPR 2019, Sec. 3):
a one-hot architecture site per decision group of the space with a uniform prior, and the likelihood of the
super-network that runs only the sampled op of each decision."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn


def arch_site(group: str) -> str:
    return f"arch_{group}"


def kl_weight(beta: float) -> AbstractContextManager:
    """Scale the architecture sites by ``beta`` (on model and guide alike: ``TraceMeanField_ELBO`` scales the
    analytic KL by the guide site's scale). ``beta = 0`` leaves the term out elsewhere: scaling by zero
    raises in Pyro, so it is no scale here."""
    return poutine.scale(scale=beta) if beta else nullcontext()


def _drop_shared_prior(module: nn.Module, state: dict, prefix: str, *args) -> None:
    """Checkpoints written before the prior was kept per group hold its all-zero logits as one buffer
    ``prior_logits``; it carries nothing, so loading ignores it (such a run resumes)."""
    state.pop(f"{prefix}prior_logits", None)


def uniform_gate(arch: torch.Tensor) -> torch.Tensor:
    """Straight-through one-hots ``arch`` (``(..., K)``) whose forward value at each decision's selected op is
    ``u ~ U(0, 1)`` instead of 1, with the same gradient: ``arch + (u - 1) arch.detach()``.

    GDAS's logits learn from ``dL/dh``, the derivative of the loss at the gate's forward value ``h``. At ``h = 1``
    (the paper, Eq. 5-7) it is the first-order effect of scaling the selected op; at ``h ~ U(0, 1)`` its expectation
    is ``int_0^1 dL/dh dh = L(h = 1) - L(h = 0)``: the loss change of running the op against leaving its output out
    (on the chain's residual mixops, against ``Identity``). Beyond the paper: for spaces where the two disagree
    (``benchmarks/gdas_gate_signal.py``)."""
    u = 1 - torch.rand((*arch.shape[:-1], 1), dtype=arch.dtype, device=arch.device)  # in (0, 1]: argmax kept
    return arch + (u - 1) * arch.detach()


class GDASModel(PyroModule):
    """``p(f) prod_i p(y_i | x_i, f)``: ``f[group]`` one-hot ``(n_g, K_g)`` per decision group, uniform over the
    options of every decision.

    ``per_example=True`` draws one architecture per example (the paper's description), inside the data
    plate; otherwise one per mini-batch (the authors' code). ``beta`` weights the architecture terms of the
    ELBO; with ``beta = 0`` (GDAS as published) the method conditions this model on the proposal's draw and
    keeps only the likelihood.
    """

    def __init__(self, net: nn.Module, shapes: Mapping[str, tuple[int, int]], per_example: bool = False,
                 beta: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.shapes = dict(shapes)
        self.per_example = per_example
        self.beta = beta
        self.uniform_gate = False
        """Whether the forward runs the sampled ops at gate values ``u ~ U(0, 1)`` (:func:`uniform_gate`)."""
        self.register_load_state_dict_pre_hook(_drop_shared_prior)

    def _sample_arch(self, batch: int | None, device: torch.device) -> dict[str, torch.Tensor]:
        arch = {}
        with kl_weight(self.beta):
            for group, shape in self.shapes.items():
                prior = dist.OneHotCategorical(logits=torch.zeros(shape, device=device))
                if batch is not None:
                    prior = prior.expand((batch, shape[0]))
                arch[group] = pyro.sample(arch_site(group), prior.to_event(1))
        return arch

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, index: torch.Tensor | None = None,
                size: int | None = None) -> torch.Tensor:
        if index is None:
            index = torch.arange(len(x), device=x.device)
        arch = None if self.per_example else self._sample_arch(None, x.device)
        with pyro.plate("data", size or len(x), subsample=index):
            if self.per_example:
                arch = self._sample_arch(len(x), x.device)
            logits = self.net(x, {g: uniform_gate(a) for g, a in arch.items()} if self.uniform_gate else arch)
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)
        return logits
