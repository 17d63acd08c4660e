"""The example notebooks: each committed without outputs, and each runs top to bottom in a headless kernel at a
tiny budget (its environment below) and prints and draws what its text promises (its check below)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from tests.notebooks import NOTEBOOKS, assert_stripped, execute


def pgnas_posterior(text: str, images: int) -> None:
    assert "test accuracy: " in text
    assert "keep_fraction[" in text  # az.summary rows
    assert "of the super-network's" in text
    assert images >= 3, "the plots were not rendered inline"


def vinnas_ard(text: str, images: int) -> None:
    assert "test accuracy: " in text and "left after pruning" in text
    assert "op_weight[" in text  # az.summary rows
    assert "normal cell:" in text and "fraction of each operation's weights pruned" in text
    assert "sep_conv_3x3" in text
    assert images >= 3, "the plots were not rendered inline"


def posterior_fading(text: str, images: int) -> None:
    assert "PC-NAS: warm-up 0 + 5 intervals x 1 = 5 epochs" in text

    def curve(name: str) -> list[float]:
        match = re.search(rf"^{name} +log10 N_eff per epoch: (.+)$", text, re.MULTILINE)
        assert match, f"no fading curve printed for {name}"
        return [float(v) for v in match.group(1).split()]

    oneshot, gdas, pcnas = curve("one-shot"), curve("GDAS"), curve("PC-NAS")
    assert len(oneshot) == len(gdas) == len(pcnas) == 5
    assert oneshot == [5.0] * 5  # uniform over 10^5 architectures all along
    assert pcnas == [4.70, 3.70, 2.70, 1.70, 0.70]  # P = 5 members x 10 ops of each remaining mixop
    assert gdas[-1] <= gdas[0] and 25 < gdas[0] < 25.3  # uniform logits: 2 cell types x 14 edges x 8 ops
    assert text.count("kept potentials") == 5
    assert "ranking correlation of 4 architectures" in text
    assert "Kendall tau" in text and "Pearson r" in text  # the table's columns
    assert images == 2, "the plots were not rendered inline"


def svi_from_scratch(text: str, images: int) -> None:
    assert "{'normal': '5 edges x 8 ops', 'reduce': '5 edges x 8 ops'}" in text
    assert "normal_edge" in text and "reduce_edge" in text  # the named dims of the InferenceData
    gaps = [float(g) for g in re.findall(r"largest \|frequency - softmax\(A\)\| over edges and ops: ([\d.]+)", text)]
    # 500 draws per edge: a frequency's standard error is at most 0.022, so 0.1 is more than 4.5 of them
    assert len(gaps) == 2 and max(gaps) < 0.1
    assert "parameters" in text and "loss: first 20 steps" in text
    assert images == 2, "the plots were not rendered inline"


def model_averaging(text: str, images: int) -> None:
    for method, predictors in (("pgnas", ("bma", "inherited")), ("gdas", ("bma", "inherited", "retrained"))):
        for predictor in predictors:  # one table row each: accuracy, NLL, Brier, ECE
            assert re.search(rf"{method}\s+{predictor}\s+[01]\.\d+\s+\d+\.\d+\s+\d\.\d+\s+\d\.\d+", text), \
                (method, predictor)
    assert len(re.findall(r"BMA minus inherited single network: NLL [+-]\d", text)) == 2
    assert "elpd_heldout" in text and "val_example" in text  # the comparison and the stored log-likelihood's dims
    assert re.search(r"gdas\s+\d\s+-?\d", text) and re.search(r"pgnas\s+\d\s+-?\d", text)  # the table's rows
    assert images == 3, "the plots were not rendered inline"


def ensembles(text: str, images: int) -> None:
    for predictor in ("posterior", "deep", "single"):  # one row per table: in distribution, and under shift
        assert len(re.findall(rf"^\| {predictor} \| \d\.\d{{4}} \[", text, re.MULTILINE)) == 2, predictor
        assert re.search(rf"^{predictor} +OOD AUROC \d\.\d{{4}}, members' disagreement \d\.\d{{4}}$", text,
                         re.MULTILINE), predictor
    assert "Posterior ensemble's NLL minus the deep ensemble's" in text
    assert "posterior-1" in text and "deep-1" in text  # the members' table
    assert images == 3, "the plots were not rendered inline"


CASES: dict[str, tuple[dict[str, str], Callable[[str, int], None]]] = {
    "01_pgnas_posterior.ipynb": ({"BAYESNAS_NOTEBOOK_EPOCHS": "1"}, pgnas_posterior),
    "02_vinnas_ard.ipynb": ({"BAYESNAS_NOTEBOOK_EPOCHS": "2", "BAYESNAS_NOTEBOOK_RETRAIN_EPOCHS": "1",
                             "BAYESNAS_NOTEBOOK_DATA_FRACTION": "0.1", "BAYESNAS_NOTEBOOK_DRAWS": "16"}, vinnas_ard),
    # the smallest budget that runs every method: one epoch per mixop of pcnas-digits' 5 (no PC-NAS warm-up)
    "03_posterior_fading.ipynb": ({"BAYESNAS_NOTEBOOK_EPOCHS": "5", "BAYESNAS_NOTEBOOK_ARCHS": "4",
                                   "BAYESNAS_NOTEBOOK_DATA_FRACTION": "0.1"}, posterior_fading),
    "04_svi_from_scratch.ipynb": ({"BAYESNAS_NOTEBOOK_STEPS": "40"}, svi_from_scratch),
    "05_model_averaging.ipynb": ({"BAYESNAS_NOTEBOOK_EPOCHS": "2", "BAYESNAS_NOTEBOOK_DATA_FRACTION": "0.2",
                                  "BAYESNAS_NOTEBOOK_SAMPLES": "4", "BAYESNAS_NOTEBOOK_DRAWS": "16"}, model_averaging),
    "06_ensembles.ipynb": ({"BAYESNAS_NOTEBOOK_EPOCHS": "2", "BAYESNAS_NOTEBOOK_MEMBERS": "2",
                            "BAYESNAS_NOTEBOOK_MEMBER_EPOCHS": "1", "BAYESNAS_NOTEBOOK_DATA_FRACTION": "0.2"},
                           ensembles),
}


def test_every_notebook_has_a_case():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_committed_notebook_has_no_outputs(name):
    assert_stripped(name)


INTERNALS = ("bayesnas.infer", "bayesnas.config", "bayesnas.search_folder", "bayesnas.api")
"""Modules a notebook reaches through the public API (``bayesnas.search``, ``bayesnas.preset``, ...) instead."""


@pytest.mark.parametrize("name", sorted(CASES))
def test_notebooks_use_the_public_api(name):
    import json

    code = "\n".join("".join(c["source"]) for c in json.loads((NOTEBOOKS / name).read_text())["cells"]
                     if c["cell_type"] == "code")
    assert not [m for m in INTERNALS if re.search(rf"\b{re.escape(m)}\b", code)]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_executes(name, tmp_path):
    env, check = CASES[name]
    text, images = execute(name, tmp_path, env)
    check(text, images)
