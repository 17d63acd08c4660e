"""Does bf16 + channels-last change what the searches find? Every method's digits search run in fp32 and in
bf16 + channels-last with the same seeds, and the test accuracies of their picks compared.

    OMP_NUM_THREADS=1 python benchmarks/precision_searches.py OUT [--seeds 3] [--methods pgnas,gdas,...]

Each run is ``bayesnas.search(preset="<method>-digits", seed=s, precision=..., channels_last=...)`` with the
budget below (``--epochs`` search epochs; a method's retraining shortened to the same number; PC-NAS one epoch
per decision after a warm-up of the rest), the same for both modes. A finished run (its ``summary.json``) is not
run again, so the script resumes, and several copies with disjoint ``--methods`` can share OUT. It prints, per
method, the mean and standard deviation over seeds of each mode's test accuracy, the paired difference
bf16 - fp32 (same seed: same initialisation, data split and batches) with its t-test, and how many seeds picked
the same architecture in both modes. The spread between seeds of one mode is the yardstick for the difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from scipy import stats

import bayesnas

MODES = {"fp32": {"precision": "fp32", "channels_last": False},
         "bf16+cl": {"precision": "bf16", "channels_last": True}}
METHODS = ("pgnas", "vinnas", "gdas", "pcnas")


def budget(method: str, epochs: int) -> dict[str, Any]:
    """Option overrides that fit ``method``'s digits preset into ``epochs`` search epochs (and as many epochs of
    retraining); few posterior draws, which only the exported posterior uses."""
    if method == "pgnas":
        return {"posterior_draws": 8}
    if method == "pcnas":  # one epoch per decision; the warm-up is what that leaves (the method derives it)
        return {"warmup_epochs": None, "interval_epochs": 1, "retrain_epochs": epochs}
    return {"warmup_epochs": epochs // 4, "retrain_epochs": epochs, "posterior_draws": 8}


def run(out: Path, method: str, mode: str, seed: int, epochs: int) -> dict[str, Any]:
    """The summary of one search, run unless it finished before."""
    folder = out / f"{method}-{mode}-seed{seed}"
    if not (folder / "summary.json").exists():
        print(f"running {folder.name}", flush=True)
        bayesnas.search(preset=f"{method}-digits", out=folder, seed=seed, epochs=epochs, device="cpu",
                        progress=False, resume=(folder / "checkpoint.pt").exists(), options=budget(method, epochs),
                        **MODES[mode])
    return json.loads((folder / "summary.json").read_text())


def mean_sd(values: list[float]) -> str:
    return f"{statistics.fmean(values):.4f} +- {statistics.pstdev(values):.4f}"


def report(method: str, summaries: dict[str, list[dict[str, Any]]]) -> str:
    """One line: each mode's accuracy over seeds, the paired difference, the same picks, the search seconds."""
    fp32, fast = ([s["test_accuracy"] for s in summaries[m]] for m in MODES)
    same = sum(a["genotype"] == b["genotype"] for a, b in zip(*summaries.values(), strict=True))
    diff = [b - a for a, b in zip(fp32, fast, strict=True)]
    test = stats.ttest_rel(fast, fp32) if len(diff) > 1 and any(diff) else None
    p = f"{test.pvalue:.3f}" if test is not None else "n/a"
    seconds = "/".join(f"{statistics.fmean(s['search_seconds'] for s in summaries[m]):.0f}" for m in MODES)
    return (f"{method:7} fp32 {mean_sd(fp32)}  bf16+cl {mean_sd(fast)}  paired diff {statistics.fmean(diff):+.4f} "
            f"(p={p})  same pick {same}/{len(diff)}  search seconds fp32/bf16+cl {seconds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}: choose from {list(METHODS)}")
    print(f"digits presets, {args.epochs} search epochs, seeds 0..{args.seeds - 1}; test accuracy mean +- sd over "
          "seeds")
    for method in methods:
        summaries = {mode: [run(args.out, method, mode, seed, args.epochs) for seed in range(args.seeds)]
                     for mode in MODES}
        print(report(method, summaries), flush=True)


if __name__ == "__main__":
    main()
