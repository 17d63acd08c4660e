"""AnalyticKLELBO: the same loss and gradients as TraceMeanField_ELBO, fewer densities."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

from bayesnas.distributions import ConcreteDropout, SpikeAndSlab
from bayesnas.elbo import AnalyticKLELBO, has_registered_kl
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
