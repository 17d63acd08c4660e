"""Random search: seeded random genotypes, each trained alone, the best on validation retrained; on both spaces."""

import dataclasses

import arviz as az
import pytest
import torch

from bayesnas.config import ConfigError, preset
from bayesnas.data import load_dataset
from bayesnas.infer import run_search
from bayesnas.io import read_jsonl
from bayesnas.methods import get_method
from bayesnas.spaces import get_space, load_genotype
from bayesnas.training import accuracy

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks

CHAIN = {"stem_channels": 8, "stem_stride": 1, "first_block_channels": 0, "widths": [8, 16], "depths": [2, 2],
         "strides": [1, 2], "head_channels": 0, "ops": ["MBConv_1_3", "MBConv_3_3", "Identity"],
         "transition_op": "MBConv_1_3"}
CELLS = {"channels": 4, "layout": "RN", "states": 1, "ops": "none,skip_connect,sep_conv_3x3"}
SPACES = {"chain": CHAIN, "cells": CELLS}
SHAPE = {"in_channels": 1, "num_classes": 10, "image_size": 8}


def tiny(space_name, epochs=1, **options):
    """2 candidates trained for ``epochs`` on 40 % of digits (batches of 8, so that they learn something), the best
    retrained for 1 epoch. At seed 0 candidate 1 is the better one on both spaces."""
    return dataclasses.replace(preset("pcnas-digits"), method="random", space_name=space_name,
                               space=dict(SPACES[space_name]), epochs=epochs, data_fraction=0.4, batch_size=8,
                               lr=0.05, lr_min=0.0, seed=0, options={"num_samples": 2, "retrain_epochs": 1, **options})


@pytest.mark.parametrize("space_name", ["cells", "chain"])
def test_the_pick_is_the_best_validation_candidate(tmp_path, space_name):
    run = tmp_path / "run"
    config = tiny(space_name)
    summary = run_search(config, run, progress=False)
    space = get_space(space_name, {**SPACES[space_name], **SHAPE})
    generator = torch.Generator().manual_seed(config.seed)
    sampled = [space.random_genotype(generator) for _ in range(2)]
    assert [c["genotype"] for c in summary["candidates"]] == [g.choices for g in sampled]
    # the recorded accuracies are those of the trained candidates in the checkpoint, evaluated here
    data = load_dataset("digits", seed=config.seed, fraction=0.4)
    state = torch.load(run / "checkpoint.pt", weights_only=True)["modules"]["candidates"]
    nets = torch.nn.ModuleList([space.build(g) for g in sampled])
    nets.load_state_dict(state)
    recorded = [c["val_accuracy"] for c in summary["candidates"]]
    assert recorded == [accuracy(net, data.val) for net in nets]
    best = max(range(2), key=lambda i: (recorded[i], -i))
    assert recorded[0] != recorded[1] and best == 1  # seed 0: the second candidate, on both spaces
    assert summary["best_candidate"] == best and summary["candidate_val_accuracy"] == max(recorded)
    assert summary["candidate_test_accuracy"] == accuracy(nets[best], data.test)
    assert load_genotype(run / "genotype.json") == sampled[best]
    assert summary["retrained"] and 0 <= summary["test_accuracy"] <= 1
    assert summary["flops"] == space.flops(sampled[best]) and summary["params"] == space.params(sampled[best])
    posterior = az.from_netcdf(str(run / "posterior.nc")).posterior
    assert posterior["val_accuracy"].values.tolist() == [recorded]
    row = read_jsonl(run / "metrics.jsonl")[-1]
    assert row["candidate_val_accuracies"] == recorded and row["val_accuracy"] == max(recorded)
    assert {"candidate1_loss", "candidate1_accuracy"} <= set(row)  # each candidate's own training


@pytest.mark.slow
def test_candidates_train_alone_and_a_resumed_search_redoes_no_finished_epoch(tmp_path):
    """Each candidate learns as it would with no other candidate beside it (without augmentation: the random shifts
    of every candidate's batches come from one stream), and a resumed search trains only the epochs left, ending
    with the figures of an uninterrupted one."""
    config = dataclasses.replace(tiny("cells", epochs=2, retrain_epochs=0), shift=0)
    full = run_search(config, tmp_path / "full", progress=False)
    alone = run_search(config.merged({"options": {"num_samples": 1}}), tmp_path / "alone", progress=False)
    assert alone["candidates"][0] == full["candidates"][0]  # candidate 0 trained without candidate 1
    losses = [r["loss"] for r in read_jsonl(tmp_path / "full" / "metrics.jsonl")]
    assert losses == [r["loss"] for r in read_jsonl(tmp_path / "alone" / "metrics.jsonl")]

    def kill(event):
        if event.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(config, tmp_path / "cut", progress=False, on_step=kill)
    epochs = []
    resumed = run_search(config, tmp_path / "cut", progress=False, resume=True,
                         on_step=lambda event: epochs.append(event.epoch))
    assert set(epochs) == {1}  # epoch 0 of both candidates was not trained again
    figures = ("candidates", "best_candidate", "val_accuracy", "test_accuracy")
    assert {k: resumed[k] for k in figures} == {k: full[k] for k in figures}
    # retrain_epochs = 0: the best candidate as trained, untrained copy for its size
    assert (full["val_accuracy"], full["test_accuracy"]) == (full["candidate_val_accuracy"],
                                                             full["candidate_test_accuracy"])


def test_options_are_checked():
    data = load_dataset("digits", seed=0, fraction=0.4)
    with pytest.raises(ConfigError, match="num_samples must be \\[1, 100000\\], got 0"):
        get_method("random")(tiny("cells", num_samples=0), data, torch.device("cpu"))
