"""Two builds of one ground truth: how well their populations agree, and every pick placed in both together.

A population's percentiles are only as good as its ranking of genotypes. Two builds of the same population (the
same space, split and recipe, e.g. on two machines whose floating point differs, or with other training seeds)
should rank the genotypes alike; this script reports, over the genotypes both hold, Kendall's tau and Spearman's
rho with bootstrap 95 % intervals (:func:`bayesnas.experiments.compare.rank_correlation`) of their test accuracies
(each the mean over the build's training seeds) and of their validation accuracies, the mean absolute difference, and,
within each build, the same between training seeds 0 and 1 (one seed's ranking against another's: the floor that a
single-seed population would have).

Then, for each pair of comparisons given (``--pair A_COMPARE B_COMPARE``: the same methods searched against each
build), every method's picks of both (2 x its seeds) placed in the merged population of the genotypes both builds
hold, whose accuracy per genotype is the mean of the two builds' means (so with both builds' training seeds): the
mean percentile, its sd over the picks and the standard error of the mean (a pick trained in one build only is
left out and counted as ``missing``).

    python benchmarks/two_builds.py POPULATION_A POPULATION_B [--pair A_COMPARE B_COMPARE ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from bayesnas.experiments.compare import rank_correlation
from bayesnas.experiments.population import Population, choices_key, percentile_of


def _line(label: str, x: list[float], y: list[float]) -> str:
    r: dict[str, Any] = rank_correlation(x, y)
    tau, rho = r["kendall_tau_95"], r["spearman_rho_95"]
    return (f"{label}: n={r['n']} kendall_tau={r['kendall_tau']:+.3f} [{tau[0]:+.2f}, {tau[1]:+.2f}] "
            f"spearman_rho={r['spearman_rho']:+.3f} [{rho[0]:+.2f}, {rho[1]:+.2f}] "
            f"mean_abs_diff={statistics.fmean(abs(a - b) for a, b in zip(x, y, strict=True)):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="a population folder")
    parser.add_argument("b", help="another build of the same population")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A_COMPARE", "B_COMPARE"),
                        help="compare folders (holding compare.json) of the same methods against A and against B")
    args = parser.parse_args()
    populations = [Population(folder) for folder in (args.a, args.b)]
    tables = [{t["key"]: t for t in p.table()} for p in populations]
    space = populations[0].space
    keys = [k for k in tables[0] if k in tables[1]]
    for metric in ("test_accuracy", "val_accuracy"):
        print(_line(f"{metric} A vs B", [tables[0][k][metric] for k in keys], [tables[1][k][metric] for k in keys]))
    for name, table in zip("AB", tables, strict=True):
        both = [k for k in keys if {"test_accuracy_seed0", "test_accuracy_seed1"} <= table[k].keys()]
        if len(both) < 3:  # one training seed per genotype
            continue
        print(_line(f"test_accuracy seed 0 vs seed 1 in {name}", [table[k]["test_accuracy_seed0"] for k in both],
                    [table[k]["test_accuracy_seed1"] for k in both]))
    merged = {k: (tables[0][k]["test_accuracy"] + tables[1][k]["test_accuracy"]) / 2 for k in keys}
    merged_accuracies = list(merged.values())

    for folders in args.pair:
        results = [json.loads((Path(f) / "compare.json").read_text()) for f in folders]
        picks: dict[str, list[str]] = {}
        for result in results:
            for row in result["methods"]:
                picks.setdefault(row["method"], []).extend(  # a pick's network: its twins are one member
                    choices_key(space, json.loads(p["genotype"]))
                    for p in row["per_seed"])
        for method, genotypes in picks.items():
            values = [percentile_of(merged_accuracies, merged[g]) for g in genotypes if g in merged]
            missing = len(genotypes) - len(values)  # trained in one build only
            if not values:
                print(f"{folders[0]} + {folders[1]} {method}: no pick is in both builds (missing={missing})")
                continue
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"{folders[0]} + {folders[1]} {method}: picks={len(values)} missing={missing} merged_percentile="
                  f"{statistics.fmean(values):.1f} sd={sd:.1f} se={sd / len(values) ** 0.5:.1f} "
                  f"per_pick={' '.join(f'{v:.0f}' for v in values)}")


if __name__ == "__main__":
    main()
