"""Split a population whose comparisons appended their picks back into its reference and the placed picks, and
place every pick of those comparisons against the reference alone.

Before comparisons kept the reference fixed, ``bench compare`` trained a pick that was no member into the
population itself, so the population grew with every comparison (the Fashion-MNIST cells: 50 -> 64 -> 67
genotypes) and a method's percentile depended on which other methods had run. This script rewrites such a folder
as ``bench compare`` now leaves one: ``population.jsonl`` keeps the first ``--members`` networks (the build's own
draws, checked against :func:`bayesnas.experiments.population.sample_genotypes` with the configuration's seed), and
the other rows move to ``placed.jsonl`` beside each comparison whose picks they are. It then prints, per comparison and
method, every pick's percentile among the reference's members and their mean with a bootstrap 95 % interval over
search seeds, and writes ``fixed_reference.json`` beside each comparison (a pick whose training is in none of the
folders is left out and counted as missing). Run it once (a second run finds nothing to move and prints the same
table):

    python benchmarks/fixed_reference.py POPULATION --members N COMPARE_FOLDER [COMPARE_FOLDER ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bayesnas.experiments.compare import PLACED_FILE, mean_interval
from bayesnas.experiments.population import (
    ROWS_FILE,
    Population,
    choices_key,
    network_key,
    percentile_of,
    sample_genotypes,
)
from bayesnas.io import read_jsonl, write_json, write_jsonl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("population")
    parser.add_argument("--members", type=int, required=True, help="networks the build drew (its --n)")
    parser.add_argument("compares", nargs="+", help="folders holding a compare.json against this population")
    args = parser.parse_args()
    folder = Path(args.population)
    population = Population(folder)
    space = population.space

    def key(row: dict) -> str:
        return choices_key(space, row["choices"])

    drawn = [network_key(space, g) for g in sample_genotypes(space, args.members, population.spec.config.seed)]
    rows = population.rows
    reference = [r for r in rows if key(r) in set(drawn)]
    if list(dict.fromkeys(key(r) for r in reference)) != drawn:
        raise SystemExit(f"{folder}: the population's first networks are not the build's {args.members} draws")
    strangers = [r for r in rows if key(r) not in set(drawn)]
    compares = {Path(c): json.loads((Path(c) / "compare.json").read_text()) for c in args.compares}
    for path, result in compares.items():
        picked = {p["genotype"] for m in result["methods"] for p in m["per_seed"]}
        mine = [r for r in strangers if r["key"] in picked]
        if mine:
            old = read_jsonl(path / PLACED_FILE)
            write_jsonl(path / PLACED_FILE, old + [r for r in mine if r not in old])
    if strangers:
        write_jsonl(folder / ROWS_FILE, reference)
        print(f"{folder}: {len(reference)} rows of {args.members} networks kept, {len(strangers)} rows moved")
    population = Population(folder)
    table = {t["key"]: t["test_accuracy"] for t in population.table()}
    means = list(table.values())
    for path, result in compares.items():
        placed: dict[str, list[float]] = {}
        for r in read_jsonl(path / PLACED_FILE):
            placed.setdefault(key(r), []).append(r["test_accuracy"])
        out = []
        for method in result["methods"]:
            picks = []
            for p in method["per_seed"]:
                k = choices_key(space, json.loads(p["genotype"]))
                accuracy = table.get(k, statistics.fmean(placed[k]) if k in placed else None)
                picks.append({"seed": p["seed"], "member": k in table, "test_accuracy": accuracy,
                              "percentile": None if accuracy is None else percentile_of(means, accuracy),
                              "before": p["percentile"]})
            missing = sum(p["percentile"] is None for p in picks)
            pct = [p["percentile"] for p in picks if p["percentile"] is not None]
            if not pct:
                print(f"{path} {method['method']}: none of its {len(picks)} picks is trained in {folder}")
                continue
            interval = mean_interval(pct)
            out.append({"method": method["method"], "seeds": len(pct), "missing": missing,
                        "percentile": statistics.fmean(pct),
                        "percentile_95": interval, "before": method["percentile"], "per_seed": picks})
            print(f"{path} {method['method']}: {len(picks)} picks ({sum(p['member'] for p in picks)} members, "
                  f"{missing} not trained: left out), "
                  f"percentile against the {len(means)}-network reference {statistics.fmean(pct):.1f} "
                  + (f"[{interval[0]:.1f}, {interval[1]:.1f}]" if interval else "")
                  + f" (against the grown population: {method['percentile']:.1f}); per pick "
                  + " ".join(f"{p:.0f}" for p in pct))
        write_json(path / "fixed_reference.json", {"population": str(folder), "members": len(means), "methods": out})


if __name__ == "__main__":
    main()
