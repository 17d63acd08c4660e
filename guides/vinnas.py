"""VINNAS guide (Ferianc, Fan & Rodrigues, arXiv:2007.06103, 2020; Eq. 5): factorised Normal posteriors over
every weight tensor and over the op strengths alpha of each cell type, parametrised by means and log-variances.

Initialisation (Sec. V-A): log-variances at -10, weight means Xavier-uniform (passed in by the model),
``mu_alpha ~ N(0, 0.001)`` read as a standard deviation of 0.001 (the DARTS convention
``1e-3 * randn``). The two parameter groups are theta_w (weights) and theta_alpha (strengths) of
Algorithm 1; either can be frozen (detached) so that a stage's backward pass skips the other's gradients.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager

import pyro
import torch
from pyro import poutine
from torch import nn

from bayesnas.distributions import LocalNormal, log_lambda


def _key(site: str) -> str:
    return site.replace(".", "/")


def alpha_site(kind: str) -> str:
    """The name of a cell type's strength site (as in ``bayesnas.models.vinnas``)."""
    return f"alpha.{kind}"


def kl_weight(gamma: float) -> AbstractContextManager:
    """The same handler as the model's: scale the KL by ``gamma``, or leave it out (mask) when 0."""
    return poutine.scale(scale=gamma) if gamma > 0 else poutine.mask(mask=False)


class VINNASGuide(nn.Module):
    """``q(w) q(alpha_normal) q(alpha_reduce)``, all factorised Normal (:class:`LocalNormal`, so convolutions
    fed with the weight samples are locally reparameterised)."""

    def __init__(self, initial_weights: Mapping[str, torch.Tensor], cell_types: Sequence[str],
                 arch_shape: tuple[int, int], init_log_var: float = -10.0, alpha_init_std: float = 1e-3) -> None:
        super().__init__()
        self.weight_sites = list(initial_weights)
        self.cell_types = list(cell_types)
        self.mu_w = nn.ParameterDict({_key(s): nn.Parameter(w.detach().clone()) for s, w in initial_weights.items()})
        self.log_var_w = nn.ParameterDict({_key(s): nn.Parameter(torch.full_like(w, init_log_var))
                                           for s, w in initial_weights.items()})
        self.mu_alpha = nn.ParameterDict({k: nn.Parameter(alpha_init_std * torch.randn(arch_shape))
                                          for k in self.cell_types})
        self.log_var_alpha = nn.ParameterDict({k: nn.Parameter(torch.full(arch_shape, init_log_var))
                                               for k in self.cell_types})
        # theta_alpha at the best stage-2 error so far (Algorithm 1, lines 15-18), checkpointed with the rest
        for k in self.cell_types:
            self.register_buffer(f"best_mu_alpha_{k}", torch.zeros(arch_shape))
            self.register_buffer(f"best_log_var_alpha_{k}", torch.full(arch_shape, init_log_var))
        self.register_buffer("best_error", torch.tensor(float("inf")))
        self.register_buffer("best_epoch", torch.tensor(-1))
        self.gammas = (0.0, 0.0, 0.0)
        self.frozen: set[str] = set()
        """``{"weights"}`` or ``{"alpha"}``: those parameters enter the loss detached."""

    # ------------------------------------------------------------------ distributions
    def _p(self, group: str, p: torch.Tensor) -> torch.Tensor:
        return p.detach() if group in self.frozen else p

    def weight_distribution(self, site: str) -> LocalNormal:
        k = _key(site)
        return LocalNormal(self._p("weights", self.mu_w[k]), self._p("weights", self.log_var_w[k]))

    def alpha_distribution(self, kind: str) -> LocalNormal:
        return LocalNormal(self._p("alpha", self.mu_alpha[kind]), self._p("alpha", self.log_var_alpha[kind]))

    def forward(self, *args, **kwargs) -> None:
        g_w, g_alpha, _ = self.gammas
        with kl_weight(g_w):
            for site in self.weight_sites:
                pyro.sample(site, self.weight_distribution(site))
        with kl_weight(g_alpha):
            for kind in self.cell_types:
                pyro.sample(alpha_site(kind), self.alpha_distribution(kind))

    # ------------------------------------------------------------------ parameters
    def weight_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.mu_w.values()
        yield from self.log_var_w.values()

    def alpha_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.mu_alpha.values()
        yield from self.log_var_alpha.values()

    # ------------------------------------------------------------------ summaries of q
    def op_entropy(self, samples: int = 16, zero_alpha_max: float | None = None,
                   zero_op: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_{i,j} H(E_q[z^{i,j}])`` over both cell types (Eq. 8), ``E_q[z]`` estimated by ``samples``
        reparameterised draws of alpha (differentiable in theta_alpha)."""
        total = torch.zeros((), device=next(iter(self.mu_alpha.values())).device)
        for kind in self.cell_types:
            alpha = self.alpha_distribution(kind).rsample((samples,))
            if zero_alpha_max is not None and zero_op is not None:
                alpha = torch.where(zero_op, alpha.clamp(max=zero_alpha_max), alpha)
            z = torch.softmax(alpha, -1).mean(0)
            total = total - torch.xlogy(z, z).sum()
        return total

    def weight_means(self, prune_threshold: float | None = None) -> dict[str, torch.Tensor]:
        """``mu_w`` by site; with a threshold, weights with ``log lambda >= threshold`` set to 0."""
        out = {}
        for site in self.weight_sites:
            mu = self.mu_w[_key(site)]
            if prune_threshold is not None:
                mu = torch.where(log_lambda(mu, self.log_var_w[_key(site)]) < prune_threshold, mu, 0.0)
            out[site] = mu
        return out

    def log_lambdas(self) -> dict[str, torch.Tensor]:
        return {s: log_lambda(self.mu_w[_key(s)], self.log_var_w[_key(s)]) for s in self.weight_sites}

    def alpha_means(self) -> dict[str, torch.Tensor]:
        return {k: self.mu_alpha[k] for k in self.cell_types}

    def snr(self) -> dict[str, torch.Tensor]:
        """Positive signal-to-noise ratio ``mu_alpha / sigma_alpha^2`` per (edge, op) (Sec. IV-C)."""
        return {k: self.mu_alpha[k] * torch.exp(-self.log_var_alpha[k]) for k in self.cell_types}

    @torch.no_grad()
    def remember_best(self, error: float, epoch: int) -> bool:
        """Keep a copy of theta_alpha when ``error`` beats the best so far (Algorithm 1, lines 16-18)."""
        if not error < float(self.best_error):
            return False
        for k in self.cell_types:
            getattr(self, f"best_mu_alpha_{k}").copy_(self.mu_alpha[k])
            getattr(self, f"best_log_var_alpha_{k}").copy_(self.log_var_alpha[k])
        self.best_error.fill_(error)
        self.best_epoch.fill_(epoch)
        return True

    @torch.no_grad()
    def restore_best(self) -> bool:
        """Put the remembered theta_alpha back (no-op when stage 2 never ran)."""
        if int(self.best_epoch) < 0:
            return False
        for k in self.cell_types:
            self.mu_alpha[k].copy_(getattr(self, f"best_mu_alpha_{k}"))
            self.log_var_alpha[k].copy_(getattr(self, f"best_log_var_alpha_{k}"))
        return True
