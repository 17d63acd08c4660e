"""Does the fast mode rank architectures as fp32 does? Two populations of the same genotypes, one per mode.

Build both with ``bayesnas bench population`` from the same space, split and recipe (only ``precision`` and
``channels_last`` differ), each with two training seeds, so that seed noise is the yardstick:

    echo '{"precision": "fp32"}' > fp32.json
    echo '{"precision": "bf16", "channels_last": true}' > fast.json
    bayesnas bench population --space chain --dataset fashion-mnist --config fp32.json --n 24 --seeds 2 --out pop-fp32
    bayesnas bench population --space chain --dataset fashion-mnist --config fast.json --n 24 --seeds 2 --out pop-fast
    python benchmarks/precision_agreement.py pop-fp32 pop-fast

(the fp32 population may be a larger one that holds the genotypes: only the genotypes in both are compared). Over
those genotypes it prints the mean test accuracy of each mode, the paired difference fast - fp32 (same training seed:
the same initialisation and batches) with its t-test, and Kendall's tau and Spearman's rho, each with a bootstrap 95 %
interval over the genotypes, of: fp32 seed 0 against seed 1 (what a training seed alone changes), the fast mode
against fp32 at the same seed, the fast mode's own two seeds, and the two-seed means of both modes; then the median
seconds per training (``ratio=`` fast / fp32).
"""

from __future__ import annotations

import argparse
import statistics

from scipy import stats

from bayesnas.experiments.compare import rank_correlation
from bayesnas.experiments.population import Population


def accuracies(population: Population, seed: int) -> dict[str, dict[str, float]]:
    """``{genotype key: row}`` of one training seed."""
    return {r["key"]: r for r in population.rows if r["seed"] == seed}


def line(label: str, x: list[float], y: list[float]) -> str:
    r = rank_correlation(x, y, resamples=2000)
    tau, rho = r["kendall_tau_95"], r["spearman_rho_95"]
    return (f"{label:<34} Kendall tau {r['kendall_tau']:+.3f} [{tau[0]:+.3f}, {tau[1]:+.3f}]  "
            f"Spearman rho {r['spearman_rho']:+.3f} [{rho[0]:+.3f}, {rho[1]:+.3f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fp32", help="population trained in fp32, training seeds 0 and 1")
    parser.add_argument("fast", help="the same genotypes trained in the fast mode, seeds 0 and 1")
    args = parser.parse_args()
    fp32, fast = Population(args.fp32), Population(args.fast)
    slow0, slow1, fast0, fast1 = accuracies(fp32, 0), accuracies(fp32, 1), accuracies(fast, 0), accuracies(fast, 1)
    keys = [k for k in fast0 if k in fast1 and k in slow0 and k in slow1]
    if len(keys) < 3:
        raise SystemExit("fewer than 3 genotypes trained with seeds 0 and 1 in both modes")
    a0, a1, b0, b1 = ([rows[k]["test_accuracy"] for k in keys] for rows in (slow0, slow1, fast0, fast1))
    modes = sorted({r.get("mode", fast.spec.recipe.precision) for r in fast.rows})
    print(f"{len(keys)} genotypes, seeds 0 and 1 in each mode; fast mode {', '.join(modes)}; recipe epochs "
          f"{fp32.spec.recipe.epochs}; {fp32.spec.config.dataset}")
    print(f"test accuracy (mean of both seeds): fp32 {statistics.fmean(a0 + a1):.4f}, fast "
          f"{statistics.fmean(b0 + b1):.4f}")
    differences = [y - x for x, y in zip(a0 + a1, b0 + b1, strict=True)]
    paired = stats.ttest_rel(b0 + b1, a0 + a1)
    print(f"paired fast - fp32 (same seed): mean {statistics.fmean(differences):+.4f}, t = {paired.statistic:.2f}, "
          f"p = {paired.pvalue:.3f}; mean |fast - fp32| {statistics.fmean(abs(d) for d in differences):.4f}, mean "
          f"|fp32 seed 0 - seed 1| {statistics.fmean(abs(x - y) for x, y in zip(a0, a1, strict=True)):.4f}")
    print(line("fp32 seed 0 vs fp32 seed 1", a0, a1))
    print(line("fast seed 0 vs fp32 seed 0", b0, a0))
    print(line("fast seed 1 vs fp32 seed 1", b1, a1))
    print(line("fast seed 0 vs fast seed 1", b0, b1))
    means = [(x + y) / 2 for x, y in zip(a0, a1, strict=True)], [(x + y) / 2 for x, y in zip(b0, b1, strict=True)]
    print(line("fast mean vs fp32 mean", means[1], means[0]))
    slow, quick = (statistics.median(rows[k]["seconds"] for k in keys) for rows in (slow0, fast0))
    print(f"seconds per training (median): fp32 {slow:.1f}, fast {quick:.1f}")
    print(f"ratio={quick / slow:.2f}")


if __name__ == "__main__":
    main()
