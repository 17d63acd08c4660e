"""The local-reparameterisation messenger: per-example noise on activations, sample sites untouched."""

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

from bayesnas import reparam
from bayesnas.distributions import ConcreteDropout, LocalNormal, LogUniform, SpikeAndSlab, relaxed_keep_mask
from bayesnas.elbo import AnalyticKLELBO
from bayesnas.reparam import ONLY_FEEDS_LAYERS, LocalReparameterization

SHAPE = (5, 4, 3, 3)


def _pair(m, p, x):
    def model():
        w = pyro.sample("w", SpikeAndSlab(0.0, 1.0, SHAPE))
        return reparam.conv2d(x, w, None, 1, 1)

    def guide():
        pyro.sample("w", ConcreteDropout(m, p, temperature=0.5))

    return model, guide


def _run(model, guide, handler=None):
    model, guide = (handler(model), handler(guide)) if handler else (model, guide)
    guide_trace = poutine.trace(guide).get_trace()
    return poutine.replay(model, trace=guide_trace)()


def test_layers_are_plain_functions_outside_handlers():
    x, w = torch.randn(2, 4, 6, 6), torch.randn(SHAPE)
    torch.testing.assert_close(reparam.conv2d(x, w, None, 1, 1), F.conv2d(x, w, None, 1, 1))
    xl, wl = torch.randn(3, 4), torch.randn(2, 4)
    torch.testing.assert_close(reparam.linear(xl, wl), F.linear(xl, wl))


def test_messenger_draws_a_mask_per_example():
    torch.manual_seed(0)
    m, p = torch.randn(SHAPE), torch.tensor(0.5)
    x = torch.randn(1, 4, 6, 6).expand(64, -1, -1, -1).contiguous()  # identical inputs
    batch = _run(*_pair(m, p, x))
    per_example = _run(*_pair(m, p, x), handler=LocalReparameterization())
    # one draw per batch: every example gets the same output; per example: they differ
    assert torch.allclose(batch, batch[:1].expand_as(batch))
    assert (per_example - per_example[:1]).abs().amax((1, 2, 3)).gt(1e-3).float().mean() > 0.5


def test_per_example_and_per_batch_estimators_agree_in_expectation():
    torch.manual_seed(0)
    m, p = torch.randn(SHAPE), torch.tensor(0.3)
    x = torch.randn(8, 4, 6, 6)
    model, guide = _pair(m, p, x)
    reps = 1500
    batch = torch.stack([_run(model, guide) for _ in range(reps)]).mean(0)
    per_example = torch.stack([_run(model, guide, LocalReparameterization()) for _ in range(reps)]).mean(0)
    # both are linear in the keep variables, so both estimate conv(x, m * E[eps])
    mean_keep = relaxed_keep_mask(p, 0.5, (2_000_000,)).mean()
    exact = F.conv2d(x, m * mean_keep, None, 1, 1)
    scale = exact.abs().mean()
    assert (batch - exact).abs().mean() / scale < 0.03
    assert (per_example - exact).abs().mean() / scale < 0.03


def test_elbo_and_sites_are_unchanged_by_the_messenger():
    torch.manual_seed(0)
    m, p = torch.randn(SHAPE), torch.tensor(0.3)
    model, guide = _pair(m, p, torch.randn(2, 4, 6, 6))
    handler = LocalReparameterization()
    loss_plain = TraceMeanField_ELBO().differentiable_loss(model, guide)
    loss_reparam = TraceMeanField_ELBO().differentiable_loss(handler(model), handler(guide))
    assert loss_plain.item() == pytest.approx(loss_reparam.item())  # the KL alone: no likelihood here
    trace = poutine.trace(handler(guide)).get_trace()
    assert trace.nodes["w"]["value"].shape == SHAPE


def test_unrecorded_weights_are_not_intercepted():
    handler = LocalReparameterization()
    x, w = torch.randn(2, 4, 6, 6), torch.randn(SHAPE)
    with handler:
        out = reparam.conv2d(x, w, None, 1, 1)
    torch.testing.assert_close(out, F.conv2d(x, w, None, 1, 1))


def test_gradients_reach_kernel_and_drop_rate_through_the_per_example_path():
    m = torch.randn(SHAPE, requires_grad=True)
    logit = torch.tensor(-1.0, requires_grad=True)
    model, guide = _pair(m, torch.sigmoid(logit), torch.randn(4, 4, 6, 6))
    handler = LocalReparameterization()
    out = _run(model, guide, handler)
    out.pow(2).sum().backward()
    assert m.grad.abs().sum() > 0 and logit.grad.abs() > 0


def _gaussian_pair(loc, log_var, x, y, hint=True):
    """A LocalNormal weight fed to one convolution, an alpha-like LocalNormal site used outside any layer, and an
    observed label."""
    def model():
        w = pyro.sample("w", LogUniform(SHAPE))
        a = pyro.sample("a", LogUniform((SHAPE[0],)))
        logits = reparam.conv2d(x, w, None, 1, 1).mean((2, 3)) * torch.softmax(a, -1)
        pyro.sample("y", pyro.distributions.Categorical(logits=logits).to_event(1), obs=y)

    def guide():
        pyro.sample("a", LocalNormal(torch.zeros(SHAPE[0]), torch.full((SHAPE[0],), -4.0)))  # first: one draw
        pyro.sample("w", LocalNormal(loc, log_var), infer={ONLY_FEEDS_LAYERS: hint})

    return model, guide


def test_deferred_draws_leave_the_layer_outputs_and_the_likelihood_unchanged():
    torch.manual_seed(0)
    loc, log_var = torch.randn(SHAPE), torch.full(SHAPE, -3.0)
    x, y = torch.randn(6, 4, 6, 6), torch.randint(5, (6,))
    runs = {}
    for defer in (False, True):
        handler = LocalReparameterization(defer_draws=defer)
        model, guide = _gaussian_pair(loc, log_var, x, y)
        torch.manual_seed(1)
        guide_trace = poutine.trace(handler(guide)).get_trace()
        torch.manual_seed(2)  # the same layer noise in both runs, whatever the guide drew
        model_trace = poutine.trace(poutine.replay(handler(model), trace=guide_trace)).get_trace()
        model_trace.compute_log_prob(lambda name, site: name == "y")
        runs[defer] = guide_trace, model_trace
    drawn, deferred = runs[False][0].nodes["w"]["value"], runs[True][0].nodes["w"]["value"]
    assert torch.isfinite(drawn).all() and drawn.shape == deferred.shape == SHAPE
    assert deferred.isnan().all() and deferred.stride() == (0, 0, 0, 0)  # nothing drawn, nothing stored
    a = runs[True][0].nodes["a"]["value"]  # the site without the hint is drawn, the same draw in both runs
    assert torch.isfinite(a).all() and torch.equal(a, runs[False][0].nodes["a"]["value"])
    assert runs[True][1].nodes["y"]["log_prob_sum"].isfinite()
    torch.testing.assert_close(runs[True][1].nodes["y"]["log_prob_sum"], runs[False][1].nodes["y"]["log_prob_sum"])


def test_deferred_draws_need_both_the_flag_and_the_sites_hint():
    loc, log_var = torch.randn(SHAPE), torch.full(SHAPE, -3.0)
    x, y = torch.randn(2, 4, 6, 6), torch.randint(5, (2,))
    for defer, hint in ((False, True), (True, False)):
        model, guide = _gaussian_pair(loc, log_var, x, y, hint=hint)
        trace = poutine.trace(LocalReparameterization(defer_draws=defer)(guide)).get_trace()
        assert torch.isfinite(trace.nodes["w"]["value"]).all()


def test_deferred_draws_keep_the_analytic_elbo_and_its_gradients():
    torch.manual_seed(0)
    loc = torch.randn(SHAPE, requires_grad=True)
    log_var = torch.full(SHAPE, -3.0, requires_grad=True)
    model, guide = _gaussian_pair(loc, log_var, torch.randn(6, 4, 6, 6), torch.randint(5, (6,)))
    handler = LocalReparameterization(defer_draws=True)
    loss = AnalyticKLELBO().differentiable_loss(handler(model), handler(guide))
    loss.backward()
    assert loss.isfinite() and loc.grad.isfinite().all() and log_var.grad.isfinite().all()
    assert loc.grad.abs().sum() > 0 and log_var.grad.abs().sum() > 0
    # a value read outside a layer fails loudly instead of passing silently: Pyro's validation rejects it, and
    # without validation (as the search loop runs) the loss is NaN, which stops a search
    def reader():
        pyro.factor("read", pyro.sample("w", LogUniform(SHAPE)).sum())

    def weight_guide():
        pyro.sample("w", LocalNormal(loc, log_var), infer={ONLY_FEEDS_LAYERS: True})

    with pytest.raises(ValueError, match="nan"):
        TraceMeanField_ELBO().differentiable_loss(handler(reader), handler(weight_guide))
    with pyro.validation_enabled(False), pytest.warns(UserWarning, match="NaN"):
        assert TraceMeanField_ELBO().differentiable_loss(handler(reader), handler(weight_guide)).isnan()


def test_each_site_keeps_its_own_deferred_stand_in_from_step_to_step():
    """Two weight sites of one shape, two steps: each site's stand-in is reused (nothing allocated per step), the two
    sites' stand-ins are distinct tensors (the messenger matches layer weights by identity), and each layer still
    computes with its own site's distribution, checked against the same layers without deferral."""
    torch.manual_seed(0)
    locs = [torch.randn(SHAPE), -torch.randn(SHAPE)]
    x = torch.randn(6, 4, 6, 6)

    def model():
        w1 = pyro.sample("w1", LogUniform(SHAPE))
        w2 = pyro.sample("w2", LogUniform(SHAPE))
        return reparam.conv2d(x, w1, None, 1, 1), reparam.conv2d(x, w2, None, 1, 1)

    def guide():
        for name, loc in zip(("w1", "w2"), locs, strict=True):
            pyro.sample(name, LocalNormal(loc, torch.full_like(loc, -3.0)), infer={ONLY_FEEDS_LAYERS: True})

    deferred, drawn = LocalReparameterization(defer_draws=True), LocalReparameterization()
    stand_ins = []
    for step in range(2):
        outputs = {}
        for name, handler in (("deferred", deferred), ("drawn", drawn)):
            guide_trace = poutine.trace(handler(guide)).get_trace()
            torch.manual_seed(10 + step)  # the same layer noise for both handlers
            outputs[name] = poutine.replay(handler(model), trace=guide_trace)()
            if name == "deferred":
                stand_ins.append((guide_trace.nodes["w1"]["value"], guide_trace.nodes["w2"]["value"]))
        for got, expected in zip(outputs["deferred"], outputs["drawn"], strict=True):
            torch.testing.assert_close(got, expected)
    (a1, b1), (a2, b2) = stand_ins
    assert a1 is a2 and b1 is b2 and a1 is not b1
    assert a1.isnan().all() and a1.shape == SHAPE
    # a site whose shape changes gets a new stand-in
    locs[0] = torch.randn(3, 4, 3, 3)
    trace = poutine.trace(deferred(guide)).get_trace()
    assert trace.nodes["w1"]["value"].shape == (3, 4, 3, 3) and trace.nodes["w2"]["value"] is b1
