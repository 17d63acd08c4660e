"""PGNAS model (Zhou et al., AAAI 2020, Eq. 8-10): spike-and-slab priors on the hybrid kernels, likelihood of the
multi-branch super-network under a subsampled data plate."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, PyroSample
from pyro.nn.module import to_pyro_module_
from torch import nn

from bayesnas.distributions import SpikeAndSlab
from bayesnas.spaces.branches import SearchableLayer


class PGNASModel(PyroModule):
    """``p(phi) prod_i p(y_i | f^phi(x_i))`` with ``phi_{l}^s ~ SpikeAndSlab(u, 1/d)`` per searchable kernel.

    ``net`` is a super-network whose ``searchable()`` yields ``(SearchableLayer, conv)`` pairs: the multi-branch
    ResNet (``branches``) or the MBConv chain with every op summed (``chain``: the projections' expanded input
    channels). The remaining super-network weights (stem, shortcuts, BatchNorm, classifier) are point estimates. The
    prior terms are multiplied by ``kl_scale`` (the authors' code divides the KL by a dataset size larger
    than the real one: ``kl_scale = N / N_kl``); the guide applies the same scale.

    Run it under :class:`bayesnas.reparam.LocalReparameterization` (as the search loop does) for per-example
    dropout masks (Zhou et al. 2020, Algorithm 1, line 3). In a plain SVI loop without it one mask per mini-batch is
    drawn: the same ELBO with a noisier gradient (the selection scores fixed masks that way on purpose).
    """

    def __init__(self, net: nn.Module, prior_precision: float, spike_prob: float = 0.0,
                 kl_scale: float = 1.0) -> None:
        super().__init__()
        searchable = list(net.searchable())
        self.layers: list[SearchableLayer] = [layer for layer, _ in searchable]
        self.initial_weights = {f"net.{layer.module_path}.weight": conv.weight.detach().clone()
                                for layer, conv in searchable}
        self.spike_prob = float(spike_prob)
        self.kl_scale = float(kl_scale)
        self.register_buffer("slab_scale", torch.tensor(float(prior_precision) ** -0.5))
        to_pyro_module_(net)

        def prior(conv: PyroModule) -> SpikeAndSlab:
            return SpikeAndSlab(self.spike_prob, self.slab_scale, conv.kernel_shape)

        for _, conv in searchable:
            conv.weight = PyroSample(prior)
        self.net = net
        self._convs = [conv for _, conv in searchable]

    @property
    def site_names(self) -> list[str]:
        return list(self.initial_weights)

    def sample_kernels(self) -> list[torch.Tensor]:
        """Draw (or replay) every hybrid kernel; global sites, so outside the data plate."""
        with poutine.scale(scale=self.kl_scale):
            return [conv.weight for conv in self._convs]

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, index: torch.Tensor | None = None,
                size: int | None = None) -> torch.Tensor:
        """``x``: a mini-batch of the training set, ``index``: its positions, ``size``: the set's size N."""
        self.sample_kernels()
        if index is None:
            index = torch.arange(len(x), device=x.device)
        with pyro.plate("data", size or len(x), subsample=index):
            logits = self.net(x)
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)
        return logits
