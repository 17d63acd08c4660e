"""AnalyticKLELBO: the same loss and gradients as TraceMeanField_ELBO, fewer densities."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import kl_divergence

from bayesnas.distributions import ConcreteDropout, LocalNormal, LogUniform, SpikeAndSlab
from bayesnas.elbo import AnalyticKLELBO, has_registered_kl, summed_kl
from bayesnas.reparam import LocalReparameterization, conv2d

SHAPE = (3, 2, 3, 3)


def _pair():
    m = torch.randn(SHAPE, requires_grad=True)
    loc = torch.zeros(2, requires_grad=True)
    x, y = torch.randn(6, 2, 5, 5), torch.randint(0, 3, (6,))

    def model():
        w = pyro.sample("w", SpikeAndSlab(0.0, 1.0, SHAPE))
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))  # no registered KL for LogNormal
        with pyro.plate("data", 60, subsample=torch.arange(6)):
            logits = conv2d(x, w, None, 1, 1).mean((2, 3)) + z.sum()
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    def guide():
        pyro.sample("w", ConcreteDropout(m, torch.tensor(0.2), 0.5))
        pyro.sample("z", dist.LogNormal(loc, 1.0).to_event(1))

    return model, guide, (m, loc)


def test_registered_kl_lookup():
    assert has_registered_kl(ConcreteDropout(torch.ones(SHAPE), torch.tensor(0.1), 0.2), SpikeAndSlab(0.0, 1.0, SHAPE))
    assert has_registered_kl(dist.Normal(0, 1).expand([2]).to_event(1), dist.Normal(0, 2).expand([2]).to_event(1))
    assert not has_registered_kl(dist.LogNormal(0.0, 1.0).expand([2]).to_event(1),
                                 dist.Normal(0, 1).expand([2]).to_event(1))


def test_same_loss_and_gradients_as_trace_mean_field():
    model, guide, params = _pair()
    reparam = LocalReparameterization()
    results = []
    for elbo in (TraceMeanField_ELBO(), AnalyticKLELBO()):
        torch.manual_seed(3)
        loss = elbo.differentiable_loss(reparam(model), reparam(guide))
        grads = torch.autograd.grad(loss, params)
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_b.item() == pytest.approx(loss_a.item(), rel=1e-6)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b)


def test_analytic_sites_are_not_scored():
    model, guide, _ = _pair()
    model_trace, guide_trace = AnalyticKLELBO()._get_trace(model, guide, (), {})
    assert "log_prob" not in model_trace.nodes["w"] and float(guide_trace.nodes["w"]["score_parts"].log_prob) == 0
    assert "log_prob_sum" in model_trace.nodes["y"] and "log_prob_sum" in model_trace.nodes["z"]
    assert guide_trace.nodes["z"]["score_parts"] is not None
    assert poutine.trace(guide).get_trace().nodes["w"]["value"].shape == SHAPE


def test_scaled_and_masked_kls_match_trace_mean_field():
    """Sites under one scale are summed before scaling, another scale and a masked site stay apart: the loss and
    every gradient are TraceMeanField_ELBO's."""
    shapes = {"a": (4, 3), "b": (2, 5), "c": (3,), "d": (2, 2)}
    locs = {k: torch.randn(s, requires_grad=True) for k, s in shapes.items()}
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))

    def sites(make):
        with poutine.scale(scale=0.3):
            a, b = make("a"), make("b")
        with poutine.scale(scale=2.0):
            c = make("c")
        with poutine.mask(mask=False):
            make("d")
        return a, b, c

    def model():
        a, b, c = sites(lambda k: pyro.sample(k, dist.Normal(0.0, 1.0).expand(shapes[k]).to_event(len(shapes[k]))))
        with pyro.plate("data", 80, subsample=torch.arange(8)):
            logits = torch.stack([x @ a.sum(0), (a.sum() + b.sum() + c.sum()).expand(8)], -1)
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    def guide():
        sites(lambda k: pyro.sample(k, dist.Normal(locs[k], 0.5).to_event(len(shapes[k]))))

    results = []
    for elbo in (TraceMeanField_ELBO(), AnalyticKLELBO()):
        torch.manual_seed(1)
        loss = elbo.differentiable_loss(model, guide)
        results.append((loss.detach(), torch.autograd.grad(loss, list(locs.values()), allow_unused=True)))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_b.item() == pytest.approx(loss_a.item(), rel=1e-6)
    for a, b in zip(grads_a, grads_b, strict=True):
        if a is None:
            assert b is None or not b.abs().any()
        else:
            torch.testing.assert_close(b, a)
    kl = {k: torch.distributions.kl_divergence(dist.Normal(v, 0.5), dist.Normal(0.0, 1.0)).sum()
          for k, v in locs.items()}
    torch.manual_seed(1)  # the draws of the losses above
    model_trace, _ = AnalyticKLELBO()._get_trace(model, guide, (), {})
    log_lik = model_trace.nodes["y"]["log_prob_sum"]  # scaled by the plate's 80 / 8
    expected = -(log_lik - 0.3 * (kl["a"] + kl["b"]) - 2.0 * kl["c"])
    assert loss_b.item() == pytest.approx(expected.item(), rel=1e-5)


def test_summed_kl_equals_the_pairwise_kls_summed():
    """Pairs with a registered summed form (LocalNormal, LogUniform) go through it together, others one by one: the
    value and the gradients are those of the registered pairwise KLs added up."""
    shapes = [(4, 3, 3, 3), (5,), (2, 7)]
    locs = [torch.randn(s, requires_grad=True) for s in shapes]
    log_vars = [torch.full(s, -4.0).add(torch.rand(s)).requires_grad_() for s in shapes]
    m = torch.randn(SHAPE, requires_grad=True)
    pairs = [(LocalNormal(a, b), LogUniform(s)) for a, b, s in zip(locs, log_vars, shapes, strict=True)]
    pairs.insert(1, (ConcreteDropout(m, torch.tensor(0.2), 0.5), SpikeAndSlab(0.0, 1.0, SHAPE)))
    params = [*locs, *log_vars, m]
    total = summed_kl(pairs)
    expected = sum(kl_divergence(q, p).sum() for q, p in pairs)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    for a, b in zip(torch.autograd.grad(total, params), torch.autograd.grad(expected, params), strict=True):
        torch.testing.assert_close(a, b)
    assert summed_kl([]).item() == 0.0
    with pytest.raises(ValueError, match="equal shapes"):
        summed_kl([(LocalNormal(locs[1], log_vars[1]), LogUniform((6,)))])


def test_vinnas_sites_match_trace_mean_field():
    """Gaussian weight sites with log-uniform priors under two scales (VINNAS's gamma_1 and gamma_2), locally
    reparameterised: the summed KLs give TraceMeanField_ELBO's loss and gradients."""
    shapes = {"w1": (3, 2, 3, 3), "w2": (4, 3, 1, 1), "alpha": (2, 3)}
    locs = {k: torch.randn(s, requires_grad=True) for k, s in shapes.items()}
    log_vars = {k: torch.full(s, -6.0, requires_grad=True) for k, s in shapes.items()}
    x, y = torch.randn(5, 2, 6, 6), torch.randint(0, 4, (5,))

    def sites(make):
        with poutine.scale(scale=0.7):
            w1, w2 = make("w1"), make("w2")
        with poutine.scale(scale=0.2):
            alpha = make("alpha")
        return w1, w2, alpha

    def model():
        w1, w2, alpha = sites(lambda k: pyro.sample(k, LogUniform(shapes[k])))
        h = conv2d(conv2d(x, w1, None, 1, 1), w2, None, 1, 0).mean((2, 3))
        with pyro.plate("data", 50, subsample=torch.arange(5)):
            pyro.sample("y", dist.Categorical(logits=h + alpha.softmax(-1).sum()), obs=y)

    def guide():
        sites(lambda k: pyro.sample(k, LocalNormal(locs[k], log_vars[k])))

    reparam = LocalReparameterization()
    params = [*locs.values(), *log_vars.values()]
    results = []
    for elbo in (TraceMeanField_ELBO(), AnalyticKLELBO()):
        torch.manual_seed(2)
        loss = elbo.differentiable_loss(reparam(model), reparam(guide))
        results.append((loss.detach(), torch.autograd.grad(loss, params)))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_b.item() == pytest.approx(loss_a.item(), rel=1e-6)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b)
