"""Command line: ``bayesnas search | train | draw | options | latency | diagnose | rank | bench`` (``bench`` has
``fashion-mnist``, ``population`` and ``compare``).

Every error a user can cause (unknown names, missing data, malformed files, a diverged loss, a bad
checkpoint) ends with one line on stderr and a non-zero exit, and nothing already written is overwritten.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import re
import sys
import textwrap
import time
import typing
from pathlib import Path
from typing import Any, NoReturn

from bayesnas import __version__
from bayesnas.config import (
    DEFAULT_PRESET,
    METHOD_SPACES,
    PRECISIONS,
    PRESETS,
    SPACE_DEFAULTS,
    ConfigError,
    SearchConfig,
    build_config,
    load_config_file,
)
from bayesnas.domains import domain_text
from bayesnas.errors import BayesNASError

EXIT_ERROR = 2
PRECISION_HELP = ("bf16: autocast the network to bfloat16 (KL terms and loss stay fp32); auto: the fastest of fp32 "
                  "and bf16, each with and without channels-last, measured once per machine (`bayesnas speed`), "
                  "recorded in the summary")
EXIT_INTERRUPTED = 130


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows a default once: only where the help does not state it already and there is one to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return super()._get_help_string(action)


def _domain(name: str) -> str:
    """The declared domain of :class:`SearchConfig` field ``name`` (``>= 1``), for help texts."""
    return str(domain_text(SearchConfig, name))


def _add_common(p: argparse.ArgumentParser, dataset_default: str = "the preset's") -> None:
    p.add_argument("--dataset", help="digits (embedded), mnist, fashion-mnist, cifar10 or cifar100 "
                   f"(default: {dataset_default})")
    p.add_argument("--data", metavar="PATH", help="your own images instead of --dataset: a folder with one sub-folder "
                   "per class (torchvision's ImageFolder layout; optional train/, val/, test/ sub-folders) or an .npz "
                   "file (x_train, y_train, optional x_val, y_val, x_test, y_test)")
    p.add_argument("--data-dir", help="folder holding the torchvision files of mnist/fashion-mnist/cifar")
    p.add_argument("--download", action="store_true", help="let torchvision download missing files")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, help=f"random seed of splits, initialisation and sampling, {_domain('seed')} "
                   "(default: the preset's, 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars; a search prints one line per epoch "
                   "instead (for batch-job logs)")


def _add_bench_common(p: argparse.ArgumentParser,
                      data_dir_help: str = "folder holding the torchvision files of mnist/fashion-mnist/cifar") -> None:
    p.add_argument("--data-dir", help=data_dir_help)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


class _Parser(argparse.ArgumentParser):
    """Usage errors in two lines: the error, and where the options are listed."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\nrun '{self.prog} --help' for the options\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bayesnas", formatter_class=_Formatter,
        description="Bayesian neural architecture search in Pyro (PGNAS, VINNAS, GDAS, PC-NAS).")
    parser.add_argument("--version", action="version", version=f"bayesnas {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (also: environment variable BAYESNAS_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    search = sub.add_parser(
        "search", formatter_class=_Formatter, help="run an architecture search",
        description="Run an architecture search and write a run folder (config.json, checkpoint.pt, "
                    "metrics.jsonl, genotype.json, summary.json, posterior.nc, plots).\n\nPresets: "
                    + ", ".join(PRESETS) + "\n\nMethods and the spaces they search (default first):\n"
                    + "\n".join(f"  {m:<8} {', '.join(s)}" for m, s in METHOD_SPACES.items()))
    search.add_argument("--method", help=f"search method: {', '.join(METHOD_SPACES)}; default: the preset's")
    search.add_argument("--space", choices=sorted({s for spaces in METHOD_SPACES.values() for s in spaces}),
                        help="search space (default: the method's first; see the list above)")
    search.add_argument("--preset", default=None,
                        help=f"named settings to start from (default: {DEFAULT_PRESET}, or <method>-digits)")
    search.add_argument("--config", help="JSON file of options applied over the preset "
                        "(keys of SearchConfig; 'space' and 'options' objects merge key by key)")
    search.add_argument("--epochs", type=int, help=f"search epochs, {_domain('epochs')} (default: the preset's)")
    search.add_argument("--batch-size", type=int,
                        help=f"mini-batch size, {_domain('batch_size')} (default: the preset's)")
    search.add_argument("--data-fraction", type=float,
                        help=f"fraction of the training images searched on, {_domain('data_fraction')} (default: the "
                        "preset's)")
    search.add_argument("--lr", type=float, help=f"learning rate of the weights, {_domain('lr')} (SGD with momentum; "
                        "VINNAS: Adam, as in its paper); architecture parameters have their own option (bayesnas "
                        "options METHOD) (default: the preset's)")
    search.add_argument("--space-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a search-space option, e.g. channels=8 (JSON values; repeatable; `bayesnas options space "
                        "SPACE` lists them)")
    search.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a method option, VALUE in JSON (e.g. --option num_candidates=200)")
    search.add_argument("--out", help="run folder (default: runs/<preset>-seed<seed>-<time>)")
    search.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint")
    search.add_argument("--sample-per", choices=("batch", "example"),
                        help="GDAS: one architecture per mini-batch (authors' code) or per example (paper)")
    search.add_argument("--fixed-reduction", action="store_true",
                        help="GDAS: use the fixed reduction cell (FRC, paper Fig. 3) instead of searching it")
    search.add_argument("--latency-ms", type=float,
                        help="PC-NAS: hard latency limit in ms on this device (sets --option latency_ms)")
    search.add_argument("--latency-table", metavar="FILE",
                        help="PC-NAS: a latency.json measured elsewhere, used instead of measuring here "
                             "(sets --option latency_table)")
    search.add_argument("--latency-proxy", choices=("time", "flops"),
                        help="PC-NAS: the limit on measured milliseconds (time) or on millions of multiply-adds "
                             "(flops: nothing is timed)")
    search.add_argument("--precision", choices=PRECISIONS,
                        help=PRECISION_HELP + " (the search-time training; the final retraining and its test accuracy "
                        "stay fp32 under auto); default: the preset's, auto")
    search.add_argument("--channels-last", action="store_true", default=None,
                        help="channels-last memory format of images and convolutions (faster on GPUs and on some CPUs)")
    search.add_argument("--compile", action="store_true", default=None,
                        help="torch.compile the super-network forward (eager fallback with a warning)")
    _add_common(search)

    train = sub.add_parser("train", formatter_class=_Formatter, help="train a genotype from scratch",
                           description="Train the discrete network of GENOTYPE.json from scratch with the "
                                       "standard recipe (SGD + cosine, weight decay, optional cutout, "
                                       "auxiliary head and drop-path) and report its test accuracy.")
    train.add_argument("genotype", help="genotype JSON file, or a run folder (its genotype.json)")
    train.add_argument("--epochs", type=int, default=30, help="training epochs")
    train.add_argument("--batch-size", type=int, default=64, help="mini-batch size")
    train.add_argument("--lr", type=float, default=0.05, help="initial SGD learning rate")
    train.add_argument("--weight-decay", type=float, default=3e-4, help="weight decay")
    train.add_argument("--cutout", type=int, default=0, help="cutout square side (0: off; CIFAR: 16)")
    train.add_argument("--auxiliary", type=float, default=0.0, help="auxiliary head loss weight (0: off)")
    train.add_argument("--drop-path", type=float, default=0.0, help="drop-path probability of branches")
    train.add_argument("--space-option", action="append", default=[], metavar="KEY=VALUE",
                       help="scale the network where its space allows, e.g. eval_channels=36 or "
                       "eval_layout=\"6NR6NR6N\" (cells), widths=[24,48,96] (chain); repeatable")
    train.add_argument("--data-fraction", type=float, default=1.0,
                       help="keep this fraction of the training images (validation and test stay whole)")
    train.add_argument("--precision", choices=PRECISIONS, default="fp32", help=PRECISION_HELP)
    train.add_argument("--channels-last", action="store_true",
                       help="channels-last memory format for images and convolutions")
    train.add_argument("--out", help="folder for train_summary.json and the trained weights, model.pt (default: next "
                       "to the genotype)")
    train.add_argument("--force", action="store_true", help="replace an earlier train_summary.json in that folder")
    _add_common(train, "the one the genotype was searched on")

    draw = sub.add_parser("draw", formatter_class=_Formatter, help="draw a genotype's architecture",
                          description="Draw GENOTYPE.json's architecture into a PNG: cells as graphs (inputs, "
                                      "states, an op per edge, output), the chain as its layer sequence, branches "
                                      "as the channels each branch keeps (matplotlib only).")
    draw.add_argument("genotype", help="genotype JSON file, or a run folder (its genotype.json)")
    draw.add_argument("--out", help="the PNG to write (default: architecture.png beside the genotype)")

    measure = sub.add_parser(
        "latency", formatter_class=_Formatter, help="measure a chain space's latency table into a file",
        description="Time every (mixop, op) of a chain space (the minimum of --runs passes at --batch-size) and "
                    "write the table to --out, for bayesnas search --latency-table FILE (PC-NAS) on another machine "
                    "or run; the batch size must be the search's latency_batch_size.")
    measure.add_argument("--out", required=True, help="the table file to write (a new file)")
    measure.add_argument("--preset", help="named settings whose chain space to time (default: the chain's default "
                         "options)")
    measure.add_argument("--config", help="JSON file of options applied over the preset (e.g. its space)")
    measure.add_argument("--batch-size", dest="timed_batch_size", type=int,
                         help="images per timed pass (default: 16, the paper's)")
    measure.add_argument("--runs", type=int, help="timed passes per entry, the fastest kept (default: 7)")
    measure.add_argument("--dataset", help="the data set whose image shape the space takes (default: the preset's)")
    measure.add_argument("--data-dir", help="folder holding the torchvision files of mnist/fashion-mnist/cifar")
    measure.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    measure.set_defaults(space="chain", method=None, option=[])

    options = sub.add_parser("options", formatter_class=_Formatter, help="list the keys of a method, the "
                             "configuration or a space",
                             description="The keys you can set, with type, allowed values, default and what each "
                                         "does: `options METHOD` (--option KEY=VALUE; a preset may set other values), "
                                         "`options config` (--config files and the search flags), `options space "
                                         "SPACE` (--space-option KEY=VALUE; channels, classes and image size come from "
                                         "the data).")
    options.add_argument("what", choices=[*METHOD_SPACES, "config", "space"], help="a method, config or space")
    options.add_argument("space", nargs="?", choices=sorted(SPACE_DEFAULTS), help="the space, after `space`")

    diagnose = sub.add_parser("diagnose", formatter_class=_Formatter, help="summarise search posteriors",
                              description="Print az.summary of one or more run folders (several runs with "
                                          "different seeds become chains named after them, so r_hat says whether "
                                          "independent searches agree) and write plots into a new folder; the "
                                          "runs are only read.")
    diagnose.add_argument("runs", nargs="+", help="run folders")
    diagnose.add_argument("--out", help="folder for the plots, summary.csv and chains.json, outside the runs "
                          "(default: runs/diagnose-<time>)")
    diagnose.add_argument("--allow-mixed", action="store_true",
                          help="compare runs whose configurations differ in more than the seed")
    diagnose.add_argument("--compare", action="store_true",
                          help="instead of chains: rank the runs (any methods or settings on one data split) by the "
                               "held-out expected log predictive density of their stored validation "
                               "log-likelihoods, with standard errors and stacking weights, in az.compare's table "
                               "shape (not PSIS-LOO: q never saw those examples); writes compare.csv/.png")

    speed = sub.add_parser(
        "speed", formatter_class=_Formatter, help="measure which numeric mode trains fastest here",
        description="Time a few training steps of one DARTS-cell network in fp32 and bf16, each with and without "
                    "the channels-last memory format, and print the seconds per step and the ratio to fp32. The "
                    "result is cached per machine, device and torch version (<cache>/speed.json); --refresh "
                    "measures again.")
    speed.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    speed.add_argument("--refresh", action="store_true", help="measure again instead of reading the cache")

    predict = sub.add_parser(
        "predict", formatter_class=_Formatter, help="average predictions over a run's posterior",
        description="Bayesian model averaging: draw --samples networks from a finished run's trained posterior or "
                    "proposal (with the super-network's weights), average their predictive probabilities and score "
                    "them against the single selected architecture (inherited weights; retrained, where the search "
                    "retrained it): accuracy, NLL, Brier score, ECE (15 bins), and BMA's scores as a function of "
                    "the number of draws. Writes predict_<split>.json, reliability_<split>.png and "
                    "samples_<split>.png.")
    predict.add_argument("run", help="a finished run folder")
    predict.add_argument("--samples", type=int, default=32, help="networks drawn and averaged, >= 1")
    predict.add_argument("--split", choices=("val", "test"), default="test", help="the run's split to score on")
    predict.add_argument("--seed", type=int, default=0, help="seed of the draws")
    predict.add_argument("--out", help="folder for the files (default: the run folder)")
    predict.add_argument("--data-dir", help="folder holding the torchvision files of mnist/fashion-mnist/cifar")
    predict.add_argument("--download", action="store_true", help="let torchvision download missing files")
    predict.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    ensemble = sub.add_parser(
        "ensemble", formatter_class=_Formatter, help="an ensemble of architectures from a run's posterior",
        description="Architecture ensemble (Zaidi et al., NeurIPS 2021): --members distinct architectures from a "
                    "finished run's posterior or proposal, each retrained from scratch with the method's retraining "
                    "recipe, their predictions averaged; against the selected architecture retrained with as many "
                    "seeds (deep ensemble, equal training cost) and alone. Scores on the test split (accuracy, NLL, "
                    "Brier, ECE with bootstrap intervals, also after temperature scaling fitted on validation), on "
                    "corrupted copies of it (5 corruptions x 5 severities) and the AUROC of predictive entropy "
                    "against out-of-distribution images. Writes ensemble.json, ensemble.md, shift.png, "
                    "reliability.png and members/ (resumable; under torchrun the processes share the members).")
    ensemble.add_argument("run", help="a finished run folder")
    ensemble.add_argument("--members", type=int, default=5, help="K, the ensemble's size (and the deep ensemble's)")
    ensemble.add_argument("--strategy", choices=("draws", "top", "greedy"), default="draws",
                          help="draws: draw until K distinct architectures; top: the K drawn most often; greedy: "
                               "forward selection by validation NLL with the super-network's weights")
    ensemble.add_argument("--candidates", type=int, default=64,
                          help="draws at most (draws), or the draws ranked (top) and scored (greedy)")
    ensemble.add_argument("--epochs", type=int, help="retraining epochs of every member (default: the method's)")
    ensemble.add_argument("--seed", type=int, default=0, help="seed of the draws; member i trains with seed + i")
    ensemble.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of each interval")
    ensemble.add_argument("--out", help="output folder (default: RUN/ensemble-<strategy>-<members>)")
    _add_bench_common(ensemble)
    ensemble.add_argument("--download", action="store_true", help="let torchvision download missing files")
    rank = sub.add_parser(
        "rank", formatter_class=_Formatter, help="ranking correlation of one-shot and PC-NAS super-networks",
        description="Train a uniform one-shot and a PC-NAS super-network on the same data and budget (into "
                    "OUT/oneshot and OUT/pcnas), sample N architectures, train each alone, and print Kendall tau "
                    "and Pearson r between super-network and stand-alone accuracy for both (OUT/rank.json).")
    rank.add_argument("--preset", help="PC-NAS preset of both super-networks (default: pcnas-digits)")
    rank.add_argument("--config", help="JSON file of options applied over the preset")
    rank.add_argument("--epochs", type=int, help="super-network epochs (default: the preset's)")
    rank.add_argument("--batch-size", type=int, help="mini-batch size (default: the preset's)")
    rank.add_argument("--lr", type=float, help="SGD learning rate (default: the preset's)")
    rank.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a pcnas option")
    rank.add_argument("--latency-ms", type=float, help="latency limit in ms of the sampled architectures")
    rank.add_argument("-n", "--num-archs", type=int, default=12, help="architectures to rank")
    rank.add_argument("--train-epochs", type=int, default=10, help="stand-alone training epochs of each")
    rank.add_argument("--population", choices=("pool", "uniform"), default="pool",
                      help="sample from the final pool's candidates (as the paper) or the whole space")
    rank.add_argument("--out", help="output folder (default: runs/rank-<dataset>-seed<seed>-<time>)")
    rank.set_defaults(method=None, dataset=None)
    _add_common(rank)

    bench = sub.add_parser("bench", formatter_class=_Formatter, help="benchmarks: fashion-mnist, population, compare",
                           description="fashion-mnist: every method on Fashion-MNIST under one budget; population: "
                                       "ground truth for a space (many architectures trained alone); compare: "
                                       "where each method's pick lands in a population.")
    benches = bench.add_subparsers(dest="benchmark", required=True, parser_class=_Parser)
    fashion = benches.add_parser(
        "fashion-mnist", formatter_class=_Formatter, help="benchmark every method on Fashion-MNIST",
        description="Search with every method and retrain each found architecture from scratch under one budget "
                    "(plus the random-search baseline), then write table.md and table.csv into OUT. Continue an "
                    "interrupted benchmark by running the same command again: finished searches and retrainings "
                    "are kept, a half-finished search resumes from its checkpoint.")
    fashion.add_argument("--budget", default="cpu", choices=("cpu", "paper"),
                         help="cpu: within 2 hours on 2 CPU cores; paper: the VINNAS paper's settings (a GPU)")
    fashion.add_argument("--methods", default="pgnas,vinnas,gdas,pcnas,random",
                         help="comma-separated methods to run (random: the random-search baseline)")
    fashion.add_argument("--out", help="run folder (default: runs/bench-fashion-mnist-<budget>)")
    fashion.add_argument("--results", help="also write the tables as <benchmark>-<budget>.md/.csv into this "
                         "folder (the committed ones are in benchmarks/results)")
    _add_bench_common(fashion, "folder holding FashionMNIST/raw (default: Debian's dataset-fashion-mnist package, "
                      "found by itself)")

    population = benches.add_parser(
        "population", formatter_class=_Formatter, help="ground truth: architectures of a space trained alone",
        description="Sample N genotypes of a space uniformly (or enumerate all of a small space), train each alone "
                    "under random search's retraining recipe (retrain_epochs, retrain_lr of the random-digits "
                    "preset, or of --config), and write population.jsonl/.csv/.md and plots into OUT. Run the same "
                    "command again to continue, or with a larger --n or --seeds to extend.")
    population.add_argument("--space", required=True, choices=sorted(SPACE_DEFAULTS),
                            help="the search space (one that random search draws from)")
    population.add_argument("--dataset", default="digits", help="digits (embedded), mnist, fashion-mnist, cifar10 "
                            "or cifar100")
    population.add_argument("--config", help="JSON file of options over the random-digits preset (space, options: "
                            "retrain_epochs, retrain_lr; batch_size, lr, split fractions, seed of the draws)")
    size = population.add_mutually_exclusive_group(required=True)
    size.add_argument("--n", type=int, help="genotypes to sample")
    size.add_argument("--all", action="store_true", help="every architecture of a small space")
    population.add_argument("--seeds", type=int, default=1, help="training seeds per network")
    population.add_argument("--first-seed", type=int, default=0,
                            help="the first training seed (a replicate of a build takes fresh ones, e.g. 100)")
    population.add_argument("--train-epochs", type=int, help="epochs each genotype trains (sets retrain_epochs)")
    population.add_argument("--out", help="folder (default: runs/population-<space>-<dataset>)")
    population.add_argument("--download", action="store_true", help="let torchvision download missing files")
    _add_bench_common(population)

    compare = benches.add_parser(
        "compare", formatter_class=_Formatter, help="place each method's pick in a population",
        description="Search with each method and seed on the population's space and split (finished searches in "
                    "OUT are reused), place each pick against the population, a fixed reference (a pick that is no "
                    "member is trained under its recipe and seeds into OUT/placed.jsonl, never added), and report "
                    "per method the mean percentile with a 95 % interval over search seeds, random search's exact "
                    "expected percentile at the method's own compute, the paired difference with its interval, "
                    "P(beats random) and each super-network's Kendall tau (OUT/compare.md/.csv/.json and plots). "
                    "Under torchrun the ranks share out whole searches (each runs in one process).")
    compare.add_argument("--population", required=True, help="a folder written by bayesnas bench population")
    compare.add_argument("--methods", default="gdas,vinnas,pcnas,random",
                         help="comma-separated methods or variants named in --config (random: random search's "
                              "trained check of its exact curve, at the searches' median compute)")
    compare.add_argument("--seeds", type=int, default=1, help="search seeds per method (a method's own \"seeds\" in "
                         "--config wins)")
    compare.add_argument("--epochs", type=int, help="search epochs of every method (default: each preset's)")
    compare.add_argument("--config", help='JSON file of options per method over its preset, e.g. {"vinnas": '
                         '{"epochs": 20, "seeds": 10}, "gdas-uniform-gate": {"method": "gdas", "options": '
                         '{"arch_gate": "uniform"}}}: "method" makes a named variant, "seeds" its own seed count')
    compare.add_argument("--out", help="folder (default: <population>/compare)")
    _add_bench_common(compare)
    return parser


def _parse_option(text: str, flag: str = "--option") -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"{flag} expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def chosen_dataset(args: argparse.Namespace) -> str | None:
    """The data set ``--dataset`` names or ``--data`` points at (a path as its absolute path), or None."""
    dataset, data = getattr(args, "dataset", None), getattr(args, "data", None)
    if dataset is not None and data is not None:
        raise ConfigError("give --dataset (a named data set) or --data (your own images), not both")
    if data is None and dataset is None:
        return None
    from bayesnas.user_data import dataset_name

    return dataset_name(data if data is not None else dataset)


def search_config(args: argparse.Namespace) -> SearchConfig:
    """The configuration the flags describe: over the preset, or, with ``--resume`` into a run folder, over the
    run's own ``config.json`` (so no flag need be repeated; a flag given must agree with it, or the search refuses
    naming the keys that differ)."""
    options = dict(_parse_option(o) for o in args.option)
    if getattr(args, "sample_per", None):
        options["sample_per"] = args.sample_per
    for key in ("latency_ms", "latency_table", "latency_proxy"):
        if getattr(args, key, None) is not None:
            options[key] = getattr(args, key)
    settings = {key: getattr(args, key, None) for key in
                ("dataset", "seed", "epochs", "batch_size", "data_fraction", "lr", "precision", "channels_last",
                 "compile")}
    space = dict(_parse_option(o, "--space-option") for o in getattr(args, "space_option", []))
    if getattr(args, "fixed_reduction", False):
        space["fixed_reduction"] = True
    if space:
        settings["space"] = space
    settings["dataset"] = chosen_dataset(args)
    source: Any = args.config
    saved = Path(args.out) / "config.json" if getattr(args, "resume", False) and args.out else None
    if saved is not None and saved.is_file():  # a SearchConfig is build_config's starting point (no preset)
        from bayesnas.io import read_json

        source = SearchConfig.from_dict(read_json(saved), origin=str(saved))
        if args.config:
            source = source.merged(load_config_file(args.config))
    return build_config(source, preset_name=args.preset, method=args.method,
                        space_name=getattr(args, "space", None), options=options, **settings)


def _describe(genotype: Any) -> str:
    """The chosen architecture in a few lines, whatever its space."""
    from bayesnas.spaces import get_space

    return get_space(genotype.space, genotype.config).describe(genotype)


def _require_out_when_distributed(args: argparse.Namespace) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not args.out:
        raise ConfigError(f"a distributed {args.command} (torchrun) needs --out: every process must use the same "
                          "folder")


def cmd_search(args: argparse.Namespace) -> int:
    from bayesnas.api import search
    from bayesnas.distributed import is_main_process
    from bayesnas.methods import get_method

    _require_out_when_distributed(args)
    run = search(search_config(args), out=args.out, preset=args.preset, device=args.device, resume=args.resume,
                 data_dir=args.data_dir, download=args.download, progress=not args.no_progress,
                 log_epochs=args.no_progress)
    if not is_main_process():
        return 0
    config, summary, genotype, out = run.config, run.summary, run.genotype, run.path
    print(f"chosen architecture ({config.method} on {config.dataset}):")
    print(_describe(genotype))
    print(f"validation accuracy {summary['val_accuracy']:.4f} (the selection's own split: optimistic)   "
          f"test accuracy {summary['test_accuracy']:.4f} (unbiased)")
    print(f"search {summary['search_seconds']:.1f} s, selection {summary['select_seconds']:.1f} s, export "
          f"{summary.get('export_seconds', 0.0):.1f} s (posterior draws, predictive groups, plots)")
    shared = f" (super-network {summary['supernet_params']:,})" if "supernet_params" in summary else ""
    print(f"parameters {summary['params']:,}{shared}")
    fading = "log10_effective_architectures"
    if f"{fading}_first" in summary:
        print(f"effective number of architectures sharing the weights: 10^{summary[fading + '_first']:.2f} "
              f"(first epoch) -> 10^{summary[fading + '_last']:.2f} (last epoch)")
    for line in get_method(config.method).summary_lines(summary):  # the method's own figures
        print(line)
    files = ["summary.json", "genotype.json", "architecture.png", "posterior.nc", "training.png"]
    files += [p.name for p in sorted(out.glob("*.png")) if p.name not in files]
    print(f"run folder: {out}  ({', '.join(files)})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from bayesnas.api import train
    from bayesnas.spaces import genotype_path

    out = Path(args.out) if args.out else genotype_path(args.genotype).parent
    result = train(args.genotype, dataset=chosen_dataset(args), out=out, force=args.force, epochs=args.epochs,
                   batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, cutout=args.cutout,
                   auxiliary=args.auxiliary, drop_path=args.drop_path, precision=args.precision,
                   channels_last=args.channels_last, seed=args.seed or 0, data_fraction=args.data_fraction,
                   space_options=dict(_parse_option(o, "--space-option") for o in args.space_option),
                   device=args.device, data_dir=args.data_dir, download=args.download, progress=not args.no_progress)
    print(f"trained {args.genotype} on {result['dataset']}: test accuracy {result['test_accuracy']:.4f}, "
          f"parameters {result['params']:,} (without the auxiliary head; with it "
          f"{result['params_with_auxiliary']:,}) -> {out / 'train_summary.json'}, weights {out / 'model.pt'}")
    return 0


def attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings written under the fields of dataclass ``cls`` and its bases (``x: int = 0`` then
    ``\"\"\"what x is\"\"\"``), as one line of plain text each."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]
        except (OSError, TypeError):
            continue
        for field, doc in zip(body, body[1:], strict=False):
            if isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name) \
                    and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
                docs[field.target.id] = plain_text(str(doc.value.value))
    return docs


def plain_text(doc: str) -> str:
    """A docstring as one line of plain text for the terminal (``x`` -> x, :func:`~a.b.f` -> f)."""
    doc = re.sub(r":(\w+):`~?([^`]+)`", lambda m: m.group(2) if m.group(1) == "mod" else m.group(2).rsplit(".", 1)[-1],
                 doc)
    return " ".join(doc.replace("``", "").split())


def cmd_draw(args: argparse.Namespace) -> int:
    from bayesnas.drawing import ARCHITECTURE_FILE, draw_genotype
    from bayesnas.spaces import genotype_path, load_genotype

    genotype = load_genotype(args.genotype)
    path = draw_genotype(genotype, Path(args.out) if args.out else genotype_path(args.genotype).parent
                         / ARCHITECTURE_FILE)
    print(f"drew {args.genotype} ({genotype.space}) -> {path}")
    return 0


def cmd_latency(args: argparse.Namespace) -> int:
    from bayesnas.data import load_dataset
    from bayesnas.infer import resolve_device
    from bayesnas.methods import shaped_space
    from bayesnas.spaces import latency

    config = search_config(args)
    out = Path(args.out)
    if out.exists():
        raise ConfigError(f"{out} exists; --out names a new file")
    batch_size = latency.BATCH_SIZE if args.timed_batch_size is None else args.timed_batch_size
    runs = latency.RUNS if args.runs is None else args.runs
    if batch_size < 1 or runs < 1:
        raise ConfigError(f"--batch-size and --runs must be >= 1, got {batch_size} and {runs}")
    device = resolve_device(args.device)
    data = load_dataset(config.dataset, data_dir=args.data_dir, seed=config.split_seed, fraction=config.data_fraction)
    space = shaped_space("chain", data, config.space)
    table = latency.measure(space, device, batch_size, runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.save(out)
    print(f"{len(table.ms)} mixops timed on {table.device} at batch {table.batch_size} ({table.source}); fastest "
          f"architecture {table.fastest():.4g} ms -> {out}")
    return 0


def cmd_options(args: argparse.Namespace) -> int:
    if args.what == "config":
        print_keys(SearchConfig, "configuration keys (a --config file's, or the search flags')", {}, "")
    elif args.what == "space":
        if args.space is None:
            raise ConfigError(f"name the space: bayesnas options space {{{','.join(sorted(SPACE_DEFAULTS))}}}")
        from bayesnas.methods import DATA_SHAPE
        from bayesnas.spaces import SPACES

        print_keys(typing.get_type_hints(SPACES[args.space])["config"],
                   f"--space-option KEY=VALUE keys of the {args.space} space, with the values a preset moved to it "
                   f"starts from", SPACE_DEFAULTS[args.space], "moved", skip=DATA_SHAPE)
    else:
        from bayesnas.methods import get_method

        name = f"{args.what}-digits"
        print_keys(get_method(args.what).options_type, f"--option KEY=VALUE keys of {args.what}, with the values "
                   f"of the preset {name}", PRESETS.get(name, {}).get("options", {}), name)
    return 0


def print_keys(cls: type, title: str, preset_values: dict[str, Any], label: str, skip: tuple[str, ...] = ()) -> None:
    """Each field of dataclass ``cls`` but ``skip``: type, declared domain, default, the value in ``preset_values``
    (shown after ``label``) and its docstring."""
    import dataclasses

    docs = attribute_docs(cls)
    print(f"{title}:")
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        preset = f"; {label}: {json.dumps(preset_values[field.name])}" if field.name in preset_values else ""
        domain = f", {domain_text(cls, field.name)}" if "domain" in field.metadata else ""
        print(f"  {field.name} ({field.type}{domain}, default {json.dumps(default)}{preset})")
        if field.name in docs:
            print(f"      {docs[field.name]}")


def cmd_speed(args: argparse.Namespace) -> int:
    from bayesnas.infer import resolve_device
    from bayesnas.speed import MODES, fastest_mode

    choice = fastest_mode(resolve_device(args.device), refresh=args.refresh)
    print(f"{choice.machine}:")
    for mode in MODES:
        mark = "   <- fastest" if mode == choice.mode else ""
        print(f"  {mode:<20} {1000 * choice.seconds[mode]:9.1f} ms/step  {choice.ratio(mode):6.3f}x fp32{mark}")
    print("cached; --refresh measures again")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from bayesnas.api import predict

    result = predict(args.run, samples=args.samples, split=args.split, seed=args.seed, out=args.out,
                     device=args.device, data_dir=args.data_dir, download=args.download)
    print(f"{result['method']} on {args.split}, {args.samples} draws (seed {args.seed}):")
    for name in ("bma", "inherited", "retrained"):
        if name in result:
            r = result[name]
            difference = r.get("bma_nll_minus_this")
            versus = "" if difference is None else (
                f"  (BMA NLL minus this {difference['mean']:+.4f}, 95 % interval "
                f"{difference['interval_95'][0]:+.4f} to {difference['interval_95'][1]:+.4f})")
            print(f"  {name:<10} accuracy {r['accuracy']:.4f}  NLL {r['nll']:.4f}  Brier {r['brier']:.4f}  "
                  f"ECE {r['ece']:.4f}{versus}")
    print(f"written to {args.out or args.run}: predict_{args.split}.json, reliability_{args.split}.png, "
          f"samples_{args.split}.png")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from bayesnas.api import ensemble

    result = ensemble(args.run, members=args.members, strategy=args.strategy, candidates=args.candidates,
                      epochs=args.epochs, seed=args.seed, resamples=args.resamples, out=args.out,
                      device=args.device, data_dir=args.data_dir, download=args.download,
                      progress=not args.no_progress)
    if result is None:  # another process of a torchrun launch
        return 0
    from bayesnas.ensembles import report_table

    print(f"{result['method']} on {result['dataset']}: {args.members} members by {args.strategy}, "
          f"{result['test_examples']} test images")
    print(report_table(result))
    print(f"written to {args.out or Path(args.run) / f'ensemble-{args.strategy}-{args.members}'}: ensemble.json, "
          "ensemble.md, shift.png, reliability.png, members/")
    return 0


def _compare(args: argparse.Namespace, out: Path) -> int:
    from bayesnas import diagnostics
    from bayesnas.io import write_json

    table, labels = diagnostics.compare_runs(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "compare.csv")
    write_json(out / "runs.json", labels)
    print(table.round(3).to_string())
    print("elpd_heldout: sum over the held-out validation examples of log(mean predictive probability over the "
          "run's posterior draws), higher is better; se its standard error; elpd_diff the best's minus this, dse "
          "its standard error from the paired examples; weight: stacking weights on these examples")
    diagnostics.save_figure(diagnostics.plot_heldout_compare(table), out / "compare.png")
    print(f"written to {out}: compare.csv, compare.png, runs.json")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    import pandas as pd

    from bayesnas import diagnostics
    from bayesnas.io import write_json

    out = Path(args.out or f"runs/diagnose-{time.strftime('%Y%m%d-%H%M%S')}")
    inside = [run for run in args.runs if out.resolve().is_relative_to(Path(run).resolve())]
    if inside:
        raise ConfigError(f"--out {out} lies inside the run {inside[0]}: diagnose only reads runs; choose a folder "
                          "outside them")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; choose a new --out")
    if args.compare:
        return _compare(args, out)
    idata = diagnostics.load_runs(args.runs, allow_mixed=args.allow_mixed)
    out.mkdir(parents=True, exist_ok=True)
    labels = [str(c) for c in idata.posterior.coords["chain"].values]
    chains = [{"chain": label, "run": str(run)} for label, run in zip(labels, args.runs, strict=True)]
    write_json(out / "chains.json", chains)
    print("chains: " + "; ".join(f"{c['chain']} = {c['run']}" for c in chains))
    table = diagnostics.summary(idata)
    table.to_csv(out / "summary.csv")
    categorical = diagnostics.categorical_variable(idata)
    if categorical is not None:  # one row per decision, not one per (decision, op) indicator
        decisions = diagnostics.decision_summary(idata, categorical)
        decisions.to_csv(out / "decisions.csv")
        diagnostics.plot_decision_forest(idata, categorical, out / "diagnose_forest.png")
        print(f"most probable op per decision ({categorical}; probability over all runs' draws, the runs' lowest "
              f"and highest{', r_hat across runs' if 'r_hat' in decisions else ''}; summary.csv holds every op):")
        table = decisions.round(3)
    with pd.option_context("display.max_rows", 500, "display.max_columns", 20, "display.width", 200):
        print(table)
    print(f"ESS: the draws of q are independent, so ESS is close to the number of draws "
          f"({idata.posterior.sizes['draw']} per run) by construction. "
          + ("r_hat compares the runs (different seeds): near 1 where independent searches found the same "
             "posterior." if len(args.runs) > 1 else
             "r_hat needs two or more runs (chains), so it is left out: pass runs of other seeds."))
    if "constant_data" in idata.groups() and "drop_rate" in idata.constant_data:
        rates = idata.constant_data["drop_rate"].mean("run")
        diagnostics.plot_matrix(rates.values, [str(v) for v in rates.coords["layer"].values],
                                [str(v) for v in rates.coords["branch"].values],
                                f"drop rate p, mean over {len(args.runs)} run(s)", out / "diagnose_drop_rates.png")
    if "constant_data" in idata.groups() and "snr" in idata.constant_data:  # VINNAS
        snr = idata.constant_data["snr"].mean("run").to_pandas()
        print(f"\npositive SNR mu/sigma^2 of alpha per decision (mean over {len(args.runs)} run(s)):")
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(snr.round(2).to_string())
        diagnostics.plot_matrix(snr.values, [str(e) for e in snr.index], [str(o) for o in snr.columns],
                                "positive SNR of alpha", out / "diagnose_snr.png")
    forest = next((v for v in ("keep_fraction", "op_weight") if v in idata.posterior), None)
    if forest is not None:
        diagnostics.plot_forest(idata, forest, out / "diagnose_forest.png")
    for label, run in zip(labels, args.runs, strict=True):
        diagnostics.plot_training(Path(run), out / f"training_{label.replace('/', '_')}.png")
    print(f"written to {out}: chains.json, summary.csv{', decisions.csv' if categorical else ''} and plots")
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    from bayesnas.distributed import is_main_process
    from bayesnas.experiments.rank import DEFAULT_PRESET, SUPERNETWORKS, run_rank

    config = search_config(argparse.Namespace(**{**vars(args), "preset": args.preset or DEFAULT_PRESET}))
    _require_out_when_distributed(args)
    out = Path(args.out or f"runs/rank-{config.dataset}-seed{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    result = run_rank(config, out, num_archs=args.num_archs, train_epochs=args.train_epochs,
                      population=args.population, device=args.device, data_dir=args.data_dir,
                      download=args.download, progress=not args.no_progress)
    if not is_main_process():
        return 0
    print(f"ranking correlation between super-network accuracy (validation) and stand-alone accuracy (test, "
          f"{args.train_epochs} epochs) of {result['num_architectures']} architectures ({args.population}):")

    def fmt(v: float | None) -> str:
        return "undefined" if v is None else f"{v:+.3f}"

    for name, label in SUPERNETWORKS.items():
        r = result[name]
        print(f"  {label:<20} Kendall tau {fmt(r['kendall_tau'])}   Pearson r {fmt(r['pearson_r'])}   "
              f"paper (ImageNet): Pearson {result['paper_pearson'][name]}")
    print(f"written: {out / 'rank.json'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    return {"fashion-mnist": _bench_fashion, "population": _bench_population, "compare": _bench_compare}[
        args.benchmark](args)


def _bench_fashion(args: argparse.Namespace) -> int:
    from bayesnas.experiments.bench import run_benchmark

    out = Path(args.out or f"runs/bench-{args.benchmark}-{args.budget}")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    run_benchmark(args.benchmark, args.budget, out, device=args.device, data_dir=args.data_dir, methods=methods,
                  results_dir=args.results, progress=not args.no_progress)
    print((out / "table.md").read_text())
    print(f"written: {out / 'table.md'}, {out / 'table.csv'}"
          + (f"; copies in {args.results}" if args.results else ""))
    return 0


def _bench_population(args: argparse.Namespace) -> int:
    from bayesnas.distributed import is_main_process
    from bayesnas.experiments.population import build_population, population_spec

    overrides = load_config_file(args.config) if args.config else {}
    if args.train_epochs is not None:
        overrides["options"] = {**overrides.get("options", {}), "retrain_epochs": args.train_epochs}
    spec = population_spec(args.space, args.dataset, overrides)
    _require_out_when_distributed(args)
    out = Path(args.out or f"runs/population-{args.space}-{args.dataset}")
    population = build_population(spec, out, n=args.n, enumerate_all=args.all, seeds=args.seeds,
                                  first_seed=args.first_seed, device=args.device, data_dir=args.data_dir,
                                  download=args.download, progress=not args.no_progress)
    if is_main_process():
        print((out / "population.md").read_text())
        print(f"written: {out} ({len(population.table())} networks, {population.collapsed} twin genotypes collapsed)")
    return 0


def _bench_compare(args: argparse.Namespace) -> int:
    from bayesnas.distributed import is_main_process
    from bayesnas.experiments.compare import method_overrides, run_compare, summary_lines

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    overrides = method_overrides(load_config_file(args.config) if args.config else {}, methods, args.epochs)
    _require_out_when_distributed(args)
    out = Path(args.out or Path(args.population) / "compare")
    result = run_compare(args.population, out, methods=methods, seeds=args.seeds, overrides=overrides,
                         device=args.device, data_dir=args.data_dir, progress=not args.no_progress)
    if is_main_process():
        print((out / "compare.md").read_text())
        print("\n".join(summary_lines(result)))
        print(f"written: {out}")
    return 0


COMMANDS = {"search": cmd_search, "train": cmd_train, "draw": cmd_draw, "options": cmd_options,
            "latency": cmd_latency, "diagnose": cmd_diagnose, "predict": cmd_predict, "rank": cmd_rank,
            "bench": cmd_bench, "speed": cmd_speed, "ensemble": cmd_ensemble}


PYTHON_NAME = re.compile(r"`(\w+)(?:=([^`]*))?`")
QUOTE = "'"
FLAGS = {"enumerate_all": "--all"}
"""Python arguments whose flag is not ``--`` + their name with dashes."""


def as_flags(message: str) -> str:
    """A library message in the command line's terms: the Python arguments it names in backquotes become flags
    (```out``` -> ``--out``, ```resume=True``` -> ``--resume``, ```device='cuda'``` -> ``--device cuda``)."""
    def flag(match: re.Match[str]) -> str:
        name, value = FLAGS.get(match.group(1), "--" + match.group(1).replace("_", "-")), match.group(2)
        return name if value in (None, "True") else f"{name} {value.strip(QUOTE)}"

    return PYTHON_NAME.sub(flag, message)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before the heavy imports: --help answers at once
    debug = args.debug or os.environ.get("BAYESNAS_DEBUG", "") not in ("", "0")
    try:
        return COMMANDS[args.command](args)
    except BayesNASError as err:  # the one family of errors raised on purpose (bayesnas.errors)
        if debug:
            raise
        print(f"bayesnas {args.command}: error: {as_flags(str(err))}", file=sys.stderr)
        return EXIT_ERROR
    except (MemoryError, RuntimeError) as err:  # a network or a draw too large for this machine's memory
        if debug or not (isinstance(err, MemoryError) or "allocate" in str(err)):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"bayesnas {args.command}: error: out of memory ({first}); choose smaller sizes (--debug shows the "
              "traceback)", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # the reader of our output stopped (e.g. `| head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:  # unreadable inputs, unwritable or full output locations: the OS's words, one line
        if debug:
            raise
        where = f": {err.filename}" if err.filename else ""
        print(f"bayesnas {args.command}: error: {err.strerror or err}{where} (--debug shows the traceback)",
              file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"bayesnas {args.command}: interrupted; continue with --resume --out <run folder>", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
