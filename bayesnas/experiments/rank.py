"""Ranking correlation between super-network accuracy and stand-alone accuracy (posterior fading, PC-NAS Sec. 4.4).

Two super-networks are trained on the same data with the same budget and settings: the uniform single-path
One-Shot one (method ``oneshot``) and the PC-NAS one (method ``pcnas``, ``proposal: pool``), on the space of the
configuration (the chain by default, or the cells). A sample of ``n`` architectures is
then evaluated with each super-network's shared weights (validation split, BatchNorm on batch statistics) and
trained alone from scratch with the standard trainer on a short budget (test split). Kendall's tau, Spearman's rho
(both with bootstrap intervals, as ``bayesnas bench compare`` reports them for any method on a population) and
Pearson's r between the two accuracies say how well each super-network ranks the architectures; the paper
reports Pearson 0.11 (One-Shot) and 0.92 (PC-NAS) on ImageNet, for "a batch of models from the candidates of
our final pool" (``population: pool``, the default); ``population: uniform`` samples the whole space instead.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bayesnas.config import ConfigError, SearchConfig
from bayesnas.distributed import World, agree, world_of
from bayesnas.infer import config_data, load_trained, resolve_device, run_search
from bayesnas.io import read_json, write_json
from bayesnas.methods import SearchMethod, get_method
from bayesnas.run_folder import check_folder, folder_in_use, pin_settings
from bayesnas.training import accuracy, search_recipe, train_network

RANK_FILE = "rank.json"
RANK_SETTINGS = "rank_config.json"
DEFAULT_PRESET = "pcnas-digits"
"""The settings of both super-networks where none are named."""
SUPERNETWORKS = {"oneshot": "one-shot (uniform)", "pcnas": "PC-NAS (pool)"}
"""The two super-networks compared (their methods and labels), as in PC-NAS Sec. 4.4 (Pearson 0.11 vs 0.92)."""
"""The settings a ranking folder was started with: continuing it (finished searches reused) needs the same."""


def correlation(x: list[float], y: list[float]) -> dict[str, Any]:
    """:func:`bayesnas.experiments.compare.rank_correlation` (Kendall's tau-b, Spearman's rho, bootstrap 95 %
    intervals; the statistics ``bayesnas bench compare`` reports) plus Kendall's p-value and Pearson's r with its
    p-value (the coefficient PC-NAS reports); None where undefined (constant input)."""
    from scipy import stats

    from bayesnas.experiments.compare import rank_correlation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns nan
        r = stats.pearsonr(x, y) if len(x) >= 2 else None
        tau_p = stats.kendalltau(x, y).pvalue

    def clean(v: Any) -> float | None:
        return None if v is None or not math.isfinite(float(v)) else float(v)

    return {**rank_correlation(x, y), "kendall_p": clean(tau_p), "pearson_r": clean(r.statistic if r else None),
            "pearson_p": clean(r.pvalue if r else None)}


def sample_architectures(method: SearchMethod, n: int, population: str, seed: int) -> list[list[int]]:
    """``n`` distinct architectures: the final interval's candidates of the pool (``pool``; completed from earlier
    intervals' candidates if too few), or uniform draws meeting the latency limit (``uniform``)."""
    generator = torch.Generator().manual_seed(seed)
    chosen: list[list[int]] = []
    completion = method.pool.completion
    if population == "pool":
        for record in reversed(method.pool.history):
            candidates = [list(c) for c, _ in record["candidate_potentials"]]
            for i in torch.randperm(len(candidates), generator=generator).tolist():
                arch = completion.complete(candidates[i], generator)
                if arch not in chosen and len(chosen) < n:
                    chosen.append(arch)
    elif population != "uniform":
        raise ConfigError(f"unknown population {population!r}: pool or uniform")
    for _ in range(100 * n):
        if len(chosen) >= n:
            break
        arch = completion.complete((), generator)
        if arch not in chosen:
            chosen.append(arch)
    return chosen


def run_rank(config: SearchConfig, out: str | Path, *, num_archs: int = 12, train_epochs: int = 10,
             population: str = "pool", device: str | torch.device = "auto", data_dir: str | Path | None = None,
             download: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train both super-networks (into ``out/oneshot`` and ``out/pcnas``; finished ones are reused), rank
    ``num_archs`` architectures with each and against stand-alone training; write and return ``rank.json``."""
    if config.method != "pcnas":
        raise ConfigError(f"bayesnas rank compares PC-NAS super-networks; the configuration's method is "
                          f"{config.method!r} (use a pcnas preset)")
    if num_archs < 3 or train_epochs < 1:
        raise ConfigError("rank needs at least 3 architectures and 1 training epoch")
    if population not in ("pool", "uniform"):
        raise ConfigError(f"unknown population {population!r}: pool or uniform")
    out = Path(out)
    # the two searches may have run before, into out/oneshot and out/pcnas (each checks its own folder)
    check_folder(out, "rank", ours=(out / RANK_FILE).exists(), preseeded=tuple(SUPERNETWORKS))
    settings = {**config.to_dict(), "num_archs": num_archs, "train_epochs": train_epochs,
                "population": population}
    with world_of(resolve_device(device)) as (world, device):
        agree(world, settings, f"ranking into {out}")
        with folder_in_use(out, "rank", world, lambda: pin_settings(out / RANK_SETTINGS, settings, "ranking")):
            return _rank(config, out, num_archs, train_epochs, population, device, world, data_dir, download,
                         progress and world.is_main)


def supernet_configs(config: SearchConfig) -> dict[str, SearchConfig]:
    """The searches of both super-networks, without retraining: ``oneshot`` (the options it shares with PC-NAS)
    and ``pcnas`` with the pool proposal."""
    pcnas = config.merged({"options": {"proposal": "pool", "retrain_epochs": 0}})
    shared = {f.name for f in dataclasses.fields(get_method("oneshot").options_type)}
    oneshot = dataclasses.replace(pcnas, method="oneshot",
                                  options={k: v for k, v in pcnas.options.items() if k in shared})
    return {"oneshot": oneshot, "pcnas": pcnas}


def _rank(config: SearchConfig, out: Path, num_archs: int, train_epochs: int, population: str, device: torch.device,
          world: World, data_dir: str | Path | None, download: bool, progress: bool) -> dict[str, Any]:
    configs = supernet_configs(config)
    summaries = {}
    for name, cfg in configs.items():
        run_dir = out / name
        if (run_dir / "summary.json").exists():  # a finished search (rank run again, or interrupted later)
            summaries[name] = read_json(run_dir / "summary.json")
            continue
        summaries[name] = run_search(cfg, run_dir, device=device, resume=(run_dir / "config.json").exists(),
                                     data_dir=data_dir, download=download, progress=progress)
    data = config_data(config, device, data_dir, download)
    methods = {name: load_trained(cfg, out / name, data, device) for name, cfg in configs.items()}
    archs = sample_architectures(methods["pcnas"], num_archs, population, config.seed)
    recipe = search_recipe(config, train_epochs)
    pcnas = methods["pcnas"]
    mine = {}  # a distributed rank trains every world-size-th architecture; the rows are gathered
    for i, arch in enumerate(tqdm(archs, desc="stand-alone training", disable=not progress)):
        if not world.owns(i):
            continue
        net = pcnas.space.build(pcnas.space.genotype_from_indices(arch)).to(device)
        train_network(net, data.train, data.val, recipe, config.seed, progress=False)
        ops = pcnas.ops(arch)
        mine[i] = {"ops": ops, **({"latency_ms": pcnas.table.latency(ops)} if pcnas.table is not None else {}),
                   "standalone_test_accuracy": accuracy(net, data.test),
                   "standalone_val_accuracy": accuracy(net, data.val),
                   **{f"{name}_supernet_accuracy": m.supernet_accuracy(arch, data.val)
                      for name, m in methods.items()}}
    gathered = world.gather(mine)
    rows = [gathered[i] for i in range(len(archs))]
    standalone = [r["standalone_test_accuracy"] for r in rows]
    result = {
        "dataset": config.dataset, "seed": config.seed, "num_architectures": len(rows), "population": population,
        "train_epochs": train_epochs, "search_epochs": config.epochs, "device": str(device),
        **{name: {**correlation([r[f"{name}_supernet_accuracy"] for r in rows], standalone),
                  "effective_architectures_last": summaries[name].get("effective_architectures_last"),
                  "run": str(out / name)} for name in configs},
        "paper_pearson": {"oneshot": 0.11, "pcnas": 0.92},
        "architectures": rows,
    }
    if world.is_main:
        write_json(out / RANK_FILE, result)
    return result
