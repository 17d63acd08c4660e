"""The example notebook: committed without outputs, and runs top to bottom in a headless kernel."""

import pytest

from tests.notebooks import assert_stripped, execute

NOTEBOOK = "01_pgnas_posterior.ipynb"


def test_committed_notebook_has_no_outputs():
    assert_stripped(NOTEBOOK)


@pytest.mark.slow
def test_notebook_executes(tmp_path):
    text, images = execute(NOTEBOOK, tmp_path, {"BAYESNAS_NOTEBOOK_EPOCHS": "1"})
    assert "test accuracy: " in text
    assert "keep_fraction[" in text  # az.summary rows
    assert "of the super-network's" in text
    assert images >= 3, "the plots were not rendered inline"
