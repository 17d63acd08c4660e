"""GDAS: straight-through sampler, one op per decision, gradients, temperature schedule, derivation, search, on
the cell space and on the chain."""

import math
from dataclasses import replace

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import kl_divergence
from torch.distributions.utils import clamp_probs

from bayesnas.config import ConfigError, preset
from bayesnas.data import load_dataset
from bayesnas.infer import run_search
from bayesnas.io import read_jsonl
from bayesnas.methods import get_method
from bayesnas.methods.gdas import annealed_temperature
from bayesnas.models.gdas import uniform_gate
from bayesnas.select import derive_cell
from bayesnas.spaces import get_space, load_genotype
from bayesnas.spaces.cell import CellSpace, MixedEdge

SPACE = {"channels": 4, "layout": "NRN", "states": 2, "ops": "gdas"}
TINY = {"epochs": 2, "space": SPACE, "options": {"retrain_epochs": 1, "posterior_draws": 5, "warmup_epochs": 0}}
CHAIN = {"stem_channels": 8, "first_block_channels": 0, "widths": [16], "depths": [3], "strides": [2],
         "head_channels": 0, "ops": ["MBConv_1_3", "MBConv_3_3", "MBConv_3_5", "Identity"]}
"""A tiny chain with both decision groups: a transition (3 ops, no Identity), then two residual mixops (4 ops).
Each mixop's output reaches the loss through a residual sum or the classifier: a mixop followed directly by a
layer without residual (conv, BatchNorm) would get no straight-through gradient, BatchNorm being invariant to
the scale h_k its output carries."""


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", seed=0)


def make(data, space_name="cells", **options):
    config = preset("gdas-digits").merged({**TINY, "options": {**TINY["options"], **options}})
    if space_name == "chain":
        config = replace(config, space_name="chain", space=CHAIN)
    return get_method("gdas")(config, data, torch.device("cpu"))


def test_hard_forward_is_exactly_one_hot_and_gradient_reaches_every_logit(data):
    method = make(data)
    guide = method.guide
    sample = guide.distribution("normal").rsample()
    assert set(sample.detach().unique().tolist()) == {0.0, 1.0}
    assert torch.equal(sample.detach().sum(-1), torch.ones(sample.shape[0]))
    # the soft backward path: d(sum_k c_k h_k)/dA is non-zero for every op of an edge
    weights = torch.randn(sample.shape[-1])
    (sample[0] * weights).sum().backward()
    grad = guide.logits["normal"].grad[0]
    assert (grad != 0).all()
    assert (guide.logits["normal"].grad[1:] == 0).all()  # other edges untouched by this edge's term


def test_only_the_sampled_op_runs_and_gets_gradient():
    torch.manual_seed(0)
    ops = CellSpace.from_dict(SPACE).op_names
    edge = MixedEdge(ops, 4, 1, affine=False, sparse=True)
    calls = []
    for i, op in enumerate(edge.ops):
        op.register_forward_hook(lambda module, args, out, i=i: calls.append(i))
    k = ops.index("sep_conv_3x3")
    weights = torch.nn.functional.one_hot(torch.tensor(k), len(ops)).float().requires_grad_()
    edge(torch.randn(3, 4, 6, 6), weights).sum().backward()
    assert calls == [k]
    for i, op in enumerate(edge.ops):
        grads = [p.grad for p in op.parameters()]
        if i == k:
            assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None for g in grads)


def test_per_example_sampling_groups_the_batch_by_op():
    torch.manual_seed(0)
    ops = CellSpace.from_dict(SPACE).op_names
    edge = MixedEdge(ops, 4, 1, affine=True, sparse=True).eval()
    x = torch.randn(6, 4, 5, 5)
    choice = torch.tensor([4, 1, 4, 2, 1, 4])
    weights = torch.nn.functional.one_hot(choice, len(ops)).float()
    calls = []
    for i, op in enumerate(edge.ops):
        op.register_forward_hook(lambda module, args, out, i=i: calls.append(i))
    out = edge(x, weights)
    assert sorted(calls) == [1, 2, 4]  # each chosen op once, on its group
    for n, k in enumerate(choice.tolist()):
        torch.testing.assert_close(out[n], edge.ops[k](x[n:n + 1])[0])


def test_temperature_schedule_endpoints():
    assert annealed_temperature(0, 240, 10.0, 1.0) == 10.0
    assert annealed_temperature(239, 240, 10.0, 1.0) == pytest.approx(1.0)
    assert annealed_temperature(249, 250, 10.0, 0.1) == pytest.approx(0.1)
    assert annealed_temperature(120, 241, 10.0, 1.0) == pytest.approx(5.5)


def test_derivation_on_a_hand_made_A():
    names = ("none", "skip_connect", "sep_conv_3x3")
    edges = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    strength = torch.tensor([
        [0.9, 0.05, 0.05],  # state 0 <- 0: zero is excluded, skip and sep tie low
        [0.1, 0.2, 0.7],    # state 0 <- 1: sep
        [0.1, 0.6, 0.3],    # state 1 <- 0: skip (0.6)
        [0.2, 0.3, 0.5],    # state 1 <- 1: sep (0.5)
        [0.1, 0.1, 0.8],    # state 1 <- 2: sep (0.8)
    ])
    cell = derive_cell(strength, names, edges)
    assert cell[0] == [["skip_connect", 0], ["sep_conv_3x3", 1]]
    assert cell[1] == [["skip_connect", 0], ["sep_conv_3x3", 2]]  # the two strongest of three incoming


def test_registered_kl_between_underlying_categoricals():
    logits = torch.randn(5, 8)
    q = dist.RelaxedOneHotCategoricalStraightThrough(torch.tensor(1.0), logits=logits).to_event(1)
    p = dist.OneHotCategorical(logits=torch.zeros(5, 8)).to_event(1)
    expected = kl_divergence(torch.distributions.Categorical(logits=logits),
                             torch.distributions.Categorical(logits=torch.zeros(5, 8))).sum()
    assert kl_divergence(q, p).item() == pytest.approx(expected.item(), rel=1e-5)

    def model():
        pyro.sample("f", p)

    def guide():
        pyro.sample("f", q)

    assert TraceMeanField_ELBO().differentiable_loss(model, guide).item() == pytest.approx(expected.item(), rel=1e-5)


def _replayed_draw(method, seed, batch):
    """The proposal's draw that ``method.loss`` makes after ``torch.manual_seed(seed)``, recomputed from the
    definition of the straight-through Gumbel-softmax (Eq. 5-7): the soft sample softmax((A + G) / tau) with
    the same Gumbel noise (same generator state, one ``(batch, E, K)`` draw per cell type in order) and the
    hard one-hot h = one_hot(argmax) that the forward pass uses."""
    torch.manual_seed(seed)
    guide = method.guide
    soft, hard = {}, {}
    for kind in guide.groups:
        logits = guide.logits[kind] if batch is None else guide.logits[kind].expand(batch, *guide.logits[kind].shape)
        tau = torch.tensor(guide.temperature)
        soft[kind] = clamp_probs(torch.distributions.RelaxedOneHotCategorical(tau, logits=logits).rsample())
        hard[kind] = torch.nn.functional.one_hot(soft[kind].argmax(-1), soft[kind].shape[-1]).float()
    return soft, hard


def _likelihood_and_its_logit_gradient(method, x, y, soft, hard):
    """Mean negative log-likelihood of the super-network under the hard draw, and its gradient with respect to
    the logits A through the straight-through path: dL/dA = (dL/dh) d softmax((A + G) / tau) / dA."""
    h = {k: v.clone().requires_grad_() for k, v in hard.items()}
    nll = torch.nn.functional.cross_entropy(method.model.net(x, h), y)
    dh = torch.autograd.grad(nll, list(h.values()))
    kinds = list(hard)
    grads = torch.autograd.grad(sum((soft[k] * d).sum() for k, d in zip(kinds, dh, strict=True)),
                                [method.guide.logits[k] for k in kinds])
    return nll.detach(), dict(zip(kinds, grads, strict=True)), dict(zip(kinds, dh, strict=True))


def _kl_to_uniform(method):
    """sum over cell types and edges of KL(Categorical(softmax A_e) || uniform) = sum_k p_k log p_k + log K."""
    total = 0
    for a in method.guide.logits.values():
        p = torch.softmax(a, -1)
        total = total + (p * torch.log(p)).sum() + a.shape[0] * math.log(a.shape[1])
    return total


@pytest.mark.parametrize("space_name,sample_per", [("cells", "batch"), ("cells", "example"), ("chain", "batch"),
                                                   ("chain", "example")])
def test_likelihood_gradient_reaches_the_logits_of_the_sampled_ops(data, space_name, sample_per):
    """beta = 1: the analytic KL alone would give every logit a gradient, so take it out and check the rest,
    the likelihood's straight-through gradient, against its independent computation; it is non-zero on
    exactly the decisions that ran an op other than ``none`` (``none`` outputs zeros: dL/dh = 0). The chain has
    no ``none``: every mixop runs an op (Identity too: its output is x h_k), so every decision's logits get it."""
    torch.manual_seed(0)
    method = make(data, space_name, beta=1.0, sample_per=sample_per)
    method.begin_epoch(0)
    x, y, index = data.train.x[:8], data.train.y[:8], torch.arange(8)
    batch = 8 if sample_per == "example" else None
    torch.manual_seed(123)
    method.loss(x, y, index, 100)[0].backward()
    soft, hard = _replayed_draw(method, 123, batch)
    _, likelihood_grad, _ = _likelihood_and_its_logit_gradient(method, x, y, soft, hard)
    kl_grad = torch.autograd.grad(_kl_to_uniform(method), list(method.guide.logits.values()))
    groups = method.space.groups()
    assert list(groups) == (["normal", "reduce"] if space_name == "cells" else ["transition", "mixop"])
    for kind, kl_g in zip(method.guide.groups, kl_grad, strict=True):
        scale = 1.0 if sample_per == "example" else 1 / 100  # per-example KL counted once per example
        observed_likelihood_grad = method.guide.logits[kind].grad - scale * kl_g
        torch.testing.assert_close(observed_likelihood_grad, likelihood_grad[kind], atol=1e-6, rtol=1e-4)
        options = groups[kind].options
        ran_an_op = hard[kind].argmax(-1) != (options.index("none") if "none" in options else -1)
        ran_an_op = ran_an_op.any(0) if sample_per == "example" else ran_an_op
        assert ran_an_op.all() if space_name == "chain" else ran_an_op.any()
        assert (observed_likelihood_grad[ran_an_op].abs().sum(-1) > 1e-6).all()
        assert (observed_likelihood_grad[~ran_an_op].abs() < 1e-8).all()  # zero up to the KL subtracted
        assert observed_likelihood_grad.abs().sum() > 0.1 * scale * kl_g.abs().sum()


def test_annealed_temperature_reaches_the_distribution_of_the_loss(data):
    """The straight-through gradient scales with 1 / tau (d softmax(z / tau) / dz): the gradient of the loss
    after ``begin_epoch`` matches the one computed at the annealed tau, and not the one at the other tau."""
    method = make(data, tau_max=10.0, tau_min=0.5)
    x, y, index = data.train.x[:8], data.train.y[:8], torch.arange(8)
    expected = {}
    for epoch, tau in [(0, 10.0), (1, 0.5)]:
        method.begin_epoch(epoch)
        assert method.guide.temperature == tau
        method.guide.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        method.loss(x, y, index, 100)[0].backward()
        soft, hard = _replayed_draw(method, 7, None)
        _, expected[tau], _ = _likelihood_and_its_logit_gradient(method, x, y, soft, hard)
        for kind in method.guide.groups:
            torch.testing.assert_close(method.guide.logits[kind].grad, expected[tau][kind], atol=1e-7, rtol=1e-4)
        other = 0.5 if tau == 10.0 else 10.0
        method.guide.temperature = other
        soft, hard_other = _replayed_draw(method, 7, None)
        method.guide.temperature = tau
        _, wrong, _ = _likelihood_and_its_logit_gradient(method, x, y, soft, hard_other)
        assert not all(torch.allclose(method.guide.logits[k].grad, wrong[k], rtol=0.05)
                       for k in method.guide.groups)


@pytest.mark.parametrize("sample_per", ["batch", "example"])
def test_value_of_the_beta_weighted_loss(data, sample_per):
    """beta > 0: the loss per example is the negative ELBO over the data-set size N (``size``),
    mean_i -log p(y_i | x_i, f) + beta * KL(q || p) / N with one architecture per mini-batch (one KL), and
    + beta * KL(q || p) with one per example (N KLs), KL(q || p) = sum over cell types and edges of
    KL(Categorical(softmax A) || uniform) (Pyro's analytic KL of the straight-through site)."""
    beta, size = 0.5, 100
    torch.manual_seed(0)
    method = make(data, beta=beta, sample_per=sample_per)
    with torch.no_grad():
        for a in method.guide.logits.values():
            a.copy_(torch.randn(a.shape))  # far from uniform, so the KL term matters
    method.begin_epoch(1)
    x, y, index = data.train.x[:8], data.train.y[:8], torch.arange(8)
    torch.manual_seed(11)
    loss, right = method.loss(x, y, index, size)
    soft, hard = _replayed_draw(method, 11, 8 if sample_per == "example" else None)
    with torch.no_grad():
        logits = method.model.net(x, hard)
        nll = torch.nn.functional.cross_entropy(logits, y)
        kl = _kl_to_uniform(method)
    kl_scale = 1.0 if sample_per == "example" else 1 / size
    assert kl > 1.0
    assert loss.item() == pytest.approx((nll + beta * kl_scale * kl).item(), rel=1e-5)
    assert right == int((logits.argmax(-1) == y).sum())


def test_phases_splits_optimisers_and_start(data):
    """Algorithm 1 with the paper's settings: weights on D_T by SGD (the search configuration: lr, momentum,
    nesterov, weight decay, clipping, cosine schedule); logits A on D_V by Adam (lr 3e-4, betas (0.5, 0.999),
    weight decay 1e-3, constant); the architecture phase starts after ``warmup_epochs``."""
    method = make(data, warmup_epochs=1)
    config = method.config
    weights, arch = method.phases()
    assert (weights.name, weights.split, arch.name, arch.split) == ("weights", "weights", "architecture",
                                                                    "architecture")
    assert (weights.optimizer, weights.schedule, weights.start_epoch) == ("sgd", "cosine", 0)
    assert (weights.lr, weights.lr_min, weights.momentum, weights.nesterov, weights.weight_decay,
            weights.grad_clip) == (config.lr, config.lr_min, config.momentum, config.nesterov,
                                   config.weight_decay, config.grad_clip)
    assert (config.lr, config.lr_min, config.momentum, config.weight_decay) == (0.025, 0.001, 0.9, 3e-4)
    assert (arch.optimizer, arch.schedule, arch.start_epoch) == ("adam", "constant", 1)
    assert (arch.betas, arch.weight_decay, arch.lr) == ((0.5, 0.999), 1e-3, method.options.arch_lr)
    assert arch.lr == method.options.arch_lr == 0.01  # the gdas-digits preset; the paper's defaults:
    defaults = get_method("gdas").options_type()
    assert (defaults.arch_lr, defaults.arch_weight_decay, defaults.warmup_epochs) == (3e-4, 1e-3, 0)
    # disjoint parameters: every network weight in the first phase, exactly the logits A in the second
    w_ids = [id(p) for g in weights.param_groups for p in g["params"]]
    a_ids = [id(p) for g in arch.param_groups for p in g["params"]]
    assert set(w_ids) == {id(p) for p in method.model.parameters()} and len(w_ids) == len(set(w_ids))
    assert set(a_ids) == {id(p) for p in method.guide.logits.values()}
    optimizer, scheduler = weights.make_optimizer(config.epochs)
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (
        config.lr, config.momentum, config.nesterov and config.momentum > 0, config.weight_decay)
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and scheduler.eta_min == config.lr_min
    optimizer, _ = arch.make_optimizer(config.epochs)
    assert isinstance(optimizer, torch.optim.Adam)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (method.options.arch_lr, (0.5, 0.999), 1e-3)
    # each phase scales its loss by the size of its own half of the training split
    halves = data.halves(config.seed)
    assert method.split_sizes == {"weights": len(halves[0]), "architecture": len(halves[1])}
    sizes = []
    method.loss = lambda x, y, index, size, uniform_gate=False: sizes.append(size) or (torch.zeros(()), 0)
    x, y, index = data.train.x[:4], data.train.y[:4], torch.arange(4)
    weights.loss(x, y, index)
    arch.loss(x, y, index)
    assert sizes == [len(halves[0]), len(halves[1])]


@pytest.mark.parametrize("beta,sample_per", [(0.0, "batch"), (1.0, "example")])
def test_losses_and_sites(data, beta, sample_per):
    method = make(data, beta=beta, sample_per=sample_per)
    x, y, index = data.train.x[:8], data.train.y[:8], torch.arange(8)
    loss, right = method.loss(x, y, index, 100)
    assert torch.isfinite(loss) and 0 <= right <= 8
    loss.backward()
    assert all(p.grad is not None for p in method.guide.parameters())
    trace = poutine.trace(method.guide).get_trace(x, y, index, 100)
    shape = method.space.groups()["normal"].shape
    expected = (8, *shape) if sample_per == "example" else shape
    assert trace.nodes["arch_normal"]["value"].shape == expected


@pytest.mark.slow
def test_tiny_search_writes_fading_and_cells(tmp_path):
    config = preset("gdas-digits").merged({**TINY, "epochs": 3, "options": {**TINY["options"], "arch_lr": 0.05,
                                                                            "retrain_auxiliary": 0.4}})
    summary = run_search(config, tmp_path / "run", progress=False)
    # sizes without the DARTS auxiliary head, as the papers report them; the head reads the reduction cell
    # (2 states x 2C = 16 channels): 1x1 conv to 128 + BN, 2x2 conv to 768 + BN, linear to 10 classes
    head = (16 * 128 + 2 * 128) + (128 * 768 * 4 + 2 * 768) + (768 * 10 + 10)
    assert summary["params_with_auxiliary"] - summary["params"] == head
    rows = read_jsonl(tmp_path / "run/metrics.jsonl")
    assert [r["tau"] for r in rows] == [10.0, 5.5, 1.0]
    assert rows[-1]["log10_effective_architectures"] < rows[0]["log10_effective_architectures"]
    assert summary["log10_effective_architectures_last"] < summary["log10_effective_architectures_first"]
    assert set(summary["cells"]) == {"normal", "reduce"}
    assert (tmp_path / "run/posterior.nc").exists() and (tmp_path / "run/op_probabilities_normal.png").exists()
    assert summary["params"] < summary["supernet_params"]
    # fading per decision: one entropy per edge of each cell type, in the space's order; their sum is log N_eff
    entropy = {k.removeprefix("decision_entropy."): v for k, v in rows[-1].items() if k.startswith("decision_entropy.")}
    assert {k: len(v) for k, v in entropy.items()} == {"normal": 5, "reduce": 5}  # flat columns, one per group
    assert rows[-1]["log10_effective_architectures"] == pytest.approx(
        sum(map(sum, entropy.values())) / math.log(10), abs=1e-3)


def test_tiny_search_on_the_chain_derives_the_most_probable_op_of_every_mixop(tmp_path):
    config = preset("gdas-digits").merged({**TINY, "options": {**TINY["options"], "arch_lr": 0.05}})
    run = tmp_path / "run"
    summary = run_search(replace(config, space_name="chain", space=CHAIN), run, progress=False)
    genotype = load_genotype(run / "genotype.json")  # validated against the chain
    space = get_space("chain", genotype.config)
    decisions = space.decisions()
    assert genotype.space == "chain" and summary["chain"] == genotype.choices
    assert summary["params"] == space.params(genotype) < summary["supernet_params"]
    # the derivation is the argmax of softmax(A) per decision, A as checkpointed after the last epoch
    logits = {k.removeprefix("logits."): v for k, v in
              torch.load(run / "checkpoint.pt", weights_only=True)["modules"]["guide"].items()}
    assert {k: tuple(v.shape) for k, v in logits.items()} == {"transition": (1, 3), "mixop": (2, 4)}
    expected = [""] * len(decisions)
    for name, g in space.groups().items():
        for p, k in zip(g.positions, logits[name].argmax(-1).tolist(), strict=True):
            expected[p] = g.options[k]
    assert genotype.choices["ops"] == expected
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["tau"] for r in rows] == [10.0, 1.0]
    assert len(rows[-1]["decision_entropy.transition"]) == 1 and len(rows[-1]["decision_entropy.mixop"]) == 2
    assert rows[-1]["log10_effective_architectures"] < rows[0]["log10_effective_architectures"] <= (
        (2 * math.log(4) + math.log(3)) / math.log(10) + 1e-4)

    import arviz as az

    idata = az.from_netcdf(str(run / "posterior.nc"))
    probability = idata.constant_data["op_probability"]
    assert idata.posterior["op_choice"].dims == ("chain", "draw", "decision", "op")
    assert list(probability.coords["decision"].values) == [d.name for d in decisions]
    assert list(probability.coords["op"].values) == list(CHAIN["ops"])
    transition = decisions[space.groups()["transition"].positions[0]].name
    assert np.isnan(float(probability.sel(decision=transition, op="Identity")))  # not an option there
    assert np.nansum(probability.values, axis=-1) == pytest.approx(np.ones(len(decisions)), abs=1e-5)
    assert np.nansum(idata.posterior["op_choice"].values, axis=-1) == pytest.approx(1.0)
    for name in ("op_probabilities_mixop.png", "op_probabilities_transition.png"):
        assert (run / name).exists(), name


def test_a_checkpoint_of_the_shared_prior_buffer_still_loads(data):
    """Checkpoints written before the prior was kept per group hold one all-zero ``prior_logits`` buffer; the
    guide's keys are the cell types' names as before."""
    method = make(data)
    state = method.model.state_dict()
    assert "prior_logits" not in state
    method.model.load_state_dict({**state, "prior_logits": torch.zeros(method.space.groups()["normal"].shape)})
    assert sorted(method.guide.state_dict()) == ["logits.normal", "logits.reduce"]


def test_fixed_reduction_cell_searches_only_normal_cells(data):
    config = preset("gdas-digits").merged({**TINY, "space": {**SPACE, "states": 4, "fixed_reduction": True}})
    method = get_method("gdas")(config, data, torch.device("cpu"))
    assert method.guide.groups == ["normal"]
    assert set(method.genotype().choices) == {"normal"}


def test_cli_flags_choose_sampling_and_fixed_reduction():
    from bayesnas.cli import build_parser, search_config

    args = build_parser().parse_args(["search", "--method", "gdas", "--sample-per", "example", "--fixed-reduction"])
    config = search_config(args)
    assert config.method == "gdas"
    assert config.options["sample_per"] == "example"
    assert config.space["fixed_reduction"] is True and config.space["layout"] == "NRN"


def test_uniform_gate_keeps_the_straight_through_gradient_and_integrates_it():
    """The selected op runs at a gate u in (0, 1], the others stay 0, and the logits get the straight-through
    gradient; over draws, dL/dh at h = u averages to L(1) - L(0) (for L(h) = (h b - t)^2: b^2 - 2 t b = -3.75,
    while dL/dh at 1 is -1.5)."""
    torch.manual_seed(0)
    logits = torch.randn(3, 4, requires_grad=True)
    soft = torch.softmax(logits, -1)
    hard = torch.nn.functional.one_hot(soft.argmax(-1), 4).float()
    st = hard - soft.detach() + soft
    gated = uniform_gate(st)
    gates = gated.detach().sum(-1)
    assert torch.equal(gated.detach() != 0, hard == 1) and ((gates > 0) & (gates <= 1)).all() and (gates < 1).any()
    w = torch.randn(3, 4)
    torch.testing.assert_close(torch.autograd.grad((w * gated).sum(), logits, retain_graph=True)[0],
                               torch.autograd.grad((w * st).sum(), logits)[0])
    one = torch.ones(20000, 1, requires_grad=True)
    b, t = 1.5, 2.0
    (dl_dh,) = torch.autograd.grad(((uniform_gate(one) * b - t) ** 2).sum(), one)
    assert dl_dh.mean().item() == pytest.approx(b * b - 2 * t * b, abs=4 * dl_dh.std().item() / math.sqrt(20000))


def test_uniform_arch_gate_runs_in_the_architecture_step_only(data):
    """``arch_gate = uniform``: the architecture phase's loss is the model's at gates u < 1 (another value than
    at gate 1 for the same draws), the weight phase's is GDAS's own, and the model is left at gate 1."""
    method = make(data, "chain", arch_gate="uniform")
    weights, arch = method.phases()
    x, y, index = data.train.x[:16], data.train.y[:16], torch.arange(16)

    def value(loss_fn, **kwargs):
        torch.manual_seed(5)
        return loss_fn(x, y, index, **kwargs)[0].item()

    size = method.split_sizes["architecture"]
    at_one = value(method.loss, size=size)
    assert value(arch.loss) != pytest.approx(at_one, rel=1e-4)
    assert value(arch.loss) == value(method.loss, size=size, uniform_gate=True)
    assert value(weights.loss) == value(method.loss, size=method.split_sizes["weights"])
    assert method.model.uniform_gate is False
    with pytest.raises(ValueError, match="arch_gate"):
        make(data, arch_gate="half")


@pytest.mark.parametrize("warmup", [2, 7])
def test_warmup_at_or_beyond_epochs_is_refused_before_anything_is_written(data, tmp_path, warmup):
    """A warm-up of ``epochs`` (2 here) or more would never train the logits: one line, and no run folder."""
    with pytest.raises(ConfigError, match=rf"method 'gdas': warmup_epochs \({warmup}\) must be below epochs \(2\)"):
        make(data, warmup_epochs=warmup)
    config = preset("gdas-digits").merged({**TINY, "options": {**TINY["options"], "warmup_epochs": warmup}})
    with pytest.raises(ConfigError, match="warmup_epochs"):
        run_search(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
