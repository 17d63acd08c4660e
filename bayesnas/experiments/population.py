"""Ground truth for a search space: many of its architectures, each trained alone under one declared recipe.

NAS benchmarks answer "does a search beat chance?" with such a population (NAS-Bench-101, Ying et al., ICML 2019;
NAS-Bench-201, Dong & Yang, ICLR 2020; Yu et al., "Evaluating the search phase of neural architecture search",
ICLR 2020): where a method's pick lands among stand-alone accuracies, and how well a super-network ranks them.
:func:`build_population` builds one for any space and data set of this library.

The population's configuration is the random-search baseline's (``random-digits`` moved to the space with
:func:`~bayesnas.config.on_space`, then the user's overrides): its data set and split, its space options, and its
training recipe, :func:`~bayesnas.training.search_recipe` with ``retrain_epochs`` and ``retrain_lr``, the same
recipe random search retrains its pick with. The folder pins it in ``population.json`` (a folder started under
another configuration is refused). Genotypes are drawn with the space's
:meth:`~bayesnas.spaces.decisions.DecisionSpace.random_genotype` from a generator seeded by the configuration's
seed (distinct, in draw order, so that a larger ``n`` extends a smaller one), or enumerated from the decisions
when the space is small. Each (genotype, training seed) is one line of ``population.jsonl``, rewritten atomically
after every training: an interrupted build continues where it stopped. Under ``torchrun`` the trainings are split
across ranks round by round and rank 0 writes.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import itertools
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from bayesnas.config import METHOD_SPACES, ConfigError, SearchConfig, on_space, preset
from bayesnas.data import DataBundle
from bayesnas.diagnostics import save_figure
from bayesnas.distributed import World, agree, world_of
from bayesnas.experiments.noise import NoiseReport, variance_components
from bayesnas.infer import config_data, resolve_device
from bayesnas.io import DamagedFileError, atomic_write_text, read_json, read_jsonl, write_json, write_jsonl
from bayesnas.methods import shaped_space
from bayesnas.methods.random_search import RandomSearchOptions
from bayesnas.run_folder import check_folder, config_diff, folder_in_use
from bayesnas.spaces import get_space
from bayesnas.spaces.decisions import DecisionSpace
from bayesnas.spaces.genotype import Genotype, genotype_key
from bayesnas.speed import mode_name, resolve_mode
from bayesnas.training import TrainRecipe, accuracy, search_recipe, train_network

SPEC_FILE = "population.json"
ROWS_FILE = "population.jsonl"
ENUMERATION_LIMIT = 4096
"""Largest space ``--all`` enumerates."""


@dataclasses.dataclass(frozen=True)
class PopulationSpec:
    """What a population is made of: the configuration (data set, split, space) and the training recipe."""

    config: SearchConfig

    @property
    def space_name(self) -> str:
        return self.config.space_name

    @property
    def recipe(self) -> TrainRecipe:
        """Random search's retraining recipe (``retrain_epochs``, ``retrain_lr``) in the configuration's precision
        and memory format."""
        try:
            options = RandomSearchOptions(**self.config.options)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"population options: {err}") from None
        if options.retrain_epochs < 1:
            raise ConfigError("a population needs retrain_epochs >= 1 (the epochs each architecture trains)")
        recipe = search_recipe(self.config, options.retrain_epochs, options.retrain_lr)
        return dataclasses.replace(recipe, precision=self.config.precision, channels_last=self.config.channels_last)

    def space(self, data: DataBundle) -> DecisionSpace:
        """The space shaped by the data, as the searches shape it."""
        return shaped_space(self.space_name, data, self.config.space, f"population's {self.space_name} space")

    def layout_space(self) -> DecisionSpace:
        """The space of the configuration's options, the data's shape left at its defaults: enough for what
        depends on the decisions alone (canonical forms), without loading the data."""
        return get_space(self.space_name, self.config.space)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "recipe": dataclasses.asdict(self.recipe)}

    @classmethod
    def load(cls, folder: Path) -> PopulationSpec:
        try:
            data = read_json(folder / SPEC_FILE)
        except FileNotFoundError:
            raise ConfigError(f"{folder} holds no population ({SPEC_FILE} is missing)") from None
        if "config" not in data or not isinstance(data["config"], dict):
            raise ConfigError(f"{folder / SPEC_FILE} is not a population's configuration")
        return cls(SearchConfig.from_dict(data["config"], origin=str(folder / SPEC_FILE)))


def population_spec(space: str, dataset: str, overrides: dict[str, Any] | None = None) -> PopulationSpec:
    """The random-search baseline's configuration on ``space`` and ``dataset``, with ``overrides`` (a config file's
    options: ``space``/``options`` merged key by key) applied last."""
    # fp32 unless the configuration asks otherwise: a population is the reference that rankings are measured
    # against, and the fast mode stays opt-in for it until it is shown to rank as fp32 does (issue 39's evidence)
    config = on_space(preset("random-digits").merged({"dataset": dataset, "precision": "fp32"}),
                      space).merged(dict(overrides or {}))
    if space not in METHOD_SPACES["random"]:
        raise ConfigError(f"random search does not draw from the {space} space; a population samples one of: "
                          f"{', '.join(METHOD_SPACES['random'])}")
    if config.method != "random":
        raise ConfigError(f"a population's configuration is random search's; got method {config.method!r}")
    spec = PopulationSpec(config)
    spec.recipe  # noqa: B018 - validates the options before anything is written
    return spec


def in_space(space: DecisionSpace, genotype: Genotype) -> Genotype:
    """``genotype``'s choices as an architecture of ``space`` (a search may have configured its own copy of the
    space differently, e.g. narrower while searching); validated."""
    genotype = Genotype(space.name, space.config.to_dict(), genotype.choices)
    space.validate(genotype)
    return genotype


ROW_FIELDS = {"key": str, "choices": dict, "seed": int, "params": int, "flops": int, "val_accuracy": (int, float),
              "test_accuracy": (int, float), "seconds": (int, float)}


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The trainings of ``path`` (``population.jsonl`` or a comparison's ``placed.jsonl``), each checked against
    :data:`ROW_FIELDS` (a damaged or foreign row is one line naming the file and the row)."""
    rows = read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        for field, kind in ROW_FIELDS.items():
            value = row.get(field)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise DamagedFileError(f"{path}, row {number}: {field!r} is missing or not a "
                                       f"{getattr(kind, '__name__', 'number')}")
        if not 0 <= row["val_accuracy"] <= 1 or not 0 <= row["test_accuracy"] <= 1:
            raise DamagedFileError(f"{path}, row {number}: an accuracy outside 0..1")
    return rows


def network_key(space: DecisionSpace, genotype: Genotype) -> str:
    """The key of ``genotype``'s canonical form (:meth:`~bayesnas.spaces.decisions.DecisionSpace.canonical`):
    genotypes that build the same network (twins) have equal keys."""
    return genotype_key(space.canonical(genotype))


def choices_key(space: DecisionSpace, choices: dict[str, Any]) -> str:
    """:func:`network_key` of a row's ``choices`` (as ``population.jsonl`` stores them) in ``space``."""
    return network_key(space, Genotype(space.name, space.config.to_dict(), choices))


def sample_genotypes(space: DecisionSpace, n: int, seed: int) -> list[Genotype]:
    """``n`` uniform draws of ``space.random_genotype`` that build distinct networks, in draw order (fewer only
    where the space has fewer distinct networks than ``100 n`` draws find)."""
    generator = torch.Generator().manual_seed(seed)
    chosen: dict[str, Genotype] = {}
    for _ in range(100 * n):
        if len(chosen) == n:
            break
        genotype = space.random_genotype(generator)
        chosen.setdefault(network_key(space, genotype), genotype)
    return list(chosen.values())


def enumerate_genotypes(space: DecisionSpace) -> list[Genotype]:
    """Every network the decisions span (one option per decision), one genotype per network."""
    if space.size() > ENUMERATION_LIMIT:
        raise ConfigError(f"the {space.name} space has {space.size():.3g} architectures; `enumerate_all=True` "
                          f"enumerates at most {ENUMERATION_LIMIT} (sample `n` instead)")
    chosen: dict[str, Genotype] = {}
    for indices in itertools.product(*(range(k) for k in space.num_options())):
        genotype = space.genotype_from_indices(indices)
        chosen.setdefault(network_key(space, genotype), genotype)
    return list(chosen.values())


def train_member(space: DecisionSpace, genotype: Genotype, data: DataBundle, recipe: TrainRecipe,
                 seed: int) -> dict[str, Any]:
    """Train ``genotype`` alone from scratch with training seed ``seed``; its row of ``population.jsonl``."""
    tic = time.perf_counter()
    torch.manual_seed(seed)
    net = space.build(genotype).to(data.train.x.device)
    train_network(net, data.train, data.val, recipe, seed, progress=False)
    evaluation = recipe.evaluation()
    return {"key": genotype_key(genotype), "seed": seed, "val_accuracy": accuracy(net, data.val, **evaluation),
            "test_accuracy": accuracy(net, data.test, **evaluation), "seconds": round(time.perf_counter() - tic, 2)}


class Population:
    """The rows of a population folder, per network: its choices, size, and accuracies per training seed.

    A population, once built, is a fixed reference: comparisons read it and never add to it. Genotypes that build
    the same network (twins, :meth:`~bayesnas.spaces.decisions.DecisionSpace.canonical`) are one member, keyed
    by the canonical form; a twin's trainings with a seed the member already has are left out (with the same seed
    twins train the same network), and :attr:`collapsed` counts the twins."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.spec = PopulationSpec.load(self.folder)
        self.rows = read_rows(self.folder / ROWS_FILE)
        self.space = self.spec.layout_space()

    @functools.cache  # noqa: B019 - the rows are read once, in __init__; a population lives as long as its use
    def genotypes(self) -> dict[str, dict[str, Any]]:
        """``{network key: {"choices", "params", "flops", "twins": [genotype keys], "runs": {seed: row}}}`` in the
        order the networks were added."""
        out: dict[str, dict[str, Any]] = {}
        for row in self.rows:
            key = choices_key(self.space, row["choices"])
            entry = out.setdefault(key, {"choices": row["choices"], "params": row["params"], "flops": row["flops"],
                                         "twins": [], "runs": {}})
            if row["key"] not in entry["twins"]:
                entry["twins"].append(row["key"])
            entry["runs"].setdefault(row["seed"], row)
        return out

    @property
    def collapsed(self) -> int:
        """How many genotypes of the rows build a network another genotype of the rows builds too."""
        return sum(len(e["twins"]) - 1 for e in self.genotypes().values())

    def seeds(self) -> list[int]:
        """The training seeds every member was trained with."""
        runs = [set(e["runs"]) for e in self.genotypes().values()]
        return sorted(set.intersection(*runs)) if runs else []

    @functools.cache  # noqa: B019 - as genotypes()
    def table(self) -> list[dict[str, Any]]:
        """One row per genotype: mean validation and test accuracy over its training seeds, and per seed."""
        rows = []
        for key, entry in self.genotypes().items():
            runs = [entry["runs"][s] for s in sorted(entry["runs"])]
            rows.append({"key": key, "params": entry["params"], "flops": entry["flops"], "seeds": len(runs),
                         "twins": len(entry["twins"]),
                         "val_accuracy": statistics.fmean(r["val_accuracy"] for r in runs),
                         "test_accuracy": statistics.fmean(r["test_accuracy"] for r in runs),
                         "seconds": round(sum(r["seconds"] for r in runs), 2),
                         **{f"val_accuracy_seed{r['seed']}": r["val_accuracy"] for r in runs},
                         **{f"test_accuracy_seed{r['seed']}": r["test_accuracy"] for r in runs}})
        return rows

    def test_accuracy(self, key: str) -> float | None:
        """Mean stand-alone test accuracy of a member (by its network key), None where it is not one."""
        entry = self.genotypes().get(key)
        return None if entry is None else statistics.fmean(r["test_accuracy"] for r in entry["runs"].values())

    def percentile(self, value: float) -> float:
        """Percent of the population's genotypes whose mean test accuracy is below ``value`` (ties count half)."""
        return percentile_of([r["test_accuracy"] for r in self.table()], value)


def percentile_of(accuracies: Sequence[float], value: float) -> float:
    """Percent of ``accuracies`` below ``value``, ties counting half."""
    accs = np.asarray(accuracies, dtype=float)
    return float(100 * ((accs < value).sum() + 0.5 * (accs == value).sum()) / max(len(accs), 1))


def pin_population(folder: Path, spec: PopulationSpec) -> None:
    """Write ``population.json``, or check that a folder being continued holds the same configuration (naming the
    keys that differ)."""
    saved = folder / SPEC_FILE
    data = json.loads(json.dumps(spec.to_dict()))
    if saved.exists():
        old = read_json(saved)
        if old != data:
            config = old.get("config") if isinstance(old, dict) and isinstance(old.get("config"), dict) else {}
            keys = config_diff(config, data["config"]) or ["recipe"]
            raise ConfigError(f"{folder} holds a population of another configuration (differs in: "
                              f"{', '.join(keys)}; see {saved}); choose another `out`")
        return
    write_json(saved, data)


def check_population_folder(folder: Path) -> None:
    """Refuse ``folder`` for a population before anything is written or trained (a file, a user's folder, another
    kind of run)."""
    check_folder(folder, "population", ours=(folder / SPEC_FILE).exists())


def load_population_data(spec: PopulationSpec, device: torch.device, data_dir: str | Path | None = None,
                         download: bool = False) -> DataBundle:
    return config_data(spec.config, device, data_dir, download)


def add_members(rows_file: Path, spec: PopulationSpec, genotypes: Sequence[Genotype], seeds: Sequence[int],
                data: DataBundle, world: World, progress: bool = True, desc: str = "population") -> int:
    """Train every (network, seed in ``seeds``) pair not yet in ``rows_file``, once however often the network is
    given (two searches may pick the same one, or twins of it), round by round across ranks, rewriting
    ``rows_file`` after each round; returns how many were trained."""
    space, recipe = spec.space(data), spec.recipe
    precision, layout = resolve_mode(recipe.precision, recipe.channels_last, data.train.x.device)
    recipe, mode = dataclasses.replace(recipe, precision=precision, channels_last=layout), mode_name(precision, layout)
    rows = read_rows(rows_file)
    others = sorted({r.get("mode", mode_name(spec.recipe.precision, spec.recipe.channels_last)) for r in rows} - {mode})
    if others:  # rows without a mode trained in the precision pinned
        raise ConfigError(f"{rows_file.parent}: its members trained in {', '.join(others)}, and its precision "
                          f"{spec.recipe.precision!r} trains in {mode} here: one population holds one mode; give its "
                          "precision explicitly or build another")
    done = {(choices_key(space, r["choices"]), r["seed"]) for r in rows}
    jobs = []
    for g in genotypes:
        key = network_key(space, g)
        for s in seeds:
            if (key, s) not in done:
                done.add((key, s))
                jobs.append((g, s))
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, dynamic_ncols=True)
    for start in range(0, len(jobs), world.size):
        chunk = jobs[start:start + world.size]
        mine = {}
        for i, (genotype, seed) in enumerate(chunk):
            if world.owns(i):
                mine[i] = {"choices": genotype.choices, "params": space.params(genotype),
                           "flops": space.flops(genotype), **train_member(space, genotype, data, recipe, seed),
                           "mode": mode}
        gathered = world.gather(mine)
        rows += [gathered[i] for i in range(len(chunk))]
        if world.is_main:
            write_jsonl(rows_file, rows)
        bar.update(len(chunk))
        bar.set_postfix(last=f"{rows[-1]['test_accuracy']:.3f}")
    bar.close()
    world.barrier()  # the rows written before any rank reads them back
    return len(jobs)


def build_population(spec: PopulationSpec, out: str | Path, *, n: int | None = None, enumerate_all: bool = False,
                     seeds: int = 1, first_seed: int = 0, device: str | torch.device = "auto",
                     data_dir: str | Path | None = None, download: bool = False, progress: bool = True) -> Population:
    """Build (or continue) a population of ``n`` sampled networks (or all, ``enumerate_all``), each trained with the
    ``seeds`` training seeds from ``first_seed`` on, into ``out``; writes ``population.csv``, ``population.md`` and
    the plots. The training seeds are a build's setting: a replicate of a build (another ``out``) takes other
    ones, or it repeats the same initialisations and mini-batch orders."""
    if enumerate_all == (n is not None):
        raise ConfigError("give either the number of genotypes `n` or `enumerate_all=True`")
    if n is not None and n < 1 or seeds < 1 or first_seed < 0:
        raise ConfigError("the population needs n >= 1 genotypes, seeds >= 1 and first_seed >= 0")
    folder = Path(out)
    check_population_folder(folder)
    with world_of(resolve_device(device)) as (world, device):
        agree(world, {"spec": spec.to_dict(), "out": str(folder), "n": n, "all": enumerate_all, "seeds": seeds,
                      "first_seed": first_seed}, "population")
        data = load_population_data(spec, device, data_dir, download)
        space = spec.space(data)
        if n is not None and n > space.size():
            raise ConfigError(f"the {space.name} space has {space.size():.0f} architectures, fewer than the {n} asked "
                              "for; ask for fewer, or `enumerate_all=True` for all of them")
        genotypes = enumerate_genotypes(space) if enumerate_all else sample_genotypes(space, n, spec.config.seed)
        with folder_in_use(folder, "population", world, lambda: pin_population(folder, spec)):
            add_members(folder / ROWS_FILE, spec, genotypes, range(first_seed, first_seed + seeds), data, world,
                        progress and world.is_main)
            if world.is_main:
                write_report(Population(folder))
    return Population(folder)


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV text, the columns in first-seen order."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def noise_report(population: Population) -> NoiseReport:
    """Variance components of the members' per-seed test accuracies (:mod:`bayesnas.experiments.noise`)."""
    return variance_components([[r["test_accuracy"] for r in e["runs"].values()]
                                for e in population.genotypes().values()])


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def write_report(population: Population) -> None:
    """``population.csv`` (one row per genotype), ``population.md`` (recipe, summary, best ten by validation) and
    the plots ``accuracy_histogram.png`` and ``accuracy_vs_params.png``."""
    folder, spec, table = population.folder, population.spec, population.table()
    atomic_write_text(folder / "population.csv", csv_text(table))
    if not table:
        return
    test = np.array([r["test_accuracy"] for r in table])
    params = np.array([r["params"] for r in table])
    noise = noise_report(population)
    c = spec.config
    best = max(table, key=lambda r: r["val_accuracy"])
    lines = [
        f"# Population: {spec.space_name} space on {c.dataset}", "",
        f"{len(table)} networks ({population.collapsed} more genotypes build one of them: twins, collapsed), "
        f"{sum(r['seeds'] for r in table)} trainings (training seeds per network: "
        f"{min(r['seeds'] for r in table)}-{max(r['seeds'] for r in table)}); split seed {c.split_seed}, "
        f"val {c.val_fraction}, " + (
            f"test {c.test_fraction}, data fraction {c.data_fraction}." if c.dataset == "digits"
            else f"data fraction {c.data_fraction} of the official training set; test: the whole official test set."),
        "",
        f"Recipe: `{json.dumps(dataclasses.asdict(spec.recipe))}`", "",
        f"Space options: `{json.dumps(c.space)}` (shaped by the data)", "",
        "| statistic | test accuracy |", "|---|---|",
        f"| mean +- sd over networks | {test.mean():.4f} +- {test.std(ddof=1) if len(test) > 1 else 0:.4f} |",
        f"| min / median / max | {test.min():.4f} / {np.median(test):.4f} / {test.max():.4f} |",
        f"| 90th percentile | {np.percentile(test, 90):.4f} |",
        f"| one training seed's noise (pooled within-network sd) | {_fmt(noise.within_sd)} |",
        f"| spread of the networks net of that noise (between sd) | {_fmt(noise.between_sd)} |",
        f"| reliability of a network's {noise.mean_seeds:.3g}-seed mean | {_fmt(noise.reliability(), '.3f')} |",
        f"| highest Kendall tau / Spearman rho any ranker can expect against these means | "
        f"{_fmt(noise.max_kendall(), '.3f')} / {_fmt(noise.max_spearman(), '.3f')} |",
        f"| best by validation | {best['test_accuracy']:.4f} ({best['params']:,} parameters) |", "",
        "## Best ten by validation accuracy", "",
        "| val | test | params | FLOPs | genotype |", "|---|---|---|---|---|",
        *(f"| {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['params']:,} | {r['flops']:,} | `{r['key']}` |"
          for r in sorted(table, key=lambda r: -r["val_accuracy"])[:10]), "",
    ]
    atomic_write_text(folder / "population.md", "\n".join(lines))
    fig = Figure(figsize=(5, 3.4))
    ax = fig.add_subplot()
    ax.hist(test, bins=max(5, min(30, int(math.sqrt(len(test))) * 2)), color="tab:blue", alpha=0.8)
    ax.set(xlabel="stand-alone test accuracy", ylabel="genotypes",
           title=f"{spec.space_name} on {c.dataset}: {len(test)} genotypes")
    save_figure(fig, folder / "accuracy_histogram.png")
    fig = Figure(figsize=(5, 3.4))
    ax = fig.add_subplot()
    ax.scatter(params, test, s=12, alpha=0.7)
    ax.set(xscale="log", xlabel="parameters", ylabel="stand-alone test accuracy", title="accuracy vs size")
    save_figure(fig, folder / "accuracy_vs_params.png")
