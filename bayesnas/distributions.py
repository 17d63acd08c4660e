"""Distributions of the hybrid network representation and the KL divergences registered for them.

PGNAS (Zhou et al., AAAI 2020, Sec. 2.2) writes each searchable convolution kernel as the hybrid variable
``phi = w * alpha``: an input-channel slice ``phi[:, k]`` is switched off when ``alpha_k = 0``.

* :class:`SpikeAndSlab` is the prior ``u * delta(0) + (1 - u) * N(0, 1/d^2)`` on every input-channel slice.
* :class:`ConcreteDropout` is the variational family ``phi = m * eps`` of Eq. 12-13 with the relaxed
  Bernoulli ``eps`` of Eq. 16 (one drop rate ``p`` per kernel, shared by its slices).
* ``kl_divergence(ConcreteDropout, SpikeAndSlab)`` is the closed form of Eq. 15 and is registered with
  :func:`torch.distributions.kl.register_kl`, so :class:`pyro.infer.TraceMeanField_ELBO` uses it instead of a
  Monte Carlo estimate.

Both distributions have an empty batch shape and the kernel's shape as event shape, so the KL lookup is
never hidden behind an ``Independent`` wrapper (which would make Pyro silently fall back to Monte Carlo).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints
from torch.distributions.kl import register_kl

from bayesnas.elbo import register_summed_kl

_NO_SAMPLE_SHAPE = torch.Size()

SLICE_DIM = 1
"""Dimension of a kernel ``(out, in, *kernel)`` that indexes the input-channel slices ``w_{l,k}``."""


def _slice_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum a kernel-shaped tensor over everything but the input-channel dimension: shape ``(K,)``."""
    dims = [d for d in range(x.dim()) if d != SLICE_DIM]
    return x.sum(dims)


def _slice_view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-slice vector ``(K,)`` so that it broadcasts against a kernel ``like``."""
    shape = [1] * like.dim()
    shape[SLICE_DIM] = -1
    return v.reshape(shape)


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) = -p log p - (1 - p) log(1 - p), the entropy term of Eq. 15."""
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


class SpikeAndSlab(TorchDistribution):
    """Spike-and-slab prior on the input-channel slices of a kernel (PGNAS Sec. 2.2).

    Each slice ``phi[:, k]`` is exactly zero with probability ``spike_prob`` (u), else its entries are
    i.i.d. ``N(0, slab_scale^2)`` with ``slab_scale = 1/d``. The paper uses ``u = 0``.
    """

    arg_constraints = {"spike_prob": constraints.unit_interval, "slab_scale": constraints.positive}
    support = constraints.real
    has_rsample = False

    def __init__(self, spike_prob: float | torch.Tensor, slab_scale: float | torch.Tensor,
                 shape: torch.Size | tuple[int, ...], validate_args: bool | None = None) -> None:
        self.spike_prob = torch.as_tensor(spike_prob, dtype=torch.get_default_dtype())
        self.slab_scale = torch.as_tensor(slab_scale, dtype=torch.get_default_dtype())
        super().__init__(torch.Size(), torch.Size(shape), validate_args=validate_args)

    @property
    def num_slices(self) -> int:
        return self.event_shape[SLICE_DIM]

    def sample(self, sample_shape: torch.Size = _NO_SAMPLE_SHAPE) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            device = self.slab_scale.device
            slab = torch.randn(shape, device=device) * self.slab_scale
            keep = torch.rand(self.num_slices, device=device) >= self.spike_prob
            return slab * _slice_view(keep.to(slab.dtype), slab)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Per slice: ``log u`` for an all-zero slice, else ``log(1-u) + sum log N(phi; 0, 1/d^2)``."""
        scale = self.slab_scale.to(value)
        normal = -0.5 * (value / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)
        slab = torch.log1p(-self.spike_prob.to(value)) + _slice_sum(normal)
        is_zero = _slice_sum(value.abs()) == 0
        spike = torch.log(self.spike_prob.to(value)).expand_as(slab)
        return torch.where(is_zero & (self.spike_prob > 0), spike, slab).sum()


def relaxed_keep_mask(drop_rate: torch.Tensor, temperature: float,
                      shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Keep variables ``eps`` of Eq. 16, drawn for every entry of ``shape``.

    ``eps = sigmoid((log(1-p) - log p + log u - log(1-u)) / tau)`` with ``u ~ U(0, 1)``: a relaxed
    Bernoulli with keep probability ``1 - p`` (the logistic noise ``log u - log(1-u)`` equals Eq. 16's
    ``log(log r2) - log(log r1)`` in distribution).
    """
    u = torch.rand(shape, dtype=drop_rate.dtype, device=drop_rate.device).clamp(1e-6, 1 - 1e-6)
    keep_logit = torch.log1p(-drop_rate) - torch.log(drop_rate)
    return torch.sigmoid((keep_logit + torch.log(u) - torch.log1p(-u)) / temperature)


class ConcreteDropout(TorchDistribution):
    """Variational posterior ``q(phi) : phi = m * eps`` (PGNAS Eq. 12-13, relaxation Eq. 16).

    ``m`` is the deterministic kernel (a point parameter), ``drop_rate`` the scalar ``p_l^s`` shared by
    the ``K`` input-channel slices, ``eps_k`` a relaxed Bernoulli keep variable per slice. With
    ``rescale=True`` kept slices are divided by ``1 - p`` as in Gal's concrete dropout (Gal, Hron and Kendall,
    "Concrete Dropout", NeurIPS 2017; the PGNAS authors' code does not rescale): the kernel a kept slice
    carries is then :attr:`kernel` ``= m / (1 - p)`` everywhere (training forward, samples, built networks and
    the KL), so ``phi = kernel * eps``.
    """

    arg_constraints = {"drop_rate": constraints.unit_interval}
    support = constraints.real
    has_rsample = True

    def __init__(self, weight: torch.Tensor, drop_rate: torch.Tensor, temperature: float,
                 rescale: bool = False, validate_args: bool | None = None) -> None:
        self.weight = weight
        self.drop_rate = drop_rate
        self.temperature = float(temperature)
        self.rescale = rescale
        super().__init__(torch.Size(), weight.shape, validate_args=validate_args)

    @property
    def num_slices(self) -> int:
        return self.event_shape[SLICE_DIM]

    @property
    def keep_scale(self) -> torch.Tensor | float:
        return 1.0 / (1.0 - self.drop_rate) if self.rescale else 1.0

    @property
    def kernel(self) -> torch.Tensor:
        """The kernel of a kept slice: ``m``, or ``m / (1 - p)`` with rescaling. A hard keep mask ``z``
        gives ``phi = kernel * z``: the super-network at ``z`` and the network built from ``z`` use it."""
        return self.weight * self.keep_scale

    def mean_kernel(self) -> torch.Tensor:
        """``E_q[phi] = kernel (1 - p)``: ``m (1 - p)``, or ``m`` with rescaling (dropout's weight-scaling rule)."""
        return self.kernel * (1 - self.drop_rate)

    def rsample(self, sample_shape: torch.Size = _NO_SAMPLE_SHAPE) -> torch.Tensor:
        if sample_shape:
            return torch.stack([self.rsample() for _ in range(math.prod(sample_shape))]).reshape(
                self._extended_shape(sample_shape))
        eps = relaxed_keep_mask(self.drop_rate, self.temperature, (self.num_slices,))
        return self.kernel * _slice_view(eps, self.weight)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Density of the keep variables behind ``value``.

        ``phi`` lives on the K-dimensional set ``{m * eps}``; ``eps_k`` is recovered by projecting slice k
        of ``value`` onto slice k of ``m``, and scored under the relaxed Bernoulli of Eq. 16.
        """
        m = self.weight
        eps = _slice_sum(value * m) / _slice_sum(m * m).clamp_min(1e-12)
        eps = (eps / self.keep_scale).clamp(1e-6, 1 - 1e-6)
        keep = torch.distributions.RelaxedBernoulli(
            torch.as_tensor(self.temperature, dtype=m.dtype, device=m.device), probs=1 - self.drop_rate)
        return keep.log_prob(eps).sum()

    def local_reparameterize(self, op: Callable[..., torch.Tensor], x: torch.Tensor, *args,
                             **kwargs) -> torch.Tensor:
        """``op(x * eps_i * keep_scale, m)`` = ``op(x * eps_i, kernel)`` with a fresh relaxed mask ``eps_i`` per
        example (Algorithm 1, line 3).

        Masking slice k of the kernel equals masking input channel k of the activations, so each
        example gets its own architecture at the cost of one elementwise product.
        """
        eps = relaxed_keep_mask(self.drop_rate, self.temperature, x.shape[:2])
        eps = eps.reshape(*x.shape[:2], *([1] * (x.dim() - 2)))
        return op(x * (eps * self.keep_scale), self.weight, *args, **kwargs)


@register_kl(ConcreteDropout, SpikeAndSlab)
def kl_concrete_dropout_spike_and_slab(q: ConcreteDropout, p: SpikeAndSlab) -> torch.Tensor:
    """PGNAS Eq. 15 (Gal's approximation, prior with ``u = 0``), for one kernel ``(l, s)``:

    ``KL ~= d^2 (1 - p) / 2 * sum_k ||M_k||^2 - K * H(p)``, with ``d = 1 / slab_scale`` and ``M`` the kernel a
    kept slice carries (:attr:`ConcreteDropout.kernel`). Without rescaling ``M = m``: Eq. 15 as printed. With
    rescaling ``M = m / (1 - p)``, so the term is ``d^2 ||m||^2 / (2 (1 - p))``, the regulariser of Gal, Hron and
    Kendall's concrete dropout (NeurIPS 2017, Sec. 3).
    """
    if bool((p.spike_prob != 0).any()):
        raise ValueError("the KL of PGNAS Eq. 15 is derived for a spike probability u = 0 (the paper's prior)")
    d2 = p.slab_scale.to(q.weight).pow(-2)
    keep = 1 - q.drop_rate
    return d2 * keep / 2 * q.kernel.pow(2).sum() - q.num_slices * binary_entropy(q.drop_rate)


@register_kl(dist.RelaxedOneHotCategoricalStraightThrough, dist.OneHotCategorical)
def kl_relaxed_straight_through_one_hot(q: dist.RelaxedOneHotCategoricalStraightThrough,
                                        p: dist.OneHotCategorical) -> torch.Tensor:
    """GDAS's architecture term (DESIGN, "How proposals sit in Pyro"): the straight-through Gumbel-softmax
    proposal (Dong and Yang, CVPR 2019, Eq. 5-7) is scored against the one-hot categorical prior by the KL between the
    underlying categoricals, ``sum_k pi_k (log pi_k - log p_k)``, a stated approximation (the relaxed
    density and the prior's probability mass are not comparable)."""
    log_q = torch.log_softmax(q.logits, -1)
    log_p = torch.log_softmax(p.logits, -1)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


# ----------------------------------------------------------------------------------------------- VINNAS
# VINNAS (Ferianc et al. 2020, Eq. 4-5): log-uniform priors on every weight and op strength, factorised Normal
# guides, KL by the Molchanov et al. (2017) approximation. Like the PGNAS pair above, both distributions have
# an empty batch shape and the tensor's shape as event shape, so the registered KL is always found.

MOLCHANOV_K1, MOLCHANOV_K2, MOLCHANOV_K3 = 0.63576, 1.8732, 1.48695
"""Constants of the KL(Normal || LogUniform) approximation (Molchanov et al. 2017, Eq. 14)."""

LOG_LAMBDA_EPS = 1e-8
"""Added to ``mu^2`` in ``log lambda = log sigma^2 - log mu^2`` so a mean of exactly 0 stays finite."""


def log_lambda(loc: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """``log lambda = log(sigma^2 / mu^2)``, the log dropout rate of a Gaussian weight (large: prunable)."""
    return log_var - torch.log(loc * loc + LOG_LAMBDA_EPS)


def kl_normal_log_uniform_elementwise(loc: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(N(mu, sigma^2) || LogUniform)`` up to its (infinite) constant, Molchanov et al. 2017:

    ``-KL ~= k1 sigmoid(k2 + k3 log lambda) - 0.5 log1p(1 / lambda) - k1``, ``lambda = sigma^2 / mu^2``.

    The constant ``-k1`` makes the KL vanish as ``lambda -> inf`` (a weight switched off costs nothing). The
    VINNAS paper prints the right-hand side without the minus sign of ``-KL``; this follows Molchanov et al.
    ``log1p(1 / lambda)`` is computed as ``softplus(-log lambda)``: finite values and gradients for any lambda.
    """
    log_lam = log_lambda(loc, log_var)
    neg_kl = (MOLCHANOV_K1 * torch.sigmoid(MOLCHANOV_K2 + MOLCHANOV_K3 * log_lam)
              - 0.5 * torch.nn.functional.softplus(-log_lam) - MOLCHANOV_K1)
    return -neg_kl


class LogUniform(TorchDistribution):
    """Improper log-uniform prior ``p(x) ~ 1/|x|`` on every entry of a tensor of shape ``event_shape``
    (``batch_shape + event_shape`` with a batch shape; the default and VINNAS's sites have none).

    ``log_prob(x) = -sum log|x|`` (unnormalised: the normaliser is infinite). It cannot be sampled: every site
    with this prior needs a guide. Its KL divergence from a :class:`LocalNormal` guide is registered.
    """

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = False

    def __init__(self, event_shape: torch.Size | tuple[int, ...], batch_shape: torch.Size | tuple[int, ...] = (),
                 validate_args: bool | None = None) -> None:
        super().__init__(torch.Size(batch_shape), torch.Size(event_shape), validate_args=validate_args)

    def sample(self, sample_shape: torch.Size = _NO_SAMPLE_SHAPE) -> torch.Tensor:
        raise NotImplementedError("LogUniform is improper and cannot be sampled: give the site a guide")

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(value.dim() - len(self.event_shape), value.dim()))
        return -torch.log(value.abs()).sum(dims)


class LocalNormal(TorchDistribution):
    """Factorised Normal ``N(loc, exp(log_var))`` over a weight tensor (VINNAS Eq. 5), parametrised by the
    log-variance as in the paper, with Gaussian local reparameterisation (Kingma et al. 2015).

    Batch shape is empty, the event shape is ``loc.shape``. Under
    :class:`~bayesnas.reparam.LocalReparameterization` a convolution or linear layer fed with a sample of this
    distribution computes its output distribution instead: mean ``op(x, mu)``, variance
    ``op(x^2, sigma^2)``, one Gaussian draw per activation (:meth:`local_reparameterize`).
    """

    arg_constraints = {"loc": constraints.real, "log_var": constraints.real}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc: torch.Tensor, log_var: torch.Tensor, validate_args: bool | None = None) -> None:
        if loc.shape != log_var.shape:
            raise ValueError(f"loc and log_var must have the same shape, got {tuple(loc.shape)} and "
                             f"{tuple(log_var.shape)}")
        self.loc, self.log_var = loc, log_var
        super().__init__(torch.Size(), loc.shape, validate_args=validate_args)

    @property
    def scale(self) -> torch.Tensor:
        return torch.exp(0.5 * self.log_var)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return torch.exp(self.log_var)

    def rsample(self, sample_shape: torch.Size = _NO_SAMPLE_SHAPE) -> torch.Tensor:
        eps = torch.randn(self._extended_shape(sample_shape), dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps

    def deferred_sample(self, reuse: torch.Tensor | None = None) -> torch.Tensor:
        """A stand-in for :meth:`rsample` where layers draw the noise themselves
        (:class:`~bayesnas.reparam.LocalReparameterization` with ``defer_draws``): NaN of the sample's shape,
        one element expanded, so nothing is drawn or stored and any other use of it yields NaN. ``reuse``: an
        earlier stand-in of this site, returned when it still fits (shape, dtype, device)."""
        shape = self.loc.shape  # the sample's shape: the batch shape is empty
        if (reuse is not None and reuse.shape == shape and reuse.dtype == self.loc.dtype
                and reuse.device == self.loc.device):
            return reuse
        return self.loc.new_full((), math.nan).expand(shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        lp = -0.5 * ((value - self.loc) ** 2 * torch.exp(-self.log_var) + self.log_var + math.log(2 * math.pi))
        dims = tuple(range(lp.dim() - len(self.event_shape), lp.dim()))
        return lp.sum(dims)

    def entropy(self) -> torch.Tensor:
        return (0.5 * (self.log_var + math.log(2 * math.pi * math.e))).sum()

    def log_lambda(self) -> torch.Tensor:
        """``log(sigma^2 / mu^2)`` per entry; weights with ``log lambda >= 3`` are pruned (Molchanov et al.)."""
        return log_lambda(self.loc, self.log_var)

    def local_reparameterize(self, op: Callable[..., torch.Tensor], x: torch.Tensor, *args,
                             **kwargs) -> torch.Tensor:
        """``op(x, mu) + sqrt(op(x^2, sigma^2)) * eps`` with ``eps ~ N(0, 1)`` per output activation.

        ``args``/``kwargs`` are the layer's (bias, stride, padding, dilation, groups for ``conv2d``; bias for
        ``linear``): the mean uses them all, the variance all but the bias.
        """
        mean = op(x, self.loc, *args, **kwargs)
        var_kwargs = {k: v for k, v in kwargs.items() if k != "bias"}
        var = op(x * x, torch.exp(self.log_var), None, *args[1:], **var_kwargs)
        return mean + torch.sqrt(var.clamp_min(0) + 1e-8) * torch.randn_like(mean)


def _check_local_normal_log_uniform(q: LocalNormal, p: LogUniform) -> None:
    if q.event_shape != p.event_shape or q.batch_shape != p.batch_shape:
        raise ValueError(f"KL(LocalNormal || LogUniform) needs equal shapes, got event {tuple(q.event_shape)} vs "
                         f"{tuple(p.event_shape)}, batch {tuple(q.batch_shape)} vs {tuple(p.batch_shape)}")


@register_kl(LocalNormal, LogUniform)
def kl_local_normal_log_uniform(q: LocalNormal, p: LogUniform) -> torch.Tensor:
    """Sum over the tensor of :func:`kl_normal_log_uniform_elementwise` (returns the empty batch shape)."""
    _check_local_normal_log_uniform(q, p)
    return kl_normal_log_uniform_elementwise(q.loc, q.log_var).sum()


@register_summed_kl(LocalNormal, LogUniform)
def summed_kl_local_normal_log_uniform(qs: Sequence[LocalNormal], ps: Sequence[LogUniform]) -> torch.Tensor:
    """``sum_i`` :func:`kl_local_normal_log_uniform` ``(q_i, p_i)`` as one elementwise KL over the concatenated
    tensors (VINNAS's loss sums it over every weight site of one gamma)."""
    for q, p in zip(qs, ps, strict=True):
        _check_local_normal_log_uniform(q, p)
    loc = torch.cat([q.loc.reshape(-1) for q in qs])
    log_var = torch.cat([q.log_var.reshape(-1) for q in qs])
    return kl_normal_log_uniform_elementwise(loc, log_var).sum()


@register_kl(torch.distributions.Normal, LogUniform)
def kl_normal_log_uniform(q: torch.distributions.Normal, p: LogUniform) -> torch.Tensor:
    """Elementwise version for a plain ``Normal`` against a ``LogUniform`` with no event dimensions."""
    if p.event_shape != torch.Size() or q.batch_shape != p.batch_shape:
        raise ValueError(f"KL(Normal || LogUniform) needs a LogUniform of batch shape {tuple(q.batch_shape)} and "
                         f"no event dimensions, got batch {tuple(p.batch_shape)}, event {tuple(p.event_shape)}")
    return kl_normal_log_uniform_elementwise(q.loc, 2 * torch.log(q.scale))
