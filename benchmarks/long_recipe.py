"""Does a short ground truth rank architectures as longer training does?

A population's recipe is short (a few epochs on a fraction of the images) so that a whole space can be trained on
a few cores. This script trains ``--members`` networks of a population, spread evenly over its ranking (every
k-th by mean test accuracy, both ends included), again under a longer recipe (``--data-fraction`` of the training
images for ``--epochs`` epochs; the same split seed, space and optimiser settings) with ``--seeds`` training seeds,
into a population folder of its own, and prints Kendall's tau and Spearman's rho between the short recipe's means
and the long one's, with percentile-bootstrap 95 % intervals over the networks
(:func:`bayesnas.experiments.compare.rank_correlation`), beside the long recipe's own seed-to-seed agreement. The
compute ratio printed is (data fraction x epochs) long over short. Under ``torchrun`` the trainings are dealt to the
ranks.

    python benchmarks/long_recipe.py POPULATION OUT [--members 16] [--seeds 2] [--data-fraction 0.4] [--epochs 10]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from bayesnas.distributed import world_of
from bayesnas.experiments.compare import rank_correlation
from bayesnas.experiments.population import (
    ROWS_FILE,
    Population,
    PopulationSpec,
    add_members,
    load_population_data,
    pin_population,
    write_report,
)
from bayesnas.spaces import Genotype


def spread(keys_by_accuracy: list[str], k: int) -> list[str]:
    """``k`` keys at evenly spaced ranks of ``keys_by_accuracy`` (first and last included)."""
    n = len(keys_by_accuracy)
    if k >= n:
        return list(keys_by_accuracy)
    return [keys_by_accuracy[round(i * (n - 1) / (k - 1))] for i in range(k)]


def _line(label: str, x: list[float], y: list[float]) -> str:
    r = rank_correlation(x, y, resamples=2000)
    tau, rho = r["kendall_tau_95"], r["spearman_rho_95"]
    return (f"{label}: n={r['n']} kendall_tau={r['kendall_tau']:+.3f} [{tau[0]:+.2f}, {tau[1]:+.2f}] "
            f"spearman_rho={r['spearman_rho']:+.3f} [{rho[0]:+.2f}, {rho[1]:+.2f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("population")
    parser.add_argument("out")
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--data-fraction", type=float, default=0.4)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    short = Population(args.population)
    config = short.spec.config.merged({"data_fraction": args.data_fraction,
                                       "options": {"retrain_epochs": args.epochs}})
    spec = PopulationSpec(config)
    table = sorted(short.table(), key=lambda t: t["test_accuracy"])
    chosen = spread([t["key"] for t in table], args.members)
    entries = short.genotypes()
    out = Path(args.out)
    with world_of(torch.device("cpu")) as (world, device):
        data = load_population_data(spec, device)
        space = spec.space(data)
        if world.is_main:
            pin_population(out, spec)
        world.barrier()
        genotypes = [Genotype(space.name, space.config.to_dict(), entries[k]["choices"]) for k in chosen]
        add_members(out / ROWS_FILE, spec, genotypes, range(args.seeds), data, world, world.is_main, desc="long")
        if not world.is_main:
            return
    long = Population(out)
    write_report(long)
    long_table = {t["key"]: t for t in long.table()}
    short_table = {t["key"]: t for t in table}
    keys = [k for k in chosen if k in long_table]
    ratio = (args.data_fraction * args.epochs) / (short.spec.config.data_fraction * short.spec.recipe.epochs)
    print(f"{len(keys)} networks of {args.population}, long recipe {args.epochs} epochs on {args.data_fraction} of "
          f"the training images ({ratio:.1f}x the short recipe's compute), {args.seeds} seeds; mean seconds per "
          f"long training {statistics.fmean(r['seconds'] for r in long.rows):.1f}")
    print(_line("short mean vs long mean (test)", [short_table[k]["test_accuracy"] for k in keys],
                [long_table[k]["test_accuracy"] for k in keys]))
    if args.seeds >= 2:
        print(_line("long seed 0 vs long seed 1 (test)", [long_table[k]["test_accuracy_seed0"] for k in keys],
                    [long_table[k]["test_accuracy_seed1"] for k in keys]))
    print(f"long recipe: mean test accuracy {statistics.fmean(long_table[k]['test_accuracy'] for k in keys):.4f}, "
          f"short: {statistics.fmean(short_table[k]['test_accuracy'] for k in keys):.4f}")


if __name__ == "__main__":
    main()
