"""The VINNAS notebook: committed without outputs, and runs top to bottom in a headless kernel (tiny budget)."""

import pytest

from tests.notebooks import assert_stripped, execute

NOTEBOOK = "02_vinnas_ard.ipynb"


def test_committed_notebook_has_no_outputs():
    assert_stripped(NOTEBOOK)


@pytest.mark.slow
def test_notebook_executes(tmp_path):
    text, images = execute(NOTEBOOK, tmp_path, {"BAYESNAS_NOTEBOOK_EPOCHS": "2",
                                                "BAYESNAS_NOTEBOOK_RETRAIN_EPOCHS": "1",
                                                "BAYESNAS_NOTEBOOK_DATA_FRACTION": "0.1",
                                                "BAYESNAS_NOTEBOOK_DRAWS": "16"})
    assert "test accuracy: " in text and "left after pruning" in text
    assert "op_weight[" in text  # az.summary rows
    assert "normal cell:" in text and "fraction of each operation's weights pruned" in text
    assert "sep_conv_3x3" in text
    assert images >= 3, "the plots were not rendered inline"
