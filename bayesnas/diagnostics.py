"""ArviZ export of posteriors, multi-run summaries (seeds as chains), the held-out comparison of runs and the run
folder's plots."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bayesnas.errors import BayesNASError

with warnings.catch_warnings():  # arviz 0.x announces its 1.0 refactor on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from scipy.special import logsumexp

from bayesnas.io import atomic_write, atomic_write_by_name, flat_figures, read_jsonl

if TYPE_CHECKING:
    from bayesnas.spaces.decisions import DecisionSpace

POSTERIOR_FILE = "posterior.nc"


class DiagnosticsError(BayesNASError, ValueError):
    pass


def save_posterior(run_dir: Path, draws: dict[str, np.ndarray], coords: dict[str, list[str]], dims: list[str],
                   constant: dict[str, np.ndarray] | None = None, attrs: dict[str, Any] | None = None) -> Path:
    """Write posterior draws ``{name: (chain, draw, *dims)}`` as ``InferenceData`` to ``posterior.nc``.

    Variational parameters that are not draws (drop rates, SNRs) go to the ``constant_data`` group.
    """
    constant = constant or {}
    idata = az.from_dict(posterior=draws, constant_data=constant or None, coords=coords,
                         dims={name: dims for name in [*draws, *constant]}, attrs=attrs or {})
    idata.posterior.attrs.update(attrs or {})  # from_dict puts them on one group only
    path = Path(run_dir) / POSTERIOR_FILE
    atomic_write_by_name(path, idata.to_netcdf)
    return path


def decision_options(space: DecisionSpace) -> list[str]:
    """Every option of the space's decisions, in order of first appearance (the ``op`` axis of a decision table)."""
    return list(dict.fromkeys(o for g in space.groups().values() for o in g.options))


def decision_table(space: DecisionSpace, values: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per-group arrays ``{group: (..., n_g, K_g)}`` as one ``(..., decision, op)`` array: decisions in the space's
    order, ops as :func:`decision_options`; an op that is not an option of a decision is NaN there."""
    ops = decision_options(space)
    first = np.asarray(next(iter(values.values())))
    out = np.full((*first.shape[:-2], len(space.decisions()), len(ops)), np.nan,
                  dtype=np.result_type(first.dtype, np.float32))
    for name, g in space.groups().items():
        rows = np.asarray(g.positions)[:, None]
        cols = np.asarray([ops.index(o) for o in g.options])[None, :]
        out[..., rows, cols] = np.asarray(values[name])
    return out


def save_decision_posterior(run_dir: Path, space: DecisionSpace, draws: dict[str, Mapping[str, np.ndarray]],
                            constant: dict[str, Mapping[str, np.ndarray]], attrs: dict[str, Any]) -> Path:
    """:func:`save_posterior` of per-group draws ``{name: {group: (chain, draw, n_g, K_g)}}`` and constants
    ``{name: {group: (n_g, K_g)}}`` with dims ``decision`` (the space's decision names) and ``op``
    (:func:`decision_table`)."""
    coords = {"decision": [d.name for d in space.decisions()], "op": decision_options(space)}
    return save_posterior(run_dir, {k: decision_table(space, v) for k, v in draws.items()}, coords=coords,
                          dims=["decision", "op"], constant={k: decision_table(space, v) for k, v in constant.items()},
                          attrs=attrs)


def plot_decision_groups(space: DecisionSpace, values: Mapping[str, np.ndarray], title: str, path_stem: Path) -> None:
    """One :func:`plot_matrix` per decision group (rows its decisions, columns its options), written to
    ``{path_stem}_{group}.png``; ``title`` may name ``{group}``."""
    decisions = space.decisions()
    for name, g in space.groups().items():
        plot_matrix(np.asarray(values[name]), g.decision_names(decisions), list(g.options), title.format(group=name),
                    path_stem.with_name(f"{path_stem.name}_{name}.png"))


def run_configs_differ(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The configuration keys (``space.x`` and ``options.x`` for nested ones) on which runs differ, the seed
    aside."""
    flats = [{k: v for k, v in flat_figures(c).items() if k != "seed"} for c in configs]
    keys = sorted({k for f in flats for k in f})
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


def load_runs(run_dirs: Sequence[str | os.PathLike], allow_mixed: bool = False) -> az.InferenceData:
    """Several runs' posteriors as one ``InferenceData`` whose chains are the runs (different seeds), so that
    ``r_hat`` measures whether independent searches agree. The ``chain`` coordinate names each run
    (``<folder>/seed<seed>``); runs whose configurations differ other than in the seed are refused unless
    ``allow_mixed``."""
    resolved = [Path(run).resolve() for run in run_dirs]
    repeated = sorted({str(r) for r in resolved if resolved.count(r) > 1})
    if repeated:
        raise DiagnosticsError(f"the same run is given more than once ({', '.join(repeated)}); each run is one chain")
    datasets, constants, configs = [], [], []
    for run in run_dirs:
        idata = read_posterior(Path(run) / POSTERIOR_FILE)
        datasets.append(idata.posterior.load())
        if "constant_data" in idata.groups():
            constants.append(idata.constant_data.load())
        config_path = Path(run) / "config.json"
        configs.append(json.loads(config_path.read_text()) if config_path.exists() else {})
    differ = run_configs_differ(configs)
    if differ and not allow_mixed:
        raise DiagnosticsError(f"the runs' configurations differ in {', '.join(differ)} (not only the seed): they "
                               "are not chains of one posterior; pass `allow_mixed=True` to compare them anyway")
    shapes = {tuple(ds.sizes.items()) for ds in datasets}
    if len(shapes) > 1:
        raise DiagnosticsError("runs have posteriors of different shapes (different spaces?): "
                               + "; ".join(str(s) for s in shapes))
    for name in datasets[0].coords:
        if name in ("chain", "draw"):
            continue
        values = {tuple(np.asarray(ds.coords[name]).tolist()) if name in ds.coords else None for ds in datasets}
        if len(values) > 1:
            raise DiagnosticsError(f"runs differ in their {name!r} coordinates ({' vs '.join(map(str, values))}): "
                                   "they searched different spaces and cannot be chains of one posterior")
    labels = [f"{Path(run).name}/seed{config.get('seed', ds.attrs.get('seed', '?'))}"
              for run, config, ds in zip(run_dirs, configs, datasets, strict=True)]
    if len(set(labels)) < len(labels):  # folders of one name in different places
        labels = [f"{run}/seed{label.rsplit('/seed', 1)[1]}" for run, label in zip(run_dirs, labels, strict=True)]
    posterior = xr.concat(datasets, dim="chain").assign_coords(chain=labels)
    posterior.attrs = {key: [ds.attrs.get(key) for ds in datasets] if len(datasets) > 1 else datasets[0].attrs.get(key)
                       for key in ("method", "seed", "dataset") if key in datasets[0].attrs}
    groups: dict[str, xr.Dataset] = {"posterior": posterior}
    if len(constants) == len(datasets):
        groups["constant_data"] = xr.concat(constants, dim="run").assign_coords(run=labels)
    return az.InferenceData(**groups)


SPLIT_KEYS = ("dataset", "data_seed", "val_fraction", "test_fraction", "data_fraction")
"""The configuration keys that fix a run's data split (``data_seed`` null means ``seed``)."""


def compare_runs(run_dirs: Sequence[str | os.PathLike]) -> tuple[Any, dict[str, str]]:
    """:func:`compare_heldout` of runs of any methods or settings by their ``log_likelihood`` groups, which score
    the same validation examples: the table, and each row's label with its run. Runs on different splits or scored
    on different examples, runs without a ``log_likelihood`` group, and repeated runs are refused."""
    resolved = [Path(run).resolve() for run in run_dirs]
    if len(set(resolved)) < len(resolved):
        raise DiagnosticsError("the same run is given more than once: compare different runs")
    if len(run_dirs) < 2:
        raise DiagnosticsError("--compare needs two or more runs")
    models, splits, labels = {}, {}, {}
    for run in run_dirs:
        path = Path(run)
        idata = read_posterior(path / POSTERIOR_FILE)
        if "log_likelihood" not in idata.groups():
            raise DiagnosticsError(f"{path} has no log_likelihood group (a random search, or a run exported "
                                   "before bayesnas stored one): it cannot be compared")
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
        split = tuple(config.get(k) if not (k == "data_seed" and config.get(k) is None) else config.get("seed")
                      for k in SPLIT_KEYS)
        label = f"{path.name}:{config.get('method', idata.posterior.attrs.get('method', '?'))}"
        if label in models:
            label = f"{path}:{config.get('method', '?')}"
        models[label], splits[label], labels[label] = idata.log_likelihood["y"], split, str(path)
    if len(set(splits.values())) > 1:
        detail = "; ".join(f"{label}: " + ", ".join(f"{k}={v}" for k, v in zip(SPLIT_KEYS, split, strict=True))
                           for label, split in splits.items())
        raise DiagnosticsError(f"the runs were validated on different data splits, so their log-likelihoods are "
                               f"not comparable ({detail})")
    examples = {label: np.asarray(y["val_example"]).tolist() for label, y in models.items()}
    if len({tuple(e) for e in examples.values()}) > 1:
        detail = "; ".join(f"{label}: {len(e)} examples" for label, e in examples.items())
        raise DiagnosticsError(f"the runs scored different validation examples, so their log-likelihoods are not "
                               f"comparable ({detail})")
    table = compare_heldout({label: y.values.reshape(-1, y.shape[-1]) for label, y in models.items()})
    return table, labels


def heldout_elpd(log_likelihood: np.ndarray) -> np.ndarray:
    """Per example, the expected log predictive density of ``(S, N)`` log-likelihoods ``log p(y_n | network_s)``
    of examples q never saw: ``elpd_n = log (1/S) sum_s p(y_n | network_s)``, the log of the mean predictive
    probability over the draws (a log-sum-exp)."""
    return logsumexp(log_likelihood, axis=0) - np.log(len(log_likelihood))


def stacking_weights(pointwise: np.ndarray, tol: float = 1e-10, max_iter: int = 100_000) -> np.ndarray:
    """Stacking weights of ``(N, K)`` pointwise log predictive densities of K models: the ``w`` on the simplex
    that maximises ``sum_n log sum_k w_k exp(pointwise[n, k])`` (Yao, Vehtari, Simpson & Gelman, "Using stacking
    to average Bayesian predictive distributions", Bayesian Analysis 2018: their LOO objective, with held-out
    densities), by the EM update of a mixture's weights ``w_k <- mean_n w_k p_nk / sum_j w_j p_nj``, which never
    lowers the objective (Dempster, Laird & Rubin 1977), until no weight moves by ``tol``."""
    weights = np.full(pointwise.shape[1], 1 / pointwise.shape[1])
    for _ in range(max_iter):
        with np.errstate(divide="ignore"):  # a weight at 0 stays there
            joint = pointwise + np.log(weights)
        updated = np.exp(joint - logsumexp(joint, axis=1, keepdims=True)).mean(0)
        if np.abs(updated - weights).max() < tol:
            return updated
        weights = updated
    return weights


def compare_heldout(log_likelihoods: Mapping[str, np.ndarray]) -> Any:
    """Rank models by the expected log predictive density of the same N held-out examples, from each one's
    ``(S, N)`` log-likelihoods, in ``az.compare``'s table shape, best first: ``rank``, ``elpd_heldout`` (the sum of
    :func:`heldout_elpd`), ``elpd_diff`` (the best's minus this), ``weight`` (:func:`stacking_weights`), ``se`` and
    ``dse`` (``sqrt(N var)`` of the pointwise values and of the pointwise differences from the best, the variance
    with divisor N as in ArviZ's ``loo`` and ``compare``) and ``scale``. PSIS-LOO's ``p_loo`` and Pareto-k
    ``warning`` (Vehtari, Gelman & Gabry 2017) mean nothing on held-out examples and are left out."""
    import pandas as pd

    names = list(log_likelihoods)
    pointwise = np.stack([heldout_elpd(np.asarray(log_likelihoods[n], dtype=float)) for n in names], axis=1)
    order = np.argsort(-pointwise.sum(0), kind="stable")
    pointwise = pointwise[:, order]
    n = len(pointwise)
    differences = pointwise[:, :1] - pointwise
    return pd.DataFrame({
        "rank": np.arange(len(order)), "elpd_heldout": pointwise.sum(0), "elpd_diff": differences.sum(0),
        "weight": stacking_weights(pointwise), "se": np.sqrt(n * pointwise.var(0)),
        "dse": np.sqrt(n * differences.var(0)), "scale": "log",
    }, index=[names[i] for i in order])


def plot_heldout_compare(table: Any) -> Figure:
    """``az.plot_compare`` of a :func:`compare_heldout` table: each run's ``elpd_heldout`` with its ``se``."""
    ax = az.plot_compare(table.rename(columns={"elpd_heldout": "elpd_loo"}))  # it reads elpd_loo or elpd_waic
    ax.set_xlabel("elpd_heldout (log)")
    return ax.figure


def read_posterior(path: Path) -> az.InferenceData:
    """A run's ``posterior.nc``: one-line :class:`DiagnosticsError` when it is missing, empty, truncated, not
    NetCDF, or holds no ``posterior`` group."""
    if not path.exists():
        raise DiagnosticsError(f"no {POSTERIOR_FILE} in {path.parent}: is it a finished search run folder?")
    try:
        idata = az.from_netcdf(str(path))
    except Exception as err:  # noqa: BLE001 - netCDF/HDF5 raise many types for a damaged file
        raise DiagnosticsError(f"{path} is not a readable ArviZ NetCDF file ({type(err).__name__}); the run's "
                               "export is damaged or the file is not ours") from None
    if "posterior" not in idata.groups():
        raise DiagnosticsError(f"{path} holds no posterior group: it was not written by a bayesnas search")
    return idata


@contextlib.contextmanager
def one_chain_allowed() -> Iterator[None]:
    """Silence ArviZ's "shape validation failed" log line, which one run (one chain) triggers: its r_hat is left
    out, and its ESS is fine."""
    previous = logging.root.manager.disable  # ArviZ's logger is not the registered "arviz" one: disable by level
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def summary(idata: az.InferenceData) -> Any:
    """``az.summary`` of every posterior variable (mean, sd, HDI, ESS, r_hat).

    A variable that is constant in every draw (a branch always on) has no within-chain variance: its r_hat is
    NaN, and the 0/0 warnings numpy raises for it are silenced here.
    """
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings(), one_chain_allowed():
        warnings.simplefilter("ignore", RuntimeWarning)
        table = az.summary(idata, kind="all")
    return table if idata.posterior.sizes["chain"] > 1 else table.drop(columns="r_hat")


CATEGORICAL = ("op_choice", "op_chosen")
"""Posterior variables of one-hot draws of each decision's op (GDAS's, PC-NAS's and One-Shot's exports)."""


def categorical_variable(idata: az.InferenceData) -> str | None:
    """The posterior's one-hot decision variable (:data:`CATEGORICAL`), if it has one."""
    return next((v for v in CATEGORICAL if v in idata.posterior and "decision" in idata.posterior[v].dims), None)


def decision_summary(idata: az.InferenceData, var_name: str) -> Any:
    """One row per decision of the one-hot draws ``var_name`` (chains: runs of different seeds): the op chosen most
    often over every run's draws, its probability (the share of all draws), the lowest and highest of the runs'
    own shares, and, with two or more runs, r_hat of the indicator "this op is chosen" across them (rank-normalised
    split r_hat, Vehtari et al. 2021; near 1 where independent searches agree, NaN where every draw agrees)."""
    import pandas as pd

    onehot = idata.posterior[var_name]
    share = onehot.mean("draw")  # (chain, decision, op): each run's probability of each op
    pooled = share.mean("chain")
    rows = []
    for decision in onehot.coords["decision"].values:
        probabilities = pooled.sel(decision=decision).values
        top = str(onehot.coords["op"].values[int(np.nanargmax(probabilities))])
        runs = share.sel(decision=decision, op=top).values
        row = {"decision": str(decision), "op": top, "probability": float(np.nanmax(probabilities)),
               "runs_low": float(runs.min()), "runs_high": float(runs.max())}
        if onehot.sizes["chain"] > 1:
            with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                row["r_hat"] = float(az.rhat(onehot.sel(decision=decision, op=top).values))
        rows.append(row)
    return pd.DataFrame(rows).set_index("decision")


def plot_decision_forest(idata: az.InferenceData, var_name: str, path: Path) -> Path:
    """Forest plot of :func:`decision_summary`: per decision (labelled with its most probable op), each run's
    probability of that op (one colour per run) and the pooled probability (black)."""
    table = decision_summary(idata, var_name)
    share = idata.posterior[var_name].mean("draw")
    labels = [str(c) for c in share.coords["chain"].values]
    fig = Figure(figsize=(6.4, 1.2 + 0.24 * len(table)))
    ax = fig.subplots()
    rows = np.arange(len(table))[::-1]
    ax.hlines(rows, table["runs_low"], table["runs_high"], color="0.6", linewidth=1)
    for i, label in enumerate(labels):
        runs = [float(share.sel(chain=share.coords["chain"].values[i], decision=d, op=op))
                for d, op in zip(table.index, table["op"], strict=True)]
        ax.plot(runs, rows, "o", color=f"C{i}", markersize=3.5, label=label)
    ax.plot(table["probability"], rows, "D", color="k", markersize=4, label="all runs")
    ax.set_yticks(rows, [f"{d}: {op}" for d, op in zip(table.index, table["op"], strict=True)], fontsize=7)
    ax.set(xlim=(0, 1.02), xlabel="probability of the decision's most probable op",
           title=f"{var_name}: most probable op per decision")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="run", title_fontsize=7)
    save_figure(fig, path)
    return path


def plot_matrix(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, path: Path) -> None:
    """A heatmap with every value written in its cell. The colour scale spans the values' own range (op
    probabilities near uniform differ in the third decimal), and column names are turned to stay legible."""
    values = np.asarray(values, dtype=float)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    high = high if high > low else low + 1e-6
    fig = Figure(figsize=(1.6 + 0.75 * len(cols), 1.6 + 0.4 * len(rows)))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="viridis", vmin=low, vmax=high, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    digits = 3 if high - low < 0.05 else 2
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:.{digits}f}", ha="center", va="center", color="w" if v < (low + high) / 2 else "k",
                fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax)
    save_figure(fig, path)


def plot_training(run_dir: Path, path: Path | None = None) -> Path:
    """Loss (negative ELBO per example) and accuracies over the search, from ``metrics.jsonl``, into ``path``
    (default: the run's ``training.png``)."""
    rows = read_jsonl(Path(run_dir) / "metrics.jsonl")
    if not rows:
        raise DiagnosticsError(f"no metrics.jsonl rows in {run_dir}")
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(9, 3.2))
    left, right = fig.subplots(1, 2)
    left.plot(epochs, [r["loss"] for r in rows], marker=".")
    left.set(xlabel="epoch", ylabel="loss (negative ELBO / N)", title="search loss")
    right.plot(epochs, [r["train_accuracy"] for r in rows], marker=".", label="train")
    right.plot(epochs, [r["val_accuracy"] for r in rows], marker=".", label="validation")
    right.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    right.legend()
    path = path or Path(run_dir) / "training.png"
    save_figure(fig, path)
    return path


def plot_forest(idata: az.InferenceData, var_name: str, path: Path) -> Path:
    """Forest plot (HDI per chain) of one posterior variable, with a legend naming the chains (runs)."""
    labels = [str(c) for c in idata.posterior.coords["chain"].values]
    numbered = idata.posterior[[var_name]].assign_coords(chain=np.arange(len(labels)))  # ArviZ sorts chains
    with one_chain_allowed():
        axes = az.plot_forest(numbered, var_names=[var_name], combined=False, figsize=(6, 8))
    ax = np.ravel(axes)[0]
    colors = [f"C{i}" for i in range(len(labels))]
    ax.legend([plt.Line2D([], [], color=c) for c in colors], labels, title="chain (run)", loc="best", fontsize=7)
    save_figure(ax.figure, path)
    return path


def save_figure(fig: Figure, path: Path) -> None:
    """Write a figure atomically; figures made by pyplot (ArviZ's) are closed afterwards."""
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
