"""The posterior-fading notebook: committed without outputs, and runs top to bottom in a headless kernel (tiny
budget: one-shot, GDAS and PC-NAS searches of 5 epochs, 4 architectures ranked after 1 stand-alone epoch)."""

import re

import pytest

from tests.notebooks import assert_stripped, execute

NOTEBOOK = "03_posterior_fading.ipynb"


def test_committed_notebook_has_no_outputs():
    assert_stripped(NOTEBOOK)


@pytest.mark.slow
def test_notebook_executes(tmp_path):
    # the smallest budget that runs every method: one epoch per mixop of pcnas-digits' 5 (no PC-NAS warm-up)
    text, images = execute(NOTEBOOK, tmp_path, {"BAYESNAS_NOTEBOOK_EPOCHS": "5", "BAYESNAS_NOTEBOOK_ARCHS": "4",
                                                "BAYESNAS_NOTEBOOK_DATA_FRACTION": "0.1"})
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
