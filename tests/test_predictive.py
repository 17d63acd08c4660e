"""Model averaging over a run's posterior, calibration scores, the stored log-likelihoods of the posterior's draws
and the held-out comparison of runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import arviz as az
import numpy as np
import pytest
import torch
from scipy import stats

import bayesnas
from bayesnas import calibration, predictive
from bayesnas.cli import EXIT_ERROR, main
from bayesnas.diagnostics import DiagnosticsError, compare_heldout, compare_runs, stacking_weights
from bayesnas.search_folder import SELECTED_WEIGHTS
from bayesnas.spaces.decisions import on_batch_statistics

SPLIT = {"data_fraction": 0.3, "seed": 0, "device": "cpu", "progress": False}
GDAS = {"method": "gdas", "epochs": 3, "space": {"channels": 4, "layout": "NR", "states": 2},
        "options": {"warmup_epochs": 0, "retrain_epochs": 1, "posterior_draws": 30}}
PGNAS = {"method": "pgnas", "epochs": 2, "space": {"stem_channels": 8, "widths": [8, 16], "depths": [1, 1]},
         "options": {"num_candidates": 3, "posterior_draws": 20, "baseline": False}}
CHAIN = {"stem_channels": 8, "stem_stride": 1, "first_block_channels": 0, "widths": [8, 16], "depths": [2, 2],
         "strides": [1, 2], "head_channels": 0, "ops": ["MBConv_1_3", "MBConv_3_3", "Identity"],
         "transition_op": "MBConv_1_3"}
POOL = {"pool_size": 3, "num_evaluations": 2, "retrain_epochs": 0, "latency_proxy": "flops", "accuracy_samples": 1,
        "eval_batch_size": 32}
MORE = {  # the other methods with a posterior over networks, at a few seconds each
    "pcnas": {"method": "pcnas", "epochs": 4, "space": CHAIN,
              "options": {**POOL, "warmup_epochs": 1, "interval_epochs": 1}},
    "oneshot": {"method": "oneshot", "epochs": 1, "space": CHAIN, "options": POOL},
    "vinnas": {"method": "vinnas", "epochs": 2, "space": {"channels": 4, "layout": "RN", "states": 2},
               "options": {"warmup_epochs": 1, "retrain_epochs": 0, "posterior_draws": 6, "entropy_samples": 4}},
}


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


def test_stored_log_likelihood_scores_the_validation_examples(runs) -> None:
    run = runs["gdas"]
    idata = run.posterior()
    method = run.trained()
    ll = idata.log_likelihood["y"].values  # (chain, draw, val_example)
    assert ll.shape == (1, 30, len(method.data.val)) and np.all(ll <= 0)
    np.testing.assert_array_equal(idata.observed_data["y"].values, method.data.val.y.numpy())
    predicted = idata.posterior_predictive["y"].values
    assert predicted.shape == ll.shape and predicted.min() >= 0 and predicted.max() < 10


@pytest.mark.parametrize("name", ["gdas", "pgnas", "pcnas", "oneshot", "vinnas"])
def test_the_log_likelihood_scores_the_posterior_groups_draws(runs, tmp_path: Path, name: str) -> None:
    run = runs[name] if name in runs else bayesnas.search(**MORE[name], **SPLIT, out=tmp_path / name)
    idata = run.posterior()
    for group in ("log_likelihood", "posterior_predictive"):
        assert idata[group].sizes["chain"] == idata.posterior.sizes["chain"] == 1
        np.testing.assert_array_equal(idata[group]["draw"].values, idata.posterior["draw"].values)
    if name not in ("gdas", "pcnas", "oneshot"):  # keep masks and weights are not in the posterior group
        return
    method = run.trained()
    ops = list(idata.posterior["op"].values)
    val = method.data.val.subset(torch.tensor(idata.log_likelihood["val_example"].values))
    ll = idata.log_likelihood["y"].values[0]
    assert len({row.tobytes() for row in ll}) > 1  # the draws are different networks, which the check tells apart
    for s in range(idata.posterior.sizes["draw"]):
        if name == "gdas":  # the one-hot choices of draw s, per decision group (NaN where an op is not an option)
            table = idata.posterior["op_choice"].values[0, s]
            arch = {g: torch.as_tensor(table[np.asarray(group.positions)][:, [ops.index(o) for o in group.options]],
                                       dtype=torch.float32) for g, group in method.space.groups().items()}
        else:  # the pool member of draw s: one option index per decision
            table = idata.posterior["op_chosen"].values[0, s]
            arch = method.space.index_architecture(
                [d.options.index(ops[int(row.argmax())]) for d, row in zip(method.space.decisions(), table,
                                                                            strict=True)], method.device)
        probs = predictive.probabilities(on_batch_statistics(method.model.net, arch), val)
        expected = probs.gather(1, val.y.view(-1, 1)).squeeze(1).log().double().numpy()
        np.testing.assert_allclose(ll[s], expected, rtol=1e-5, atol=1e-6)
    if name == "gdas":  # adding the predictive groups again replaces them
        draws = method.export(tmp_path)
        for _ in range(2):
            assert predictive.add_predictive_groups(method, tmp_path, draws)
        assert az.from_netcdf(str(tmp_path / "posterior.nc")).log_likelihood["y"].shape == (1, 30, len(val))


def test_the_exported_log_likelihood_scores_a_bounded_evenly_spaced_part_of_validation(runs, tmp_path: Path,
                                                                                       monkeypatch) -> None:
    method = runs["gdas"].trained()
    monkeypatch.setattr(predictive, "PREDICTIVE_EXAMPLES", 7)
    assert predictive.add_predictive_groups(method, tmp_path, method.export(tmp_path))
    idata = az.from_netcdf(str(tmp_path / "posterior.nc"))
    n = len(method.data.val)
    index = idata.log_likelihood["val_example"].values
    assert idata.log_likelihood["y"].shape == (1, 30, 7) and index[0] == 0 and index[-1] == n - 1
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


def test_heldout_elpd_se_and_differences_of_a_hand_made_log_likelihood() -> None:
    # p(y_n | network_s) of 2 draws x 3 held-out examples; a is better than b on every example
    a = np.array([[0.5, 0.8, 0.2], [0.3, 0.6, 0.4]])  # mean over draws 0.4, 0.7, 0.3
    b = np.array([[0.2, 0.5, 0.1], [0.2, 0.3, 0.3]])  # mean over draws 0.2, 0.4, 0.2
    table = compare_heldout({"b": np.log(b), "a": np.log(a)})
    assert list(table.index) == ["a", "b"] and list(table["rank"]) == [0, 1]
    assert list(table.columns) == ["rank", "elpd_heldout", "elpd_diff", "weight", "se", "dse", "scale"]
    pointwise_a, pointwise_b = np.log([0.4, 0.7, 0.3]), np.log([0.2, 0.4, 0.2])
    assert table.loc["a", "elpd_heldout"] == pytest.approx(math.log(0.4 * 0.7 * 0.3))
    assert table.loc["b", "elpd_heldout"] == pytest.approx(math.log(0.2 * 0.4 * 0.2))
    # se = sqrt(N * variance with divisor N), as ArviZ's loo and compare take it
    mean_a = pointwise_a.mean()
    assert table.loc["a", "se"] == pytest.approx(math.sqrt(3 * sum((pointwise_a - mean_a) ** 2) / 3))
    difference = pointwise_a - pointwise_b  # log 2, log 1.75, log 1.5
    assert table.loc["b", "elpd_diff"] == pytest.approx(math.log(2 * 1.75 * 1.5))
    assert table.loc["b", "dse"] == pytest.approx(math.sqrt(((difference - difference.mean()) ** 2).sum()))
    assert table.loc["a", "elpd_diff"] == table.loc["a", "dse"] == 0
    # a dominates b on every example: stacking puts (nearly) all its weight on a
    assert table["weight"].sum() == pytest.approx(1) and table.loc["a", "weight"] == pytest.approx(1, abs=1e-6)


def test_stacking_weights_maximise_the_held_out_log_score() -> None:
    rng = np.random.default_rng(0)
    pointwise = np.log(rng.uniform(0.05, 1, (40, 2)))  # neither model dominates
    weights = stacking_weights(pointwise)
    grid = np.linspace(0, 1, 10001)
    score = np.log(np.exp(pointwise) @ np.stack([grid, 1 - grid])).sum(0)
    assert weights.sum() == pytest.approx(1) and weights[0] == pytest.approx(grid[score.argmax()], abs=2e-4)
    assert 0.05 < weights[0] < 0.95


def test_compare_runs_of_different_methods_on_one_split(runs, tmp_path: Path, capsys) -> None:
    paths = [runs["gdas"].path, runs["pgnas"].path]
    table, labels = compare_runs(paths)
    assert set(labels.values()) == {str(p) for p in paths} and list(table["rank"]) == [0, 1]
    assert table["elpd_heldout"].iloc[0] >= table["elpd_heldout"].iloc[1]
    assert table["weight"].sum() == pytest.approx(1)
    assert main(["diagnose", "--compare", *map(str, paths), "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare.csv").exists() and (tmp_path / "cmp" / "compare.png").exists()
    assert "elpd_heldout" in capsys.readouterr().out
    with pytest.raises(DiagnosticsError, match="more than once"):
        compare_runs([paths[0], paths[0]])


def test_compare_refuses_runs_on_different_splits_or_examples(runs, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for name in ("posterior.nc", "config.json"):
        (other / name).write_bytes((runs["pgnas"].path / name).read_bytes())
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "data_seed": 5}))
    with pytest.raises(DiagnosticsError, match="different data splits"):
        compare_runs([runs["gdas"].path, other])
    (other / "config.json").write_text(json.dumps(config))
    fewer = az.from_netcdf(str(other / "posterior.nc")).isel(val_example=slice(1, None))
    (other / "posterior.nc").unlink()
    fewer.to_netcdf(str(other / "posterior.nc"))
    with pytest.raises(DiagnosticsError, match="scored different validation examples") as err:
        compare_runs([runs["gdas"].path, other])
    assert "\n" not in str(err.value)


def test_random_search_has_no_posterior_to_average() -> None:
    from bayesnas.config import preset
    from bayesnas.data import load_dataset
    from bayesnas.methods import get_method

    data = load_dataset("digits", fraction=0.3)
    method = get_method("random")(preset("random-digits").merged({"space": {"channels": 4}}), data,
                                  torch.device("cpu"))
    with pytest.raises(predictive.NoPosteriorError, match="no posterior over networks"):
        predictive.draw_probabilities(method, data.val, 2)
    assert predictive.add_predictive_groups(method, Path("/nonexistent"), None) is False  # nothing read or written
