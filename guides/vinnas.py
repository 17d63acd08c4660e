"""VINNAS guide (Ferianc, Fan & Rodrigues, arXiv:2007.06103, 2020; Eq. 5): factorised Normal posteriors over
every weight tensor and over the op strengths alpha of every decision (one ``(n_g, K_g)`` tensor per decision group
of the space), parametrised by means and log-variances.

Initialisation (Sec. V-A): log-variances at -10, weight means Xavier-uniform (passed in by the model),
``mu_alpha ~ N(0, 0.001)`` read as a standard deviation of 0.001 (the DARTS convention
``1e-3 * randn``). The two parameter groups are theta_w (weights) and theta_alpha (strengths) of
Algorithm 1; either can be frozen (detached) so that a stage's backward pass skips the other's gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import pyro
import torch
from torch import nn

from bayesnas.distributions import LocalNormal, log_lambda
from bayesnas.models.vinnas import alpha_site, in_param_store, kl_weight
from bayesnas.reparam import ONLY_FEEDS_LAYERS


def _key(site: str) -> str:
    return site.replace(".", "/")


class VINNASGuide(nn.Module):
    """``q(w) prod_g q(alpha_g)`` (e.g. ``q(alpha_normal) q(alpha_reduce)`` on cells), all factorised Normal
    (:class:`LocalNormal`, so convolutions fed with the weight samples are locally reparameterised). ``shapes``:
    ``{group: (n_g, K_g)}``; the alpha parameters and buffers are keyed by group name."""

    def __init__(self, initial_weights: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, int]],
                 init_log_var: float = -10.0, alpha_init_std: float = 1e-3) -> None:
        super().__init__()
        self.weight_sites = list(initial_weights)
        self.groups = list(shapes)
        self.mu_w = nn.ParameterDict({_key(s): nn.Parameter(w.detach().clone()) for s, w in initial_weights.items()})
        self.log_var_w = nn.ParameterDict({_key(s): nn.Parameter(torch.full_like(w, init_log_var))
                                           for s, w in initial_weights.items()})
        # pairs, not dicts: a ParameterDict sorts a dict's keys, and the groups keep the space's order
        self.mu_alpha = nn.ParameterDict([(g, nn.Parameter(alpha_init_std * torch.randn(shape)))
                                          for g, shape in shapes.items()])
        self.log_var_alpha = nn.ParameterDict([(g, nn.Parameter(torch.full(shape, init_log_var)))
                                               for g, shape in shapes.items()])
        # theta_alpha at the best stage-2 error so far (Algorithm 1, lines 15-18), checkpointed with the rest
        for g, shape in shapes.items():
            self.register_buffer(f"best_mu_alpha_{g}", torch.zeros(shape))
            self.register_buffer(f"best_log_var_alpha_{g}", torch.full(shape, init_log_var))
        # best_epoch -1: nothing remembered yet (best_error then unused; finite, as every checkpointed tensor must be)
        self.register_buffer("best_error", torch.tensor(1.0))
        self.register_buffer("best_epoch", torch.tensor(-1))
        self.gammas = (0.0, 0.0, 0.0)
        self.frozen: set[str] = set()
        """``{"weights"}`` or ``{"alpha"}``: those parameters enter the loss detached."""
        self._weight_q: dict[str, LocalNormal] = {}

    # ------------------------------------------------------------------ distributions
    def _p(self, group: str, p: torch.Tensor) -> torch.Tensor:
        return p.detach() if group in self.frozen else p

    def weight_distribution(self, site: str) -> LocalNormal:
        """``q(w)`` of a weight site; the same object from step to step while it reads the same tensors (it holds
        the parameters themselves, not their values: hundreds of sites per step need not be built anew)."""
        k = _key(site)
        loc, log_var = self._p("weights", self.mu_w[k]), self._p("weights", self.log_var_w[k])
        q = self._weight_q.get(site)
        if q is None or q.loc is not loc or q.log_var is not log_var:
            q = self._weight_q[site] = LocalNormal(loc, log_var)
        return q

    def alpha_distribution(self, group: str) -> LocalNormal:
        return LocalNormal(self._p("alpha", self.mu_alpha[group]), self._p("alpha", self.log_var_alpha[group]))

    def forward(self, *args, **kwargs) -> None:
        in_param_store("vinnas_guide", self)
        g_w, g_alpha, _ = self.gammas
        with kl_weight(g_w):
            for site in self.weight_sites:  # the model feeds each weight to its layer only
                pyro.sample(site, self.weight_distribution(site), infer={ONLY_FEEDS_LAYERS: True})
        with kl_weight(g_alpha):
            for g in self.groups:
                pyro.sample(alpha_site(g), self.alpha_distribution(g))

    # ------------------------------------------------------------------ parameters
    def weight_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.mu_w.values()
        yield from self.log_var_w.values()

    def alpha_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.mu_alpha.values()
        yield from self.log_var_alpha.values()

    # ------------------------------------------------------------------ summaries of q
    def op_entropy(self, samples: int = 16,
                   clip: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``sum_{i,j} H(E_q[z^{i,j}])`` over every decision (Eq. 8), ``E_q[z]`` estimated by ``samples``
        reparameterised draws of alpha (differentiable in theta_alpha); ``clip(group, alpha)`` is the model's
        clipping of the zero op (:meth:`~bayesnas.models.vinnas.VINNASModel.clip`) applied before the softmax."""
        total = torch.zeros((), device=next(iter(self.mu_alpha.values())).device)
        for g in self.groups:
            alpha = self.alpha_distribution(g).rsample((samples,))
            if clip is not None:
                alpha = clip(g, alpha)
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

    def sample_weights(self, prune_threshold: float | None = None) -> dict[str, torch.Tensor]:
        """One draw ``w ~ q(w)`` by site; with a threshold, weights with ``log lambda >= threshold`` set to 0 (as
        :meth:`weight_means` prunes the means)."""
        out = {}
        for site in self.weight_sites:
            mu, log_var = self.mu_w[_key(site)], self.log_var_w[_key(site)]
            w = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
            if prune_threshold is not None:
                w = torch.where(log_lambda(mu, log_var) < prune_threshold, w, 0.0)
            out[site] = w
        return out

    def log_lambdas(self) -> dict[str, torch.Tensor]:
        return {s: log_lambda(self.mu_w[_key(s)], self.log_var_w[_key(s)]) for s in self.weight_sites}

    def alpha_means(self) -> dict[str, torch.Tensor]:
        return {g: self.mu_alpha[g] for g in self.groups}

    def snr(self) -> dict[str, torch.Tensor]:
        """Positive signal-to-noise ratio ``mu_alpha / sigma_alpha^2`` per (decision, op) (Sec. IV-C)."""
        return {g: self.mu_alpha[g] * torch.exp(-self.log_var_alpha[g]) for g in self.groups}

    @torch.no_grad()
    def remember_best(self, error: float, epoch: int) -> bool:
        """Keep a copy of theta_alpha when ``error`` beats the best so far (Algorithm 1, lines 16-18)."""
        if int(self.best_epoch) >= 0 and not error < float(self.best_error):
            return False
        for g in self.groups:
            getattr(self, f"best_mu_alpha_{g}").copy_(self.mu_alpha[g])
            getattr(self, f"best_log_var_alpha_{g}").copy_(self.log_var_alpha[g])
        self.best_error.fill_(error)
        self.best_epoch.fill_(epoch)
        return True

    @torch.no_grad()
    def restore_best(self) -> bool:
        """Put the remembered theta_alpha back (no-op when stage 2 never ran)."""
        if int(self.best_epoch) < 0:
            return False
        for g in self.groups:
            self.mu_alpha[g].copy_(getattr(self, f"best_mu_alpha_{g}"))
            self.log_var_alpha[g].copy_(getattr(self, f"best_log_var_alpha_{g}"))
        return True
