"""Architecture ensembles: K distinct architectures from a search's posterior, each retrained from scratch, their
predictive probabilities averaged, against a deep ensemble of the selected architecture at equal training cost.

Zaidi et al., "Neural Ensemble Search for Uncertainty Estimation and Dataset Shift", NeurIPS 2021, Sec. 3-4:
ensembles of networks of *different* architectures beat deep ensembles (Lakshminarayanan, Pritzel & Blundell,
"Simple and scalable predictive uncertainty estimation using deep ensembles", NeurIPS 2017: one architecture, K
initialisations) on NLL, calibration and shift. A posterior over architectures proposes the members:

- ``draws``: draw from the posterior (:meth:`~bayesnas.methods.SearchMethod.draw_genotype`) until K distinct
  architectures came (at most ``candidates`` draws);
- ``top``: the K architectures drawn most often among ``candidates`` draws (the Monte Carlo estimate of the K most
  probable under q; ties in order of first appearance);
- ``greedy``: from the distinct architectures of ``candidates`` draws, each scored on the validation split with the
  super-network's weights, add one at a time the one that most lowers the ensemble's validation NLL (NES-RS's
  forward selection, Zaidi et al. Algorithm 1, without replacement; Caruana et al., ICML 2004).

The members train with the method's retraining recipe (:meth:`~bayesnas.methods.SearchMethod.retrain_recipe`), the
posterior member ``i`` and the deep-ensemble member ``i`` with seed ``seed + i``; the single network is deep member
0. Each member is saved (weights only, atomically) as it finishes, so a killed ensemble resumes with the members it
has; under ``torchrun`` the processes share the members. Scores: :func:`score_predictors`.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from bayesnas import calibration, shift
from bayesnas.config import ConfigError
from bayesnas.data import Split
from bayesnas.domains import check_domains, setting
from bayesnas.io import load_weights, read_json, write_json
from bayesnas.predictive import NoPosteriorError, probabilities
from bayesnas.search_folder import save_tensors
from bayesnas.spaces import Genotype
from bayesnas.spaces.genotype import genotype_key
from bayesnas.training import retrain

if TYPE_CHECKING:
    from torch import nn

    from bayesnas.api import Run
    from bayesnas.data import DataBundle
    from bayesnas.distributed import World
    from bayesnas.methods import SearchMethod
    from bayesnas.training import TrainRecipe

STRATEGIES = ("draws", "top", "greedy")
PREDICTORS = ("posterior", "deep", "single")
"""The posterior ensemble, the deep ensemble of the selected architecture, and that architecture alone."""
SETTINGS_FILE = "ensemble_config.json"
ARCHITECTURES_FILE = "architectures.json"
RESULT_FILE = "ensemble.json"
MEMBERS_DIR = "members"


@dataclass(frozen=True)
class EnsembleSettings:
    """What ``bayesnas ensemble`` builds; ``epochs`` None: the method's own retraining epochs."""

    members: int = setting(5, "[1, 1000]")
    strategy: str = setting("draws", "{" + ", ".join(STRATEGIES) + "}")
    candidates: int = setting(64, "[1, 1000000]")
    """Draws at most (``draws``), or the draws ranked (``top``) and scored (``greedy``)."""
    epochs: int | None = setting(None, "[1, 100000] or null")
    seed: int = setting(0, "[0, 4294967295]")
    """Seed of the draws; member ``i`` trains with seed ``seed + i``."""
    resamples: int = setting(1000, "[10, 100000]")
    """Bootstrap resamples of each interval."""

    def __post_init__(self) -> None:
        check_domains(self)


@dataclass(frozen=True)
class Member:
    """One network to train: its name (``posterior-<i>``, ``deep-<i>``), architecture and seed."""

    name: str
    genotype: Genotype
    seed: int


def _draw(method: SearchMethod) -> Genotype:
    genotype = method.draw_genotype()
    if genotype is None:
        raise NoPosteriorError(f"method {method.name!r} holds no posterior over architectures to draw an ensemble "
                               "from (random search trains each candidate alone)")
    return genotype


def choose_architectures(method: SearchMethod, settings: EnsembleSettings,
                         score: Callable[[Genotype], torch.Tensor] | None = None, val_y: torch.Tensor | None = None,
                         progress: bool = False) -> tuple[list[Genotype], dict[str, Any]]:
    """The K architectures of ``settings.strategy`` and what the choice saw (draws made, distinct ones, greedy's
    validation NLL after each addition). ``score(genotype)``: validation probabilities with inherited weights
    (``greedy`` only). Draws use torch's global random state."""
    k, m = settings.members, settings.candidates
    genotypes: dict[str, Genotype] = {}
    if settings.strategy == "draws":
        made = 0
        while len(genotypes) < k and made < m:
            genotype = _draw(method)
            genotypes.setdefault(genotype_key(genotype), genotype)
            made += 1
        chosen, info = list(genotypes.values()), {"draws": made}
    else:
        counts: Counter[str] = Counter()
        for _ in range(m):
            genotype = _draw(method)
            key = genotype_key(genotype)
            genotypes.setdefault(key, genotype)
            counts[key] += 1
        info: dict[str, Any] = {"draws": m, "distinct": len(genotypes)}
        if settings.strategy == "top":
            ranked = sorted(genotypes, key=lambda key: -counts[key])  # stable: first appearance breaks ties
            chosen = [genotypes[key] for key in ranked[:k]]
            info["frequency"] = [counts[key] / m for key in ranked[:k]]
        else:
            if score is None or val_y is None:
                raise ValueError("the greedy strategy needs a score and the validation labels")
            keys = list(genotypes)
            probs = [score(genotypes[key]) for key in tqdm(keys, desc="score candidates", disable=not progress,
                                                            leave=False)]
            order, trace = forward_selection(torch.stack(probs), val_y, k)
            chosen = [genotypes[keys[i]] for i in order]
            info["val_nll"] = trace
    if len(chosen) < k:
        raise ConfigError(f"method {method.name!r}: {len(genotypes)} distinct architecture(s) in {info['draws']} "
                          f"draws, fewer than the {k} members asked for; raise `candidates` or lower `members`")
    return chosen, info


def forward_selection(member_probs: torch.Tensor, y: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
    """Greedy forward selection without replacement (Caruana et al. 2004; Zaidi et al. 2021, Algorithm 1): from
    ``(M, N, C)`` candidate probabilities, start with the candidate of the lowest NLL and add, ``k - 1`` times, the
    one whose addition gives the lowest NLL of the average; returns the chosen indices and the NLL after each."""
    member_probs, y = member_probs.double().cpu(), y.cpu()
    chosen: list[int] = []
    trace: list[float] = []
    total = torch.zeros_like(member_probs[0])
    for _ in range(min(k, len(member_probs))):
        losses = [calibration.nll((total + member_probs[i]) / (len(chosen) + 1), y) if i not in chosen
                  else float("inf") for i in range(len(member_probs))]
        best = min(range(len(losses)), key=losses.__getitem__)
        chosen.append(best)
        trace.append(losses[best])
        total = total + member_probs[best]
    return chosen, trace


def members(architectures: Sequence[Genotype], selected: Genotype, seed: int) -> list[Member]:
    """The posterior members and the deep-ensemble members (the selected architecture, one seed each)."""
    k = len(architectures)
    return ([Member(f"posterior-{i}", g, seed + i) for i, g in enumerate(architectures)]
            + [Member(f"deep-{i}", selected, seed + i) for i in range(k)])


def train_members(method: SearchMethod, plan: Sequence[Member], recipe: TrainRecipe, folder: Path, world: World,
                  progress: bool) -> None:
    """Train each member of ``plan`` that ``folder`` does not hold yet into ``folder/<name>.pt`` (and its figures
    into ``<name>.json``); under ``torchrun`` each member by the first process that claims it."""
    from bayesnas.distributed import work_claims

    folder.mkdir(parents=True, exist_ok=True)
    todo = [m for m in plan if not (folder / f"{m.name}.pt").exists()]
    with work_claims(folder, world) as claim:
        for member in tqdm(todo, desc="members", disable=not progress, leave=False):
            if not claim(member.name):
                continue
            start = time.perf_counter()
            net, val_acc, test_acc = retrain(method.space, member.genotype, method.data.train, method.data.val,
                                             method.data.test, recipe, member.seed, progress,
                                             **method.retrain_build_options())
            write_json(folder / f"{member.name}.json", {
                "name": member.name, "seed": member.seed, "genotype": member.genotype.to_dict(),
                "val_accuracy": val_acc, "test_accuracy": test_acc,
                "seconds": round(time.perf_counter() - start, 2), "rank": world.rank})
            save_tensors(folder / f"{member.name}.pt", net.state_dict())


def load_member(method: SearchMethod, member: Member, folder: Path) -> nn.Module:
    """A trained member, in eval mode."""
    net = method.space.build(member.genotype, **method.retrain_build_options()).to(method.device)
    net.load_state_dict(load_weights(folder / f"{member.name}.pt", method.device))
    return net.eval()


def member_probabilities(nets: Sequence[nn.Module], split: Split, precision: str) -> torch.Tensor:
    """``(K, N, C)`` class probabilities of each network on ``split``."""
    return torch.stack([probabilities(net, split, precision=precision).cpu() for net in nets])


def score_predictors(groups: dict[str, Sequence[nn.Module]], data: DataBundle, precision: str,
                     settings: EnsembleSettings, ood: torch.Tensor | None, progress: bool = False) -> dict[str, Any]:
    """Per predictor (the average of its networks' probabilities): test accuracy, NLL, Brier and ECE with bootstrap
    intervals, as they are and after temperature scaling fitted on the validation split (Guo et al. 2017, Sec.
    4.2); its members' diversity (mean pairwise disagreement on test); per corruption and severity of
    :mod:`bayesnas.shift` the four scores, and per severity over all corruptions with intervals; the AUROC of
    predictive entropy between the test split and the out-of-distribution images ``ood``. The posterior's NLL
    minus the deep ensemble's comes with a paired bootstrap interval in distribution and at each severity."""
    y = data.test.y.cpu()
    result: dict[str, Any] = {name: {} for name in groups}
    test: dict[str, torch.Tensor] = {}
    for name, nets in groups.items():
        per_member = member_probabilities(nets, data.test, precision)
        test[name] = per_member.mean(0)
        temperature = calibration.fit_temperature(member_probabilities(nets, data.val, precision).mean(0),
                                                  data.val.y)
        result[name] = {
            "test": calibration.bootstrap_scores(test[name], y, settings.resamples, settings.seed),
            "temperature": temperature,
            "test_tempered": calibration.bootstrap_scores(calibration.temper(test[name], temperature), y,
                                                          settings.resamples, settings.seed),
            "disagreement": calibration.disagreement(per_member),
            "reliability": dataclasses.asdict(calibration.reliability(test[name], y)),
        }
        if ood is not None:
            unlabelled = Split(ood, torch.full((len(ood),), -1, dtype=torch.long, device=ood.device))  # no labels
            unknown = member_probabilities(nets, unlabelled, precision).mean(0)
            result[name]["ood_auroc"] = shift.auroc(calibration.entropy(test[name]), calibration.entropy(unknown))
    differences: dict[str, Any] = {}
    if {"posterior", "deep"} <= set(groups):
        differences["test"] = calibration.nll_difference(test["posterior"], test["deep"], y, settings.resamples,
                                                         settings.seed)
    shifted: dict[str, dict[int, list[torch.Tensor]]] = {name: {s: [] for s in shift.SEVERITIES} for name in groups}
    labels: dict[int, list[torch.Tensor]] = {s: [] for s in shift.SEVERITIES}
    sets = [(c, s) for c in shift.CORRUPTIONS for s in shift.SEVERITIES]
    for corruption, severity in tqdm(sets, desc="corrupted test sets", disable=not progress, leave=False):
        split = shift.corrupted(data, corruption, severity, settings.seed)
        labels[severity].append(split.y.cpu())
        for name, nets in groups.items():
            probs = member_probabilities(nets, split, precision).mean(0)
            shifted[name][severity].append(probs)
            result[name].setdefault("corrupted", {}).setdefault(corruption, {})[str(severity)] = \
                calibration.scores(probs, split.y)
    for severity in shift.SEVERITIES:
        y_s = torch.cat(labels[severity])
        pooled = {name: torch.cat(shifted[name][severity]) for name in groups}
        for name in groups:
            result[name].setdefault("severity", {})[str(severity)] = calibration.bootstrap_scores(
                pooled[name], y_s, settings.resamples, settings.seed)
        if "test" in differences:
            differences[f"severity_{severity}"] = calibration.nll_difference(
                pooled["posterior"], pooled["deep"], y_s, settings.resamples, settings.seed)
    return {"predictors": result, "posterior_nll_minus_deep": differences}


def read_architectures(path: Path, space: Any) -> list[Genotype] | None:
    """The architectures an earlier launch chose into ``path``, validated against ``space`` (None where there is
    no such file)."""
    if not path.exists():
        return None
    genotypes = [Genotype.from_dict(g, origin=str(path)) for g in read_json(path).get("architectures", [])]
    for genotype in genotypes:
        space.validate(genotype)
    return genotypes


def build_ensemble(run: Run, settings: EnsembleSettings, out: Path, device: str | torch.device = "auto",
                   data_dir: str | None = None, download: bool = False, progress: bool = True
                   ) -> dict[str, Any] | None:
    """Choose, train and score an ensemble of ``run`` into ``out`` (see the module's docstring); returns what
    ``ensemble.json`` holds (None on the non-main processes of a ``torchrun`` launch)."""
    import pyro

    from bayesnas.distributed import world_of
    from bayesnas.infer import config_data, load_trained, resolve_device
    from bayesnas.run_folder import check_folder, folder_in_use, folder_kind, pin_settings

    if not run.finished or run.genotype is None:
        raise ConfigError(f"{run.path} is not a finished search (no summary.json): nothing to ensemble")
    check_folder(out, "ensemble")
    start = time.perf_counter()
    with world_of(resolve_device(device)) as (world, device):
        data = config_data(run.config, device, data_dir, download)
        with pyro.settings.context(module_local_params=True):
            method = load_trained(run.config, run.path, data, device)
        recipe = method.in_retraining_mode(method.retrain_recipe())
        recipe = dataclasses.replace(recipe, epochs=settings.epochs or recipe.epochs)
        if recipe.epochs == 0:
            raise ConfigError(f"method {method.name!r} of {run.path} retrains for 0 epochs: give the members' "
                              "`epochs`")
        resumed = folder_kind(out) == "ensemble"
        architectures = read_architectures(out / ARCHITECTURES_FILE, method.space) if resumed else None
        info: dict[str, Any] = {}
        if architectures is None:
            chosen = None
            if world.is_main:
                pyro.set_rng_seed(settings.seed)
                chosen = choose_architectures(method, settings, _inherited_score(method, data.val), data.val.y,
                                              progress)
                chosen = ([g.to_dict() for g in chosen[0]], chosen[1])
            payload = world.broadcast(chosen)
            architectures = [Genotype.from_dict(g) for g in payload[0]]
            info = payload[1]
        pinned = {"run": str(run.path.resolve()), **dataclasses.asdict(settings),
                  "recipe": dataclasses.asdict(recipe)}
        del pinned["resamples"]  # scoring only: a resumed ensemble may score with more

        def prepare() -> None:
            pin_settings(out / SETTINGS_FILE, pinned, "ensemble")
            if not (out / ARCHITECTURES_FILE).exists():
                write_json(out / ARCHITECTURES_FILE, {"architectures": [g.to_dict() for g in architectures],
                                                      "choice": info})

        with folder_in_use(out, "ensemble", world, prepare):
            plan = members(architectures, run.genotype, settings.seed)
            train_members(method, plan, recipe, out / MEMBERS_DIR, world, progress and world.is_main)
            if not world.is_main:
                return None
            nets = {m.name: load_member(method, m, out / MEMBERS_DIR) for m in plan}
            k = settings.members
            groups = {"posterior": [nets[f"posterior-{i}"] for i in range(k)],
                      "deep": [nets[f"deep-{i}"] for i in range(k)], "single": [nets["deep-0"]]}
            ood = shift.out_of_distribution(data, data_dir)
            scores = score_predictors(groups, data, recipe.precision, settings, None if ood is None else ood[0],
                                      progress)
            result = {
                "run": str(run.path), "method": run.config.method, "dataset": data.name,
                "settings": {**pinned, "resamples": settings.resamples},
                "architectures": [g.choices for g in architectures],
                "choice": read_json(out / ARCHITECTURES_FILE).get("choice", {}),
                "members": [read_json(out / MEMBERS_DIR / f"{m.name}.json") for m in plan],
                "test_examples": len(data.test), "corruptions": list(shift.CORRUPTIONS),
                "ood": None if ood is None else {"images": len(ood[0]), "source": ood[1]},
                **scores, "seconds": round(time.perf_counter() - start, 2),
            }
            write_report(result, out)
    return result


def _inherited_score(method: SearchMethod, val: Split) -> Callable[[Genotype], torch.Tensor]:
    """Validation probabilities of a genotype with the super-network's weights (the greedy strategy's score)."""
    def score(genotype: Genotype) -> torch.Tensor:
        network = method.inherited_network(genotype)
        if network is None:
            raise ConfigError(f"method {method.name!r} has no super-network weights to score candidates with: "
                              "use the draws or top strategy")
        return probabilities(network, val, precision=method.precision).cpu()

    return score


def score_cell(score: dict[str, Any]) -> str:
    """A score with its 95 % interval, as the tables print it."""
    low, high = score["interval_95"]
    return f"{score['value']:.4f} [{low:.4f}, {high:.4f}]"


def report_table(result: dict[str, Any]) -> str:
    """Markdown tables of an ensemble's scores: in distribution (as is and tempered), and NLL / ECE per shift
    severity, each with its 95 % bootstrap interval."""
    predictors = result["predictors"]
    lines = ["| predictor | accuracy | NLL | Brier | ECE | NLL (T) | ECE (T) | T | disagreement | OOD AUROC |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in predictors.items():
        t, tt = p["test"], p["test_tempered"]
        auroc = p.get("ood_auroc")
        lines.append(f"| {name} | {score_cell(t['accuracy'])} | {score_cell(t['nll'])} | {score_cell(t['brier'])} | "
                     f"{score_cell(t['ece'])} | {score_cell(tt['nll'])} | {score_cell(tt['ece'])} | "
                     f"{p['temperature']:.3f} | {p['disagreement']:.4f} | {'-' if auroc is None else f'{auroc:.4f}'} |")
    lines += ["", "| predictor | " + " | ".join(f"NLL s{s}" for s in shift.SEVERITIES) + " | "
              + " | ".join(f"ECE s{s}" for s in shift.SEVERITIES) + " |",
              "|---|" + "---|" * (2 * len(shift.SEVERITIES))]
    for name, p in predictors.items():
        nll = [score_cell(p["severity"][str(s)]["nll"]) for s in shift.SEVERITIES]
        ece = [score_cell(p["severity"][str(s)]["ece"]) for s in shift.SEVERITIES]
        lines.append(f"| {name} | " + " | ".join(nll + ece) + " |")
    differences = result.get("posterior_nll_minus_deep") or {}
    if differences:
        lines += ["", "Posterior ensemble's NLL minus the deep ensemble's (paired bootstrap 95 % interval): "
                  + "; ".join(f"{where.replace('_', ' ')} {d['mean']:+.4f} [{d['interval_95'][0]:+.4f}, "
                              f"{d['interval_95'][1]:+.4f}]" for where, d in differences.items())]
    return "\n".join(lines) + "\n"


def plot_shift(result: dict[str, Any], title: str) -> Any:
    """NLL and ECE of each predictor against shift severity (0: the clean test split; 1-5: every corruption at
    that severity), with 95 % bootstrap intervals."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4))
    severities = [0, *shift.SEVERITIES]
    for ax, key in zip(fig.subplots(1, 2), ("nll", "ece"), strict=True):
        for i, (name, p) in enumerate(result["predictors"].items()):
            rows = [p["test"][key]] + [p["severity"][str(s)][key] for s in shift.SEVERITIES]
            values = [r["value"] for r in rows]
            errors = [[v - r["interval_95"][0] for v, r in zip(values, rows, strict=True)],
                      [r["interval_95"][1] - v for v, r in zip(values, rows, strict=True)]]
            ax.errorbar([s + (i - 1) * 0.08 for s in severities], values, yerr=errors, marker="o", markersize=3,
                        capsize=2, label=name)
        ax.set(xlabel="shift severity (0: clean test)", ylabel=key.upper(), title=f"{title}: {key.upper()}")
        ax.legend(fontsize=7)
    return fig


def write_report(result: dict[str, Any], out: Path) -> None:
    """``ensemble.json``, ``ensemble.md``, ``shift.png`` and ``reliability.png`` into ``out``."""
    from bayesnas.diagnostics import save_figure
    from bayesnas.io import atomic_write_text

    write_json(out / RESULT_FILE, result)
    atomic_write_text(out / "ensemble.md", report_table(result))
    title = f"{result['method']} on {result['dataset']}"
    save_figure(plot_shift(result, title), out / "shift.png")
    save_figure(plot_ensemble_reliability(result, f"{title}, test"), out / "reliability.png")


def plot_ensemble_reliability(result: dict[str, Any], title: str, ax: Any = None) -> Any:
    """Reliability diagram of each predictor on the test split (:func:`bayesnas.predictive.plot_reliability`)."""
    from bayesnas.predictive import plot_reliability

    tables = {"reliability": {n: p["reliability"] for n, p in result["predictors"].items()},
              **{n: {"ece": p["test"]["ece"]["value"]} for n, p in result["predictors"].items()}}
    return plot_reliability(tables, title, ax)
