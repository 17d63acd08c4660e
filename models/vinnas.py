"""VINNAS model (Ferianc, Fan & Rodrigues, "VINNAS: Variational Inference-based Neural Network Architecture
Search", arXiv:2007.06103, 2020; Eq. 3-4 and 8): log-uniform priors on every weight of the dense super-network
of a space (the DARTS cells of the paper, or the chain) and on the op strengths alpha of every decision, one
``(n_g, K_g)`` site per decision group; the super-network, mixing the ops of each decision by
``z = softmax(alpha)`` (the weights form of :mod:`bayesnas.spaces.decisions`), as the likelihood under a
subsampled data plate.

Which weights are random (the paper: "every weight w"): every convolution kernel of the super-network (every
:class:`~bayesnas.spaces.ops.SearchConv2d`: stem, the cells' preprocessing or the chain's fixed blocks, every
candidate op) and the classifier's weight matrix, one sample site per tensor. Point estimates (the paper's
Psi): the classifier's bias (and affine BatchNorm parameters, where a space keeps them). BatchNorm has no
running statistics during the search (Sec. V-A), so it always normalises with the statistics of the batch.

The objective's weights gamma_1..3 (Eq. 8) are set by the method each epoch. The KL terms are scaled on the
sample sites (the guide applies the same handlers: ``TraceMeanField_ELBO`` takes the analytic KL's scale
from the guide site); a weight of 0 leaves its term out (``poutine.mask(False)``) because
``poutine.scale(0)`` raises. The entropy term enters as a ``pyro.factor`` scaled by gamma_3 alone, so the
loss is Eq. 8 term by term: the NLL summed over the ``size`` examples of the split (the data plate scales a
mini-batch's sum by size / batch), plus gamma_1 KL_w + gamma_2 KL_alpha + gamma_3 sum H(E_q[z]), each once.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from bayesnas import reparam
from bayesnas.distributions import LogUniform
from bayesnas.spaces.decisions import DecisionGroup
from bayesnas.spaces.ops import SearchConv2d


class SearchLinear(nn.Linear):
    """``nn.Linear`` routed through :func:`bayesnas.reparam.linear` (so its weight can be a sample site)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reparam.linear(x, self.weight, self.bias)


class SmoothedCategorical(dist.Categorical):
    """Categorical likelihood with label smoothing (Mueller et al. 2019; VINNAS Sec. V-A):
    ``log p(y) = (1 - eps) log softmax(logits)_y + eps * mean_k log softmax(logits)_k`` (unnormalised)."""

    def __init__(self, logits: torch.Tensor, smoothing: float, validate_args: bool | None = None) -> None:
        self.smoothing = float(smoothing)
        super().__init__(logits=logits, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(SmoothedCategorical, _instance)
        new.smoothing = self.smoothing
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(self.logits, value, reduction="none", label_smoothing=self.smoothing)


def kl_weight(gamma: float) -> AbstractContextManager:
    """The handler that weights a KL term by ``gamma``; ``gamma = 0`` leaves the term out."""
    return poutine.scale(scale=gamma) if gamma > 0 else poutine.mask(mask=False)


def strip_batchnorm(net: nn.Module) -> None:
    """BatchNorm without running statistics: batch statistics in training and evaluation alike."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None


def in_param_store(name: str, module: nn.Module) -> None:
    """Pyro's idiom for an ``nn.Module`` model or guide, ``pyro.module(name, module)``: in Pyro's default mode its
    parameters join the global param store, where ``pyro.infer.SVI`` and ``pyro.optim`` find them. Nothing in
    ``module_local_params`` mode (the search loop's), whose optimisers take ``module.parameters()``."""
    if not pyro.settings.get("module_local_params"):
        pyro.module(name, module)


def alpha_site(group: str) -> str:
    """The name of a decision group's strength site (the model's and the guide's)."""
    return f"alpha.{group}"


class VINNASModel(nn.Module):
    """``p(alpha) p(w) prod_i p(y_i | x_i, w, softmax(alpha))`` with log-uniform ``p(alpha)`` and ``p(w)``.

    ``net`` is a super-network built with ``sparse=False``, ``groups`` the space's decision groups
    (``alpha[group]`` is ``(n_g, K_g)``). ``initial_weights`` holds the Xavier-uniform initial means of the guide
    (paper, Sec. V-A), by site.
    """

    def __init__(self, net: nn.Module, groups: Mapping[str, DecisionGroup], label_smoothing: float = 0.1,
                 zero_alpha_max: float | None = 0.0) -> None:
        super().__init__()
        strip_batchnorm(net)
        old = net.classifier
        net.classifier = SearchLinear(old.in_features, old.out_features)
        with torch.no_grad():
            net.classifier.bias.copy_(old.bias)
        self.net = net
        self.groups = list(groups)
        self.label_smoothing = float(label_smoothing)
        self.zero_alpha_max = zero_alpha_max
        self.zero_ops = {name: torch.tensor([op == "none" for op in g.options])
                         for name, g in groups.items() if "none" in g.options}
        """The ``none`` op of the groups that have one, whose strength is clipped."""
        # checkpoints written before the groups held the clipping mask as a buffer ``zero_op``: a constant of the
        # space, ignored on loading (such a run resumes)
        self.register_load_state_dict_pre_hook(lambda module, state, prefix, *args: state.pop(f"{prefix}zero_op",
                                                                                               None))
        self.gammas = (0.0, 0.0, 0.0)
        """(gamma_1, gamma_2, gamma_3) of Eq. 8: weights of KL_w, KL_alpha and the op entropy."""
        self.layers: dict[str, nn.Module] = {}
        self.initial_weights: dict[str, torch.Tensor] = {}
        for path, module in net.named_modules():
            if isinstance(module, SearchConv2d | SearchLinear):
                site = f"net.{path}.weight"
                mu = torch.empty_like(module.weight)
                nn.init.xavier_uniform_(mu)
                del module.weight  # now a plain attribute, set to a sample in every forward
                module.weight = mu.clone()
                self.layers[site] = module
                self.initial_weights[site] = mu
        self._weight_priors = {site: LogUniform(m.weight.shape) for site, m in self.layers.items()}
        self._alpha_priors = {name: LogUniform(g.shape) for name, g in groups.items()}
        self.last_logits: torch.Tensor | None = None

    @property
    def weight_sites(self) -> list[str]:
        return list(self.layers)

    def clip(self, group: str, alpha: torch.Tensor) -> torch.Tensor:
        """``alpha`` (``(..., n_g, K_g)``) with the zero op's strength clipped at ``zero_alpha_max`` (Sec. V-A: "we
        clip the strength of the zero operation to avoid scaling problems"); unchanged in a group without one."""
        zero = self.zero_ops.get(group)
        if zero is None or self.zero_alpha_max is None:
            return alpha
        return torch.where(zero.to(alpha.device), alpha.clamp(max=self.zero_alpha_max), alpha)

    def op_weights(self, alphas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``z = softmax(alpha)`` per decision (Eq. 3), the zero op's strength clipped (:meth:`clip`)."""
        return {g: torch.softmax(self.clip(g, alpha), -1) for g, alpha in alphas.items()}

    def set_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        for site, w in weights.items():
            self.layers[site].__dict__["weight"] = w

    def predict(self, x: torch.Tensor, weights: Mapping[str, torch.Tensor],
                alphas: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Logits of the super-network with fixed weights and strengths, outside Pyro."""
        self.set_weights(weights)
        return self.net(x, self.op_weights(alphas))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, index: torch.Tensor | None = None,
                size: int | None = None, op_entropy: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: a mini-batch of a split of size ``size``, ``index``: its positions; ``op_entropy``:
        ``sum_{i,j} H(E_q[z^{i,j}])`` over every decision, computed by the guide from its parameters (the model
        has none)."""
        in_param_store("vinnas_model", self)
        g_w, g_alpha, g_entropy = self.gammas
        with kl_weight(g_w):
            for site, module in self.layers.items():
                # a plain attribute since __init__ (not a Parameter): set it without nn.Module's __setattr__
                module.__dict__["weight"] = pyro.sample(site, self._weight_priors[site])
        with kl_weight(g_alpha):
            alphas = {g: pyro.sample(alpha_site(g), self._alpha_priors[g]) for g in self.groups}
        size = size or len(x)
        if g_entropy > 0 and op_entropy is not None:
            # Eq. 8's gamma_3 * sum H, as is: like the KLs, once per split (not per example, not times size)
            with poutine.scale(scale=g_entropy):
                pyro.factor("op_entropy", -op_entropy)
        if index is None:
            index = torch.arange(len(x), device=x.device)
        # the network holds no sample site: outside the plate, its layers' messages skip the plate's handlers
        logits = self.net(x, self.op_weights(alphas))
        with pyro.plate("data", size, subsample=index):
            pyro.sample("y", SmoothedCategorical(logits, self.label_smoothing), obs=y)
        self.last_logits = logits.detach()  # for the step's metrics: it keeps no graph alive till the next step
        return logits
