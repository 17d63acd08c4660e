"""The model-averaging notebook: committed without outputs, and runs top to bottom in a headless kernel."""

import re

import pytest

from tests.notebooks import assert_stripped, execute

NOTEBOOK = "05_model_averaging.ipynb"


def test_committed_notebook_has_no_outputs():
    assert_stripped(NOTEBOOK)


@pytest.mark.slow
def test_notebook_executes(tmp_path):
    text, images = execute(NOTEBOOK, tmp_path, {"BAYESNAS_NOTEBOOK_EPOCHS": "2",
                                                "BAYESNAS_NOTEBOOK_DATA_FRACTION": "0.2",
                                                "BAYESNAS_NOTEBOOK_SAMPLES": "4",
                                                "BAYESNAS_NOTEBOOK_DRAWS": "16"})
    for method, predictors in (("pgnas", ("bma", "inherited")), ("gdas", ("bma", "inherited", "retrained"))):
        for predictor in predictors:  # one table row each: accuracy, NLL, Brier, ECE
            assert re.search(rf"{method}\s+{predictor}\s+[01]\.\d+\s+\d+\.\d+\s+\d\.\d+\s+\d\.\d+", text), \
                (method, predictor)
    assert len(re.findall(r"BMA minus inherited single network: NLL [+-]\d", text)) == 2
    assert "elpd_loo" in text and "val_example" in text  # az.loo and the stored log-likelihood's dims
    assert re.search(r"gdas\s+\d\s+-?\d", text) and re.search(r"pgnas\s+\d\s+-?\d", text)  # az.compare's rows
    assert images == 3, "the plots were not rendered inline"
