"""Model averaging over a run's posterior, calibration scores, stored log-likelihoods, PSIS-LOO and az.compare."""

from __future__ import annotations

import json
import math
from pathlib import Path

import arviz as az
import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

import bayesnas
from bayesnas import calibration, predictive
from bayesnas.cli import EXIT_ERROR, main
from bayesnas.diagnostics import DiagnosticsError, compare_runs
from bayesnas.search_folder import SELECTED_WEIGHTS

SPLIT = {"data_fraction": 0.3, "seed": 0, "device": "cpu", "progress": False}
GDAS = {"method": "gdas", "epochs": 3, "space": {"channels": 4, "layout": "NR", "states": 2},
        "options": {"warmup_epochs": 0, "retrain_epochs": 1, "posterior_draws": 30}}
PGNAS = {"method": "pgnas", "epochs": 2, "space": {"stem_channels": 8, "widths": [8, 16], "depths": [1, 1]},
         "options": {"num_candidates": 3, "posterior_draws": 20, "baseline": False}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bayesnas.Run]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    return {name: bayesnas.search(**settings, **SPLIT, out=root / name)
            for name, settings in (("gdas", GDAS), ("pgnas", PGNAS))}


def test_calibration_scores_of_a_hand_made_prediction_set() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0])
    # confidences 0.9, 0.6, 0.7, 0.55 with 15 bins of width 1/15: bins 13, 8, 10, 8
    # bin 8: confidences 0.6 (wrong) and 0.55 (wrong): acc 0, conf 0.575; bin 10: 0.7 right; bin 13: 0.9 right
    expected_ece = 2 / 4 * abs(0 - 0.575) + 1 / 4 * abs(1 - 0.7) + 1 / 4 * abs(1 - 0.9)
    assert calibration.ece(probs, y) == pytest.approx(expected_ece)
    assert calibration.nll(probs, y) == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.7)
                                                        + math.log(0.45)) / 4)
    brier = ((0.1 ** 2 * 2) + (0.6 ** 2 * 2) + (0.3 ** 2 * 2) + (0.55 ** 2 * 2)) / 4
    assert calibration.brier(probs, y) == pytest.approx(brier)
    table = calibration.reliability(probs, y)
    assert table.counts[8] == 2 and sum(table.counts) == 4 and math.isnan(table.accuracy[0])
    assert calibration.scores(probs, y)["accuracy"] == 0.5


def test_paired_nll_difference_and_its_interval() -> None:
    a = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    b = torch.tensor([[0.6, 0.4], [0.4, 0.6], [0.5, 0.5]])
    y = torch.tensor([0, 1, 0])
    difference = calibration.nll_difference(a, b, y, resamples=4000)
    per_example = [math.log(0.6) - math.log(0.9), math.log(0.6) - math.log(0.8), 0.0]
    assert difference["mean"] == pytest.approx(sum(per_example) / 3)
    low, high = difference["interval_95"]
    assert min(per_example) <= low < difference["mean"] < high <= max(per_example)


def test_averaging_identical_draws_equals_one_draw(runs) -> None:
    method = runs["gdas"].trained()
    with torch.no_grad():  # a posterior concentrated on one architecture: every draw is the same network
        for logits in method.guide.logits.values():
            logits.copy_(torch.where(torch.arange(logits.shape[-1]) == 1, 50.0, -50.0).expand_as(logits))
    draws = predictive.draw_probabilities(method, method.data.val, 4)
    one = predictive.probabilities(method.posterior_network(), method.data.val)
    torch.testing.assert_close(draws.mean(0), one)
    result = predictive.predict_method(method, method.data.val, 4, {"single": method.posterior_network()})
    single = dict(result["single"])
    difference = single.pop("bma_nll_minus_this")
    assert result["bma"] == pytest.approx(single)
    assert difference["mean"] == pytest.approx(0.0, abs=1e-12)
    assert difference["interval_95"] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert [r["samples"] for r in result["curve"]] == [1, 2, 4]


def test_gdas_draws_follow_softmax_of_the_logits(runs) -> None:
    method = runs["gdas"].trained()
    torch.manual_seed(1)
    probs = method.guide.probabilities()
    group = next(iter(probs))
    counts = sum(method.draw_architecture()[group][0] for _ in range(600))
    expected = probs[group][0] * 600
    assert float(counts.sum()) == 600
    assert stats.chisquare(counts.numpy(), expected.detach().numpy()).pvalue > 1e-3


def test_stored_log_likelihood_gives_loo_and_waic(runs) -> None:
    run = runs["gdas"]
    idata = run.posterior()
    method = run.trained()
    ll = idata.log_likelihood["y"].values  # (chain, draw, val_example)
    assert ll.shape == (1, 30, len(method.data.val)) and np.all(ll <= 0)
    np.testing.assert_array_equal(idata.observed_data["y"].values, method.data.val.y.numpy())
    predicted = idata.posterior_predictive["y"].values
    assert predicted.shape == ll.shape and predicted.min() >= 0 and predicted.max() < 10
    flat = ll.reshape(-1, ll.shape[-1])
    # WAIC by hand: lppd - sum of the pointwise variances of the log-likelihood (Vehtari et al. 2017, Eq. 11-12;
    # ArviZ takes the variance over draws with divisor S, the paper's V_s with S - 1)
    lppd = logsumexp(flat, axis=0) - math.log(len(flat))
    waic = lppd - flat.var(axis=0, ddof=0)
    assert az.waic(idata).elpd_waic == pytest.approx(waic.sum(), rel=1e-9)
    # PSIS-LOO by hand from the smoothed importance ratios 1 / p(y_n | draw) (Eq. 10)
    log_weights, _ = az.psislw(-flat.T)  # (example, draw), normalised over the draws
    loo_i = logsumexp(log_weights + flat.T, axis=1)
    assert az.loo(idata).elpd_loo == pytest.approx(loo_i.sum(), rel=1e-9)


def test_a_repeated_export_replaces_the_predictive_groups(runs, tmp_path: Path) -> None:
    (tmp_path / "posterior.nc").write_bytes((runs["gdas"].path / "posterior.nc").read_bytes())
    assert predictive.add_predictive_groups(runs["gdas"].trained(), tmp_path, draws=5)
    idata = az.from_netcdf(str(tmp_path / "posterior.nc"))
    assert idata.log_likelihood["y"].shape[:2] == (1, 5) and idata.posterior_predictive["y"].shape[:2] == (1, 5)
    assert idata.posterior.sizes["draw"] == runs["gdas"].posterior().posterior.sizes["draw"]  # left as it was


def test_the_exported_log_likelihood_scores_a_bounded_evenly_spaced_part_of_validation(runs, tmp_path: Path,
                                                                                       monkeypatch) -> None:
    (tmp_path / "posterior.nc").write_bytes((runs["gdas"].path / "posterior.nc").read_bytes())
    method = runs["gdas"].trained()
    monkeypatch.setattr(predictive, "PREDICTIVE_EXAMPLES", 7)
    assert predictive.add_predictive_groups(method, tmp_path, draws=2)
    idata = az.from_netcdf(str(tmp_path / "posterior.nc"))
    n = len(method.data.val)
    index = idata.log_likelihood["val_example"].values
    assert idata.log_likelihood["y"].shape == (1, 2, 7) and index[0] == 0 and index[-1] == n - 1
    np.testing.assert_array_equal(index, np.round(np.linspace(0, n - 1, 7)).astype(int))
    np.testing.assert_array_equal(idata.observed_data["y"].values, method.data.val.y.numpy()[index])


def test_predict_reports_bma_inherited_and_retrained(runs, tmp_path: Path) -> None:
    run = runs["gdas"]
    assert (run.path / SELECTED_WEIGHTS).exists()  # the run retrained its pick
    out = tmp_path / "predict"
    assert main(["predict", str(run.path), "--samples", "3", "--out", str(out), "--device", "cpu"]) == 0
    result = json.loads((out / "predict_test.json").read_text())
    assert {"bma", "inherited", "retrained"} <= set(result) and [r["samples"] for r in result["curve"]] == [1, 2, 3]
    # the retrained network read back from selected.pt scores what the search reported
    assert result["retrained"]["accuracy"] == pytest.approx(run.summary["test_accuracy"])
    assert result["curve"][-1]["nll"] == pytest.approx(result["bma"]["nll"])
    assert (out / "reliability_test.png").stat().st_size > 0 and (out / "samples_test.png").exists()
    again = bayesnas.predict(run, samples=3, out=tmp_path / "again", device="cpu")
    assert again["bma"] == pytest.approx(result["bma"])  # seeded draws
    assert main(["predict", str(run.path), "--samples", "0", "--out", str(out)]) == EXIT_ERROR


def test_compare_runs_of_different_methods_on_one_split(runs, tmp_path: Path) -> None:
    paths = [runs["gdas"].path, runs["pgnas"].path]
    table, labels = compare_runs(paths)
    assert set(labels.values()) == {str(p) for p in paths} and list(table["rank"]) == [0, 1]
    assert table["elpd_loo"].iloc[0] >= table["elpd_loo"].iloc[1]
    assert main(["diagnose", "--compare", *map(str, paths), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare.csv").exists() and (tmp_path / "cmp" / "compare.png").exists()
    with pytest.raises(DiagnosticsError, match="more than once"):
        compare_runs([paths[0], paths[0]])


def test_compare_refuses_runs_on_different_splits(runs, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for name in ("posterior.nc", "config.json"):
        (other / name).write_bytes((runs["pgnas"].path / name).read_bytes())
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "data_seed": 5}))
    with pytest.raises(DiagnosticsError, match="different data splits"):
        compare_runs([runs["gdas"].path, other])


def test_random_search_has_no_posterior_to_average() -> None:
    from bayesnas.config import preset
    from bayesnas.data import load_dataset
    from bayesnas.methods import get_method

    data = load_dataset("digits", fraction=0.3)
    method = get_method("random")(preset("random-digits").merged({"space": {"channels": 4}}), data,
                                  torch.device("cpu"))
    with pytest.raises(predictive.NoPosteriorError, match="no posterior over networks"):
        predictive.draw_probabilities(method, data.val, 2)
    assert predictive.add_predictive_groups(method, Path("/nonexistent")) is False  # nothing read or written
