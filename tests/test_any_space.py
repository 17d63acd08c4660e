"""Any proposal on any space: every (method, space) pair whose math applies runs a tiny search on digits and
ends with a genotype that ``bayesnas train`` retrains; the other pairs are refused with one line."""

import json

import pytest

from bayesnas.cli import EXIT_ERROR, main
from bayesnas.config import METHOD_SPACES, ConfigError, SearchConfig, on_space, preset
from bayesnas.infer import run_search
from bayesnas.spaces import SPACES, get_space, load_genotype
from bayesnas.spaces.profile import count_params
from tests.conftest import TINY as PGNAS_TINY

TINY_SPACES = {
    # one normal cell with one state: two decisions (its two input edges)
    "cells": {"channels": 4, "layout": "N", "states": 1, "stem_multiplier": 1},
    # three mixops of three ops between fixed transitions
    "chain": {"stem_channels": 8, "stem_stride": 1, "first_block_channels": 0, "widths": [8, 16], "depths": [2, 2],
              "strides": [1, 2], "head_channels": 0, "ops": ["MBConv_1_3", "MBConv_3_3", "Identity"],
              "transition_op": "MBConv_1_3"},
    "branches": PGNAS_TINY["space"],
}
POOL = {"pool_size": 2, "num_evaluations": 2, "interval_epochs": 1, "retrain_epochs": 1, "latency_runs": 1,
        "latency_batch_size": 4, "eval_batch_size": 32}
TINY_OPTIONS = {
    "gdas": {"retrain_epochs": 1, "posterior_draws": 4},
    "vinnas": {"warmup_epochs": 1, "retrain_epochs": 1, "posterior_draws": 4, "entropy_samples": 2},
    "pcnas": POOL,
    "oneshot": {k: v for k, v in POOL.items() if k != "interval_epochs"},
    "random": {"num_samples": 2, "retrain_epochs": 1},
    "pgnas": PGNAS_TINY["options"],
}
PAIRS = [(m, s) for m, spaces in METHOD_SPACES.items() for s in spaces]
REFUSED = [(m, s) for m in METHOD_SPACES for s in SPACES if s not in METHOD_SPACES[m]]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(method: str, space: str) -> SearchConfig:
    config = on_space(SearchConfig(method=method), space)
    decisions = (len(get_space(space, {**TINY_SPACES[space], "in_channels": 1, "num_classes": 10}).decisions())
                 if space != "branches" else 0)
    epochs = 1 + decisions if method in ("pcnas", "oneshot") else 2  # PC-NAS: warm-up + one interval per decision
    return config.merged({"epochs": epochs, "data_fraction": 0.4, "batch_size": 64,
                          "space": TINY_SPACES[space], "options": TINY_OPTIONS[method]})


def test_the_pairs_cover_the_issue():
    expected = {(m, s) for m in ("gdas", "vinnas", "pcnas", "oneshot", "random") for s in ("cells", "chain")}
    assert expected <= set(PAIRS)
    assert ("pgnas", "branches") in PAIRS


@pytest.mark.parametrize(("method", "space"), PAIRS, ids=[f"{m}-{s}" for m, s in PAIRS])
def test_every_pair_searches_and_its_genotype_retrains(method, space, tmp_path, capsys):
    run = tmp_path / "run"
    summary = run_search(tiny_config(method, space), run, device="cpu", progress=False)
    assert json.loads((run / "config.json").read_text())["space_name"] == space
    genotype = load_genotype(run / "genotype.json")
    assert genotype.space == space
    assert 0 <= summary["test_accuracy"] <= 1 and summary["params"] > 0
    assert main(["diagnose", str(run), "--out", str(tmp_path / "diagnose")]) == 0
    out = tmp_path / "train"
    assert main(["train", str(run / "genotype.json"), "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    trained = json.loads((out / "train_summary.json").read_text())
    assert trained["params"] == count_params(get_space(space, genotype.config).build(genotype))
    assert 0 <= trained["test_accuracy"] <= 1


@pytest.mark.parametrize("method", ["random", "oneshot"])
def test_the_command_line_prints_every_method_summary(method, tmp_path, capsys):
    """The CLI's report reads only the summary keys a method has (random search has no super-network)."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(method, "chain").to_dict()))
    out = tmp_path / "run"
    assert main(["search", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and f"run folder: {out}" in printed


@pytest.mark.parametrize(("method", "space"), REFUSED, ids=[f"{m}-{s}" for m, s in REFUSED])
def test_meaningless_pairs_are_refused_with_one_line(method, space, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", "--method", method, "--space", space, "--out", str(out), "--no-progress"]) == EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot search" in err and space in err
    assert not out.exists()


def test_on_space_keeps_a_preset_own_space_options_and_swaps_the_others():
    gdas = preset("gdas-digits")
    assert on_space(gdas, "cells").space == gdas.space
    chain = on_space(gdas, "chain")
    assert chain.space_name == "chain" and chain.space == preset("pcnas-digits").space
    with pytest.raises(ConfigError, match="unknown search space"):
        on_space(gdas, "graphs")
