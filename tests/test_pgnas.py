"""PGNAS model/guide and the shared search loop: sites, learning, determinism, resume, NaN guard."""

import json
import math

import pytest
import torch
from pyro import poutine

import bayesnas.distributions as bd
from bayesnas.config import preset
from bayesnas.data import load_dataset
from bayesnas.infer import SearchDivergedError, run_search
from bayesnas.io import read_jsonl
from bayesnas.methods import get_method
from bayesnas.reparam import LocalReparameterization
from bayesnas.search_folder import CheckpointError, SearchError
from bayesnas.spaces import BranchSpace, load_genotype
from bayesnas.spaces.profile import count_params
from bayesnas.training import accuracy

FIGURES = ("val_accuracy", "test_accuracy", "params", "baseline_test_accuracy", "baseline_params", "drop_rate")


@pytest.fixture
def method(tiny_config):
    data = load_dataset("digits", seed=0)
    return get_method("pgnas")(tiny_config, data, torch.device("cpu"))


def test_model_and_guide_sites(method):
    x, y = method.data.train.x[:16], method.data.train.y[:16]
    index = torch.arange(16)
    guide_trace = poutine.trace(method.guide).get_trace(x, y, index, method.num_train)
    model_trace = poutine.trace(poutine.replay(method.model, guide_trace)).get_trace(
        x, y, index, method.num_train)
    kernels = [n for n in guide_trace.stochastic_nodes]
    assert len(kernels) == 2 * 2 * 2  # blocks x (conv_a, conv_b) x kernel sizes
    for name in kernels:
        # global sites: sampled once, outside the data plate, with the kernel's shape
        assert model_trace.nodes[name]["value"].shape == model_trace.nodes[name]["fn"].event_shape
        assert model_trace.nodes[name]["cond_indep_stack"] == ()
    obs = model_trace.nodes["y"]
    assert obs["is_observed"] and obs["value"].shape == (16,)
    assert obs["cond_indep_stack"][0].name == "data"
    assert obs["cond_indep_stack"][0].full_size == method.num_train
    assert obs["scale"] == pytest.approx(method.num_train / 16)  # the plate scales by N / M


def test_training_loss_gradients_reach_every_group(method):
    x, y = method.data.train.x[:32], method.data.train.y[:32]
    torch.manual_seed(0)
    loss, correct = method.training_loss(x, y, torch.arange(32))
    assert loss.ndim == 0 and torch.isfinite(loss) and 0 <= correct <= 32
    loss.backward()
    groups = {g["name"]: g["params"] for g in method.param_groups()}
    assert set(groups) == {"kernels", "drop_rates", "network"}
    for name, params in groups.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name


def _closed_form_kl(guide, prior_precision, rescale):
    """Eq. 15 per kernel, summed: d^2 (1-p)/2 ||m||^2 - K H(p); with rescaling d^2 ||m||^2 / (2 (1-p))."""
    total = 0.0
    for site, m in guide.kernels().items():
        p = guide.drop_rate(site).item()
        l2 = float((m.detach().double() ** 2).sum())
        weight = 1 / (1 - p) if rescale else 1 - p
        entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
        total += prior_precision * weight / 2 * l2 - m.shape[1] * entropy
    return total


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("baseline", [False, True])
def test_training_loss_is_the_negative_elbo_per_example(tiny_config, rescale, baseline):
    """On a fixed draw: loss = mean NLL + (N / N_kl) KL / N, with the KL of Eq. 15 computed independently."""
    config = tiny_config.merged({"options": {"rescale": rescale}})
    method = get_method("pgnas")(config, load_dataset("digits", seed=0), torch.device("cpu"))
    model, guide = (method.baseline_model, method.baseline_guide) if baseline else (method.model, method.guide)
    loss_fn = method.baseline_loss if baseline else method.training_loss
    if not baseline:  # distinct drop rates per kernel, so that a mix-up of sites would show
        with torch.no_grad():
            for i, logit in enumerate(guide.drop_logits.values()):
                logit.fill_(math.log((0.1 + 0.05 * i) / (0.9 - 0.05 * i)))
    x, y, index = method.data.train.x[:24], method.data.train.y[:24], torch.arange(5, 29)
    n = method.num_train
    loss_fn(x, y, index)  # the first call also guesses the plate nesting (an extra draw)
    torch.manual_seed(11)
    loss, correct = loss_fn(x, y, index)
    # the same draw, replayed by hand: guide first, then the model replayed on it, per-example masks on activations
    torch.manual_seed(11)
    reparam = LocalReparameterization()
    guide_trace = poutine.trace(reparam(guide)).get_trace(x, y, index, n)
    logits = poutine.replay(reparam(model), guide_trace)(x, y, index, n)
    nll = torch.nn.functional.cross_entropy(logits, y).item()
    kl = _closed_form_kl(guide, config.options["prior_precision"], rescale)
    n_kl = config.options["kl_dataset_size"]
    assert method.kl_scale == pytest.approx(n / n_kl)
    expected = nll + (n / n_kl) * kl / n
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert correct == int((logits.argmax(-1) == y).sum())
    assert abs(kl / n_kl) > 1e-3 * abs(expected)  # the KL is not negligible in this check


def test_learned_drop_rates_are_the_ones_used(method, monkeypatch):
    """Each kernel's own learned p drives its relaxed masks in training and its Bernoulli masks in sampling."""
    sites = method.guide.site_names
    rates = {site: 0.1 + 0.8 * i / (len(sites) - 1) for i, site in enumerate(sites)}
    with torch.no_grad():
        for site, p in rates.items():
            method.guide.drop_logits[site.replace(".", "/")].fill_(math.log(p / (1 - p)))
    calls = []
    original = bd.relaxed_keep_mask

    def recording(drop_rate, temperature, shape):
        calls.append((round(drop_rate.item(), 5), tuple(shape)))
        return original(drop_rate, temperature, shape)

    monkeypatch.setattr(bd, "relaxed_keep_mask", recording)
    x, y = method.data.train.x[:16], method.data.train.y[:16]
    method.training_loss(x, y, torch.arange(16))
    calls.clear()
    method.training_loss(x, y, torch.arange(16))
    k = {site: method.guide.kernels()[site].shape[1] for site in sites}
    # per kernel: one draw for the site (K,) and one per example on its input channels (M, K)
    expected = sorted([(round(p, 5), (k[s],)) for s, p in rates.items()]
                      + [(round(p, 5), (16, k[s])) for s, p in rates.items()])
    assert sorted(calls) == expected
    torch.manual_seed(0)
    draws = [method.guide.sample_architecture() for _ in range(400)]
    for site, p in rates.items():
        kept = torch.stack([d[site] for d in draws]).float().mean().item()
        assert kept == pytest.approx(1 - p, abs=0.05), site
    # the baseline's rate is fixed at its option, and it is not a trained parameter
    base = method.baseline_guide
    assert all(not logit.requires_grad for logit in base.drop_logits.values())
    assert all(r == pytest.approx(0.3, abs=1e-6) for r in base.drop_rates().values())
    trained = {id(p) for g in method.baseline_param_groups() for p in g["params"]}
    assert not trained & {id(p) for p in base.drop_logits.values()}


def test_architecture_samples_and_genotype(method):
    torch.manual_seed(0)
    masks = method.guide.sample_architecture()
    assert all(m.dtype == torch.bool and m.ndim == 1 for m in masks.values())
    genotype = method.genotype(masks)
    assert set(genotype.choices) == {"s0.b0.a", "s0.b0.b", "s1.b0.a", "s1.b0.b"}
    for site, mask in masks.items():
        layer, branch = method._where(site)
        assert genotype.choices[layer][branch] == torch.nonzero(mask).flatten().tolist()


def _perturb_batchnorm(net, generator):
    """Non-trivial BatchNorm statistics and affine parameters, so that offsets of empty layers matter."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.randn(module.num_features, generator=generator))
                module.bias.copy_(torch.randn(module.num_features, generator=generator))


@pytest.mark.parametrize("rescale", [False, True])
def test_built_candidate_equals_the_masked_supernet(tiny_config, rescale):
    """The network built from a mask computes what the super-network computes at that mask (phi = kept kernel
    * z), with and without rescaling, including layers that keep no channel (their BatchNorm offsets stay)."""
    config = tiny_config.merged({"options": {"rescale": rescale, "init_drop_rate": 0.4}})
    method = get_method("pgnas")(config, load_dataset("digits", seed=0), torch.device("cpu"))
    _perturb_batchnorm(method.model.net, torch.Generator().manual_seed(5))
    torch.manual_seed(2)
    masks = method.guide.sample_architecture()
    sites = method.guide.site_names  # per block: k1 a, k1 b, k3 a, k3 b
    masks[sites[1]][:] = False  # s0.b0.b / k1 keeps nothing: the branch is bn_b's offset
    masks[sites[6]][:] = False  # s1.b0.a / k3 keeps nothing: bn_a's offset still flows through conv_b
    masks[sites[7]][:2] = True
    genotype = method.genotype(masks)
    assert genotype.choices["s0.b0.b"]["k1"] == [] and genotype.choices["s1.b0.a"]["k3"] == []
    built = method.space.build(genotype, inherit=method.supernet_state())
    x = method.data.val.x[:40]
    for train in (False, True):  # running statistics, then batch statistics
        built.train(train)
        method.model.train(train)
        reference = method.masked_supernet(masks)(x)
        torch.testing.assert_close(built(x), reference, atol=1e-5, rtol=1e-5)
    method.model.eval()
    reference = method.masked_supernet(masks)(x)
    # the check can fail: without the empty layers' offsets, or (rescaling) with the raw kernels m, it does
    pruned = method.space.build(genotype, inherit=method.supernet_state()).eval()
    del pruned.stages[0][0].branches["k1"], pruned.stages[1][0].branches["k3"]
    assert (pruned(x) - reference).abs().max() > 1e-2
    if rescale:
        raw = dict(method.supernet_state())
        raw.update({s.removeprefix("net."): m.detach() for s, m in method.guide.kernels().items()})
        assert (method.space.build(genotype, inherit=raw).eval()(x) - reference).abs().max() > 1e-2
    # and the masked super-network is the model at phi = kept kernel * z, not the plain super-network
    assert (method.model.net(x) - reference).abs().max() > 1e-2


def test_selection_scores_the_masked_supernet(method):
    """Each candidate's score (Algorithm 1, lines 7-16) is the validation accuracy of the super-network at its
    mask, and the selected network is the best candidate's."""
    _perturb_batchnorm(method.model.net, torch.Generator().manual_seed(1))
    method.model.eval()
    drawn = []
    draw = method.guide.sample_architecture

    def recording():
        drawn.append(draw())
        return drawn[-1]

    method.guide.sample_architecture = recording
    torch.manual_seed(4)
    genotype, net, result = method._sample(False, "candidates", progress=False)
    assert len(drawn) == len(result.scores) == method.options.num_candidates
    for masks, score in zip(drawn, result.scores, strict=True):
        assert score == pytest.approx(accuracy(method.model, method.data.val, predict=method.masked_supernet(masks)),
                                      abs=1.5 / len(method.data.val))
    best = max(range(len(drawn)), key=lambda i: (result.scores[i], -i))
    assert genotype == method.genotype(drawn[best])
    assert accuracy(net, method.data.test) == pytest.approx(
        accuracy(method.model, method.data.test, predict=method.masked_supernet(drawn[best])),
        abs=1.5 / len(method.data.test))


def test_search_learns_and_writes_a_complete_run_folder(tiny_config, tmp_path):
    summary = run_search(tiny_config.merged({"options": {"finetune_epochs": 1}}), tmp_path / "run",
                         progress=False)
    run = tmp_path / "run"
    for name in ("config.json", "checkpoint.pt", "metrics.jsonl", "genotype.json", "summary.json",
                 "posterior.nc", "training.png", "drop_rates.png", "architecture.png"):
        assert (run / name).exists(), name
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert rows[-1]["val_accuracy"] > 0.35  # chance is 0.1
    assert rows[-1]["val_accuracy"] > rows[0]["val_accuracy"]
    for row in rows:  # the loss's two terms, per training example, and flat columns only
        assert row["nll"] + row["kl"] == pytest.approx(row["loss"], rel=1e-5) and row["kl"] > 0
        assert not any(isinstance(v, dict) for v in row.values())
        assert any(k.startswith("drop_rate.") for k in row)
    assert summary["params"] <= summary["supernet_params"]
    for key in ("method", "dataset", "val_accuracy", "test_accuracy", "params", "supernet_params",
                "search_seconds", "genotype", "baseline_test_accuracy", "finetuned_test_accuracy",
                "baseline_finetuned_test_accuracy"):
        assert key in summary
    assert json.loads((run / "summary.json").read_text()) == summary
    # the fixed-rate baseline: its own super-network, trained in the same loop, checkpointed, its rate untouched
    assert all(r["baseline_loss"] is not None for r in rows) and rows[-1]["baseline_loss"] < rows[0]["baseline_loss"]
    assert rows[-1]["baseline_val_accuracy"] > rows[0]["baseline_val_accuracy"]
    saved = torch.load(run / "checkpoint.pt", weights_only=True)["modules"]
    fixed = torch.logit(torch.tensor(summary["baseline_drop_rate"]))
    assert all(torch.equal(v, fixed) for k, v in saved["baseline_guide"].items() if k.startswith("drop_logits"))
    learned = [v for k, v in saved["guide"].items() if k.startswith("drop_logits")]
    assert any(not torch.allclose(v, torch.logit(torch.tensor(0.1))) for v in learned)
    baseline = load_genotype(run / summary["baseline_genotype"])
    space = BranchSpace.from_dict(baseline.config)
    assert summary["baseline_params"] == count_params(space.build(baseline))
    assert 0.0 <= summary["baseline_test_accuracy"] <= 1.0


def test_baseline_can_be_switched_off(tiny_config, tmp_path):
    config = tiny_config.merged({"epochs": 1, "options": {"baseline": False}})
    method = get_method("pgnas")(config, load_dataset("digits", seed=0), torch.device("cpu"))
    assert set(method.modules()) == {"model", "guide"} and [p.name for p in method.phases()] == ["search"]
    summary = run_search(config, tmp_path / "run", progress=False)
    assert not any(key.startswith("baseline") for key in summary)
    assert not (tmp_path / "run/baseline_genotype.json").exists()


@pytest.mark.slow
def test_same_seed_same_search(tiny_config, tmp_path):
    config = tiny_config.merged({"epochs": 2})
    a = run_search(config, tmp_path / "a", progress=False)
    b = run_search(config, tmp_path / "b", progress=False)
    assert {k: a[k] for k in FIGURES} == {k: b[k] for k in FIGURES}
    assert (tmp_path / "a/genotype.json").read_text() == (tmp_path / "b/genotype.json").read_text()


@pytest.mark.slow
def test_interrupted_search_resumes_to_the_same_result(tiny_config, tmp_path):
    full = run_search(tiny_config, tmp_path / "full", progress=False)

    def kill(event):
        if event.epoch == 1 and event.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(tiny_config, tmp_path / "cut", progress=False, on_step=kill)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "cut/metrics.jsonl")] == [0]
    assert not (tmp_path / "cut/summary.json").exists()
    resumed = run_search(tiny_config, tmp_path / "cut", progress=False, resume=True)
    assert {k: resumed[k] for k in FIGURES} == {k: full[k] for k in FIGURES}
    losses = [r["loss"] for r in read_jsonl(tmp_path / "cut/metrics.jsonl")]
    assert losses == [r["loss"] for r in read_jsonl(tmp_path / "full/metrics.jsonl")]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path, monkeypatch):
    method_cls = get_method("pgnas")
    original = method_cls.training_loss
    run = tmp_path / "run"

    def poisoned(self, x, y, index):
        loss, correct = original(self, x, y, index)
        if (run / "checkpoint.pt").exists():
            return loss * float("nan"), correct
        return loss, correct

    monkeypatch.setattr(method_cls, "training_loss", poisoned)
    with pytest.raises(SearchDivergedError, match=r"nan at epoch 1, step 0.*epoch 0\) is kept") as info:
        run_search(tiny_config, run, progress=False)
    assert "\n" not in str(info.value)
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in saved["modules"]["guide"].values())
    assert not (run / "summary.json").exists()


def test_existing_run_is_not_overwritten(tiny_config, tmp_path):
    config = tiny_config.merged({"epochs": 1})
    run_search(config, tmp_path / "run", progress=False)
    before = (tmp_path / "run/summary.json").read_bytes()
    with pytest.raises(SearchError, match="already holds a search run"):
        run_search(config, tmp_path / "run", progress=False)
    assert (tmp_path / "run/summary.json").read_bytes() == before


def test_corrupted_and_mismatched_checkpoints(tiny_config, tmp_path):
    config = tiny_config.merged({"epochs": 1})
    run_search(config, tmp_path / "run", progress=False)
    checkpoint = tmp_path / "run/checkpoint.pt"
    good = checkpoint.read_bytes()
    with pytest.raises(CheckpointError, match="different configuration.*epochs"):
        run_search(config.merged({"epochs": 2}), tmp_path / "run", progress=False, resume=True)
    checkpoint.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="corrupted or unreadable"):
        run_search(config, tmp_path / "run", progress=False, resume=True)


def test_unknown_method_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'darts'"):
        run_search(preset("pgnas-digits").merged({"method": "darts"}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_search_on_cuda_gives_the_cpu_figures(tiny_config, tmp_path):
    """The same seed on CUDA and on the CPU: the epoch's logged loss within a few per cent (other kernels, other
    rounding), and both selections' figures in range; the run records the CUDA device."""
    runs = {device: run_search(tiny_config.merged({"epochs": 1}), tmp_path / device, device=device, progress=False)
            for device in ("cpu", "cuda")}
    assert runs["cuda"]["device"].startswith("cuda") and runs["cpu"]["device"] == "cpu"
    losses = {device: read_jsonl(tmp_path / device / "metrics.jsonl")[0]["loss"] for device in runs}
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=0.05)
    assert all(0 <= r["test_accuracy"] <= 1 for r in runs.values())
