"""PGNAS model/guide and the shared search loop: sites, learning, determinism, resume, NaN guard."""

import json

import pytest
import torch
from pyro import poutine

from bayesnas.config import preset
from bayesnas.data import load_dataset
from bayesnas.infer import CheckpointError, SearchDivergedError, SearchError, run_search
from bayesnas.io import read_jsonl
from bayesnas.methods import get_method

FIGURES = ("val_accuracy", "test_accuracy", "params", "baseline_test_accuracy", "baseline_params", "drop_rate")


@pytest.fixture
def method(tiny_config):
    data = load_dataset("digits", seed=0)
    return get_method("pgnas")(tiny_config, data, torch.device("cpu"))


def test_model_and_guide_sites(method):
    x, y = method.data.train.x[:16], method.data.train.y[:16]
    index = torch.arange(16)
    guide_trace = poutine.trace(method.guide).get_trace(x, y, index, method.num_train)
    model_trace = poutine.trace(poutine.replay(method.model, guide_trace)).get_trace(
        x, y, index, method.num_train)
    kernels = [n for n in guide_trace.stochastic_nodes]
    assert len(kernels) == 2 * 2 * 2  # blocks x (conv_a, conv_b) x kernel sizes
    for name in kernels:
        # global sites: sampled once, outside the data plate, with the kernel's shape
        assert model_trace.nodes[name]["value"].shape == model_trace.nodes[name]["fn"].event_shape
        assert model_trace.nodes[name]["cond_indep_stack"] == ()
    obs = model_trace.nodes["y"]
    assert obs["is_observed"] and obs["value"].shape == (16,)
    assert obs["cond_indep_stack"][0].name == "data"
    assert obs["cond_indep_stack"][0].full_size == method.num_train
    assert obs["scale"] == pytest.approx(method.num_train / 16)  # the plate scales by N / M


def test_training_loss_is_the_negative_elbo_per_example(method):
    x, y = method.data.train.x[:32], method.data.train.y[:32]
    torch.manual_seed(0)
    loss, correct = method.training_loss(x, y, torch.arange(32))
    assert loss.ndim == 0 and torch.isfinite(loss) and 0 <= correct <= 32
    loss.backward()
    groups = {g["name"]: g["params"] for g in method.param_groups()}
    assert set(groups) == {"kernels", "drop_rates", "network"}
    for name, params in groups.items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name


def test_architecture_samples_and_genotype(method):
    torch.manual_seed(0)
    masks = method.guide.sample_architecture(drop_rate=0.5)
    assert all(m.dtype == torch.bool and m.ndim == 1 for m in masks.values())
    frac = torch.cat(list(masks.values())).float().mean()
    assert 0.3 < frac < 0.7
    genotype = method.genotype(masks)
    assert set(genotype.choices) == {"s0.b0.a", "s0.b0.b", "s1.b0.a", "s1.b0.b"}


def test_search_learns_and_writes_a_complete_run_folder(tiny_config, tmp_path):
    summary = run_search(tiny_config.merged({"options": {"finetune_epochs": 1}}), tmp_path / "run",
                         progress=False)
    run = tmp_path / "run"
    for name in ("config.json", "checkpoint.pt", "metrics.jsonl", "genotype.json", "summary.json",
                 "posterior.nc", "training.png", "drop_rates.png"):
        assert (run / name).exists(), name
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert rows[-1]["val_accuracy"] > 0.35  # chance is 0.1
    assert rows[-1]["val_accuracy"] > rows[0]["val_accuracy"]
    assert summary["params"] <= summary["supernet_params"]
    for key in ("method", "dataset", "val_accuracy", "test_accuracy", "params", "supernet_params",
                "search_seconds", "genotype", "baseline_test_accuracy", "finetuned_test_accuracy"):
        assert key in summary
    assert json.loads((run / "summary.json").read_text()) == summary


def test_same_seed_same_search(tiny_config, tmp_path):
    config = tiny_config.merged({"epochs": 2})
    a = run_search(config, tmp_path / "a", progress=False)
    b = run_search(config, tmp_path / "b", progress=False)
    assert {k: a[k] for k in FIGURES} == {k: b[k] for k in FIGURES}
    assert (tmp_path / "a/genotype.json").read_text() == (tmp_path / "b/genotype.json").read_text()


def test_interrupted_search_resumes_to_the_same_result(tiny_config, tmp_path):
    full = run_search(tiny_config, tmp_path / "full", progress=False)

    def kill(event):
        if event.epoch == 1 and event.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(tiny_config, tmp_path / "cut", progress=False, on_step=kill)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "cut/metrics.jsonl")] == [0]
    assert not (tmp_path / "cut/summary.json").exists()
    resumed = run_search(tiny_config, tmp_path / "cut", progress=False, resume=True)
    assert {k: resumed[k] for k in FIGURES} == {k: full[k] for k in FIGURES}
    losses = [r["loss"] for r in read_jsonl(tmp_path / "cut/metrics.jsonl")]
    assert losses == [r["loss"] for r in read_jsonl(tmp_path / "full/metrics.jsonl")]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path, monkeypatch):
    method_cls = get_method("pgnas")
    original = method_cls.training_loss
    run = tmp_path / "run"

    def poisoned(self, x, y, index):
        loss, correct = original(self, x, y, index)
        if (run / "checkpoint.pt").exists():
            return loss * float("nan"), correct
        return loss, correct

    monkeypatch.setattr(method_cls, "training_loss", poisoned)
    with pytest.raises(SearchDivergedError, match=r"nan at epoch 1, step 0.*epoch 0\) is kept") as info:
        run_search(tiny_config, run, progress=False)
    assert "\n" not in str(info.value)
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in saved["modules"]["guide"].values())
    assert not (run / "summary.json").exists()


def test_existing_run_is_not_overwritten(tiny_config, tmp_path):
    config = tiny_config.merged({"epochs": 1})
    run_search(config, tmp_path / "run", progress=False)
    before = (tmp_path / "run/summary.json").read_bytes()
    with pytest.raises(SearchError, match="already holds a search run"):
        run_search(config, tmp_path / "run", progress=False)
    assert (tmp_path / "run/summary.json").read_bytes() == before


def test_corrupted_and_mismatched_checkpoints(tiny_config, tmp_path):
    config = tiny_config.merged({"epochs": 1})
    run_search(config, tmp_path / "run", progress=False)
    checkpoint = tmp_path / "run/checkpoint.pt"
    good = checkpoint.read_bytes()
    with pytest.raises(CheckpointError, match="different configuration.*epochs"):
        run_search(config.merged({"epochs": 2}), tmp_path / "run", progress=False, resume=True)
    checkpoint.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="corrupted or unreadable"):
        run_search(config, tmp_path / "run", progress=False, resume=True)


def test_unknown_method_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'darts'"):
        run_search(preset("pgnas-digits").merged({"method": "darts"}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_search_on_cuda(tiny_config, tmp_path):
    summary = run_search(tiny_config.merged({"epochs": 1}), tmp_path / "run", device="cuda", progress=False)
    assert summary["device"].startswith("cuda")
