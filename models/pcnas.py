"""PC-NAS model (Li et al., "Improving one-shot NAS by suppressing the posterior fading", CVPR 2020,
Sec. 3.1-3.2): a uniform prior over the option of every decision of the space and the single-path
super-network as likelihood under a subsampled data plate.

``p(m) p(D | theta, m)`` with ``m = (o_1, ..., o_L)`` one option per decision of
:meth:`~bayesnas.spaces.decisions.DecisionSpace.decisions` (the chain: one op per mixop; the cells: one op per
edge and cell type), ``o_l ~ Categorical(uniform over the options of decision l)`` (Sec. 3.1: "we set the model
prior p(m_k) a uniform distribution"), and the shared weights ``theta`` point estimates (module parameters of the
model). The super-network runs ``m`` in the index form (only the chosen op of each decision). The proposals of
:mod:`bayesnas.guides.pcnas` draw ``m``; the search conditions the model on it (``poutine.condition``) and
minimises the conditioned negative log-likelihood, Eq. 3's ``L_alone`` for one sampled model, whose average over
the proposal is ``L_share`` (Eq. 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from bayesnas.spaces.decisions import DecisionSpace


def site(decision: int) -> str:
    """Name of the architecture sample site of decision ``decision`` (its position in the space's order)."""
    return f"op_{decision}"


class PCNASModel(PyroModule):
    """``prod_l Categorical(o_l | uniform) prod_i p(y_i | f_theta^m(x_i))``."""

    def __init__(self, net: nn.Module, space: DecisionSpace) -> None:
        super().__init__()
        self.net = net
        self.num_ops = space.num_options()
        self.positions = {name: g.positions for name, g in space.groups().items()}
        for decision, n in enumerate(self.num_ops):
            self.register_buffer(f"prior_logits_{decision}", torch.zeros(n), persistent=False)

    def prior(self, decision: int) -> dist.Categorical:
        return dist.Categorical(logits=getattr(self, f"prior_logits_{decision}"))

    def sample_architecture(self) -> list[torch.Tensor]:
        """One option index per decision (global sites, outside the data plate)."""
        return [pyro.sample(site(decision), self.prior(decision)) for decision in range(len(self.num_ops))]

    def architecture(self, choices: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The index form ``{group: long (n_g,)}`` of one option index per decision."""
        return {name: torch.stack([choices[p] for p in positions]) for name, positions in self.positions.items()}

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, index: torch.Tensor | None = None,
                size: int | None = None) -> torch.Tensor:
        """``x``: a mini-batch of the training set, ``index``: its positions, ``size``: the set's size N."""
        arch = self.architecture(self.sample_architecture())
        if index is None:
            index = torch.arange(len(x), device=x.device)
        with pyro.plate("data", size or len(x), subsample=index):
            logits = self.net(x, arch)
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)
        return logits


def conditioned_nll(model: PCNASModel, arch: Sequence[int], x: torch.Tensor, y: torch.Tensor,
                    index: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``-(N/M) sum_i log p(y_i | x_i, theta, m) / N`` of the model conditioned on ``m = arch`` (the mean
    negative log-likelihood per example of Eq. 3, without the constant log-prior of ``m``), and the logits."""
    data = {site(decision): torch.tensor(int(op), device=x.device) for decision, op in enumerate(arch)}
    trace = poutine.trace(poutine.condition(model, data=data)).get_trace(x, y, index, size)
    node = trace.nodes["y"]
    log_lik = node["fn"].log_prob(node["value"]).sum() * node["scale"]
    return -log_lik / size, trace.nodes["_RETURN"]["value"]
