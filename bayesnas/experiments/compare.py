"""Place every method's pick against a ground-truth population, beside random search at the same compute.

``run_compare`` runs each method's search on the population's space, data split and each search seed (its own
preset for the data set, moved to the space; the split fixed to the population's with ``data_seed``, so no search
sees the population's test images; the from-scratch retraining left out, since the pick is trained under the
population's recipe instead). The population is a fixed reference: a pick is matched to its member through its
canonical form, and a pick that is no member is trained under the reference's recipe and training seeds in the
comparison's own folder and placed, never added. For each pick it reports the reference's mean test accuracy, its
percentile among the members, the search's compute in trainings of a member (:mod:`bayesnas.compute`) and random
search's expected percentile at that compute, exact from the reference's trainings
(:mod:`bayesnas.experiments.chance`). Per method: the mean percentile with a bootstrap interval over search seeds, the
paired difference from random search with its interval and the chance of beating one random search. For every search
with a super-network it evaluates each member with inherited weights
(:meth:`~bayesnas.methods.SearchMethod.inherited_accuracy`, validation split) and reports Kendall's tau against the
members' mean test accuracies per super-network seed, summarised over seeds (Yu et al., "Evaluating the search phase of
neural architecture search", ICLR 2020, Sec. 4).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from bayesnas.compute import population_trainings
from bayesnas.config import PRESETS, ConfigError, SearchConfig, on_space, preset
from bayesnas.diagnostics import save_figure
from bayesnas.distributed import World, agree, work_claims, world_of
from bayesnas.experiments.chance import curve_table, random_search_chance
from bayesnas.experiments.population import (
    Population,
    add_members,
    choices_key,
    csv_text,
    in_space,
    load_population_data,
    network_key,
    noise_report,
    percentile_of,
    read_rows,
)
from bayesnas.infer import load_trained, resolve_device, run_search
from bayesnas.io import atomic_write_text, read_json, write_json
from bayesnas.methods import METHODS
from bayesnas.run_folder import RunFolderError, check_folder, config_diff, folder_in_use
from bayesnas.spaces import Genotype, load_genotype

COMPARE_FILE = "compare.json"
PLACED_FILE = "placed.jsonl"
"""The picks that are not members of the reference, trained under its recipe and seeds."""
RANKING_FILE = "supernet_ranking.json"


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


def preset_for(method: str, dataset: str) -> str:
    """The name of ``method``'s preset for ``dataset``: ``<method>-<dataset>`` where it exists, else the first
    preset of ``method`` that names ``dataset`` as its data set (``vinnas-fashion`` for ``fashion-mnist``), else
    ``<method>-digits``."""
    if f"{method}-{dataset}" in PRESETS:
        return f"{method}-{dataset}"
    named = [n for n, p in PRESETS.items() if p.get("method") == method and p.get("dataset") == dataset]
    name = named[0] if named else f"{method}-digits"
    if name not in PRESETS:
        raise ConfigError(f"method {method!r} has no preset to start from (looked for {name!r})")
    return name


def method_config(method: str, population: Population, seed: int, overrides: dict[str, Any] | None = None
                  ) -> SearchConfig:
    """``method``'s preset for the population's data set (:func:`preset_for`) on the population's space and space
    options, its split and seed ``seed``, without the final retraining (PC-NAS: with the warm-up left to fill the
    preset's epochs, ``epochs - L x interval_epochs``, for the space's L decisions; random search: its candidates
    trained under the population's recipe, as the population's members are); then ``overrides``."""
    spec = population.spec.config
    config = on_space(preset(preset_for(method, spec.dataset)).merged({"dataset": spec.dataset}), spec.space_name)
    known = {f.name for f in dataclasses.fields(METHODS[method].options_type)}
    options: dict[str, Any] = {k: 0 for k in ("retrain_epochs",) if k in known}
    if "interval_epochs" in known:  # PC-NAS: the preset's warm-up was sized for its own space's number of decisions;
        options["warmup_epochs"] = None  # here the warm-up is what the epochs leave after one interval per decision
    config = dataclasses.replace(config, space=dict(spec.space), seed=seed, data_seed=spec.split_seed,
                                 val_fraction=spec.val_fraction, test_fraction=spec.test_fraction,
                                 data_fraction=spec.data_fraction, precision=spec.precision,
                                 channels_last=spec.channels_last)
    if method == "random":
        recipe = population.spec.recipe
        config = dataclasses.replace(config, epochs=recipe.epochs, lr=recipe.lr, batch_size=recipe.batch_size)
    return config.merged({"options": options}).merged(overrides or {})


@dataclasses.dataclass(frozen=True)
class Compared:
    """One row of a comparison: a label (a method's name, or a variant's such as ``gdas-uniform-gate``), the method
    it runs, its number of search seeds and its options over the method's configuration."""

    label: str
    method: str
    seeds: int
    options: dict[str, Any]


ROW_KEYS = ("method", "seeds")
"""Keys of a row's overrides that are not configuration options."""


def method_overrides(overrides: dict[str, Any], methods: Sequence[str], epochs: int | None = None
                     ) -> dict[str, dict[str, Any]]:
    """``overrides`` (per compared label, options over its configuration, e.g. from ``bench compare --config``;
    ``method`` makes the label a variant of that method, ``seeds`` its own number of search seeds) checked, with
    ``epochs`` (when given) set for every label."""
    for label, options in overrides.items():
        if label not in methods:
            raise ConfigError(f"the overrides name {label!r}, which is not compared ({', '.join(methods)})")
        if not isinstance(options, dict):
            raise ConfigError(f"the overrides of {label!r} must be a JSON object of its options")
        if "method" in options and options["method"] not in METHODS:
            raise ConfigError(f"{label!r}: unknown method {options['method']!r}; choose from {', '.join(METHODS)}")
        seeds = options.get("seeds", 1)
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ConfigError(f"{label!r}: seeds must be an integer >= 1, got {seeds!r}")
    if epochs is None:
        return dict(overrides)
    return {**overrides, **{m: {**overrides.get(m, {}), "epochs": epochs} for m in methods}}


def compared(methods: Sequence[str], seeds: int, overrides: dict[str, dict[str, Any]]) -> list[Compared]:
    """The rows of a comparison: each label of ``methods`` with its method, seeds (``seeds`` unless its overrides
    give its own) and options."""
    if not methods:
        raise ConfigError(f"no method to compare; name some of {', '.join(METHODS)}")
    if seeds < 1:
        raise ConfigError("compare needs seeds >= 1")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"a method is named twice in {', '.join(methods)}")
    overrides = method_overrides(overrides, methods)
    unknown = [m for m in methods if m not in METHODS and "method" not in overrides.get(m, {})]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}, or define a "
                          "variant in the configuration file with its \"method\"")
    rows = []
    for label in methods:
        own = overrides.get(label, {})
        rows.append(Compared(label, own.get("method", label), own.get("seeds", seeds),
                             {k: v for k, v in own.items() if k not in ROW_KEYS}))
    if sum(r.method == "random" for r in rows) > 1:
        raise ConfigError("random search is compared once (its curve is exact; its trained row is a check)")
    return rows


def run_compare(population_dir: str | Path, out: str | Path, *, methods: Sequence[str], seeds: int = 1,
                overrides: dict[str, dict[str, Any]] | None = None, device: str | torch.device = "auto",
                data_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Search with each method (or variant) and seed into ``out/<label>/seed<k>`` (finished searches are reused),
    place the picks against the population, a fixed reference (picks that are not members are trained under its
    recipe and training seeds into ``out/placed.jsonl``, never added to it), set each beside random search at the
    same compute (:mod:`bayesnas.experiments.chance`) and rank the population with each super-network; writes and
    returns ``compare.json`` plus ``compare.md``, ``compare.csv`` and the plots. ``overrides``: per label, options
    applied over its configuration (e.g. ``{"gdas": {"epochs": 5}}``), ``method`` for a variant and ``seeds``."""
    population = Population(population_dir)
    rows = compared(methods, seeds, overrides or {})
    if not population.rows:
        raise ConfigError(f"{population.folder} holds no trained genotype yet; build it with bayesnas bench "
                          "population")
    out = Path(out)
    if out.resolve() == population.folder.resolve():
        raise ConfigError("the comparison's `out` must not be the population's folder (the reference stays as built)")
    check_folder(out, "compare", ours=(out / COMPARE_FILE).exists())
    searched = [r for r in rows if r.method != "random"]
    configs = {(r.label, s): method_config(r.method, population, s, r.options)
               for s in range(max((r.seeds for r in searched), default=0)) for r in searched if s < r.seeds}
    for config in configs.values():  # every configuration valid before anything runs
        try:
            METHODS[config.method].options_type(**config.options)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"method {config.method!r}: {err}") from None
    with world_of(resolve_device(device)) as (world, device):
        agree(world, {"population": str(population.folder), "out": str(out),
                      "rows": [dataclasses.asdict(r) for r in rows]}, "comparison")
        with folder_in_use(out, "compare", world):
            result = _compare(population, rows, configs, out, device, world, data_dir, progress)
    if world.is_main:
        write_json(out / COMPARE_FILE, result)
        write_report(out, result)
    return result


def _compare(population: Population, rows: list[Compared], configs: dict[tuple[str, int], SearchConfig], out: Path,
             device: torch.device, world: World, data_dir: str | Path | None, progress: bool) -> dict[str, Any]:
    """:func:`run_compare`'s work on every rank, in its claimed folder: searches, rankings, random search's trained
    check, the picks placed; returns the result."""
    data = load_population_data(population.spec, device, data_dir)
    space = population.spec.space(data)
    unit = (population.spec.recipe.epochs, len(data.train))
    runs = _searches(configs, out, device, world, data_dir, progress)
    rankings = _rankings(configs, out, population, space, data, device, world)
    for row in rows:
        if row.method == "random":
            candidates = statistics.median(run_compute(r, *unit) for r in runs.values()) if runs else None
            chances = {(row.label, s): _random_config(population, s, candidates, row.options)
                       for s in range(row.seeds)}
            configs.update(chances)
            runs.update(_searches(chances, out, device, world, data_dir, progress))
    picks = {k: in_space(space, load_genotype(out / k[0] / f"seed{k[1]}" / "genotype.json")) for k in runs}
    members = set(population.genotypes())  # keyed by network already
    strangers = [g for g in picks.values() if network_key(space, g) not in members]
    add_members(out / PLACED_FILE, population.spec, strangers, population.seeds(), data, world,
                progress and world.is_main, desc="picks")
    placed = _placed(out / PLACED_FILE, space, population.seeds())
    return _result(population, rows, runs, {k: network_key(space, g) for k, g in picks.items()}, placed, rankings,
                   unit)


def run_compute(summary: dict[str, Any], epochs: int, train_examples: int) -> float:
    """A search's compute, search and selection, in trainings of a population member
    (:func:`bayesnas.compute.population_trainings`)."""
    passes = {k: summary.get(f"search_{k}", 0) + summary.get(f"select_{k}", 0) for k in ("train_passes",
                                                                                       "eval_passes")}
    return population_trainings(passes["train_passes"], passes["eval_passes"], epochs, train_examples)


def _searches(configs: dict[tuple[str, int], SearchConfig], out: Path, device: torch.device, world: World,
              data_dir: str | Path | None, progress: bool) -> dict[tuple[str, int], dict[str, Any]]:
    """The summaries of the searches ``configs`` into ``out/<label>/seed<k>``, run (or resumed) where unfinished.

    Under ``torchrun`` whole searches are dealt to the ranks, each run in one process (so a search is the one a
    single process runs): in ``configs``' order, a rank takes the next unfinished search nobody has claimed,
    claiming it by creating its file in a claims folder of this launch (``out/.claims/<token>``, removed at the
    end), so a rank that finishes early takes the next one."""
    folders = {key: out / key[0] / f"seed{key[1]}" for key in configs}
    for key, folder in folders.items():  # a finished search is reused only under the same settings
        saved = folder / "config.json"
        if (folder / "summary.json").exists() and saved.exists():
            diff = config_diff(read_json(saved), json.loads(json.dumps(configs[key].to_dict())))
            if diff:
                raise RunFolderError(f"{folder} holds a search of other settings (differs in: {', '.join(diff)}); "
                                     "choose another `out` for these settings")
    with work_claims(out, world) as claim:
        for key, config in configs.items():
            run_dir = folders[key]
            if (run_dir / "summary.json").exists() or not claim(f"{key[0]}-{key[1]}"):
                continue
            run_search(config, run_dir, device=device, resume=(run_dir / "config.json").exists(), data_dir=data_dir,
                       progress=progress and world.is_main, alone=True)
    return {key: read_json(folder / "summary.json") for key, folder in folders.items()}


def _rankings(configs: dict[tuple[str, int], SearchConfig], out: Path, population: Population, space: Any,
              data: Any, device: torch.device, world: World) -> dict[tuple[str, int], list[float]]:
    """Per search with a super-network, every member's validation accuracy with that super-network's inherited
    weights, in the population's order, kept in the run folder (``supernet_ranking.json``) beside its checkpoint
    and dealt to the ranks as the searches are."""
    entries = population.genotypes()
    keys = list(entries)
    genotypes = [Genotype(space.name, space.config.to_dict(), entries[k]["choices"]) for k in keys]
    with work_claims(out, world) as claim:
        for key, config in configs.items():
            path = out / key[0] / f"seed{key[1]}" / RANKING_FILE
            if _ranking(path, keys) is not None or not claim(f"ranking-{key[0]}-{key[1]}"):
                continue
            trained = load_trained(config, path.parent, data, device)
            if trained.supernet_state() is None:
                write_json(path, {"members": keys, "supernet_val_accuracy": None})
                continue
            write_json(path, {"members": keys, "supernet_val_accuracy": [trained.inherited_accuracy(g, data.val)
                                                                          for g in genotypes]})
    found = {key: _ranking(out / key[0] / f"seed{key[1]}" / RANKING_FILE, keys) for key in configs}
    return {key: accs for key, accs in found.items() if accs}


def _ranking(path: Path, members: list[str]) -> list[float] | None:
    """The accuracies of a ranking file made for ``members``; None where it is missing or for other members;
    ``[]`` for a method without a super-network."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("members") != members:
        return None
    return data.get("supernet_val_accuracy") or []


def _random_config(population: Population, seed: int, candidates: float | None,
                   overrides: dict[str, Any] | None) -> SearchConfig:
    """Random search with ``candidates`` candidates (rounded; the searches' median compute), each trained under the
    population's recipe; a ``num_samples`` in ``overrides`` wins."""
    config = method_config("random", population, seed, overrides)
    if candidates is not None and not (overrides or {}).get("options", {}).get("num_samples"):
        config = config.merged({"options": {"num_samples": max(1, round(candidates))}})
    return config


def _placed(path: Path, space: Any, seeds: Sequence[int]) -> dict[str, float]:
    """Mean test accuracy over ``seeds`` of every network trained in ``path`` (the picks that are not members)."""
    by_key: dict[str, dict[int, float]] = {}
    for row in read_rows(path):
        key = choices_key(space, row["choices"])
        by_key.setdefault(key, {}).setdefault(row["seed"], row["test_accuracy"])
    return {k: statistics.fmean(v[s] for s in seeds) for k, v in by_key.items() if all(s in v for s in seeds)}


def mean_interval(values: Sequence[float], resamples: int = 10000, seed: int = 0) -> list[float] | None:
    """Percentile-bootstrap 95 % interval of the mean of ``values`` (None for fewer than two)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def _result(population: Population, rows: list[Compared], runs: dict[tuple[str, int], dict[str, Any]],
            picks: dict[tuple[str, int], str], placed: dict[str, float], rankings: dict[tuple[str, int], list[float]],
            unit: tuple[int, int]) -> dict[str, Any]:
    from scipy import stats

    table = {t["key"]: t for t in population.table()}
    standalone = [t["test_accuracy"] for t in table.values()]
    mean_seconds = statistics.fmean(r["seconds"] for e in population.genotypes().values() for r in e["runs"].values())
    best = max(table.values(), key=lambda t: t["val_accuracy"])
    chance = random_search_chance(population)
    noise = noise_report(population)
    out_rows = []
    for row in rows:
        seeds = sorted(s for label, s in runs if label == row.label)
        per_seed = []
        for s in seeds:
            summary, key = runs[row.label, s], picks[row.label, s]
            accuracy = table[key]["test_accuracy"] if key in table else placed.get(key)
            if accuracy is None:
                continue  # a pick not trained with every reference seed (an interrupted placement)
            percentile = percentile_of(standalone, accuracy)
            compute = run_compute(summary, *unit)
            seconds = summary["search_seconds"] + summary.get("select_seconds", 0.0)
            supernet = rankings.get((row.label, s))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a constant super-network ranking: tau undefined
                tau = float(stats.kendalltau(supernet, standalone).statistic) if supernet else math.nan
            per_seed.append({
                "seed": s, "genotype": key, "member": key in table, "test_accuracy": accuracy,
                "percentile": percentile, "compute": compute, "seconds": seconds,
                "compute_by_seconds": seconds / mean_seconds,
                "random_at_compute": chance.at(compute),
                "p_beats_random": chance.chance_below(percentile, compute),
                "kendall_tau": tau if math.isfinite(tau) else None,
            })
        if not per_seed:
            continue
        pct = [p["percentile"] for p in per_seed]
        diff = [p["percentile"] - p["random_at_compute"] for p in per_seed]
        taus = [p["kendall_tau"] for p in per_seed if p["kendall_tau"] is not None]
        accs = [p["test_accuracy"] for p in per_seed]
        out_rows.append({
            "method": row.label, "runs": row.method, "seeds": len(per_seed),
            "pick_test_accuracy": statistics.fmean(accs),
            "pick_test_accuracy_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "percentile": statistics.fmean(pct), "percentile_95": mean_interval(pct),
            "regret": best["test_accuracy"] - statistics.fmean(accs),
            "compute": statistics.fmean(p["compute"] for p in per_seed),
            "compute_by_seconds": statistics.fmean(p["compute_by_seconds"] for p in per_seed),
            "random_at_compute": statistics.fmean(p["random_at_compute"] for p in per_seed),
            "difference": statistics.fmean(diff), "difference_95": mean_interval(diff),
            "p_beats_random": statistics.fmean(p["p_beats_random"] for p in per_seed),
            "kendall_tau": statistics.fmean(taus) if taus else None, "kendall_tau_95": mean_interval(taus),
            "search_seconds": statistics.fmean(runs[row.label, p["seed"]]["search_seconds"] for p in per_seed),
            "per_seed": per_seed,
        })
    top = max([r["compute"] for r in out_rows] + [1.0])
    return {
        "population": str(population.folder), "space": population.spec.space_name,
        "dataset": population.spec.config.dataset, "population_size": len(table),
        "collapsed_twins": population.collapsed, "training_seeds": population.seeds(),
        "population_best_by_validation": {"key": best["key"], "test_accuracy": best["test_accuracy"]},
        "noise": {"within_sd": noise.within_sd, "between_sd": noise.between_sd,
                  "reliability": noise.reliability(), "max_kendall_tau": noise.max_kendall(),
                  "max_spearman_rho": noise.max_spearman()},
        "compute_unit": {"epochs": unit[0], "train_examples": unit[1], "mean_training_seconds": mean_seconds},
        "random_curve": curve_table(chance, max(50, math.ceil(2 * top))),
        "methods": out_rows,
        "ranking": {"members": list(table), "standalone_test_accuracy": standalone,
                    "supernet_val_accuracy": {f"{label}/seed{s}": accs for (label, s), accs in rankings.items()}},
    }


def _fmt(value: float | None, spec: str = "+.3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _interval(value: Any, spec: str = "+.2f") -> str:
    return "n/a" if value is None else f"[{value[0]:{spec}}, {value[1]:{spec}}]"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """One line per compared method: mean percentile with its 95 % interval, random search at the same compute
    and the paired difference with its interval (what ``bayesnas bench compare`` prints)."""
    return [f"{r['method']}: {r['seeds']} seeds, percentile {r['percentile']:.1f} "
            f"{_interval(r['percentile_95'], '.1f')}, compute {r['compute']:.2f} trainings, random search there "
            f"{r['random_at_compute']:.1f}, difference "
            f"{r['difference']:+.1f} {_interval(r['difference_95'], '+.1f')}, P(beats random) "
            f"{r['p_beats_random']:.2f}" for r in result["methods"]]


def write_report(out: Path, result: dict[str, Any]) -> None:
    """``compare.md``, ``compare.csv``, ``pick_percentiles.png`` (per method, the picks' percentiles over search
    seeds at their compute beside the random-search curve) and ``supernet_vs_standalone.png``."""
    rows = result["methods"]
    csv_rows = [{k: v for k, v in r.items() if k != "per_seed"} for r in rows]
    atomic_write_text(out / "compare.csv", csv_text([{k: json.dumps(v) if isinstance(v, list) else v
                                                     for k, v in r.items()} for r in csv_rows]))
    noise, unit = result["noise"], result["compute_unit"]
    lines = [
        f"# Search quality on the {result['space']} space, {result['dataset']}", "",
        f"Reference population: {result['population']} ({result['population_size']} networks, "
        f"{result['collapsed_twins']} twin genotypes collapsed; training seeds {result['training_seeds']}; best by "
        f"validation: test {result['population_best_by_validation']['test_accuracy']:.4f}). One training seed's "
        f"noise {_fmt(noise['within_sd'], '.4f')}, the networks' spread net of it {_fmt(noise['between_sd'], '.4f')}, "
        f"reliability of the reference's means {_fmt(noise['reliability'], '.3f')}: no ranker can expect a Kendall "
        f"tau above {_fmt(noise['max_kendall_tau'])} against them.", "",
        "| method | seeds | pick test accuracy | percentile (95 %) | compute | random search at that compute | "
        "difference (95 %) | P(beats random) | Kendall tau over super-networks (95 %) |",
        "|---|---|---|---|---|---|---|---|---|",
        *(f"| {r['method']} | {r['seeds']} | {r['pick_test_accuracy']:.4f} +- {r['pick_test_accuracy_sd']:.4f} | "
          f"{r['percentile']:.1f} {_interval(r['percentile_95'], '.1f')} | {r['compute']:.2f} "
          f"({r['compute_by_seconds']:.2f} by seconds) | {r['random_at_compute']:.1f} | "
          f"{r['difference']:+.1f} {_interval(r['difference_95'], '+.1f')} | {r['p_beats_random']:.2f} | "
          f"{_fmt(r['kendall_tau'])} {_interval(r['kendall_tau_95'])} |" for r in rows), "",
        "Percentile: share of the reference's networks with a lower mean test accuracy (ties count half); a pick "
        "that is not a member is trained under the reference's recipe and seeds and placed, not added. Compute: "
        f"search and selection in trainings of a member ({unit['epochs']} epochs over {unit['train_examples']} "
        "images), counted in example-passes through the space's networks (a forward-only pass one third); beside "
        "it the same from wall seconds over a member's mean training seconds. Random search at that compute: the "
        "expected percentile of the best-by-validation of that many candidates, exact from the reference's "
        "trainings (bayesnas.experiments.chance). Difference: the method's percentile minus that, per search seed, "
        "95 % percentile-bootstrap interval over seeds; P(beats random): the chance that one random search at the "
        "seed's compute picks lower, averaged over seeds. Kendall tau: each search seed's super-network (inherited "
        "weights, validation split) against the reference's means, mean and interval over seeds.", "",
    ]
    atomic_write_text(out / "compare.md", "\n".join(lines))
    curve = result["random_curve"]
    fig = Figure(figsize=(1 + 3.2 * max(len(rows), 1), 3.4))
    for i, r in enumerate(rows):
        ax = fig.add_subplot(1, len(rows), i + 1)
        ax.plot([c["candidates"] for c in curve], [c["expected_percentile"] for c in curve], color="tab:gray",
                label="random search (exact)")
        spread = np.linspace(0.94, 1.06, len(r["per_seed"]))  # seeds of equal compute side by side
        ax.scatter([p["compute"] * k for p, k in zip(r["per_seed"], spread, strict=True)],
                   [p["percentile"] for p in r["per_seed"]], s=14, color="tab:blue", alpha=0.7,
                   label="picks (search seeds)")
        ax.axhline(r["percentile"], color="tab:blue", lw=1)
        ax.set(xscale="log", ylim=(0, 100), xlabel="compute (member trainings)", ylabel="pick percentile",
               title=f"{r['method']}: {r['percentile']:.1f} vs {r['random_at_compute']:.1f}")
        if i == 0:
            ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, out / "pick_percentiles.png")
    ranking = result["ranking"]["supernet_val_accuracy"]
    labels = list(dict.fromkeys(k.split("/")[0] for k in ranking))
    fig = Figure(figsize=(1 + 3.2 * max(len(labels), 1), 3.4))
    for i, label in enumerate(labels):
        ax = fig.add_subplot(1, len(labels), i + 1)
        for name, accs in ranking.items():
            if name.split("/")[0] == label:
                ax.scatter(accs, result["ranking"]["standalone_test_accuracy"], s=6, alpha=0.4)
        ax.set(xlabel="super-network accuracy (inherited)", ylabel="stand-alone test accuracy",
               title=f"{label}: one colour per search seed")
    save_figure(fig, out / "supernet_vs_standalone.png")
