"""``bayesnas bench fashion-mnist``: every method searched, then retrained from scratch, under one budget.

For each method and seed the benchmark runs a search (:func:`bayesnas.infer.run_search`, the methods' own
retraining turned off), then retrains the selected genotype from scratch on the full training set with one
shared :class:`~bayesnas.training.TrainRecipe`; the random-search baseline of VINNAS (Table II, after DARTS)
retrains uniformly random architectures of the cell space under the same recipe. PGNAS's search also trains
the fixed-drop-rate super-network of its "Random" baseline (Zhou et al., AAAI 2020, Table 3); that baseline's
pick is retrained under the same recipe as its own row, ``pgnas-fixed-rate``. The results are a Markdown
table and a CSV (``table.md``, ``table.csv``).

The run folder is resumable at every level: ``OUT/<method>/seed<k>/search`` is an ordinary search run folder
(continued from its last epoch checkpoint), and ``OUT/<method>/seed<k>/retrain.json`` (for PGNAS's fixed-rate
baseline also ``retrain-fixed-rate.json``) marks a finished retraining, so a half-finished benchmark picks up
where it stopped. ``OUT/budget.json`` pins the budget: a folder started under another budget is refused.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bayesnas.api import predict
from bayesnas.config import ConfigError, SearchConfig
from bayesnas.data import load_dataset
from bayesnas.infer import resolve_device, run_search
from bayesnas.io import atomic_write, write_json
from bayesnas.spaces import Genotype, get_space, load_genotype
from bayesnas.spaces.profile import count_params
from bayesnas.training import TrainRecipe, retrain

RANDOM = "random"
BMA_SAMPLES = 16
"""Networks drawn from each search's posterior for the BMA columns."""
"""The random-search baseline's row name."""
FIXED_RATE = "pgnas-fixed-rate"
"""The row of PGNAS's fixed-rate baseline: the pick of the super-network trained with one hand-set drop rate
(PGNAS Table 3, "Random"), retrained like every other row. Produced by the ``pgnas`` jobs."""


@dataclass(frozen=True)
class Budget:
    """What every method gets: the same seeds, search data and epochs, cells and channels, retraining recipe."""

    name: str
    dataset: str
    seeds: tuple[int, ...]
    search_fraction: float
    """Fraction of the training images each search sees (the retraining uses all of them)."""
    search_epochs: int
    search_batch_size: int
    cells: dict[str, Any]
    """The cell space of VINNAS, GDAS and the random baseline (layout, states, channels, eval_channels, ...)."""
    methods: dict[str, dict[str, Any]]
    """Per method: ``SearchConfig`` fields (``space``, ``options``, ``lr``, ...) over the shared ones."""
    recipe: TrainRecipe
    description: str = ""

    def search_config(self, method: str, seed: int) -> SearchConfig:
        settings = self.methods[method]
        base = SearchConfig(method=method, dataset=self.dataset, seed=seed, epochs=self.search_epochs,
                            batch_size=self.search_batch_size, data_fraction=self.search_fraction,
                            shift=self.recipe.shift, flip=self.recipe.flip)
        return base.merged(settings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The cell space of the VINNAS paper's Fashion-MNIST search (Sec. V-A: NRRN cells, 3 states).
_FASHION_CELLS = {"in_channels": 1, "layout": "NRRN", "states": 3}

BUDGETS: dict[str, Budget] = {
    # Finishes within 2 hours on 2 CPU cores: searches on 10 % of the images for 5 epochs, 28x28 inputs halved by
    # a stride-2 stem, search channels 8, retraining with channels 16 (2x) for 5 epochs on all 54,000 training
    # images. Every method keeps its own space (PGNAS branches, PC-NAS chain, GDAS and VINNAS cells).
    "cpu": Budget(
        name="cpu", dataset="fashion-mnist", seeds=(0, 1), search_fraction=0.1, search_epochs=5,
        search_batch_size=128,
        cells={**_FASHION_CELLS, "channels": 8, "eval_channels": 16, "stem_stride": 2},
        methods={
            "pgnas": {"lr": 0.05, "space": {"stem_channels": 32, "stem_stride": 2, "widths": [32, 64],
                                            "depths": [1, 1], "kernel_sizes": [1, 3, 5]},
                      "options": {"temperature": 0.2, "init_drop_rate": 0.1, "prior_precision": 150.0,
                                  "kl_dataset_size": 50000, "drop_rate_lr": 0.5, "num_candidates": 20,
                                  "baseline_drop_rate": 0.3}},
            # gamma_entropy is Eq. 8's gamma_3: 0.05 x N, N = 2,700 (the architecture half of 10 % of the images)
            "vinnas": {"lr": 3e-3, "weight_decay": 0.0,
                       "options": {"warmup_epochs": 1, "arch_lr": 0.02, "gamma_w": 0.5, "gamma_alpha": 0.5,
                                   "gamma_entropy": 135.0, "label_smoothing": 0.1, "retrain_epochs": 0}},
            "gdas": {"lr": 0.025, "lr_min": 0.001, "nesterov": False, "weight_decay": 3e-4,
                     "options": {"tau_max": 10.0, "tau_min": 1.0, "warmup_epochs": 1, "arch_lr": 0.003,
                                 "retrain_epochs": 0}},
            "pcnas": {"lr": 0.1, "lr_min": 5e-4, "weight_decay": 5e-4, "epochs": 7,
                      "space": {"stem_channels": 16, "stem_stride": 2, "first_block_channels": 0,
                                "widths": [16, 32, 64], "depths": [2, 3, 2], "strides": [1, 2, 2],
                                "head_channels": 0, "ops": "small", "transition_op": "MBConv_3_3"},
                      "options": {"pool_size": 5, "num_evaluations": 10, "interval_epochs": 1,
                                  "eval_batch_size": 128, "retrain_epochs": 0}},
        },
        recipe=TrainRecipe(epochs=5, batch_size=128, lr=0.05, weight_decay=3e-4, shift=1, flip=True),
        description="2 h on 2 CPU cores",
    ),
    # The VINNAS paper's Fashion-MNIST settings (Sec. V-A): NRRN cells with 3 states, 50 search epochs on 50 % of
    # the data, retraining 200 epochs with 4x the channels (8 -> 32). For a GPU.
    "paper": Budget(
        name="paper", dataset="fashion-mnist", seeds=(0, 1, 2), search_fraction=0.5, search_epochs=50,
        search_batch_size=256,
        cells={**_FASHION_CELLS, "channels": 8, "eval_channels": 32},
        methods={
            "pgnas": {"lr": 0.05, "space": {"stem_channels": 32, "widths": [32, 64, 128], "depths": [2, 2, 2],
                                            "kernel_sizes": [1, 3, 5]},
                      "options": {"temperature": 0.2, "init_drop_rate": 0.1, "prior_precision": 150.0,
                                  "kl_dataset_size": 500000, "num_candidates": 300, "baseline_drop_rate": 0.3}},
            # gamma_entropy: 0.05 x N, N = 13,500 (the architecture half of 50 % of the images)
            "vinnas": {"lr": 3e-3, "weight_decay": 0.0,
                       "options": {"warmup_epochs": 12, "arch_lr": 0.005, "gamma_w": 0.3, "gamma_alpha": 0.3,
                                   "gamma_entropy": 675.0, "label_smoothing": 0.1, "retrain_epochs": 0}},
            "gdas": {"lr": 0.025, "lr_min": 0.001, "nesterov": False, "weight_decay": 3e-4,
                     "options": {"tau_max": 10.0, "tau_min": 1.0, "arch_lr": 3e-4, "retrain_epochs": 0}},
            "pcnas": {"lr": 0.1, "lr_min": 5e-4, "weight_decay": 1e-4,
                      "space": {"stem_channels": 16, "stem_stride": 1, "first_block_channels": 0,
                                "widths": [24, 48, 96], "depths": [3, 4, 3], "strides": [1, 2, 2],
                                "head_channels": 0, "ops": "small", "transition_op": "MBConv_3_3"},
                      "options": {"pool_size": 5, "num_evaluations": 100, "interval_epochs": 5,
                                  "eval_batch_size": 256, "retrain_epochs": 0}},
        },
        recipe=TrainRecipe(epochs=200, batch_size=256, lr=0.05, weight_decay=3e-4, shift=2, flip=True),
        description="the VINNAS paper's Fashion-MNIST settings, for a GPU",
    ),
}
for _budget in BUDGETS.values():  # GDAS and VINNAS search the budget's cells; op sets are the methods' own
    _budget.methods["vinnas"]["space"] = {**_budget.cells, "ops": "vinnas"}
    _budget.methods["gdas"]["space"] = {**_budget.cells, "ops": "gdas"}

METHOD_ORDER = ("pgnas", "vinnas", "gdas", "pcnas", RANDOM)
ROW_ORDER = ("pgnas", FIXED_RATE, "vinnas", "gdas", "pcnas", RANDOM)
BENCHMARKS = ("fashion-mnist",)


@dataclass
class JobResult:
    """One (method, seed): the retrained architecture's figures and the costs."""

    method: str
    seed: int
    test_accuracy: float
    val_accuracy: float
    params: int
    retrain_seconds: float
    search_seconds: float = 0.0
    supernet_params: int | None = None
    pruned_params: int | None = None
    genotype: str = ""
    """The architecture in one line."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Figures of the search's own ``summary.json`` (on its fraction of the data: the super-network's accuracy, or
    PGNAS's selected pair's with the weights it inherits, no retraining), for reference."""
    posterior: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Test scores (accuracy, NLL, Brier, ECE) with the search's super-network weights: ``bma``, the average over
    :data:`BMA_SAMPLES` networks drawn from its posterior, and ``inherited``, the selected architecture
    (:func:`bayesnas.api.predict`); empty for random search."""


def get_budget(dataset: str, name: str) -> Budget:
    if dataset not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {dataset!r}; choose one of: {', '.join(BENCHMARKS)}")
    if name not in BUDGETS:
        raise ConfigError(f"unknown budget {name!r}; choose one of: {', '.join(BUDGETS)}")
    return BUDGETS[name]


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing or unreadable (that step is then done again)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _pin_budget(out: Path, budget: Budget) -> None:
    """Write ``budget.json``, or check that a folder being continued was started under the same budget."""
    saved = out / "budget.json"
    data = json.loads(json.dumps(budget.to_dict()))
    if saved.exists() and _read_json(saved) != data:
        raise ConfigError(f"{out} holds a benchmark run with another budget (see {saved}); choose another `out`")
    out.mkdir(parents=True, exist_ok=True)
    write_json(saved, data)


def run_benchmark(dataset: str, budget_name: str, out: str | Path, *, device: str | torch.device = "auto",
                  data_dir: str | Path | None = None, methods: tuple[str, ...] = METHOD_ORDER,
                  results_dir: str | Path | None = None, progress: bool = True,
                  on_job: Callable[[JobResult], None] | None = None) -> list[JobResult]:
    """Run (or continue) the benchmark into ``out`` and write ``table.md`` / ``table.csv`` there (and, with
    ``results_dir``, as ``<dataset>-<budget>.md`` / ``.csv`` there too)."""
    budget = get_budget(dataset, budget_name)
    if not methods:
        raise ConfigError(f"no method to run; name some of {', '.join(METHOD_ORDER)}")
    unknown = [m for m in methods if m not in METHOD_ORDER]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from: {', '.join(METHOD_ORDER)}")
    out = Path(out)
    device = resolve_device(device)
    _pin_budget(out, budget)
    results = []
    jobs = [(m, s) for m in methods for s in budget.seeds]
    bar = tqdm(jobs, desc=f"bench {dataset} ({budget.name})", disable=not progress, dynamic_ncols=True)
    data_by_seed: dict[int, Any] = {}  # the retraining data (all training images), split by each seed
    for method, seed in bar:
        bar.set_postfix(method=method, seed=seed)
        if seed not in data_by_seed:
            data_by_seed[seed] = load_dataset(budget.dataset, data_dir=data_dir, seed=seed).to(device)
        for result in _run_job(budget, method, seed, out / method / f"seed{seed}", data_by_seed[seed], device,
                               data_dir, progress):
            results.append(result)
            if on_job is not None:
                on_job(result)
    bar.close()
    write_tables(out, budget, results, str(device), (Path(results_dir),) if results_dir else ())
    return results


def _run_job(budget: Budget, method: str, seed: int, job: Path, data: Any, device: torch.device,
             data_dir: str | Path | None, progress: bool) -> list[JobResult]:
    """The job's retrained result(s): one, or for PGNAS also its fixed-rate baseline's (when the search has one)."""
    run_dir = job / "search"
    search: dict[str, Any] = {}
    done = _read_json(job / "retrain.json")
    if done is None:
        job.mkdir(parents=True, exist_ok=True)
        if method == RANDOM:
            space = get_space("cells", {"in_channels": data.in_channels, "num_classes": data.num_classes,
                                        **budget.cells, "ops": "vinnas"})
            genotype = space.random_genotype(torch.Generator().manual_seed(seed))
            genotype.save(job / "genotype.json")
        else:
            search = _read_json(run_dir / "summary.json") or run_search(
                budget.search_config(method, seed), run_dir, device=device,
                resume=(run_dir / "config.json").exists(), data_dir=data_dir, progress=progress)
            genotype = load_genotype(run_dir / search["genotype"])
        inherited = {k: search[k] for k in ("test_accuracy", "log10_effective_architectures_last", "params",
                                            "pruned_fraction") if k in search}
        posterior = {}
        if method != RANDOM:
            scores = predict(run_dir, samples=BMA_SAMPLES, split="test", device=device, data_dir=data_dir)
            posterior = {k: scores[k] for k in ("bma", "inherited")}
        done = _retrain(method, seed, genotype, data, budget, search, inherited, job / "retrain.json", progress,
                        posterior)
    results = [JobResult(**done)]
    if method == "pgnas":
        fixed = _read_json(job / "retrain-fixed-rate.json")
        if fixed is None:
            search = search or _read_json(run_dir / "summary.json") or {}
            if "baseline_genotype" in search:  # a search run with the baseline switched off has none
                inherited = {"test_accuracy": search["baseline_test_accuracy"], "params": search["baseline_params"],
                             "drop_rate": search["baseline_drop_rate"]}
                fixed = _retrain(FIXED_RATE, seed, load_genotype(run_dir / search["baseline_genotype"]), data,
                                 budget, search, inherited, job / "retrain-fixed-rate.json", progress)
        if fixed is not None:
            results.append(JobResult(**fixed))
    return results


def _retrain(row: str, seed: int, genotype: Genotype, data: Any, budget: Budget, search: dict[str, Any],
             inherited: dict[str, Any], path: Path, progress: bool,
             posterior: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Retrain ``genotype`` from scratch under the budget's recipe; write and return the job result."""
    space = get_space(genotype.space, genotype.config)
    tic = time.perf_counter()
    net, val_acc, test_acc = retrain(space, genotype, data.train, data.val, data.test, budget.recipe, seed, progress)
    result = JobResult(
        method=row, seed=seed, test_accuracy=test_acc, val_accuracy=val_acc, params=count_params(net),
        retrain_seconds=round(time.perf_counter() - tic, 2),
        search_seconds=round(search.get("search_seconds", 0.0) + search.get("select_seconds", 0.0), 2),
        supernet_params=search.get("supernet_params"), pruned_params=search.get("pruned_params"),
        genotype=_summarise(genotype), extra=inherited, posterior=posterior or {})
    write_json(path, asdict(result))
    return asdict(result)


def _summarise(genotype: Genotype) -> str:
    """The architecture in one short line for the table."""
    if genotype.space == "cells":
        return "; ".join(f"{kind}: " + ", ".join(f"{op}<-{i}" for state in states for op, i in state)
                         for kind, states in genotype.choices.items())
    if genotype.space == "chain":
        return ", ".join(genotype.choices["ops"])
    if genotype.space == "branches":
        return ", ".join(f"{layer} " + "/".join(f"{b}:{len(idx)}" for b, idx in branches.items())
                         for layer, branches in genotype.choices.items())
    return json.dumps(genotype.choices)


# --------------------------------------------------------------------------------------------- tables

COLUMNS = ("method", "space", "seeds", "search_epochs", "test_acc_mean", "test_acc_sd", "test_acc_best", "params",
           "supernet_params", "pruned_params", "search_min", "retrain_min", "bma_acc", "bma_nll", "bma_ece",
           "inherited_acc", "inherited_nll", "inherited_ece", "device")
POSTERIOR_COLUMNS = {f"{who}_{short}": (who, key) for who in ("bma", "inherited")
                     for short, key in (("acc", "accuracy"), ("nll", "nll"), ("ece", "ece"))}
"""Table columns of :attr:`JobResult.posterior`: means over the seeds that have them."""


def table_rows(results: list[JobResult], budget: Budget, device: str) -> list[dict[str, Any]]:
    """One row per method: test accuracy mean, sd and best over seeds; mean parameters and wall times."""
    rows = []
    for method in [m for m in ROW_ORDER if any(r.method == m for r in results)]:
        runs = [r for r in results if r.method == method]
        acc = [r.test_accuracy for r in runs]
        searched = "pgnas" if method == FIXED_RATE else method
        space = "cells" if method in ("vinnas", "gdas", RANDOM) else (
            "branches" if searched == "pgnas" else "chain")
        rows.append({
            "method": method, "space": space, "seeds": len(runs),
            "search_epochs": budget.search_config(searched, 0).epochs if method != RANDOM else 0,
            "test_acc_mean": statistics.fmean(acc), "test_acc_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "test_acc_best": max(acc), "params": round(statistics.fmean(r.params for r in runs)),
            "supernet_params": runs[0].supernet_params,
            "pruned_params": (round(statistics.fmean(r.pruned_params for r in runs))
                              if all(r.pruned_params is not None for r in runs) else None),
            "search_min": statistics.fmean(r.search_seconds for r in runs) / 60,
            "retrain_min": statistics.fmean(r.retrain_seconds for r in runs) / 60,
            **{column: (statistics.fmean(r.posterior[who][key] for r in runs) if all(r.posterior for r in runs)
                        else None) for column, (who, key) in POSTERIOR_COLUMNS.items()},
            "device": device,
        })
    return rows


def write_tables(out: Path, budget: Budget, results: list[JobResult], device: str,
                 extra_dirs: tuple[Path, ...] = ()) -> None:
    rows = table_rows(results, budget, device)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else ("" if v is None else v))
                         for k, v in row.items()})
    markdown = render_markdown(rows, budget, results)
    for folder in (out, *extra_dirs):
        folder.mkdir(parents=True, exist_ok=True)
        stem = "table" if folder == out else f"{budget.dataset}-{budget.name}"
        atomic_write(folder / f"{stem}.csv", lambda fh: fh.write(buffer.getvalue().encode()))
        atomic_write(folder / f"{stem}.md", lambda fh: fh.write(markdown.encode()))
        plot_accuracy_vs_params(results, budget, folder / f"{stem}_accuracy_vs_params.png")


def plot_accuracy_vs_params(results: list[JobResult], budget: Budget, path: Path) -> None:
    """Every retrained pick (one marker per method, one point per seed; the random cells among them) by test
    accuracy against parameters, so that size is seen beside accuracy."""
    from matplotlib.figure import Figure

    from bayesnas.diagnostics import save_figure

    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    markers = "osD^vP*X"
    for i, method in enumerate(m for m in ROW_ORDER if any(r.method == m for r in results)):
        runs = [r for r in results if r.method == method]
        ax.scatter([r.params for r in runs], [100 * r.test_accuracy for r in runs], marker=markers[i % len(markers)],
                   s=36, label=method)
    ax.set(xscale="log", xlabel="parameters (retrained network)", ylabel="test accuracy (%)",
           title=f"{budget.dataset}, budget {budget.name}: accuracy vs size (points: seeds)")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _posterior_cell(row: dict[str, Any], who: str) -> str:
    if row[f"{who}_acc"] is None:
        return "-"
    return f"{100 * row[f'{who}_acc']:.2f} / {row[f'{who}_nll']:.3f} / {row[f'{who}_ece']:.3f}"


def render_markdown(rows: list[dict[str, Any]], budget: Budget, results: list[JobResult]) -> str:
    r = budget.recipe
    lines = [
        f"# {budget.dataset}, budget `{budget.name}` ({budget.description})",
        "",
        f"Seeds {', '.join(map(str, budget.seeds))}. Search: {budget.search_epochs} epochs on "
        f"{budget.search_fraction:.0%} of the training images, batch {budget.search_batch_size}; cells "
        f"{budget.cells['layout']} with {budget.cells['states']} states, C = {budget.cells['channels']} "
        f"(stem stride {budget.cells.get('stem_stride', 1)}). Retraining from scratch: all training images, "
        f"{r.epochs} epochs, batch {r.batch_size}, SGD lr {r.lr} cosine, wd {r.weight_decay}, shift {r.shift}, "
        f"flip {r.flip}, cell networks with C = {budget.cells['eval_channels']}. Test set: the official one.",
        "",
        "| method | space | search epochs | test acc. mean +- sd (%) | best (%) | params "
        "| pruned params (super-network) | search min/seed | retrain min/seed "
        "| BMA acc. (%) / NLL / ECE | inherited acc. (%) / NLL / ECE | device |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        pruned = "" if row["supernet_params"] is None else (
            f"{row['pruned_params']:,} of {row['supernet_params']:,}" if row["pruned_params"] is not None
            else f"- ({row['supernet_params']:,})")
        lines.append(
            f"| {row['method']} | {row['space']} | {row['search_epochs'] or '-'} "
            f"| {100 * row['test_acc_mean']:.2f} +- {100 * row['test_acc_sd']:.2f} "
            f"| {100 * row['test_acc_best']:.2f} | {row['params']:,} | {pruned} | {row['search_min']:.1f} "
            f"| {row['retrain_min']:.1f} | {_posterior_cell(row, 'bma')} | {_posterior_cell(row, 'inherited')} "
            f"| {row['device']} |")
    pgnas = [res for res in results if res.method in ("pgnas", FIXED_RATE)]
    if any(res.method == FIXED_RATE for res in pgnas):
        lines += ["", f"`{FIXED_RATE}`: PGNAS's \"Random\" baseline (Table 3): a second super-network of the same "
                  "space trained in the same search loop (same epochs and batches) with one fixed drop rate instead of "
                  "learned ones, sampled and scored like PGNAS (same number of candidates, best on validation); its "
                  "pick is retrained under the recipe above. The PGNAS search minutes cover both super-networks. "
                  "Test accuracy of the two picks with the weights they inherit from their super-networks (no "
                  "retraining, the search's data):", ""]
        lines += [f"- {res.method} seed {res.seed}: {100 * res.extra['test_accuracy']:.2f} %, "
                  f"{res.extra['params']:,} parameters" for res in pgnas if "test_accuracy" in res.extra]
    if any(row["bma_acc"] is not None for row in rows):
        lines += ["", f"BMA: predictions averaged over {BMA_SAMPLES} networks drawn from each search's posterior "
                  "(or proposal) with its super-network's weights; inherited: the selected architecture with the same "
                  "weights (VINNAS: its posterior-mean network); both on the official test set, means over seeds "
                  "(`bayesnas predict`)."]
    lines += ["", "Architectures found (per seed):", ""]
    lines += [f"- {res.method} seed {res.seed} ({100 * res.test_accuracy:.2f} %): {res.genotype}" for res in results]
    return "\n".join(lines) + "\n"
