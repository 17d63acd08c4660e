"""SpikeAndSlab, ConcreteDropout and the registered KL of PGNAS Eq. 15."""

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

import bayesnas.distributions as bd
from bayesnas.distributions import ConcreteDropout, SpikeAndSlab, binary_entropy, relaxed_keep_mask

SHAPE = (4, 6, 3, 3)


def closed_form(m, p, d2):
    k = m.shape[1]
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    return d2 * (1 - p) / 2 * float((m ** 2).sum()) - k * h


@pytest.mark.parametrize("p,d2", [(0.1, 150.0), (0.5, 2.0), (0.93, 0.5)])
def test_kl_equals_eq15_closed_form(p, d2):
    m = torch.randn(SHAPE, dtype=torch.float64)
    q = ConcreteDropout(m, torch.tensor(p, dtype=torch.float64), temperature=0.2)
    prior = SpikeAndSlab(0.0, d2 ** -0.5, SHAPE)
    assert kl_divergence(q, prior).item() == pytest.approx(closed_form(m, p, d2), rel=1e-6)  # d2 in float32
    assert kl_divergence(q, prior).shape == q.batch_shape == torch.Size()


def test_kl_gradients_in_m_and_p_match_formula():
    d2, p0 = 50.0, 0.3
    m = torch.randn(SHAPE, dtype=torch.float64, requires_grad=True)
    p = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    kl = kl_divergence(ConcreteDropout(m, p, 0.2), SpikeAndSlab(0.0, d2 ** -0.5, SHAPE))
    kl.backward()
    # d/dm = d^2 (1 - p) m ;  d/dp = -d^2/2 ||m||^2 - K H'(p),  H'(p) = log((1 - p) / p)
    torch.testing.assert_close(m.grad, d2 * (1 - p0) * m.detach(), rtol=1e-6, atol=1e-9)
    expected_p = -d2 / 2 * float((m.detach() ** 2).sum()) - SHAPE[1] * math.log((1 - p0) / p0)
    assert p.grad.item() == pytest.approx(expected_p, rel=1e-6)


def test_kl_refuses_a_spike_it_was_not_derived_for():
    q = ConcreteDropout(torch.randn(SHAPE), torch.tensor(0.2), 0.2)
    with pytest.raises(ValueError, match="u = 0"):
        kl_divergence(q, SpikeAndSlab(0.3, 1.0, SHAPE))


@pytest.mark.parametrize("p", [0.1, 0.35, 0.7])
def test_keep_frequency_tends_to_one_minus_p_at_low_temperature(p):
    torch.manual_seed(0)
    eps = relaxed_keep_mask(torch.tensor(p), temperature=1e-3, shape=(200_000,))
    assert ((eps > 0.99) | (eps < 0.01)).float().mean() > 0.99  # nearly binary
    assert eps.mean().item() == pytest.approx(1 - p, abs=0.005)


def test_relaxed_masks_are_soft_at_high_temperature_and_reparameterised():
    p = torch.tensor(0.4, requires_grad=True)
    eps = relaxed_keep_mask(p, temperature=2.0, shape=(1000,))
    assert ((eps > 0.05) & (eps < 0.95)).float().mean() > 0.8
    eps.sum().backward()
    assert p.grad is not None and p.grad.item() < 0  # a higher drop rate lowers the keep variables


def test_concrete_dropout_samples_switch_whole_input_slices():
    torch.manual_seed(1)
    m = torch.randn(SHAPE)
    q = ConcreteDropout(m, torch.tensor(0.5), temperature=1e-3)
    phi = q.rsample()
    ratio = (phi / m)[0, :, 0, 0]
    torch.testing.assert_close(phi / m, ratio.view(1, -1, 1, 1).expand(SHAPE))
    assert q.rsample(torch.Size([3])).shape == (3, *SHAPE)
    assert torch.isfinite(q.log_prob(phi))


def test_concrete_dropout_rescale_keeps_the_mean():
    m = torch.randn(SHAPE)
    q = ConcreteDropout(m, torch.tensor(0.25), temperature=0.2, rescale=True)
    torch.testing.assert_close(q.mean_kernel(), m)
    torch.testing.assert_close(ConcreteDropout(m, torch.tensor(0.25), 0.2).mean_kernel(), 0.75 * m)


@pytest.mark.parametrize("rescale", [False, True])
def test_samples_forward_and_kl_use_one_kept_kernel(rescale):
    """With rescaling a kept slice carries m / (1 - p) in the samples, in the per-example forward and in the KL
    (Gal et al.'s concrete dropout: d^2 ||m||^2 / (2 (1 - p))); without, m and Eq. 15 as printed."""
    p0, d2 = 0.4, 150.0
    scale = 1 / (1 - p0) if rescale else 1.0
    m = torch.randn(SHAPE, dtype=torch.float64)
    q = ConcreteDropout(m, torch.tensor(p0, dtype=torch.float64), temperature=1e-3, rescale=rescale)
    torch.testing.assert_close(q.kernel, m * scale)
    # samples: every slice is (almost exactly) 0 or the kept kernel
    torch.manual_seed(3)
    phi = q.rsample()
    kept = (phi / (m * scale))[0, :, 0, 0]
    assert ((kept - 1).abs() < 1e-6).any() and (kept.abs() < 1e-6).any()
    assert (((kept - 1).abs() < 1e-6) | (kept.abs() < 1e-6)).all()
    torch.testing.assert_close(phi, m * scale * (kept > 0.5).double().view(1, -1, 1, 1))
    # the per-example forward: op(x * eps_i / (1-p), m) = op(x, kept kernel * eps_i) on the same draw of eps
    x = torch.randn(3, SHAPE[1], 5, 5, dtype=torch.float64)
    torch.manual_seed(4)
    out = q.local_reparameterize(torch.nn.functional.conv2d, x, None, 1, 1)
    torch.manual_seed(4)
    eps = relaxed_keep_mask(q.drop_rate, q.temperature, x.shape[:2])
    for i in range(len(x)):
        expected = torch.nn.functional.conv2d(x[i:i + 1], m * scale * eps[i].view(1, -1, 1, 1), None, 1, 1)
        torch.testing.assert_close(out[i:i + 1], expected)
    # the KL: d^2 (1 - p) / 2 ||m scale||^2 - K H(p)
    h = -(p0 * math.log(p0) + (1 - p0) * math.log(1 - p0))
    l2 = float((m ** 2).sum())
    expected_kl = (d2 * l2 / (2 * (1 - p0)) if rescale else d2 * (1 - p0) / 2 * l2) - SHAPE[1] * h
    kl = kl_divergence(q, SpikeAndSlab(0.0, d2 ** -0.5, SHAPE))
    assert kl.item() == pytest.approx(expected_kl, rel=1e-6)


def test_rescaled_kl_gradients_match_gal_et_al():
    """d/dm [d^2 ||m||^2 / (2 (1-p))] = d^2 m / (1-p);  d/dp = d^2 ||m||^2 / (2 (1-p)^2) - K log((1-p)/p)."""
    d2, p0 = 50.0, 0.3
    m = torch.randn(SHAPE, dtype=torch.float64, requires_grad=True)
    p = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    kl_divergence(ConcreteDropout(m, p, 0.2, rescale=True), SpikeAndSlab(0.0, d2 ** -0.5, SHAPE)).backward()
    torch.testing.assert_close(m.grad, d2 / (1 - p0) * m.detach(), rtol=1e-6, atol=1e-9)
    expected_p = d2 / (2 * (1 - p0) ** 2) * float((m.detach() ** 2).sum()) - SHAPE[1] * math.log((1 - p0) / p0)
    assert p.grad.item() == pytest.approx(expected_p, rel=1e-6)


def test_spike_and_slab_log_prob():
    x = torch.randn(SHAPE)
    slab = SpikeAndSlab(0.0, 0.5, SHAPE)
    assert slab.log_prob(x).item() == pytest.approx(torch.distributions.Normal(0, 0.5).log_prob(x).sum().item(),
                                                    rel=1e-5)
    spiky = SpikeAndSlab(0.25, 0.5, SHAPE)
    x[:, 2] = 0
    expected = math.log(0.25) + 5 * math.log(0.75) + torch.distributions.Normal(0, 0.5).log_prob(
        torch.cat([x[:, :2], x[:, 3:]], 1)).sum().item()
    assert spiky.log_prob(x).item() == pytest.approx(expected, rel=1e-5)
    torch.manual_seed(0)
    draws = torch.stack([spiky.sample() for _ in range(400)])
    zero_slices = (draws.abs().sum((1, 3, 4)) == 0).float().mean()
    assert zero_slices.item() == pytest.approx(0.25, abs=0.03)


def _elbo_model_guide(m, p, d2):
    def model():
        pyro.sample("phi", SpikeAndSlab(0.0, d2 ** -0.5, SHAPE))

    def guide():
        pyro.sample("phi", ConcreteDropout(m, p, 0.2))

    return model, guide


def test_trace_mean_field_elbo_calls_the_registered_kl(monkeypatch):
    torch.manual_seed(0)
    m, p, d2 = torch.randn(SHAPE), torch.tensor(0.2), 150.0
    model, guide = _elbo_model_guide(m, p, d2)
    calls = []
    original = bd.kl_concrete_dropout_spike_and_slab

    def counting(q, prior):
        calls.append(1)
        return original(q, prior)

    monkeypatch.setitem(torch.distributions.kl._KL_REGISTRY, (ConcreteDropout, SpikeAndSlab), counting)
    torch.distributions.kl._KL_MEMOIZE.clear()
    loss = TraceMeanField_ELBO().differentiable_loss(model, guide)
    assert calls, "TraceMeanField_ELBO fell back to Monte Carlo"
    # with no likelihood the loss is exactly the analytic KL, and deterministic
    assert loss.item() == pytest.approx(closed_form(m, 0.2, d2), rel=1e-5)
    assert TraceMeanField_ELBO().differentiable_loss(model, guide).item() == pytest.approx(loss.item())
    # a Monte Carlo ELBO gives a different, random value: the registered KL is what made it exact
    assert Trace_ELBO().differentiable_loss(model, guide).item() != pytest.approx(loss.item(), rel=1e-3)


def test_elbo_applies_guide_scale_to_the_kl():
    m, p = torch.randn(SHAPE), torch.tensor(0.2)
    model, guide = _elbo_model_guide(m, p, 150.0)
    scale = pyro.poutine.scale(scale=0.1)
    loss = TraceMeanField_ELBO().differentiable_loss(scale(model), scale(guide))
    assert loss.item() == pytest.approx(0.1 * closed_form(m, 0.2, 150.0), rel=1e-5)


def test_binary_entropy():
    assert binary_entropy(torch.tensor(0.5)).item() == pytest.approx(math.log(2))
    assert binary_entropy(torch.tensor(0.0)).item() == 0.0
