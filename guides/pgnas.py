"""PGNAS guide (Zhou et al., AAAI 2020, Eq. 12-16): concrete-dropout posterior over every searchable kernel."""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from bayesnas.distributions import ConcreteDropout


def _key(site: str) -> str:
    return site.replace(".", "/")


class ConcreteDropoutGuide(PyroModule):
    """``q(phi_l^s) : phi = m * eps``, ``eps ~ RelaxedBernoulli(keep = 1 - p_l^s, tau)`` (Eq. 13, 16).

    Variational parameters: the kernels ``m`` (initialised from the super-network) and one drop-rate
    logit per kernel (initialised at ``init_drop_rate``; 0.1 in the authors' code). ``learn_drop_rate=False``
    keeps ``p`` fixed: the super-network of the "Random" baseline of Table 3, trained with one hand-set
    dropout rate as in Bender et al. (ICML 2018).
    """

    def __init__(self, initial_weights: dict[str, torch.Tensor], temperature: float = 0.2,
                 init_drop_rate: float = 0.1, rescale: bool = False, kl_scale: float = 1.0,
                 learn_drop_rate: bool = True, min_drop_rate: float = 1e-4) -> None:
        super().__init__()
        if not 0 < init_drop_rate < 1:
            raise ValueError(f"init_drop_rate must lie in (0, 1), got {init_drop_rate}")
        self.site_names = list(initial_weights)
        self.temperature = float(temperature)
        self.rescale = rescale
        self.kl_scale = float(kl_scale)
        self.min_drop_rate = float(min_drop_rate)
        self.weights = nn.ParameterDict({_key(s): nn.Parameter(w.clone()) for s, w in initial_weights.items()})
        logit = torch.logit(torch.tensor(float(init_drop_rate)))
        self.drop_logits = nn.ParameterDict({
            _key(s): nn.Parameter(logit.clone(), requires_grad=learn_drop_rate) for s in self.site_names})

    def drop_rate(self, site: str) -> torch.Tensor:
        p = torch.sigmoid(self.drop_logits[_key(site)])
        return p.clamp(self.min_drop_rate, 1 - self.min_drop_rate)

    def distribution(self, site: str) -> ConcreteDropout:
        return ConcreteDropout(self.weights[_key(site)], self.drop_rate(site), self.temperature, self.rescale)

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        with poutine.scale(scale=self.kl_scale):
            return {site: pyro.sample(site, self.distribution(site)) for site in self.site_names}

    @torch.no_grad()
    def drop_rates(self) -> dict[str, float]:
        return {site: self.drop_rate(site).item() for site in self.site_names}

    @torch.no_grad()
    def sample_architecture(self) -> dict[str, torch.Tensor]:
        """One architecture-weight pair: exact Bernoulli keep masks ``{site: bool (K,)}`` drawn with this
        guide's drop rates (Algorithm 1, line 7)."""
        masks = {}
        for site in self.site_names:
            p = self.drop_rate(site)
            k = self.weights[_key(site)].shape[1]
            masks[site] = torch.rand(k, device=p.device) >= p
        return masks

    def kernels(self) -> dict[str, torch.Tensor]:
        """The learned kernels ``m`` (the variational parameters) by site name."""
        return {site: self.weights[_key(site)] for site in self.site_names}

    def kept_kernels(self) -> dict[str, torch.Tensor]:
        """The kernel a kept slice carries, by site: ``m``, or ``m / (1 - p)`` with rescaling."""
        return {site: self.distribution(site).kernel for site in self.site_names}

    def masked_kernels(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``phi`` at hard keep masks ``{site: bool (K,)}``: the kept kernels with the dropped slices zeroed."""
        return {site: kernel * masks[site].to(kernel.dtype).view(1, -1, *([1] * (kernel.dim() - 2)))
                for site, kernel in self.kept_kernels().items()}
