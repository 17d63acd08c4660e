"""Do bf16 + channels-last and fp32 training agree? Two populations of the same genotypes, one per precision.

Build both with ``bayesnas bench population`` from the same draws (same space, split and seed of the draws; only
``precision``/``channels_last`` differ), the fp32 one with two training seeds so that seed noise has a yardstick:

    echo '{"precision": "fp32"}' > fp32.json
    echo '{"precision": "bf16", "channels_last": true}' > bf16.json
    bayesnas bench population --space cells --dataset digits --config fp32.json --n 20 --seeds 2 \
        --train-epochs 10 --out pop-fp32
    bayesnas bench population --space cells --dataset digits --config bf16.json --n 20 --seeds 1 \
        --train-epochs 10 --out pop-bf16
    python benchmarks/precision_agreement.py pop-fp32 pop-bf16

It prints, over the genotypes in both: the mean test accuracy of each, the paired t-test of bf16 - fp32 (same
training seed 0, so the same initialisation and batches), Spearman's rho between the two precisions' accuracies and,
for scale, between fp32's two training seeds, the mean absolute differences, and the median seconds per training
(``ratio=`` bf16 / fp32; on a CPU without native bf16 the bf16 arithmetic is emulated and slower).
"""

from __future__ import annotations

import argparse
import statistics

from scipy import stats

from bayesnas.experiments.population import Population


def accuracies(population: Population, seed: int) -> dict[str, dict[str, float]]:
    """``{genotype key: row}`` of one training seed."""
    return {r["key"]: r for r in population.rows if r["seed"] == seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fp32", help="population trained in fp32, two training seeds")
    parser.add_argument("bf16", help="the same genotypes trained in bf16 + channels-last")
    args = parser.parse_args()
    fp32, bf16 = Population(args.fp32), Population(args.bf16)
    first, second, fast = accuracies(fp32, 0), accuracies(fp32, 1), accuracies(bf16, 0)
    keys = [k for k in first if k in fast and k in second]
    if len(keys) < 3:
        raise SystemExit("fewer than 3 genotypes trained in both precisions (and with two fp32 seeds)")
    a, b, c = ([rows[k]["test_accuracy"] for k in keys] for rows in (first, fast, second))
    print(f"{len(keys)} genotypes; recipe epochs {fp32.spec.recipe.epochs}; {fp32.spec.config.dataset}")
    print(f"test accuracy: fp32 {statistics.fmean(a):.4f} +- {statistics.stdev(a):.4f}, bf16+cl "
          f"{statistics.fmean(b):.4f} +- {statistics.stdev(b):.4f} (seed 0); fp32 seed 1 {statistics.fmean(c):.4f}")
    paired = stats.ttest_rel(b, a)
    print(f"paired bf16 - fp32: mean {statistics.fmean(y - x for x, y in zip(a, b, strict=True)):+.4f}, "
          f"t = {paired.statistic:.2f}, p = {paired.pvalue:.3f}")
    print(f"spearman fp32 vs bf16+cl (seed 0): {stats.spearmanr(a, b).statistic:+.3f}; "
          f"fp32 seed 0 vs seed 1 (seed noise alone): {stats.spearmanr(a, c).statistic:+.3f}")
    print(f"mean |fp32 - bf16+cl| {statistics.fmean(abs(x - y) for x, y in zip(a, b, strict=True)):.4f}; "
          f"mean |fp32 seed 0 - seed 1| {statistics.fmean(abs(x - y) for x, y in zip(a, c, strict=True)):.4f}")
    slow, quick = (statistics.median(rows[k]["seconds"] for k in keys) for rows in (first, fast))
    print(f"seconds per training (median): fp32 {slow:.1f}, bf16+cl {quick:.1f}")
    print(f"ratio={quick / slow:.2f}")


if __name__ == "__main__":
    main()
