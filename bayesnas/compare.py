"""Place every method's pick in a ground-truth population, and measure how well each super-network ranks it.

``run_compare`` runs each method's search on the population's space, data split and each seed (its own preset for
the data set, moved to the space; the split fixed to the population's with ``data_seed``, so no search sees the
population's test images; the from-scratch retraining left out, since the pick is trained under the population's
recipe instead). For each pick it reports the stand-alone test accuracy from the population (trained and added
there when absent), its percentile in the population and the regret (population best, chosen by validation
accuracy, minus the pick's test accuracy), and the search's seconds. For every method with a super-network it
evaluates each population genotype with inherited weights (:meth:`~bayesnas.methods.SearchMethod.inherited_accuracy`,
validation split) and reports Kendall's tau and Spearman's rho against the stand-alone test accuracy, with
percentile-bootstrap 95 % intervals over genotypes (Yu et al., "Evaluating the search phase of neural architecture
search", ICLR 2020, Sec. 4). Random search runs as a method at the same compute: as many candidates as fit in the
other methods' mean search time, each trained for its preset's epochs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import statistics
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from bayesnas.config import PRESETS, ConfigError, SearchConfig, on_space, preset
from bayesnas.diagnostics import save_figure
from bayesnas.distributed import World, world_of
from bayesnas.infer import load_trained, resolve_device, run_search
from bayesnas.io import atomic_write_text, write_json
from bayesnas.methods import METHODS
from bayesnas.population import Population, add_members, csv_text, genotype_key, in_space, load_population_data
from bayesnas.population import write_report as write_population_report
from bayesnas.spaces.genotype import Genotype, load_genotype

COMPARE_FILE = "compare.json"
CLAIMS_DIR = ".claims"


def rank_correlation(x: Sequence[float], y: Sequence[float], resamples: int = 1000,
                     seed: int = 0) -> dict[str, Any]:
    """Kendall's tau-b and Spearman's rho of ``x`` and ``y``, each with a percentile-bootstrap 95 % interval
    (resampling pairs; resamples where a coefficient is undefined, e.g. constant, are skipped); None where
    undefined."""
    from scipy import stats

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)

    def coefficients(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant input: scipy warns and returns nan
            return float(stats.kendalltau(a, b).statistic), float(stats.spearmanr(a, b).statistic)

    def clean(v: float) -> float | None:
        return v if math.isfinite(v) else None

    tau, rho = coefficients(x, y) if len(x) >= 2 else (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    draws = [coefficients(x[i], y[i]) for i in (rng.integers(0, len(x), len(x)) for _ in range(resamples))] \
        if len(x) >= 3 else []

    def interval(k: int) -> list[float] | None:
        values = [d[k] for d in draws if math.isfinite(d[k])]
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else None

    return {"n": len(x), "kendall_tau": clean(tau), "kendall_tau_95": interval(0), "spearman_rho": clean(rho),
            "spearman_rho_95": interval(1)}


def method_config(method: str, population: Population, seed: int, overrides: dict[str, Any] | None = None
                  ) -> SearchConfig:
    """``method``'s preset for the population's data set (its digits preset otherwise) on the population's space
    and space options, its split and seed ``seed``, without the final retraining (PC-NAS: with the warm-up left
    to fill the preset's epochs, ``epochs - L x interval_epochs``, for the space's L decisions); then
    ``overrides``."""
    spec = population.spec.config
    name = f"{method}-{spec.dataset}" if f"{method}-{spec.dataset}" in PRESETS else f"{method}-digits"
    if name not in PRESETS:
        raise ConfigError(f"method {method!r} has no preset to start from (looked for {name!r})")
    config = on_space(preset(name).merged({"dataset": spec.dataset}), spec.space_name)
    known = {f.name for f in dataclasses.fields(METHODS[method].options_type)}
    options: dict[str, Any] = {k: 0 for k in ("retrain_epochs",) if k in known}
    if "interval_epochs" in known:  # PC-NAS: the preset's warm-up was sized for its own space's number of decisions;
        options["warmup_epochs"] = None  # here the warm-up is what the epochs leave after one interval per decision
    config = dataclasses.replace(config, space=dict(spec.space), seed=seed, data_seed=spec.split_seed,
                                 val_fraction=spec.val_fraction, test_fraction=spec.test_fraction,
                                 data_fraction=spec.data_fraction, precision=spec.precision,
                                 channels_last=spec.channels_last)
    return config.merged({"options": options}).merged(overrides or {})


def method_overrides(overrides: dict[str, Any], methods: Sequence[str], epochs: int | None = None
                     ) -> dict[str, dict[str, Any]]:
    """``overrides`` (per compared method, options over its configuration, e.g. from ``bench compare --config``)
    checked, with ``epochs`` (when given) set for every method."""
    for method, options in overrides.items():
        if method not in methods:
            raise ConfigError(f"the overrides name {method!r}, which is not compared ({', '.join(methods)})")
        if not isinstance(options, dict):
            raise ConfigError(f"the overrides of {method!r} must be a JSON object of its options")
    if epochs is None:
        return dict(overrides)
    return {**overrides, **{m: {**overrides.get(m, {}), "epochs": epochs} for m in methods}}


def run_compare(population_dir: str | Path, out: str | Path, *, methods: Sequence[str], seeds: int = 1,
                overrides: dict[str, dict[str, Any]] | None = None, device: str | torch.device = "auto",
                data_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Search with each method and seed into ``out/<method>/seed<k>`` (finished searches are reused), place the
    picks in the population (adding missing ones), rank the population with each super-network; writes and returns
    ``compare.json`` plus ``compare.md``, ``compare.csv`` and the two plots. ``overrides``: per method, options
    applied over its configuration (e.g. ``{"gdas": {"epochs": 5}}``)."""
    population = Population(population_dir)
    if not methods:
        raise ConfigError(f"no method to compare; name some of {', '.join(METHODS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if seeds < 1:
        raise ConfigError("compare needs seeds >= 1")
    if not population.rows:
        raise ConfigError(f"{population.folder} holds no trained genotype yet; build it with bayesnas bench "
                          "population")
    out = Path(out)
    overrides = method_overrides(overrides or {}, methods)
    searched = [m for m in methods if m != "random"]
    configs = {(m, s): method_config(m, population, s, overrides.get(m)) for m in searched for s in range(seeds)}
    for config in configs.values():  # every configuration valid before anything runs
        try:
            METHODS[config.method].options_type(**config.options)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"method {config.method!r}: {err}") from None
    with world_of(resolve_device(device)) as (world, device):
        data = load_population_data(population.spec, device, data_dir)
        space = population.spec.space(data)
        runs = _searches(configs, out, device, world, data_dir, progress)
        if "random" in methods:
            budget = statistics.fmean(r["search_seconds"] for r in runs.values()) if runs else None
            chances = {("random", s): _random_config(population, s, budget, overrides.get("random"))
                       for s in range(seeds)}
            configs.update(chances)
            runs.update(_searches(chances, out, device, world, data_dir, progress))
        picks = {k: in_space(space, load_genotype(out / k[0] / f"seed{k[1]}" / "genotype.json")) for k in runs}
        pop_seeds = max(len(e["runs"]) for e in population.genotypes().values())
        add_members(population.folder, population.spec, list(picks.values()), pop_seeds, data, world,
                    progress and world.is_main, desc="picks")
        population = Population(population.folder)
        if world.is_main:
            write_population_report(population)  # the picks are members now
        table = population.table()
        members = [t["key"] for t in table]
        standalone = [t["test_accuracy"] for t in table]
        entries = population.genotypes()  # in the table's order
        genotypes = [Genotype(space.name, space.config.to_dict(), entries[key]["choices"]) for key in members]
        ranking = {}
        for method in searched:
            trained = load_trained(configs[method, 0], out / method / "seed0", data, device)
            if trained.supernet_state() is None:
                continue
            mine = {i: trained.inherited_accuracy(g, data.val) for i, g in enumerate(genotypes) if world.owns(i)}
            gathered = world.gather(mine)
            supernet = [gathered[i] for i in range(len(genotypes))]
            ranking[method] = {**rank_correlation(supernet, standalone), "supernet_val_accuracy": supernet}
    result = _result(population, runs, picks, ranking, members, standalone)
    if world.is_main:
        write_json(out / COMPARE_FILE, result)
        write_report(out, result)
    return result


def _searches(configs: dict[tuple[str, int], SearchConfig], out: Path, device: torch.device, world: World,
              data_dir: str | Path | None, progress: bool) -> dict[tuple[str, int], dict[str, Any]]:
    """The summaries of the searches ``configs`` into ``out/<method>/seed<k>``, run (or resumed) where unfinished.

    Under ``torchrun`` whole searches are dealt to the ranks, each run in one process (so a search is the one a
    single process runs): in ``configs``' order, a rank takes the next unfinished search nobody has claimed,
    claiming it by creating its file in a claims folder of this launch (``out/.claims/<token>``, removed at the
    end), so a rank that finishes early takes the next one."""
    folders = {key: out / key[0] / f"seed{key[1]}" for key in configs}
    claims = None
    if world.distributed:
        claims = out / CLAIMS_DIR / world.broadcast(uuid.uuid4().hex)
        if world.is_main:
            shutil.rmtree(out / CLAIMS_DIR, ignore_errors=True)  # a killed launch's claims
            claims.mkdir(parents=True)
        world.barrier()
    for key, config in configs.items():
        run_dir = folders[key]
        if (run_dir / "summary.json").exists() or claims is not None and not _claim(claims / f"{key[0]}-{key[1]}"):
            continue
        run_search(config, run_dir, device=device, resume=(run_dir / "config.json").exists(), data_dir=data_dir,
                   progress=progress and world.is_main, alone=True)
    world.barrier()
    if claims is not None and world.is_main:
        shutil.rmtree(out / CLAIMS_DIR, ignore_errors=True)
    return {key: json.loads((folder / "summary.json").read_text()) for key, folder in folders.items()}


def _claim(path: Path) -> bool:
    """Whether this process created ``path`` (and so owns the work it names)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


def _random_config(population: Population, seed: int, budget: float | None,
                   overrides: dict[str, Any] | None) -> SearchConfig:
    """Random search with as many candidates as fit in ``budget`` seconds: each candidate trains for the preset's
    epochs, costed from the population's mean seconds per training (its recipe's epochs)."""
    config = method_config("random", population, seed, overrides)
    if budget is not None and not (overrides or {}).get("options", {}).get("num_samples"):
        per_epoch = statistics.fmean(r["seconds"] for r in population.rows) / population.spec.recipe.epochs
        samples = max(1, round(budget / (per_epoch * config.epochs)))
        config = config.merged({"options": {"num_samples": samples}})
    return config


def _result(population: Population, runs: dict[tuple[str, int], dict[str, Any]], picks: dict, ranking: dict,
            members: list[str], standalone: list[float]) -> dict[str, Any]:
    table = {t["key"]: t for t in population.table()}
    best = max(table.values(), key=lambda t: t["val_accuracy"])
    rows = []
    for method in dict.fromkeys(m for m, _ in runs):
        seeds = sorted(s for m, s in runs if m == method)
        accs = [table[genotype_key(picks[method, s])]["test_accuracy"] for s in seeds]
        percentiles = [population.percentile(a) for a in accs]
        rows.append({
            "method": method, "seeds": len(seeds), "pick_test_accuracy": statistics.fmean(accs),
            "pick_test_accuracy_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "percentile": statistics.fmean(percentiles), "regret": best["test_accuracy"] - statistics.fmean(accs),
            "search_seconds": statistics.fmean(runs[method, s]["search_seconds"] for s in seeds),
            "per_seed": [{"seed": s, "test_accuracy": a, "percentile": p, "genotype": genotype_key(picks[method, s]),
                          "params": table[genotype_key(picks[method, s])]["params"]}
                         for s, a, p in zip(seeds, accs, percentiles, strict=True)],
            **({f"ranking_{k}": v for k, v in ranking[method].items() if k != "supernet_val_accuracy"}
               if method in ranking else {}),
        })
    return {"population": str(population.folder), "space": population.spec.space_name,
            "dataset": population.spec.config.dataset, "population_size": len(table),
            "population_best_by_validation": {"key": best["key"], "test_accuracy": best["test_accuracy"]},
            "methods": rows, "ranking": {m: {"members": members, "standalone_test_accuracy": standalone, **r}
                                         for m, r in ranking.items()}}


def _interval(value: Any) -> str:
    return "n/a" if value is None else f"[{value[0]:+.2f}, {value[1]:+.2f}]"


def write_report(out: Path, result: dict[str, Any]) -> None:
    """``compare.md``, ``compare.csv``, ``pick_percentiles.png`` and ``supernet_vs_standalone.png``."""
    rows = result["methods"]
    csv_rows = [{k: v for k, v in r.items() if k != "per_seed"} for r in rows]
    atomic_write_text(out / "compare.csv", csv_text([{k: json.dumps(v) if isinstance(v, list) else v
                                                 for k, v in r.items()} for r in csv_rows]))

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.3f}"

    lines = [
        f"# Search quality on the {result['space']} space, {result['dataset']}", "",
        f"Population: {result['population']} ({result['population_size']} genotypes; best by validation: test "
        f"{result['population_best_by_validation']['test_accuracy']:.4f}).", "",
        "| method | seeds | pick test accuracy | percentile | regret | search s | Kendall tau (95 %) | "
        "Spearman rho (95 %) |", "|---|---|---|---|---|---|---|---|",
        *(f"| {r['method']} | {r['seeds']} | {r['pick_test_accuracy']:.4f} +- {r['pick_test_accuracy_sd']:.4f} | "
          f"{r['percentile']:.1f} | {r['regret']:+.4f} | {r['search_seconds']:.0f} | "
          f"{fmt(r.get('ranking_kendall_tau'))} {_interval(r.get('ranking_kendall_tau_95'))} | "
          f"{fmt(r.get('ranking_spearman_rho'))} {_interval(r.get('ranking_spearman_rho_95'))} |" for r in rows), "",
        "Percentile: share of the population with lower mean stand-alone test accuracy (ties count half). Regret: "
        "the population's best-by-validation genotype's test accuracy minus the pick's. Ranking: each population "
        "genotype's accuracy with the seed-0 super-network's inherited weights (validation, BatchNorm on batch "
        "statistics) against its stand-alone test accuracy; intervals are percentile-bootstrap over genotypes.", "",
    ]
    atomic_write_text(out / "compare.md", "\n".join(lines))
    fig = Figure(figsize=(1.5 + 1.1 * len(rows), 3.4))
    ax = fig.add_subplot()
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r["per_seed"]), [p["percentile"] for p in r["per_seed"]], color="tab:blue", s=18)
        ax.plot([i - 0.25, i + 0.25], [r["percentile"]] * 2, color="black")
    ax.set(xticks=range(len(rows)), xticklabels=[r["method"] for r in rows], ylim=(0, 100),
           ylabel="pick percentile in the population", title="where each method's pick lands (dots: seeds)")
    save_figure(fig, out / "pick_percentiles.png")
    ranking = result["ranking"]
    fig = Figure(figsize=(1 + 3.2 * max(len(ranking), 1), 3.4))
    for i, (method, r) in enumerate(ranking.items()):
        ax = fig.add_subplot(1, len(ranking), i + 1)
        ax.scatter(r["supernet_val_accuracy"], r["standalone_test_accuracy"], s=12, alpha=0.7)
        ax.set(xlabel="super-network accuracy (inherited)", ylabel="stand-alone test accuracy",
               title=f"{method}: tau {fmt(r['kendall_tau'])}")
    save_figure(fig, out / "supernet_vs_standalone.png")
