"""VINNAS: model/guide sites, Eq. 8 terms and gammas, Algorithm 1's stages, SNR selection, pruning, run folder."""

import importlib.util
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine

import bayesnas.distributions as bd
from bayesnas.cli import main
from bayesnas.config import ConfigError, preset
from bayesnas.data import load_dataset
from bayesnas.diagnostics import POSTERIOR_FILE
from bayesnas.distributions import LocalNormal, LogUniform
from bayesnas.infer import run_search
from bayesnas.io import read_jsonl
from bayesnas.methods import get_method
from bayesnas.spaces import GenotypeError, get_space, load_genotype
from bayesnas.spaces.ops import SearchConv2d

TINY = {
    "epochs": 2, "batch_size": 64, "data_fraction": 0.4,
    "space": {"channels": 4, "layout": "RN", "states": 2, "eval_channels": 4},
    "options": {"warmup_epochs": 1, "retrain_epochs": 1, "posterior_draws": 8, "entropy_samples": 4},
}


@pytest.fixture
def config():
    return preset("vinnas-digits").merged(TINY)


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", seed=0, fraction=0.4)


@pytest.fixture
def method(config, data):
    torch.manual_seed(0)
    return get_method("vinnas")(config, data, torch.device("cpu"))


def _batch(method, n=16):
    split = method.weight_half
    return split.x[:n], split.y[:n], torch.arange(n)


def _traces(method):
    """Guide and model traces of one stage-1 step at the final gammas, the super-network's convolutions and the
    weight sites."""
    x, y, index = _batch(method)
    method.set_gammas(method.config.epochs - 1)
    guide_trace = poutine.trace(method.guide).get_trace()
    model_trace = poutine.trace(poutine.replay(method.model, guide_trace)).get_trace(x, y, index, 100)
    convs = [n for n, m in method.model.net.named_modules() if isinstance(m, SearchConv2d)]
    weights = [n for n in guide_trace.stochastic_nodes if n.startswith("net.")]
    return guide_trace, model_trace, convs, weights


def test_every_weight_and_both_strengths_are_sites(method):
    guide_trace, model_trace, convs, weights = _traces(method)
    assert len(weights) == len(convs) + 1  # every convolution (stem, preprocessing, ops) and the classifier
    assert "net.classifier.weight" in weights and "net.stem.0.weight" in weights
    E, K = method.space.groups()["normal"].shape
    for kind in ("normal", "reduce"):
        site = model_trace.nodes[f"alpha.{kind}"]
        assert site["value"].shape == (E, K) and isinstance(site["fn"], LogUniform)
        assert isinstance(guide_trace.nodes[f"alpha.{kind}"]["fn"], LocalNormal)
    for name in weights:
        assert model_trace.nodes[name]["cond_indep_stack"] == ()  # global
        assert model_trace.nodes[name]["value"].shape == model_trace.nodes[name]["fn"].event_shape
    obs = model_trace.nodes["y"]
    assert obs["is_observed"] and obs["cond_indep_stack"][0].full_size == 100
    # BatchNorm: no affine parameters, no running statistics; the only point parameter is the classifier bias
    bns = [m for m in method.model.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.affine and m.running_mean is None for m in bns)
    assert [n for n, _ in method.model.named_parameters()] == ["net.classifier.bias"]


def test_guide_initialisation(method):
    g = method.guide
    assert all(float(v.detach().max()) == -10.0 == float(v.detach().min())
               for v in [*g.log_var_w.values(), *g.log_var_alpha.values()])
    mu = torch.cat([m.flatten() for m in g.mu_alpha.values()])
    assert 0.0003 < float(mu.detach().std()) < 0.003  # N(0, 0.001), 0.001 read as the standard deviation
    w = g.mu_w["net/classifier/weight"].detach()
    bound = (6 / sum(w.shape)) ** 0.5  # Xavier uniform
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.5 * bound


def test_loss_is_eq8_with_each_term_weighted_by_its_gamma(method, monkeypatch):
    x, y, index = _batch(method)
    n = len(method.weight_half)
    kl_w, kl_a = method.kl_terms()

    def loss(gammas, seed=0):
        method.model.gammas = method.guide.gammas = gammas
        torch.manual_seed(seed)
        with torch.no_grad():
            return method.weight_loss(x, y, index)[0].item()

    base = loss((0.0, 0.0, 0.1))
    assert loss((0.5, 0.25, 0.1)) - base == pytest.approx((0.5 * kl_w + 0.25 * kl_a) / n, rel=1e-4)
    torch.manual_seed(0)
    entropy = float(method.guide.op_entropy(method.options.entropy_samples, method.model.clip))
    assert loss((0.0, 0.0, 0.3)) - base == pytest.approx(0.2 * entropy / n, rel=1e-4)  # g3 H once, not N times
    assert 0 < entropy <= 2 * 5 * torch.log(torch.tensor(10.0)).item() + 1e-4  # 2 cells x 5 edges x log K
    # the KLs come from the registered closed form, never from Monte Carlo: summed once per scale (the weights' gamma_1,
    # the strengths' gamma_2) over the concatenated tensors of that scale's sites
    calls = []
    original = bd.kl_normal_log_uniform_elementwise
    monkeypatch.setattr(bd, "kl_normal_log_uniform_elementwise", lambda *a: calls.append(a[0].numel()) or original(*a))
    weights = sum(p.numel() for p in method.guide.mu_w.values())
    strengths = sum(p.numel() for p in method.guide.mu_alpha.values())
    loss((1.0, 0.5, 0.0))
    assert sorted(calls) == sorted([weights, strengths])
    calls.clear()
    loss((1.0, 1.0, 0.0))  # one scale: one sum over every site
    assert calls == [weights + strengths]


def test_stage_loss_equals_eq8_on_a_fixed_draw(method, monkeypatch):
    """Stage 2's loss times N is Eq. 8 (Ferianc et al. 2020) with D = the architecture half (N examples):
    sum_D NLL (the batch's smoothed cross-entropy scaled by N / M) + g1 KL_w + g2 KL_alpha + g3 sum H."""
    x, y, index = _batch(method, 24)
    n, m = len(method.arch_half), len(y)
    g1, g2, g3 = 0.3, 0.7, 2.5
    entropy = 1.75  # a fixed stand-in for sum_{i,j} H(E_q[z^{i,j}]) (its estimate is checked separately)
    monkeypatch.setattr(method.guide, "op_entropy", lambda *a, **k: torch.tensor(entropy))
    kl_w, kl_a = method.kl_terms()

    def scaled_loss(gammas):
        method.model.gammas = method.guide.gammas = gammas
        torch.manual_seed(0)  # the same local-reparameterisation noise for every call
        with torch.no_grad():
            loss = method.architecture_loss(x, y, index)[0].item() * n
        nll = F.cross_entropy(method.model.last_logits.double(), y, label_smoothing=0.1, reduction="sum").item()
        return loss, nll * n / m

    loss, nll = scaled_loss((g1, g2, g3))
    assert n > 100 and loss == pytest.approx(nll + g1 * kl_w + g2 * kl_a + g3 * entropy, rel=1e-6)
    # the entropy's own share, free of the large KL terms: g3 * H, not g3 * N * H
    with_entropy, _ = scaled_loss((0.0, 0.0, g3))
    without, nll0 = scaled_loss((0.0, 0.0, 0.0))
    assert without == pytest.approx(nll0, rel=1e-6)
    assert with_entropy - without == pytest.approx(g3 * entropy, rel=1e-3)


def test_zero_op_strength_is_clipped_in_the_mixture_and_the_entropy(config, data):
    """Sec. V-A: the zero op's sampled strength is clipped (at ``zero_alpha_max``) before the softmax of Eq. 3."""
    torch.manual_seed(0)
    method = get_method("vinnas")(config.merged({"options": {"zero_alpha_max": 0.5}}), data, torch.device("cpu"))
    ops = list(method.space.op_names)
    zero = ops.index("none")
    E, K = method.space.groups()["normal"].shape
    alpha = torch.linspace(-1.0, 1.0, E * K).reshape(E, K)
    alpha[:, zero] = torch.tensor([3.0, -2.0, 0.5, 0.7, 10.0][:E] + [1.0] * max(E - 5, 0))
    z = method.model.op_weights({"normal": alpha})["normal"]
    clipped = alpha.clone()
    clipped[:, zero] = alpha[:, zero].clamp(max=0.5)  # 3 -> 0.5, -2 stays, 0.5 stays, 0.7 -> 0.5, 10 -> 0.5
    expected = clipped.exp() / clipped.exp().sum(-1, keepdim=True)
    torch.testing.assert_close(z, expected)
    assert float(z[4, zero]) < 0.2 and float(z[1, zero]) == pytest.approx(math.exp(-2.0) / clipped[1].exp().sum())
    other = [k for k in range(K) if k != zero]
    torch.testing.assert_close(z[:, other], expected[:, other])  # the other ops' strengths are not clipped
    method.model.zero_alpha_max = None  # off: the plain softmax
    torch.testing.assert_close(method.model.op_weights({"normal": alpha})["normal"], torch.softmax(alpha, -1))
    method.model.zero_alpha_max = 0.5
    # the entropy term sees the same clipped strengths: with sigma ~ 0, E_q[z] = softmax(clipped mu)
    g = method.guide
    with torch.no_grad():
        for kind in g.groups:
            g.mu_alpha[kind].copy_(alpha)
            g.log_var_alpha[kind].fill_(-40.0)
    with torch.no_grad():
        h = float(g.op_entropy(4, method.model.clip))
    assert h == pytest.approx(2 * float(-(expected * expected.log()).sum()), rel=1e-5)
    assert h != pytest.approx(2 * float(-(torch.softmax(alpha, -1) * torch.log_softmax(alpha, -1)).sum()), rel=1e-3)
    # and a forward pass of the super-network mixes its ops with the clipped sample
    seen = []
    forward = method.model.net.forward
    method.model.net.forward = lambda x, weights: seen.append(weights) or forward(x, weights)
    method.set_gammas(method.config.epochs - 1)
    with torch.no_grad():
        method.weight_loss(*_batch(method))
    torch.testing.assert_close(seen[0]["normal"], expected, atol=1e-6, rtol=1e-5)


def test_best_alpha_is_chosen_on_the_architecture_half(method, monkeypatch):
    """Algorithm 1, lines 15-18: after each epoch from the warm-up on, theta_alpha is kept when the error on
    D_theta_alpha (the architecture half) is the lowest so far; val, test and the weight half play no part."""
    g = method.guide
    # real accuracy of the posterior-mean super-network on the architecture half, computed independently
    method.begin_epoch(1)
    row = method.epoch_metrics()
    with torch.no_grad():
        logits = method.model.predict(method.arch_half.x, g.weight_means(3.0), g.alpha_means())
    assert row["arch_error"] == pytest.approx(float((logits.argmax(-1) != method.arch_half.y).float().mean()))
    assert int(g.best_epoch) == 1 and row["best_arch_error"] == pytest.approx(row["arch_error"])
    g.best_error.fill_(float("inf"))
    g.best_epoch.fill_(-1)

    # crafted accuracies: the architecture half is best at epoch 2, every other split at epoch 3
    arch_acc = {1: 0.5, 2: 0.9, 3: 0.6}
    other_acc = {1: 0.5, 2: 0.1, 3: 0.99}

    def accuracy(split, alphas=None):
        return (arch_acc if split is method.arch_half else other_acc)[method.epoch]

    monkeypatch.setattr(method, "accuracy", accuracy)
    mu = {}
    method.begin_epoch(0)  # warm-up (warmup_epochs = 1): no error measured, nothing kept
    assert "arch_error" not in method.epoch_metrics() and int(g.best_epoch) == -1
    for epoch in (1, 2, 3):
        with torch.no_grad():
            for v in g.mu_alpha.values():
                v.fill_(float(epoch))
        mu[epoch] = {k: v.detach().clone() for k, v in g.mu_alpha.items()}
        method.begin_epoch(epoch)
        row = method.epoch_metrics()
        assert row["arch_error"] == pytest.approx(1 - arch_acc[epoch])
    assert int(g.best_epoch) == 2 and float(g.best_error) == pytest.approx(0.1)
    assert g.restore_best()
    for k, v in g.mu_alpha.items():
        torch.testing.assert_close(v.detach(), mu[2][k])


def test_digits_preset_keeps_the_entropy_weight_of_the_older_units():
    """The preset's gamma_3 is 0.05 * N, N the architecture half: the weight 0.05 * N * H had before."""
    config = preset("vinnas-digits")
    digits = load_dataset("digits", seed=0)
    n = len(digits.halves(0)[1])
    assert n == 629 and config.options["gamma_entropy"] == pytest.approx(0.05 * n)


def test_gammas_rise_linearly_after_the_warm_up(config, data):
    cfg = config.merged({"epochs": 10, "options": {"warmup_epochs": 4, "gamma_w": 1.0, "gamma_alpha": 0.5,
                                                    "gamma_entropy": 0.2}})
    m = get_method("vinnas")(cfg, data, torch.device("cpu"))
    gammas = [m.gammas_at(e) for e in range(10)]
    assert gammas[:4] == [(0.0, 0.0, 0.0)] * 4
    assert gammas[-1] == pytest.approx((1.0, 0.5, 0.2))
    steps = [b[0] - a[0] for a, b in zip(gammas[3:], gammas[4:], strict=False)]
    assert steps == pytest.approx([1 / 6] * 6)
    late = config.merged({"epochs": 10, "options": {"warmup_epochs": 2, "gamma_start": 6}})
    assert get_method("vinnas")(late, data, torch.device("cpu")).gammas_at(5) == (0.0, 0.0, 0.0)


def test_two_stages_train_disjoint_parameters(method):
    weights, arch = method.phases()
    assert (weights.split, arch.split) == ("weights", "architecture")
    assert (weights.optimizer, arch.optimizer) == ("adam", "adam")
    assert (weights.schedule, arch.schedule) == ("cosine", "constant")
    assert (weights.start_epoch, arch.start_epoch) == (0, method.options.warmup_epochs)
    w_ids = {id(p) for g in weights.param_groups for p in g["params"]}
    a_ids = {id(p) for g in arch.param_groups for p in g["params"]}
    assert not w_ids & a_ids and a_ids == {id(p) for p in method.guide.alpha_parameters()}
    method.set_gammas(method.config.epochs - 1)
    x, y, index = _batch(method)
    loss, right = weights.loss(x, y, index)
    loss.backward()
    assert all(p.grad is None for p in method.guide.alpha_parameters())  # stage 1: alpha detached
    assert all(p.grad is not None for p in method.guide.weight_parameters())
    method.guide.zero_grad(set_to_none=True)
    arch.loss(x, y, index)[0].backward()
    assert all(p.grad is None for p in method.guide.weight_parameters())  # stage 2: weights detached
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.guide.alpha_parameters())
    # back to stage 1: q(w) is built on the parameters again, not on stage 2's detached copies
    method.guide.zero_grad(set_to_none=True)
    weights.loss(x, y, index)[0].backward()
    assert all(p.grad is not None for p in method.guide.weight_parameters())
    assert method.model.last_logits.grad_fn is None  # the metrics' logits keep no graph alive


def test_weight_distributions_are_reused_and_read_the_current_parameters(method):
    """q(w) objects persist from step to step (hundreds of sites), so they must hold the parameters themselves:
    an optimiser's in-place step and a loaded state are what the next step's distribution reads."""
    g = method.guide
    site = g.weight_sites[0]
    q = g.weight_distribution(site)
    assert g.weight_distribution(site) is q and q.loc is g.mu_w[site.replace(".", "/")]
    state = {k: v + 0.5 if k.startswith(("mu_w", "log_var_w")) else v for k, v in g.state_dict().items()}
    g.load_state_dict(state)
    torch.testing.assert_close(g.weight_distribution(site).mean, state[f"mu_w.{site.replace('.', '/')}"])
    torch.testing.assert_close(g.weight_distribution(site).log_var, state[f"log_var_w.{site.replace('.', '/')}"])
    g.frozen = {"weights"}
    detached = g.weight_distribution(site)
    assert detached is not q and not detached.loc.requires_grad
    torch.testing.assert_close(detached.loc, q.loc.detach())


def test_best_alpha_is_kept_and_restored(method):
    g = method.guide
    assert not g.restore_best()  # stage 2 never ran
    assert g.remember_best(0.5, 3)
    best = {k: v.detach().clone() for k, v in g.mu_alpha.items()}
    with torch.no_grad():
        for v in g.mu_alpha.values():
            v.add_(1.0)
    assert not g.remember_best(0.6, 4)  # worse: not kept
    assert g.restore_best()
    for k, v in g.mu_alpha.items():
        torch.testing.assert_close(v.detach(), best[k])
    assert int(g.best_epoch) == 3


def test_selection_ranks_ops_by_positive_snr_not_by_mean(method):
    g = method.guide
    ops = list(method.space.op_names)
    with torch.no_grad():
        for kind in ("normal", "reduce"):
            g.mu_alpha[kind].fill_(0.0)
            g.log_var_alpha[kind].fill_(0.0)
            # edge 0 (state 0 <- c-2): a large mean with a large variance loses to a small, certain one
            g.mu_alpha[kind][0, ops.index("sep_conv_3x3")] = 5.0
            g.log_var_alpha[kind][0, ops.index("sep_conv_3x3")] = 4.0  # SNR 5 / e^4 ~ 0.09
            g.mu_alpha[kind][0, ops.index("dil_conv_5x5")] = 0.5
            g.log_var_alpha[kind][0, ops.index("dil_conv_5x5")] = -4.0  # SNR 0.5 e^4 ~ 27
            g.mu_alpha[kind][1, ops.index("max_pool_3x3")] = 0.2
            g.log_var_alpha[kind][1, ops.index("max_pool_3x3")] = -2.0
            g.mu_alpha[kind][3, ops.index("none")] = 100.0  # the zero op is never chosen
            g.mu_alpha[kind][4, ops.index("skip_connect")] = 1.0
            g.mu_alpha[kind][3, ops.index("conv_7x1_1x7")] = 0.5
    genotype = method.derive()
    cells = genotype.choices
    for kind in ("normal", "reduce"):
        assert cells[kind][0] == [["dil_conv_5x5", 0], ["max_pool_3x3", 1]]
        assert cells[kind][1] == [["conv_7x1_1x7", 1], ["skip_connect", 2]]
    method.space.validate(genotype)  # a valid genotype of the space


def test_pruned_params_count_weights_below_the_threshold(method):
    total = method.pruned_params()
    everything = sum(p.numel() for p in method.guide.mu_w.values()) + method.model.net.classifier.bias.numel()
    assert 0.98 * everything < total <= everything  # at log sigma^2 = -10 only means below ~0.0015 are pruned
    g = method.guide
    stem = g.mu_w["net/stem/0/weight"]
    kept_in_stem = int((g.log_lambdas()["net.stem.0.weight"] < 3).sum())
    with torch.no_grad():
        g.log_var_w["net/stem/0/weight"].fill_(10.0)  # sigma^2 >> mu^2: log lambda >= 3
    assert method.pruned_params() == total - kept_in_stem and kept_in_stem > 0.9 * stem.numel()
    means = g.weight_means(prune_threshold=3.0)
    assert float(means["net.stem.0.weight"].detach().abs().sum()) == 0.0


def test_bad_options_and_spaces_fail_with_one_line(config, data):
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="warmup_epochs"):
        get_method("vinnas")(config.merged({"options": {"warmup_epochs": 5}}), data, cpu)
    with pytest.raises(ConfigError, match="unknown option"):
        get_method("vinnas")(config.merged({"options": {"gamma": 1.0}}), data, cpu)
    with pytest.raises(ConfigError, match="gamma_w must be >= 0, got -1.0"):
        get_method("vinnas")(config.merged({"options": {"gamma_w": -1.0}}), data, cpu)
    with pytest.raises(ConfigError, match="selection must be one of snr, alone, got 'best'"):
        get_method("vinnas")(config.merged({"options": {"selection": "best"}}), data, cpu)
    with pytest.raises(ConfigError, match="unknown operation"):
        get_method("vinnas")(config.merged({"space": {"ops": "sep_conv_3x3,warp_9x9"}}), data, cpu)
    with pytest.raises(ConfigError, match="layout"):
        get_method("vinnas")(config.merged({"space": {"layout": "NXR"}}), data, cpu)


def _genotype_file(tmp_path, choices, config=None):
    space = get_space("cells", config or {"ops": "vinnas", "layout": "RN", "states": 2, "channels": 4})
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps({"space": "cells", "config": space.config.to_dict(), "choices": choices}))
    return path


GOOD = [[["sep_conv_3x3", 0], ["skip_connect", 1]], [["dil_conv_3x3", 1], ["max_pool_3x3", 2]]]


def test_bad_genotypes_fail_with_a_clear_error(tmp_path):
    load_genotype(_genotype_file(tmp_path, {"normal": GOOD, "reduce": GOOD}))  # fits
    bad_op = [[["sep_conv_3x3", 0], ["warp_conv_9x9", 1]], GOOD[1]]
    with pytest.raises(GenotypeError, match="unknown operation 'warp_conv_9x9'"):
        load_genotype(_genotype_file(tmp_path, {"normal": bad_op, "reduce": GOOD}))
    with pytest.raises(GenotypeError, match="expected 2 states"):
        load_genotype(_genotype_file(tmp_path, {"normal": GOOD + GOOD[:1], "reduce": GOOD}))
    with pytest.raises(GenotypeError, match=r"input must be an integer in \[0, 2\)"):
        load_genotype(_genotype_file(tmp_path, {"normal": [[["skip_connect", 2], ["skip_connect", 0]], GOOD[1]],
                                                "reduce": GOOD}))
    with pytest.raises(GenotypeError, match="cell type"):
        load_genotype(_genotype_file(tmp_path, {"normal": GOOD}))
    # a state keeps any number of distinct inputs (one op per edge keeps every edge not 'none'), never one twice
    load_genotype(_genotype_file(tmp_path, {"normal": [[["skip_connect", 0]], GOOD[1]], "reduce": GOOD}))
    with pytest.raises(GenotypeError, match="each input at most once"):
        load_genotype(_genotype_file(tmp_path, {"normal": [[["skip_connect", 0], ["sep_conv_3x3", 0]], GOOD[1]],
                                                "reduce": GOOD}))


@pytest.mark.slow
def test_search_writes_run_folder_prints_cells_and_diagnoses(config, tmp_path, capsys):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({**TINY, "method": "vinnas"}))
    run = tmp_path / "run"
    assert main(["search", "--method", "vinnas", "--config", str(cfg), "--out", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "normal s0 = " in out and "reduce s0 = " in out and "after pruning" in out
    summary = json.loads((run / "summary.json").read_text())
    for key in ("test_accuracy", "params", "pruned_params", "supernet_params", "cells", "best_arch_error"):
        assert key in summary, key
    assert summary["pruned_params"] <= summary["supernet_params"]
    assert summary["best_arch_epoch"] == 1  # stage 2 ran only in the last epoch
    assert set(summary["cells"]) == {"normal", "reduce"}
    rows = read_jsonl(run / "metrics.jsonl")
    for key in ("nll", "kl_w", "kl_alpha", "op_entropy", "gamma_w", "gamma_alpha", "gamma_entropy",
                "pruned_params"):
        assert all(key in r for r in rows), key
    assert rows[0]["gamma_w"] == 0.0 and rows[1]["gamma_w"] > 0 and rows[0]["architecture_loss"] is None
    for name in ("genotype.json", POSTERIOR_FILE, "snr_normal.png", "snr_reduce.png", "training.png"):
        assert (run / name).exists(), name
    genotype = load_genotype(run / "genotype.json")
    assert genotype.choices == summary["cells"]

    import arviz as az

    idata = az.from_netcdf(str(run / POSTERIOR_FILE))
    assert idata.posterior["alpha"].dims == ("chain", "draw", "decision", "op")
    assert idata.posterior["op_weight"].sum("op").values == pytest.approx(1.0, abs=1e-5)
    assert idata.constant_data["snr"].dims == ("decision", "op")
    # decisions: the edges of each cell type (normal first), state 0 fed by cells c-2 (input 0) and c-1 (input 1)
    assert list(idata.posterior.coords["decision"].values)[:2] == ["normal:0<-0", "normal:0<-1"]
    assert len(idata.posterior.coords["decision"]) == 2 * 5

    assert main(["diagnose", str(run), "--out", str(run.parent / "diagnose")]) == 0
    out = capsys.readouterr().out
    assert "positive SNR" in out and "op_weight[" in out and "sep_conv_3x3" in out
    assert (run.parent / "diagnose/diagnose_snr.png").exists()
    assert (run.parent / "diagnose/diagnose_forest.png").exists()


def test_a_checkpoint_with_the_zero_op_buffer_still_loads(method):
    """Checkpoints written before the groups held the clipping mask as a buffer ``zero_op`` (a constant)."""
    state = method.model.state_dict()
    assert "zero_op" not in state
    method.model.load_state_dict({**state, "zero_op": torch.zeros(10, dtype=torch.bool)})
    keys = set(method.guide.state_dict())
    assert {"mu_alpha.normal", "log_var_alpha.reduce", "best_mu_alpha_normal", "best_log_var_alpha_reduce"} <= keys


@pytest.mark.slow
def test_best_alpha_travels_with_the_checkpoint(config, tmp_path):
    class Stop(Exception):
        pass

    def stop(event):
        if event.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        run_search(config.merged({"epochs": 3}), tmp_path / "run", progress=False, on_step=stop)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["modules"]["guide"]
    assert int(state["best_epoch"]) == 1 and 0 <= float(state["best_error"]) <= 1
    assert state["best_mu_alpha_normal"].shape == state["mu_alpha.normal"].shape


@pytest.mark.parametrize("name,kinds,cells", [("vinnas-mnist", ["reduce"], 1),
                                              ("vinnas-fashion", ["normal", "reduce"], 4),
                                              ("vinnas-cifar10", ["normal", "reduce"], 20)])
def test_paper_presets_build_their_spaces(name, kinds, cells):
    from bayesnas.data import DataBundle, Split

    config = preset(name)
    channels, size = config.space["in_channels"], 32 if name == "vinnas-cifar10" else 28
    split = Split(torch.zeros(8, channels, size, size), torch.arange(8) % 10)
    data = DataBundle(config.dataset, split, split, split, 10, channels, size, "synthetic")
    m = get_method("vinnas")(config.merged({"epochs": config.epochs}), data, torch.device("cpu"))
    assert list(m.space.groups()) == m.guide.groups == kinds and len(m.space.op_names) == 10
    assert m.space.config.states == {"vinnas-mnist": 2, "vinnas-fashion": 3, "vinnas-cifar10": 4}[name]
    net = m.space.build(m.derive())
    assert len(net.cells) == cells
    assert net(torch.zeros(2, channels, size, size)).shape == (2, 10)


def _benchmark(name):
    """The script ``benchmarks/<name>.py`` as a module."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_overhead_benchmark_runs_for_vinnas(capsys):
    bench = _benchmark("svi_overhead")
    for stage, profile in (("weights", ["--op-profile", "1"]), ("architecture", [])):
        ratio = bench.main(["--method", "vinnas", "--stage", stage, "--steps", "1", "--warmup", "0", "--threads", "1",
                            "--num-train", "400", "--space", '{"in_channels": 1, "channels": 4, "layout": "RN", '
                            '"states": 1}', *profile])
        assert ratio > 0
    out = capsys.readouterr().out
    assert "registered KL_w + KL_alpha" in out and "ratio=" in out
    # the operator table, and a sample message per weight site in the guide and one in the model
    assert "aten::convolution_backward" in out and "all operators" in out
    sites = int(out.split("weight_sites=")[1].split()[0])
    counts = dict(kv.split() for kv in out.split("Pyro messages in one step of ours: ")[1].splitlines()[0].split(", "))
    assert int(counts["sample"]) >= 2 * sites and int(counts["layer"]) > 0


CHAIN = {"stem_channels": 8, "first_block_channels": 0, "widths": [16], "depths": [3], "strides": [2],
         "head_channels": 0, "ops": ["MBConv_1_3", "MBConv_3_3", "MBConv_3_5", "Identity"]}
"""A tiny chain with both decision groups: a transition (3 ops, no Identity), then two residual mixops (4 ops)."""


@pytest.fixture
def chain_method(config, data):
    torch.manual_seed(0)
    return get_method("vinnas")(replace(config, space_name="chain", space=CHAIN), data, torch.device("cpu"))


def test_on_the_chain_every_weight_and_every_decision_group_are_sites(chain_method):
    m = chain_method
    guide_trace, model_trace, convs, weights = _traces(m)
    assert len(convs) > 10 and len(weights) == len(convs) + 1 and "net.classifier.weight" in weights
    assert {g: tuple(model_trace.nodes[f"alpha.{g}"]["value"].shape) for g in m.space.groups()} == {
        "transition": (1, 3), "mixop": (2, 4)}
    assert all(isinstance(model_trace.nodes[f"alpha.{g}"]["fn"], LogUniform) for g in m.space.groups())
    # the method's chain default: BatchNorm without affine parameters or running statistics, as on cells
    bns = [mod for mod in m.model.net.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bns and all(not mod.affine and mod.running_mean is None for mod in bns)
    assert [n for n, _ in m.model.named_parameters()] == ["net.classifier.bias"]


def test_on_the_chain_every_op_runs_weighted_and_nothing_is_clipped(chain_method):
    m = chain_method
    groups = m.space.groups()
    assert m.model.zero_ops == {}  # the chain has no 'none' op
    torch.manual_seed(1)
    alpha = {g: 3 * torch.randn(s.shape) for g, s in groups.items()}
    z = m.model.op_weights(alpha)
    for g in groups:
        torch.testing.assert_close(z[g], alpha[g].exp() / alpha[g].exp().sum(-1, keepdim=True))
    # the dense super-network runs every candidate of every mixop once
    calls = []
    for block in m.model.net.blocks:
        for name, op in block.ops.items():
            op.register_forward_hook(lambda module, args, out, name=name: calls.append(name))
    with torch.no_grad():
        m.model.predict(_batch(m, 4)[0], m.guide.weight_means(), alpha)
    assert sorted(calls) == sorted(o for d in m.space.decisions() for o in d.options)
    # the entropy term sums over every decision of every group: with sigma ~ 0, E_q[z] = softmax(mu)
    with torch.no_grad():
        for g in groups:
            m.guide.mu_alpha[g].copy_(alpha[g])
            m.guide.log_var_alpha[g].fill_(-40.0)
        h = float(m.guide.op_entropy(4, m.model.clip))
    expected = sum(float(-(p * p.log()).sum()) for p in z.values())
    assert h == pytest.approx(expected, rel=1e-5) and expected > 0.5


def test_on_the_chain_selection_is_the_op_of_highest_snr_per_mixop(chain_method):
    m = chain_method
    groups = m.space.groups()
    torch.manual_seed(2)
    with torch.no_grad():
        for g, s in groups.items():
            m.guide.mu_alpha[g].copy_(torch.randn(s.shape))
            m.guide.log_var_alpha[g].copy_(2 * torch.randn(s.shape))
    expected = [""] * len(m.space.decisions())
    for g, s in groups.items():
        snr = m.guide.mu_alpha[g].detach() / m.guide.log_var_alpha[g].detach().exp()  # mu / sigma^2
        for p, k in zip(s.positions, snr.argmax(-1).tolist(), strict=True):
            expected[p] = s.options[k]
    by_mean = [s.options[k] for g, s in groups.items() for k in m.guide.mu_alpha[g].detach().argmax(-1).tolist()]
    assert sorted(by_mean) != sorted(expected)  # this draw tells the SNR from the mean apart
    genotype = m.derive()
    assert genotype.choices == {"ops": expected}
    m.space.validate(genotype)


def test_alone_selection_scores_each_op_alone_on_the_architecture_half(config, data):
    torch.manual_seed(0)
    m = get_method("vinnas")(replace(config, space_name="chain", space=CHAIN).merged(
        {"options": {"selection": "alone"}}), data, torch.device("cpu"))
    groups = m.space.groups()
    torch.manual_seed(3)
    with torch.no_grad():
        for g, s in groups.items():
            m.guide.mu_alpha[g].copy_(torch.randn(s.shape))
    m.model.eval()
    scores = m.alone_scores()
    # independently: the posterior-mean network through predict, the decision's alpha made one-hot by its size
    weights = m.guide.weight_means(m.options.prune_threshold)
    x, y = m.arch_half.x, m.arch_half.y
    for g, s in groups.items():
        for d in range(s.shape[0]):
            for k in range(s.shape[1]):
                alphas = {h: m.guide.mu_alpha[h].detach().clone() for h in groups}
                alphas[g][d] = torch.where(torch.arange(s.shape[1]) == k, 1e4, 0.0)
                with torch.no_grad():
                    expected = F.cross_entropy(m.model.predict(x, weights, alphas), y)
                assert float(scores[g][d, k]) == pytest.approx(-float(expected), rel=1e-4)
    # the selection takes the op of lowest loss per mixop, here not the SNR's everywhere
    best = [""] * len(m.space.decisions())
    for g, s in groups.items():
        for p, k in zip(s.positions, scores[g].argmax(-1).tolist(), strict=True):
            best[p] = s.options[k]
    assert m.derive().choices == {"ops": best}
    assert m.space.derive(m.guide.snr()).choices != {"ops": best}


def test_tiny_search_on_the_chain_writes_a_chain_genotype_and_the_posterior(config, tmp_path, capsys):
    run = tmp_path / "run"
    summary = run_search(replace(config, space_name="chain", space=CHAIN), run, progress=False)
    genotype = load_genotype(run / "genotype.json")  # validated against the chain
    space = get_space("chain", genotype.config)
    assert genotype.space == "chain" and summary["chain"] == genotype.choices
    assert summary["params"] == space.params(genotype) and summary["pruned_params"] <= summary["supernet_params"]
    assert summary["best_arch_epoch"] == 1
    # the selection: argmax SNR per decision of the best alpha (Algorithm 1), as checkpointed
    state = torch.load(run / "checkpoint.pt", weights_only=True)["modules"]["guide"]
    expected = [""] * len(space.decisions())
    for g, s in space.groups().items():
        snr = state[f"best_mu_alpha_{g}"] * torch.exp(-state[f"best_log_var_alpha_{g}"])
        for p, k in zip(s.positions, snr.argmax(-1).tolist(), strict=True):
            expected[p] = s.options[k]
    assert genotype.choices["ops"] == expected
    for name in ("snr_transition.png", "snr_mixop.png"):
        assert (run / name).exists(), name

    import arviz as az

    idata = az.from_netcdf(str(run / POSTERIOR_FILE))
    assert idata.posterior["alpha"].dims == ("chain", "draw", "decision", "op")
    assert list(idata.posterior.coords["decision"].values) == ["s0.l0", "s0.l1", "s0.l2"]
    assert list(idata.posterior.coords["op"].values) == CHAIN["ops"]
    assert np.isnan(idata.posterior["alpha"].sel(decision="s0.l0", op="Identity").values).all()  # not an option
    assert np.nansum(idata.posterior["op_weight"].values, -1) == pytest.approx(1.0, abs=1e-5)
    _branch_scale_table_agrees_with_itself_and_the_selection(run, genotype.choices["ops"], capsys)


def _branch_scale_table_agrees_with_itself_and_the_selection(run, ops, capsys):
    """``benchmarks/vinnas_branch_scale.py`` on a finished run: the branch at scale 0 is ``Identity`` alone and at
    scale 1 the op alone; the count of ``Identity`` picks is the selection's."""
    bench = _benchmark("vinnas_branch_scale")
    capsys.readouterr()
    assert bench.main([str(run), "--scales", "0,0.5,1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.startswith("mixop[")]
    assert len(rows) == 2 * len(CHAIN["ops"])  # two residual mixops, every op
    alone = {(r[0], r[1]): float(r[4]) for r in rows}
    for r in rows:
        if r[1] != "Identity":
            s0, _, s1 = map(float, r[5:8])
            assert s0 == pytest.approx(alone[(r[0], "Identity")], abs=1e-4)
            assert s1 == pytest.approx(alone[(r[0], r[1])], abs=1e-4)
    picked = int(lines[-1].split("/")[1])
    assert lines[-1].startswith("identity_but_op_better=") and picked == ops[1:].count("Identity")


def test_posterior_weight_draws_follow_the_guide_and_pruning(method):
    """``sample_weights`` (BMA's weight draws) are N(mu, sigma^2) per weight, with pruned weights at 0."""
    site = method.guide.weight_sites[0]
    mu, log_var = method.guide.weight_distribution(site).loc, method.guide.weight_distribution(site).log_var
    with torch.no_grad():
        log_var.copy_(torch.full_like(log_var, math.log(0.04)))  # sigma = 0.2
        mu.copy_(torch.linspace(-1, 1, mu.numel()).view_as(mu))  # |mu| small: log lambda = log(0.04 / mu^2) large
    torch.manual_seed(0)
    draws = torch.stack([method.guide.sample_weights()[site] for _ in range(200)])
    z = (draws - mu) / 0.2  # standard normal under q, pooled over the draws and the tensor's elements
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05
    torch.testing.assert_close(draws.mean(0), mu, atol=5 * 0.2 / 200 ** 0.5, rtol=0)  # 5 standard errors
    pruned = method.guide.sample_weights(prune_threshold=0.0)[site]  # log lambda >= 0 where |mu| <= 0.2
    assert torch.all(pruned[mu.abs() <= 0.19] == 0) and torch.all(pruned[mu.abs() > 0.21] != 0)
