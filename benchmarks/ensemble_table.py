"""One table and one plot of several ``bayesnas ensemble`` results (one per method), e.g. issue 38's Fashion-MNIST set:

    python benchmarks/ensemble_table.py OUT gdas=RUN/ensemble-draws-5 vinnas=... pcnas=... pgnas=...

writes ``OUT/ensembles.md`` (per method and predictor: test accuracy, NLL, Brier, ECE with their bootstrap 95 %
intervals, NLL and ECE after temperature scaling, disagreement, OOD AUROC, NLL and ECE at each shift severity; then
per method whether the posterior ensemble's NLL and ECE are below the deep ensemble's with intervals apart, in
distribution and at every severity >= 3) and ``OUT/ensembles_shift.png`` (NLL and ECE against severity, one panel
row per method).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure

from bayesnas.ensembles import score_cell as cell
from bayesnas.shift import SEVERITIES


def apart_below(a: dict, b: dict) -> bool:
    """Whether ``a``'s interval lies wholly below ``b``'s."""
    return a["interval_95"][1] < b["interval_95"][0]


def verdict(result: dict) -> str:
    """Where the posterior ensemble's NLL and ECE lie below the deep ensemble's with intervals apart."""
    post, deep = result["predictors"]["posterior"], result["predictors"]["deep"]
    places = [("test", post["test"], deep["test"])] + [
        (f"severity {s}", post["severity"][str(s)], deep["severity"][str(s)]) for s in SEVERITIES if s >= 3]
    parts = []
    for where, p, d in places:
        marks = [f"{key.upper()} {'yes' if apart_below(p[key], d[key]) else 'no'}" for key in ("nll", "ece")]
        parts.append(f"{where}: {', '.join(marks)}")
    accuracy = "yes" if post["test"]["accuracy"]["interval_95"][0] > deep["test"]["accuracy"]["interval_95"][1] \
        else "no"
    paired = "; ".join(f"{where.replace('_', ' ')} {d['mean']:+.4f} [{d['interval_95'][0]:+.4f}, "
                       f"{d['interval_95'][1]:+.4f}]" for where, d in result["posterior_nll_minus_deep"].items())
    return (f"{'; '.join(parts)}; test accuracy above with intervals apart: {accuracy}. Paired NLL difference "
            f"posterior - deep (bootstrap 95 %): {paired}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("results", nargs="+", help="LABEL=FOLDER of a finished `bayesnas ensemble`")
    args = parser.parse_args()
    results = {}
    for item in args.results:
        label, _, folder = item.partition("=")
        results[label] = json.loads((Path(folder) / "ensemble.json").read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["| method | predictor | accuracy | NLL | Brier | ECE | NLL (T) | ECE (T) | disagreement | OOD AUROC |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, result in results.items():
        for name, p in result["predictors"].items():
            t, tt = p["test"], p["test_tempered"]
            auroc = p.get("ood_auroc")
            lines.append(f"| {label} | {name} | {cell(t['accuracy'])} | {cell(t['nll'])} | {cell(t['brier'])} | "
                         f"{cell(t['ece'])} | {cell(tt['nll'])} | {cell(tt['ece'])} | {p['disagreement']:.4f} | "
                         f"{'-' if auroc is None else f'{auroc:.4f}'} |")
    lines += ["", "| method | predictor | " + " | ".join(f"NLL s{s}" for s in SEVERITIES) + " | "
              + " | ".join(f"ECE s{s}" for s in SEVERITIES) + " |", "|---|---|" + "---|" * (2 * len(SEVERITIES))]
    for label, result in results.items():
        for name, p in result["predictors"].items():
            values = [cell(p["severity"][str(s)][key]) for key in ("nll", "ece") for s in SEVERITIES]
            lines.append(f"| {label} | {name} | " + " | ".join(values) + " |")
    lines += ["", "Posterior ensemble below the deep ensemble, intervals apart:", ""]
    for label, result in results.items():
        seconds = result["seconds"]
        lines.append(f"- {label} ({len(result['architectures'])} members, {seconds / 60:.1f} min): "
                     f"{verdict(result)}")
    (args.out / "ensembles.md").write_text("\n".join(lines) + "\n")
    fig = Figure(figsize=(9, 2.8 * len(results)))
    axes = fig.subplots(len(results), 2, squeeze=False)
    for row, (label, result) in zip(axes, results.items(), strict=True):
        for ax, key in zip(row, ("nll", "ece"), strict=True):
            for name, p in result["predictors"].items():
                scores = [p["test"][key]] + [p["severity"][str(s)][key] for s in SEVERITIES]
                ax.errorbar([0, *SEVERITIES], [s["value"] for s in scores],
                            yerr=[[s["value"] - s["interval_95"][0] for s in scores],
                                  [s["interval_95"][1] - s["value"] for s in scores]],
                            marker="o", markersize=3, capsize=2, label=name)
            ax.set(xlabel="shift severity (0: clean test)", ylabel=key.upper(), title=f"{label}: {key.upper()}")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "ensembles_shift.png", dpi=120)
    print((args.out / "ensembles.md").read_text())


if __name__ == "__main__":
    main()
