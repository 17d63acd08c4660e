"""The SVI-from-scratch notebook: committed without outputs, and runs top to bottom in a headless kernel."""

import re

import pytest

from tests.notebooks import assert_stripped, execute

NOTEBOOK = "04_svi_from_scratch.ipynb"


def test_committed_notebook_has_no_outputs():
    assert_stripped(NOTEBOOK)


@pytest.mark.slow
def test_notebook_executes(tmp_path):
    text, images = execute(NOTEBOOK, tmp_path, {"BAYESNAS_NOTEBOOK_STEPS": "40"})
    assert "{'normal': '5 edges x 8 ops', 'reduce': '5 edges x 8 ops'}" in text
    assert "normal_edge" in text and "reduce_edge" in text  # the named dims of the InferenceData
    gaps = [float(g) for g in re.findall(r"largest \|frequency - softmax\(A\)\| over edges and ops: ([\d.]+)", text)]
    # 500 draws per edge: a frequency's standard error is at most 0.022, so 0.1 is more than 4.5 of them
    assert len(gaps) == 2 and max(gaps) < 0.1
    assert "parameters" in text and "loss: first 20 steps" in text
    assert images == 2, "the plots were not rendered inline"
