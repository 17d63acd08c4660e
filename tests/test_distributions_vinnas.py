"""LogUniform, LocalNormal, the registered KL(Normal || LogUniform) of Molchanov et al. and the Gaussian local
reparameterisation used by VINNAS."""

import math

import numpy as np
import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from scipy import integrate, stats
from torch.distributions import kl_divergence

import bayesnas.distributions as bd
from bayesnas import reparam
from bayesnas.distributions import LocalNormal, LogUniform, kl_normal_log_uniform_elementwise, log_lambda
from bayesnas.reparam import LocalReparameterization

# -KL(N(mu, s^2) || 1/|w|) = E_q[-log|w|] + log s + const; the constant that makes the KL vanish as
# lambda -> inf is -E log|N(0, 1)| - 0.5 log(2 pi e) + ...: together -(euler_gamma + log 2) / 2 here
LIMIT = -(np.euler_gamma + np.log(2)) / 2


def exact_neg_kl(mu: float, sigma: float) -> float:
    """-KL by numerical integration (log|w| has an integrable singularity at 0: split the range there)."""
    lo, hi = mu - 12 * sigma, mu + 12 * sigma
    e, _ = integrate.quad(lambda w: np.log(abs(w)) * stats.norm.pdf(w, mu, sigma), lo, hi,
                          points=[0.0] if lo < 0 < hi else None, limit=500)
    return -e + np.log(sigma) + LIMIT


def approx_neg_kl(mu: float, sigma: float) -> float:
    loc = torch.tensor(mu, dtype=torch.float64)
    return -kl_normal_log_uniform_elementwise(loc, torch.tensor(2 * math.log(sigma), dtype=torch.float64)).item()


@pytest.mark.parametrize("mu,sigma", [(1.0, 0.01), (1.0, 0.1), (1.0, 0.5), (1.0, 1.0), (0.3, 1.0), (0.1, 1.0),
                                      (0.01, 1.0), (-2.0, 0.2), (0.05, 0.5)])
def test_kl_approximation_matches_numerical_integration(mu, sigma):
    # Molchanov et al. 2017 report a maximal error of about 0.01 nats
    assert approx_neg_kl(mu, sigma) == pytest.approx(exact_neg_kl(mu, sigma), abs=0.01)


def test_kl_depends_only_on_lambda_and_vanishes_for_switched_off_weights():
    assert approx_neg_kl(1.0, 0.3) == pytest.approx(approx_neg_kl(-5.0, 1.5), abs=1e-6)  # up to the eps in mu^2
    assert approx_neg_kl(1e-6, 1.0) == pytest.approx(0.0, abs=1e-6)
    # decreasing in lambda: more noise, less KL
    lambdas = np.logspace(-6, 6, 25)
    kls = [-approx_neg_kl(1.0, math.sqrt(lam)) for lam in lambdas]
    assert all(a > b for a, b in zip(kls, kls[1:], strict=False))


@pytest.mark.parametrize("loc,log_var", [(1.0, -40.0), (3.0, -20.0), (0.0, 0.0), (1e-12, 5.0), (1e-3, 30.0),
                                         (-1e-20, -10.0)])
def test_kl_gradients_are_finite_at_extreme_lambdas(loc, log_var):
    mu = torch.tensor(loc, requires_grad=True)
    lv = torch.tensor(log_var, requires_grad=True)
    kl = kl_normal_log_uniform_elementwise(mu, lv)
    kl.backward()
    assert torch.isfinite(kl) and torch.isfinite(mu.grad) and torch.isfinite(lv.grad)
    assert lv.grad <= 0  # more variance never costs more KL


def test_log_uniform_is_improper_and_scores_minus_log_abs():
    p = LogUniform((2, 3))
    x = torch.randn(2, 3)
    torch.testing.assert_close(p.log_prob(x), -x.abs().log().sum())
    assert p.batch_shape == () and p.event_shape == (2, 3)
    assert LogUniform((3,), batch_shape=(4,)).log_prob(torch.randn(4, 3)).shape == (4,)
    with pytest.raises(NotImplementedError, match="improper"):
        p.sample()


def test_registered_kl_shapes_and_errors():
    q = LocalNormal(torch.randn(4, 5), torch.full((4, 5), -10.0))
    kl = kl_divergence(q, LogUniform((4, 5)))
    assert kl.shape == q.batch_shape == torch.Size()
    torch.testing.assert_close(kl, kl_normal_log_uniform_elementwise(q.loc, q.log_var).sum())
    with pytest.raises(ValueError, match="equal shapes"):
        kl_divergence(q, LogUniform((5, 4)))
    plain = torch.distributions.Normal(torch.randn(3), torch.rand(3) + 0.1)
    torch.testing.assert_close(kl_divergence(plain, LogUniform((), batch_shape=(3,))),
                               kl_normal_log_uniform_elementwise(plain.loc, 2 * plain.scale.log()))
    with pytest.raises(ValueError, match="loc and log_var"):
        LocalNormal(torch.zeros(2), torch.zeros(3))


def test_local_normal_moments_and_log_prob():
    torch.manual_seed(0)
    q = LocalNormal(torch.tensor([1.0, -2.0]), torch.log(torch.tensor([0.25, 4.0])))
    draws = q.rsample((20000,))
    torch.testing.assert_close(draws.mean(0), q.loc, atol=0.05, rtol=0)
    torch.testing.assert_close(draws.var(0), q.variance, atol=0, rtol=0.05)
    x = torch.tensor([0.3, 0.1])
    expected = torch.distributions.Normal(q.loc, q.scale).log_prob(x).sum()
    torch.testing.assert_close(q.log_prob(x), expected)
    torch.testing.assert_close(q.entropy(), torch.distributions.Normal(q.loc, q.scale).entropy().sum())
    torch.testing.assert_close(q.log_lambda(), log_lambda(q.loc, q.log_var))


def _model_guide(loc, log_var, gamma=None):
    def scaled():
        if gamma is None:
            return poutine.scale(scale=1.0)
        return poutine.scale(scale=gamma) if gamma > 0 else poutine.mask(mask=False)

    def model():
        with scaled():
            pyro.sample("w", LogUniform(loc.shape))

    def guide():
        with scaled():
            pyro.sample("w", LocalNormal(loc, log_var))

    return model, guide


def test_trace_mean_field_elbo_uses_the_registered_kl(monkeypatch):
    loc, log_var = torch.randn(3, 4), torch.full((3, 4), -6.0)
    expected = kl_normal_log_uniform_elementwise(loc, log_var).sum().item()
    elbo = TraceMeanField_ELBO()
    # deterministic and equal to the analytic KL: a Monte Carlo fallback would be random and different
    values = [elbo.differentiable_loss(*_model_guide(loc, log_var)).item() for _ in range(3)]
    assert values == pytest.approx([expected] * 3, rel=1e-6)
    calls = []
    original = bd.kl_normal_log_uniform_elementwise
    monkeypatch.setattr(bd, "kl_normal_log_uniform_elementwise", lambda *a: calls.append(1) or original(*a))
    elbo.differentiable_loss(*_model_guide(loc, log_var))
    assert calls == [1]


def test_kl_weight_scales_the_guide_site_and_zero_leaves_the_term_out():
    loc, log_var = torch.randn(3, 4), torch.full((3, 4), -6.0)
    full = kl_normal_log_uniform_elementwise(loc, log_var).sum().item()
    elbo = TraceMeanField_ELBO()
    assert elbo.differentiable_loss(*_model_guide(loc, log_var, 0.25)).item() == pytest.approx(0.25 * full)
    assert elbo.differentiable_loss(*_model_guide(loc, log_var, 0.0)).item() == 0.0


def _lrt_pair(loc, log_var, layer, *args):
    def model(x):
        w = pyro.sample("w", LogUniform(loc.shape))
        return layer(x, w, *args)

    def guide(x):
        pyro.sample("w", LocalNormal(loc, log_var))

    return model, guide


def _run(model, guide, x, handler=None):
    if handler is not None:
        model, guide = handler(model), handler(guide)
    trace = poutine.trace(guide).get_trace(x)
    return poutine.replay(model, trace=trace)(x)


@pytest.mark.parametrize("kind", ["conv", "depthwise", "linear"])
def test_local_reparameterisation_matches_weight_sampling(kind):
    torch.manual_seed(0)
    dtype = torch.float64
    if kind == "linear":
        loc, x = torch.randn(3, 5, dtype=dtype), torch.randn(4, 5, dtype=dtype)
        args: tuple = (torch.randn(3, dtype=dtype),)  # bias: shifts the mean, not the variance
        layer, plain = reparam.linear, F.linear
    else:
        groups = 4 if kind == "depthwise" else 1
        loc = torch.randn(4, 4 // groups, 3, 3, dtype=dtype)
        x = torch.randn(3, 4, 6, 6, dtype=dtype)
        args = (None, 2, 1, 1, groups)  # bias, stride, padding, dilation, groups
        layer, plain = reparam.conv2d, F.conv2d
    log_var = torch.log(torch.rand_like(loc) * 0.5 + 0.05)
    mean = plain(x, loc, *args)
    var = plain(x * x, log_var.exp(), None, *args[1:])
    model, guide = _lrt_pair(loc, log_var, layer, *args)
    reps = 4000
    q = LocalNormal(loc, log_var)
    sampled = torch.stack([plain(x, q.rsample(), *args) for _ in range(reps)])  # one weight draw per batch
    # the local path draws per activation, so copies of the batch are independent draws
    local = _run(model, guide, x.repeat(reps, *[1] * (x.dim() - 1)), LocalReparameterization())
    local = local.reshape(reps, *mean.shape)
    for draws in (sampled, local):
        assert ((draws.mean(0) - mean).abs() / var.sqrt()).mean() < 0.05
        assert ((draws.var(0) / var) - 1).abs().mean() < 0.05
    # the local path draws one noise value per activation: identical examples get different outputs
    xs = x[:1].expand(2, *x.shape[1:]).contiguous()
    out = _run(model, guide, xs, LocalReparameterization())
    assert (out[0] - out[1]).abs().max() > 1e-3
