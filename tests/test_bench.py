"""``bayesnas bench``: budgets, tables and a benchmark that resumes where it stopped."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from bayesnas.cli import main
from bayesnas.config import ConfigError
from bayesnas.experiments import bench
from bayesnas.infer import StepEvent, run_search
from bayesnas.spaces import get_space, load_genotype
from bayesnas.spaces.profile import count_params

TINY_METHODS = {
    "pgnas": {"space": {"stem_channels": 8, "widths": [8, 16], "depths": [1, 1], "kernel_sizes": [1, 3]},
              "options": {"num_candidates": 3, "posterior_draws": 4, "kl_dataset_size": 50000,
                          "baseline_drop_rate": 0.2}},
}


@pytest.fixture
def tiny_budget(monkeypatch: pytest.MonkeyPatch) -> bench.Budget:
    """The cpu budget shrunk to seconds on digits (two seeds, two search epochs, one retraining epoch)."""
    cpu = bench.BUDGETS["cpu"]
    budget = dataclasses.replace(
        cpu, dataset="digits", search_fraction=0.5, search_epochs=2, search_batch_size=64,
        cells={**cpu.cells, "channels": 4, "eval_channels": 4, "layout": "NR", "states": 2},
        methods={**cpu.methods, **TINY_METHODS}, recipe=dataclasses.replace(cpu.recipe, epochs=1, batch_size=64))
    monkeypatch.setitem(bench.BUDGETS, "cpu", budget)
    monkeypatch.setattr(bench, "BENCHMARKS", (*bench.BENCHMARKS, "digits"))
    return budget


def test_budgets_are_valid_configs() -> None:
    for budget in bench.BUDGETS.values():
        for method in ("pgnas", "vinnas", "gdas", "pcnas"):
            config = budget.search_config(method, seed=1)
            assert (config.method, config.dataset, config.seed) == (method, "fashion-mnist", 1)
            assert config.data_fraction == budget.search_fraction
        for method in ("vinnas", "gdas"):  # both search the budget's cells; the benchmark does the retraining
            config = budget.search_config(method, 0)
            assert {k: config.space[k] for k in budget.cells} == budget.cells
            assert config.options["retrain_epochs"] == 0
    paper = bench.BUDGETS["paper"]
    assert (paper.cells["layout"], paper.cells["states"], paper.search_epochs, paper.search_fraction) == (
        "NRRN", 3, 50, 0.5)
    assert paper.cells["eval_channels"] == 4 * paper.cells["channels"] and paper.recipe.epochs == 200


def test_unknown_benchmark_budget_or_method(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown benchmark 'cifar'"):
        bench.run_benchmark("cifar", "cpu", tmp_path)
    with pytest.raises(ConfigError, match="unknown budget 'tpu'.*cpu, paper"):
        bench.run_benchmark("fashion-mnist", "tpu", tmp_path)
    with pytest.raises(ConfigError, match="unknown method.*darts"):
        bench.run_benchmark("fashion-mnist", "cpu", tmp_path, methods=("darts",))
    assert list(tmp_path.iterdir()) == []


def test_bench_resumes_where_it_stopped(tiny_budget: bench.Budget, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bench"
    # A search interrupted after its first epoch, as a killed benchmark leaves it.
    run_dir = out / "pgnas" / "seed0" / "search"

    def stop(event: StepEvent) -> None:
        if event.epoch == 1:
            raise KeyboardInterrupt

    bench._pin_budget(out, tiny_budget)
    with pytest.raises(KeyboardInterrupt):
        run_search(tiny_budget.search_config("pgnas", 0), run_dir, device="cpu", progress=False, on_step=stop)
    first_epoch = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert not (run_dir / "summary.json").exists()

    # The benchmark continues that search from its checkpoint, then is killed while retraining PGNAS seed 1's
    # fixed-rate pick (its fourth retraining: PGNAS seed 0, its baseline, PGNAS seed 1, then this one).
    done: list[bench.JobResult] = []
    calls: list[str] = []
    real_retrain = bench.retrain

    def killed_on_fourth(space, genotype, *args, **kwargs):
        calls.append(genotype.space)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_retrain(space, genotype, *args, **kwargs)

    monkeypatch.setattr(bench, "retrain", killed_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        bench.run_benchmark("digits", "cpu", out, device="cpu", methods=("pgnas", "random"), progress=False,
                            on_job=done.append)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and rows[0] == first_epoch  # epoch 0 was not redone
    assert [(r.method, r.seed) for r in done] == [("pgnas", 0), (bench.FIXED_RATE, 0)]
    assert (out / "pgnas/seed1/retrain.json").exists() and not (out / "pgnas/seed1/retrain-fixed-rate.json").exists()
    assert not (out / "table.md").exists()

    # Run again: finished jobs are read back, not recomputed; only PGNAS seed 1's fixed-rate pick and the random
    # baseline are left to train.
    trained: list[str] = []

    def counting_retrain(space, genotype, *args, **kwargs):
        trained.append(genotype.space)
        return real_retrain(space, genotype, *args, **kwargs)

    monkeypatch.setattr(bench, "retrain", counting_retrain)
    results = bench.run_benchmark("digits", "cpu", out, device="cpu", methods=("pgnas", "random"),
                                  results_dir=tmp_path / "results", progress=False)
    assert trained == ["branches", "cells", "cells"]
    assert [(r.method, r.seed) for r in results] == [
        ("pgnas", 0), (bench.FIXED_RATE, 0), ("pgnas", 1), (bench.FIXED_RATE, 1), ("random", 0), ("random", 1)]
    assert results[:2] == done
    assert all(0.0 <= r.test_accuracy <= 1.0 and r.params > 0 and r.retrain_seconds > 0 for r in results)
    assert results[0].supernet_params > results[0].params  # PGNAS's selected network is pruned
    assert results[4].genotype != results[5].genotype  # one random architecture per seed
    # BMA over the PGNAS posterior and its selected pair, scored with the super-network's weights; the selected
    # pair's accuracy is the one the search reported
    summary = json.loads((out / "pgnas/seed0/search/summary.json").read_text())
    assert set(results[0].posterior) == {"bma", "inherited"} and results[1].posterior == results[4].posterior == {}
    assert results[0].posterior["inherited"]["accuracy"] == pytest.approx(summary["test_accuracy"])

    # The fixed-rate row is the pick of the search's baseline super-network, retrained under the same recipe.
    for fixed, seed in ((results[1], 0), (results[3], 1)):
        search_dir = out / "pgnas" / f"seed{seed}" / "search"
        summary = json.loads((search_dir / "summary.json").read_text())
        genotype = load_genotype(search_dir / summary["baseline_genotype"])
        assert fixed.genotype == bench._summarise(genotype)
        assert fixed.params == count_params(get_space("branches", genotype.config).build(genotype))
        assert fixed.extra["test_accuracy"] == summary["baseline_test_accuracy"]
        assert fixed.extra["drop_rate"] == TINY_METHODS["pgnas"]["options"]["baseline_drop_rate"]

    with open(out / "table.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [row["method"] for row in table] == ["pgnas", bench.FIXED_RATE, "random"]
    for row, runs in ((table[0], results[0:3:2]), (table[1], results[1:4:2])):
        accuracies = [r.test_accuracy for r in runs]
        assert float(row["test_acc_mean"]) == pytest.approx(sum(accuracies) / 2, abs=1e-4)
        assert float(row["test_acc_best"]) == pytest.approx(max(accuracies), abs=1e-4)
        assert row["seeds"] == "2" and row["device"] == "cpu" and row["space"] == "branches"
        assert row["search_epochs"] == str(tiny_budget.search_epochs)
    bma = [r.posterior["bma"]["nll"] for r in results[0:3:2]]
    assert float(table[0]["bma_nll"]) == pytest.approx(sum(bma) / 2, abs=1e-4) and table[1]["bma_nll"] == ""
    markdown = (out / "table.md").read_text()
    assert "| pgnas | branches | 2 |" in markdown and "random seed 1" in markdown
    assert f"| {bench.FIXED_RATE} | branches | 2 |" in markdown
    inherited = f"- {bench.FIXED_RATE} seed 1: {100 * results[3].extra['test_accuracy']:.2f} %"
    assert inherited in markdown
    assert (tmp_path / "results" / "digits-cpu.md").read_text() == markdown
    assert (out / "table_accuracy_vs_params.png").stat().st_size > 0
    assert (tmp_path / "results" / "digits-cpu_accuracy_vs_params.png").stat().st_size > 0

    # A folder started under another budget is refused, and nothing in it is touched.
    monkeypatch.setitem(bench.BUDGETS, "cpu", dataclasses.replace(tiny_budget, search_epochs=3))
    with pytest.raises(ConfigError, match="another budget"):
        bench.run_benchmark("digits", "cpu", out, device="cpu", methods=("random",), progress=False)
    assert (out / "table.md").read_text() == markdown


def test_bench_command_line(tiny_budget: bench.Budget, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "fashion-mnist", "--budget", "cpu", "--methods", "darts", "--out", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err


@pytest.mark.parametrize("budget_name", ["cpu", "paper"])
def test_every_method_builds_under_each_budget(budget_name: str) -> None:
    import torch

    from bayesnas.data import DataBundle, Split
    from bayesnas.methods import get_method

    def split(n: int) -> Split:
        return Split(torch.randn(n, 1, 28, 28), torch.arange(n) % 10)

    fashion_shaped = DataBundle("fashion-mnist", split(40), split(20), split(20), 10, 1, 28, "random tensors")
    budget = bench.BUDGETS[budget_name]
    for method in ("pgnas", "vinnas", "gdas", "pcnas"):
        config = budget.search_config(method, 0)
        searcher = get_method(method)(config, fashion_shaped, torch.device("cpu"))  # validates space and options
        # the budget's settings reached the method: its search schedule and its own options
        own = budget.methods[method]
        assert (searcher.config.epochs, searcher.config.batch_size, searcher.config.data_fraction) == (
            own.get("epochs", budget.search_epochs), own.get("batch_size", budget.search_batch_size),
            own.get("data_fraction", budget.search_fraction))
        for key, value in own.get("options", {}).items():
            assert getattr(searcher.options, key) == value, (method, key)
        (phase, *_) = searcher.phases()
        loss, right = phase.loss(fashion_shaped.train.x[:4], fashion_shaped.train.y[:4], torch.arange(4))
        # one step's loss, as the loop takes it: a finite positive number whose gradient reaches the weights
        assert torch.isfinite(loss) and float(loss) > 0 and 0 <= right <= 4, method
        loss.backward()
        grads = [p.grad for group in phase.param_groups for p in group["params"] if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads), method
