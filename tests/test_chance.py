"""Random search evaluated exactly on a population (bayesnas.experiments.chance), the noise of a ground truth
(bayesnas.experiments.noise) and compute counted in example-passes (bayesnas.compute)."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from bayesnas.compute import SpaceNetwork, count_passes, population_trainings
from bayesnas.config import SearchConfig
from bayesnas.experiments.chance import RandomSearchChance, random_search_chance
from bayesnas.experiments.noise import variance_components
from bayesnas.experiments.population import Population, percentile_of, population_spec
from bayesnas.infer import run_search
from bayesnas.io import write_jsonl

CHAIN = {"stem_channels": 8, "stem_stride": 1, "first_block_channels": 0, "widths": [8, 16], "depths": [2, 2],
         "strides": [1, 2], "head_channels": 0, "ops": ["MBConv_1_3", "MBConv_3_3", "Identity"],
         "transition_op": "MBConv_1_3"}


def brute_force(val, score, prob, n):
    """Expected score of the best-by-validation of n independent draws, by enumerating every n-tuple of runs
    (the first of equal validation accuracies kept, as random search's argmax does)."""
    total = 0.0
    for draw in itertools.product(range(len(val)), repeat=n):
        p = math.prod(prob[i] for i in draw)
        best = max(draw, key=lambda i: val[i])  # max keeps the first of equals
        total += p * score[best]
    return total


def test_closed_form_equals_enumeration_with_ties():
    val = [0.5, 0.7, 0.7, 0.9, 0.6]
    score = [10.0, 30.0, 60.0, 90.0, 20.0]
    prob = [0.3, 0.2, 0.1, 0.15, 0.25]
    chance = RandomSearchChance(val, score, prob)
    for n in (1, 2, 3, 4):
        assert chance.expected(n) == pytest.approx(brute_force(val, score, prob, n))
        assert chance.weights(n).sum() == pytest.approx(1)
    assert chance.expected(1) == pytest.approx(np.dot(prob, score))
    assert chance.at(2.25) == pytest.approx(0.75 * chance.expected(2) + 0.25 * chance.expected(3))
    assert chance.at(0.3) == chance.expected(1)  # fewer than one candidate is one
    # P(random's pick below 60) at n = 2, by enumeration (ties at 60 count half)
    below = sum(math.prod(prob[i] for i in d) * ((score[max(d, key=lambda i: val[i])] < 60)
                                                  + 0.5 * (score[max(d, key=lambda i: val[i])] == 60))
                for d in itertools.product(range(5), repeat=2))
    assert chance.chance_below(60, 2) == pytest.approx(below)
    with pytest.raises(ValueError, match="n >= 1"):
        chance.weights(0)


def test_population_curve_scores_each_run_by_the_other_seeds(tmp_path):
    """Three members (one with a twin, so drawn twice as often) with two seeds each: every run's probability and
    score as the module states, and the curve equal to the enumeration over runs."""
    members = [["MBConv_1_3", "MBConv_1_3", "MBConv_1_3"], ["MBConv_3_3", "Identity", "MBConv_1_3"],
               ["MBConv_3_3", "MBConv_3_3", "MBConv_1_3"]]
    twin = ["Identity", "MBConv_3_3", "MBConv_1_3"]  # builds members[1]'s network
    accs = {0: [(0.80, 0.70), (0.82, 0.74)], 1: [(0.90, 0.80), (0.70, 0.84)], 2: [(0.85, 0.90), (0.86, 0.86)]}
    rows = [(members[m], s, v, t) for m in accs for s, (v, t) in enumerate(accs[m])] + [(twin, 0, 0.90, 0.80)]
    spec = population_spec("chain", "digits", {"space": CHAIN, "options": {"retrain_epochs": 1}})
    (tmp_path / "population.json").write_text(json.dumps(spec.to_dict()))
    write_jsonl(tmp_path / "population.jsonl", [
        {"key": json.dumps({"ops": ops}), "choices": {"ops": ops}, "params": 1, "flops": 1, "seed": s,
         "val_accuracy": v, "test_accuracy": t, "seconds": 1.0} for ops, s, v, t in rows])
    pop = Population(tmp_path)
    assert len(pop.genotypes()) == 3 and pop.collapsed == 1
    chance = random_search_chance(pop)
    means = [np.mean([t for _, t in accs[m]]) for m in accs]
    expected_prob = [1 / 8, 1 / 8, 2 / 8, 2 / 8, 1 / 8, 1 / 8]  # 4 genotypes, member 1 is two of them
    expected_score = [percentile_of(means, accs[m][1 - s][1]) for m in accs for s in range(2)]
    assert chance.prob.tolist() == pytest.approx(expected_prob)
    assert chance.score.tolist() == pytest.approx(expected_score)
    val = [v for m in accs for v, _ in accs[m]]
    for n in (1, 2, 3):
        assert chance.expected(n) == pytest.approx(brute_force(val, expected_score, expected_prob, n))


def test_pooled_noise_recovers_known_variances():
    rng = np.random.default_rng(1)
    between, within = 0.006, 0.005
    true = 0.85 + between * rng.standard_normal(3000)
    seeds = rng.integers(2, 5, size=3000)  # unequal seeds per member
    groups = [t + within * rng.standard_normal(k) for t, k in zip(true, seeds, strict=True)]
    report = variance_components(groups)
    assert report.within_sd == pytest.approx(within, rel=0.03)
    assert report.between_sd == pytest.approx(between, rel=0.05)
    # the mean of per-member sample sds reads low (E[s] < sigma), which the pooled estimator does not
    assert np.mean([np.std(g, ddof=1) for g in groups]) < 0.95 * within
    # reliability of a k-seed mean: its squared correlation with the truth (Spearman-Brown)
    k = 2
    means = true + within / math.sqrt(k) * rng.standard_normal(3000)
    assert report.reliability(k) == pytest.approx(np.corrcoef(true, means)[0, 1] ** 2, abs=0.03)
    from scipy import stats

    assert report.max_kendall(k) == pytest.approx(stats.kendalltau(true, means).statistic, abs=0.03)
    assert report.max_spearman(k) == pytest.approx(stats.spearmanr(true, means).statistic, abs=0.03)
    assert variance_components([[0.5], [0.6]]).within_sd is None  # nobody trained twice: no noise estimate


def test_passes_are_counted_per_network_by_gradient_mode():
    class Net(SpaceNetwork):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.inner(x)

    net, x = Net(), torch.randn(5, 3)
    with count_passes() as count:
        net(x).sum().backward()
        with torch.no_grad():
            net(x[:2])
            with count.pause():
                net(x)
        torch.nn.Linear(3, 2)(x)  # not a network of a space
    assert count.as_dict() == {"train_passes": 5, "eval_passes": 2}
    net(x)  # outside the block: not counted
    assert count.train == 5
    assert population_trainings(600, 300, 2, 100) == pytest.approx((600 + 300 / 3) / 200)


def test_random_search_compute_is_its_candidates_trainings(tmp_path):
    """Random search with 2 candidates of 1 epoch over the training split: 2 trainings' worth of training passes
    (each candidate sees every image once), and its evaluations (validation each epoch, test at the end) counted
    apart."""
    config = SearchConfig(method="random", dataset="digits", epochs=1, batch_size=64, data_fraction=0.25,
                          space_name="chain", space={**CHAIN}, options={"num_samples": 2, "retrain_epochs": 0})
    summary = run_search(config, tmp_path / "run", device="cpu", progress=False)
    from bayesnas.data import load_dataset

    train = len(load_dataset("digits", fraction=0.25).train)
    assert summary["search_train_passes"] == 2 * train and summary["select_train_passes"] == 0
    data = load_dataset("digits", fraction=0.25)
    # each candidate evaluated once on validation (the epoch's choice of the best); the test accuracy at the end
    assert summary["search_eval_passes"] == 2 * len(data.val)
    assert summary["select_eval_passes"] >= len(data.test)

