"""The NaN/inf guard: every checkpointed tensor and every logged figure is checked before a checkpoint replaces
the previous one; a diverged search stops with one line naming the last good checkpoint, which stays."""

import json
import math

import pytest
import torch

from bayesnas.cli import EXIT_ERROR, main
from bayesnas.infer import non_finite_figure, non_finite_tensor

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks

# GDAS on tiny cells: epoch 0 trains only the weights (warm-up), so it ends in a good checkpoint; the logits A
# start learning in epoch 1
TINY_GDAS = {"method": "gdas", "epochs": 3, "data_fraction": 0.3,
             "space": {"channels": 4, "layout": "NRN", "states": 2, "ops": "gdas"},
             "options": {"retrain_epochs": 1, "posterior_draws": 5, "warmup_epochs": 1}}
DIVERGING = {
    "enormous architecture learning rate": {"arch_lr": 1e38},
    "temperature so small that the softmax overflows": {"tau_max": 1e-45, "tau_min": 1e-45},
}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("case", DIVERGING)
def test_diverged_gdas_stops_with_one_line_and_keeps_the_last_good_checkpoint(case, tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY_GDAS, "options": {**TINY_GDAS["options"], **DIVERGING[case]}}))
    run = tmp_path / "run"
    assert main(["search", "--config", str(config), "--out", str(run), "--no-progress"]) == EXIT_ERROR
    line = _error_line(capsys)
    assert "search stopped" in line and "NaN or infinite" in line or "loss became" in line
    assert not (run / "genotype.json").exists() and not (run / "summary.json").exists()
    if "epoch 0" in line.split("search stopped")[0]:
        assert "no checkpoint was written yet" in line and not (run / "checkpoint.pt").exists()
        return
    assert f"kept at {run / 'checkpoint.pt'}" in line
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 0
    for module in state["modules"].values():
        assert all(torch.isfinite(v).all() for v in module.values() if v.is_floating_point())
    # the kept checkpoint resumes (and, with the same settings, stops again at the same place, with one line)
    assert main(["search", "--config", str(config), "--out", str(run), "--resume", "--no-progress"]) == EXIT_ERROR
    assert "search stopped" in _error_line(capsys)
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 0


def test_non_finite_tensor_names_the_first_bad_entry():
    good, bad = torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)
    assert non_finite_tensor({"model": good, "guide": bad}) is None
    bad.running_var[1] = math.inf
    assert non_finite_tensor({"model": good, "guide": bad}) == "guide.running_var"
    good.weight.data[0, 0] = math.nan
    assert non_finite_tensor({"model": good, "guide": bad}) == "model.weight"


def test_non_finite_figure_walks_nested_rows():
    row = {"loss": 0.5, "decision_entropy": {"normal": [0.1, 0.2], "reduce": [0.3, math.nan]}, "stage": "pool"}
    assert non_finite_figure(row) == "decision_entropy.reduce.1"
    assert non_finite_figure({"loss": -math.inf}) == "loss"
    assert non_finite_figure({"loss": 1.0, "val": None, "n": 3}) is None
