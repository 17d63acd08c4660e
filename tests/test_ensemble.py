"""Architecture ensembles: the choice of members, their training and resumption, and the scores (bootstrap
intervals, temperature scaling, corruptions, out-of-distribution AUROC) checked against independent computations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sklearn.metrics import roc_auc_score

import bayesnas
from bayesnas import calibration, ensembles, shift
from bayesnas.cli import EXIT_ERROR, main
from bayesnas.data import load_dataset
from bayesnas.infer import config_data, load_trained
from bayesnas.io import flat_figures
from bayesnas.spaces import get_space
from bayesnas.spaces.genotype import genotype_key
from bayesnas.training import TrainRecipe, retrain

CHAIN = {"stem_channels": 8, "stem_stride": 1, "first_block_channels": 0, "widths": [8, 16], "depths": [2, 2],
         "strides": [1, 2], "head_channels": 0, "ops": ["MBConv_1_3", "MBConv_3_3", "Identity"],
         "transition_op": "MBConv_1_3"}
GDAS = {"method": "gdas", "epochs": 2, "space_name": "chain", "space": CHAIN, "data_fraction": 0.3, "seed": 0,
        "options": {"warmup_epochs": 0, "retrain_epochs": 1}, "device": "cpu", "progress": False}
FAST = {"members": 2, "epochs": 1, "resamples": 50, "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def gdas_run(tmp_path_factory: pytest.TempPathFactory) -> bayesnas.Run:
    torch.set_num_threads(1)
    return bayesnas.search(**GDAS, out=tmp_path_factory.mktemp("runs") / "gdas")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_an_ensemble_of_copies_of_one_network_scores_as_that_network(digits) -> None:
    space = get_space("chain", {**CHAIN, "in_channels": 1, "num_classes": 10, "image_size": 8})
    genotype = space.random_genotype(torch.Generator().manual_seed(1))
    net, _, test_accuracy = retrain(space, genotype, digits.train, digits.val, digits.test, TrainRecipe(epochs=2),
                                    progress=False)
    assert test_accuracy > 0.5
    net.eval()
    settings = ensembles.EnsembleSettings(resamples=50)
    scores = ensembles.score_predictors({"copies": [net, net, net], "alone": [net]}, digits, "fp32", settings,
                                       digits.val.x[:50])["predictors"]
    copies, alone = scores["copies"], scores["alone"]
    assert copies["disagreement"] == 0.0
    del copies["disagreement"], alone["disagreement"]
    flat_copies, flat_alone = flat_figures(copies), flat_figures(alone)
    assert set(flat_copies) == set(flat_alone) and len(flat_copies) > 150  # test, tempered, shift, OOD, ...
    for key, value in flat_alone.items():
        assert flat_copies[key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), key


def test_bootstrap_intervals_are_the_percentiles_of_the_scores_of_the_resamples() -> None:
    generator = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(300, 5, generator=generator) * 2, 1)
    y = torch.randint(5, (300,), generator=generator)
    result = calibration.bootstrap_scores(probs, y, resamples=40, seed=7)
    index = torch.randint(300, (40, 300), generator=torch.Generator().manual_seed(7))
    by_hand = [calibration.scores(probs[i], y[i]) for i in index]
    for name, score in result.items():
        values = torch.tensor([s[name] for s in by_hand], dtype=torch.float64)
        expected = torch.quantile(values, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        assert score["interval_95"] == pytest.approx(expected, abs=1e-9), name
        assert score["value"] == pytest.approx(calibration.scores(probs, y)[name])


def test_temperature_scaling_lowers_the_nll_of_an_over_confident_set_and_keeps_accuracy() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1000, 10, generator=generator)
    y = torch.distributions.Categorical(logits=logits).sample()  # calibrated at T = 1 ...
    confident = torch.softmax(logits * 4, 1)  # ... so these are over-confident by a factor 4
    temperature = calibration.fit_temperature(confident, y)
    tempered = calibration.temper(confident, temperature)
    assert 3.0 < temperature < 5.5
    assert calibration.nll(tempered, y) < calibration.nll(confident, y) - 0.5
    assert torch.equal(tempered.argmax(1), confident.argmax(1))
    grid = torch.linspace(0.5, 8, 151)  # the fitted T is the best of a fine grid, up to the grid's spacing
    best = min(grid.tolist(), key=lambda t: calibration.nll(calibration.temper(confident, t), y))
    assert temperature == pytest.approx(best, abs=0.06)


@pytest.mark.parametrize("corruption", shift.CORRUPTIONS)
def test_each_corruption_is_deterministic_for_a_seed_and_changes_the_images(digits, corruption: str) -> None:
    clean = digits.test
    for severity in shift.SEVERITIES:
        once = shift.corrupted(digits, corruption, severity, seed=4)
        assert torch.equal(once.x, shift.corrupted(digits, corruption, severity, seed=4).x)
        assert torch.equal(once.y, clean.y) and once.x.shape == clean.x.shape
        assert (once.x - clean.x).abs().mean() > 0.01, severity
        unit = digits.pixels.to_unit(once.x)
        assert float(unit.min()) >= -1e-5 and float(unit.max()) <= 1 + 1e-5
    if corruption in ("gaussian_noise", "rotation"):  # the random ones follow the seed
        assert not torch.equal(shift.corrupted(digits, corruption, 3, seed=4).x,
                               shift.corrupted(digits, corruption, 3, seed=5).x)
    gaps = [float((shift.corrupted(digits, corruption, s, seed=4).x - clean.x).abs().mean()) for s in (1, 5)]
    assert gaps[1] > gaps[0]  # severity 5 moves the images further than severity 1


def test_auroc_equals_scikit_learns() -> None:
    generator = torch.Generator().manual_seed(2)
    negatives = torch.randint(0, 6, (50,), generator=generator).double()  # ties included
    positives = torch.randint(2, 9, (40,), generator=generator).double()
    expected = roc_auc_score([0] * 50 + [1] * 40, torch.cat([negatives, positives]).numpy())
    assert shift.auroc(negatives, positives) == pytest.approx(expected)


def test_forward_selection_adds_the_member_that_lowers_the_nll_most() -> None:
    y = torch.tensor([0, 1, 2, 0])
    probs = torch.tensor([
        [[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.4, 0.4, 0.2], [0.6, 0.2, 0.2]],  # good but unsure on example 2
        [[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.1, 0.1, 0.8], [0.5, 0.25, 0.25]],  # complements 0
        [[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.45, 0.45, 0.1], [0.7, 0.2, 0.1]],  # 0's twin, a little sharper
    ], dtype=torch.float64)
    nll = [calibration.nll(p, y) for p in probs]
    order, trace = ensembles.forward_selection(probs, y, 2)
    assert order[0] == min(range(3), key=nll.__getitem__) and trace[0] == pytest.approx(min(nll))
    pairs = {j: calibration.nll((probs[order[0]] + probs[j]) / 2, y) for j in range(3) if j != order[0]}
    assert order[1] == min(pairs, key=pairs.get) and trace[1] == pytest.approx(min(pairs.values()))


def test_greedy_starts_with_the_draw_of_the_best_validation_nll(gdas_run) -> None:
    data = config_data(gdas_run.config, torch.device("cpu"))
    method = load_trained(gdas_run.config, gdas_run.path, data, torch.device("cpu"))
    settings = ensembles.EnsembleSettings(members=2, strategy="greedy", candidates=12)
    torch.manual_seed(0)
    chosen, info = ensembles.choose_architectures(method, settings, ensembles._inherited_score(method, data.val),
                                                 data.val.y)
    torch.manual_seed(0)
    drawn = {genotype_key(g): g for g in (method.draw_genotype() for _ in range(12))}
    nll = {}
    for key, genotype in drawn.items():  # each draw's validation NLL with inherited weights, computed here
        network = method.inherited_network(genotype)
        with torch.no_grad():
            nll[key] = float(torch.nn.functional.cross_entropy(network(data.val.x), data.val.y))
    assert info["distinct"] == len(drawn) >= 2
    assert genotype_key(chosen[0]) == min(nll, key=nll.get)
    assert info["val_nll"][0] == pytest.approx(min(nll.values()), rel=1e-5)
    assert len({genotype_key(g) for g in chosen}) == 2


def test_top_takes_the_most_frequent_draws(gdas_run) -> None:
    data = config_data(gdas_run.config, torch.device("cpu"))
    method = load_trained(gdas_run.config, gdas_run.path, data, torch.device("cpu"))
    torch.manual_seed(1)
    chosen, info = ensembles.choose_architectures(method, ensembles.EnsembleSettings(members=2, strategy="top",
                                                                                    candidates=40))
    torch.manual_seed(1)
    counts: dict[str, int] = {}
    for _ in range(40):
        key = genotype_key(method.draw_genotype())
        counts[key] = counts.get(key, 0) + 1
    top = sorted(counts.values(), reverse=True)[:2]
    assert [counts[genotype_key(g)] for g in chosen] == top
    assert info["frequency"] == [c / 40 for c in top]


def test_a_killed_ensemble_resumes_to_the_same_figures(gdas_run, tmp_path: Path, monkeypatch, capsys) -> None:
    whole = bayesnas.ensemble(gdas_run, out=tmp_path / "whole", **FAST)
    assert [m["name"] for m in whole["members"]] == ["posterior-0", "posterior-1", "deep-0", "deep-1"]
    assert len({json.dumps(a) for a in whole["architectures"]}) == 2
    assert whole["members"][2]["genotype"]["choices"] == gdas_run.genotype.choices
    real = ensembles.retrain
    trained = []

    def dies_on_the_third(*args, **kwargs):
        if len(trained) == 2:
            raise KeyboardInterrupt
        trained.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(ensembles, "retrain", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        bayesnas.ensemble(gdas_run, out=tmp_path / "killed", **FAST)
    monkeypatch.setattr(ensembles, "retrain", real)
    assert sorted(p.name for p in (tmp_path / "killed" / "members").glob("*.pt")) == ["posterior-0.pt",
                                                                                         "posterior-1.pt"]
    code = main(["ensemble", str(gdas_run.path), "--members", "2", "--epochs", "1", "--resamples", "50",
                 "--device", "cpu", "--no-progress", "--out", str(tmp_path / "killed")])
    assert code == 0 and "| posterior |" in capsys.readouterr().out
    resumed = json.loads((tmp_path / "killed" / "ensemble.json").read_text())
    assert resumed["predictors"] == json.loads(json.dumps(whole["predictors"]))
    assert resumed["posterior_nll_minus_deep"] == json.loads(json.dumps(whole["posterior_nll_minus_deep"]))
    for name in ("ensemble.md", "shift.png", "reliability.png"):
        assert (tmp_path / "killed" / name).stat().st_size > 0


def test_random_search_is_refused_before_anything_is_written(tmp_path: Path, capsys) -> None:
    run = bayesnas.search(method="random", epochs=1, space_name="chain", space=CHAIN, data_fraction=0.2,
                          options={"num_samples": 2, "retrain_epochs": 0}, device="cpu", progress=False,
                          out=tmp_path / "random")
    code = main(["ensemble", str(run.path), "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR and "no posterior over architectures" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_two_torchrun_ranks_share_the_members_and_reach_the_figures_of_one_process(gdas_run, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.two_ranks import free_port

    alone = bayesnas.ensemble(gdas_run, out=tmp_path / "alone", **FAST)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), "-m", "bayesnas", "ensemble", str(gdas_run.path), "--members", "2", "--epochs", "1",
               "--resamples", "50", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "ranks")]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| posterior |") == 2  # rank 0 alone prints the two tables
    shared = json.loads((tmp_path / "ranks" / "ensemble.json").read_text())
    assert shared["predictors"] == json.loads(json.dumps(alone["predictors"]))
    assert {m["rank"] for m in shared["members"]} == {0, 1}  # each rank trained members
    assert not (tmp_path / "ranks" / "members" / ".claims").exists()
